package kube

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/meshauth/meshauth/internal/ca"
	"github.com/meshauth/meshauth/internal/ca/catest"
	"github.com/meshauth/meshauth/internal/identity"
	"github.com/meshauth/meshauth/internal/kube/kubetest"
	"github.com/meshauth/meshauth/internal/pki"
)

// logBuffer collects a replica's log lines, safe for concurrent writers.
type logBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *logBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}
func (b *logBuffer) String() string { b.mu.Lock(); defer b.mu.Unlock(); return b.buf.String() }

// signChain signs a certificate for id at c and returns its chain (leaf
// first).
func signChain(t *testing.T, c *ca.CA, id identity.ID) []*x509.Certificate {
	t.Helper()
	iss, err := c.Sign(context.Background(), ca.Caller{ID: id, Method: "self"}, csrFor(t, ""), time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	chain, err := identity.ParseCertsPEM([]byte(strings.Join(iss.ChainPEM, "")))
	if err != nil {
		t.Fatal(err)
	}
	return chain
}

// signedBy signs a certificate for sa "web" of ns at replica r.
func signedBy(t *testing.T, r *testReplica, ns string) []*x509.Certificate {
	t.Helper()
	return signChain(t, r.srv.CA(), identity.MustParse("spiffe://cluster.local/ns/"+ns+"/sa/web"))
}

// TestCacertsRefresh: on a real kube-apiserver, a running control plane
// takes a changed cacerts Secret in without a restart: the new
// intermediate signs, the bundle version moves, certificates signed by the
// old intermediate still verify. A bad new Secret — a key that does not
// match, an expired intermediate, a certificate that is not a CA — is
// refused with a log line naming the problem, and the last good CA keeps
// signing; a good Secret after a bad one is taken in.
func TestCacertsRefresh(t *testing.T) {
	env := kubetest.Need(t)
	cs := env.Clientset(t)
	ctx := context.Background()
	system := createNamespace(t, cs, "istio-system", nil)
	ns := createNamespace(t, cs, "cacerts", nil)
	op := catest.New(t)
	now := time.Now()
	inter := func(opts ...catest.IssueOption) *catest.Cert {
		return op.Issue(t, "spiffe://cluster.local", append([]catest.IssueOption{catest.Validity(now.Add(-time.Hour), now.Add(30*24*time.Hour)), catest.AsCA()}, opts...)...)
	}
	data := func(cert, key []byte) map[string][]byte {
		return map[string][]byte{CACertKey: cert, CAKeyKey: key, CertChainKey: cert, RootCertKey: op.RootPEM()}
	}
	int1 := inter()
	if _, err := cs.CoreV1().Secrets(system).Create(ctx, &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Name: PluggedCASecret}, Data: data(int1.ChainPEM, int1.KeyPEM)}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	logs := &logBuffer{}
	r := startReplica(t, ControlConfig{
		REST: env.RESTConfig(), Namespace: system, Dir: t.TempDir(), Identity: "a",
		Listen: "127.0.0.1:0", WebhookListen: "-", Namespaces: []string{ns}, DisableSecrets: true,
		LeaseDuration: 2 * time.Second, Log: slog.New(slog.NewTextHandler(logs, nil)),
	})
	old := signedBy(t, r, ns)
	if !old[1].Equal(int1.Leaf) {
		t.Fatal("the first cacerts does not sign")
	}
	put := func(cert, key []byte) string {
		t.Helper()
		s, err := cs.CoreV1().Secrets(system).Get(ctx, PluggedCASecret, metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		s.Data = data(cert, key)
		s, err = cs.CoreV1().Secrets(system).Update(ctx, s, metav1.UpdateOptions{})
		if err != nil {
			t.Fatal(err)
		}
		return s.ResourceVersion
	}
	takenIn := func(c *catest.Cert) {
		t.Helper()
		v0 := r.srv.CA().Bundle().Version
		kubetest.WaitFor(t, 30*time.Second, "the new cacerts signs", func() (bool, error) {
			return signedBy(t, r, ns)[1].Equal(c.Leaf), nil
		})
		if b := r.srv.CA().Bundle(); b.Version <= v0 {
			t.Fatalf("bundle version %d after the new cacerts, was %d", b.Version, v0)
		}
		if _, err := r.srv.CA().Bundle().Identity().Verify(old, time.Now()); err != nil {
			t.Fatalf("a certificate signed by the old intermediate no longer verifies: %v", err)
		}
	}

	int2 := inter()
	put(int2.ChainPEM, int2.KeyPEM)
	takenIn(int2)

	int3 := inter()
	for name, c := range map[string]struct {
		cert, key []byte
		want      string
	}{
		"mismatched key": {int3.ChainPEM, int1.KeyPEM, "does not match the public key"},
		"expired":        {inter(catest.Validity(now.Add(-48*time.Hour), now.Add(-time.Hour))).ChainPEM, int3.KeyPEM, "expired at"},
		"not a CA":       {op.Issue(t, "spiffe://cluster.local/ns/x/sa/y").ChainPEM, int3.KeyPEM, "is not a CA certificate"},
	} {
		v0 := r.srv.CA().Bundle().Version
		rv := put(c.cert, c.key)
		kubetest.WaitFor(t, 30*time.Second, name+": refusal logged", func() (bool, error) {
			for _, l := range strings.Split(logs.String(), "\n") {
				if strings.Contains(l, "refused; the CA keeps signing with the last good one") && strings.Contains(l, "resource_version="+rv) && strings.Contains(l, c.want) {
					return true, nil
				}
			}
			return false, nil
		})
		if !signedBy(t, r, ns)[1].Equal(int2.Leaf) || r.srv.CA().Bundle().Version != v0 {
			t.Fatalf("%s: the bad cacerts changed the CA (bundle v%d, was v%d)", name, r.srv.CA().Bundle().Version, v0)
		}
	}
	put(int3.ChainPEM, int3.KeyPEM)
	takenIn(int3)
}

// expiredRootSecret puts in ns an istio-ca-secret whose root was valid from
// notBefore to notAfter; it returns the root and its key.
func expiredRootSecret(t *testing.T, ns string, notBefore, notAfter time.Time) (*x509.Certificate, *ecdsa.PrivateKey) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	root, err := pki.SelfSignedCA(key, pki.CA{
		Subject:   pkix.Name{Organization: []string{"cluster.local"}, CommonName: "meshauth root CA"},
		NotBefore: notBefore, NotAfter: notAfter, KeyUsage: x509.KeyUsageCertSign | x509.KeyUsageCRLSign,
	})
	if err != nil {
		t.Fatal(err)
	}
	der, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	cs := kubetest.Need(t).Clientset(t)
	if _, err := cs.CoreV1().Secrets(ns).Create(context.Background(), &corev1.Secret{
		ObjectMeta: metav1.ObjectMeta{Name: CASecret}, Type: CASecretType,
		Data: map[string][]byte{CACertKey: pemCert(root), CAKeyKey: pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der})},
	}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	return root, key
}

