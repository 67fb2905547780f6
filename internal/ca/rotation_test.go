package ca_test

import (
	"context"
	"crypto/x509"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/meshauth/meshauth/internal/ca"
	"github.com/meshauth/meshauth/internal/careport"
	"github.com/meshauth/meshauth/internal/identity"
)

var (
	httpbinID = identity.MustParse("spiffe://cluster.local/ns/default/sa/httpbin")
)

// leafFor signs a certificate for id (as a join token would) and returns
// its leaf, the certificate a sidecar presents on its bundle stream.
func leafFor(t *testing.T, c *ca.CA, caller ca.Caller) *x509.Certificate {
	t.Helper()
	iss, err := c.Sign(context.Background(), caller, csrFor(t, ecKey(t)), 0)
	if err != nil {
		t.Fatal(err)
	}
	return chainOf(t, iss)[0]
}

// sidecar is one fake sidecar's bundle stream: the CA side is real
// (OpenBundleStream, Sent, Ack); the test plays the sidecar.
type sidecar struct {
	t      *testing.T
	c      *ca.CA
	leaf   *x509.Certificate
	id     identity.ID
	name   string
	stream *ca.BundleStream
}

func (s *sidecar) connect() {
	s.t.Helper()
	st, err := s.c.OpenBundleStream(s.leaf, s.id, s.name)
	if err != nil {
		s.t.Fatalf("%s: open stream: %v", s.name, err)
	}
	s.stream = st
}

// receive sends the CA's current bundle on the stream and has the sidecar
// ACK it (install = true) or not.
func (s *sidecar) receive(ack bool) *ca.TrustBundle {
	s.t.Helper()
	b := s.c.Bundle()
	s.stream.Sent(b)
	if ack {
		if err := s.stream.Ack(b.Version, fps(b), ""); err != nil {
			s.t.Fatalf("%s: ack v%d: %v", s.name, b.Version, err)
		}
	}
	return b
}

func fps(b *ca.TrustBundle) []string {
	var out []string
	for _, r := range b.Roots {
		out = append(out, identity.Fingerprint(r))
	}
	return out
}

func tick(t *testing.T, c *ca.CA) {
	t.Helper()
	if err := c.Tick(); err != nil {
		t.Fatal(err)
	}
}

func rotationStatus(t *testing.T, c *ca.CA) *careport.Rotation {
	t.Helper()
	st, err := c.RotationStatus()
	if err != nil {
		t.Fatal(err)
	}
	return st
}

func blocking(st *careport.Rotation) []string {
	var out []string
	for _, s := range st.Sidecars {
		if s.Blocking {
			out = append(out, s.Instance+": "+s.Why)
		}
	}
	return out
}

// TestRotationWaitsForACKs: signing switches to the new root only once
// every sidecar the CA knows has ACKed a bundle holding it; status names
// the ones it waits for and why (not ACKed, disconnected, install error).
func TestRotationWaitsForACKs(t *testing.T) {
	clk := newClock(t0)
	c := newCA(t, t.TempDir(), clk, nil)
	a := &sidecar{t: t, c: c, id: sleepID, name: "sleep-1", leaf: leafFor(t, c, self(sleepID))}
	b := &sidecar{t: t, c: c, id: httpbinID, name: "httpbin-1", leaf: leafFor(t, c, self(httpbinID))}
	a.connect()
	b.connect()
	a.receive(true)
	b.receive(true)
	oldRoot := c.Bundle().Roots[0]

	rot, err := c.RotateRoot(0, "")
	if err != nil {
		t.Fatal(err)
	}
	tick(t, c)
	if !c.Bundle().Roots[0].Equal(oldRoot) {
		t.Fatal("signing switched before any sidecar ACKed the new root")
	}
	st := rotationStatus(t, c)
	if st.Phase != careport.PhaseDistributing || st.Waiting != 2 || st.NewRoot != rot.NewRoot {
		t.Fatalf("status: phase %s waiting %d new %s", st.Phase, st.Waiting, st.NewRoot)
	}

	a.receive(true) // sleep installs the two-root bundle
	clk.add(time.Minute)
	b.stream.Sent(c.Bundle())
	if err := b.stream.Ack(c.Bundle().Version, nil, "x509: malformed certificate"); err != nil {
		t.Fatal(err)
	}
	tick(t, c)
	st = rotationStatus(t, c)
	why := blocking(st)
	if len(why) != 1 || !strings.Contains(why[0], "httpbin-1: connected since") || !strings.Contains(why[0], "install error on version 2: x509: malformed certificate") {
		t.Fatalf("blocking: %q", why)
	}

	b.stream.Close() // httpbin's sidecar goes away, still holding the old bundle
	clk.add(time.Minute)
	tick(t, c)
	why = blocking(rotationStatus(t, c))
	if len(why) != 1 || !strings.Contains(why[0], "httpbin-1: disconnected since 2026-03-01T12:01:00Z") || !strings.Contains(why[0], "may still serve with the old bundle") {
		t.Fatalf("blocking after disconnect: %q", why)
	}
	if !c.Bundle().Roots[0].Equal(oldRoot) {
		t.Fatal("signing switched while a disconnected sidecar had not ACKed")
	}

	b.connect() // it comes back, gets the current bundle and ACKs it
	b.receive(true)
	if c.Bundle().Roots[0].Equal(oldRoot) || identity.Fingerprint(c.Bundle().Roots[0]) != rot.NewRoot {
		t.Fatal("signing did not switch on the last ACK")
	}
	st = rotationStatus(t, c)
	if st.Phase != careport.PhaseReissuing || st.Waiting != 0 || !st.SwitchedAt.Equal(t0.Add(2*time.Minute)) {
		t.Fatalf("after the last ACK: phase %s waiting %d switched %v", st.Phase, st.Waiting, st.SwitchedAt)
	}
}

