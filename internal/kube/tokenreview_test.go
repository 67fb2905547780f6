package kube

import (
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"net/url"
	"strings"
	"testing"
	"time"

	authnv1 "k8s.io/api/authentication/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"

	"github.com/meshauth/meshauth/internal/ca"
	"github.com/meshauth/meshauth/internal/identity"
	"github.com/meshauth/meshauth/internal/kube/kubetest"
)

// requestToken asks the API server for a token of ns/sa bound to audience.
func requestToken(t *testing.T, cs kubernetes.Interface, ns, sa, audience string) string {
	t.Helper()
	exp := int64(600)
	tr, err := cs.CoreV1().ServiceAccounts(ns).CreateToken(context.Background(), sa, &authnv1.TokenRequest{
		Spec: authnv1.TokenRequestSpec{Audiences: []string{audience}, ExpirationSeconds: &exp},
	}, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	return tr.Status.Token
}

// mintToken signs a ServiceAccount JWT with the API server's own signing
// key, as the API server would, but with whatever expiry the test wants:
// TokenRequest refuses to make a token that is already expired.
func mintToken(t *testing.T, env *kubetest.Env, sa *corev1.ServiceAccount, audience string, exp time.Time) string {
	t.Helper()
	enc := func(v any) string {
		b, err := json.Marshal(v)
		if err != nil {
			t.Fatal(err)
		}
		return base64.RawURLEncoding.EncodeToString(b)
	}
	claims := map[string]any{
		"iss": env.Issuer,
		"sub": "system:serviceaccount:" + sa.Namespace + ":" + sa.Name,
		"aud": []string{audience},
		"iat": exp.Add(-2 * time.Hour).Unix(),
		"nbf": exp.Add(-2 * time.Hour).Unix(),
		"exp": exp.Unix(),
		"kubernetes.io": map[string]any{
			"namespace":      sa.Namespace,
			"serviceaccount": map[string]any{"name": sa.Name, "uid": string(sa.UID)},
		},
	}
	signing := enc(map[string]string{"alg": "RS256", "typ": "JWT"}) + "." + enc(claims)
	sum := sha256.Sum256([]byte(signing))
	sig, err := rsa.SignPKCS1v15(rand.Reader, env.SigningKey, crypto.SHA256, sum[:])
	if err != nil {
		t.Fatal(err)
	}
	return signing + "." + base64.RawURLEncoding.EncodeToString(sig)
}

func csrFor(t testing.TB, uri string) []byte {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.CertificateRequest{}
	if uri != "" {
		u, err := url.Parse(uri)
		if err != nil {
			t.Fatal(err)
		}
		tmpl.URIs = []*url.URL{u}
	}
	der, err := x509.CreateCertificateRequest(rand.Reader, tmpl, key)
	if err != nil {
		t.Fatal(err)
	}
	return der
}

// TestTokenReviewCSR is CSR mode end to end at the CA: a sidecar presents
// its ServiceAccount token, the real API server reviews it, and the real CA
// signs only that account's identity.
func TestTokenReviewCSR(t *testing.T) {
	env := kubetest.Need(t)
	cs := env.Clientset(t)
	ctx := context.Background()
	ns := createNamespace(t, cs, "csr", nil)
	var sleep *corev1.ServiceAccount
	for _, name := range []string{"sleep", "httpbin"} {
		sa, err := cs.CoreV1().ServiceAccounts(ns).Create(ctx, &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Name: name}}, metav1.CreateOptions{})
		if err != nil {
			t.Fatal(err)
		}
		if name == "sleep" {
			sleep = sa
		}
	}
	authority, err := ca.New(ca.Config{Dir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	defer authority.Close()
	reviewer, err := NewTokenReviewAuthenticator(TokenReviewConfig{Client: cs})
	if err != nil {
		t.Fatal(err)
	}
	auths := []ca.Authenticator{authority.JoinTokenAuthenticator(), reviewer, authority.MTLSAuthenticator()}
	sleepID := "spiffe://cluster.local/ns/" + ns + "/sa/sleep"
	httpbinID := "spiffe://cluster.local/ns/" + ns + "/sa/httpbin"

	// sign is what the CA's gRPC handler does with a CreateCertificate call.
	sign := func(token string, csr []byte) (*ca.Issued, error) {
		caller, err := ca.Authenticate(ctx, ca.Credentials{BearerToken: token}, auths...)
		if err != nil {
			return nil, err
		}
		return authority.Sign(ctx, caller, csr, time.Hour)
	}

	good := requestToken(t, cs, ns, "sleep", TokenAudience)
	for _, tc := range []struct {
		name   string
		token  string
		csrURI string
		wantID string // "" = refused
		reason string
	}{
		{"own account, CA fills the SAN", good, "", sleepID, ""},
		{"own account, SAN in the CSR", good, sleepID, sleepID, ""},
		{"another account", good, httpbinID, "", ca.ReasonIdentityMismatch},
		{"wrong audience", requestToken(t, cs, ns, "sleep", "https://kubernetes.default.svc"), "", "", ReasonTokenRejected},
		{"expired", mintToken(t, env, sleep, TokenAudience, time.Now().Add(-time.Hour)), "", "", ReasonTokenRejected},
		// The same minting code with a live expiry is accepted, so the
		// expired case fails for its expiry and nothing else.
		{"minted, not expired", mintToken(t, env, sleep, TokenAudience, time.Now().Add(time.Hour)), "", sleepID, ""},
		{"forged signature", mintTokenWithKey(t, env, sleep), "", "", ReasonTokenRejected},
	} {
		t.Run(tc.name, func(t *testing.T) {
			iss, err := sign(tc.token, csrFor(t, tc.csrURI))
			if tc.wantID == "" {
				if err == nil {
					t.Fatalf("signed %s; want refusal %s", iss.ID, tc.reason)
				}
				if got := ca.ReasonOf(err); got != tc.reason {
					t.Fatalf("refused with %s (%v), want %s", got, err, tc.reason)
				}
				t.Logf("refused as expected: %v", err)
				return
			}
			if err != nil {
				t.Fatalf("refused: %v", err)
			}
			certs, err := identity.ParseCertsPEM([]byte(strings.Join(iss.ChainPEM, "")))
			if err != nil {
				t.Fatal(err)
			}
			id, err := authority.Bundle().Identity().Verify(certs, time.Now())
			if err != nil || id.String() != tc.wantID {
				t.Fatalf("certificate identity %s (%v), want %s", id, err, tc.wantID)
			}
		})
	}

	t.Run("deleted service account", func(t *testing.T) {
		tok := requestToken(t, cs, ns, "httpbin", TokenAudience)
		if _, err := sign(tok, csrFor(t, "")); err != nil {
			t.Fatalf("live account refused: %v", err)
		}
		if err := cs.CoreV1().ServiceAccounts(ns).Delete(ctx, "httpbin", metav1.DeleteOptions{}); err != nil {
			t.Fatal(err)
		}
		// Bound tokens die with their account; the API server may serve the
		// deletion from its token cache for about 10 seconds.
		kubetest.WaitFor(t, 30*time.Second, "token of deleted account to be refused", func() (bool, error) {
			_, err := sign(tok, csrFor(t, ""))
			return ca.ReasonOf(err) == ReasonTokenRejected, err
		})
	})

	t.Run("join tokens are not sent to the API server", func(t *testing.T) {
		if _, err := reviewer.Authenticate(ctx, ca.Credentials{BearerToken: "mjt_notajwt"}); err != ca.ErrNoCredential {
			t.Fatalf("err = %v, want ErrNoCredential", err)
		}
	})
}

// mintTokenWithKey signs a token with a key the API server does not know.
func mintTokenWithKey(t *testing.T, env *kubetest.Env, sa *corev1.ServiceAccount) string {
	t.Helper()
	other, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		t.Fatal(err)
	}
	forged := *env
	forged.SigningKey = other
	return mintToken(t, &forged, sa, TokenAudience, time.Now().Add(time.Hour))
}
