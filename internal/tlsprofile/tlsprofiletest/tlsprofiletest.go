// Package tlsprofiletest checks a live TLS listener against the profile of
// internal/tlsprofile with real `openssl s_client`: the one table of cases
// that the sidecar's, the control plane's and the adversarial suite's tests
// run against their listeners.
package tlsprofiletest

import (
	"context"
	"os/exec"
	"strings"
	"testing"
	"time"
)

// Case is one openssl offer and whether the profile must accept it; Want
// is a line openssl prints for an accepted one.
type Case struct {
	Args []string
	OK   bool
	Want string
}

// Cases are refused: three TLS 1.2 CBC suites and TLS 1.1 (so a listener
// logs RefusedSuites refusals for the suite and RefusedVersions for the
// version); served: TLS 1.2 ECDHE with AES-GCM or ChaCha20-Poly1305, an
// AEAD suite chosen over a CBC one offered with it, and TLS 1.3.
var Cases = []Case{
	{[]string{"-tls1_2", "-cipher", "ECDHE-ECDSA-AES128-SHA"}, false, ""},
	{[]string{"-tls1_2", "-cipher", "ECDHE-ECDSA-AES256-SHA"}, false, ""},
	{[]string{"-tls1_2", "-cipher", "ECDHE-ECDSA-AES128-SHA256"}, false, ""},
	{[]string{"-tls1_1", "-cipher", "ALL:@SECLEVEL=0"}, false, ""},
	{[]string{"-tls1_2", "-cipher", "ECDHE-ECDSA-AES128-GCM-SHA256"}, true, "Ciphersuite: ECDHE-ECDSA-AES128-GCM-SHA256"},
	{[]string{"-tls1_2", "-cipher", "ECDHE-ECDSA-CHACHA20-POLY1305"}, true, "Ciphersuite: ECDHE-ECDSA-CHACHA20-POLY1305"},
	{[]string{"-tls1_2", "-cipher", "ECDHE-ECDSA-AES128-SHA:ECDHE-ECDSA-AES256-GCM-SHA384"}, true, "Ciphersuite: ECDHE-ECDSA-AES256-GCM-SHA384"},
	{nil, true, "Protocol version: TLSv1.3"},
}

// How many of Cases a listener refuses for the cipher suite and for the
// version.
const (
	RefusedSuites   = 3
	RefusedVersions = 1
)

// Probe runs `openssl s_client -brief -connect addr args...` and reports
// whether the handshake completed, with openssl's output.
func Probe(t testing.TB, addr string, args ...string) (bool, string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, "openssl", append([]string{"s_client", "-connect", addr, "-brief"}, args...)...)
	cmd.Stdin = strings.NewReader("")
	out, err := cmd.CombinedOutput()
	return err == nil && strings.Contains(string(out), "CONNECTION ESTABLISHED"), string(out)
}

// Check runs every case against addr, adding extra to openssl's arguments
// (a client certificate, an ALPN), and reports each mismatch, naming what.
// It skips the test when openssl is not installed.
func Check(t testing.TB, what, addr string, extra ...string) {
	t.Helper()
	if _, err := exec.LookPath("openssl"); err != nil {
		t.Skip("openssl not installed (make deps installs it)")
	}
	for _, c := range Cases {
		ok, out := Probe(t, addr, append(append([]string(nil), c.Args...), extra...)...)
		switch {
		case ok != c.OK:
			t.Errorf("%s, openssl s_client %s: handshake ok=%v, want %v\n%s", what, strings.Join(c.Args, " "), ok, c.OK, out)
		case ok && !strings.Contains(out, c.Want):
			t.Errorf("%s, openssl s_client %s: output lacks %q\n%s", what, strings.Join(c.Args, " "), c.Want, out)
		}
	}
}
