package kube

import (
	"context"
	"crypto/tls"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"

	"github.com/meshauth/meshauth/internal/agent"
	"github.com/meshauth/meshauth/internal/ca"
	"github.com/meshauth/meshauth/internal/client"
	"github.com/meshauth/meshauth/internal/control"
	"github.com/meshauth/meshauth/internal/identity"
	"github.com/meshauth/meshauth/internal/kube/kubetest"
	"github.com/meshauth/meshauth/internal/sidecar"
)

// TestAgentCSRModeAfterRevocation is the Kubernetes way back for a revoked
// sidecar (CSR mode): the agent's --token-file is the projected
// ServiceAccount token, which is not single-use, so when the CA revokes the
// sidecar's serial the agent gets a new certificate with that token by
// itself. The file is read again on every use, as kubelet rotates it: a
// token file that no longer holds a valid token is refused (readiness
// fails), and a fresh token in it brings the sidecar back. Real API server
// (TokenReview), real control plane, real agent.
func TestAgentCSRModeAfterRevocation(t *testing.T) {
	env := kubetest.Need(t)
	cs := env.Clientset(t)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	ns := createNamespace(t, cs, "agentcsr", nil)
	sa, err := cs.CoreV1().ServiceAccounts(ns).Create(ctx, &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Name: "sleep"}}, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	reviewer, err := NewTokenReviewAuthenticator(TokenReviewConfig{Client: cs, Log: slog.New(slog.DiscardHandler)})
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	srv, err := control.New(control.Config{Dir: dir, Listen: "127.0.0.1:0", Authenticators: []ca.Authenticator{reviewer}, Log: slog.New(slog.DiscardHandler)})
	if err != nil {
		t.Fatal(err)
	}
	sctx, scancel := context.WithCancel(ctx)
	served := make(chan error, 1)
	go func() { served <- srv.Serve(sctx) }()
	defer func() { scancel(); <-served }()
	for srv.Addr() == "" {
		time.Sleep(5 * time.Millisecond)
	}

	store, tokenFile := startCSRAgent(t, ctx, cs, ns, "sleep", dir, srv.Addr())
	writeSAToken := func() {
		if err := os.WriteFile(tokenFile, []byte(requestToken(t, cs, ns, "sleep", TokenAudience)), 0o600); err != nil {
			t.Fatal(err)
		}
	}

	wait := func(what string, cond func() bool) {
		t.Helper()
		kubetest.WaitFor(t, 30*time.Second, what, func() (bool, error) { return cond(), nil })
	}
	wait("first certificate with the ServiceAccount token", func() bool { return store.SVID() != nil })
	// The bundle stream must be up to hear of the revocation.
	wait("trust bundle", func() bool { return store.Bundle() != nil && store.Bundle().Version > 0 })

	revoke := func() string {
		t.Helper()
		serial := store.SVID().Serial()
		if _, _, err := srv.CA().Revoke(serial, "", "test"); err != nil {
			t.Fatal(err)
		}
		return serial
	}
	first := revoke()
	wait("a new certificate after the revocation, with the same ServiceAccount token", func() bool {
		return store.SVID().Serial() != first && store.Health() == nil
	})

	// kubelet's rotation, seen as the file changing: a token that is no
	// longer good is refused, and the sidecar says so.
	if err := os.WriteFile(tokenFile, []byte(mintToken(t, env, sa, TokenAudience, time.Now().Add(-time.Minute))), 0o600); err != nil {
		t.Fatal(err)
	}
	second := revoke()
	wait("readiness to fail with the token refused", func() bool {
		err := store.Health()
		return err != nil && strings.Contains(err.Error(), "refused a new certificate")
	})
	t.Logf("with an expired token in the file: %v", store.Health())
	writeSAToken()
	wait("a new certificate from the rotated token", func() bool {
		return store.SVID().Serial() != second && store.Health() == nil
	})
}

// startCSRAgent runs a CSR-mode agent for ServiceAccount sa of ns, with a
// token file holding a fresh ServiceAccount token (returned, for the test
// to rewrite), against the control plane at addr whose state directory
// (root-cert.pem) is dir; it stops with the test.
func startCSRAgent(t *testing.T, ctx context.Context, cs kubernetes.Interface, ns, sa, dir, addr string) (*agent.Store, string) {
	t.Helper()
	tokenFile := filepath.Join(t.TempDir(), "istio-token")
	if err := os.WriteFile(tokenFile, []byte(requestToken(t, cs, ns, sa, TokenAudience)), 0o600); err != nil {
		t.Fatal(err)
	}
	tokens, err := agent.NewTokenSource("", tokenFile)
	if err != nil {
		t.Fatal(err)
	}
	id := identity.MustParse("spiffe://cluster.local/ns/" + ns + "/sa/" + sa)
	roots, err := client.LoadRoots(dir, "")
	if err != nil {
		t.Fatal(err)
	}
	store := agent.NewStore(agent.StoreConfig{Want: id})
	connect := sidecar.GRPCCA{Dial: func(ctx context.Context, bootstrap bool) (*grpc.ClientConn, error) {
		o := client.Options{Dir: dir, Addr: addr, Roots: func() *identity.Bundle {
			if b := store.Bundle(); b != nil {
				return b
			}
			return roots
		}}
		if !bootstrap {
			o.GetClientCertificate = func(*tls.CertificateRequestInfo) (*tls.Certificate, error) {
				if s := store.SVID(); s != nil {
					return s.TLS, nil
				}
				return &tls.Certificate{}, nil
			}
		} else {
			tok, err := tokens.Token()
			if err != nil {
				return nil, err
			}
			o.Token = tok
		}
		return client.Dial(ctx, o)
	}}
	a, err := agent.New(agent.Config{
		ID: id, NoFiles: true, CA: connect, Store: store, Tokens: tokens, TokenPoll: 50 * time.Millisecond,
		MinRenewInterval: 100 * time.Millisecond, MinBackoff: 50 * time.Millisecond, MaxBackoff: 300 * time.Millisecond,
	})
	if err != nil {
		t.Fatal(err)
	}
	actx, acancel := context.WithCancel(ctx)
	adone := make(chan struct{})
	go func() { a.Run(actx); close(adone) }()
	t.Cleanup(func() { acancel(); <-adone })
	return store, tokenFile
}
