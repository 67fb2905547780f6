package meshapi

import (
	"fmt"
	"time"

	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/timestamppb"

	pb "github.com/meshauth/meshauth/api/meshauth/v1"
	"github.com/meshauth/meshauth/internal/careport"
	"github.com/meshauth/meshauth/internal/meshapi/sidecarapi"
)

type rootState string

var rootStates = sidecarapi.NewEnum("RootState", map[rootState]pb.RootState{
	careport.RootSigning:  pb.RootState_ROOT_STATE_SIGNING,
	careport.RootPending:  pb.RootState_ROOT_STATE_PENDING,
	careport.RootRetiring: pb.RootState_ROOT_STATE_RETIRING,
})

// StatusToProto converts the CA's status for Admin.CAStatus.
func StatusToProto(st *careport.Status) (*pb.CAStatusResponse, error) {
	def, err := time.ParseDuration(st.DefaultTTL)
	if err != nil {
		return nil, fmt.Errorf("CA status: defaultTTL: %w", err)
	}
	maxTTL, err := time.ParseDuration(st.MaxTTL)
	if err != nil {
		return nil, fmt.Errorf("CA status: maxTTL: %w", err)
	}
	out := &pb.CAStatusResponse{
		TrustDomain: st.TrustDomain, Mode: st.Mode, BundleVersion: st.BundleVersion, Signing: certToProto(st.Signing),
		Issued: int64(st.Issued), Revoked: int64(st.Revoked), JoinTokens: int64(st.JoinTokens),
		DefaultTtl: durationpb.New(def), MaxTtl: durationpb.New(maxTTL), Now: timeToProto(st.Now),
	}
	for i, r := range st.Roots {
		state, err := rootStates.Wire(rootState(r.State), fmt.Sprintf("CA status: roots[%d].state", i))
		if err != nil {
			return nil, err
		}
		out.Roots = append(out.Roots, &pb.RootStatus{Certificate: certToProto(r.CertStatus), State: state,
			ActivateAt: timeToProto(r.ActivateAt), LastIssuedNotAfter: timeToProto(r.LastIssuedNotAfter)})
	}
	return out, nil
}

// StatusFromProto converts Admin.CAStatus's answer back.
func StatusFromProto(m *pb.CAStatusResponse) (*careport.Status, error) {
	st := &careport.Status{
		TrustDomain: m.TrustDomain, Mode: m.Mode, BundleVersion: m.BundleVersion, Signing: certFromProto(m.Signing),
		Issued: int(m.Issued), Revoked: int(m.Revoked), JoinTokens: int(m.JoinTokens),
		DefaultTTL: m.DefaultTtl.AsDuration().String(), MaxTTL: m.MaxTtl.AsDuration().String(), Now: timeFromProto(m.Now),
	}
	for i, r := range m.Roots {
		state, err := rootStates.FromProto(r.GetState(), fmt.Sprintf("CA status: roots[%d].state", i))
		if err != nil {
			return nil, err
		}
		st.Roots = append(st.Roots, careport.RootStatus{CertStatus: certFromProto(r.GetCertificate()), State: string(state),
			ActivateAt: timeFromProto(r.GetActivateAt()), LastIssuedNotAfter: timeFromProto(r.GetLastIssuedNotAfter())})
	}
	return st, nil
}

func certToProto(c careport.CertStatus) *pb.CACertificate {
	return &pb.CACertificate{Subject: c.Subject, Sha256: c.Fingerprint, NotBefore: timeToProto(c.NotBefore), NotAfter: timeToProto(c.NotAfter)}
}

func certFromProto(c *pb.CACertificate) careport.CertStatus {
	return careport.CertStatus{Subject: c.GetSubject(), Fingerprint: c.GetSha256(), NotBefore: timeFromProto(c.GetNotBefore()), NotAfter: timeFromProto(c.GetNotAfter())}
}

// IssuedToProto converts issuance log entries for Admin.ListIssued.
func IssuedToProto(entries []careport.IssuedEntry) []*pb.IssuedCertificate {
	out := make([]*pb.IssuedCertificate, 0, len(entries))
	for _, e := range entries {
		out = append(out, &pb.IssuedCertificate{Serial: e.Serial, SpiffeId: e.SPIFFEID, NotBefore: e.NotBefore, NotAfter: e.NotAfter,
			IssuedAt: e.IssuedAt, Requester: e.Requester, Authority: e.Authority, GrantedTtlSeconds: e.GrantedTTL,
			Revoked: e.Revoked, RevokedReason: e.RevokedReason})
	}
	return out
}

// IssuedFromProto converts Admin.ListIssued's entries back; never nil, so
// that `meshctl ca issued -o json` prints [] for none.
func IssuedFromProto(entries []*pb.IssuedCertificate) []careport.IssuedEntry {
	out := make([]careport.IssuedEntry, 0, len(entries))
	for _, e := range entries {
		out = append(out, careport.IssuedEntry{IssuanceRecord: careport.IssuanceRecord{Serial: e.GetSerial(), SPIFFEID: e.GetSpiffeId(),
			NotBefore: e.GetNotBefore(), NotAfter: e.GetNotAfter(), IssuedAt: e.GetIssuedAt(), Requester: e.GetRequester(),
			Authority: e.GetAuthority(), GrantedTTL: e.GetGrantedTtlSeconds()}, Revoked: e.GetRevoked(), RevokedReason: e.GetRevokedReason()})
	}
	return out
}

// timeToProto: the zero time is an absent timestamp.
func timeToProto(t time.Time) *timestamppb.Timestamp {
	if t.IsZero() {
		return nil
	}
	return timestamppb.New(t)
}

// timeFromProto: an absent timestamp is the zero time; others are UTC.
func timeFromProto(ts *timestamppb.Timestamp) time.Time {
	if ts == nil {
		return time.Time{}
	}
	return ts.AsTime()
}
