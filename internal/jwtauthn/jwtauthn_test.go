package jwtauthn

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"errors"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	jose "github.com/go-jose/go-jose/v4"
	"github.com/go-jose/go-jose/v4/jwt"
)

// jwks is an issuer's key endpoint over real TLS on loopback; its keys can
// be rotated and its fetches are counted.
type jwks struct {
	srv     *httptest.Server
	mu      sync.Mutex
	keys    []jose.JSONWebKey
	fetches atomic.Int32
}

func newJWKS(t testing.TB, keys ...jose.JSONWebKey) *jwks {
	j := &jwks{keys: keys}
	j.srv = httptest.NewTLSServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		j.fetches.Add(1)
		j.mu.Lock()
		defer j.mu.Unlock()
		var pub []jose.JSONWebKey
		for _, k := range j.keys {
			pub = append(pub, k.Public())
		}
		_ = json.NewEncoder(w).Encode(jose.JSONWebKeySet{Keys: pub})
	}))
	t.Cleanup(j.srv.Close)
	return j
}

func (j *jwks) set(keys ...jose.JSONWebKey) {
	j.mu.Lock()
	j.keys = keys
	j.mu.Unlock()
}

func (j *jwks) verifier(now time.Time) *Verifier {
	pool := x509.NewCertPool()
	pool.AddCert(j.srv.Certificate())
	v := New(pool)
	v.Now = func() time.Time { return now }
	return v
}

func newKey(t testing.TB, kid string) jose.JSONWebKey {
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	return jose.JSONWebKey{Key: k, KeyID: kid, Algorithm: string(jose.ES256), Use: "sig"}
}

func sign(t testing.TB, k jose.JSONWebKey, claims any) string {
	return signAlg(t, jose.ES256, k, claims)
}

type claims struct {
	jwt.Claims
	Groups []string `json:"groups,omitempty"`
}

func TestVerify(t *testing.T) {
	now := time.Date(2026, 12, 3, 12, 0, 0, 0, time.UTC)
	k1 := newKey(t, "k1")
	j := newJWKS(t, k1)
	rules := []Rule{{Issuer: "https://issuer.example", Audiences: []string{"bookstore"}, JwksURI: j.srv.URL + "/jwks"}}
	good := claims{Claims: jwt.Claims{Issuer: "https://issuer.example", Subject: "alice", Audience: jwt.Audience{"bookstore"},
		Expiry: jwt.NewNumericDate(now.Add(time.Hour)), NotBefore: jwt.NewNumericDate(now.Add(-time.Minute))}, Groups: []string{"dev"}}
	with := func(f func(c *claims)) claims { c := good; f(&c); return c }
	ctx := context.Background()

	v := j.verifier(now)
	res, err := v.Verify(ctx, sign(t, k1, good), rules)
	if err != nil {
		t.Fatalf("good token: %v", err)
	}
	if res.Principal != "https://issuer.example/alice" || res.Claims["groups"].([]any)[0] != "dev" || len(res.Audiences) != 1 {
		t.Errorf("result = %+v", res)
	}
	if p, err := base64.RawURLEncoding.DecodeString(res.Payload); err != nil || !strings.Contains(string(p), `"sub":"alice"`) {
		t.Errorf("payload %q: %s %v", res.Payload, p, err)
	}

	other := newKey(t, "k1") // same kid, another key: a forgery
	hs := func() string {
		// HS256 keyed with the issuer's public key (the classic confusion).
		pub, _ := x509.MarshalPKIXPublicKey(k1.Public().Key)
		s, _ := jose.NewSigner(jose.SigningKey{Algorithm: jose.HS256, Key: pub}, nil)
		raw, _ := jwt.Signed(s).Claims(good).Serialize()
		return raw
	}()
	none := func() string {
		h := base64.RawURLEncoding.EncodeToString([]byte(`{"alg":"none","typ":"JWT"}`))
		p, _ := json.Marshal(good)
		return h + "." + base64.RawURLEncoding.EncodeToString(p) + "."
	}()
	for _, tc := range []struct {
		name, token, reason string
	}{
		{"expired", sign(t, k1, with(func(c *claims) { c.Expiry = jwt.NewNumericDate(now.Add(-time.Hour)) })), "token expired"},
		{"not yet valid", sign(t, k1, with(func(c *claims) { c.NotBefore = jwt.NewNumericDate(now.Add(time.Hour)) })), "not valid before"},
		{"wrong issuer", sign(t, k1, with(func(c *claims) { c.Issuer = "https://evil.example" })), `issuer "https://evil.example" is not allowed`},
		{"wrong audience", sign(t, k1, with(func(c *claims) { c.Audience = jwt.Audience{"other"} })), "audience [other] is not one of [bookstore]"},
		{"alg none", none, "malformed or unsupported token"},
		{"hs256 with the public key", hs, "malformed or unsupported token"},
		{"forged signature", sign(t, other, good), "no key of issuer"},
		{"garbage", "not.a.jwt", "malformed or unsupported token"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := v.Verify(ctx, tc.token, rules)
			var e *Error
			if !errors.As(err, &e) || !strings.Contains(e.Reason, tc.reason) {
				t.Fatalf("Verify = %v, want an *Error containing %q", err, tc.reason)
			}
		})
	}
}

