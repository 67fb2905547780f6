package kube

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/meshauth/meshauth/internal/ca"
	"github.com/meshauth/meshauth/internal/identity"
	"github.com/meshauth/meshauth/internal/kube/kubetest"
)

// TestRevocationLineageAcrossReplicas (issue 11, finding 2): against a real
// kube-apiserver, a certificate replica a signed is renewed at replica b
// (which has no record of it). When a revokes the serial, b's lineage scan
// revokes the renewal too, and the lineage-expanded set is what reaches
// the shared store (Secret meshauth-ca-store) and a's bundle.
func TestRevocationLineageAcrossReplicas(t *testing.T) {
	env := kubetest.Need(t)
	cs := env.Clientset(t)
	ctx := context.Background()
	system := createNamespace(t, cs, "istio-system", nil)
	ns := createNamespace(t, cs, "lineage", nil)
	installCRDs(t, env)
	start := func(id string) *testReplica { return startCAReplica(t, env, system, ns, id) }
	a, b := start("a"), start("b")
	id := identity.MustParse("spiffe://cluster.local/ns/" + ns + "/sa/web")
	p, err := a.srv.CA().Sign(ctx, ca.Caller{ID: id, Method: "k8s_token", Subject: "uid"}, csrFor(t, ""), 0)
	if err != nil {
		t.Fatal(err)
	}
	chain, err := identity.ParseCertsPEM([]byte(strings.Join(p.ChainPEM, "")))
	if err != nil {
		t.Fatal(err)
	}
	caller, err := ca.Authenticate(ctx, ca.Credentials{PeerCertificates: chain}, b.srv.CA().MTLSAuthenticator())
	if err != nil {
		t.Fatalf("renewal at the other replica: %v", err)
	}
	if _, err := b.srv.CA().Sign(ctx, caller, csrFor(t, ""), 48*time.Hour); ca.ReasonOf(err) != ca.ReasonTTL {
		t.Fatalf("renewal at the other replica above the 24h lineage: %v", err)
	}
	child, err := b.srv.CA().Sign(ctx, caller, csrFor(t, ""), 0)
	if err != nil {
		t.Fatal(err)
	}

	if _, _, err := a.srv.CA().Revoke(p.Serial, "", "key compromise"); err != nil {
		t.Fatal(err)
	}
	inSecret := func(serial string) bool { return storeSerials(t, cs, system)[serial] }
	kubetest.WaitFor(t, 30*time.Second, "the renewal b signed revoked on both replicas and in the Secret", func() (bool, error) {
		return b.srv.CA().Bundle().Identity().IsRevoked(child.Serial) && a.srv.CA().Bundle().Identity().IsRevoked(child.Serial) && inSecret(child.Serial), nil
	})
}
