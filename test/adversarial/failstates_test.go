package adversarial

import (
	"encoding/json"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// Issue #11, finding 12: failure states that hid. These defend against a
// careless operator (a sidecar configured with a lifetime the CA will never
// grant) and make a revocation — the operator's answer to a stolen key —
// visible on the revoked workload itself, with a documented way back.

// readyz returns the status code and body of a sidecar's /healthz/ready.
func readyz(t *testing.T, admin string) (int, string) {
	t.Helper()
	c := http.Client{Timeout: 5 * time.Second}
	resp, err := c.Get("http://" + admin + "/healthz/ready")
	if err != nil {
		t.Fatalf("readiness of %s: %v", admin, err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, strings.TrimSpace(string(b))
}

// currentSerial reads the serial of the sidecar's certificate from its
// admin /certs.
func currentSerial(t *testing.T, admin string) string {
	t.Helper()
	c := http.Client{Timeout: 5 * time.Second}
	resp, err := c.Get("http://" + admin + "/certs")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var certs struct {
		Certificates []struct {
			Serial string `json:"serial"`
		} `json:"certificates"`
	}
	if err := json.NewDecoder(resp.Body).Decode(&certs); err != nil || len(certs.Certificates) == 0 {
		t.Fatalf("/certs of %s: %v %+v", admin, err, certs)
	}
	return certs.Certificates[0].Serial
}

func waitUntil(t *testing.T, timeout time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %s waiting for %s", timeout, what)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// A sidecar whose own certificate is revoked (`meshctl ca revoke --serial`)
// says so at error level, fails readiness with the reason, is refused by
// its peers, and — its one-use join token spent — recovers without a restart
// when the operator writes a new join token into its --token-file.
func TestRevokedSidecarSaysSoAndRecovers(t *testing.T) {
	m := startMesh(t, meshOptions{})
	admin := m.Httpbin.AdminAddr
	get := func() (string, string, int) {
		return curl(t, "-o", "/dev/null", "-w", "%{http_code}", "-x", m.Sleep.OutboundProxy, "http://httpbin:8000/headers")
	}
	if out, errOut, code := get(); code != 0 || out != "200" {
		t.Fatalf("before revocation: curl exit %d, status %s: %s", code, out, errOut)
	}
	serial := currentSerial(t, admin)

	out, errOut, code := m.Ctl(t, "ca", "revoke", "--serial", serial, "--reason", "key compromise")
	if code != 0 || !strings.Contains(out, serial) {
		t.Fatalf("meshctl ca revoke --serial %s: exit %d: %s %s", serial, code, out, errOut)
	}
	t.Logf("meshctl ca revoke: %s", strings.TrimSpace(out))

	// Readiness fails with the reason.
	waitUntil(t, 15*time.Second, "httpbin's readiness to fail", func() bool { c, _ := readyz(t, admin); return c == 503 })
	c, body := readyz(t, admin)
	t.Logf("/healthz/ready: %d %s", c, body)
	if !strings.Contains(body, "serial "+serial+" is revoked") {
		t.Errorf("readiness body %q does not name the revoked serial", body)
	}
	// Said at error level, then again on each refused attempt, with the
	// CA's reason and what to do. (The first attempt comes at least 10 s
	// after the certificate was issued: the agent's rate floor.)
	m.WaitLog(t, "httpbin", 10*time.Second, `"level":"ERROR"`, `own certificate revoked by the CA`, serial)
	tokenFile := filepath.Join(m.Dir, "workloads", "httpbin", "join.token")
	ln := m.WaitLog(t, "httpbin", 20*time.Second, `"level":"ERROR"`, `own certificate is revoked and the CA refused a new one`, `has been used 1 of 1 times`)
	if !strings.Contains(ln, tokenFile) || !strings.Contains(ln, "meshctl token create") {
		t.Errorf("the error log does not say how to recover: %s", ln)
	}
	// Its peers refuse the revoked certificate.
	if out, _, _ := get(); out == "200" {
		t.Fatal("sleep still reaches httpbin, whose certificate is revoked")
	}
	m.WaitLog(t, "sleep", 10*time.Second, `revoked`)

	// The documented way back: a new join token into the token file.
	tok, errOut, code := m.Ctl(t, "token", "create", "-n", "default", "-s", "httpbin")
	if code != 0 {
		t.Fatalf("meshctl token create: exit %d: %s", code, errOut)
	}
	if err := os.WriteFile(tokenFile, []byte(tok), 0o600); err != nil {
		t.Fatal(err)
	}
	waitUntil(t, 30*time.Second, "httpbin ready again", func() bool { c, _ := readyz(t, admin); return c == 200 })
	if s := currentSerial(t, admin); s == serial {
		t.Fatalf("httpbin ready again with the revoked serial %s", s)
	}
	m.WaitLog(t, "httpbin", 5*time.Second, `"msg":"join token changed"`)
	waitUntil(t, 30*time.Second, "sleep to reach httpbin again", func() bool { out, _, _ := get(); return out == "200" })
	// Its policy stream to the control plane works again too: it presents
	// the new certificate (a connection made with the revoked one was
	// refused for good), so a config change reaches it.
	applied := strings.Count(m.Log("httpbin"), `"msg":"snapshot applied"`)
	if err := m.WriteConfig("extra.yaml", `apiVersion: meshauth.io/v1alpha1
kind: Service
metadata:
  name: extra
  namespace: default
spec:
  selector:
    app: extra
  ports:
  - name: http
    number: 9000
    protocol: HTTP
`); err != nil {
		t.Fatal(err)
	}
	waitUntil(t, 30*time.Second, "httpbin to apply the new config", func() bool {
		return strings.Count(m.Log("httpbin"), `"msg":"snapshot applied"`) > applied
	})
	if m.Httpbin.Proc.Exited() != nil {
		t.Fatal("httpbin's sidecar exited; recovery must not need a restart")
	}
}

// A sidecar asking for a lifetime over the CA's maximum exits non-zero at
// start-up with the CA's message, instead of retrying forever.
func TestSidecarTTLOverMaxExits(t *testing.T) {
	m := startMesh(t, meshOptions{NoSleep: true})
	tok, errOut, code := m.Ctl(t, "token", "create", "-n", "default", "-s", "greedy")
	if code != 0 {
		t.Fatalf("meshctl token create: exit %d: %s", code, errOut)
	}
	dir := t.TempDir()
	tokenFile := filepath.Join(dir, "join.token")
	if err := os.WriteFile(tokenFile, []byte(tok), 0o600); err != nil {
		t.Fatal(err)
	}
	p, err := m.Start("greedy", []string{m.Meshd(), "sidecar", "--control-dir", m.StateDir, "--token-file", tokenFile,
		"--namespace", "default", "--service-account", "greedy", "--certs-dir", filepath.Join(dir, "certs"),
		"--workload-api", "off", "--outbound-listen", "", "--admin", "",
		"--cert-ttl", "2400h"}, nil)
	if err != nil {
		t.Fatal(err)
	}
	select {
	case <-p.Done():
	case <-time.After(30 * time.Second):
		t.Fatalf("the sidecar was still running 30 s after the CA refused its TTL; log:\n%s", m.Log("greedy"))
	}
	var ee *exec.ExitError
	if err := p.Err(); err == nil || !asExit(err, &ee) || ee.ExitCode() == 0 {
		t.Fatalf("sidecar exit: %v, want a non-zero exit status", err)
	}
	log := m.Log("greedy")
	// `meshd sidecar` exec'd meshd-sidecar (built beside meshd), which
	// names itself in its exit message.
	if !strings.Contains(log, "meshd-sidecar: agent: the CA refused the first certificate: InvalidArgument: requested TTL 2400h0m0s is over the maximum") {
		t.Fatalf("the sidecar's exit message lacks the CA's reason; log:\n%s", log)
	}
	t.Logf("exit %d; last line: %s", ee.ExitCode(), lastLine(log))
}

func asExit(err error, ee **exec.ExitError) bool {
	e, ok := err.(*exec.ExitError)
	if ok {
		*ee = e
	}
	return ok
}

func lastLine(s string) string {
	lines := strings.Split(strings.TrimSpace(s), "\n")
	return lines[len(lines)-1]
}
