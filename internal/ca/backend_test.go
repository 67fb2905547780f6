package ca_test

import (
	"context"
	"crypto"
	"crypto/x509"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/meshauth/meshauth/internal/ca"
)

// memBackend is a Backend (and Rotator) that keeps its roots in memory
// only, as internal/kube's Secret backend does: the CA must create, rotate
// and retire roots through it, and sign with its keys.
type memBackend struct {
	mu      sync.Mutex
	auths   []*ca.Authority
	nextID  uint64
	added   int
	retired []uint64
}

func (m *memBackend) Authorities() ([]*ca.Authority, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	return append([]*ca.Authority(nil), m.auths...), nil
}
func (m *memBackend) Mode() string   { return "memory" }
func (m *memBackend) Source() string { return "test memory backend" }
func (m *memBackend) AddRoot(cert *x509.Certificate, key crypto.Signer, activateAt, now time.Time) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.nextID++
	m.added++
	m.auths = append(m.auths, &ca.Authority{ID: m.nextID, Certificate: cert, Signer: key, Root: cert, ActivateAt: activateAt})
	return nil
}
func (m *memBackend) ActivateRoot(id uint64, at time.Time) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	for i, a := range m.auths {
		if a.ID == id {
			c := *a
			c.ActivateAt = at
			m.auths[i] = &c
		}
	}
	return nil
}
func (m *memBackend) RetireRoot(id uint64, _ bool) (bool, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.retired = append(m.retired, id)
	for i, a := range m.auths {
		if a.ID == id {
			m.auths = append(m.auths[:i], m.auths[i+1:]...)
		}
	}
	return true, nil
}

// TestBackendSeam: with Config.Backend the CA keeps no root of its own: it
// asks the Backend for a first root, signs with the Backend's key, rotates
// and retires through the Rotator, and writes no key into its directory.
func TestBackendSeam(t *testing.T) {
	clk := newClock(t0)
	dir := t.TempDir()
	mb := &memBackend{}
	c := newCA(t, dir, clk, func(cfg *ca.Config) { cfg.Backend = mb })
	ctx := context.Background()
	if mb.added != 1 || len(c.Bundle().Roots) != 1 || !c.Bundle().Roots[0].Equal(mb.auths[0].Root) {
		t.Fatalf("first root not made through the backend: added %d, bundle %d roots", mb.added, len(c.Bundle().Roots))
	}
	iss, err := c.Sign(ctx, self(sleepID), csrFor(t, ecKey(t)), 0)
	if err != nil {
		t.Fatal(err)
	}
	if err := chainOf(t, iss)[0].CheckSignatureFrom(mb.auths[0].Certificate); err != nil {
		t.Fatalf("leaf not signed by the backend's certificate: %v", err)
	}
	st, err := c.Status()
	if err != nil || st.Mode != "memory" {
		t.Fatalf("status mode: %v %+v", err, st)
	}

	rot, err := c.RotateRoot(30*time.Minute, "")
	if err != nil {
		t.Fatal(err)
	}
	if mb.added != 2 || len(c.Bundle().Roots) != 2 {
		t.Fatalf("rotation not through the backend: added %d, %d roots", mb.added, len(c.Bundle().Roots))
	}
	clk.add(31 * time.Minute)
	if err := c.Tick(); err != nil {
		t.Fatal(err)
	}
	if c.Bundle().Roots[0].Equal(mb.auths[0].Root) {
		t.Fatalf("signing did not switch to %s", rot.NewRoot)
	}
	clk.add(25 * time.Hour)
	if err := c.Tick(); err != nil {
		t.Fatal(err)
	}
	if len(mb.retired) != 1 || mb.retired[0] != 1 || len(c.Bundle().Roots) != 1 {
		t.Fatalf("old root not retired through the backend: retired %v, %d roots", mb.retired, len(c.Bundle().Roots))
	}

	// No key material in the CA's directory: the store holds the log only.
	filepath.Walk(dir, func(p string, fi os.FileInfo, err error) error {
		if err == nil && !fi.IsDir() {
			b, _ := os.ReadFile(p)
			for _, a := range mb.auths {
				der, _ := x509.MarshalPKCS8PrivateKey(a.Signer)
				if strings.Contains(string(b), string(der)) {
					t.Errorf("%s holds the backend's root key", p)
				}
			}
		}
		return nil
	})
}

// staticBackend is a Backend without Rotator: RotateRoot refuses and Tick
// never retires.
type staticBackend struct{ a *ca.Authority }

func (s staticBackend) Authorities() ([]*ca.Authority, error) { return []*ca.Authority{s.a}, nil }
func (s staticBackend) Mode() string                          { return "static" }
func (s staticBackend) Source() string                        { return "a static test backend" }

func TestBackendWithoutRotator(t *testing.T) {
	clk := newClock(t0)
	mb := &memBackend{}
	newCA(t, t.TempDir(), clk, func(cfg *ca.Config) { cfg.Backend = mb }).Close()
	c := newCA(t, t.TempDir(), clk, func(cfg *ca.Config) { cfg.Backend = staticBackend{mb.auths[0]} })
	if _, err := c.RotateRoot(0, ""); err == nil || !strings.Contains(err.Error(), "a static test backend") {
		t.Fatalf("RotateRoot on a backend without Rotator: %v", err)
	}
	if _, err := ca.New(ca.Config{Dir: t.TempDir(), Clock: clk.now, Log: quietLog(), Backend: mb, CACertsDir: "x"}); err == nil {
		t.Fatal("Backend and CACertsDir together were accepted")
	}
	if _, err := ca.New(ca.Config{Dir: t.TempDir(), Clock: clk.now, Log: quietLog(), Backend: staticBackend{&ca.Authority{}}}); err == nil {
		t.Fatal("an authority without certificate and signer was accepted")
	}
}

// TestRefresh: a root another replica added to a shared Backend reaches
// this CA's bundle (with a new version) on Refresh; an unchanged Backend
// leaves the version alone.
func TestRefresh(t *testing.T) {
	clk := newClock(t0)
	mb := &memBackend{}
	c := newCA(t, t.TempDir(), clk, func(cfg *ca.Config) { cfg.Backend = mb })
	v := c.Bundle().Version
	if err := c.Refresh(); err != nil || c.Bundle().Version != v {
		t.Fatalf("Refresh of an unchanged backend: %v, version %d -> %d", err, v, c.Bundle().Version)
	}
	other := &memBackend{}
	newCA(t, t.TempDir(), clk, func(cfg *ca.Config) { cfg.Backend = other }).Close()
	a := other.auths[0]
	mb.AddRoot(a.Certificate, a.Signer, t0.Add(time.Hour), t0) // as another replica would
	if len(c.Bundle().Roots) != 1 {
		t.Fatal("the bundle changed before Refresh")
	}
	if err := c.Refresh(); err != nil {
		t.Fatal(err)
	}
	b := c.Bundle()
	if b.Version <= v || len(b.Roots) != 2 || !b.Roots[1].Equal(a.Certificate) {
		t.Fatalf("after Refresh: version %d (was %d), %d roots", b.Version, v, len(b.Roots))
	}
}