// TestRotationRetire: the old root stays while a live certificate chains
// to it; --force retires it and names what breaks; a renewal supersedes
// the certificate it replaces.
func TestRotationRetire(t *testing.T) {
	clk := newClock(t0)
	c := newCA(t, t.TempDir(), clk, nil)
	old := leafFor(t, c, self(sleepID))
	old2 := leafFor(t, c, self(httpbinID))
	if _, err := c.RetireOldRoots(true); err == nil {
		t.Fatal("retire with no rotation accepted")
	}
	s := &sidecar{t: t, c: c, id: sleepID, name: "sleep-1", leaf: old}
	s.connect()
	if _, err := c.RotateRoot(0, ""); err != nil {
		t.Fatal(err)
	}
	if _, err := c.RetireOldRoots(true); err == nil || !strings.Contains(err.Error(), "does not sign yet") {
		t.Fatalf("retire before the switch: %v", err)
	}
	s.receive(true) // the only sidecar ACKs: signing switches
	if st := rotationStatus(t, c); st.Phase != careport.PhaseReissuing {
		t.Fatalf("phase %s", st.Phase)
	}
	// sleep renews from the new root (over mTLS with its old certificate).
	renewed := leafFor(t, c, ca.Caller{ID: sleepID, Method: "mtls", Subject: identity.SerialHex(old)})
	clk.add(2 * time.Minute)
	tick(t, c)
	st := rotationStatus(t, c)
	if len(c.Bundle().Roots) != 2 || st.Live[0].Live != 1 || !strings.Contains(st.Live[0].Sample[0], identity.SerialHex(old2)) {
		t.Fatalf("old root: %d roots, live %+v", len(c.Bundle().Roots), st.Live)
	}
	live, err := c.RetireOldRoots(false)
	var e *ca.Error
	if !errors.As(err, &e) || e.Reason != "live_certificates" || len(live) != 1 || !strings.Contains(err.Error(), httpbinID.String()+" serial "+identity.SerialHex(old2)) {
		t.Fatalf("retire without force: %v %v", live, err)
	}
	live, err = c.RetireOldRoots(true)
	if err != nil || len(live) != 1 {
		t.Fatalf("forced retire: %v %v", live, err)
	}
	if len(c.Bundle().Roots) != 1 {
		t.Fatal("old root still in the bundle after a forced retire")
	}
	if _, err := c.Bundle().Identity().Verify([]*x509.Certificate{renewed}, clk.now()); err != nil {
		t.Fatalf("renewed certificate: %v", err)
	}
	if _, err := c.Bundle().Identity().Verify([]*x509.Certificate{old2}, clk.now()); err == nil {
		t.Fatal("a certificate of the retired root still verifies")
	}
	st = rotationStatus(t, c)
	if st.Phase != careport.PhaseDone || len(st.Forced) != 1 {
		t.Fatalf("after forced retire: %+v", st)
	}
	// The next rotation may start.
	if _, err := c.RotateRoot(0, ""); err != nil {
		t.Fatal(err)
	}
}