// TestKeyRotation: the issuer replaces its key; a token signed with the
// new key (new kid) makes the verifier fetch the key set again, and the
// old key stops working. Tokens naming unknown keys cannot make it fetch
// more than once per MinRefetch.
func TestKeyRotation(t *testing.T) {
	now := time.Date(2026, 12, 3, 12, 0, 0, 0, time.UTC)
	k1, k2 := newKey(t, "k1"), newKey(t, "k2")
	j := newJWKS(t, k1)
	rules := []Rule{{Issuer: "iss", JwksURI: j.srv.URL}}
	c := jwt.Claims{Issuer: "iss", Subject: "bob", Expiry: jwt.NewNumericDate(now.Add(time.Hour))}
	clock := now
	v := j.verifier(now)
	v.Now = func() time.Time { return clock }
	ctx := context.Background()
	if _, err := v.Verify(ctx, sign(t, k1, c), rules); err != nil {
		t.Fatal(err)
	}
	j.set(k2)
	clock = clock.Add(10 * time.Second) // past MinRefetch (5s)
	if _, err := v.Verify(ctx, sign(t, k2, c), rules); err != nil {
		t.Fatalf("token with the rotated key: %v", err)
	}
	if n := j.fetches.Load(); n != 2 {
		t.Errorf("fetches = %d, want 2", n)
	}
	if _, err := v.Verify(ctx, sign(t, k1, c), rules); err == nil {
		t.Error("the key removed at the endpoint still verifies")
	}
	// A burst of tokens with made-up key IDs within MinRefetch: one fetch.
	before := j.fetches.Load()
	for i := 0; i < 20; i++ {
		_, _ = v.Verify(ctx, sign(t, newKey(t, "made-up"), c), rules)
	}
	if n := j.fetches.Load() - before; n > 1 {
		t.Errorf("unknown kids caused %d fetches, want at most 1", n)
	}
}

