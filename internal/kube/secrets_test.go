package kube

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"sync"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"

	"github.com/meshauth/meshauth/internal/ca"
	"github.com/meshauth/meshauth/internal/identity"
	"github.com/meshauth/meshauth/internal/kube/kubetest"
)

// fakeClock is a settable clock shared by the CA and the controller, so a
// test moves time forward instead of waiting for certificates to age.
type fakeClock struct {
	mu  sync.Mutex
	now time.Time
}

func (c *fakeClock) Now() time.Time { c.mu.Lock(); defer c.mu.Unlock(); return c.now }
func (c *fakeClock) Add(d time.Duration) {
	c.mu.Lock()
	c.now = c.now.Add(d)
	c.mu.Unlock()
}

// newKubeCA loads (creating on first use) the root from istio-ca-secret in
// caNS and opens a real CA that signs with it, holding the key in memory.
func newKubeCA(t *testing.T, cs kubernetes.Interface, caNS string, clock *fakeClock) *ca.CA {
	t.Helper()
	dir := t.TempDir()
	backend, src, err := NewCABackend(context.Background(), cs, caNS, "cluster.local", clock.Now(), discardLog())
	if err != nil {
		t.Fatal(err)
	}
	if src != RootSelfSigned {
		t.Fatalf("root source = %s, want %s", src, RootSelfSigned)
	}
	authority, err := ca.New(ca.Config{Dir: dir, Backend: backend, Clock: clock.Now})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { authority.Close() })
	return authority
}

func TestSecretController(t *testing.T) {
	env := kubetest.Need(t)
	cs := env.Clientset(t)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	clock := &fakeClock{now: time.Now()}
	caNS := createNamespace(t, cs, "istio-system", nil)
	authority := newKubeCA(t, cs, caNS, clock)
	ns := createNamespace(t, cs, "secrets", nil)

	ctrl, err := NewSecretController(SecretControllerConfig{
		Client: cs, CA: authority, Namespaces: []string{ns},
		ResyncPeriod: 200 * time.Millisecond, Clock: clock.Now,
	})
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- ctrl.Run(ctx) }()
	defer func() { cancel(); <-done }()

	secrets := cs.CoreV1().Secrets(ns)
	getSecret := func(name string) func() (bool, error) {
		return func() (bool, error) {
			_, err := secrets.Get(ctx, name, metav1.GetOptions{})
			return err == nil, err
		}
	}

	if _, err := cs.CoreV1().ServiceAccounts(ns).Create(ctx, &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Name: "httpbin"}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	var first *corev1.Secret
	t.Run("created with the service account", func(t *testing.T) {
		kubetest.WaitFor(t, 20*time.Second, "Secret istio.httpbin", getSecret("istio.httpbin"))
		first, _ = secrets.Get(ctx, "istio.httpbin", metav1.GetOptions{})
		checkWorkloadSecret(t, first, authority, "spiffe://cluster.local/ns/"+ns+"/sa/httpbin", clock.Now())
	})
	if first == nil {
		t.FailNow()
	}

	t.Run("re-created when deleted", func(t *testing.T) {
		if err := secrets.Delete(ctx, "istio.httpbin", metav1.DeleteOptions{}); err != nil {
			t.Fatal(err)
		}
		kubetest.WaitFor(t, 20*time.Second, "Secret istio.httpbin to come back", func() (bool, error) {
			s, err := secrets.Get(ctx, "istio.httpbin", metav1.GetOptions{})
			return err == nil && s.UID != first.UID, err
		})
		s, _ := secrets.Get(ctx, "istio.httpbin", metav1.GetOptions{})
		checkWorkloadSecret(t, s, authority, "spiffe://cluster.local/ns/"+ns+"/sa/httpbin", clock.Now())
		first = s
	})

	t.Run("re-issued inside the grace period", func(t *testing.T) {
		before := leafOf(t, first)
		// Default TTL 90 days, ratio 0.5: re-issue once under 45 days remain.
		// 44 days on, nothing changes...
		clock.Add(44 * 24 * time.Hour)
		time.Sleep(time.Second) // several resyncs (200ms) see the new time
		s, _ := secrets.Get(ctx, "istio.httpbin", metav1.GetOptions{})
		if got := leafOf(t, s); !got.Equal(before) {
			t.Fatalf("certificate re-issued with %s left, over half its life", got.NotAfter.Sub(clock.Now()))
		}
		// ...two days more and the resync re-issues it.
		clock.Add(2 * 24 * time.Hour)
		kubetest.WaitFor(t, 20*time.Second, "certificate to be re-issued", func() (bool, error) {
			s, err := secrets.Get(ctx, "istio.httpbin", metav1.GetOptions{})
			return err == nil && !leafOf(t, s).Equal(before), err
		})
		s, _ = secrets.Get(ctx, "istio.httpbin", metav1.GetOptions{})
		checkWorkloadSecret(t, s, authority, "spiffe://cluster.local/ns/"+ns+"/sa/httpbin", clock.Now())
		if got := leafOf(t, s); got.NotAfter.Before(clock.Now().Add(89 * 24 * time.Hour)) {
			t.Errorf("new certificate expires %s, want ~90 days from the (fake) now %s", got.NotAfter, clock.Now())
		}
	})

	t.Run("re-issued when root-cert.pem is not the CA's root", func(t *testing.T) {
		s, _ := secrets.Get(ctx, "istio.httpbin", metav1.GetOptions{})
		before := leafOf(t, s)
		_, otherCert, err := kubetest.SelfSignedCA("some other root")
		if err != nil {
			t.Fatal(err)
		}
		s.Data[RootCertKey] = kubetest.CAPEM(otherCert)
		if _, err := secrets.Update(ctx, s, metav1.UpdateOptions{}); err != nil {
			t.Fatal(err)
		}
		kubetest.WaitFor(t, 20*time.Second, "secret to be repaired", func() (bool, error) {
			s, err := secrets.Get(ctx, "istio.httpbin", metav1.GetOptions{})
			return err == nil && !leafOf(t, s).Equal(before), err
		})
		s, _ = secrets.Get(ctx, "istio.httpbin", metav1.GetOptions{})
		checkWorkloadSecret(t, s, authority, "spiffe://cluster.local/ns/"+ns+"/sa/httpbin", clock.Now())
	})

	t.Run("deleted with the service account", func(t *testing.T) {
		if err := cs.CoreV1().ServiceAccounts(ns).Delete(ctx, "httpbin", metav1.DeleteOptions{}); err != nil {
			t.Fatal(err)
		}
		kubetest.WaitFor(t, 20*time.Second, "Secret istio.httpbin to be deleted", func() (bool, error) {
			_, err := secrets.Get(ctx, "istio.httpbin", metav1.GetOptions{})
			return apierrors.IsNotFound(err), err
		})
	})

	t.Run("root persists in istio-ca-secret", func(t *testing.T) {
		// A second control plane (a restart) loads the same root.
		again := newKubeCA(t, cs, caNS, clock)
		if a, b := authority.Bundle().RootsPEM, again.Bundle().RootsPEM; len(a) != 1 || len(b) != 1 || a[0] != b[0] {
			t.Fatalf("restarted CA has a different root")
		}
		s, err := cs.CoreV1().Secrets(caNS).Get(ctx, CASecret, metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(s.Data[CACertKey], []byte(authority.Bundle().RootsPEM[0])) {
			t.Error("istio-ca-secret ca-cert.pem is not the CA's root")
		}
	})
}

