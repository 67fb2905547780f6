package jwtauthn

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/go-jose/go-jose/v4/jwt"
)

// FuzzVerify feeds arbitrary tokens (and the good one, mutated) to Verify
// against a real JWKS over TLS: it never panics, refuses with an *Error,
// and whatever it accepts carries the signed claims, unexpired.
func FuzzVerify(f *testing.F) {
	now := time.Date(2026, 12, 3, 12, 0, 0, 0, time.UTC)
	k1 := newKey(f, "k1")
	j := newJWKS(f, k1)
	rules := []Rule{{Issuer: "iss", Audiences: []string{"aud"}, JwksURI: j.srv.URL}}
	good := sign(f, k1, jwt.Claims{Issuer: "iss", Subject: "alice", Audience: jwt.Audience{"aud"}, Expiry: jwt.NewNumericDate(now.Add(time.Hour))})
	f.Add(good)
	f.Add(strings.Replace(good, ".", "..", 1))
	f.Add("eyJhbGciOiJub25lIn0.eyJpc3MiOiJpc3MifQ.")
	f.Add("a.b.c")
	v := j.verifier(now)
	v.MinRefetch = time.Hour // one fetch for the whole run
	f.Fuzz(func(t *testing.T, raw string) {
		res, err := v.Verify(context.Background(), raw, rules)
		if err != nil {
			if _, ok := err.(*Error); !ok {
				t.Fatalf("error %T %v, want *Error", err, err)
			}
			return
		}
		if res.Principal != "iss/alice" || res.Payload == "" {
			t.Fatalf("accepted %q as %+v", raw, res)
		}
	})
}

// FuzzTokenFrom: any header and query values; the token found is one of
// them (less an optional "Bearer " and spaces), never something else.
func FuzzTokenFrom(f *testing.F) {
	f.Add("Bearer abc", "x", "q")
	f.Add("bearer  ", "", "")
	f.Add("Basic Zm9v", "Bearer y", "z")
	f.Fuzz(func(t *testing.T, authz, custom, param string) {
		rules := []Rule{{Issuer: "a"}, {Issuer: "b", JWTHeaders: []string{"x-jwt"}, JWTParams: []string{"token"}}}
		header := func(n string) []string {
			switch strings.ToLower(n) {
			case "authorization":
				return []string{authz}
			case "x-jwt":
				return []string{custom}
			}
			return nil
		}
		query := func(n string) []string { return []string{param} }
		tok, rs, err := TokenFrom(rules, header, query)
		if err != nil {
			return
		}
		if tok == "" || len(rs) == 0 || !(strings.Contains(authz, tok) || strings.Contains(custom, tok) || tok == param) {
			t.Fatalf("token %q rules %v from %q %q %q", tok, rs, authz, custom, param)
		}
	})
}
