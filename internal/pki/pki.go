// Package pki holds the X.509 steps the CA, the agent and the Kubernetes
// controller share: a self-signed CA certificate (the mesh root, the
// webhook's CA, test CAs), random certificate serials, and whether a key
// belongs to a certificate. It imports only the standard library.
package pki

import (
	"crypto"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"math/big"
	"net/url"
	"time"
)

// CA is what differs between the self-signed CA certificates meshauth makes.
type CA struct {
	Subject             pkix.Name
	NotBefore, NotAfter time.Time
	KeyUsage            x509.KeyUsage
	// URIs are URI SANs; the mesh root carries spiffe://<trust-domain>.
	URIs []*url.URL
}

// SelfSignedCA signs a CA certificate (basic constraints, IsCA, a random
// 128-bit serial) for key with key itself. The DER is the result's Raw.
func SelfSignedCA(key crypto.Signer, c CA) (*x509.Certificate, error) {
	serial, err := RandomSerial()
	if err != nil {
		return nil, err
	}
	tmpl := &x509.Certificate{
		SerialNumber:          serial,
		Subject:               c.Subject,
		NotBefore:             c.NotBefore,
		NotAfter:              c.NotAfter,
		IsCA:                  true,
		BasicConstraintsValid: true,
		KeyUsage:              c.KeyUsage,
		URIs:                  c.URIs,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, key.Public(), key)
	if err != nil {
		return nil, err
	}
	return x509.ParseCertificate(der)
}

// RandomSerial returns a random positive serial of 128 bits (RFC 5280 asks
// for at least 64 bits of entropy; CA/B Forum practice is more).
func RandomSerial() (*big.Int, error) {
	var b [16]byte
	if _, err := rand.Read(b[:]); err != nil {
		return nil, err
	}
	b[0] |= 0x01 << 6 // non-zero and a fixed length: always 16 bytes
	b[0] &^= 0x80     // keep DER's leading byte positive (no 17th byte)
	return new(big.Int).SetBytes(b[:]), nil
}

// PublicKeysEqual reports whether a and b are the same public key (false
// for a key type without an Equal method).
func PublicKeysEqual(a, b crypto.PublicKey) bool {
	type equaler interface{ Equal(crypto.PublicKey) bool }
	e, ok := a.(equaler)
	return ok && e.Equal(b)
}
