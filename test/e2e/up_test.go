package e2e

import (
	"bufio"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"syscall"
	"testing"
	"time"
)

// TestUpRestartKeepsRoot runs `meshctl up` as a user does (no root), stops
// it with Ctrl-C (SIGINT), starts it again on the same directory, and checks
// that the CA root and an identity issued before the restart are the same.
func TestUpRestartKeepsRoot(t *testing.T) {
	needBinaries(t)
	dir := t.TempDir()
	cfg := t.TempDir()
	if err := os.WriteFile(filepath.Join(cfg, "mesh.yaml"), []byte(meshConfig("MUTUAL_TLS")), 0o644); err != nil {
		t.Fatal(err)
	}
	meshctl := func(args ...string) string {
		t.Helper()
		var stderr strings.Builder
		cmd := exec.Command(filepath.Join(bin, "meshctl"), append([]string{"--dir", dir}, args...)...)
		cmd.Stderr = &stderr
		out, err := cmd.Output()
		if err != nil {
			t.Fatalf("meshctl %v: %v\n%s%s", args, err, out, stderr.String())
		}
		return string(out)
	}
	signing := regexp.MustCompile(`Signing cert:\s+.*sha256:([0-9a-f]+)`)

	var roots []string
	for run := 0; run < 2; run++ {
		cmd := exec.Command(filepath.Join(bin, "meshctl"), "--dir", dir, "up", "--config", cfg, "--listen", "127.0.0.1:0")
		stdout, err := cmd.StdoutPipe()
		if err != nil {
			t.Fatal(err)
		}
		// A file, not a pipe: the control plane (meshctl up's child)
		// shares it, and a pipe would make Wait wait for the child too.
		logf, err := os.Create(filepath.Join(t.TempDir(), "up.log"))
		if err != nil {
			t.Fatal(err)
		}
		cmd.Stderr = logf
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		killed := false
		t.Cleanup(func() {
			if !killed {
				cmd.Process.Kill()
				cmd.Wait()
			}
		})
		// up prints where everything is once the control plane answers.
		sc := bufio.NewScanner(stdout)
		up := false
		for sc.Scan() {
			if strings.Contains(sc.Text(), "meshauth control plane is up.") {
				up = true
				break
			}
		}
		if !up {
			log, _ := os.ReadFile(logf.Name())
			t.Fatalf("run %d: meshctl up never said the control plane is up; its log:\n%s", run, log)
		}
		go io.Copy(io.Discard, stdout)
		status := meshctl("ca", "status")
		m := signing.FindStringSubmatch(status)
		if m == nil {
			t.Fatalf("run %d: no signing root in ca status:\n%s", run, status)
		}
		roots = append(roots, m[1])
		if run == 0 {
			// An identity issued before the restart must still verify
			// against the root after it.
			meshctl("cert", "issue", "--namespace", "default", "--service-account", "httpbin",
				"--token", strings.TrimSpace(meshctl("token", "create", "--namespace", "default", "--service-account", "httpbin")),
				"--out", filepath.Join(dir, "certs"))
		}
		// Ctrl-C.
		if err := cmd.Process.Signal(syscall.SIGINT); err != nil {
			t.Fatal(err)
		}
		done := make(chan error, 1)
		go func() { done <- cmd.Wait() }()
		select {
		case err := <-done:
			killed = true
			if err != nil {
				t.Fatalf("run %d: meshctl up after Ctrl-C: %v (want a clean exit)", run, err)
			}
		case <-time.After(30 * time.Second):
			t.Fatalf("run %d: meshctl up did not stop within 30s of Ctrl-C", run)
		}
	}
	if roots[0] != roots[1] {
		t.Errorf("the root changed across a restart: %s then %s", roots[0], roots[1])
	}
	out, err := exec.Command("openssl", "verify", "-CAfile", filepath.Join(dir, "root-cert.pem"), filepath.Join(dir, "certs", "cert-chain.pem")).CombinedOutput()
	if err != nil {
		t.Errorf("a certificate issued before the restart does not verify against the root after it: %v\n%s", err, out)
	}
}