// TestRotationRetiresWhenNothingLive: without force the old root leaves
// by itself once its last certificate has expired.
func TestRotationRetiresWhenNothingLive(t *testing.T) {
	clk := newClock(t0)
	c := newCA(t, t.TempDir(), clk, nil)
	leafFor(t, c, self(sleepID))
	if _, err := c.RotateRoot(0, ""); err != nil {
		t.Fatal(err)
	}
	tick(t, c)
	clk.add(23 * time.Hour)
	tick(t, c)
	if len(c.Bundle().Roots) != 2 {
		t.Fatal("old root retired while its certificate lives")
	}
	clk.add(2 * time.Hour)
	tick(t, c)
	if st := rotationStatus(t, c); len(c.Bundle().Roots) != 1 || st.Phase != careport.PhaseDone || len(st.Forced) != 0 {
		t.Fatalf("after expiry: %d roots, %+v", len(c.Bundle().Roots), st)
	}
}

// TestForgedAcks: an ACK counts only on the stream it was sent on, for a
// version that stream was sent, with that version's roots; anything else
// is refused and changes nothing.
func TestForgedAcks(t *testing.T) {
	clk := newClock(t0)
	c := newCA(t, t.TempDir(), clk, nil)
	honest := &sidecar{t: t, c: c, id: httpbinID, name: "httpbin-1", leaf: leafFor(t, c, self(httpbinID))}
	honest.connect()
	honest.receive(true)
	attacker := &sidecar{t: t, c: c, id: sleepID, name: "httpbin-1", leaf: leafFor(t, c, self(sleepID))}
	attacker.connect() // same instance name, another lineage: another sidecar
	attacker.receive(true)
	if _, err := c.RotateRoot(0, ""); err != nil {
		t.Fatal(err)
	}
	b := c.Bundle()
	reason := func(err error) string {
		var e *ca.Error
		if errors.As(err, &e) {
			return e.Reason
		}
		return ""
	}
	// A version the stream was never sent (the new bundle, before the
	// stream got it; a future one).
	if err := attacker.stream.Ack(b.Version, fps(b), ""); reason(err) != "ack_unknown_version" {
		t.Fatalf("ACK of an unsent version: %v", err)
	}
	if err := attacker.stream.Ack(b.Version+5, fps(b), ""); reason(err) != "ack_unknown_version" {
		t.Fatalf("ACK of a future version: %v", err)
	}
	// Roots the version does not hold.
	attacker.stream.Sent(b)
	if err := attacker.stream.Ack(b.Version, fps(b)[:1], ""); reason(err) != "ack_roots_mismatch" {
		t.Fatalf("ACK naming other roots: %v", err)
	}
	// No certificate, a bad instance name.
	if _, err := c.OpenBundleStream(nil, httpbinID, "x"); reason(err) != ca.ReasonUnauthenticated {
		t.Fatalf("stream without a certificate: %v", err)
	}
	if _, err := c.OpenBundleStream(honest.leaf, httpbinID, strings.Repeat("a", 300)); err == nil {
		t.Fatal("300-byte instance name accepted")
	}
	if _, err := c.OpenBundleStream(honest.leaf, httpbinID, "a\nb"); err == nil {
		t.Fatal("instance name with a newline accepted")
	}
	// The attacker ACKs for itself, honestly: the honest sidecar, which
	// has not, still holds the switch back.
	if err := attacker.stream.Ack(b.Version, fps(b), ""); err != nil {
		t.Fatal(err)
	}
	tick(t, c)
	st := rotationStatus(t, c)
	if st.Phase != careport.PhaseDistributing || st.Waiting != 1 || blocking(st)[0][:10] != "httpbin-1:" || st.Sidecars[0].SPIFFEID != httpbinID.String() {
		t.Fatalf("after the attacker's ACKs: phase %s waiting %d %q", st.Phase, st.Waiting, blocking(st))
	}
}

