package agent

import (
	"testing"

	"github.com/meshauth/meshauth/internal/ca/catest"
	"github.com/meshauth/meshauth/internal/pki"
)

// FuzzNewSVID: cert-chain.pem and key.pem as found on disk (--cert-source
// files, --static-certs) are parsed without panicking; an accepted pair has
// a leaf, a key matching it and one SPIFFE ID.
func FuzzNewSVID(f *testing.F) {
	chain := []byte("-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n")
	key := []byte("-----BEGIN PRIVATE KEY-----\nMIGHAgEAMBMGByqGSM49AgEGCCqGSM49AwEHBG0wawIBAQQg\n-----END PRIVATE KEY-----\n")
	f.Add(chain, key)
	f.Add([]byte(""), []byte(""))
	// A real pair, so that mutations start from something accepted.
	ca := catest.New(f)
	good := ca.Issue(f, sleepID)
	f.Add(good.ChainPEM, good.KeyPEM)
	f.Add(good.ChainPEM, ca.Issue(f, sleepID).KeyPEM) // key of another certificate
	f.Add([]byte("-----BEGIN EC PRIVATE KEY-----\nAA==\n-----END EC PRIVATE KEY-----\n"), chain)
	f.Fuzz(func(t *testing.T, chainPEM, keyPEM []byte) {
		s, err := NewSVID(chainPEM, keyPEM)
		if err != nil {
			return
		}
		if !pki.PublicKeysEqual(s.Chain[0].PublicKey, s.Key.Public()) {
			t.Fatal("accepted a key that does not match the certificate")
		}
		if len(s.Chain) == 0 || s.Key == nil || s.TLS == nil || s.TLS.Leaf != s.Chain[0] {
			t.Fatalf("accepted an incomplete SVID: %+v", s)
		}
		if s.URI != s.ID.String() {
			t.Fatalf("URI %q != ID %q", s.URI, s.ID)
		}
	})
}
