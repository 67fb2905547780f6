package proxy

import (
	"context"
	"crypto/tls"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/meshauth/meshauth/internal/ca/catest"
	"github.com/meshauth/meshauth/internal/policy"
	"github.com/meshauth/meshauth/internal/tlsprofile"
)

// opensslClient runs `openssl s_client` against addr with args and returns
// whether the handshake completed, and the output.
func opensslClient(t *testing.T, addr string, args ...string) (bool, string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, "openssl", append([]string{"s_client", "-connect", addr, "-brief"}, args...)...)
	cmd.Stdin = strings.NewReader("")
	out, err := cmd.CombinedOutput()
	return err == nil && strings.Contains(string(out), "CONNECTION ESTABLISHED"), string(out)
}

// TestInboundTLSProfile: the sidecar's inbound mTLS port, against real
// openssl s_client with a valid mesh client certificate, refuses TLS 1.2
// CBC-SHA1 suites and TLS 1.1 (logged as a refused handshake with
// crypto/tls's reason) and serves TLS 1.2 ECDHE-AEAD and TLS 1.3. The
// outbound dialer's configs use the same profile.
func TestInboundTLSProfile(t *testing.T) {
	if _, err := exec.LookPath("openssl"); err != nil {
		t.Skip("openssl not installed (make deps installs it)")
	}
	ca := catest.New(t)
	srv := startServer(t, ca, httpbinID, policy.ServerStrict, sidecarOpts{})
	addr := srv.InboundAddrs[0].String()
	client := ca.Issue(t, sleepID)
	dir := t.TempDir()
	certFile, keyFile := filepath.Join(dir, "cert-chain.pem"), filepath.Join(dir, "key.pem")
	if err := os.WriteFile(certFile, client.ChainPEM, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(keyFile, client.KeyPEM, 0o600); err != nil {
		t.Fatal(err)
	}
	mtls := []string{"-cert", certFile, "-key", keyFile, "-alpn", "http/1.1"}
	for _, c := range []struct {
		args []string
		ok   bool
		want string
	}{
		{[]string{"-tls1_2", "-cipher", "ECDHE-ECDSA-AES128-SHA"}, false, ""},
		{[]string{"-tls1_2", "-cipher", "ECDHE-ECDSA-AES256-SHA"}, false, ""},
		{[]string{"-tls1_2", "-cipher", "ECDHE-ECDSA-AES128-SHA256"}, false, ""},
		{[]string{"-tls1_1", "-cipher", "ALL:@SECLEVEL=0"}, false, ""},
		{[]string{"-tls1_2", "-cipher", "ECDHE-ECDSA-AES128-GCM-SHA256"}, true, "Ciphersuite: ECDHE-ECDSA-AES128-GCM-SHA256"},
		{[]string{"-tls1_2", "-cipher", "ECDHE-ECDSA-CHACHA20-POLY1305"}, true, "Ciphersuite: ECDHE-ECDSA-CHACHA20-POLY1305"},
		{[]string{"-tls1_2", "-cipher", "ECDHE-ECDSA-AES128-SHA:ECDHE-ECDSA-AES256-GCM-SHA384"}, true, "Ciphersuite: ECDHE-ECDSA-AES256-GCM-SHA384"},
		{nil, true, "Protocol version: TLSv1.3"},
	} {
		name := strings.Join(c.args, " ")
		ok, out := opensslClient(t, addr, append(c.args, mtls...)...)
		if ok != c.ok {
			t.Errorf("openssl s_client %s: handshake ok=%v, want %v\n%s", name, ok, c.ok, out)
			continue
		}
		if c.ok && !strings.Contains(out, c.want) {
			t.Errorf("openssl s_client %s: output lacks %q\n%s", name, c.want, out)
		}
	}
	// Each refusal is logged with its reason; crypto/tls says which.
	deadline := time.Now().Add(5 * time.Second)
	for {
		noSuite := strings.Count(srv.log.String(), "no cipher suite supported by both client and server")
		oldVersion := strings.Count(srv.log.String(), "client offered only unsupported versions")
		if noSuite == 3 && oldVersion == 1 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("refusals logged: %d for the cipher suite (want 3), %d for the version (want 1)\n%s", noSuite, oldVersion, srv.log.String())
		}
		time.Sleep(20 * time.Millisecond)
	}

	// The listener's and the dialer's configs are the profile's.
	if err := tlsprofile.Check(srv.serverConf); err != nil {
		t.Errorf("inbound: %v", err)
	}
	r := &route{transportKey: "t", mode: policy.ClientIstioMutual, allowed: []string{httpbinID}}
	up := srv.upstreamFor(r)
	for name, c := range map[string]*tls.Config{"outbound http": up.httpTLS, "outbound tcp": up.tcpTLS, "health probe": insecureProbeTLS()} {
		if err := tlsprofile.Check(c); err != nil {
			t.Errorf("%s: %v", name, err)
		}
	}
}
