package jwtauthn

import (
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"encoding/base64"
	"encoding/json"
	"strings"
	"testing"
	"time"

	jose "github.com/go-jose/go-jose/v4"
	"github.com/go-jose/go-jose/v4/jwt"
)

// TestAlgorithms: a token of every allowed algorithm, signed by go-jose
// (an independent implementation), verifies with its issuer's key, and
// with no key of another type, curve or size that carries the same kid.
func TestAlgorithms(t *testing.T) {
	now := time.Date(2026, 12, 3, 12, 0, 0, 0, time.UTC)
	rsaKey, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		t.Fatal(err)
	}
	ec := func(c elliptic.Curve) crypto.Signer {
		k, err := ecdsa.GenerateKey(c, rand.Reader)
		if err != nil {
			t.Fatal(err)
		}
		return k
	}
	_, edKey, _ := ed25519.GenerateKey(rand.Reader)
	p256, p384, p521 := ec(elliptic.P256()), ec(elliptic.P384()), ec(elliptic.P521())
	keyFor := map[jose.SignatureAlgorithm]crypto.Signer{
		jose.RS256: rsaKey, jose.RS384: rsaKey, jose.RS512: rsaKey, jose.PS256: rsaKey, jose.PS384: rsaKey, jose.PS512: rsaKey,
		jose.ES256: p256, jose.ES384: p384, jose.ES512: p521, jose.EdDSA: edKey,
	}
	c := jwt.Claims{Issuer: "iss", Subject: "alice", Expiry: jwt.NewNumericDate(now.Add(time.Hour))}
	for _, alg := range AllowedAlgorithms {
		t.Run(alg, func(t *testing.T) {
			priv := keyFor[jose.SignatureAlgorithm(alg)]
			k := jose.JSONWebKey{Key: priv, KeyID: "k", Use: "sig"}
			raw := signAlg(t, jose.SignatureAlgorithm(alg), k, c)
			j := newJWKS(t, k)
			rules := []Rule{{Issuer: "iss", JwksURI: j.srv.URL}}
			if res, err := j.verifier(now).Verify(context.Background(), raw, rules); err != nil || res.Subject != "alice" {
				t.Fatalf("Verify = %+v, %v", res, err)
			}
			// Every other key, under the same kid: none verifies.
			for other, op := range keyFor {
				if op.Public().(interface{ Equal(crypto.PublicKey) bool }).Equal(priv.Public()) {
					continue
				}
				j.set(jose.JSONWebKey{Key: op, KeyID: "k", Use: "sig"})
				v := j.verifier(now)
				if _, err := v.Verify(context.Background(), raw, rules); err == nil || !strings.Contains(err.Error(), "no key of issuer") {
					t.Errorf("%s token with the %s key: %v", alg, other, err)
				}
			}
		})
	}
}

func signAlg(t testing.TB, alg jose.SignatureAlgorithm, k jose.JSONWebKey, claims any) string {
	s, err := jose.NewSigner(jose.SigningKey{Algorithm: alg, Key: k}, (&jose.SignerOptions{}).WithType("JWT").WithHeader("kid", k.KeyID))
	if err != nil {
		t.Fatal(err)
	}
	raw, err := jwt.Signed(s).Claims(claims).Serialize()
	if err != nil {
		t.Fatal(err)
	}
	return raw
}

