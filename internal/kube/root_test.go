package kube

import (
	"bytes"
	"context"
	"crypto/x509"
	"encoding/pem"
	"log/slog"
	"os"
	"path/filepath"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/meshauth/meshauth/internal/ca"
	"github.com/meshauth/meshauth/internal/identity"
	"github.com/meshauth/meshauth/internal/kube/kubetest"
)

// noKeyOnDisk fails if any file under dir holds keyDER, as DER or PEM.
func noKeyOnDisk(t *testing.T, dir string, keyDER []byte) {
	t.Helper()
	keyPEM := pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: keyDER})
	n := 0
	err := filepath.Walk(dir, func(p string, fi os.FileInfo, err error) error {
		if err != nil || fi.IsDir() {
			return err
		}
		n++
		b, err := os.ReadFile(p)
		if err != nil {
			return err
		}
		if bytes.Contains(b, keyDER) || bytes.Contains(b, keyPEM) {
			t.Errorf("%s holds the CA's private key", p)
		}
		return nil
	})
	if err != nil || n == 0 {
		t.Fatalf("walk %s: %v (%d files; the CA's store should be there)", dir, err, n)
	}
}

// TestKubeCAWritesNoKey: the CA on Kubernetes signs with the root key from
// istio-ca-secret held in memory; no file in its state directory holds that
// key (before the Backend seam, it was copied to DIR/cacerts/ca-key.pem).
func TestKubeCAWritesNoKey(t *testing.T) {
	env := kubetest.Need(t)
	cs := env.Clientset(t)
	ctx := context.Background()
	ns := createNamespace(t, cs, "nokey", nil)
	backend, src, err := NewCABackend(ctx, cs, ns, "cluster.local", time.Now(), discardLog())
	if err != nil || src != RootSelfSigned {
		t.Fatalf("NewCABackend = %s, %v", src, err)
	}
	dir := t.TempDir()
	authority, err := ca.New(ca.Config{Dir: dir, Backend: backend})
	if err != nil {
		t.Fatal(err)
	}
	defer authority.Close()
	id := identity.MustParse("spiffe://cluster.local/ns/" + ns + "/sa/web")
	iss, err := authority.Sign(ctx, ca.Caller{ID: id, Method: "self"}, csrFor(t, ""), time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	s, err := cs.CoreV1().Secrets(ns).Get(ctx, CASecret, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	roots, err := identity.ParseCertsPEM(s.Data[CACertKey])
	if err != nil {
		t.Fatal(err)
	}
	leaf, err := x509.ParseCertificate(iss.Leaf)
	if err != nil {
		t.Fatal(err)
	}
	if err := leaf.CheckSignatureFrom(roots[0]); err != nil {
		t.Fatalf("leaf not signed by the root in %s: %v", CASecret, err)
	}
	blk, _ := pem.Decode(s.Data[CAKeyKey])
	if blk == nil {
		t.Fatalf("%s has no PEM key", CASecret)
	}
	noKeyOnDisk(t, dir, blk.Bytes)
}

// TestSecretRootRotation: two CA replicas share istio-ca-secret and the
// CA store Secret, as kube-control runs them. A root rotation started on
// one is written to istio-ca-secret and reaches the other's bundle (Watch
// + Refresh) without signing; a sidecar whose bundle stream is on replica
// A and has not ACKed holds the switch back on both replicas (the fleet
// is in the shared Secret); once it ACKs, both sign with the new root and
// trust each other's certificates. The old root leaves the Secret only
// after RetireAfter (another replica may have certificates it signed),
// or at once by force. No root key reaches either replica's disk.
func TestSecretRootRotation(t *testing.T) {
	env := kubetest.Need(t)
	cs := env.Clientset(t)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	ns := createNamespace(t, cs, "rotate", nil)
	clock := &fakeClock{now: time.Now()}
	type replica struct {
		dir   string
		roots *SecretRoots
		ca    *ca.CA
	}
	var reps []replica
	for range 2 {
		b, src, err := NewCABackend(ctx, cs, ns, "cluster.local", clock.Now(), discardLog())
		if err != nil || src != RootSelfSigned {
			t.Fatalf("NewCABackend = %s, %v", src, err)
		}
		roots := b.(*SecretRoots)
		roots.Clock, roots.RetireAfter = clock.Now, 48*time.Hour
		dir := t.TempDir()
		store, err := OpenCAStore(ctx, cs, ns, dir, discardLog())
		if err != nil {
			t.Fatal(err)
		}
		c, err := ca.New(ca.Config{Dir: dir, Backend: b, Store: store, Clock: clock.Now})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close() })
		done := make(chan struct{}, 2)
		go func() { roots.Watch(ctx, c.Refresh, slog.Default()); done <- struct{}{} }()
		go func() { store.Run(ctx, c.Refresh); done <- struct{}{} }()
		t.Cleanup(func() { cancel(); <-done; <-done })
		reps = append(reps, replica{dir, roots, c})
	}
	a, b := reps[0], reps[1]
	id := identity.MustParse("spiffe://cluster.local/ns/" + ns + "/sa/web")
	sign := func(c *ca.CA) []*x509.Certificate { t.Helper(); return signChain(t, c, id) }
	waitFor := func(what string, cond func() bool) {
		t.Helper()
		deadline := time.Now().Add(10 * time.Second)
		for !cond() {
			if time.Now().After(deadline) {
				t.Fatalf("not within 10s: %s", what)
			}
			time.Sleep(20 * time.Millisecond)
		}
	}
	tickAll := func() {
		t.Helper()
		for _, r := range reps {
			if err := r.ca.Tick(); err != nil {
				t.Fatal(err)
			}
		}
	}
	oldRoot := a.ca.Bundle().Roots[0]
	if !b.ca.Bundle().Roots[0].Equal(oldRoot) {
		t.Fatal("the replicas do not share the root")
	}
	before := sign(b.ca)

	// A sidecar (web) on replica A's bundle stream, ACKed before the rotation.
	stream, err := a.ca.OpenBundleStream(before[0], id, "web-0")
	if err != nil {
		t.Fatal(err)
	}
	defer stream.Close()
	ack := func() { t.Helper(); ackCurrent(t, a.ca, stream) }
	ack()

	rot, err := a.ca.RotateRoot(0, "")
	if err != nil {
		t.Fatal(err)
	}
	s, err := cs.CoreV1().Secrets(ns).Get(ctx, CASecret, metav1.GetOptions{})
	if err != nil || len(s.Data[RootsKey]) == 0 {
		t.Fatalf("rotation not written to %s: %v", CASecret, err)
	}
	waitFor("the new root in replica B's bundle", func() bool { return len(b.ca.Bundle().Roots) == 2 })
	if st, err := b.ca.Status(); err != nil || st.Mode != "self-signed" {
		t.Fatalf("status: %v %+v", err, st)
	}
	if _, err := b.ca.RotateRoot(0, ""); err == nil {
		t.Fatal("a second rotation on the other replica was accepted while one is pending")
	}
	// Replica B does not switch: web, on A's stream, has not ACKed.
	waitFor("B sees the rotation", func() bool { st, _ := b.ca.RotationStatus(); return st.Phase == "distributing" })
	tickAll()
	st, err := b.ca.RotationStatus()
	if err != nil || st.Waiting != 1 || st.Sidecars[0].Instance != "web-0" || !st.Sidecars[0].Blocking {
		t.Fatalf("replica B's rotation status: %v %+v", err, st)
	}
	if !b.ca.Bundle().Roots[0].Equal(oldRoot) || !a.ca.Bundle().Roots[0].Equal(oldRoot) {
		t.Fatal("signing switched before the sidecar ACKed")
	}

	ack() // web installs the two-root bundle: A switches at once
	waitFor("both replicas sign with the new root", func() bool {
		return identity.Fingerprint(a.ca.Bundle().Roots[0]) == rot.NewRoot && identity.Fingerprint(b.ca.Bundle().Roots[0]) == rot.NewRoot
	})
	fromA, fromB := sign(a.ca), sign(b.ca)
	for _, r := range reps {
		for what, chain := range map[string][]*x509.Certificate{"A's": fromA, "B's": fromB, "old-root": before} {
			if _, err := r.ca.Bundle().Identity().Verify(chain, clock.Now()); err != nil {
				t.Fatalf("%s certificate: %v", what, err)
			}
		}
	}
	if err := fromB[0].CheckSignatureFrom(a.ca.Bundle().Roots[0]); err != nil {
		t.Fatalf("B does not sign with the new root: %v", err)
	}

	// Past the old certificates' life but inside RetireAfter: the root stays.
	clock.Add(25 * time.Hour)
	tickAll()
	for _, r := range reps {
		if len(r.ca.Bundle().Roots) != 2 {
			t.Fatal("old root left a replica's bundle before RetireAfter")
		}
	}
	// The operator retires it now, by force (nothing live chains to it).
	broken, err := a.ca.RetireOldRoots(true)
	if err != nil || len(broken) != 0 {
		t.Fatalf("forced retire: %v %v", broken, err)
	}
	waitFor("the old root leaves both bundles", func() bool { return len(a.ca.Bundle().Roots) == 1 && len(b.ca.Bundle().Roots) == 1 })
	if a.ca.Bundle().Roots[0].Equal(oldRoot) {
		t.Fatal("the new root was retired instead of the old one")
	}
	waitFor("B sees the rotation done", func() bool { st, _ := b.ca.RotationStatus(); return st.Phase == "done" })

	s, err = cs.CoreV1().Secrets(ns).Get(ctx, CASecret, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	for _, sr := range a.roots.roots {
		blk, _ := pem.Decode([]byte(sr.Key))
		for _, r := range reps {
			noKeyOnDisk(t, r.dir, blk.Bytes)
		}
	}
	if k, _ := pem.Decode(s.Data[CAKeyKey]); k == nil {
		t.Fatalf("%s lost %s", CASecret, CAKeyKey)
	}
}

// ackCurrent sends c's current bundle on a sidecar's bundle stream and has
// the sidecar ACK it, as its agent does once the bundle is installed.
func ackCurrent(t *testing.T, c *ca.CA, stream *ca.BundleStream) {
	t.Helper()
	bundle := c.Bundle()
	stream.Sent(bundle)
	var fps []string
	for _, r := range bundle.Roots {
		fps = append(fps, identity.Fingerprint(r))
	}
	if err := stream.Ack(bundle.Version, fps, ""); err != nil {
		t.Fatal(err)
	}
}

// TestStaleSecretEventIgnored: a watch event carrying an older
// istio-ca-secret than the one this replica just wrote (its own rotation)
// does not take the new root away again.
func TestStaleSecretEventIgnored(t *testing.T) {
	now := time.Now()
	oldCert, oldKey, err := newSelfSignedRoot("cluster.local", now)
	if err != nil {
		t.Fatal(err)
	}
	newCert, newKey, err := newSelfSignedRoot("cluster.local", now)
	if err != nil {
		t.Fatal(err)
	}
	secret := func(rv string, cert, key []byte) *corev1.Secret {
		return &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Name: CASecret, ResourceVersion: rv}, Data: map[string][]byte{CACertKey: cert, CAKeyKey: key}}
	}
	r := &SecretRoots{ns: "ns"}
	if err := r.apply(secret("120", newCert, newKey), now); err != nil {
		t.Fatal(err)
	}
	if err := r.apply(secret("99", oldCert, oldKey), now); err != nil {
		t.Fatal(err)
	}
	as, _ := r.Authorities()
	if !bytes.Equal(pemCert(as[0].Certificate), newCert) {
		t.Fatal("an older Secret replaced the newer roots")
	}
	if err := r.apply(secret("121", oldCert, oldKey), now); err != nil {
		t.Fatal(err)
	}
	if as, _ = r.Authorities(); !bytes.Equal(pemCert(as[0].Certificate), oldCert) {
		t.Fatal("a newer Secret was not taken in")
	}
}