// rootInSecret is the first root of istio-ca-secret in ns.
func rootInSecret(t *testing.T, ns string) *x509.Certificate {
	t.Helper()
	s, err := kubetest.Need(t).Clientset(t).CoreV1().Secrets(ns).Get(context.Background(), CASecret, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	roots, err := decodeRoots(ns, s)
	if err != nil {
		t.Fatal(err)
	}
	c, err := identity.ParseCertsPEM([]byte(roots[0].Cert))
	if err != nil {
		t.Fatal(err)
	}
	return c[0]
}

// TestExpiredRootAtStartUp: on a real kube-apiserver, an istio-ca-secret
// whose root has expired no longer stops the control plane (it refused to
// start with "ca-cert.pem expired at ..."): as Istio's self-signed root
// rotator does, the root is re-issued from its own key, with its subject,
// for its original lifetime, and written back; both replicas sign, and
// each trusts the other's certificates; replicas starting at once agree on
// one new root (the API server's optimistic concurrency).
func TestExpiredRootAtStartUp(t *testing.T) {
	env := kubetest.Need(t)
	cs := env.Clientset(t)
	system := createNamespace(t, cs, "istio-system", nil)
	ns := createNamespace(t, cs, "expired-root", nil)
	now := time.Now()
	old, key := expiredRootSecret(t, system, now.Add(-400*24*time.Hour), now.Add(-time.Hour))

	reps := []*testReplica{startCAReplica(t, env, system, ns, "a"), startCAReplica(t, env, system, ns, "b")}
	root := rootInSecret(t, system)
	if !root.PublicKey.(*ecdsa.PublicKey).Equal(&key.PublicKey) || !bytes.Equal(root.RawSubject, old.RawSubject) {
		t.Fatal("the renewed root has another key or subject")
	}
	if now.Before(root.NotBefore) || !root.NotAfter.After(now.Add(399*24*time.Hour)) {
		t.Fatalf("renewed root valid %s to %s; want from before now for the old 400 days", root.NotBefore, root.NotAfter)
	}
	for i, r := range reps {
		if b := r.srv.CA().Bundle(); len(b.Roots) != 1 || !b.Roots[0].Equal(root) {
			t.Fatalf("replica %d does not serve the renewed root", i)
		}
	}
	for i, r := range reps {
		chain := signedBy(t, r, ns)
		if _, err := reps[1-i].srv.CA().Bundle().Identity().Verify(chain, time.Now()); err != nil {
			t.Fatalf("replica %d's certificate in the other's bundle: %v", i, err)
		}
	}

	// Replicas starting at once on an expired root agree on one new root.
	race := createNamespace(t, cs, "expired-race", nil)
	expiredRootSecret(t, race, now.Add(-400*24*time.Hour), now.Add(-time.Hour))
	type result struct {
		cert *x509.Certificate
		err  error
	}
	results := make(chan result, 4)
	var wg sync.WaitGroup
	for range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			b, _, err := NewCABackend(context.Background(), cs, race, "cluster.local", time.Now(), discardLog())
			if err != nil {
				results <- result{err: err}
				return
			}
			as, _ := b.Authorities()
			results <- result{cert: as[0].Certificate}
		}()
	}
	wg.Wait()
	close(results)
	final := rootInSecret(t, race)
	for r := range results {
		if r.err != nil || !r.cert.Equal(final) {
			t.Fatalf("concurrent start: %v (same root as the Secret: %v)", r.err, r.err == nil && r.cert.Equal(final))
		}
	}
}

