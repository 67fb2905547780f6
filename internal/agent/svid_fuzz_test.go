package agent

import (
	"testing"
)

// FuzzNewSVID: cert-chain.pem and key.pem as found on disk (--cert-source
// files, --static-certs) are parsed without panicking; an accepted pair has
// a leaf, a key matching it and one SPIFFE ID.
func FuzzNewSVID(f *testing.F) {
	chain := []byte("-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n")
	key := []byte("-----BEGIN PRIVATE KEY-----\nMIGHAgEAMBMGByqGSM49AgEGCCqGSM49AwEHBG0wawIBAQQg\n-----END PRIVATE KEY-----\n")
	f.Add(chain, key)
	f.Add([]byte(""), []byte(""))
	f.Add([]byte("-----BEGIN EC PRIVATE KEY-----\nAA==\n-----END EC PRIVATE KEY-----\n"), chain)
	f.Fuzz(func(t *testing.T, chainPEM, keyPEM []byte) {
		s, err := NewSVID(chainPEM, keyPEM)
		if err != nil {
			return
		}
		if len(s.Chain) == 0 || s.Key == nil || s.TLS == nil || s.TLS.Leaf != s.Chain[0] {
			t.Fatalf("accepted an incomplete SVID: %+v", s)
		}
		if s.URI != s.ID.String() {
			t.Fatalf("URI %q != ID %q", s.URI, s.ID)
		}
	})
}
