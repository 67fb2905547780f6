package kube

import (
	"context"
	"encoding/json"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/meshauth/meshauth/internal/ca"
	"github.com/meshauth/meshauth/internal/identity"
	"github.com/meshauth/meshauth/internal/kube/kubetest"
)

// TestRevocationsSharedAndKept: against a real kube-apiserver, a revocation
// made on one control plane replica reaches the other replica's bundle, is
// in the meshauth-revocations Secret, and is in the bundle of a replica
// started afterwards with an empty store (a restart on the emptyDir) before
// it serves; a malformed Secret is reported, never drops a revocation, and
// is rewritten.
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
	issueAndRevoke := func(r *testReplica, sa string) string {
		id := identity.MustParse("spiffe://cluster.local/ns/" + ns + "/sa/" + sa)
		iss, err := r.srv.CA().Sign(ctx, ca.Caller{ID: id, Method: "self"}, csrFor(t, ""), time.Hour)
		if err != nil {
			t.Fatal(err)
		}
		if _, _, err := r.srv.CA().Revoke(iss.Serial, "", "test"); err != nil {
			t.Fatal(err)
		}
		return iss.Serial
	}
	secretSerials := func() map[string]bool {
		s, err := cs.CoreV1().Secrets(system).Get(ctx, RevocationsSecret, metav1.GetOptions{})
		if err != nil {
			return nil
		}
		var l revocationList
		if json.Unmarshal(s.Data[revocationsKey], &l) != nil {
			return nil
		}
		if len(l.Identities) > 0 && l.Identities[0].SPIFFEID == "" {
			return nil
		}
		out := map[string]bool{}
		for _, r := range l.Revocations {
			out[r.Serial] = true
		}
		return out
	}

	a, b := start("a"), start("b")
	s1 := issueAndRevoke(a, "web")
	kubetest.WaitFor(t, 30*time.Second, "a's revocation in the Secret and in b's bundle", func() (bool, error) {
		return secretSerials()[s1] && revoked(b, s1), nil
	})
	s2 := issueAndRevoke(b, "api")
	kubetest.WaitFor(t, 30*time.Second, "b's revocation in a's bundle, both in the Secret", func() (bool, error) {
		ss := secretSerials()
		return ss[s1] && ss[s2] && revoked(a, s2), nil
	})

	// A replica with an empty store (what a restart on the emptyDir gives)
	// has both in its bundle as soon as it is ready.
	c := start("c")
	if !revoked(c, s1) || !revoked(c, s2) {
		t.Fatalf("restarted replica serves a bundle without the revocations: %v", c.srv.CA().Bundle().Identity().Revoked)
	}

	// Revoking an identity on one replica revokes what the other signed
	// for it up to then, including an identity the first never signed for
	// (no error there); what is signed afterwards stays valid.
	sign := func(r *testReplica, sa string) string {
		id := identity.MustParse("spiffe://cluster.local/ns/" + ns + "/sa/" + sa)
		iss, err := r.srv.CA().Sign(ctx, ca.Caller{ID: id, Method: "self"}, csrFor(t, ""), time.Hour)
		if err != nil {
			t.Fatal(err)
		}
		return iss.Serial
	}
	dbOnA, dbOnB := sign(a, "db"), sign(b, "db")
	ghostOnB := sign(b, "ghost")
	time.Sleep(1100 * time.Millisecond) // issue times are in seconds
	if _, _, err := a.srv.CA().Revoke("", "spiffe://cluster.local/ns/"+ns+"/sa/db", "compromised"); err != nil {
		t.Fatal(err)
	}
	if _, _, err := a.srv.CA().Revoke("", "spiffe://cluster.local/ns/"+ns+"/sa/ghost", "gone"); err != nil {
		t.Fatalf("revoking an identity only another replica signed for: %v", err)
	}
	kubetest.WaitFor(t, 30*time.Second, "b revokes what it signed for db and ghost; a and the Secret have them", func() (bool, error) {
		ss := secretSerials()
		return revoked(b, dbOnB) && revoked(b, ghostOnB) && revoked(b, dbOnA) && revoked(a, dbOnB) && ss[dbOnB] && ss[ghostOnB], nil
	})
	fresh := sign(b, "db")
	time.Sleep(500 * time.Millisecond)
	d := start("d") // a restarted replica re-applies the identity revocations to its (empty) log
	if revoked(b, fresh) || revoked(a, fresh) || revoked(d, fresh) {
		t.Fatal("a certificate signed after the identity revocation was revoked")
	}
	if !revoked(d, dbOnB) {
		t.Fatal("a restarted replica lost an identity revocation's serials")
	}

	// A malformed Secret removes nothing and is rewritten from the replicas'
	// lists.
	sec, err := cs.CoreV1().Secrets(system).Get(ctx, RevocationsSecret, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	sec.Data[revocationsKey] = []byte("{not json")
	if _, err := cs.CoreV1().Secrets(system).Update(ctx, sec, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	kubetest.WaitFor(t, 30*time.Second, "the malformed Secret rewritten with both revocations", func() (bool, error) {
		ss := secretSerials()
		return ss[s1] && ss[s2], nil
	})
	for name, r := range map[string]*testReplica{"a": a, "b": b, "c": c, "d": d} {
		if !revoked(r, s1) || !revoked(r, s2) || !revoked(r, dbOnB) {
			t.Errorf("replica %s lost a revocation after the malformed Secret", name)
		}
		if revoked(r, fresh) {
			t.Errorf("replica %s revoked the certificate signed after the identity revocation", name)
		}
	}
}

// FuzzRevocationsSecret: whatever another replica (or a person) wrote into
// the Secret, importing it never panics and never removes a revocation the
// CA holds; what it adds is well formed.
func FuzzRevocationsSecret(f *testing.F) {
	f.Add([]byte(`{"revocations":[{"serial":"ab12","spiffe_id":"spiffe://cluster.local/ns/a/sa/b","not_after":"2099-01-01T00:00:00Z","revoked_at":"2026-01-01T00:00:00Z"}]}`))
	f.Add([]byte(`{"revocations":[{"serial":"00ab","not_after":"2099-01-01T00:00:00Z"},{"serial":"cd","not_after":"2099-01-01T00:00:00Z"}]}`))
	f.Add([]byte(`{not json`))
	authority, err := ca.New(ca.Config{Dir: f.TempDir()})
	if err != nil {
		f.Fatal(err)
	}
	defer authority.Close()
	if _, _, err := authority.ImportRevocations([]ca.Revocation{{Serial: "1234", NotAfter: time.Now().Add(24 * time.Hour)}}); err != nil {
		f.Fatal(err)
	}
	log := discardLog()
	f.Fuzz(func(t *testing.T, data []byte) {
		s := &corev1.Secret{Data: map[string][]byte{revocationsKey: data}}
		importSecret(authority, NewIdentityRevocations(), s, log)
		b := authority.Bundle().Identity()
		if _, ok := b.Revoked["1234"]; !ok {
			t.Fatal("an import removed a revocation")
		}
		for serial := range b.Revoked {
			if serial == "" || serial[0] == '0' {
				t.Fatalf("malformed serial %q imported", serial)
			}
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
