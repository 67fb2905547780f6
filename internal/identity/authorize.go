package identity

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
)

// Authorizer decides whether a peer whose chain has been verified against
// the trust bundle may be accepted: nil accepts it, an error says why not.
// It has the shape of go-spiffe's tlsconfig.Authorizer, so that the proxy,
// the control-plane client and meshctl express "who may this be" the same
// way, composed from the constructors below.
type Authorizer func(id spiffeid.ID, verifiedChains [][]*x509.Certificate) error

var (
	// ErrNoBundle: the caller has no trust bundle yet (a sidecar before its
	// agent bootstrapped); no peer can be verified.
	ErrNoBundle = errors.New("no trust bundle yet")
	// ErrUnauthorizedID: the peer's chain verified, but its SPIFFE ID is not
	// one the caller accepts here (UnauthorizedIDError says which).
	ErrUnauthorizedID = errors.New("peer identity is not authorized")
)

// UnauthorizedIDError is AuthorizeOneOf's refusal: the verified peer ID and
// the IDs that were allowed.
type UnauthorizedIDError struct {
	ID      spiffeid.ID
	Allowed []spiffeid.ID
}

func (e *UnauthorizedIDError) Error() string {
	if len(e.Allowed) == 0 {
		return ErrUnauthorizedID.Error() + ": got " + e.ID.String() + ", no identity is allowed"
	}
	want := make([]string, len(e.Allowed))
	for i, a := range e.Allowed {
		want[i] = a.String()
	}
	return ErrUnauthorizedID.Error() + ": got " + e.ID.String() + ", allowed " + strings.Join(want, ", ")
}

func (e *UnauthorizedIDError) Is(target error) bool { return target == ErrUnauthorizedID }

// RevokedError is AuthorizeNotRevoked's refusal: the leaf's serial and the
// version of the bundle that lists it.
type RevokedError struct {
	Serial        string
	BundleVersion uint64
}

func (e *RevokedError) Error() string { return ErrRevoked.Error() + ": serial " + e.Serial }

func (e *RevokedError) Is(target error) bool { return target == ErrRevoked }

// AuthorizeAny accepts every peer whose chain verified: any workload of the
// bundle's trust domain (VerifyPeer refuses other trust domains).
func AuthorizeAny() Authorizer {
	return func(spiffeid.ID, [][]*x509.Certificate) error { return nil }
}

// AuthorizeMemberOf accepts any ID of trust domain td.
func AuthorizeMemberOf(td spiffeid.TrustDomain) Authorizer {
	return func(id spiffeid.ID, _ [][]*x509.Certificate) error {
		if !id.MemberOf(td) {
			return fmt.Errorf("%w: %q, want %q", ErrForeignTrustDomain, id.TrustDomain().Name(), td.Name())
		}
		return nil
	}
}

// AuthorizeOneOf accepts exactly the given IDs (none: nobody). The refusal
// is an *UnauthorizedIDError.
func AuthorizeOneOf(ids ...spiffeid.ID) Authorizer {
	allowed := make(map[spiffeid.ID]struct{}, len(ids))
	for _, id := range ids {
		allowed[id] = struct{}{}
	}
	list := append([]spiffeid.ID(nil), ids...)
	return func(id spiffeid.ID, _ [][]*x509.Certificate) error {
		if _, ok := allowed[id]; !ok {
			return &UnauthorizedIDError{ID: id, Allowed: list}
		}
		return nil
	}
}

// AuthorizeNotRevoked refuses a peer whose leaf serial b lists as revoked
// (a *RevokedError). VerifyPeer applies it, against the bundle the chain
// was verified with, before any other authorizer.
func AuthorizeNotRevoked(b *Bundle) Authorizer {
	return func(_ spiffeid.ID, chains [][]*x509.Certificate) error {
		if len(chains) == 0 || len(chains[0]) == 0 {
			return ErrNoCertificate
		}
		return b.notRevoked(chains[0][0])
	}
}

