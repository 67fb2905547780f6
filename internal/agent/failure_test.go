package agent_test

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"io"
	"log/slog"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc"

	pb "github.com/meshauth/meshauth/api/meshauth/v1"
	"github.com/meshauth/meshauth/internal/agent"
	"github.com/meshauth/meshauth/internal/ca"
	"github.com/meshauth/meshauth/internal/client"
	"github.com/meshauth/meshauth/internal/control"
	"github.com/meshauth/meshauth/internal/identity"
	"github.com/meshauth/meshauth/internal/policy"
	"github.com/meshauth/meshauth/internal/proxy"
)

// logBuf collects an agent's JSON log lines.
type logBuf struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (l *logBuf) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.buf.Write(p)
}

// find returns the log records at level with msg containing substr.
func (l *logBuf) find(level, substr string) []map[string]any {
	l.mu.Lock()
	defer l.mu.Unlock()
	var out []map[string]any
	for _, line := range strings.Split(l.buf.String(), "\n") {
		var m map[string]any
		if json.Unmarshal([]byte(line), &m) != nil {
			continue
		}
		if m["level"] == level && strings.Contains(m["msg"].(string), substr) {
			out = append(out, m)
		}
	}
	return out
}

// startFileAgent runs an agent whose join token is read from tokenFile (as
// `meshd sidecar --token-file`), logging JSON into a logBuf, with short
// backoffs so that the test sees retries quickly.
func startFileAgent(t *testing.T, srv *control.Server, id identity.ID, tokenFile string, ttl, maxBackoff time.Duration) (*agent.Agent, *logBuf, <-chan error) {
	t.Helper()
	tokens, err := agent.NewTokenSource("", tokenFile)
	if err != nil {
		t.Fatal(err)
	}
	logs := &logBuf{}
	store := agent.NewStore(agent.StoreConfig{Want: id})
	a, err := agent.New(agent.Config{
		ID: id, NoFiles: true, CA: connectTo(t, srv, srv.Dir(), store, tokens), Store: store, TTL: ttl, Tokens: tokens,
		TokenPoll: 50 * time.Millisecond, MinRenewInterval: 200 * time.Millisecond, MinBackoff: 50 * time.Millisecond, MaxBackoff: maxBackoff,
		Log: slog.New(slog.NewJSONHandler(logs, nil)),
	})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done, stopped := make(chan error, 1), make(chan struct{})
	go func() { done <- a.Run(ctx); close(stopped) }()
	t.Cleanup(func() {
		cancel()
		select {
		case <-stopped:
		case <-time.After(10 * time.Second):
			t.Error("agent did not stop")
		}
	})
	return a, logs, done
}