// checkWorkloadSecret checks everything the seed's kubectl/openssl commands
// look at: type, annotation, the three files, the SAN, validity, the key
// pairing and the chain to root-cert.pem.
func checkWorkloadSecret(t *testing.T, s *corev1.Secret, authority *ca.CA, wantID string, now time.Time) {
	t.Helper()
	if s.Type != SecretType {
		t.Errorf("type = %q, want %q", s.Type, SecretType)
	}
	if got := s.Annotations[AnnotationServiceAccount]; got != s.Name[len(SecretPrefix):] {
		t.Errorf("annotation %s = %q", AnnotationServiceAccount, got)
	}
	if _, err := tls.X509KeyPair(s.Data[CertChainKey], s.Data[KeyKey]); err != nil {
		t.Errorf("cert-chain.pem and key.pem are not a pair: %v", err)
	}
	if !bytes.Equal(s.Data[RootCertKey], []byte(authority.Bundle().RootsPEM[0])) {
		t.Error("root-cert.pem is not the CA's root")
	}
	certs, err := identity.ParseCertsPEM(s.Data[CertChainKey])
	if err != nil {
		t.Fatal(err)
	}
	id, err := authority.Bundle().Identity().Verify(certs, now)
	if err != nil {
		t.Fatalf("chain does not verify against root-cert.pem: %v", err)
	}
	if id.String() != wantID {
		t.Errorf("SAN = %s, want %s", id, wantID)
	}
	if len(certs[0].URIs) != 1 || len(certs[0].DNSNames) != 0 {
		t.Errorf("want exactly one URI SAN and no DNS names, got %v %v", certs[0].URIs, certs[0].DNSNames)
	}
}

func leafOf(t *testing.T, s *corev1.Secret) *x509.Certificate {
	t.Helper()
	certs, err := identity.ParseCertsPEM(s.Data[CertChainKey])
	if err != nil {
		t.Fatal(err)
	}
	return certs[0]
}

func TestNeedsRenewal(t *testing.T) {
	t0 := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	for _, tc := range []struct {
		name     string
		life     time.Duration
		elapsed  time.Duration
		minGrace time.Duration
		want     bool
	}{
		{"fresh 90d", 90 * 24 * time.Hour, 0, 10 * time.Minute, false},
		{"44d of 90d", 90 * 24 * time.Hour, 44 * 24 * time.Hour, 10 * time.Minute, false},
		{"exactly half", 90 * 24 * time.Hour, 45 * 24 * time.Hour, 10 * time.Minute, true},
		{"46d of 90d", 90 * 24 * time.Hour, 46 * 24 * time.Hour, 10 * time.Minute, true},
		{"expired", time.Hour, 2 * time.Hour, 10 * time.Minute, true},
		// 0.5 × 15m = 7.5m < 10m minimum: renew once under 10m remain.
		{"15m cert at 4m", 15 * time.Minute, 4 * time.Minute, 10 * time.Minute, false},
		{"15m cert at 6m", 15 * time.Minute, 6 * time.Minute, 10 * time.Minute, true},
		// A certificate shorter than the minimum grace is always due.
		{"5m cert", 5 * time.Minute, 0, 10 * time.Minute, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := NeedsRenewal(t0, t0.Add(tc.life), t0.Add(tc.elapsed), 0.5, tc.minGrace); got != tc.want {
				t.Errorf("NeedsRenewal = %v, want %v", got, tc.want)
			}
		})
	}
}
