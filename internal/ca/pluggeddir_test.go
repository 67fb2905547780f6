package ca_test

import (
	"bytes"
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/meshauth/meshauth/internal/ca"
	"github.com/meshauth/meshauth/internal/careport"
	"github.com/meshauth/meshauth/internal/identity"
)

var caFiles = []string{"ca-cert.pem", "ca-key.pem", "cert-chain.pem", "root-cert.pem"}

// stagedSetup makes two openssl CAs (their own roots): the one in force in
// work/cacerts and the operator's next one beside it in work/cacerts-new.
func stagedSetup(t *testing.T) (cacerts, newDir string) {
	cacerts, work := opensslCA(t)
	other, _ := opensslCA(t)
	newDir = filepath.Join(work, "cacerts-new")
	if err := os.Mkdir(newDir, 0o700); err != nil {
		t.Fatal(err)
	}
	for _, f := range caFiles {
		copyFile(t, filepath.Join(other, f), filepath.Join(newDir, f))
	}
	return cacerts, newDir
}

func openPlugged(t *testing.T, state, cacerts string, clk *clock) *ca.CA {
	t.Helper()
	c, err := ca.New(ca.Config{Dir: state, CACertsDir: cacerts, Clock: clk.now, Log: quietLog()})
	if err != nil {
		t.Fatalf("ca.New: %v", err)
	}
	return c
}

func rootOf(t *testing.T, dir string) string {
	t.Helper()
	certs, err := identity.ParseCertsPEM(readFile(t, filepath.Join(dir, "root-cert.pem")))
	if err != nil {
		t.Fatal(err)
	}
	return identity.Fingerprint(certs[0])
}

// TestPluggedDirStagedRotation: rotate-root --from NEWDIR stages the new CA
// (pending, in the bundle), signing switches once the sidecar ACKed it, the
// old CA retires once nothing it signed lives, and the --cacerts dir then
// holds the new CA's files, so a restart signs with it. A restart at each
// step resumes the rotation where it was.
func TestPluggedDirStagedRotation(t *testing.T) {
	cacerts, newDir := stagedSetup(t)
	state := t.TempDir()
	clk := newClock(time.Now())
	oldRoot, newRoot := rootOf(t, cacerts), rootOf(t, newDir)
	c := openPlugged(t, state, cacerts, clk)
	defer func() { c.Close() }()

	if _, err := c.RotateRoot(0, ""); err == nil || !strings.Contains(err.Error(), "--from") {
		t.Fatalf("rotate-root without --from: %v", err)
	}
	s := &sidecar{t: t, c: c, id: sleepID, name: "sleep-1", leaf: leafFor(t, c, self(sleepID))}
	s.connect()
	s.receive(true)
	v0 := c.Bundle().Version
	if _, err := c.RotateRoot(0, newDir); err != nil {
		t.Fatal(err)
	}
	st := rotationStatus(t, c)
	if st.Phase != careport.PhaseDistributing || st.NewRoot != newRoot || st.Waiting != 1 {
		t.Fatalf("after stage: phase %s new %s waiting %d", st.Phase, st.NewRoot[:16], st.Waiting)
	}
	if b := c.Bundle(); b.Version <= v0 || len(b.Roots) != 2 || identity.Fingerprint(b.Roots[0]) != oldRoot {
		t.Fatalf("bundle after stage: v%d (was v%d), %d roots", b.Version, v0, len(b.Roots))
	}
	if fi, err := os.Stat(filepath.Join(state, ca.NextCADir, "ca-key.pem")); err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("staged key: %v %v", fi, err)
	}
	// A second --from while one is staged is refused.
	if _, err := c.RotateRoot(0, newDir); err == nil {
		t.Fatal("second staging accepted")
	}

	// Crash while distributing: the staged CA is taken in, still pending.
	c.Close()
	c = openPlugged(t, state, cacerts, clk)
	tick(t, c)
	if st := rotationStatus(t, c); st.Phase != careport.PhaseDistributing || st.NewRoot != newRoot || len(c.Bundle().Roots) != 2 {
		t.Fatalf("after restart while distributing: %s, %d roots", st.Phase, len(c.Bundle().Roots))
	}

	s.c = c
	s.connect()
	s.receive(true) // the only sidecar ACKs: signing switches
	if st := rotationStatus(t, c); st.Phase != careport.PhaseReissuing {
		t.Fatalf("after the ACK: %s", st.Phase)
	}
	if _, err := os.Stat(filepath.Join(state, ca.NextCADir, "activate-at")); err != nil {
		t.Fatal("no activate-at marker after the switch")
	}
	checkSignsUnder(t, c, newRoot)

	// Crash after the switch: the staged CA signs at once.
	c.Close()
	c = openPlugged(t, state, cacerts, clk)
	tick(t, c)
	checkSignsUnder(t, c, newRoot)
	if rootOf(t, cacerts) != oldRoot {
		t.Fatal("--cacerts dir replaced before retirement")
	}

	// sleep renews under the new CA; two minutes on, nothing lives under
	// the old one and it retires.
	leafFor(t, c, ca.Caller{ID: sleepID, Method: "mtls", Subject: identity.SerialHex(s.leaf)})
	clk.add(2 * time.Minute)
	tick(t, c)
	if st := rotationStatus(t, c); st.Phase != careport.PhaseDone || len(c.Bundle().Roots) != 1 {
		t.Fatalf("after retirement: %s, %d roots", st.Phase, len(c.Bundle().Roots))
	}
	for _, f := range caFiles {
		if !bytes.Equal(readFile(t, filepath.Join(cacerts, f)), readFile(t, filepath.Join(newDir, f))) {
			t.Errorf("%s in the --cacerts dir is not the new CA's", f)
		}
	}
	if fi, err := os.Stat(filepath.Join(cacerts, "ca-key.pem")); err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("key in --cacerts: %v %v", fi, err)
	}
	if _, err := os.Stat(filepath.Join(state, ca.NextCADir)); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("%s left after retirement: %v", ca.NextCADir, err)
	}
	// A restart signs with the new CA, alone in the bundle.
	c.Close()
	c = openPlugged(t, state, cacerts, clk)
	checkSignsUnder(t, c, newRoot)
	if len(c.Bundle().Roots) != 1 {
		t.Fatalf("%d roots after restart", len(c.Bundle().Roots))
	}
}