// TestTokenShape: what the parser refuses before any key is looked at.
// Repeated member names would let this verifier and the app reading the
// claims see different values; crit names extensions not understood.
func TestTokenShape(t *testing.T) {
	enc := func(s string) string { return base64.RawURLEncoding.EncodeToString([]byte(s)) }
	good := enc(`{"iss":"iss","sub":"a"}`)
	for _, tc := range []struct{ name, token, reason string }{
		{"two algs", enc(`{"alg":"ES256","alg":"none"}`) + "." + good + ".c2ln", "duplicate member \"alg\""},
		{"two issuers", enc(`{"alg":"ES256"}`) + "." + enc(`{"iss":"iss","iss":"evil"}`) + ".c2ln", "duplicate member \"iss\""},
		{"nested repeat", enc(`{"alg":"ES256"}`) + "." + enc(`{"iss":"iss","x":{"a":1,"a":2}}`) + ".c2ln", "duplicate member \"a\""},
		{"crit", enc(`{"alg":"ES256","crit":["b64"],"b64":false}`) + "." + good + ".c2ln", "critical extensions"},
		{"HS256", enc(`{"alg":"HS256"}`) + "." + good + ".c2ln", `algorithm "HS256" is not allowed`},
		{"kid not a string", enc(`{"alg":"ES256","kid":1}`) + "." + good + ".c2ln", "kid is not a string"},
		{"aud number", enc(`{"alg":"ES256"}`) + "." + enc(`{"iss":"iss","aud":1}`) + ".c2ln", "aud is not a string"},
		{"exp string", enc(`{"alg":"ES256"}`) + "." + enc(`{"iss":"iss","exp":"soon"}`) + ".c2ln", "exp is not a NumericDate"},
		{"nbf overflow", enc(`{"alg":"ES256"}`) + "." + enc(`{"iss":"iss","nbf":1e300}`) + ".c2ln", "nbf is not a NumericDate"},
		{"trailing data", enc(`{"alg":"ES256"} {}`) + "." + good + ".c2ln", "data after the JSON value"},
		{"deep", enc(`{"alg":"ES256"}`) + "." + enc(`{"x":`+strings.Repeat("[", 100)+strings.Repeat("]", 100)+`}`) + ".c2ln", "nested too deep"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := parseToken(tc.token)
			if err == nil || !strings.Contains(err.Error(), tc.reason) {
				t.Fatalf("parseToken = %v, want %q", err, tc.reason)
			}
		})
	}
}

// TestJWKSKeys: keys a JWKS holds that cannot be used (unknown type, a
// point off its curve, a short coordinate, a symmetric key) are skipped
// and the others still verify; a set with no keys at all ("keys": null)
// is still fetched only once per MinRefetch.
func TestJWKSKeys(t *testing.T) {
	now := time.Date(2026, 12, 3, 12, 0, 0, 0, time.UTC)
	k1 := newKey(t, "k1")
	pub, _ := json.Marshal(k1.Public())
	var m map[string]any
	json.Unmarshal(pub, &m)
	offCurve := map[string]any{"kty": "EC", "crv": "P-256", "kid": "k1", "x": m["x"], "y": base64.RawURLEncoding.EncodeToString(make([]byte, 32))}
	short := map[string]any{"kty": "EC", "crv": "P-256", "kid": "k1", "x": "AQ", "y": "AQ"}
	keys := []any{map[string]any{"kty": "oct", "k": "c2VjcmV0", "kid": "k1"}, map[string]any{"kty": "XYZ"}, offCurve, short, m}
	body, _ := json.Marshal(map[string]any{"keys": keys})
	set, err := parseJWKS(body)
	if err != nil || len(set) != 1 {
		t.Fatalf("parseJWKS: %d keys, %v; want the one usable key", len(set), err)
	}
	if set, err := parseJWKS([]byte(`{"keys":[]}`)); err != nil || set == nil {
		t.Fatalf("empty JWKS: %v %v, want an empty, non-nil set", set, err)
	}
	if _, err := parseJWKS([]byte(`{"keys":{"kty":"EC"}}`)); err == nil {
		t.Fatal("a lone JWK taken for a JWKS")
	}

	j := newJWKS(t) // no keys at all
	v := j.verifier(now)
	rules := []Rule{{Issuer: "iss", JwksURI: j.srv.URL}}
	c := jwt.Claims{Issuer: "iss", Expiry: jwt.NewNumericDate(now.Add(time.Hour))}
	for range 10 {
		if _, err := v.Verify(context.Background(), sign(t, k1, c), rules); err == nil {
			t.Fatal("verified with an empty key set")
		}
	}
	if n := j.fetches.Load(); n != 1 {
		t.Errorf("an empty key set was fetched %d times within MinRefetch, want 1", n)
	}
}

// FuzzParseJWKS: any document; every key returned is a usable public key.
func FuzzParseJWKS(f *testing.F) {
	f.Add([]byte(`{"keys":[{"kty":"EC","crv":"P-256","x":"AQ","y":"AQ"},{"kty":"RSA","n":"AQAB","e":"AQAB"},{"kty":"OKP","crv":"Ed25519","x":"11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo"}]}`))
	f.Add([]byte(`{"keys":null}`))
	f.Fuzz(func(t *testing.T, b []byte) {
		set, err := parseJWKS(b)
		if err != nil {
			return
		}
		for _, k := range set {
			switch k.key.(type) {
			case *rsa.PublicKey, *ecdsa.PublicKey, ed25519.PublicKey:
			default:
				t.Fatalf("key %T", k.key)
			}
		}
	})
}
