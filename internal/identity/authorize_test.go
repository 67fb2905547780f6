package identity_test

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"net"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/meshauth/meshauth/internal/ca/catest"
	"github.com/meshauth/meshauth/internal/identity"
)

const (
	sleepID   = "spiffe://cluster.local/ns/default/sa/sleep"
	httpbinID = "spiffe://cluster.local/ns/default/sa/httpbin"
)

func TestAuthorizers(t *testing.T) {
	now := time.Date(2026, 6, 1, 12, 0, 0, 0, time.UTC)
	ca := catest.New(t, catest.WithNow(now))
	sleep := ca.Issue(t, sleepID)
	chains := [][]*x509.Certificate{append(append([]*x509.Certificate{}, sleep.Chain...), ca.Root)}
	sid := spiffeid.RequireFromString(sleepID)
	other := spiffeid.RequireFromString(httpbinID)
	refuse := errors.New("refused by the test")
	refuser := func(spiffeid.ID, [][]*x509.Certificate) error { return refuse }
	var asked []string
	record := func(name string) identity.Authorizer {
		return func(spiffeid.ID, [][]*x509.Certificate) error { asked = append(asked, name); return nil }
	}

	tests := []struct {
		name   string
		a      identity.Authorizer
		want   error // nil: accepted
		reason string
	}{
		{"any", identity.AuthorizeAny(), nil, "ok"},
		{"member of its trust domain", identity.AuthorizeMemberOf(spiffeid.RequireTrustDomainFromString("cluster.local")), nil, "ok"},
		{"member of another trust domain", identity.AuthorizeMemberOf(spiffeid.RequireTrustDomainFromString("example.org")), identity.ErrForeignTrustDomain, "foreign_trust_domain"},
		{"one of, listed", identity.AuthorizeOneOf(other, sid), nil, "ok"},
		{"one of, not listed", identity.AuthorizeOneOf(other), identity.ErrUnauthorizedID, "unauthorized_id"},
		{"one of, empty list", identity.AuthorizeOneOf(), identity.ErrUnauthorizedID, "unauthorized_id"},
		{"not revoked", identity.AuthorizeNotRevoked(ca.Bundle()), nil, "ok"},
		{"revoked", identity.AuthorizeNotRevoked(ca.Bundle(sleep)), identity.ErrRevoked, "revoked"},
		{"all accept", identity.AuthorizeAll(identity.AuthorizeAny(), nil, identity.AuthorizeOneOf(sid)), nil, "ok"},
		{"all, one refuses", identity.AuthorizeAll(identity.AuthorizeOneOf(sid), identity.AuthorizeNotRevoked(ca.Bundle(sleep))), identity.ErrRevoked, "revoked"},
		{"all of none", identity.AuthorizeAll(), nil, "ok"},
		{"first refusal wins", identity.AuthorizeAll(refuser, identity.AuthorizeOneOf(other)), refuse, "other"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := tt.a(sid, chains)
			if tt.want == nil && err != nil || tt.want != nil && !errors.Is(err, tt.want) {
				t.Fatalf("err = %v, want %v", err, tt.want)
			}
			if got := identity.Reason(err); got != tt.reason {
				t.Fatalf("Reason = %q, want %q", got, tt.reason)
			}
		})
	}

	// The typed refusals say who and why.
	var bad *identity.UnauthorizedIDError
	if err := identity.AuthorizeOneOf(other)(sid, chains); !errors.As(err, &bad) || bad.ID != sid || len(bad.Allowed) != 1 || bad.Allowed[0] != other ||
		err.Error() != "peer identity is not authorized: got "+sleepID+", allowed "+httpbinID {
		t.Fatalf("AuthorizeOneOf refusal: %v", err)
	}
	var rev *identity.RevokedError
	if err := identity.AuthorizeNotRevoked(ca.BundleWith(9, nil, sleep))(sid, chains); !errors.As(err, &rev) || rev.Serial != sleep.Serial() || rev.BundleVersion != 9 ||
		err.Error() != "certificate serial is revoked: serial "+sleep.Serial() {
		t.Fatalf("AuthorizeNotRevoked refusal: %v", err)
	}
	if err := identity.AuthorizeNotRevoked(ca.Bundle())(sid, nil); !errors.Is(err, identity.ErrNoCertificate) {
		t.Fatalf("AuthorizeNotRevoked without a chain: %v", err)
	}
	// AuthorizeAll asks in order and stops at the first refusal.
	asked = nil
	identity.AuthorizeAll(record("a"), record("b"), refuser, record("c"))(sid, chains)
	if strings.Join(asked, ",") != "a,b" {
		t.Fatalf("asked %v, want a,b", asked)
	}
}

