package control_test

import (
	"bytes"
	"context"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	pb "github.com/meshauth/meshauth/api/meshauth/v1"
	"github.com/meshauth/meshauth/internal/ca/catest"
	"github.com/meshauth/meshauth/internal/client"
	"github.com/meshauth/meshauth/internal/control"
	"github.com/meshauth/meshauth/internal/identity"
	"github.com/meshauth/meshauth/internal/tlsprofile"
	"github.com/meshauth/meshauth/internal/tlsprofile/tlsprofiletest"
)

// TestControlPlaneTLSProfile: the control plane's gRPC port, against real
// openssl s_client, refuses TLS 1.2 CBC-SHA1 suites and TLS 1.1 and serves
// TLS 1.2 ECDHE-AEAD and TLS 1.3; its config is the shared profile.
func TestControlPlaneTLSProfile(t *testing.T) {
	if _, err := exec.LookPath("openssl"); err != nil {
		t.Skip("openssl not installed (make deps installs it)")
	}
	e := start(t, nil)
	if err := tlsprofile.Check(control.TLSConfigOf(e.srv)); err != nil {
		t.Error(err)
	}
	tlsprofiletest.Check(t, "control plane", e.srv.Addr(), "-alpn", "h2")
}

// TestClientTLSProfile: the control plane client (sidecars, meshctl) does
// not talk to a server that offers only a TLS 1.2 CBC suite, even one
// with the control plane's identity: real openssl s_server.
func TestClientTLSProfile(t *testing.T) {
	if _, err := exec.LookPath("openssl"); err != nil {
		t.Skip("openssl not installed (make deps installs it)")
	}
	ca := catest.New(t)
	cert := ca.Issue(t, "spiffe://cluster.local/ns/meshauth-system/sa/meshd")
	dir := t.TempDir()
	certFile, keyFile := filepath.Join(dir, "cert.pem"), filepath.Join(dir, "key.pem")
	os.WriteFile(certFile, cert.ChainPEM, 0o600)
	os.WriteFile(keyFile, cert.KeyPEM, 0o600)
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	port := l.Addr().(*net.TCPAddr).Port
	l.Close()
	ctx, cancel := context.WithCancel(context.Background())
	srv := exec.CommandContext(ctx, "openssl", "s_server", "-accept", "127.0.0.1:"+strconv.Itoa(port), "-cert", certFile, "-key", keyFile,
		"-tls1_2", "-cipher", "ECDHE-ECDSA-AES128-SHA", "-alpn", "h2")
	var out syncBuf
	srv.Stdout, srv.Stderr = &out, &out
	// s_server stops at EOF on its stdin: keep it open until the end.
	stdin, err := srv.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	defer stdin.Close()
	if err := srv.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cancel(); srv.Wait() })
	addr := "127.0.0.1:" + strconv.Itoa(port)
	for i := 0; ; i++ {
		if c, err := net.Dial("tcp", addr); err == nil {
			c.Close()
			break
		}
		if i > 200 {
			t.Fatalf("openssl s_server did not listen: %s", out.String())
		}
		time.Sleep(20 * time.Millisecond)
	}
	conn, err := client.Dial(context.Background(), client.Options{Addr: addr, Dir: dir,
		Roots: func() *identity.Bundle { return ca.Bundle() }})
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	cctx, ccancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer ccancel()
	_, err = pb.NewCertificateAuthorityClient(conn).GetTrustBundle(cctx, &pb.GetTrustBundleRequest{})
	if err == nil || !strings.Contains(err.Error(), "handshake failure") {
		t.Fatalf("client against a CBC-only server: %v, want a handshake failure\n%s", err, out.String())
	}
	// s_server writes its side of the failure after the client saw it.
	for deadline := time.Now().Add(10 * time.Second); !strings.Contains(out.String(), "no shared cipher"); time.Sleep(20 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("openssl s_server did not see a cipher mismatch:\n%s", out.String())
		}
	}
}

type syncBuf struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuf) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuf) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}