// TestPluggedDirRetireResumes: a crash between writing the retiring marker
// (and maybe some files) and removing cacerts-next is finished at start.
func TestPluggedDirRetireResumes(t *testing.T) {
	cacerts, newDir := stagedSetup(t)
	state := t.TempDir()
	clk := newClock(time.Now())
	newRoot := rootOf(t, newDir)
	c := openPlugged(t, state, cacerts, clk)
	if _, err := c.RotateRoot(0, newDir); err != nil {
		t.Fatal(err)
	}
	tick(t, c) // no sidecar: switches at once
	checkSignsUnder(t, c, newRoot)
	c.Close()
	// Died in RetireRoot after the marker and the first file.
	next := filepath.Join(state, ca.NextCADir)
	os.WriteFile(filepath.Join(next, "retiring"), []byte("x\n"), 0o600)
	copyFile(t, filepath.Join(next, "ca-cert.pem"), filepath.Join(cacerts, "ca-cert.pem"))

	c = openPlugged(t, state, cacerts, clk)
	defer c.Close()
	tick(t, c)
	if _, err := os.Stat(next); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("%s left: %v", next, err)
	}
	if rootOf(t, cacerts) != newRoot || len(c.Bundle().Roots) != 1 {
		t.Fatal("the --cacerts dir does not hold the new CA alone")
	}
	checkSignsUnder(t, c, newRoot)
	if st := rotationStatus(t, c); st.Phase != careport.PhaseDone {
		t.Fatalf("phase %s", st.Phase)
	}
}

// TestPluggedDirStageRefusals: a bad NEWDIR is refused, naming the file and
// the problem, and changes nothing (no cacerts-next, same bundle, no
// rotation).
func TestPluggedDirStageRefusals(t *testing.T) {
	cacerts, newDir := stagedSetup(t)
	work := filepath.Dir(cacerts)
	other, _ := opensslCA(t)
	tests := []struct {
		name  string
		from  func() string
		wants []string
	}{
		{"missing file", func() string {
			d := variant(t, work, "missing", newDir)
			os.Remove(filepath.Join(d, "cert-chain.pem"))
			return d
		}, []string{"cert-chain.pem", "no such file"}},
		{"key not matching", func() string {
			d := variant(t, work, "badkey", newDir)
			copyFile(t, filepath.Join(cacerts, "ca-key.pem"), filepath.Join(d, "ca-key.pem"))
			return d
		}, []string{"ca-key.pem does not match the public key of"}},
		{"root in force", func() string { return variant(t, work, "same", cacerts) },
			[]string{"root-cert.pem has the root in force"}},
		{"chain not verifying", func() string {
			d := variant(t, work, "nochain", newDir)
			copyFile(t, filepath.Join(other, "root-cert.pem"), filepath.Join(d, "root-cert.pem"))
			return d
		}, []string{"ca-cert.pem does not chain to", "root-cert.pem"}},
		{"relative path", func() string { return "cacerts-new" }, []string{"absolute path"}},
		{"not beside --cacerts", func() string { return filepath.Dir(other) }, []string{"must be beside the --cacerts directory"}},
		{"symlink out", func() string {
			l := filepath.Join(work, "link")
			os.Symlink(other, l)
			return l
		}, []string{"must be beside the --cacerts directory"}},
		{"the --cacerts dir", func() string { return cacerts }, []string{"must be beside"}},
		{"a file", func() string { return filepath.Join(newDir, "ca-key.pem") }, []string{"must be beside"}},
	}
	state := t.TempDir()
	c := openPlugged(t, state, cacerts, newClock(time.Now()))
	defer c.Close()
	v := c.Bundle().Version
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := c.RotateRoot(0, tt.from())
			if err == nil {
				t.Fatal("accepted")
			}
			for _, w := range tt.wants {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q does not mention %q", err, w)
				}
			}
			if strings.Contains(err.Error(), "PRIVATE KEY") {
				t.Errorf("error shows key material: %q", err)
			}
			if _, err := os.Stat(filepath.Join(state, ca.NextCADir)); !errors.Is(err, os.ErrNotExist) {
				t.Errorf("%s exists after a refusal", ca.NextCADir)
			}
			if c.Bundle().Version != v || len(c.Bundle().Roots) != 1 || rotationStatus(t, c).Phase != "" {
				t.Errorf("state changed: v%d, %d roots, phase %q", c.Bundle().Version, len(c.Bundle().Roots), rotationStatus(t, c).Phase)
			}
		})
	}
}

