package sidecar

import (
	"context"
	"errors"
	"io"
	"net"
	"net/http"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/meshauth/meshauth/internal/ca/catest"
)

func freeAddr(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().String()
}

// staticConfig is a sidecar with certificates from files (no control
// plane), its admin API on a free loopback port and nothing else listening
// beyond the outbound proxy.
func staticConfig(t *testing.T) Config {
	ca := catest.New(t)
	dir := filepath.Join(t.TempDir(), "certs")
	ca.WriteFiles(t, dir, ca.Issue(t, "spiffe://cluster.local/ns/default/sa/httpbin"))
	return Config{
		Namespace: "default", ServiceAccount: "httpbin", TrustDomain: "cluster.local",
		CertsDir: dir, StaticCerts: true, WorkloadAPI: "off",
		Outbound: "127.0.0.1:0", Admin: freeAddr(t),
	}
}

func get(url string) (int, string, error) {
	resp, err := http.Get(url)
	if err != nil {
		return 0, "", err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b), err
}

// TestRunServesAndStops: Run, called in process as meshd sidecar calls it,
// serves the certificate from --static-certs on its admin API, and returns
// nil, with its listeners closed, when its context ends.
func TestRunServesAndStops(t *testing.T) {
	cfg := staticConfig(t)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- Run(ctx, cfg) }()
	deadline := time.Now().Add(10 * time.Second)
	for {
		code, _, err := get("http://" + cfg.Admin + "/healthz/ready")
		if err == nil && code == 200 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("admin %s not ready: %d %v", cfg.Admin, code, err)
		}
		time.Sleep(20 * time.Millisecond)
	}
	if code, body, err := get("http://" + cfg.Admin + "/certs"); err != nil || code != 200 || !strings.Contains(body, "sa/httpbin") {
		t.Fatalf("/certs: %d %v %s", code, err, body)
	}
	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("Run after cancel: %v", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("Run did not return after its context ended")
	}
	if _, _, err := get("http://" + cfg.Admin + "/healthz/ready"); err == nil {
		t.Fatal("the admin API still answers after Run returned")
	}
}

// TestRunReturnsAppExit: the app's non-zero status comes back as an
// *exec.ExitError, which meshd sidecar exits with.
func TestRunReturnsAppExit(t *testing.T) {
	cfg := staticConfig(t)
	cfg.App = []string{"sh", "-c", "exit 3"}
	errc := make(chan error, 1)
	go func() { errc <- Run(context.Background(), cfg) }()
	select {
	case err := <-errc:
		var ee *exec.ExitError
		if !errors.As(err, &ee) || ee.ExitCode() != 3 {
			t.Fatalf("Run = %v, want the app's exit status 3", err)
		}
	case <-time.After(15 * time.Second):
		t.Fatal("Run did not return when its app exited")
	}
}

// TestRunBadIdentity: a namespace that is not a valid identity part is
// refused before anything listens.
func TestRunBadIdentity(t *testing.T) {
	cfg := staticConfig(t)
	cfg.Namespace = "bad/ns"
	if err := Run(context.Background(), cfg); err == nil {
		t.Fatal("Run accepted namespace bad/ns")
	}
	if _, _, err := get("http://" + cfg.Admin + "/healthz/ready"); err == nil {
		t.Fatal("the admin API answers for a refused config")
	}
}
