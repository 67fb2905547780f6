package kube

import (
	"context"
	"errors"
	"log/slog"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/meshauth/meshauth/internal/ca"
	"github.com/meshauth/meshauth/internal/ca/catest"
	"github.com/meshauth/meshauth/internal/careport"
	"github.com/meshauth/meshauth/internal/identity"
	"github.com/meshauth/meshauth/internal/kube/kubetest"
)

// TestStagedCacertsRotation: an operator's CA (cacerts) rotated to a new
// one with another root through the same steps as a self-signed root.
// The operator puts the new CA in Secret cacerts-next and stages it
// (RotateRoot from "cacerts-next"): its root is in every replica's bundle
// (a replica started after the staging finds it too), it does not sign
// while a sidecar has not ACKed it; once the sidecar ACKs, every replica
// signs with it; retiring the old root (by force here: a certificate of
// the old CA is live, and is named) copies cacerts-next into cacerts and
// deletes cacerts-next, and the old root leaves every bundle.
func TestStagedCacertsRotation(t *testing.T) {
	env := kubetest.Need(t)
	cs := env.Clientset(t)
	ctx := context.Background()
	system := createNamespace(t, cs, "istio-system", nil)
	ns := createNamespace(t, cs, "staged", nil)
	now := time.Now()
	secretData := func(op *catest.CA) map[string][]byte {
		c := op.Issue(t, "spiffe://cluster.local", catest.Validity(now.Add(-time.Hour), now.Add(30*24*time.Hour)), catest.AsCA())
		return map[string][]byte{CACertKey: c.ChainPEM, CAKeyKey: c.KeyPEM, CertChainKey: c.ChainPEM, RootCertKey: op.RootPEM()}
	}
	op1, op2 := catest.New(t), catest.New(t)
	secrets := cs.CoreV1().Secrets(system)
	if _, err := secrets.Create(ctx, &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Name: PluggedCASecret}, Data: secretData(op1)}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	start := func(name string) *testReplica {
		return startReplica(t, ControlConfig{
			REST: env.RESTConfig(), Namespace: system, Dir: t.TempDir(), Identity: name,
			Listen: "127.0.0.1:0", WebhookListen: "-", Namespaces: []string{ns}, DisableSecrets: true,
			LeaseDuration: 2 * time.Second, Log: slog.New(slog.DiscardHandler),
		})
	}
	a := start("a")
	id := identity.MustParse("spiffe://cluster.local/ns/" + ns + "/sa/web")
	old := signChain(t, a.srv.CA(), id)
	root1, root2 := op1.Bundle().Roots[0], op2.Bundle().Roots[0]

	// A sidecar on replica A's bundle stream.
	stream, err := a.srv.CA().OpenBundleStream(old[0], id, "web-0")
	if err != nil {
		t.Fatal(err)
	}
	defer stream.Close()
	ack := func() { t.Helper(); ackCurrent(t, a.srv.CA(), stream) }
	ack()

	// Without --from, and with nothing staged: refused, saying what to do.
	if _, err := a.srv.CA().RotateRoot(0, ""); err == nil || !strings.Contains(err.Error(), "rotate-root --from cacerts-next") {
		t.Fatalf("rotate-root of a plugged-in CA without --from: %v", err)
	}
	if _, err := a.srv.CA().RotateRoot(0, "cacerts-next"); err == nil || !strings.Contains(err.Error(), "create it with the new CA") {
		t.Fatalf("rotate-root --from with no cacerts-next: %v", err)
	}
	if _, err := secrets.Create(ctx, &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Name: PluggedCANextSecret}, Data: secretData(op2)}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	if _, err := a.srv.CA().RotateRoot(0, "other-secret"); err == nil || !strings.Contains(err.Error(), "cacerts-next") {
		t.Fatalf("rotate-root --from another Secret: %v", err)
	}
	rot, err := a.srv.CA().RotateRoot(0, "secret/cacerts-next")
	if err != nil {
		t.Fatal(err)
	}
	if rot.NewRoot != identity.Fingerprint(root2) || len(a.srv.CA().Bundle().Roots) != 2 {
		t.Fatalf("staged: new root %s, %d roots in the bundle", rot.NewRoot[:16], len(a.srv.CA().Bundle().Roots))
	}
	// A replica that starts now finds the staged CA, not signing.
	b := start("b")
	if len(b.srv.CA().Bundle().Roots) != 2 || !b.srv.CA().Bundle().Roots[0].Equal(root1) {
		t.Fatalf("replica B after the staging: %d roots, signing root first %v", len(b.srv.CA().Bundle().Roots), b.srv.CA().Bundle().Roots[0].Equal(root1))
	}
	for _, r := range []*testReplica{a, b} {
		if err := r.srv.CA().Tick(); err != nil {
			t.Fatal(err)
		}
		if c := signChain(t, r.srv.CA(), id); c[len(c)-1].CheckSignatureFrom(root1) != nil {
			t.Fatal("the staged CA signs before the sidecar ACKed its root")
		}
	}
	st, err := b.srv.CA().RotationStatus()
	if err != nil || st.Phase != careport.PhaseDistributing || st.Waiting != 1 {
		t.Fatalf("replica B's rotation status: %v %+v", err, st)
	}

	ack() // the sidecar installs the two-root bundle: signing switches
	for _, r := range []*testReplica{a, b} {
		kubetest.WaitFor(t, 30*time.Second, "the staged CA signs", func() (bool, error) {
			c := signChain(t, r.srv.CA(), id)
			return c[len(c)-1].CheckSignatureFrom(root2) == nil, nil
		})
		if _, err := r.srv.CA().Bundle().Identity().Verify(old, time.Now()); err != nil {
			t.Fatalf("a certificate of the old CA no longer verifies after the switch: %v", err)
		}
	}

	live, err := a.srv.CA().RetireOldRoots(false)
	var e *ca.Error
	if !errors.As(err, &e) || e.Reason != "live_certificates" || len(live) == 0 {
		t.Fatalf("retire without force while old certificates live: %v %v", live, err)
	}
	broken, err := a.srv.CA().RetireOldRoots(true)
	if err != nil || !strings.Contains(strings.Join(broken, "\n"), identity.SerialHex(old[0])) {
		t.Fatalf("forced retire: %v, broken %v", err, broken)
	}
	cur, err := secrets.Get(ctx, PluggedCASecret, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if got, _ := identity.ParseCertsPEM(cur.Data[RootCertKey]); len(got) != 1 || !got[0].Equal(root2) {
		t.Fatal("cacerts does not hold the new CA after the retirement")
	}
	if _, err := secrets.Get(ctx, PluggedCANextSecret, metav1.GetOptions{}); !apierrors.IsNotFound(err) {
		t.Fatalf("cacerts-next not deleted: %v", err)
	}
	for _, r := range []*testReplica{a, b} {
		kubetest.WaitFor(t, 30*time.Second, "the old root leaves the bundle", func() (bool, error) {
			bundle := r.srv.CA().Bundle()
			return len(bundle.Roots) == 1 && bundle.Roots[0].Equal(root2), nil
		})
	}
}
