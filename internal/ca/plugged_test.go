package ca_test

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/meshauth/meshauth/internal/ca"
	"github.com/meshauth/meshauth/internal/ca/catest"
)

// opensslCA makes a root and an intermediate with the openssl CLI, as an
// operator would for Istio's cacerts, and returns the cacerts dir plus the
// work dir holding the other keys.
func opensslCA(t *testing.T) (cacerts, work string) {
	t.Helper()
	if _, err := exec.LookPath("openssl"); err != nil {
		t.Skip("openssl not installed (make deps installs it)")
	}
	work = t.TempDir()
	cacerts = filepath.Join(work, "cacerts")
	if err := os.Mkdir(cacerts, 0o700); err != nil {
		t.Fatal(err)
	}
	ext := filepath.Join(work, "ext.cnf")
	os.WriteFile(ext, []byte(`[root]
basicConstraints=critical,CA:TRUE
keyUsage=critical,keyCertSign,cRLSign
subjectKeyIdentifier=hash
[inter]
basicConstraints=critical,CA:TRUE,pathlen:0
keyUsage=critical,keyCertSign,cRLSign,digitalSignature
subjectKeyIdentifier=hash
authorityKeyIdentifier=keyid
[leafish]
basicConstraints=critical,CA:FALSE
keyUsage=critical,digitalSignature
`), 0o644)
	run := func(args ...string) {
		t.Helper()
		cmd := exec.Command("openssl", args...)
		cmd.Dir = work
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Fatalf("openssl %s: %v\n%s", strings.Join(args, " "), err, out)
		}
	}
	run("ecparam", "-name", "prime256v1", "-genkey", "-noout", "-out", "root-key.pem")
	run("req", "-x509", "-new", "-key", "root-key.pem", "-sha256", "-days", "3650", "-subj", "/O=Example Corp/CN=Example Root CA",
		"-addext", "basicConstraints=critical,CA:TRUE", "-addext", "keyUsage=critical,keyCertSign,cRLSign", "-out", "root-cert.pem")
	run("ecparam", "-name", "prime256v1", "-genkey", "-noout", "-out", "ca-key.pem")
	run("req", "-new", "-key", "ca-key.pem", "-subj", "/O=Example Corp/CN=meshauth intermediate", "-out", "ca.csr")
	run("x509", "-req", "-in", "ca.csr", "-CA", "root-cert.pem", "-CAkey", "root-key.pem", "-CAcreateserial",
		"-days", "730", "-sha256", "-extfile", "ext.cnf", "-extensions", "inter", "-out", "ca-cert.pem")
	for _, f := range []string{"ca-cert.pem", "ca-key.pem", "root-cert.pem"} {
		copyFile(t, filepath.Join(work, f), filepath.Join(cacerts, f))
	}
	// cert-chain.pem as Istio documents it: the intermediate then the root.
	chain := append(readFile(t, filepath.Join(work, "ca-cert.pem")), readFile(t, filepath.Join(work, "root-cert.pem"))...)
	os.WriteFile(filepath.Join(cacerts, "cert-chain.pem"), chain, 0o644)
	return cacerts, work
}