// variant copies from's CA files into work/name.
func variant(t *testing.T, work, name, from string) string {
	t.Helper()
	d := filepath.Join(work, name)
	if err := os.Mkdir(d, 0o700); err != nil {
		t.Fatal(err)
	}
	for _, f := range caFiles {
		copyFile(t, filepath.Join(from, f), filepath.Join(d, f))
	}
	return d
}

func signFor(t *testing.T, c *ca.CA) *ca.Issued {
	t.Helper()
	iss, err := c.Sign(context.Background(), self(httpbinID), csrFor(t, ecKey(t)), 0)
	if err != nil {
		t.Fatal(err)
	}
	return iss
}

// checkSignsUnder signs a certificate and checks its chain ends at root.
func checkSignsUnder(t *testing.T, c *ca.CA, root string) {
	t.Helper()
	chain := chainOf(t, signFor(t, c))
	for _, r := range c.Bundle().Roots {
		if identity.Fingerprint(r) == root {
			if err := chain[len(chain)-1].CheckSignatureFrom(r); err != nil {
				t.Fatalf("the CA does not sign under root %s: %v", root[:16], err)
			}
			return
		}
	}
	t.Fatalf("root %s not in the bundle", root[:16])
}

// TestPluggedDirRelativeCacerts: with a relative --cacerts (as the docs'
// transcript runs it) a NEWDIR beside it is found to be beside it.
func TestPluggedDirRelativeCacerts(t *testing.T) {
	cacerts, newDir := stagedSetup(t)
	t.Chdir(filepath.Dir(cacerts))
	c := openPlugged(t, t.TempDir(), "cacerts", newClock(time.Now()))
	defer c.Close()
	if _, err := c.RotateRoot(0, newDir); err != nil {
		t.Fatal(err)
	}
}

// TestPluggedDirLegacyRecordsKeepOldRoot: certificates issued before
// plugged-in authorities had IDs are logged under authority 0. Which root
// signed them is unknown, so a rotation must not retire the old root while
// one of them is valid: the workload holding it would be refused by every
// peer with the new bundle.
func TestPluggedDirLegacyRecordsKeepOldRoot(t *testing.T) {
	cacerts, newDir := stagedSetup(t)
	state := t.TempDir()
	clk := newClock(time.Now())
	st, err := ca.OpenStore(state)
	if err != nil {
		t.Fatal(err)
	}
	now := clk.now()
	legacy := &ca.IssuanceRecord{Serial: "0a0b0c", SPIFFEID: httpbinID.String(), NotBefore: now.Unix(), NotAfter: now.Add(24 * time.Hour).Unix(),
		IssuedAt: now.Unix(), Requester: "join_token:0123456789ab", Authority: 0}
	if err := st.RecordIssuance(legacy, []byte("0a0b0c"), "", now); err != nil {
		t.Fatal(err)
	}
	st.Close()

	c := openPlugged(t, state, cacerts, clk)
	defer func() { c.Close() }()
	s := &sidecar{t: t, c: c, id: sleepID, name: "sleep-1", leaf: leafFor(t, c, self(sleepID))}
	s.connect()
	s.receive(true)
	if _, err := c.RotateRoot(0, newDir); err != nil {
		t.Fatal(err)
	}
	s.receive(true)
	leafFor(t, c, ca.Caller{ID: sleepID, Method: "mtls", Subject: identity.SerialHex(s.leaf)})
	clk.add(2 * time.Minute)
	tick(t, c)
	if r := rotationStatus(t, c); r.Phase != careport.PhaseReissuing || len(c.Bundle().Roots) != 2 {
		t.Fatalf("with a pre-upgrade certificate valid: phase %s, %d roots; want reissuing, both roots", r.Phase, len(c.Bundle().Roots))
	}
	if _, err := c.RetireOldRoots(false); err == nil || !strings.Contains(err.Error(), "0a0b0c") {
		t.Fatalf("retire without force: %v, want a refusal naming the pre-upgrade certificate", err)
	}
	clk.add(25 * time.Hour)
	tick(t, c)
	if r := rotationStatus(t, c); r.Phase != careport.PhaseDone || len(c.Bundle().Roots) != 1 {
		t.Fatalf("after the pre-upgrade certificate expired: phase %s, %d roots", r.Phase, len(c.Bundle().Roots))
	}
}