func writeToken(t *testing.T, srv *control.Server, id identity.ID, path string) string {
	t.Helper()
	tok, err := srv.CA().CreateJoinToken(id, time.Hour, 1)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, []byte(tok.Secret+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	return tok.Secret
}

// TestStartupRefusalEndsRun: a sidecar asking for a TTL over the CA's
// maximum gets the CA's message from Run (so `meshd sidecar` exits non-zero
// with it) instead of retrying forever, and the refused request did not
// spend its join token.
func TestStartupRefusalEndsRun(t *testing.T) {
	if testing.Short() {
		t.Skip("runs a control plane")
	}
	srv := newClockedControlPlane(t, time.Now, ca.Config{DefaultTTL: time.Hour, MaxTTL: 2 * time.Hour})
	id := identity.MustParse("spiffe://cluster.local/ns/default/sa/greedy")
	tokenFile := filepath.Join(t.TempDir(), "join.token")
	writeToken(t, srv, id, tokenFile)
	_, logs, done := startFileAgent(t, srv, id, tokenFile, 3*time.Hour, 300*time.Millisecond)
	var err error
	select {
	case err = <-done:
	case <-time.After(20 * time.Second):
		t.Fatalf("agent still retrying after 20s; log:\n%s", logs.buf.String())
	}
	var se *agent.StartupError
	if !errors.As(err, &se) {
		t.Fatalf("Run = %v, want a *agent.StartupError", err)
	}
	if !strings.Contains(err.Error(), "over the maximum") || !strings.Contains(err.Error(), "InvalidArgument") {
		t.Fatalf("Run error %q does not carry the CA's message", err)
	}
	if len(logs.find("ERROR", "refused the first certificate")) != 1 {
		t.Errorf("want one error-level log of the refusal; log:\n%s", logs.buf.String())
	}
	// The token was not spent by the refused request: the same file
	// bootstraps an agent that asks for an allowed TTL.
	ok, _, _ := startFileAgent(t, srv, id, tokenFile, time.Hour, 300*time.Millisecond)
	waitFor(t, func() bool { return ok.Store().SVID() != nil }, "a certificate with the same join token and an allowed TTL")
}

// TestRevokedOwnCertificate: when the CA revokes the sidecar's own serial,
// the agent logs it at error level (once, and again at every refused
// attempt), readiness fails with the reason, and — its one-use join token
// being spent — it waits for a new token in the token file: the agent polls
// the file, notices the new token and gets a new certificate at once,
// without a restart; readiness passes again.
func TestRevokedOwnCertificate(t *testing.T) {
	if testing.Short() {
		t.Skip("runs a control plane")
	}
	srv := newClockedControlPlane(t, time.Now, ca.Config{})
	id := identity.MustParse("spiffe://cluster.local/ns/default/sa/sleep")
	tokenFile := filepath.Join(t.TempDir(), "join.token")
	writeToken(t, srv, id, tokenFile)
	// A refused attempt is retried after MaxBackoff: an hour here, so only
	// the token file's change can bring the agent back within the test.
	a, logs, _ := startFileAgent(t, srv, id, tokenFile, time.Hour, time.Hour)
	waitFor(t, func() bool { return a.Store().SVID() != nil }, "first certificate")
	// The trust bundle stream is up once the first bundle update is logged.
	waitFor(t, func() bool { return len(logs.find("INFO", "trust bundle updated")) > 0 }, "the trust bundle stream")

	p := newProxy(t, a.Store(), &policy.Snapshot{TrustDomain: "cluster.local", InboundDefault: policy.ServerStrict}, proxy.Config{})
	hl := listen(t)
	hs := &http.Server{Handler: p.HealthHandler(nil)}
	go hs.Serve(hl)
	defer hs.Close()
	ready := func() (int, string) {
		resp, err := http.Get("http://" + hl.Addr().String() + "/healthz/ready")
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b)
	}
	if code, body := ready(); code != 200 {
		t.Fatalf("ready before revocation: %d %s", code, body)
	}

	// A long-lived client of the control plane (as the sidecar's policy
	// stream) on a CertConn, used once before the revocation.
	certConn := agent.NewCertConn(a.Store(), func(ctx context.Context) (*grpc.ClientConn, error) {
		return client.Dial(ctx, client.Options{Dir: srv.Dir(), Addr: srv.Addr(), Roots: a.Store().Bundle,
			GetClientCertificate: func(*tls.CertificateRequestInfo) (*tls.Certificate, error) { return a.Store().SVID().TLS, nil }})
	})
	defer certConn.Close()
	// A renewal over that client: the CA checks the presented certificate
	// (valid, not revoked) on every call.
	callCA := func() error {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		if err != nil {
			t.Fatal(err)
		}
		csr, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{}, key)
		if err != nil {
			t.Fatal(err)
		}
		_, err = pb.NewCertificateAuthorityClient(certConn).CreateCertificate(ctx, &pb.CreateCertificateRequest{Csr: csr})
		return err
	}
	if err := callCA(); err != nil {
		t.Fatal(err)
	}

	serial := a.Store().SVID().Serial()
	if _, _, err := srv.CA().Revoke(serial, "", "key compromise"); err != nil {
		t.Fatal(err)
	}
	waitFor(t, func() bool { code, _ := ready(); return code == 503 }, "readiness to fail after the revocation")
	code, body := ready()
	t.Logf("/healthz/ready: %d %s", code, strings.TrimSpace(body))
	if !strings.Contains(body, "serial "+serial+" is revoked") {
		t.Errorf("readiness body %q does not say the certificate is revoked", body)
	}
	// The store (and so readiness) has the bundle a moment before the agent
	// logs what it found in it: wait for the line, do not race it.
	waitFor(t, func() bool { return len(logs.find("ERROR", "own certificate revoked")) > 0 }, "an error-level log of the revocation")
	// The join token is spent: the attempt is refused and logged at error
	// level with the CA's reason and what to do (and again at every retry).
	waitFor(t, func() bool { return len(logs.find("ERROR", "revoked and the CA refused a new one")) >= 1 }, "an error log of the refused attempt")
	rec := logs.find("ERROR", "revoked and the CA refused a new one")[0]
	if e, _ := rec["error"].(string); !strings.Contains(e, "has been used 1 of 1 times") {
		t.Errorf("refusal log error %q lacks the CA's reason", e)
	}
	if m, _ := rec["msg"].(string); !strings.Contains(m, tokenFile) || !strings.Contains(m, "meshctl token create") {
		t.Errorf("refusal log %q does not say how to recover", m)
	}
	if _, body := ready(); !strings.Contains(body, "used 1 of 1 times") {
		t.Errorf("readiness body %q lacks the CA's refusal", body)
	}
	if s := a.Store().SVID().Serial(); s != serial {
		t.Fatalf("certificate changed to %s with a spent token", s)
	}

	// The operator's way back: a new join token in the same file.
	writeToken(t, srv, id, tokenFile)
	waitFor(t, func() bool { return a.Store().SVID().Serial() != serial }, "a new certificate after the new token")
	if len(logs.find("INFO", "join token changed")) == 0 {
		t.Errorf("the agent did not log the token change")
	}
	waitFor(t, func() bool { code, _ := ready(); return code == 200 }, "readiness after recovery")
	if err := a.Store().Health(); err != nil {
		t.Fatalf("Health after recovery: %v", err)
	}
	// The long-lived client presents the new certificate, not the revoked
	// one its first connection was made with.
	if err := callCA(); err != nil {
		t.Fatalf("call to the control plane after recovery: %v", err)
	}
}