// TestFleetLineage: a sidecar that renewed its certificate and reconnects
// with the new one is the same sidecar (its lineage's first serial); a
// sidecar disconnected past its certificate's end is not waited for; the
// operator can forget a disconnected one.
func TestFleetLineage(t *testing.T) {
	clk := newClock(t0)
	c := newCA(t, t.TempDir(), clk, nil)
	first := leafFor(t, c, self(sleepID))
	s := &sidecar{t: t, c: c, id: sleepID, name: "sleep-1", leaf: first}
	s.connect()
	s.receive(true)
	s.stream.Close()
	s.leaf = leafFor(t, c, ca.Caller{ID: sleepID, Method: "mtls", Subject: identity.SerialHex(first)})
	s.leaf = leafFor(t, c, ca.Caller{ID: sleepID, Method: "mtls", Subject: identity.SerialHex(s.leaf)})
	s.connect()
	if st := rotationStatus(t, c); len(st.Sidecars) != 1 || !st.Sidecars[0].Connected || st.Sidecars[0].Serial != identity.SerialHex(s.leaf) {
		t.Fatalf("renewed sidecar is not the same record: %+v", st.Sidecars)
	}
	s.stream.Close()
	// A certificate the control plane issued on its own (the Kubernetes
	// Secret controller's, re-issued whole, shared by the ServiceAccount's
	// pods): the sidecar is its identity and instance, across re-issues.
	kube := &sidecar{t: t, c: c, id: sleepID, name: "sleep-pod", leaf: leafFor(t, c, ca.Caller{ID: sleepID, Method: "self", Subject: "secret-controller"})}
	kube.connect()
	kube.stream.Close()
	kube.leaf = leafFor(t, c, ca.Caller{ID: sleepID, Method: "self", Subject: "secret-controller"})
	kube.connect()
	if k := kube.stream.Key(); k != sleepID.String()+"/sleep-pod" {
		t.Fatalf("a Secret-controller certificate's sidecar is %q", k)
	}
	if st := rotationStatus(t, c); len(st.Sidecars) != 2 {
		t.Fatalf("a re-issued Secret-controller certificate made a second record: %+v", st.Sidecars)
	}
	kube.stream.Close()
	if _, err := c.ForgetSidecars([]string{"sleep-pod"}); err != nil {
		t.Fatal(err)
	}
	gone := &sidecar{t: t, c: c, id: httpbinID, name: "httpbin-1", leaf: leafFor(t, c, self(httpbinID))}
	gone.connect()
	gone.receive(true)
	gone.stream.Close()
	if _, err := c.RotateRoot(0, ""); err != nil {
		t.Fatal(err)
	}
	tick(t, c)
	if st := rotationStatus(t, c); st.Waiting != 2 {
		t.Fatalf("waiting %d, want 2 (both disconnected with valid certificates)", st.Waiting)
	}
	if k, err := c.ForgetSidecars([]string{"httpbin-1"}); err != nil || len(k) != 1 {
		t.Fatalf("forget: %v %v", k, err)
	}
	clk.add(25 * time.Hour) // sleep's certificate has expired
	st := rotationStatus(t, c)
	if st.Waiting != 0 || len(st.Sidecars) != 1 || !strings.Contains(st.Sidecars[0].Why, "not waited for") {
		t.Fatalf("after expiry: waiting %d %+v", st.Waiting, st.Sidecars)
	}
	tick(t, c)
	if st := rotationStatus(t, c); st.Phase != careport.PhaseReissuing {
		t.Fatalf("phase %s after expiry", st.Phase)
	}
}

// failingStore is the bbolt store whose PutRotation fails when fail says
// so: the control plane dying between a step's effect and its record.
type failingStore struct {
	ca.Store
	fail func(*ca.RotationRecord) bool
}

func (s *failingStore) PutRotation(r *ca.RotationRecord) error {
	if s.fail != nil && s.fail(r) {
		return errors.New("killed")
	}
	return s.Store.PutRotation(r)
}

