package adversarial

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"encoding/base64"
	"encoding/json"
	"encoding/pem"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	jose "github.com/go-jose/go-jose/v4"
	"github.com/go-jose/go-jose/v4/jwt"
)

// TestEndUserJWT runs end-user authentication through a real sidecar: the
// issuer's JWKS is served over TLS on loopback (the sidecar trusts its
// certificate through SSL_CERT_FILE), tokens are signed in the test. A
// valid token reaches the app with its claims in sec-istio-auth-userinfo
// (a forged one is dropped), RBAC reads request.auth.claims, an expired
// token or one signed with a key the issuer removed gets 401, and a key
// the issuer rotated in is fetched.
func TestEndUserJWT(t *testing.T) {
	newKey := func(kid string) jose.JSONWebKey {
		k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		if err != nil {
			t.Fatal(err)
		}
		return jose.JSONWebKey{Key: k, KeyID: kid, Algorithm: string(jose.ES256), Use: "sig"}
	}
	var mu sync.Mutex
	k1, k2 := newKey("k1"), newKey("k2")
	current := k1
	srv := serveJWKS(t, func() jose.JSONWebKey {
		mu.Lock()
		defer mu.Unlock()
		return current
	})

	policy := jwtPolicy(srv.URL+"/jwks", "[httpbin]") + `---
apiVersion: rbac.istio.io/v1alpha1
kind: RbacConfig
metadata: {name: default}
spec: {mode: "ON"}
---
apiVersion: rbac.istio.io/v1alpha1
kind: ServiceRole
metadata: {name: admins, namespace: default}
spec:
  rules: [{services: ["*"], methods: ["GET"]}]
---
apiVersion: rbac.istio.io/v1alpha1
kind: ServiceRoleBinding
metadata: {name: admins, namespace: default}
spec:
  subjects: [{properties: {"request.auth.claims[groups]": admin, "request.auth.principal": "https://issuer.example/*"}}]
  roleRef: {kind: ServiceRole, name: admins}
`
	m := startMesh(t, meshOptions{Config: map[string]string{"jwt.yaml": policy}})
	now := time.Now()
	token := func(k jose.JSONWebKey, groups []string, exp time.Time) string {
		s, err := jose.NewSigner(jose.SigningKey{Algorithm: jose.ES256, Key: k}, (&jose.SignerOptions{}).WithHeader("kid", k.KeyID))
		if err != nil {
			t.Fatal(err)
		}
		raw, err := jwt.Signed(s).Claims(struct {
			jwt.Claims
			Groups []string `json:"groups"`
		}{jwt.Claims{Issuer: "https://issuer.example", Subject: "alice", Audience: jwt.Audience{"httpbin"},
			Expiry: jwt.NewNumericDate(exp), IssuedAt: jwt.NewNumericDate(now.Add(-time.Minute))}, groups}).Serialize()
		if err != nil {
			t.Fatal(err)
		}
		return raw
	}
	get := func(tok string) (int, string) {
		body, stderr, code := curl(t, "-i", "-H", "Authorization: Bearer "+tok, "-H", "Sec-Istio-Auth-Userinfo: "+forgedUserinfo,
			"http://"+m.Httpbin.InboundAddr+"/headers")
		if code != 0 {
			t.Fatalf("curl: exit %d: %s", code, stderr)
		}
		return statusOf(body), body
	}

	status, body := get(token(k1, []string{"dev", "admin"}, now.Add(time.Hour)))
	if status != 200 {
		t.Fatalf("valid token: want 200, got:\n%s", body)
	}
	seen := userinfoSeen(parseAppSaw(t, body))
	if len(seen) != 1 || seen[0] == forgedUserinfo {
		t.Fatalf("app saw sec-istio-auth-userinfo %q; want only the sidecar's", seen)
	}
	claims, err := base64.RawURLEncoding.DecodeString(seen[0])
	if err != nil || !strings.Contains(string(claims), `"sub":"alice"`) || !strings.Contains(string(claims), `"admin"`) {
		t.Fatalf("userinfo = %s (%v), want the verified claims", claims, err)
	}

	if status, body := get(token(k1, []string{"dev"}, now.Add(time.Hour))); status != 403 {
		t.Errorf("valid token without the admin group: want 403 (RBAC), got:\n%s", body)
	}
	if status, body := get(token(k1, []string{"admin"}, now.Add(-time.Hour))); status != 401 || !strings.Contains(body, "token expired") {
		t.Errorf("expired token: want 401 token expired, got:\n%s", body)
	}

	// The issuer rotates its key. A token with the new key makes the
	// sidecar fetch the keys again (at most every few seconds: retry).
	mu.Lock()
	current = k2
	mu.Unlock()
	deadline := time.Now().Add(30 * time.Second)
	for {
		status, body = get(token(k2, []string{"admin"}, now.Add(time.Hour)))
		if status == 200 {
			break
		}
		if status != 401 || time.Now().After(deadline) {
			t.Fatalf("token signed with the rotated key: want 200, got:\n%s", body)
		}
		time.Sleep(500 * time.Millisecond)
	}
	if status, body := get(token(k1, []string{"admin"}, now.Add(time.Hour))); status != 401 {
		t.Errorf("token signed with the removed key: want 401, got:\n%s", body)
	}
}

