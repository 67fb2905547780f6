package agent

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"net/url"
	"time"

	"github.com/meshauth/meshauth/internal/identity"
	"github.com/meshauth/meshauth/internal/pki"
)

// SVID is a workload's X.509 identity: its certificate chain and the private
// key that never leaves the workload. An SVID is immutable; rotation builds a
// new one and swaps a pointer.
type SVID struct {
	ID identity.ID
	// URI is ID.String(), kept so the request path does not rebuild it.
	URI string
	// Chain is leaf first, then intermediates (never the root).
	Chain []*x509.Certificate
	Key   crypto.Signer
	// TLS is ready to hand to crypto/tls (Leaf set), built once so the
	// handshake path does not allocate it.
	TLS *tls.Certificate
	// ChainPEM and KeyPEM are the contents of cert-chain.pem and key.pem.
	ChainPEM []byte
	KeyPEM   []byte
	// IssuedAt is when the agent got the certificate from the CA, by its
	// own clock: the start of the lifetime the renewal time is computed
	// from (NotBefore is back-dated by the CA for clock skew). Zero for a
	// certificate read from files; the agent estimates it then.
	IssuedAt time.Time
}

// Leaf returns the workload certificate.
func (s *SVID) Leaf() *x509.Certificate { return s.Chain[0] }

// Serial returns the leaf serial as lowercase hex.
func (s *SVID) Serial() string { return identity.SerialHex(s.Chain[0]) }

// NotAfter returns the leaf's expiry.
func (s *SVID) NotAfter() time.Time { return s.Chain[0].NotAfter }

// NewSVID builds an SVID from PEM chain and key, checking that the key
// matches the leaf and that the leaf carries a workload SPIFFE ID. It does
// not check the chain against a bundle (Store.SetSVID does).
func NewSVID(chainPEM, keyPEM []byte) (*SVID, error) {
	chain, err := identity.ParseCertsPEM(chainPEM)
	if err != nil {
		return nil, fmt.Errorf("agent: certificate chain: %w", err)
	}
	blk, _ := pem.Decode(keyPEM)
	if blk == nil {
		return nil, errors.New("agent: key: no PEM block found")
	}
	k, err := x509.ParsePKCS8PrivateKey(blk.Bytes)
	if err != nil {
		// Accept SEC 1 keys too, as openssl writes them by default.
		ek, err2 := x509.ParseECPrivateKey(blk.Bytes)
		if err2 != nil {
			return nil, fmt.Errorf("agent: key: %w", err)
		}
		k = ek
	}
	signer, ok := k.(crypto.Signer)
	if !ok {
		return nil, fmt.Errorf("agent: key: %T is not a signing key", k)
	}
	return newSVID(chain, signer, chainPEM, keyPEM)
}

func newSVID(chain []*x509.Certificate, key crypto.Signer, chainPEM, keyPEM []byte) (*SVID, error) {
	leaf := chain[0]
	if !pki.PublicKeysEqual(leaf.PublicKey, key.Public()) {
		return nil, errors.New("agent: private key does not match the certificate's public key")
	}
	if len(leaf.URIs) != 1 {
		return nil, fmt.Errorf("agent: certificate has %d URI SANs, want exactly one SPIFFE ID", len(leaf.URIs))
	}
	id, err := identity.Parse(leaf.URIs[0].String())
	if err != nil {
		return nil, fmt.Errorf("agent: certificate identity: %w", err)
	}
	tc := &tls.Certificate{PrivateKey: key, Leaf: leaf}
	for _, c := range chain {
		tc.Certificate = append(tc.Certificate, c.Raw)
	}
	if chainPEM == nil {
		for _, c := range chain {
			chainPEM = append(chainPEM, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: c.Raw})...)
		}
	}
	if keyPEM == nil {
		der, err := x509.MarshalPKCS8PrivateKey(key)
		if err != nil {
			return nil, fmt.Errorf("agent: marshal key: %w", err)
		}
		keyPEM = pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der})
	}
	return &SVID{ID: id, URI: id.String(), Chain: chain, Key: key, TLS: tc, ChainPEM: chainPEM, KeyPEM: keyPEM}, nil
}

// newKey generates the workload's private key. P-256 keeps handshakes cheap
// (an ECDSA signature is ~20x faster than RSA-2048) and is what the CA's
// workload profile expects.
func newKey() (crypto.Signer, error) {
	return ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
}

// newCSR makes a PKCS#10 request for key with id as its only URI SAN. The CA
// fills in or checks the identity against what the caller proved.
func newCSR(key crypto.Signer, id identity.ID) ([]byte, error) {
	u := id.SPIFFE().URL()
	tmpl := &x509.CertificateRequest{URIs: []*url.URL{u}}
	der, err := x509.CreateCertificateRequest(rand.Reader, tmpl, key)
	if err != nil {
		return nil, fmt.Errorf("agent: create CSR: %w", err)
	}
	return der, nil
}
