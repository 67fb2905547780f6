package meshapi

import (
	pb "github.com/meshauth/meshauth/api/meshauth/v1"
	"github.com/meshauth/meshauth/internal/careport"
)

// RotationToProto converts a rotation's status for Admin.RotationStatus.
func RotationToProto(r *careport.Rotation) *pb.RotationStatusResponse {
	out := &pb.RotationStatusResponse{
		Phase: r.Phase, NewRootSha256: r.NewRoot, OldRootsSha256: r.OldRoots, BundleVersion: r.BundleVersion,
		StartedAt: timeToProto(r.StartedAt), MinOverlapUntil: timeToProto(r.MinOverlapUntil),
		SwitchedAt: timeToProto(r.SwitchedAt), RetiredAt: timeToProto(r.RetiredAt), Forced: r.Forced,
		Waiting: int32(r.Waiting), Next: r.Next, Now: timeToProto(r.Now),
	}
	for _, s := range r.Sidecars {
		out.Sidecars = append(out.Sidecars, &pb.SidecarBundleStatus{
			Key: s.Key, SpiffeId: s.SPIFFEID, Instance: s.Instance, Serial: s.Serial, CertNotAfter: timeToProto(s.CertNotAfter),
			Connected: s.Connected, Since: timeToProto(s.Since), AckedVersion: s.AckedVersion, AckedAt: timeToProto(s.AckedAt),
			HasNewRoot: s.HasNewRoot, Error: s.Error, ErrorVersion: s.ErrorVersion, Blocking: s.Blocking, Why: s.Why,
		})
	}
	for _, l := range r.Live {
		out.Live = append(out.Live, &pb.RootLive{RootSha256: l.Root, State: l.State, Live: int64(l.Live), Sample: l.Sample})
	}
	return out
}

// RotationFromProto converts Admin.RotationStatus's answer back.
func RotationFromProto(m *pb.RotationStatusResponse) *careport.Rotation {
	r := &careport.Rotation{
		Phase: m.Phase, NewRoot: m.NewRootSha256, OldRoots: m.OldRootsSha256, BundleVersion: m.BundleVersion,
		StartedAt: timeFromProto(m.StartedAt), MinOverlapUntil: timeFromProto(m.MinOverlapUntil),
		SwitchedAt: timeFromProto(m.SwitchedAt), RetiredAt: timeFromProto(m.RetiredAt), Forced: m.Forced,
		Waiting: int(m.Waiting), Next: m.Next, Now: timeFromProto(m.Now), Sidecars: []careport.SidecarAck{}, Live: []careport.RootLive{},
	}
	for _, s := range m.Sidecars {
		r.Sidecars = append(r.Sidecars, careport.SidecarAck{
			Key: s.Key, SPIFFEID: s.SpiffeId, Instance: s.Instance, Serial: s.Serial, CertNotAfter: timeFromProto(s.CertNotAfter),
			Connected: s.Connected, Since: timeFromProto(s.Since), AckedVersion: s.AckedVersion, AckedAt: timeFromProto(s.AckedAt),
			HasNewRoot: s.HasNewRoot, Error: s.Error, ErrorVersion: s.ErrorVersion, Blocking: s.Blocking, Why: s.Why,
		})
	}
	for _, l := range m.Live {
		r.Live = append(r.Live, careport.RootLive{Root: l.RootSha256, State: l.State, Live: int(l.Live), Sample: l.Sample})
	}
	return r
}
