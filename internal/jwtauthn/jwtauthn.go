// Package jwtauthn verifies end-user JSON Web Tokens the way an Istio
// authentication Policy's origins define them: the token is taken from the
// request (Authorization: Bearer, or the headers and query parameters the
// Policy names), its issuer must be one the Policy lists, its signature
// must verify with a key from that issuer's JWKS (fetched over HTTPS with
// meshauth's TLS profile, cached, refreshed, and fetched again when a token
// names a key the cache does not have: key rotation), and its exp, nbf and
// aud must hold. Only asymmetric algorithms are accepted ("none" and the
// HMAC family never: a JWKS is public).
//
// JOSE parsing and signature checks are this package's own, on crypto/*
// (jws.go): a sidecar maps every byte of its binary, and go-jose/v4 was
// mostly what is never used here (JWE, HMAC, key wrapping, a JSON fork).
package jwtauthn

import (
	"context"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strings"
	"sync"
	"time"

	"github.com/meshauth/meshauth/internal/policy"
	"github.com/meshauth/meshauth/internal/tlsprofile"
)

// Rule is one origin of a Policy (policy.JWTRule): an issuer, its audiences
// and keys, and where a request carries its token (JWTHeaders, JWTParams;
// with neither, "Authorization: Bearer").
type Rule = policy.JWTRule

// AllowedAlgorithms are the signature algorithms a token may use.
var AllowedAlgorithms = []string{
	"RS256", "RS384", "RS512", "PS256", "PS384", "PS512",
	"ES256", "ES384", "ES512", "EdDSA",
}

// Leeway is the clock skew allowed on exp, nbf and iat.
const Leeway = 30 * time.Second

// Result is a verified token.
type Result struct {
	Issuer  string
	Subject string
	// Principal is "iss/sub", Istio's request.auth.principal for
	// principalBinding USE_ORIGIN.
	Principal string
	Audiences []string
	// Presenter is the azp claim.
	Presenter string
	// Claims are every claim, as JSON decodes them.
	Claims map[string]any
	// Payload is the verified payload segment of the token as sent
	// (base64url of the claims' JSON): what Istio's JWT filter forwards
	// to the app as sec-istio-auth-userinfo.
	Payload string
}

// Error is a refused token; Reason is said to the client with the 401.
type Error struct{ Reason string }

func (e *Error) Error() string { return "jwt: " + e.Reason }

func fail(format string, args ...any) error { return &Error{Reason: fmt.Sprintf(format, args...)} }

// ErrNoToken is returned when the request carries no token at all.
var ErrNoToken = &Error{Reason: "no JWT in the request (origin authentication required)"}

// Verifier verifies tokens against rules, with a JWKS cache shared by
// every rule and request.
type Verifier struct {
	Client *http.Client
	// Refresh is how long fetched keys are used before they are fetched
	// again (default 10 minutes); MinRefetch bounds how often a token with
	// an unknown key may cause a fetch (default 5 seconds), so that tokens
	// with made-up key IDs cannot make the sidecar hammer the issuer.
	Refresh    time.Duration
	MinRefetch time.Duration
	// Now is the clock (time.Now when nil).
	Now func() time.Time

	mu   sync.Mutex
	sets map[string]*keySet
}

type keySet struct {
	mu      sync.Mutex // one fetch at a time per URI
	keys    []jwk
	fetched time.Time
	tried   time.Time
	err     error // the last fetch's, while no keys are held
}

// New returns a Verifier whose JWKS client uses meshauth's TLS profile and
// trusts roots (nil: the system's roots).
func New(roots *x509.CertPool) *Verifier {
	cfg := tlsprofile.New()
	cfg.RootCAs = roots
	return &Verifier{Client: &http.Client{
		Timeout:   10 * time.Second,
		Transport: &http.Transport{TLSClientConfig: cfg, Proxy: nil, ForceAttemptHTTP2: true},
		// A JWKS URI that redirects could send the fetch to plain http.
		CheckRedirect: func(r *http.Request, _ []*http.Request) error {
			if r.URL.Scheme != "https" {
				return errors.New("jwks: redirect to a non-https URL refused")
			}
			return nil
		},
	}}
}

