package adversarial

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// Issue 11 finding 6: truncating mesh.yaml of a running `meshd control` (an
// editor's truncate-then-write, or a careless operator) was applied as an
// empty config: every sidecar went to DISABLE and httpbin's sidecar took
// plaintext. The attacker here is a network peer (plaintext curl to
// httpbin's inbound) helped by a careless operator. Now the empty file is
// rejected, the last good config stays, the control plane logs the file at
// error, meshctl check fails naming it, and the complete file, once
// written, is applied. (On the old code the plaintext request was answered
// 200 within a couple of polls.)
func TestTruncatedMeshConfigKeepsMutualTLS(t *testing.T) {
	m := startMesh(t, meshOptions{})
	in := m.Httpbin.InboundAddr
	mesh := filepath.Join(m.ConfigDir, "mesh.yaml")
	good, err := os.ReadFile(mesh)
	if err != nil {
		t.Fatal(err)
	}
	plaintextRefused := func(when string) {
		t.Helper()
		out, _, code := curl(t, "-i", "http://"+in+"/headers")
		if code == 0 || strings.Contains(out, `{"method"`) {
			t.Fatalf("%s: plaintext to httpbin's inbound was served (exit %d):\n%s", when, code, out)
		}
	}
	plaintextRefused("before the truncation")

	// The editor truncates (O_TRUNC, not a rename) and has not written yet.
	if err := os.Truncate(mesh, 0); err != nil {
		t.Fatal(err)
	}
	// Until the control plane has handled the file (a few polls), plaintext
	// must stay refused; then the rejection is in its log, at error, with
	// the file.
	deadline := time.Now().Add(20 * time.Second)
	for {
		plaintextRefused("after mesh.yaml was truncated")
		if ln := logLine(m.Log("control"), "level=ERROR", `msg="config rejected; the last good config stays in force"`, "at="+mesh+":1:1", "no config object in the file"); ln != "" {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the control plane never logged the rejection of the empty %s:\n%s", mesh, m.Log("control"))
		}
		time.Sleep(200 * time.Millisecond)
	}
	plaintextRefused("after the rejection")
	m.WaitLog(t, "httpbin", 5*time.Second, `"connection refused"`, `"reason":"plaintext"`)
	out, _, _ := curl(t, "-i", "-x", m.Sleep.OutboundProxy, "http://httpbin:8000/headers")
	if statusOf(out) != 200 || !strings.Contains(strings.Join(parseAppSaw(t, out).header("X-Forwarded-Client-Cert"), ""), "URI=spiffe://cluster.local/ns/default/sa/sleep") {
		t.Fatalf("sleep -> httpbin is not mTLS with sleep's identity after the truncation:\n%s", out)
	}
	check, _, code := m.Ctl(t, "check")
	if code != 1 || !strings.Contains(check, "FAIL  config directory") || !strings.Contains(check, mesh+":1:1: no config object in the file") ||
		!strings.Contains(check, "authPolicy MUTUAL_TLS") {
		t.Fatalf("meshctl check (exit %d) does not fail on the rejected file while MUTUAL_TLS stays:\n%s", code, check)
	}

	// The editor's write completes: the file applies, check is clean again.
	if err := os.WriteFile(mesh, good, 0o644); err != nil {
		t.Fatal(err)
	}
	deadline = time.Now().Add(20 * time.Second)
	for {
		check, _, code = m.Ctl(t, "check")
		if code == 0 && !strings.Contains(check, "config directory") {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("meshctl check still fails after the complete file was written (exit %d):\n%s", code, check)
		}
		time.Sleep(200 * time.Millisecond)
	}
	plaintextRefused("after the complete file")
}

// logLine returns the first line of log holding every substring, or "".
func logLine(log string, subs ...string) string {
	for _, ln := range strings.Split(log, "\n") {
		all := ln != ""
		for _, s := range subs {
			all = all && strings.Contains(ln, s)
		}
		if all {
			return ln
		}
	}
	return ""
}
