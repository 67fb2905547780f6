package control_test

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
	"google.golang.org/grpc"

	pb "github.com/meshauth/meshauth/api/meshauth/v1"
	"github.com/meshauth/meshauth/internal/ca"
	"github.com/meshauth/meshauth/internal/careport"
	"github.com/meshauth/meshauth/internal/client"
	"github.com/meshauth/meshauth/internal/identity"
)

// These tests run the real binaries: `meshd control` as a process and
// `meshctl` and `openssl` as a person would.

var (
	binOnce sync.Once
	binDir  string
	binErr  error
)

func binaries(t testing.TB) (meshd, meshctl string) {
	t.Helper()
	if testing.Short() {
		t.Skip("builds and runs the binaries; skipped with -short")
	}
	binOnce.Do(func() {
		binDir, binErr = os.MkdirTemp("", "meshauth-bin-")
		if binErr != nil {
			return
		}
		out, err := exec.Command("go", "build", "-o", binDir, "../../cmd/meshd", "../../cmd/meshd-sidecar", "../../cmd/meshctl").CombinedOutput()
		if err != nil {
			binErr = fmt.Errorf("go build: %v\n%s", err, out)
		}
	})
	if binErr != nil {
		t.Fatal(binErr)
	}
	return filepath.Join(binDir, "meshd"), filepath.Join(binDir, "meshctl")
}

func TestMain(m *testing.M) {
	code := m.Run()
	if binDir != "" {
		os.RemoveAll(binDir)
	}
	os.Exit(code)
}

type proc struct {
	cmd  *exec.Cmd
	logs *bytes.Buffer
	done chan struct{}
}

// startMeshd runs `meshd control` on 127.0.0.1:0 and waits for control.addr.
func startMeshd(t testing.TB, meshd, dir string, extra ...string) *proc {
	t.Helper()
	os.Remove(filepath.Join(dir, "control.addr"))
	args := append([]string{"control", "--dir", dir, "--listen", "127.0.0.1:0", "--metrics-listen", ""}, extra...)
	p := &proc{cmd: exec.Command(meshd, args...), logs: &bytes.Buffer{}, done: make(chan struct{})}
	p.cmd.Stderr = &syncWriter{w: p.logs}
	if err := p.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() { p.cmd.Wait(); close(p.done) }()
	t.Cleanup(func() {
		p.cmd.Process.Kill()
		<-p.done
		if t.Failed() {
			t.Logf("meshd log:\n%s", p.logs.String())
		}
	})
	deadline := time.Now().Add(30 * time.Second)
	for {
		if b, err := os.ReadFile(filepath.Join(dir, "control.addr")); err == nil && len(b) > 0 {
			return p
		}
		select {
		case <-p.done:
			t.Fatalf("meshd exited: %s", p.logs.String())
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("meshd did not write control.addr: %s", p.logs.String())
		}
		time.Sleep(20 * time.Millisecond)
	}
}

type syncWriter struct {
	mu sync.Mutex
	w  *bytes.Buffer
}

func (s *syncWriter) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.w.Write(p)
}

func run(t *testing.T, name string, args ...string) string {
	t.Helper()
	var stderr bytes.Buffer
	cmd := exec.Command(name, args...)
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("%s %s: %v\n%s%s", filepath.Base(name), strings.Join(args, " "), err, out, stderr.String())
	}
	return string(out)
}