// TestRotationResumesAfterCrash: the rotation's state is in the store; a
// CA opened again on it (the control plane restarted after SIGKILL)
// continues where it was, waits for sidecars it knew even before they
// reconnect, and reconciles a record that is behind its Backend.
func TestRotationResumesAfterCrash(t *testing.T) {
	clk := newClock(t0)
	dir := t.TempDir()
	mb := &memBackend{}
	fs := &failingStore{}
	open := func() *ca.CA {
		st, err := ca.OpenStore(dir)
		if err != nil {
			t.Fatal(err)
		}
		fs.Store = st
		c, err := ca.New(ca.Config{Dir: dir, Clock: clk.now, Log: quietLog(), Store: fs, Backend: mb})
		if err != nil {
			t.Fatal(err)
		}
		return c
	}
	c := open()
	s := &sidecar{t: t, c: c, id: sleepID, name: "sleep-1", leaf: leafFor(t, c, self(sleepID))}
	s.connect()
	s.receive(true)
	// Killed after the new root went into the Backend, before the record.
	fs.fail = func(*ca.RotationRecord) bool { return true }
	if _, err := c.RotateRoot(0, ""); err == nil {
		t.Fatal("rotation reported success though its record was not written")
	}
	c.Close() // the stream never closed: the store says connected

	fs.fail = nil
	c = open()
	tick(t, c) // adopts the pending root; waits for sleep-1, not connected yet
	st := rotationStatus(t, c)
	if st.Phase != careport.PhaseDistributing || st.Waiting != 1 || st.Sidecars[0].Connected {
		t.Fatalf("after restart: phase %s waiting %d %+v", st.Phase, st.Waiting, st.Sidecars)
	}
	newRoot := st.NewRoot

	// Killed after the switch, before its record.
	fs.fail = func(r *ca.RotationRecord) bool { return r.Phase == careport.PhaseReissuing }
	s.c = c
	s.connect()
	s.receive(true) // the last ACK: the switch is attempted at once
	c.Close()
	fs.fail = nil
	c = open()
	defer c.Close()
	tick(t, c)
	st = rotationStatus(t, c)
	if st.Phase != careport.PhaseReissuing || st.NewRoot != newRoot || identity.Fingerprint(c.Bundle().Roots[0]) != newRoot {
		t.Fatalf("after the second restart: phase %s, signing %s, want %s", st.Phase, identity.Fingerprint(c.Bundle().Roots[0])[:16], newRoot[:16])
	}
	if mb.added != 2 {
		t.Fatalf("%d roots made, want 2: a step was done twice", mb.added)
	}
}

// TestGoneSidecarNotWaitedFor: a disconnected sidecar that the CA is told
// is gone for good (on Kubernetes: its pod was deleted) does not hold the
// switch back; one that is connected always does.
func TestGoneSidecarNotWaitedFor(t *testing.T) {
	clk := newClock(t0)
	c := newCA(t, t.TempDir(), clk, nil)
	c.SetSidecarGone(func(spiffeID, instance string) bool { return instance == "httpbin-old" })
	old := &sidecar{t: t, c: c, id: httpbinID, name: "httpbin-old", leaf: leafFor(t, c, self(httpbinID))}
	old.connect()
	old.receive(true)
	live := &sidecar{t: t, c: c, id: sleepID, name: "sleep-1", leaf: leafFor(t, c, self(sleepID))}
	live.connect()
	live.receive(true)
	if _, err := c.RotateRoot(0, ""); err != nil {
		t.Fatal(err)
	}
	// Connected, it is waited for even if the hook says gone.
	c.SetSidecarGone(func(string, string) bool { return true })
	if st := rotationStatus(t, c); st.Waiting != 2 {
		t.Fatalf("waiting %d, want 2 (both connected)", st.Waiting)
	}
	c.SetSidecarGone(func(spiffeID, instance string) bool { return instance == "httpbin-old" })
	old.stream.Close()
	st := rotationStatus(t, c)
	if why := blocking(st); st.Waiting != 1 || !strings.HasPrefix(why[0], "sleep-1:") {
		t.Fatalf("blocking %q", why)
	}
	live.receive(true)
	if st := rotationStatus(t, c); st.Phase != careport.PhaseReissuing {
		t.Fatalf("phase %s after the last live sidecar ACKed", st.Phase)
	}
}