func (v *Verifier) now() time.Time {
	if v.Now != nil {
		return v.Now()
	}
	return time.Now()
}

// Verify checks a raw token against rules (the origins the token's
// location allows) and returns its claims, or an *Error saying why not.
func (v *Verifier) Verify(ctx context.Context, raw string, rules []Rule) (*Result, error) {
	if strings.Count(raw, ".") != 2 {
		return nil, fail("malformed token: not a compact JWS (header.payload.signature)")
	}
	tok, err := parseToken(raw)
	if err != nil {
		return nil, fail("malformed or unsupported token: %v", err)
	}
	// The issuer, unverified, picks the rule (and so the keys) to verify
	// with.
	peek := struct{ Issuer string }{tok.claims.iss}
	var rule *Rule
	for i := range rules {
		if rules[i].Issuer == peek.Issuer {
			rule = &rules[i]
			break
		}
	}
	if rule == nil {
		return nil, fail("issuer %q is not allowed", peek.Issuer)
	}
	kid := tok.kid
	res, verr := v.verifyWith(ctx, tok, rule, kid, false)
	if verr == errNoKey {
		// The issuer may have rotated its keys: fetch again (rate
		// limited) and retry once.
		res, verr = v.verifyWith(ctx, tok, rule, kid, true)
	}
	if verr == errNoKey {
		return nil, fail("no key of issuer %q verifies the token (kid %q)", rule.Issuer, kid)
	}
	if verr != nil {
		return nil, verr
	}
	res.Payload = strings.Split(raw, ".")[1]
	return res, nil
}

var errNoKey = errors.New("no key verifies")

func (v *Verifier) verifyWith(ctx context.Context, tok *token, rule *Rule, kid string, refetch bool) (*Result, error) {
	keys, err := v.keys(ctx, rule.JwksURI, refetch)
	if err != nil {
		return nil, fail("keys of issuer %q unavailable: %v", rule.Issuer, err)
	}
	for _, k := range keys {
		if kid != "" && k.kid != kid {
			continue
		}
		if k.use == "enc" || (k.alg != "" && k.alg != tok.alg) {
			continue
		}
		if !verifySignature(tok, k.key) {
			continue
		}
		return v.checkClaims(tok.claims, rule)
	}
	return nil, errNoKey
}

func (v *Verifier) checkClaims(c claimSet, rule *Rule) (*Result, error) {
	now := v.now()
	switch {
	case c.iss != rule.Issuer:
		return nil, fail("claims refused: issuer %q", c.iss)
	case len(rule.Audiences) > 0 && !anyOf(rule.Audiences, c.aud):
		return nil, fail("audience %v is not one of %v", c.aud, rule.Audiences)
	case c.nbf != nil && now.Add(Leeway).Before(*c.nbf):
		return nil, fail("token not valid before %s", c.nbf.UTC().Format(time.RFC3339))
	case c.exp != nil && now.Add(-Leeway).After(*c.exp):
		return nil, fail("token expired at %s", c.exp.UTC().Format(time.RFC3339))
	case c.iat != nil && now.Add(Leeway).Before(*c.iat):
		return nil, fail("token issued in the future")
	}
	r := &Result{Issuer: c.iss, Subject: c.sub, Principal: c.iss + "/" + c.sub,
		Audiences: c.aud, Claims: c.all}
	if azp, ok := c.all["azp"].(string); ok {
		r.Presenter = azp
	}
	return r, nil
}

// anyOf reports whether want and have share a value.
func anyOf(want, have []string) bool {
	for _, w := range want {
		for _, h := range have {
			if w == h {
				return true
			}
		}
	}
	return false
}

// maxJWKSBytes bounds a fetched key set.
const maxJWKSBytes = 1 << 20

