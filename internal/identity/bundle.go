package identity

import (
	"crypto/sha256"
	"crypto/x509"
	"encoding/hex"
	"encoding/pem"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
)

// Reasons a peer is refused. Each is a sentinel so callers (the proxy's
// metrics and logs) can name the reason with errors.Is.
var (
	ErrNoCertificate      = errors.New("no client certificate")
	ErrUntrustedChain     = errors.New("certificate chain does not verify against the trust bundle")
	ErrExpired            = errors.New("certificate expired")
	ErrNotYetValid        = errors.New("certificate not yet valid")
	ErrNoSPIFFEID         = errors.New("certificate has no SPIFFE URI SAN")
	ErrForeignTrustDomain = errors.New("certificate is from a foreign trust domain")
	ErrRevoked            = errors.New("certificate serial is revoked")
)

// Bundle is a versioned, immutable set of trusted roots for one trust domain
// plus the serials revoked by its CA. Several roots are held at once during a
// root rotation. Replace a Bundle, never mutate it: the proxy swaps a pointer.
type Bundle struct {
	Version     uint64
	TrustDomain string
	Roots       []*x509.Certificate
	// Revoked maps lowercase hex serial -> SPIFFE ID it was issued to.
	Revoked map[string]string
}

// NewBundle builds a bundle from PEM roots.
func NewBundle(trustDomain string, version uint64, rootsPEM []string, revoked map[string]string) (*Bundle, error) {
	b := &Bundle{Version: version, TrustDomain: trustDomain, Revoked: revoked}
	for i, p := range rootsPEM {
		certs, err := ParseCertsPEM([]byte(p))
		if err != nil {
			return nil, fmt.Errorf("identity: bundle root %d: %w", i, err)
		}
		b.Roots = append(b.Roots, certs...)
	}
	if len(b.Roots) == 0 {
		return nil, errors.New("identity: bundle has no roots")
	}
	if b.Revoked == nil {
		b.Revoked = map[string]string{}
	}
	return b, nil
}

// Pool returns the roots as an x509.CertPool.
func (b *Bundle) Pool() *x509.CertPool {
	p := x509.NewCertPool()
	for _, r := range b.Roots {
		p.AddCert(r)
	}
	return p
}

// RootsPEM returns the roots PEM-encoded, concatenated, as root-cert.pem holds them.
func (b *Bundle) RootsPEM() []byte {
	var sb strings.Builder
	for _, r := range b.Roots {
		sb.Write(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: r.Raw}))
	}
	return []byte(sb.String())
}

// IsRevoked reports whether serial (lowercase hex) is revoked.
func (b *Bundle) IsRevoked(serial string) bool {
	_, ok := b.Revoked[serial]
	return ok
}

// X509Bundle returns the go-spiffe form, for the Workload API and go-spiffe verifiers.
func (b *Bundle) X509Bundle() *x509bundle.Bundle {
	td := spiffeid.RequireTrustDomainFromString(b.TrustDomain)
	return x509bundle.FromX509Authorities(td, b.Roots)
}

// Verify checks a peer chain (leaf first) at time now: it must chain to one of
// the bundle's roots, carry exactly one SPIFFE URI of the bundle's trust
// domain and the workload shape, and not be revoked. The returned error wraps
// one of the Err* sentinels.
func (b *Bundle) Verify(chain []*x509.Certificate, now time.Time) (ID, error) {
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
	if _, _, err := x509svid.Verify(chain, b.X509Bundle(), x509svid.WithTime(now)); err != nil {
		return ID{}, fmt.Errorf("%w: %v", ErrUntrustedChain, err)
	}
	id, err := FromSPIFFE(sid)
	if err != nil {
		return ID{}, err
	}
	if b.IsRevoked(SerialHex(leaf)) {
		return ID{}, fmt.Errorf("%w: serial %s", ErrRevoked, SerialHex(leaf))
	}
	return id, nil
}

// Reason returns a short, constant label for a verification error, for
// metrics and logs ("expired", "revoked", ...).
func Reason(err error) string {
	switch {
	case err == nil:
		return "ok"
	case errors.Is(err, ErrNoCertificate):
		return "no_client_cert"
	case errors.Is(err, ErrExpired):
		return "expired"
	case errors.Is(err, ErrNotYetValid):
		return "not_yet_valid"
	case errors.Is(err, ErrNoSPIFFEID):
		return "no_spiffe_id"
	case errors.Is(err, ErrForeignTrustDomain):
		return "foreign_trust_domain"
	case errors.Is(err, ErrRevoked):
		return "revoked"
	case errors.Is(err, ErrUntrustedChain):
		return "untrusted_chain"
	case errors.Is(err, ErrNotWorkloadID):
		return "not_workload_id"
	}
	return "other"
}

// SerialHex returns the certificate's serial as lowercase hex, the form used
// in revocation lists and logs.
func SerialHex(c *x509.Certificate) string {
	return c.SerialNumber.Text(16)
}

// Fingerprint returns the SHA-256 fingerprint of a certificate as lowercase hex.
func Fingerprint(c *x509.Certificate) string {
	sum := sha256.Sum256(c.Raw)
	return hex.EncodeToString(sum[:])
}

// ParseCertsPEM parses every CERTIFICATE block in data.
func ParseCertsPEM(data []byte) ([]*x509.Certificate, error) {
	var out []*x509.Certificate
	for {
		var blk *pem.Block
		blk, data = pem.Decode(data)
		if blk == nil {
			break
		}
		if blk.Type != "CERTIFICATE" {
			continue
		}
		c, err := x509.ParseCertificate(blk.Bytes)
		if err != nil {
			return nil, fmt.Errorf("parse certificate: %w", err)
		}
		out = append(out, c)
	}
	if len(out) == 0 {
		return nil, errors.New("no PEM CERTIFICATE block found")
	}
	return out, nil
}
