package adversarial

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/meshauth/meshauth/internal/ca"
	"github.com/meshauth/meshauth/internal/identity"
	"github.com/meshauth/meshauth/internal/kube"
	"github.com/meshauth/meshauth/internal/kube/kubetest"
)

// Issue #12, item 3: on Kubernetes the CA replicas shared revocations
// through a side channel (the meshauth-revocations Secret, imported by each
// replica when its watch delivered it), so a certificate whose revocation
// had returned on replica a could still be renewed at replica b until b's
// import ran: the thief got a fresh certificate after the operator was
// told the serial was revoked.
//
// Here the thief renews the stolen certificate at b right after the
// operator's revoke returned at a. No watch runs in b, so b has heard of
// the revocation through nothing but the store it shares with a (a real
// kube-apiserver). The CA must refuse, and the renewal b made from the
// same certificate before the revocation must end up revoked too.
func TestRevokedAtOneReplicaRenewedAtAnother(t *testing.T) {
	env := kubetest.Need(t)
	cs := env.Clientset(t)
	ctx := context.Background()
	nsObj, err := cs.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{GenerateName: "adv-replicas-"}}, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	ns := nsObj.Name
	replica := func() (*ca.CA, *kube.SecretStore) {
		backend, _, err := kube.NewCABackend(ctx, cs, ns, "cluster.local", time.Now(), nil)
		if err != nil {
			t.Fatal(err)
		}
		dir := t.TempDir()
		st, err := kube.OpenCAStore(ctx, cs, ns, dir, nil)
		if err != nil {
			t.Fatal(err)
		}
		c, err := ca.New(ca.Config{Dir: dir, Backend: backend, Store: st})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close() })
		return c, st
	}
	a, aStore := replica()
	b, _ := replica()
	csr := func() []byte {
		key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		if err != nil {
			t.Fatal(err)
		}
		der, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{}, key)
		if err != nil {
			t.Fatal(err)
		}
		return der
	}
	web := identity.MustParse("spiffe://cluster.local/ns/" + ns + "/sa/web")
	stolen, err := a.Sign(ctx, ca.Caller{ID: web, Method: "k8s_token", Subject: "uid"}, csr(), 0)
	if err != nil {
		t.Fatal(err)
	}
	chain, err := identity.ParseCertsPEM([]byte(strings.Join(stolen.ChainPEM, "")))
	if err != nil {
		t.Fatal(err)
	}
	renewAtB := func() (*ca.Issued, error) {
		caller, err := ca.Authenticate(ctx, ca.Credentials{PeerCertificates: chain}, b.MTLSAuthenticator())
		if err != nil {
			return nil, err
		}
		return b.Sign(ctx, caller, csr(), 0)
	}
	early, err := renewAtB()
	if err != nil {
		t.Fatalf("positive control: renewal at b before the revocation: %v", err)
	}
	if _, _, err := a.Revoke(stolen.Serial, "", "key.pem copied"); err != nil {
		t.Fatal(err)
	}
	if late, err := renewAtB(); err == nil {
		t.Fatalf("replica b renewed serial %s (new serial %s) after its revocation returned at replica a", stolen.Serial, late.Serial)
	} else if ca.ReasonOf(err) != ca.ReasonCallerCert {
		t.Fatalf("renewal at b after the revocation: %v, want %s", err, ca.ReasonCallerCert)
	}
	// What a's watch does when the store changes.
	if err := aStore.Sync(ctx); err != nil {
		t.Fatal(err)
	}
	if err := a.Refresh(); err != nil {
		t.Fatal(err)
	}
	if !a.Bundle().Identity().IsRevoked(early.Serial) {
		t.Fatalf("the renewal b made before the revocation (%s) is not revoked in a's bundle", early.Serial)
	}
}
