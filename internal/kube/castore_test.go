package kube

import (
	"context"
	"encoding/json"
	"errors"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"

	"github.com/meshauth/meshauth/internal/ca"
	"github.com/meshauth/meshauth/internal/identity"
	"github.com/meshauth/meshauth/internal/kube/kubetest"
)

// readStore reads store.json of the shared store Secret in ns (nil if it
// is missing or does not parse).
func readStore(t *testing.T, cs kubernetes.Interface, ns string) *storeDoc {
	t.Helper()
	s, err := cs.CoreV1().Secrets(ns).Get(context.Background(), StoreSecret, metav1.GetOptions{})
	if err != nil {
		return nil
	}
	d, err := decodeStore(s)
	if err != nil {
		return nil
	}
	return &d
}

// storeSerials is the set of serials revoked in the shared store.
func storeSerials(t *testing.T, cs kubernetes.Interface, ns string) map[string]bool {
	out := map[string]bool{}
	if d := readStore(t, cs, ns); d != nil {
		for _, r := range d.Revocations {
			out[r.Serial] = true
		}
	}
	return out
}

// TestRevocationsSharedAndKept: against a real kube-apiserver, a revocation
// made on one control plane replica is in the shared store when the call
// returns, reaches the other replica's bundle, and is in the bundle of a
// replica started afterwards with an empty local store (a restart on the
// emptyDir) before it serves; a revocation by identity reaches what every
// replica signed for it; a malformed or deleted store Secret drops nothing
// and is rewritten.
func TestRevocationsSharedAndKept(t *testing.T) {
	env := kubetest.Need(t)
	cs := env.Clientset(t)
	ctx := context.Background()
	system := createNamespace(t, cs, "istio-system", nil)
	ns := createNamespace(t, cs, "revocations", nil)
	installCRDs(t, env)

	start := func(id string) *testReplica { return startCAReplica(t, env, system, ns, id) }
	revoked := func(r *testReplica, serial string) bool {
		_, ok := r.srv.CA().Bundle().Identity().Revoked[serial]
		return ok
	}
	sign := func(r *testReplica, sa string) string {
		id := identity.MustParse("spiffe://cluster.local/ns/" + ns + "/sa/" + sa)
		iss, err := r.srv.CA().Sign(ctx, ca.Caller{ID: id, Method: "self"}, csrFor(t, ""), time.Hour)
		if err != nil {
			t.Fatal(err)
		}
		return iss.Serial
	}
	issueAndRevoke := func(r *testReplica, sa string) string {
		serial := sign(r, sa)
		if _, _, err := r.srv.CA().Revoke(serial, "", "test"); err != nil {
			t.Fatal(err)
		}
		if !storeSerials(t, cs, system)[serial] || !revoked(r, serial) {
			t.Fatalf("Revoke returned before %s was in the shared store and the replica's bundle", serial)
		}
		return serial
	}

	a, b := start("a"), start("b")
	s1 := issueAndRevoke(a, "web")
	kubetest.WaitFor(t, 30*time.Second, "a's revocation in b's bundle", func() (bool, error) { return revoked(b, s1), nil })
	s2 := issueAndRevoke(b, "api")
	kubetest.WaitFor(t, 30*time.Second, "b's revocation in a's bundle", func() (bool, error) { return revoked(a, s2), nil })
	if va, vb := a.srv.CA().Bundle().Version, b.srv.CA().Bundle().Version; va != vb || va != readStore(t, cs, system).BundleVersion {
		t.Fatalf("bundle versions: a %d, b %d, store %d", va, vb, readStore(t, cs, system).BundleVersion)
	}

	// A replica with an empty local store (what a restart on the emptyDir
	// gives) has both in its bundle as soon as it is ready.
	c := start("c")
	if !revoked(c, s1) || !revoked(c, s2) {
		t.Fatalf("restarted replica serves a bundle without the revocations: %v", c.srv.CA().Bundle().Identity().Revoked)
	}

	// Revoking an identity on one replica revokes what the other signed
	// for it up to then, including an identity the first never signed for
	// (no error there); what is signed afterwards stays valid.
	dbOnA, dbOnB := sign(a, "db"), sign(b, "db")
	ghostOnB := sign(b, "ghost")
	time.Sleep(1100 * time.Millisecond) // issue times are in seconds
	if _, _, err := a.srv.CA().Revoke("", "spiffe://cluster.local/ns/"+ns+"/sa/db", "compromised"); err != nil {
		t.Fatal(err)
	}
	if _, _, err := a.srv.CA().Revoke("", "spiffe://cluster.local/ns/"+ns+"/sa/ghost", "gone"); err != nil {
		t.Fatalf("revoking an identity only another replica signed for: %v", err)
	}
	kubetest.WaitFor(t, 30*time.Second, "b revokes what it signed for db and ghost; a and the store have them", func() (bool, error) {
		ss := storeSerials(t, cs, system)
		return revoked(b, dbOnB) && revoked(b, ghostOnB) && revoked(b, dbOnA) && revoked(a, dbOnB) && ss[dbOnB] && ss[ghostOnB], nil
	})
	time.Sleep(1100 * time.Millisecond)
	fresh := sign(b, "db")
	d := start("d")
	if revoked(b, fresh) || revoked(a, fresh) || revoked(d, fresh) {
		t.Fatal("a certificate signed after the identity revocation was revoked")
	}
	if !revoked(d, dbOnB) {
		t.Fatal("a restarted replica lost an identity revocation's serials")
	}

	// A malformed store Secret, then a deleted one, removes nothing and is
	// rewritten from the replicas' copies.
	sec, err := cs.CoreV1().Secrets(system).Get(ctx, StoreSecret, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	sec.Data[storeKey] = []byte("{not json")
	if _, err := cs.CoreV1().Secrets(system).Update(ctx, sec, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	kubetest.WaitFor(t, 30*time.Second, "the malformed store rewritten with the revocations", func() (bool, error) {
		ss := storeSerials(t, cs, system)
		return ss[s1] && ss[s2] && ss[dbOnB], nil
	})
	if err := cs.CoreV1().Secrets(system).Delete(ctx, StoreSecret, metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	kubetest.WaitFor(t, 30*time.Second, "the deleted store rewritten with the revocations", func() (bool, error) {
		ss := storeSerials(t, cs, system)
		return ss[s1] && ss[s2] && ss[dbOnB], nil
	})
	for name, r := range map[string]*testReplica{"a": a, "b": b, "c": c, "d": d} {
		if !revoked(r, s1) || !revoked(r, s2) || !revoked(r, dbOnB) {
			t.Errorf("replica %s lost a revocation after the malformed and deleted store", name)
		}
		if revoked(r, fresh) {
			t.Errorf("replica %s revoked the certificate signed after the identity revocation", name)
		}
	}
}

// TestRevocationReachesOtherReplicasSidecar: a CSR-mode sidecar agent
// gets its certificate from replica b with its ServiceAccount token; the
// operator revokes that serial at replica a. The revocation reaches the
// sidecar's bundle through b (b's watch of the shared store, then b's
// bundle push), and the agent, refused with the revoked certificate, gets
// a new one with its token. Real API server, two real control plane
// replicas, a real agent.
func TestRevocationReachesOtherReplicasSidecar(t *testing.T) {
	env := kubetest.Need(t)
	cs := env.Clientset(t)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	system := createNamespace(t, cs, "istio-system", nil)
	ns := createNamespace(t, cs, "revoke-push", nil)
	installCRDs(t, env)
	if _, err := cs.CoreV1().ServiceAccounts(ns).Create(ctx, &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Name: "sleep"}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	a, b := startCAReplica(t, env, system, ns, "a"), startCAReplica(t, env, system, ns, "b")
	store, _ := startCSRAgent(t, ctx, cs, ns, "sleep", b.srv.Dir(), b.srv.Addr())
	wait := func(what string, cond func() bool) {
		t.Helper()
		kubetest.WaitFor(t, 30*time.Second, what, func() (bool, error) { return cond(), nil })
	}
	wait("the sidecar's certificate from b and b's bundle", func() bool { return store.SVID() != nil && store.Bundle() != nil })
	serial := store.SVID().Serial()
	if _, _, err := a.srv.CA().Revoke(serial, "", "key compromise"); err != nil {
		t.Fatal(err)
	}
	wait("the revocation made at a in the sidecar's bundle, pushed by b", func() bool { return store.Bundle().IsRevoked(serial) })
	wait("a new certificate from b with the ServiceAccount token", func() bool {
		return store.SVID().Serial() != serial && store.Health() == nil
	})
}

// storeReplica is a CA with its own SecretStore, without the watch
// (Run) unless the test starts it: the tests below decide when a replica
// hears of the other's writes.
type storeReplica struct {
	store *SecretStore
	ca    *ca.CA
}

func newStoreReplica(t *testing.T, rc *rest.Config, ns string) *storeReplica {
	t.Helper()
	ctx := context.Background()
	cs, err := kubernetes.NewForConfig(rc)
	if err != nil {
		t.Fatal(err)
	}
	backend, _, err := NewCABackend(ctx, cs, ns, "cluster.local", time.Now(), discardLog())
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	st, err := OpenCAStore(ctx, cs, ns, dir, discardLog())
	if err != nil {
		t.Fatal(err)
	}
	c, err := ca.New(ca.Config{Dir: dir, Backend: backend, Store: st, Log: discardLog()})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return &storeReplica{st, c}
}

// renewerAt authenticates, at c, the holder of iss (an mTLS renewal).
func renewerAt(t testing.TB, c *ca.CA, iss *ca.Issued) ca.Caller {
	t.Helper()
	chain, err := identity.ParseCertsPEM([]byte(strings.Join(iss.ChainPEM, "")))
	if err != nil {
		t.Fatal(err)
	}
	caller, err := ca.Authenticate(context.Background(), ca.Credentials{PeerCertificates: chain}, c.MTLSAuthenticator())
	if err != nil {
		t.Fatalf("renewal: %v", err)
	}
	return caller
}

// TestSecretStoreLineage: the renewal-lineage rules across two replicas
// sharing the store on a real kube-apiserver, with the timing fixed by the
// test (no watch runs): b renews a certificate a signed; a revokes it (its
// log does not hold the renewal); the next renewal from the revoked serial
// at b is refused although b's bundle has not heard of the revocation (the
// fresh read), and that read's lineage scan puts b's earlier renewal in
// the store, from where a's bundle takes it. A revocation by identity on a
// revokes what b signed for it before, not after.
func TestSecretStoreLineage(t *testing.T) {
	env := kubetest.Need(t)
	cs := env.Clientset(t)
	ctx := context.Background()
	ns := createNamespace(t, cs, "store-lineage", nil)
	a, b := newStoreReplica(t, env.RESTConfig(), ns), newStoreReplica(t, env.RESTConfig(), ns)
	web := identity.MustParse("spiffe://cluster.local/ns/" + ns + "/sa/web")
	p, err := a.ca.Sign(ctx, ca.Caller{ID: web, Method: "k8s_token", Subject: "uid"}, csrFor(t, ""), 0)
	if err != nil {
		t.Fatal(err)
	}
	caller := renewerAt(t, b.ca, p)
	child, err := b.ca.Sign(ctx, caller, csrFor(t, ""), 0)
	if err != nil {
		t.Fatal(err)
	}
	added, _, err := a.ca.Revoke(p.Serial, "", "key compromise")
	if err != nil || len(added) != 1 || added[0].Serial != p.Serial {
		t.Fatalf("a.Revoke = %+v, %v; want only %s (a's log does not hold the renewal)", added, err, p.Serial)
	}
	if b.ca.Bundle().Identity().IsRevoked(p.Serial) {
		t.Fatal("b heard of the revocation without a watch: the test would not show the fresh read")
	}
	if _, err := b.ca.Sign(ctx, caller, csrFor(t, ""), 0); ca.ReasonOf(err) != ca.ReasonCallerCert {
		t.Fatalf("renewal from the revoked serial at the replica that had not heard of it: %v", err)
	}
	d := readStore(t, cs, ns)
	var why string
	for _, r := range d.Revocations {
		if r.Serial == child.Serial {
			why = r.Reason
		}
	}
	if want := "renewed from revoked " + p.Serial + ": key compromise"; why != want {
		t.Fatalf("the renewal b signed before the revocation: reason %q in the store, want %q", why, want)
	}
	for name, r := range map[string]*storeReplica{"a": a, "b": b} {
		if err := r.store.Sync(ctx); err != nil { // what Run does on the watch event
			t.Fatal(err)
		}
		if err := r.ca.Refresh(); err != nil {
			t.Fatal(err)
		}
		if !r.ca.Bundle().Identity().IsRevoked(child.Serial) || r.ca.Bundle().Version != d.BundleVersion {
			t.Fatalf("replica %s: renewal revoked %v, bundle version %d, store %d", name, r.ca.Bundle().Identity().IsRevoked(child.Serial), r.ca.Bundle().Version, d.BundleVersion)
		}
	}

	// By identity: b signed for db before the revocation on a and after.
	db := identity.MustParse("spiffe://cluster.local/ns/" + ns + "/sa/db")
	before, err := b.ca.Sign(ctx, ca.Caller{ID: db, Method: "self"}, csrFor(t, ""), time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	time.Sleep(1100 * time.Millisecond) // issue times are in seconds
	if added, _, err := a.ca.Revoke("", db.String(), "compromised"); err != nil || len(added) != 0 {
		t.Fatalf("a.Revoke(identity a never signed for) = %+v, %v; want nothing added, no error", added, err)
	}
	time.Sleep(1100 * time.Millisecond)
	after, err := b.ca.Sign(ctx, ca.Caller{ID: db, Method: "self"}, csrFor(t, ""), time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	if err := b.store.Sync(ctx); err != nil {
		t.Fatal(err)
	}
	if ss := storeSerials(t, cs, ns); !ss[before.Serial] || ss[after.Serial] {
		t.Fatalf("identity revocation applied by b: before %v (want true), after %v (want false)", ss[before.Serial], ss[after.Serial])
	}
}

// faultyTransport is a fault in the path to the real API server, for the
// crash-consistency test: it acts on the next write (PUT) of the store
// Secret only.
type faultyTransport struct {
	next http.RoundTripper
	mu   sync.Mutex
	// mode: "" (pass), "before" (fail without sending), "after" (send,
	// then fail as if the connection dropped before the answer), "race"
	// (run race first: another replica's write, so this one conflicts).
	mode string
	race func()
}

var errInjected = errors.New("injected: connection reset")

func (f *faultyTransport) RoundTrip(req *http.Request) (*http.Response, error) {
	f.mu.Lock()
	mode := ""
	if req.Method == http.MethodPut && strings.HasSuffix(req.URL.Path, "/secrets/"+StoreSecret) {
		mode, f.mode = f.mode, ""
	}
	f.mu.Unlock()
	switch mode {
	case "before":
		return nil, errInjected
	case "after":
		resp, err := f.next.RoundTrip(req)
		if err == nil {
			resp.Body.Close()
		}
		return nil, errInjected
	case "race":
		f.race()
	}
	return f.next.RoundTrip(req)
}

func (f *faultyTransport) set(mode string) { f.mu.Lock(); f.mode = mode; f.mu.Unlock() }

// TestSecretStoreWriteFailures: a revocation whose write of the shared
// store fails half way leaves the store consistent, on a real API server:
// failing before the write reaches it changes nothing (store, bundle,
// version) and the retry works; failing after it landed reports an error
// but the store holds the whole revocation (serial, lineage and version in
// one object), which the replica's bundle then takes in, and a retry adds
// nothing twice; another replica's write in between (an Update conflict)
// is read again and both revocations land, each with its own version.
func TestSecretStoreWriteFailures(t *testing.T) {
	env := kubetest.Need(t)
	cs := env.Clientset(t)
	ctx := context.Background()
	ns := createNamespace(t, cs, "store-faults", nil)
	ft := &faultyTransport{}
	rc := rest.CopyConfig(env.RESTConfig())
	rc.WrapTransport = func(rt http.RoundTripper) http.RoundTripper { ft.next = rt; return ft }
	a := newStoreReplica(t, env.RESTConfig(), ns)
	b := newStoreReplica(t, rc, ns)
	web := identity.MustParse("spiffe://cluster.local/ns/" + ns + "/sa/web")
	sign := func(r *storeReplica, c ca.Caller) *ca.Issued {
		t.Helper()
		iss, err := r.ca.Sign(ctx, c, csrFor(t, ""), 0)
		if err != nil {
			t.Fatal(err)
		}
		return iss
	}
	p := sign(b, ca.Caller{ID: web, Method: "k8s_token", Subject: "uid"})
	child := sign(b, renewerAt(t, b.ca, p))
	v0 := readStore(t, cs, ns).BundleVersion

	ft.set("before")
	if _, _, err := b.ca.Revoke(p.Serial, "", "stolen"); err == nil {
		t.Fatal("Revoke succeeded though its write failed")
	}
	d := readStore(t, cs, ns)
	if d.BundleVersion != v0 || len(d.Revocations) != 0 || b.ca.Bundle().Version != v0 || len(b.ca.Bundle().Revocations) != 0 {
		t.Fatalf("after a write that never reached the API server: store v%d %v, bundle v%d %v; want v%d and nothing revoked",
			d.BundleVersion, d.Revocations, b.ca.Bundle().Version, b.ca.Bundle().Revocations, v0)
	}

	ft.set("after")
	if _, _, err := b.ca.Revoke(p.Serial, "", "stolen"); err == nil {
		t.Fatal("Revoke succeeded though its answer was lost")
	}
	d = readStore(t, cs, ns)
	if d.BundleVersion != v0+1 || !storeSerials(t, cs, ns)[p.Serial] || !storeSerials(t, cs, ns)[child.Serial] {
		t.Fatalf("after a write that landed but whose answer was lost: store v%d %v; want v%d with %s and its renewal %s",
			d.BundleVersion, d.Revocations, v0+1, p.Serial, child.Serial)
	}
	if err := b.store.Sync(ctx); err != nil {
		t.Fatal(err)
	}
	if err := b.ca.Refresh(); err != nil {
		t.Fatal(err)
	}
	if !b.ca.Bundle().Identity().IsRevoked(p.Serial) || !b.ca.Bundle().Identity().IsRevoked(child.Serial) {
		t.Fatal("b's bundle does not take in the revocation that landed")
	}
	if added, v, err := b.ca.Revoke(p.Serial, "", "stolen"); err != nil || len(added) != 0 || v != v0+1 {
		t.Fatalf("retried Revoke = %+v, v%d, %v; want nothing added at v%d", added, v, err, v0+1)
	}

	// a revokes another certificate while b's write is on its way.
	other := sign(a, ca.Caller{ID: web, Method: "self"})
	mine := sign(b, ca.Caller{ID: web, Method: "self"})
	ft.race = func() {
		if _, _, err := a.ca.Revoke(other.Serial, "", "raced"); err != nil {
			t.Errorf("a's racing revocation: %v", err)
		}
	}
	ft.set("race")
	if _, v, err := b.ca.Revoke(mine.Serial, "", "mine"); err != nil || v != v0+3 {
		t.Fatalf("b.Revoke after a conflict = v%d, %v; want v%d", v, err, v0+3)
	}
	if ss := storeSerials(t, cs, ns); !ss[other.Serial] || !ss[mine.Serial] || !ss[p.Serial] || !ss[child.Serial] || len(ss) != 4 {
		t.Fatalf("store after the conflict: %v; want the four revocations", ss)
	}
}

// TestSecretStoreMigrates: the revocations an older control plane shared
// through Secret meshauth-revocations are in the store (and so the bundle)
// of the first replica of this version, so an upgrade forgets none.
func TestSecretStoreMigrates(t *testing.T) {
	env := kubetest.Need(t)
	cs := env.Clientset(t)
	ns := createNamespace(t, cs, "store-migrate", nil)
	old := `{"revocations":[{"serial":"ab12","spiffe_id":"spiffe://cluster.local/ns/a/sa/b","not_after":"2099-01-01T00:00:00Z","revoked_at":"2026-01-01T00:00:00Z","reason":"old"}],
		"identities":[{"spiffe_id":"spiffe://cluster.local/ns/a/sa/c","revoked_at":"2026-11-30T00:00:00Z"}]}`
	if _, err := cs.CoreV1().Secrets(ns).Create(context.Background(), &corev1.Secret{
		ObjectMeta: metav1.ObjectMeta{Name: legacyRevocationsSecret}, Data: map[string][]byte{legacyRevocationsKey: []byte(old)},
	}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	r := newStoreReplica(t, env.RESTConfig(), ns)
	if !r.ca.Bundle().Identity().IsRevoked("ab12") {
		t.Fatal("the old Secret's revocation is not in the bundle")
	}
	if d := readStore(t, cs, ns); d == nil || len(d.Identities) != 1 || d.BundleVersion == 0 {
		t.Fatalf("store after migration: %+v", d)
	}
}

// BenchmarkRenewal: one mTLS renewal signed and logged by a CA whose
// store is the plain bbolt file, or the SecretStore over the same file,
// which reads the shared Secret afresh before each renewal (the real
// kube-apiserver on loopback). CSR generation is outside the timing.
func BenchmarkRenewal(b *testing.B) {
	env := kubetest.Need(b)
	cs := env.Clientset(b)
	ctx := context.Background()
	for _, kind := range []string{"bbolt", "secret-store"} {
		b.Run(kind, func(b *testing.B) {
			ns := createNamespace(b, cs, "bench-renewal", nil)
			backend, _, err := NewCABackend(ctx, cs, ns, "cluster.local", time.Now(), discardLog())
			if err != nil {
				b.Fatal(err)
			}
			dir := b.TempDir()
			cfg := ca.Config{Dir: dir, Backend: backend, Log: discardLog()}
			if kind == "secret-store" {
				if cfg.Store, err = OpenCAStore(ctx, cs, ns, dir, discardLog()); err != nil {
					b.Fatal(err)
				}
			} else if cfg.Store, err = ca.OpenStore(dir); err != nil {
				b.Fatal(err)
			}
			c, err := ca.New(cfg)
			if err != nil {
				b.Fatal(err)
			}
			defer c.Close()
			web := identity.MustParse("spiffe://cluster.local/ns/" + ns + "/sa/web")
			p, err := c.Sign(ctx, ca.Caller{ID: web, Method: "k8s_token", Subject: "uid"}, csrFor(b, ""), 0)
			if err != nil {
				b.Fatal(err)
			}
			caller := renewerAt(b, c, p)
			csrs := make([][]byte, b.N)
			for i := range csrs {
				csrs[i] = csrFor(b, "")
			}
			b.ResetTimer()
			for i := 0; i < b.N; i++ {
				if _, err := c.Sign(ctx, caller, csrs[i], 0); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

// FuzzStoreSecret: whatever is in the shared store Secret, decoding it
// never panics, and what it accepts is what a CA would have written.
func FuzzStoreSecret(f *testing.F) {
	f.Add([]byte(`{"trustDomain":"cluster.local","bundleVersion":3,"revocations":[{"serial":"ab12","spiffe_id":"spiffe://cluster.local/ns/a/sa/b","not_after":"2099-01-01T00:00:00Z","revoked_at":"2026-01-01T00:00:00Z"}]}`))
	f.Add([]byte(`{"revocations":[{"serial":"00ab","not_after":"2099-01-01T00:00:00Z"},{"serial":"cd","not_after":"2099-01-01T00:00:00Z"}]}`))
	f.Add([]byte(`{"revocations":[],"identities":[{"spiffe_id":"spiffe://x/y","revoked_at":"2026-01-01T00:00:00Z"}]}`))
	f.Add([]byte(`{not json`))
	f.Fuzz(func(t *testing.T, data []byte) {
		d, err := decodeStore(&corev1.Secret{Data: map[string][]byte{storeKey: data}})
		if err != nil {
			return
		}
		for _, r := range d.Revocations {
			if checkRevocation(r) != nil {
				t.Fatalf("accepted revocation %+v", r)
			}
		}
		for _, r := range d.Identities {
			if r.SPIFFEID == "" || r.RevokedAt.IsZero() {
				t.Fatalf("accepted identity revocation %+v", r)
			}
		}
		if _, err := json.Marshal(d); err != nil {
			t.Fatal(err)
		}
	})
}

// startCAReplica starts a control plane replica of system watching ns, with
// its own state directory, no Secret controller and a short lease: the
// replicas the revocation tests share revocations between.
func startCAReplica(t *testing.T, env *kubetest.Env, system, ns, id string) *testReplica {
	return startReplica(t, ControlConfig{
		REST: env.RESTConfig(), Namespace: system, Dir: t.TempDir(), Identity: id,
		Listen: "127.0.0.1:0", WebhookListen: "-", Namespaces: []string{ns}, DisableSecrets: true,
		LeaseDuration: 2 * time.Second,
	})
}