// TestVerifyPeerAuthorizes: the authorizer is asked only after the chain
// verified and the serial is not revoked, with the peer's SPIFFE ID and the
// verified chain (leaf to root); its refusal is VerifyPeer's answer.
func TestVerifyPeerAuthorizes(t *testing.T) {
	now := time.Date(2026, 6, 1, 12, 0, 0, 0, time.UTC)
	ca := catest.New(t, catest.WithNow(now), catest.WithIntermediate())
	foreign := catest.New(t, catest.WithNow(now))
	sleep := ca.Issue(t, sleepID)
	var gotID spiffeid.ID
	var gotChains [][]*x509.Certificate
	calls := 0
	spy := func(id spiffeid.ID, chains [][]*x509.Certificate) error {
		calls++
		gotID, gotChains = id, chains
		return nil
	}

	id, err := identity.VerifyPeer(ca.Bundle(), sleep.Chain, now, spy)
	if err != nil || id.String() != sleepID || calls != 1 || gotID.String() != sleepID {
		t.Fatalf("VerifyPeer = %v, %v (authorizer asked %d times, with %v)", id, err, calls, gotID)
	}
	if len(gotChains) != 1 || len(gotChains[0]) != 3 || gotChains[0][0] != sleep.Leaf || !gotChains[0][2].Equal(ca.Root) {
		t.Fatalf("verified chains given to the authorizer: %v", gotChains)
	}
	for name, c := range map[string]struct {
		b     *identity.Bundle
		chain []*x509.Certificate
		want  error
	}{
		"no bundle":      {nil, sleep.Chain, identity.ErrNoBundle},
		"no certificate": {ca.Bundle(), nil, identity.ErrNoCertificate},
		"foreign root":   {ca.Bundle(), foreign.Issue(t, sleepID).Chain, identity.ErrUntrustedChain},
		"revoked":        {ca.Bundle(sleep), sleep.Chain, identity.ErrRevoked},
	} {
		calls = 0
		if _, err := identity.VerifyPeer(c.b, c.chain, now, spy); !errors.Is(err, c.want) || calls != 0 {
			t.Errorf("%s: err %v (want %v), authorizer asked %d times", name, err, c.want, calls)
		}
	}
	if _, err := identity.VerifyPeer(ca.Bundle(), sleep.Chain, now, identity.AuthorizeOneOf(spiffeid.RequireFromString(httpbinID))); !errors.Is(err, identity.ErrUnauthorizedID) {
		t.Fatalf("refused by the authorizer: %v", err)
	}
	if identity.Reason(identity.ErrNoBundle) != "no_bundle" {
		t.Fatalf("Reason(ErrNoBundle) = %q", identity.Reason(identity.ErrNoBundle))
	}
}

// TestVerifyConnectionResumed: a real TLS 1.3 server on loopback with
// VerifyConnection as its only client check. A client whose serial is
// revoked after its first handshake is refused on the next one, although
// that one resumes the session from a ticket (crypto/tls runs
// VerifyConnection on resumption, VerifyPeerCertificate not).
func TestVerifyConnectionResumed(t *testing.T) {
	ca := catest.New(t)
	server := ca.Issue(t, httpbinID)
	client := ca.Issue(t, sleepID)
	var bundle atomic.Pointer[identity.Bundle]
	bundle.Store(ca.Bundle())

	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer lis.Close()
	verify := identity.VerifyConnection(bundle.Load, nil, identity.AuthorizeOneOf(spiffeid.RequireFromString(sleepID)))
	serverErrs := make(chan error, 8)
	scfg := &tls.Config{
		Certificates:     []tls.Certificate{server.TLS},
		ClientAuth:       tls.RequestClientCert,
		MinVersion:       tls.VersionTLS13,
		VerifyConnection: verify,
	}
	go func() {
		for {
			c, err := lis.Accept()
			if err != nil {
				return
			}
			tc := tls.Server(c, scfg)
			serverErrs <- tc.Handshake()
			tc.Write([]byte("x")) // sends the session ticket with the first record
			tc.Close()
		}
	}()

	ccfg := &tls.Config{
		Certificates:       []tls.Certificate{client.TLS},
		InsecureSkipVerify: true, // the server is verified below, like a sidecar does
		VerifyConnection:   identity.VerifyConnection(bundle.Load, nil, identity.AuthorizeOneOf(spiffeid.RequireFromString(httpbinID))),
		ClientSessionCache: tls.NewLRUClientSessionCache(4),
		MinVersion:         tls.VersionTLS13,
	}
	dial := func() (resumed bool, serverErr error) {
		c, err := tls.Dial("tcp", lis.Addr().String(), ccfg)
		if err == nil {
			resumed = c.ConnectionState().DidResume
			c.Read(make([]byte, 1)) // reads the ticket
			c.Close()
		}
		return resumed, <-serverErrs
	}
	if _, err := dial(); err != nil {
		t.Fatalf("first handshake: %v", err)
	}
	if resumed, err := dial(); err != nil || !resumed {
		t.Fatalf("second handshake: err %v, resumed %v (the test needs resumption)", err, resumed)
	}
	bundle.Store(ca.BundleWith(2, nil, client))
	if _, err := dial(); !errors.Is(err, identity.ErrRevoked) {
		t.Fatalf("resumed handshake of a revoked client: server says %v", err)
	}
}
