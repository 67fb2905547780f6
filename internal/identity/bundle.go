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

// Verify is VerifyPeer with AuthorizeAny: the chain verifies against b at
// now, in the workload shape, and its serial is not revoked.
func (b *Bundle) Verify(chain []*x509.Certificate, now time.Time) (ID, error) {
	return VerifyPeer(b, chain, now, nil)
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
	case errors.Is(err, ErrUnauthorizedID):
		return "unauthorized_id"
	case errors.Is(err, ErrNoBundle):
		return "no_bundle"
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
