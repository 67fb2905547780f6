package adversarial

import (
	"context"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// Issue #11 finding 10: one TLS profile for every listener. A network peer
// (here with a valid mesh certificate, so only the cipher decides) that
// offers only TLS 1.2 CBC-SHA1 suites is refused by the server sidecar and
// by the control plane; an ECDHE-AEAD suite and TLS 1.3 are served.

// tlsProbe runs `openssl s_client -brief` against addr with the workload
// certificate in certsDir ("" for none) and args, and reports whether the
// handshake completed.
func tlsProbe(t *testing.T, addr, certsDir string, args ...string) (bool, string) {
	t.Helper()
	needTool(t, "openssl")
	a := []string{"s_client", "-connect", addr, "-brief"}
	if certsDir != "" {
		a = append(a, "-cert", filepath.Join(certsDir, "cert-chain.pem"), "-key", filepath.Join(certsDir, "key.pem"))
	}
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, "openssl", append(a, args...)...)
	cmd.Stdin = strings.NewReader("")
	out, err := cmd.CombinedOutput()
	return err == nil && strings.Contains(string(out), "CONNECTION ESTABLISHED"), string(out)
}

func TestTLSProfileEverywhere(t *testing.T) {
	m := startMesh(t, meshOptions{})
	targets := []struct {
		name, addr, alpn, log string
	}{
		{"httpbin's sidecar", m.Httpbin.InboundAddr, "http/1.1", "httpbin"},
		{"the control plane", m.ControlAddr, "h2", ""},
	}
	for _, tg := range targets {
		for _, c := range []struct {
			args []string
			ok   bool
			want string
		}{
			{[]string{"-tls1_2", "-cipher", "ECDHE-ECDSA-AES128-SHA"}, false, ""},
			{[]string{"-tls1_2", "-cipher", "ECDHE-ECDSA-AES256-SHA"}, false, ""},
			{[]string{"-tls1_2", "-cipher", "ECDHE-ECDSA-AES128-GCM-SHA256"}, true, "Ciphersuite: ECDHE-ECDSA-AES128-GCM-SHA256"},
			{[]string{"-tls1_2", "-cipher", "ECDHE-ECDSA-CHACHA20-POLY1305"}, true, "Ciphersuite: ECDHE-ECDSA-CHACHA20-POLY1305"},
			{nil, true, "Protocol version: TLSv1.3"},
		} {
			ok, out := tlsProbe(t, tg.addr, m.Sleep.CertsDir, append(c.args, "-alpn", tg.alpn)...)
			if ok != c.ok || (ok && !strings.Contains(out, c.want)) {
				t.Errorf("%s, openssl s_client %s: handshake %v, want %v %s\n%s", tg.name, strings.Join(c.args, " "), ok, c.ok, c.want, out)
			}
		}
		if tg.log != "" {
			m.WaitLog(t, tg.log, 5*time.Second, `"msg":"connection refused"`, "no cipher suite supported by both client and server")
		}
	}
}