func readFile(t *testing.T, p string) []byte {
	t.Helper()
	b, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func copyFile(t *testing.T, from, to string) {
	t.Helper()
	if err := os.WriteFile(to, readFile(t, from), 0o600); err != nil {
		t.Fatal(err)
	}
}

func TestPluggedIn(t *testing.T) {
	cacerts, work := opensslCA(t)
	clk := newClock(time.Now())
	c := newCA(t, t.TempDir(), clk, func(cfg *ca.Config) { cfg.CACertsDir = cacerts })
	iss, err := c.Sign(context.Background(), self(sleepID), csrFor(t, ecKey(t)), 0)
	if err != nil {
		t.Fatal(err)
	}
	chain := chainOf(t, iss)
	if len(chain) != 2 || chain[1].Subject.CommonName != "meshauth intermediate" {
		t.Fatalf("chain: %d certs", len(chain))
	}
	if b := c.Bundle(); len(b.Roots) != 1 || b.Roots[0].Subject.CommonName != "Example Root CA" {
		t.Fatal("bundle root is not the operator's root")
	}
	if _, err := c.Bundle().Identity().Verify(chain, clk.now()); err != nil {
		t.Fatalf("verify against the operator root: %v", err)
	}
	// openssl agrees: the leaf chains through the intermediate to the root.
	out := t.TempDir()
	os.WriteFile(filepath.Join(out, "cert-chain.pem"), []byte(strings.Join(iss.ChainPEM, "")), 0o644)
	os.WriteFile(filepath.Join(out, "leaf.pem"), []byte(iss.ChainPEM[0]), 0o644)
	cmd := exec.Command("openssl", "verify", "-CAfile", filepath.Join(cacerts, "root-cert.pem"), "-untrusted", filepath.Join(out, "cert-chain.pem"), filepath.Join(out, "leaf.pem"))
	if b, err := cmd.CombinedOutput(); err != nil || !strings.Contains(string(b), "OK") {
		t.Fatalf("openssl verify: %v\n%s", err, b)
	}
	if _, err := c.RotateRoot(0, ""); err == nil || !strings.Contains(err.Error(), "plugged-in") {
		t.Fatalf("rotating a plugged-in CA: %v", err)
	}
	st, _ := c.Status()
	if st.Mode != "plugged-in" {
		t.Fatalf("mode %q", st.Mode)
	}

	// The operator's own rotation: root-cert.pem with a new root before the
	// old one. Both are in the bundle; the chain still anchors at the old.
	next := catest.New(t)
	two := t.TempDir()
	for _, f := range []string{"ca-cert.pem", "ca-key.pem", "cert-chain.pem"} {
		copyFile(t, filepath.Join(cacerts, f), filepath.Join(two, f))
	}
	os.WriteFile(filepath.Join(two, "root-cert.pem"), append(next.RootPEM(), readFile(t, filepath.Join(work, "root-cert.pem"))...), 0o644)
	c2 := newCA(t, t.TempDir(), clk, func(cfg *ca.Config) { cfg.CACertsDir = two })
	if b := c2.Bundle(); len(b.Roots) != 2 || b.Roots[0].Subject.CommonName != "Example Root CA" || !b.Roots[1].Equal(next.Root) {
		t.Fatalf("two-root bundle: %d roots", len(b.Roots))
	}
}

// TestPluggedInRefusals: each broken cacerts dir is refused at start with a
// message that names the file and the problem.
func TestPluggedInRefusals(t *testing.T) {
	good, work := opensslCA(t)
	openssl := func(args ...string) {
		t.Helper()
		cmd := exec.Command("openssl", args...)
		cmd.Dir = work
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Fatalf("openssl: %v\n%s", err, out)
		}
	}
	// Material for the broken variants.
	openssl("ecparam", "-name", "prime256v1", "-genkey", "-noout", "-out", "other-key.pem")
	openssl("req", "-x509", "-new", "-key", "other-key.pem", "-days", "30", "-subj", "/CN=Other Root",
		"-addext", "basicConstraints=critical,CA:TRUE", "-out", "other-root.pem")
	openssl("req", "-new", "-key", "other-key.pem", "-subj", "/CN=not a ca", "-out", "leafish.csr")
	openssl("x509", "-req", "-in", "leafish.csr", "-CA", "root-cert.pem", "-CAkey", "root-key.pem", "-CAcreateserial",
		"-days", "30", "-extfile", "ext.cnf", "-extensions", "leafish", "-out", "leafish.pem")

	tests := []struct {
		name  string
		edit  func(dir string)
		wants []string
	}{
		{"mismatched key", func(d string) { copyFile(t, filepath.Join(work, "other-key.pem"), filepath.Join(d, "ca-key.pem")) },
			[]string{"ca-key.pem does not match the public key of", "ca-cert.pem"}},
		{"not a CA", func(d string) {
			copyFile(t, filepath.Join(work, "leafish.pem"), filepath.Join(d, "ca-cert.pem"))
			copyFile(t, filepath.Join(work, "other-key.pem"), filepath.Join(d, "ca-key.pem"))
		}, []string{"ca-cert.pem", "is not a CA certificate"}},
		{"chain does not reach the root", func(d string) { copyFile(t, filepath.Join(work, "other-root.pem"), filepath.Join(d, "root-cert.pem")) },
			[]string{"ca-cert.pem does not chain to", "root-cert.pem"}},
		{"missing file", func(d string) { os.Remove(filepath.Join(d, "cert-chain.pem")) },
			[]string{"read", "cert-chain.pem"}},
		{"key is not PEM", func(d string) { os.WriteFile(filepath.Join(d, "ca-key.pem"), []byte("hello"), 0o600) },
			[]string{"ca-key.pem", "no PEM private key"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dir := t.TempDir()
			for _, f := range []string{"ca-cert.pem", "ca-key.pem", "cert-chain.pem", "root-cert.pem"} {
				copyFile(t, filepath.Join(good, f), filepath.Join(dir, f))
			}
			tt.edit(dir)
			_, err := ca.New(ca.Config{Dir: t.TempDir(), CACertsDir: dir, Log: quietLog()})
			if err == nil {
				t.Fatal("started with a broken cacerts dir")
			}
			for _, w := range tt.wants {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q does not mention %q", err, w)
				}
			}
		})
	}
}