func (b *Bundle) notRevoked(leaf *x509.Certificate) error {
	if s := SerialHex(leaf); b.IsRevoked(s) {
		return &RevokedError{Serial: s, BundleVersion: b.Version}
	}
	return nil
}

// AuthorizeAll accepts a peer only if every authorizer does, asking them in
// order; the first refusal is the answer. Nil entries are skipped.
func AuthorizeAll(as ...Authorizer) Authorizer {
	return func(id spiffeid.ID, chains [][]*x509.Certificate) error {
		for _, a := range as {
			if a == nil {
				continue
			}
			if err := a(id, chains); err != nil {
				return err
			}
		}
		return nil
	}
}

// VerifyPeer is the mesh's one peer verification, used by the sidecar's
// proxy (both directions and its rechecks), the control-plane client, the
// CA's mTLS authenticator and meshctl check. It checks a peer chain (leaf
// first) against b at now: the leaf is valid at now, carries exactly one
// SPIFFE URI of b's trust domain in the workload shape, and chains to one
// of b's roots (go-spiffe's x509svid.Verify); then the leaf must not be
// revoked in b, and authorize (nil: AuthorizeAny) must accept the ID. The
// error wraps one of the Err* sentinels (Reason names it).
func VerifyPeer(b *Bundle, chain []*x509.Certificate, now time.Time, authorize Authorizer) (ID, error) {
	if b == nil {
		return ID{}, ErrNoBundle
	}
	if len(chain) == 0 {
		return ID{}, ErrNoCertificate
	}
	leaf := chain[0]
	// Time checks first so that the reason is precise (x509 would only say
	// "certificate has expired or is not yet valid").
	if now.After(leaf.NotAfter) {
		return ID{}, fmt.Errorf("%w: NotAfter %s", ErrExpired, leaf.NotAfter.UTC().Format(time.RFC3339))
	}
	if now.Before(leaf.NotBefore) {
		return ID{}, fmt.Errorf("%w: NotBefore %s", ErrNotYetValid, leaf.NotBefore.UTC().Format(time.RFC3339))
	}
	if len(leaf.URIs) == 0 {
		return ID{}, ErrNoSPIFFEID
	}
	sid, err := x509svid.IDFromCert(leaf)
	if err != nil {
		return ID{}, fmt.Errorf("%w: %v", ErrNoSPIFFEID, err)
	}
	if sid.TrustDomain().Name() != b.TrustDomain {
		return ID{}, fmt.Errorf("%w: %q, want %q", ErrForeignTrustDomain, sid.TrustDomain().Name(), b.TrustDomain)
	}
	// go-spiffe does the SVID-specific checks (leaf not a CA, key usage,
	// chain to the bundle of the ID's trust domain).
	_, chains, err := x509svid.Verify(chain, b.X509Bundle(), x509svid.WithTime(now))
	if err != nil {
		return ID{}, fmt.Errorf("%w: %v", ErrUntrustedChain, err)
	}
	id, err := FromSPIFFE(sid)
	if err != nil {
		return ID{}, err
	}
	if err := b.notRevoked(leaf); err != nil {
		return ID{}, err
	}
	if authorize != nil {
		if err := authorize(sid, chains); err != nil {
			return ID{}, err
		}
	}
	return id, nil
}

// VerifyConnection returns a crypto/tls VerifyConnection hook that runs
// VerifyPeer on the peer's certificates against the bundle current at each
// handshake (so a rotated bundle or a new revocation applies to the next
// one) at now() (nil: time.Now). Use it with InsecureSkipVerify (client)
// or RequestClientCert (server): crypto/tls's own checks know no SPIFFE
// IDs. Unlike VerifyPeerCertificate it also runs on resumed sessions, so a
// revoked serial cannot come back through a session ticket.
func VerifyConnection(bundle func() *Bundle, now func() time.Time, authorize Authorizer) func(tls.ConnectionState) error {
	if now == nil {
		now = time.Now
	}
	return func(cs tls.ConnectionState) error {
		_, err := VerifyPeer(bundle(), cs.PeerCertificates, now(), authorize)
		return err
	}
}