// TestRotationMetrics: meshauth_ca_rotation_waiting_sidecars counts the
// sidecars the switch waits for; meshauth_ca_bundle_acks_total counts
// ACKs, NACKs and refused ACKs.
func TestRotationMetrics(t *testing.T) {
	reg := prometheus.NewRegistry()
	c := newCA(t, t.TempDir(), newClock(t0), func(cfg *ca.Config) { cfg.Metrics = reg })
	s := &sidecar{t: t, c: c, id: sleepID, name: "sleep-1", leaf: leafFor(t, c, self(sleepID))}
	s.connect()
	s.receive(true)
	if _, err := c.RotateRoot(0, ""); err != nil {
		t.Fatal(err)
	}
	waiting := func(n int) {
		t.Helper()
		want := fmt.Sprintf(`
# HELP meshauth_ca_rotation_waiting_sidecars Sidecars a root rotation waits for before signing switches to the new root (0 when none is waiting).
# TYPE meshauth_ca_rotation_waiting_sidecars gauge
meshauth_ca_rotation_waiting_sidecars %d
`, n)
		if err := testutil.GatherAndCompare(reg, strings.NewReader(want), "meshauth_ca_rotation_waiting_sidecars"); err != nil {
			t.Fatal(err)
		}
	}
	waiting(1)
	b := c.Bundle()
	s.stream.Sent(b)
	s.stream.Ack(b.Version+1, fps(b), "")         // refused
	s.stream.Ack(b.Version, nil, "no space left") // a NACK
	s.stream.Ack(b.Version, fps(b), "")           // the ACK: signing switches
	waiting(0)
	want := `
# HELP meshauth_ca_bundle_acks_total Bundle acknowledgements from sidecars by result: ack, nack (the sidecar could not install it), refused (a version the stream was not sent, or other roots).
# TYPE meshauth_ca_bundle_acks_total counter
meshauth_ca_bundle_acks_total{result="ack"} 2
meshauth_ca_bundle_acks_total{result="nack"} 1
meshauth_ca_bundle_acks_total{result="refused"} 1
`
	if err := testutil.GatherAndCompare(reg, strings.NewReader(want), "meshauth_ca_bundle_acks_total"); err != nil {
		t.Fatal(err)
	}
}

// TestFleetInstanceFlood: the instance name is the caller's to choose, so
// one holder of a workload key could make a sidecar record per name and
// fill the store (on Kubernetes the Secret that also holds revocations).
// A lineage keeps at most a few records: a new name replaces the one
// disconnected longest, and with all of them connected a new name is
// refused. A disconnected record whose certificate has expired is dropped
// when a new one is made.
func TestFleetInstanceFlood(t *testing.T) {
	clk := newClock(t0)
	dir := t.TempDir()
	c := newCA(t, dir, clk, nil)
	leaf := leafFor(t, c, self(sleepID))
	var open []*sidecar
	for i := range 20 {
		s := &sidecar{t: t, c: c, id: sleepID, name: fmt.Sprintf("sleep-%d", i), leaf: leaf}
		if i < 8 {
			s.connect()
			open = append(open, s)
			continue
		}
		if _, err := c.OpenBundleStream(s.leaf, s.id, s.name); ca.ReasonOf(err) != "too_many_instances" {
			t.Fatalf("instance %d of one lineage, all others connected: %v, want too_many_instances", i, err)
		}
	}
	for _, s := range open {
		s.stream.Close()
		clk.add(time.Second)
	}
	for i := 20; i < 60; i++ {
		s := &sidecar{t: t, c: c, id: sleepID, name: fmt.Sprintf("sleep-%d", i), leaf: leaf}
		s.connect()
		s.stream.Close()
	}
	st := rotationStatus(t, c)
	if len(st.Sidecars) != 8 {
		t.Fatalf("one lineage has %d sidecar records after 60 instance names, want 8", len(st.Sidecars))
	}
	if names := fmt.Sprint(st.Sidecars); !strings.Contains(names, "sleep-59") || strings.Contains(names, "sleep-0 ") {
		t.Fatalf("the newest names are not the ones kept: %v", names)
	}
	// The store holds what the CA shows: a restarted CA reads 8.
	c.Close()
	c = newCA(t, dir, clk, nil)
	if st := rotationStatus(t, c); len(st.Sidecars) != 8 {
		t.Fatalf("the store holds %d sidecar records, want 8", len(st.Sidecars))
	}
	// Expired certificates' records go when another sidecar arrives.
	clk.add(25 * time.Hour)
	other := &sidecar{t: t, c: c, id: httpbinID, name: "httpbin-1", leaf: leafFor(t, c, self(httpbinID))}
	other.connect()
	if st := rotationStatus(t, c); len(st.Sidecars) != 1 || st.Sidecars[0].Instance != "httpbin-1" {
		t.Fatalf("expired records kept: %+v", st.Sidecars)
	}
}

