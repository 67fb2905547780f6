package kube

import (
	"bytes"
	"context"
	"crypto/x509"
	"encoding/pem"
	"os"
	"path/filepath"
	"testing"
	"time"

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
	backend, src, err := NewCABackend(ctx, cs, ns, "cluster.local", time.Now())
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