// serveJWKS serves key()'s public half as a JWKS over TLS on loopback and
// makes the sidecars the test starts trust its certificate (SSL_CERT_FILE,
// inherited by the sidecars). The server closes at the test's end.
func serveJWKS(t *testing.T, key func() jose.JSONWebKey) *httptest.Server {
	t.Helper()
	return serveIssuer(t, func(w http.ResponseWriter, r *http.Request) {
		k := key()
		_ = json.NewEncoder(w).Encode(jose.JSONWebKeySet{Keys: []jose.JSONWebKey{k.Public()}})
	})
}

// serveIssuer serves h over TLS on loopback, trusted by the sidecars the
// test starts (see serveJWKS).
func serveIssuer(t *testing.T, h http.HandlerFunc) *httptest.Server {
	t.Helper()
	srv := httptest.NewTLSServer(h)
	t.Cleanup(srv.Close)
	caFile := filepath.Join(t.TempDir(), "jwks-ca.pem")
	if err := os.WriteFile(caFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: srv.Certificate().Raw}), 0o644); err != nil {
		t.Fatal(err)
	}
	t.Setenv("SSL_CERT_FILE", caFile)
	return srv
}

// TestJWKSOutageNotFetchedPerRequest: while an issuer's key endpoint is
// down, every request with a token is refused (401) — and the attacker,
// who sends them, must not make the sidecar fetch the keys once per
// request (hammering the issuer, and queueing requests behind a fetch
// that can take 10 s). At most one fetch per 5 s (MinRefetch).
func TestJWKSOutageNotFetchedPerRequest(t *testing.T) {
	var fetches atomic.Int32
	srv := serveIssuer(t, func(w http.ResponseWriter, r *http.Request) {
		fetches.Add(1)
		http.Error(w, "down", http.StatusServiceUnavailable)
	})
	policy := jwtPolicy(srv.URL+"/jwks", "[]")
	m := startMesh(t, meshOptions{Config: map[string]string{"jwt.yaml": policy}})
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	s, err := jose.NewSigner(jose.SigningKey{Algorithm: jose.ES256, Key: k}, (&jose.SignerOptions{}).WithHeader("kid", "k1"))
	if err != nil {
		t.Fatal(err)
	}
	tok, err := jwt.Signed(s).Claims(jwt.Claims{Issuer: "https://issuer.example", Subject: "alice", Expiry: jwt.NewNumericDate(time.Now().Add(time.Hour))}).Serialize()
	if err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	for i := range 30 {
		body, stderr, code := curl(t, "-i", "-H", "Authorization: Bearer "+tok, "http://"+m.Httpbin.InboundAddr+"/headers")
		if code != 0 {
			t.Fatalf("curl: exit %d: %s", code, stderr)
		}
		if st := statusOf(body); st != 401 {
			t.Fatalf("request %d while the issuer's keys are unavailable: want 401, got:\n%s", i, body)
		}
	}
	allowed := 1 + int32(time.Since(start)/(5*time.Second))
	if n := fetches.Load(); n < 1 || n > allowed {
		t.Fatalf("30 requests in %v made %d key fetches, want 1..%d", time.Since(start).Round(time.Millisecond), n, allowed)
	}
}

// jwtPolicy is a Policy on httpbin that takes end-user JWTs of
// https://issuer.example with keys from jwksURI and the audiences given
// (a YAML list).
func jwtPolicy(jwksURI, audiences string) string {
	return `apiVersion: authentication.istio.io/v1alpha1
kind: Policy
metadata: {name: httpbin-jwt, namespace: default}
spec:
  targets: [{name: httpbin}]
  peers: [{mtls: {mode: PERMISSIVE}}]
  origins:
  - jwt:
      issuer: https://issuer.example
      audiences: ` + audiences + `
      jwksUri: ` + jwksURI + `
  principalBinding: USE_ORIGIN
`
}