// keys returns the key set of uri, fetching it when absent, older than
// Refresh, or when refetch is asked and the last attempt is older than
// MinRefetch. A failed fetch keeps the keys already held. With no keys
// held, a failed fetch is not tried again before MinRefetch either: the
// tokens that make the sidecar fetch come from whoever sends requests, and
// must not turn it into a client hammering the issuer (or waiting on it,
// one request at a time) once per request.
func (v *Verifier) keys(ctx context.Context, uri string, refetch bool) ([]jwk, error) {
	v.mu.Lock()
	if v.sets == nil {
		v.sets = map[string]*keySet{}
	}
	ks := v.sets[uri]
	if ks == nil {
		ks = &keySet{}
		v.sets[uri] = ks
	}
	v.mu.Unlock()
	refresh, minRefetch := v.Refresh, v.MinRefetch
	if refresh == 0 {
		refresh = 10 * time.Minute
	}
	if minRefetch == 0 {
		minRefetch = 5 * time.Second
	}
	ks.mu.Lock()
	defer ks.mu.Unlock()
	now := v.now()
	stale := ks.keys == nil || now.Sub(ks.fetched) >= refresh || (refetch && now.Sub(ks.tried) >= minRefetch)
	if stale && (ks.tried.IsZero() || now.Sub(ks.tried) >= minRefetch) {
		ks.tried = now
		set, err := v.fetch(ctx, uri)
		switch {
		case err == nil:
			ks.keys, ks.fetched, ks.err = set, now, nil
		case ks.keys == nil:
			ks.err = err
			return nil, err
		}
	}
	if ks.keys == nil && ks.err != nil {
		return nil, ks.err
	}
	return ks.keys, nil
}

func (v *Verifier) fetch(ctx context.Context, uri string) ([]jwk, error) {
	if !strings.HasPrefix(uri, "https://") {
		return nil, fmt.Errorf("jwksUri %q is not https", uri)
	}
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, uri, nil)
	if err != nil {
		return nil, err
	}
	resp, err := v.Client.Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("GET %s: %s", uri, resp.Status)
	}
	body, err := io.ReadAll(io.LimitReader(resp.Body, maxJWKSBytes+1))
	if err != nil {
		return nil, err
	}
	if len(body) > maxJWKSBytes {
		return nil, fmt.Errorf("GET %s: key set larger than %d bytes", uri, maxJWKSBytes)
	}
	set, err := parseJWKS(body)
	if err != nil {
		return nil, fmt.Errorf("GET %s: not a JWKS: %v", uri, err)
	}
	return set, nil
}

// TokenFrom finds the request's token for rules: in each rule's headers
// and query parameters, or "Authorization: Bearer" for a rule that names
// neither. header returns every value of a header (any case of its name);
// query is the parsed query. It returns the token and the rules whose
// locations hold it. More than one distinct token is refused (which one a
// client meant, and which one the app reads, would be a guess).
func TokenFrom(rules []Rule, header func(name string) []string, query func(name string) []string) (string, []Rule, error) {
	token := ""
	var applicable []Rule
	for _, r := range rules {
		var found []string
		if len(r.JWTHeaders) == 0 && len(r.JWTParams) == 0 {
			for _, v := range header("Authorization") {
				if t, ok := bearer(v); ok {
					found = append(found, t)
				}
			}
		}
		for _, h := range r.JWTHeaders {
			for _, v := range header(h) {
				if t, ok := bearer(v); ok {
					found = append(found, t)
				} else {
					found = append(found, strings.TrimSpace(v))
				}
			}
		}
		for _, p := range r.JWTParams {
			found = append(found, query(p)...)
		}
		for _, t := range found {
			if t == "" {
				continue
			}
			if token != "" && t != token {
				return "", nil, fail("more than one JWT in the request")
			}
			token = t
		}
		if len(found) > 0 {
			applicable = append(applicable, r)
		}
	}
	if token == "" {
		return "", nil, ErrNoToken
	}
	return token, applicable, nil
}

func bearer(v string) (string, bool) {
	const p = "bearer "
	if len(v) > len(p) && strings.EqualFold(v[:len(p)], p) {
		return strings.TrimSpace(v[len(p):]), true
	}
	return "", false
}
