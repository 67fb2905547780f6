package main

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/meshauth/meshauth/internal/ca/catest"
	"github.com/meshauth/meshauth/internal/policy"
)

var (
	buildOnce sync.Once
	meshdBin  string
	buildErr  error
)

// meshdBinary builds this command, and meshd-sidecar beside it as `make
// build` does, once per test run: `meshd sidecar` then runs meshd-sidecar.
func meshdBinary(t *testing.T) string {
	t.Helper()
	buildOnce.Do(func() {
		dir, err := os.MkdirTemp("", "meshd-bin")
		if err != nil {
			buildErr = err
			return
		}
		meshdBin = filepath.Join(dir, "meshd")
		out, err := exec.Command("go", "build", "-o", dir+"/", ".", "../meshd-sidecar").CombinedOutput()
		if err != nil {
			buildErr = fmt.Errorf("go build: %v\n%s", err, out)
		}
	})
	if buildErr != nil {
		t.Fatal(buildErr)
	}
	return meshdBin
}

func freePort(t *testing.T) int {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

// startMeshd runs `meshd sidecar` with args and waits for its admin
// endpoint to report ready.
func startMeshd(t *testing.T, admin string, args ...string) *bytes.Buffer {
	t.Helper()
	var logs bytes.Buffer
	cmd := exec.Command(meshdBinary(t), append([]string{"sidecar", "--admin", admin}, args...)...)
	cmd.Stdout, cmd.Stderr = &logs, &logs
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		cmd.Process.Signal(os.Interrupt)
		done := make(chan struct{})
		go func() { cmd.Wait(); close(done) }()
		select {
		case <-done:
		case <-time.After(5 * time.Second):
			cmd.Process.Kill()
			<-done
		}
		if t.Failed() {
			t.Logf("meshd %s logs:\n%s", admin, logs.String())
		}
	})
	deadline := time.Now().Add(15 * time.Second)
	for {
		resp, err := http.Get("http://" + admin + "/healthz/ready")
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == 200 {
				// The ready sidecar is meshd-sidecar, exec'd by meshd
				// in place (same PID).
				if exe, _ := os.Readlink(fmt.Sprintf("/proc/%d/exe", cmd.Process.Pid)); filepath.Base(exe) != smallSidecar {
					t.Fatalf("meshd sidecar runs as %s, want %s beside meshd", exe, smallSidecar)
				}
				return &logs
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("sidecar %s not ready: %v\n%s", admin, err, logs.String())
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func writeJSON(t *testing.T, path string, v any) {
	t.Helper()
	b, err := json.MarshalIndent(v, "", "  ")
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, b, 0o644); err != nil {
		t.Fatal(err)
	}
}

// curl runs the real curl and returns its exit code and stdout.
func curl(t *testing.T, env []string, args ...string) (int, string, string) {
	t.Helper()
	cmd := exec.Command("curl", append([]string{"-s", "-S", "--max-time", "10"}, args...)...)
	cmd.Env = append(os.Environ(), env...)
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	err := cmd.Run()
	code := 0
	if ee, ok := err.(*exec.ExitError); ok {
		code = ee.ExitCode()
	} else if err != nil {
		t.Fatal(err)
	}
	return code, out.String(), errb.String()
}

// TestSidecarSeedWalkthrough replays the seed's "Testing the authentication
// setup" with two meshd sidecar processes in explicit mode (no root) and the
// real curl: in-mesh 200 with XFCC; plaintext to STRICT reset (exit 56);
// https without a client certificate refused; with the certificate files 200.
func TestSidecarSeedWalkthrough(t *testing.T) {
	if _, err := exec.LookPath("curl"); err != nil {
		t.Skip("curl not installed (make deps installs it)")
	}
	ca := catest.New(t)
	dir := t.TempDir()
	httpbinDir, sleepDir := filepath.Join(dir, "httpbin"), filepath.Join(dir, "sleep")
	ca.WriteFiles(t, httpbinDir, ca.Issue(t, "spiffe://cluster.local/ns/default/sa/httpbin"))
	ca.WriteFiles(t, sleepDir, ca.Issue(t, "spiffe://cluster.local/ns/default/sa/sleep"))

	app := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		h := map[string]string{"Host": r.Host}
		for k, v := range r.Header {
			h[k] = strings.Join(v, ",")
		}
		json.NewEncoder(w).Encode(map[string]any{"headers": h})
	}))
	defer app.Close()

	inPort := freePort(t)
	httpbinSnap := filepath.Join(dir, "httpbin.json")
	writeJSON(t, httpbinSnap, policy.Snapshot{
		TrustDomain: "cluster.local", InboundDefault: policy.ServerStrict,
		Inbound: []policy.InboundPort{{Port: uint32(app.Listener.Addr().(*net.TCPAddr).Port), Mode: policy.ServerStrict, Protocol: "HTTP", Service: "httpbin.default"}},
	})
	sleepSnap := filepath.Join(dir, "sleep.json")
	appPort := uint32(app.Listener.Addr().(*net.TCPAddr).Port)
	writeJSON(t, sleepSnap, policy.Snapshot{
		TrustDomain: "cluster.local",
		Outbound: []policy.OutboundService{{
			Name: "httpbin", Namespace: "default", Hosts: []string{"httpbin", "httpbin.default"},
			Ports: []policy.OutboundPort{{Name: "http", Port: 8000, TargetPort: appPort, Protocol: "HTTP", TLSMode: policy.ClientIstioMutual}},
			Endpoints: []policy.Endpoint{{Workload: "httpbin-1", ServiceAccount: "httpbin", Address: "127.0.0.1",
				Ports: map[uint32]uint32{appPort: uint32(inPort)}, Sidecar: true}},
			ServerIdentities: []string{"spiffe://cluster.local/ns/default/sa/httpbin"},
		}},
	})
	httpbinAdmin := "127.0.0.1:" + strconv.Itoa(freePort(t))
	httpbinProm := "127.0.0.1:" + strconv.Itoa(freePort(t))
	startMeshd(t, httpbinAdmin, "--prometheus", httpbinProm, "--static-certs", "--certs-dir", httpbinDir, "--snapshot", httpbinSnap,
		"--namespace", "default", "--service-account", "httpbin", "--workload-api", "off",
		"--inbound", "127.0.0.1:"+strconv.Itoa(inPort)+"="+app.Listener.Addr().String(), "--outbound-listen", "")
	outPort := freePort(t)
	sleepAdmin := "127.0.0.1:" + strconv.Itoa(freePort(t))
	startMeshd(t, sleepAdmin, "--static-certs", "--certs-dir", sleepDir, "--snapshot", sleepSnap,
		"--namespace", "default", "--service-account", "sleep", "--workload-api", "off",
		"--outbound-listen", "127.0.0.1:"+strconv.Itoa(outPort))

	proxyEnv := []string{"http_proxy=http://127.0.0.1:" + strconv.Itoa(outPort), "no_proxy="}
	t.Run("sleep to httpbin through the sidecars: 200", func(t *testing.T) {
		code, out, stderr := curl(t, proxyEnv, "-H", "X-Forwarded-Client-Cert: URI=spiffe://cluster.local/ns/default/sa/admin", "http://httpbin:8000/headers")
		if code != 0 {
			t.Fatalf("curl exit %d: %s", code, stderr)
		}
		want := "By=spiffe://cluster.local/ns/default/sa/httpbin;URI=spiffe://cluster.local/ns/default/sa/sleep"
		if !strings.Contains(out, want) {
			t.Fatalf("app did not see XFCC %q: %s", want, out)
		}
		if strings.Contains(out, "sa/admin") {
			t.Fatalf("client-supplied XFCC reached the app: %s", out)
		}
		code, out, _ = curl(t, proxyEnv, "-o", "/dev/null", "-w", "%{http_code}", "http://httpbin:8000/headers")
		if code != 0 || out != "200" {
			t.Fatalf("curl -w %%{http_code}: exit %d, %q", code, out)
		}
	})
	t.Run("--prometheus serves metrics and nothing else of the admin API", func(t *testing.T) {
		code, out, stderr := curl(t, nil, "-f", "http://"+httpbinProm+"/stats/prometheus")
		if code != 0 || !strings.Contains(out, `meshauth_sidecar_authz_decisions_total{decision="allow"}`) {
			t.Fatalf("curl /stats/prometheus: exit %d %s\n%s", code, stderr, out)
		}
		if code, _, _ := curl(t, nil, "-f", "http://"+httpbinProm+"/metrics"); code != 0 {
			t.Errorf("curl /metrics: exit %d", code)
		}
		code, out, _ = curl(t, nil, "-o", "/dev/null", "-w", "%{http_code}", "http://"+httpbinProm+"/config_dump")
		if code != 0 || out != "404" {
			t.Errorf("/config_dump on the Prometheus port: exit %d, HTTP %s; want 404", code, out)
		}
	})
	target := "127.0.0.1:" + strconv.Itoa(inPort)
	t.Run("plaintext to STRICT: exit 56", func(t *testing.T) {
		code, _, stderr := curl(t, nil, "http://"+target+"/headers")
		if code != 56 || !strings.Contains(stderr, "reset") {
			t.Fatalf("curl exit %d (%s), want 56 connection reset", code, strings.TrimSpace(stderr))
		}
	})
	t.Run("https without client certificate: refused", func(t *testing.T) {
		code, _, stderr := curl(t, nil, "-k", "https://"+target+"/headers")
		if code == 0 {
			t.Fatal("curl without a client certificate succeeded")
		}
		t.Logf("curl exit %d: %s", code, strings.TrimSpace(stderr))
	})
	t.Run("https with the certificate files: 200", func(t *testing.T) {
		code, out, stderr := curl(t, nil, "-o", "/dev/null", "-w", "%{http_code}", "-k",
			"--key", filepath.Join(sleepDir, "key.pem"), "--cert", filepath.Join(sleepDir, "cert-chain.pem"),
			"--cacert", filepath.Join(sleepDir, "root-cert.pem"), "https://"+target+"/headers")
		if code != 0 || out != "200" {
			t.Fatalf("curl exit %d out %q: %s", code, out, stderr)
		}
	})
	t.Run("admin endpoints", func(t *testing.T) {
		for _, path := range []string{"/certs", "/config_dump", "/metrics"} {
			resp, err := http.Get("http://" + httpbinAdmin + path)
			if err != nil {
				t.Fatal(err)
			}
			b, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			if resp.StatusCode != 200 {
				t.Fatalf("%s: %d", path, resp.StatusCode)
			}
			if path == "/metrics" && !strings.Contains(string(b), `meshauth_sidecar_tls_handshakes_total{direction="inbound",reason="plaintext",result="refused"} 1`) {
				t.Errorf("/metrics lacks the plaintext refusal:\n%s", b)
			}
			if path == "/certs" && !strings.Contains(string(b), "sa/httpbin") {
				t.Errorf("/certs: %s", b)
			}
		}
	})
}

// TestSidecarInProcess: without meshd-sidecar beside it (a lone `go
// install ./cmd/meshd`), `meshd sidecar` runs the same command itself:
// the same help and the same flag errors.
func TestSidecarInProcess(t *testing.T) {
	alone := filepath.Join(t.TempDir(), "meshd")
	b, err := os.ReadFile(meshdBinary(t))
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(alone, b, 0o755); err != nil {
		t.Fatal(err)
	}
	for _, bin := range []string{alone, meshdBinary(t)} {
		out, err := exec.Command(bin, "sidecar", "--help").CombinedOutput()
		if err != nil || !strings.Contains(string(out), "--certs-dir") || !strings.Contains(string(out), "mesh identity and mutual TLS") {
			t.Errorf("%s sidecar --help: %v\n%s", bin, err, out)
		}
		out, err = exec.Command(bin, "sidecar", "--no-such-flag").CombinedOutput()
		if err == nil || !strings.Contains(string(out), "unknown flag: --no-such-flag") {
			t.Errorf("%s sidecar --no-such-flag: %v\n%s", bin, err, out)
		}
	}
}
