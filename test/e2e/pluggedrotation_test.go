package e2e

import (
	"bytes"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/meshauth/meshauth/internal/careport"
	"github.com/meshauth/meshauth/internal/localmesh"
)

// opensslCAInto makes, with the openssl CLI as docs/ca.md does, a root
// and an intermediate, and writes the four plugged-in files into dir.
func opensslCAInto(t *testing.T, dir, cn string) {
	t.Helper()
	work := t.TempDir()
	run := func(args ...string) {
		t.Helper()
		cmd := exec.Command("openssl", args...)
		cmd.Dir = work
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Fatalf("openssl %s: %v\n%s", strings.Join(args, " "), err, out)
		}
	}
	os.WriteFile(filepath.Join(work, "inter.ext"), []byte("basicConstraints=critical,CA:TRUE,pathlen:0\nkeyUsage=critical,keyCertSign,cRLSign,digitalSignature\n"), 0o644)
	run("ecparam", "-name", "prime256v1", "-genkey", "-noout", "-out", "root-key.pem")
	run("req", "-x509", "-new", "-key", "root-key.pem", "-sha256", "-days", "3650", "-subj", "/O=Example Corp/CN="+cn,
		"-addext", "basicConstraints=critical,CA:TRUE", "-addext", "keyUsage=critical,keyCertSign,cRLSign", "-out", "root-cert.pem")
	run("ecparam", "-name", "prime256v1", "-genkey", "-noout", "-out", "ca-key.pem")
	run("req", "-new", "-key", "ca-key.pem", "-subj", "/O=Example Corp/CN=intermediate of "+cn, "-out", "ca.csr")
	run("x509", "-req", "-in", "ca.csr", "-CA", "root-cert.pem", "-CAkey", "root-key.pem", "-CAcreateserial",
		"-days", "730", "-sha256", "-extfile", "inter.ext", "-out", "ca-cert.pem")
	if err := os.MkdirAll(dir, 0o700); err != nil {
		t.Fatal(err)
	}
	read := func(f string) []byte {
		b, err := os.ReadFile(filepath.Join(work, f))
		if err != nil {
			t.Fatal(err)
		}
		return b
	}
	for f, b := range map[string][]byte{"ca-cert.pem": read("ca-cert.pem"), "ca-key.pem": read("ca-key.pem"),
		"root-cert.pem": read("root-cert.pem"), "cert-chain.pem": append(read("ca-cert.pem"), read("root-cert.pem")...)} {
		if err := os.WriteFile(filepath.Join(dir, f), b, 0o600); err != nil {
			t.Fatal(err)
		}
	}
}

// TestPluggedRootRotationEndToEnd rotates an operator's plugged-in CA
// (`meshd control --cacerts DIR`) of a local mesh of real sidecars to the
// operator's next CA (`meshctl ca rotate-root --from NEWDIR`), while
// sleep calls httpbin through both sidecars without pause: the staged
// root reaches both sidecars, signing switches once they ACKed it, they
// renew from it (2-minute TTL), the old root leaves, the --cacerts dir
// then holds the new CA, and a control plane restarted on it signs with
// it. No request may fail.
func TestPluggedRootRotationEndToEnd(t *testing.T) {
	needBinaries(t)
	if _, err := exec.LookPath("openssl"); err != nil {
		t.Skip("openssl not installed")
	}
	dir := t.TempDir()
	cacerts, newDir := filepath.Join(dir, "cacerts"), filepath.Join(dir, "cacerts-new")
	opensslCAInto(t, cacerts, "Example Root CA")
	opensslCAInto(t, newDir, "Example Root CA 2")
	lm, ws := rotationMesh(t, filepath.Join(dir, "mesh"), []string{"--tick", "1s", "--cacerts", cacerts})
	httpbin, sleep := ws[0], ws[1]
	ctl := meshctlIn(t, lm)
	wait := func(what string, timeout time.Duration, cond func(*careport.Rotation) bool) *careport.Rotation {
		t.Helper()
		return waitRotation(t, ctl, what, timeout, cond)
	}
	wait("both sidecars on the bundle stream, ACKed", 30*time.Second, func(st *careport.Rotation) bool {
		n := 0
		for _, s := range st.Sidecars {
			if s.Connected && !s.AckedAt.IsZero() { // a plugged-in CA's first bundle is version 0
				n++
			}
		}
		return n == 2
	})
	traffic := startTraffic(t, sleep.OutboundProxy)
	t.Cleanup(func() { traffic() })
	oldRoot := signingRoot(t, ctl)

	t.Logf("$ meshctl ca rotate-root --from %s\n%s", newDir, ctl("ca", "rotate-root", "--from", newDir))
	st := wait("signing switches once both sidecars ACKed the staged root", 60*time.Second, func(st *careport.Rotation) bool {
		return st.Phase == careport.PhaseReissuing
	})
	newRoot := st.NewRoot
	if newRoot == oldRoot || signingRoot(t, ctl) != newRoot {
		t.Fatalf("after the switch: signing %s, old %s, new %s", signingRoot(t, ctl), oldRoot, newRoot)
	}
	for _, s := range st.Sidecars {
		if !s.HasNewRoot {
			t.Fatalf("switched though %s had not ACKed the new root", s.Instance)
		}
	}
	for _, w := range []*localmesh.Workload{httpbin, sleep} {
		waitIssuer(t, w, newRoot, 3*time.Minute)
	}
	st = wait("the old root leaves the bundle", 3*time.Minute, func(st *careport.Rotation) bool { return st.Phase == careport.PhaseDone })
	if len(st.Forced) != 0 {
		t.Fatalf("rotation done with forced %v", st.Forced)
	}
	t.Logf("$ meshctl ca rotation status\n%s", ctl("ca", "rotation", "status"))
	for _, f := range []string{"ca-cert.pem", "ca-key.pem", "cert-chain.pem", "root-cert.pem"} {
		a, _ := os.ReadFile(filepath.Join(cacerts, f))
		b, _ := os.ReadFile(filepath.Join(newDir, f))
		if !bytes.Equal(a, b) {
			t.Fatalf("%s in --cacerts is not the new CA's after the rotation", f)
		}
	}

	// The control plane restarted on the --cacerts dir signs with the new CA.
	killAndRestartControl(t, lm)
	if got := signingRoot(t, ctl); got != newRoot {
		t.Fatalf("after restart signing %s, want %s", got, newRoot)
	}
	sent, failed := traffic()
	t.Logf("traffic sleep -> httpbin through both sidecars during the rotation: %d requests, %d failed", sent, failed)
	if sent == 0 || failed != 0 {
		t.Fatalf("%d of %d requests failed during the rotation", failed, sent)
	}
}