// TestRenewalRefusedFailsReadiness: a renewal the CA refuses for good (here
// the CA's maximum TTL was lowered under what the sidecar asks) is logged at
// error level and fails readiness while the current certificate keeps
// serving; the agent keeps retrying with backoff, and once the CA accepts
// again it renews and readiness passes.
func TestRenewalRefusedFailsReadiness(t *testing.T) {
	if testing.Short() {
		t.Skip("runs a control plane")
	}
	cp := &controlPlane{dir: t.TempDir(), caCfg: ca.Config{DefaultTTL: time.Hour, MaxTTL: 2 * time.Hour}}
	cp.start(t)
	defer cp.stop(t)
	id := identity.MustParse("spiffe://cluster.local/ns/default/sa/renewer")
	tokenFile := filepath.Join(t.TempDir(), "join.token")
	writeToken(t, cp.srv, id, tokenFile)
	tokens, err := agent.NewTokenSource("", tokenFile)
	if err != nil {
		t.Fatal(err)
	}
	logs := &logBuf{}
	store := agent.NewStore(agent.StoreConfig{Want: id})
	a, err := agent.New(agent.Config{
		ID: id, NoFiles: true, CA: connectTo(t, cp.srv, cp.dir, store, tokens), Store: store, TTL: 2 * time.Hour, Tokens: tokens,
		RenewFraction: 0.0005, Jitter: -1, MinRenewInterval: 200 * time.Millisecond,
		MinBackoff: 50 * time.Millisecond, MaxBackoff: 300 * time.Millisecond,
		Log: slog.New(slog.NewJSONHandler(logs, nil)),
	})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { a.Run(ctx); close(done) }()
	defer func() { cancel(); <-done }()
	waitFor(t, func() bool { return store.SVID() != nil }, "first certificate")
	p := newProxy(t, store, &policy.Snapshot{TrustDomain: "cluster.local", InboundDefault: policy.ServerStrict}, proxy.Config{})
	if err := p.Ready(); err != nil {
		t.Fatal(err)
	}

	cp.stop(t)
	cp.caCfg.MaxTTL = time.Hour
	cp.start(t)
	waitFor(t, func() bool { return p.Ready() != nil }, "readiness to fail on the refused renewal")
	err = p.Ready()
	t.Logf("Ready: %v", err)
	if !strings.Contains(err.Error(), "refuses to renew") || !strings.Contains(err.Error(), "over the maximum") {
		t.Fatalf("Ready = %v, want the CA's refusal", err)
	}
	waitFor(t, func() bool { return len(logs.find("ERROR", "refused to renew")) >= 2 }, "error-level logs of the refused renewals, retried")
	before := store.SVID().Serial()

	cp.stop(t)
	cp.caCfg.MaxTTL = 2 * time.Hour
	cp.start(t)
	waitFor(t, func() bool { return store.SVID().Serial() != before && p.Ready() == nil }, "renewal and readiness once the CA accepts again")
}