// TestCLIWithOpenSSL replays the proof with the real binaries:
// token, issue, openssl verify and x509 -text, go-spiffe ParseAndVerify,
// meshctl cert inspect, ca status, revoke and rotate-root, and a restart
// that keeps the root.
func TestCLIWithOpenSSL(t *testing.T) {
	if _, err := exec.LookPath("openssl"); err != nil {
		t.Skip("openssl not installed (make deps installs it)")
	}
	meshd, meshctl := binaries(t)
	dir := t.TempDir()
	p := startMeshd(t, meshd, dir)
	for _, f := range []string{"admin.token", "ca.db"} {
		if st, err := os.Stat(filepath.Join(dir, f)); err != nil || st.Mode().Perm() != 0o600 {
			t.Fatalf("%s: %v mode %v, want 0600", f, err, st.Mode())
		}
	}
	tok := strings.TrimSpace(run(t, meshctl, "--dir", dir, "token", "create", "--namespace", "default", "--service-account", "sleep", "--ttl", "10m", "--uses", "1"))
	certs := filepath.Join(t.TempDir(), "certs")
	run(t, meshctl, "--dir", dir, "cert", "issue", "--namespace", "default", "--service-account", "sleep", "--token", tok, "--out", certs)
	if st, err := os.Stat(filepath.Join(certs, "key.pem")); err != nil || st.Mode().Perm() != 0o600 {
		t.Fatalf("key.pem mode: %v %v", err, st.Mode())
	}
	out := run(t, "openssl", "verify", "-CAfile", filepath.Join(certs, "root-cert.pem"), filepath.Join(certs, "cert-chain.pem"))
	if !strings.Contains(out, "cert-chain.pem: OK") {
		t.Fatalf("openssl verify: %s", out)
	}
	text := run(t, "openssl", "x509", "-in", filepath.Join(certs, "cert-chain.pem"), "-text", "-noout")
	for _, want := range []string{"URI:spiffe://cluster.local/ns/default/sa/sleep", "TLS Web Server Authentication, TLS Web Client Authentication", "CA:FALSE"} {
		if !strings.Contains(text, want) {
			t.Errorf("openssl x509 -text lacks %q:\n%s", want, text)
		}
	}
	if strings.Contains(text, "DNS:") {
		t.Errorf("workload certificate has a DNS SAN:\n%s", text)
	}
	// go-spiffe's ParseAndVerify accepts the files as an X.509-SVID.
	chainPEM, _ := os.ReadFile(filepath.Join(certs, "cert-chain.pem"))
	rootPEM, _ := os.ReadFile(filepath.Join(certs, "root-cert.pem"))
	roots, _ := identity.ParseCertsPEM(rootPEM)
	chain, _ := identity.ParseCertsPEM(chainPEM)
	var raw [][]byte
	for _, c := range chain {
		raw = append(raw, c.Raw)
	}
	id, _, err := x509svid.ParseAndVerify(raw, x509bundle.FromX509Authorities(spiffeid.RequireTrustDomainFromString("cluster.local"), roots))
	if err != nil || id.String() != sleep {
		t.Fatalf("x509svid.ParseAndVerify: %v %v", id, err)
	}

	var rep struct {
		SPIFFEID string `json:"spiffeID"`
		Serial   string `json:"serial"`
		Verify   struct {
			OK bool `json:"ok"`
		} `json:"verify"`
	}
	if err := json.Unmarshal([]byte(run(t, meshctl, "cert", "inspect", filepath.Join(certs, "cert-chain.pem"), "-o", "json")), &rep); err != nil {
		t.Fatal(err)
	}
	if rep.SPIFFEID != sleep || !rep.Verify.OK || rep.Serial != identity.SerialHex(chain[0]) {
		t.Fatalf("cert inspect: %+v", rep)
	}
	// Inspecting against another mesh's root fails with exit status 1.
	run(t, meshctl, "--dir", dir, "ca", "rotate-root", "--overlap", "1h")
	other := t.TempDir()
	startMeshd(t, meshd, other)
	cmd := exec.Command(meshctl, "cert", "inspect", filepath.Join(certs, "cert-chain.pem"), "--root", filepath.Join(other, "root-cert.pem"))
	if out, err := cmd.CombinedOutput(); err == nil || cmd.ProcessState.ExitCode() != 1 || !strings.Contains(string(out), "untrusted_chain") {
		t.Fatalf("inspect against a foreign root: %v\n%s", err, out)
	}

	// Reusing the token is refused with its reason.
	cmd = exec.Command(meshctl, "--dir", dir, "cert", "issue", "-n", "default", "-s", "sleep", "--token", tok, "--out", t.TempDir())
	if out, err := cmd.CombinedOutput(); err == nil || !strings.Contains(string(out), "has been used 1 of 1 times") {
		t.Fatalf("token reuse: %v\n%s", err, out)
	}

	var st careport.Status
	if err := json.Unmarshal([]byte(run(t, meshctl, "--dir", dir, "ca", "status", "-o", "json")), &st); err != nil {
		t.Fatal(err)
	}
	if len(st.Roots) != 2 || st.Roots[0].State != "signing" || st.Roots[1].State != "pending" {
		t.Fatalf("status after rotate-root: %+v", st.Roots)
	}
	if out := run(t, meshctl, "--dir", dir, "ca", "revoke", "--serial", rep.Serial, "--reason", "test"); !strings.Contains(out, "revoked 1 certificate(s): "+rep.Serial) {
		t.Fatalf("revoke: %s", out)
	}

	// Restart: the root (and the pending one) are kept.
	before := mustFile(t, filepath.Join(dir, "root-cert.pem"))
	p.cmd.Process.Signal(os.Interrupt)
	<-p.done
	startMeshd(t, meshd, dir)
	if after := mustFile(t, filepath.Join(dir, "root-cert.pem")); strings.Join(after, "") != strings.Join(before, "") {
		t.Fatal("root-cert.pem changed across a restart")
	}
	out = run(t, "openssl", "verify", "-CAfile", filepath.Join(dir, "root-cert.pem"), filepath.Join(certs, "cert-chain.pem"))
	if !strings.Contains(out, ": OK") {
		t.Fatalf("old certificate after restart: %s", out)
	}
}