// TestJWKSFailureNotRetriedPerToken: while an issuer's key endpoint fails
// and no keys are held, the tokens requests carry (the sender's to make)
// cause one fetch per MinRefetch, not one each.
func TestJWKSFailureNotRetriedPerToken(t *testing.T) {
	var fetches atomic.Int32
	srv := httptest.NewTLSServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		fetches.Add(1)
		http.Error(w, "down", http.StatusServiceUnavailable)
	}))
	t.Cleanup(srv.Close)
	pool := x509.NewCertPool()
	pool.AddCert(srv.Certificate())
	v := New(pool)
	clock := time.Date(2026, 12, 3, 12, 0, 0, 0, time.UTC)
	v.Now = func() time.Time { return clock }
	k := newKey(t, "k1")
	c := jwt.Claims{Issuer: "iss", Expiry: jwt.NewNumericDate(clock.Add(time.Hour))}
	rules := []Rule{{Issuer: "iss", JwksURI: srv.URL}}
	for range 20 {
		if _, err := v.Verify(context.Background(), sign(t, k, c), rules); err == nil || !strings.Contains(err.Error(), "unavailable") {
			t.Fatalf("token while the key endpoint fails: %v", err)
		}
	}
	if n := fetches.Load(); n != 1 {
		t.Fatalf("20 tokens while the key endpoint fails made %d fetches, want 1", n)
	}
	clock = clock.Add(6 * time.Second) // past MinRefetch
	_, _ = v.Verify(context.Background(), sign(t, k, c), rules)
	if n := fetches.Load(); n != 2 {
		t.Fatalf("after MinRefetch: %d fetches, want 2", n)
	}
}

// TestJWKSNeedsTrustedTLS: keys are fetched only from an endpoint whose
// certificate the verifier trusts, and only over https.
func TestJWKSNeedsTrustedTLS(t *testing.T) {
	k1 := newKey(t, "k1")
	j := newJWKS(t, k1)
	v := New(x509.NewCertPool()) // trusts nothing
	c := jwt.Claims{Issuer: "iss", Expiry: jwt.NewNumericDate(time.Now().Add(time.Hour))}
	_, err := v.Verify(context.Background(), sign(t, k1, c), []Rule{{Issuer: "iss", JwksURI: j.srv.URL}})
	if err == nil || !strings.Contains(err.Error(), "keys of issuer \"iss\" unavailable") {
		t.Fatalf("untrusted JWKS endpoint: %v", err)
	}
	_, err = v.Verify(context.Background(), sign(t, k1, c), []Rule{{Issuer: "iss", JwksURI: "http://" + strings.TrimPrefix(j.srv.URL, "https://")}})
	if err == nil || !strings.Contains(err.Error(), "not https") {
		t.Fatalf("http JWKS: %v", err)
	}
}

func TestTokenFrom(t *testing.T) {
	hdr := map[string][]string{"Authorization": {"Bearer aaa"}, "X-Goog-Iap-Jwt-Assertion": {"bbb"}}
	header := func(n string) []string {
		for k, v := range hdr {
			if strings.EqualFold(k, n) {
				return v
			}
		}
		return nil
	}
	q := map[string][]string{"token": {"ccc"}}
	query := func(n string) []string { return q[n] }
	bearerRule := Rule{Issuer: "a"}
	headerRule := Rule{Issuer: "b", JWTHeaders: []string{"x-goog-iap-jwt-assertion"}}
	paramRule := Rule{Issuer: "c", JWTParams: []string{"token"}}
	if tok, rs, err := TokenFrom([]Rule{bearerRule}, header, query); err != nil || tok != "aaa" || len(rs) != 1 {
		t.Errorf("bearer: %q %v %v", tok, rs, err)
	}
	if tok, rs, err := TokenFrom([]Rule{headerRule}, header, query); err != nil || tok != "bbb" || rs[0].Issuer != "b" {
		t.Errorf("header: %q %v %v", tok, rs, err)
	}
	if tok, _, err := TokenFrom([]Rule{paramRule}, header, query); err != nil || tok != "ccc" {
		t.Errorf("param: %q %v", tok, err)
	}
	if _, _, err := TokenFrom([]Rule{bearerRule, headerRule}, header, query); err == nil || !strings.Contains(err.Error(), "more than one JWT") {
		t.Errorf("two tokens: %v", err)
	}
	delete(hdr, "Authorization")
	if _, _, err := TokenFrom([]Rule{bearerRule}, header, query); err != ErrNoToken {
		t.Errorf("no token: %v", err)
	}
}