// TestRotationServerCertSameSecond: the control plane's own certificate
// ("self", no lineage) issued by the old root just before the switch and
// reissued by the new root right after it, in the same second (the
// issuance log keeps seconds), does not hold the old root back: the
// control plane serves only its newest certificate. Before the fix the
// old one counted as live until it expired (24 h), and the rotation never
// finished (CI, TestRootRotationEndToEnd, control plane restarted in the
// second of the switch).
func TestRotationServerCertSameSecond(t *testing.T) {
	clk := newClock(t0)
	cp := identity.MustParse("spiffe://cluster.local/ns/meshauth-system/sa/meshd")
	c := newCA(t, t.TempDir(), clk, func(c *ca.Config) { c.Reserved = []identity.ID{cp} })
	own := ca.Caller{ID: cp, Method: "self"}
	leafFor(t, c, own) // at start
	old := leafFor(t, c, self(sleepID))
	s := &sidecar{t: t, c: c, id: sleepID, name: "sleep-1", leaf: old}
	s.connect()
	if _, err := c.RotateRoot(0, ""); err != nil {
		t.Fatal(err)
	}
	clk.add(10 * time.Second)
	beforeSwitch := leafFor(t, c, own) // the control plane restarts: old root still signs
	s.receive(true)                    // the same second: signing switches
	if st := rotationStatus(t, c); st.Phase != careport.PhaseReissuing {
		t.Fatalf("phase %s", st.Phase)
	}
	afterSwitch := leafFor(t, c, own) // the control plane follows the switch
	if afterSwitch.CheckSignatureFrom(beforeSwitch) == nil || identity.SerialHex(afterSwitch) == identity.SerialHex(beforeSwitch) {
		t.Fatal("test setup: expected two distinct server certificates")
	}
	leafFor(t, c, ca.Caller{ID: sleepID, Method: "mtls", Subject: identity.SerialHex(old)})
	clk.add(2 * time.Minute)
	tick(t, c)
	if st := rotationStatus(t, c); st.Phase != careport.PhaseDone || len(st.Forced) != 0 {
		t.Fatalf("old root held back: phase %s, live %+v", st.Phase, st.Live)
	}
}

// TestFleetFollowsRenewal: a sidecar that renews over mTLS while its
// bundle stream stays open (the stream keeps the TLS connection of its
// first certificate) and then goes away is waited for until its renewed
// certificate expires, not the first one: until then it may still serve
// with the old bundle. Before the fix the record kept the first
// certificate's expiry and the switch went ahead an hour early here.
func TestFleetFollowsRenewal(t *testing.T) {
	clk := newClock(t0)
	c := newCA(t, t.TempDir(), clk, func(cfg *ca.Config) { cfg.DefaultTTL = 2 * time.Hour })
	first := leafFor(t, c, self(sleepID))
	s := &sidecar{t: t, c: c, id: sleepID, name: "sleep-1", leaf: first}
	s.connect()
	s.receive(true)
	clk.add(time.Hour)
	renewed := leafFor(t, c, ca.Caller{ID: sleepID, Method: "mtls", Subject: identity.SerialHex(first)})
	if !renewed.NotAfter.After(first.NotAfter) {
		t.Fatal("test setup: the renewal should outlive the first certificate")
	}
	s.stream.Close()
	if _, err := c.RotateRoot(0, ""); err != nil {
		t.Fatal(err)
	}
	clk.set(first.NotAfter.Add(time.Minute)) // the first certificate has expired
	tick(t, c)
	st := rotationStatus(t, c)
	why := blocking(st)
	if st.Phase != careport.PhaseDistributing || st.Waiting != 1 || !strings.Contains(why[0], identity.SerialHex(renewed)) {
		t.Fatalf("after the first certificate expired: phase %s, waiting %d, %q", st.Phase, st.Waiting, why)
	}
	clk.set(renewed.NotAfter.Add(time.Minute))
	tick(t, c)
	if st := rotationStatus(t, c); st.Phase != careport.PhaseReissuing {
		t.Fatalf("after the renewed certificate expired: phase %s", st.Phase)
	}
}
