package proxy

import (
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
	"github.com/meshauth/meshauth/internal/tlsprofile/tlsprofiletest"
)

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
	tlsprofiletest.Check(t, "inbound", addr, "-cert", certFile, "-key", keyFile, "-alpn", "http/1.1")
	// Each refusal is logged with its reason; crypto/tls says which.
	deadline := time.Now().Add(5 * time.Second)
	for {
		noSuite := strings.Count(srv.log.String(), "no cipher suite supported by both client and server")
		oldVersion := strings.Count(srv.log.String(), "client offered only unsupported versions")
		if noSuite == tlsprofiletest.RefusedSuites && oldVersion == tlsprofiletest.RefusedVersions {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("refusals logged: %d for the cipher suite (want %d), %d for the version (want %d)\n%s", noSuite, tlsprofiletest.RefusedSuites, oldVersion, tlsprofiletest.RefusedVersions, srv.log.String())
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
