package identity

import (
	"strings"
	"testing"
)

// FuzzParseCertsPEM: any input either fails with an error or yields at
// least one parsed certificate; it never panics.
func FuzzParseCertsPEM(f *testing.F) {
	f.Add([]byte("-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n"))
	f.Add([]byte("-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n"))
	f.Add([]byte(""))
	f.Fuzz(func(t *testing.T, data []byte) {
		certs, err := ParseCertsPEM(data)
		if err == nil && len(certs) == 0 {
			t.Fatal("no error and no certificates")
		}
		for _, c := range certs {
			if c == nil {
				t.Fatal("nil certificate without an error")
			}
		}
	})
}

// FuzzParsePrincipal: an accepted RBAC principal round-trips.
func FuzzParsePrincipal(f *testing.F) {
	f.Add("cluster.local/ns/default/sa/sleep")
	f.Add("cluster.local/ns//sa/sleep")
	f.Add("*")
	f.Fuzz(func(t *testing.T, p string) {
		id, err := ParsePrincipal(p)
		if err != nil {
			return
		}
		if got := id.Principal(); got != p && !strings.EqualFold(got, p) {
			t.Fatalf("ParsePrincipal(%q).Principal() = %q", p, got)
		}
	})
}