// TestRootRenewedBeforeExpiry: a signing root with less than RenewFraction
// of its life left is re-issued from its key at start-up, and a workload
// certificate the old root certificate signed still verifies against the
// new one (same key, same subject): nothing in the mesh breaks.
func TestRootRenewedBeforeExpiry(t *testing.T) {
	env := kubetest.Need(t)
	cs := env.Clientset(t)
	ns := createNamespace(t, cs, "renew-root", nil)
	now := time.Now()
	old, key := expiredRootSecret(t, ns, now.Add(-9*24*time.Hour), now.Add(24*time.Hour))
	op := &catest.CA{TrustDomain: "cluster.local", Root: old, RootKey: key, Now: now}
	leaf := op.Issue(t, "spiffe://cluster.local/ns/"+ns+"/sa/web", catest.Validity(now.Add(-time.Hour), now.Add(12*time.Hour)))
	backend, _, err := NewCABackend(context.Background(), cs, ns, "cluster.local", now, discardLog())
	if err != nil {
		t.Fatal(err)
	}
	as, _ := backend.Authorities()
	if as[0].Certificate.Equal(old) || !as[0].Certificate.Equal(rootInSecret(t, ns)) {
		t.Fatal("the root with 10% of its life left was not re-issued into the Secret")
	}
	c, err := ca.New(ca.Config{Dir: t.TempDir(), Backend: backend, Log: discardLog()})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if _, err := c.Bundle().Identity().Verify(leaf.Chain, now); err != nil {
		t.Fatalf("a certificate the old root signed, against the re-issued root: %v", err)
	}
	// A second start finds nothing to do.
	if _, _, err := NewCABackend(context.Background(), cs, ns, "cluster.local", now, discardLog()); err != nil || !rootInSecret(t, ns).Equal(as[0].Certificate) {
		t.Fatalf("second start: %v (root changed again: %v)", err, !rootInSecret(t, ns).Equal(as[0].Certificate))
	}
}

// TestRenewRoots: which roots renewRoots touches.
func TestRenewRoots(t *testing.T) {
	now := time.Now()
	mk := func(id uint64, nb, na, activate time.Time) secretRoot {
		key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		c, err := pki.SelfSignedCA(key, pki.CA{Subject: pkix.Name{CommonName: fmt.Sprint("root ", id)}, NotBefore: nb, NotAfter: na, KeyUsage: x509.KeyUsageCertSign})
		if err != nil {
			t.Fatal(err)
		}
		der, _ := x509.MarshalPKCS8PrivateKey(key)
		return secretRoot{ID: id, ActivateAt: activate, Cert: string(pemCert(c)), Key: string(pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der}))}
	}
	year := 365 * 24 * time.Hour
	fresh := mk(2, now.Add(-time.Hour), now.Add(year), now.Add(-time.Minute))
	if out, _, err := renewRoots([]secretRoot{fresh}, now); err != nil || out != nil {
		t.Fatalf("a fresh signing root: %v, %v; want nothing to do", out, err)
	}
	retired := mk(1, now.Add(-2*year), now.Add(-time.Hour), time.Time{})
	pending := mk(3, now.Add(-time.Hour), now.Add(year), now.Add(time.Hour))
	out, did, err := renewRoots([]secretRoot{retired, fresh, pending}, now)
	if err != nil || len(out) != 2 || out[0] != fresh || out[1] != pending || len(did) != 1 {
		t.Fatalf("expired retired root: %v %v %v; want it dropped, the others untouched", out, did, err)
	}
	dying := mk(1, now.Add(-2*year), now.Add(-time.Hour), time.Time{})
	out, _, err = renewRoots([]secretRoot{dying, pending}, now)
	if err != nil || len(out) != 2 || out[0].Cert == dying.Cert || out[0].Key != dying.Key || out[1] != pending {
		t.Fatalf("expired signing root with a pending successor: %v; want it re-issued (same key), the pending one untouched", err)
	}
}