func mustFile(t *testing.T, p string) []string {
	t.Helper()
	b, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	return []string{string(b)}
}

// TestKill9DuringIssuance kills `meshd control` with SIGKILL while 1,000
// issuances run in parallel. Afterwards the store opens, serials are
// unique, and every certificate a client received is in the issuance log
// with the identity and validity the client got.
func TestKill9DuringIssuance(t *testing.T) {
	meshd, _ := binaries(t)
	dir := t.TempDir()
	p := startMeshd(t, meshd, dir)
	ctx := context.Background()

	adminConn, err := client.Dial(ctx, client.Options{Dir: dir, AdminToken: true})
	if err != nil {
		t.Fatal(err)
	}
	tok, err := pb.NewAdminClient(adminConn).CreateJoinToken(ctx, &pb.CreateJoinTokenRequest{Namespace: "default", ServiceAccount: "load", TtlSeconds: 3600, Uses: 5000})
	adminConn.Close()
	if err != nil {
		t.Fatal(err)
	}
	const n = 1000
	csrs := make([][]byte, 16)
	for i := range csrs {
		csrs[i] = newCSR(t, ecKey(t), nil)
	}
	conns := make([]*grpc.ClientConn, 8)
	for i := range conns {
		if conns[i], err = client.Dial(ctx, client.Options{Dir: dir, Token: tok.Token}); err != nil {
			t.Fatal(err)
		}
		defer conns[i].Close()
	}

	type got struct{ serial, id, notAfter string }
	var (
		mu       sync.Mutex
		received []got
		okCount  atomic.Int32
		killOnce sync.Once
		wg       sync.WaitGroup
		start    = make(chan struct{})
	)
	kill := func() {
		killOnce.Do(func() { p.cmd.Process.Kill() }) // SIGKILL: no chance to clean up
	}
	for i := range n {
		wg.Go(func() {
			<-start
			cctx, cancel := context.WithTimeout(ctx, 30*time.Second)
			defer cancel()
			resp, err := pb.NewCertificateAuthorityClient(conns[i%len(conns)]).CreateCertificate(cctx, &pb.CreateCertificateRequest{Csr: csrs[i%len(csrs)]})
			if err != nil {
				return // the server died under it: the client got nothing
			}
			leaf, err := identity.ParseCertsPEM([]byte(resp.CertChain[0]))
			if err != nil {
				t.Error(err)
				return
			}
			mu.Lock()
			received = append(received, got{resp.Serial, resp.SpiffeId, leaf[0].NotAfter.UTC().Format(time.RFC3339)})
			mu.Unlock()
			if okCount.Add(1) == n/4 {
				kill()
			}
		})
	}
	close(start)
	wg.Wait()
	kill() // in case fewer than n/4 succeeded before errors
	<-p.done
	t.Logf("clients received %d of %d certificates before SIGKILL", len(received), n)
	if len(received) == 0 || len(received) == n {
		t.Fatalf("kill did not land during issuance (%d received)", len(received))
	}

	// The store opens (bbolt would refuse a torn file) and holds the log.
	authority, err := ca.New(ca.Config{Dir: dir, Log: quietLogger()})
	if err != nil {
		t.Fatalf("store after SIGKILL: %v", err)
	}
	log, err := authority.IssuanceLog()
	authority.Close()
	if err != nil {
		t.Fatal(err)
	}
	bySerial := map[string]ca.IssuanceRecord{}
	for _, r := range log {
		if _, dup := bySerial[r.Serial]; dup {
			t.Fatalf("serial %s twice in the log", r.Serial)
		}
		bySerial[r.Serial] = r
	}
	seen := map[string]bool{}
	for _, g := range received {
		if seen[g.serial] {
			t.Fatalf("two clients received serial %s", g.serial)
		}
		seen[g.serial] = true
		r, ok := bySerial[g.serial]
		if !ok {
			t.Fatalf("client received serial %s that is not in the log", g.serial)
		}
		if r.SPIFFEID != g.id || time.Unix(r.NotAfter, 0).UTC().Format(time.RFC3339) != g.notAfter {
			t.Fatalf("log %+v differs from what the client got %+v", r, g)
		}
	}
	t.Logf("log holds %d records (%d received + in flight at the kill + the server's own)", len(log), len(received))

	// And it serves again on the same store, with new unique serials.
	startMeshd(t, meshd, dir)
	conn, err := client.Dial(ctx, client.Options{Dir: dir, Token: tok.Token})
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	resp, err := pb.NewCertificateAuthorityClient(conn).CreateCertificate(ctx, &pb.CreateCertificateRequest{Csr: csrs[0]})
	if err != nil {
		t.Fatalf("issue after restart: %v", err)
	}
	if _, dup := bySerial[resp.Serial]; dup {
		t.Fatalf("serial %s reused after restart", resp.Serial)
	}
}
