package main

import (
	"bytes"
	"crypto/x509"
	"encoding/json"
	"flag"
	"math/big"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/meshauth/meshauth/internal/ca/catest"
	"github.com/meshauth/meshauth/internal/identity"
)

var updateInspect = flag.Bool("update-inspect", false, "rewrite testdata/inspect/*.golden")

// TestCertInspectGolden pins `meshctl cert inspect` output for a good
// certificate and for the refusals people meet (expired, foreign root, no
// SPIFFE ID). Times and serials are fixed so the output is stable.
func TestCertInspectGolden(t *testing.T) {
	now := time.Date(2026, 6, 1, 12, 0, 0, 0, time.UTC)
	mesh := catest.New(t, catest.WithNow(now))
	other := catest.New(t, catest.WithNow(now))
	const id = "spiffe://cluster.local/ns/default/sa/sleep"
	serial := catest.Serial(big.NewInt(0x7bcdef0123456789))
	tests := []struct {
		name    string
		cert    *catest.Cert
		root    *catest.CA
		wantErr bool
	}{
		{"valid", mesh.Issue(t, id, serial), mesh, false},
		{"expired", mesh.Issue(t, id, serial, catest.Validity(now.Add(-48*time.Hour), now.Add(-24*time.Hour))), mesh, true},
		{"foreign-root", other.Issue(t, id, serial), mesh, true},
		{"no-spiffe-id", mesh.Issue(t, id, serial, catest.NoURISAN(), catest.DNSNames("httpbin.default.svc")), mesh, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dir := t.TempDir()
			tt.root.WriteFiles(t, dir, tt.cert)
			rep, err := inspectFile(filepath.Join(dir, "cert-chain.pem"), "", now)
			if err != nil {
				t.Fatal(err)
			}
			if got := rep.Verify != nil && !rep.Verify.OK; got != tt.wantErr {
				t.Fatalf("verify failed = %v, want %v (%+v)", got, tt.wantErr, rep.Verify)
			}
			var buf bytes.Buffer
			rep.print(&buf)
			js, _ := json.MarshalIndent(rep, "", "  ")
			buf.WriteString("--- json\n")
			buf.Write(js)
			buf.WriteString("\n")
			got := strings.ReplaceAll(buf.String(), dir, "DIR")
			// Root and issuer names carry no randomness, fingerprints do.
			for _, c := range tt.cert.Chain {
				got = strings.ReplaceAll(got, fingerprintOf(c.Raw), "SHA256")
			}
			golden := filepath.Join("testdata", "inspect", tt.name+".golden")
			if *updateInspect {
				os.MkdirAll(filepath.Dir(golden), 0o755)
				if err := os.WriteFile(golden, []byte(got), 0o644); err != nil {
					t.Fatal(err)
				}
			}
			want, err := os.ReadFile(golden)
			if err != nil {
				t.Fatalf("read golden (run with -update-inspect): %v", err)
			}
			if got != string(want) {
				t.Errorf("output differs from %s (run with -update-inspect to accept):\n%s", golden, got)
			}
		})
	}
}

func fingerprintOf(der []byte) string {
	c, err := x509.ParseCertificate(der)
	if err != nil {
		return "?"
	}
	return identity.Fingerprint(c)
}
