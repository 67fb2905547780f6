package jwtauthn

import (
	"bytes"
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rsa"
	_ "crypto/sha256" // RS256, PS256, ES256
	_ "crypto/sha512" // the 384 and 512 variants
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math/big"
	"strconv"
	"strings"
	"time"
)

// The JOSE this package needs, on crypto/* and encoding/json: a compact
// JWS with one asymmetric signature (RFC 7515, algorithms of RFC 7518 and
// RFC 8037), the JWT claims it checks (RFC 7519) and a JWKS's public keys
// (RFC 7517). It replaced go-jose/v4, whose JWE, HMAC, key wrapping and
// JSON fork every sidecar mapped for these few functions (BENCHMARKS.md,
// "Idle sidecar memory"); the tests still sign with go-jose, as an
// independent implementation. JSON objects whose member names repeat are
// refused at any depth (go-jose's rule: two "alg"s or two "iss"s would let
// this verifier and the app that reads the claims see different values).

// Algorithms of the allowed signatures: hash and key type.
type algorithm struct {
	hash crypto.Hash // 0 for EdDSA (it hashes itself)
	kind string      // "RSA", "PSS", "EC", "OKP"
	// curve is the EC key's curve ES* needs.
	curve elliptic.Curve
}

var algorithms = map[string]algorithm{
	"RS256": {crypto.SHA256, "RSA", nil}, "RS384": {crypto.SHA384, "RSA", nil}, "RS512": {crypto.SHA512, "RSA", nil},
	"PS256": {crypto.SHA256, "PSS", nil}, "PS384": {crypto.SHA384, "PSS", nil}, "PS512": {crypto.SHA512, "PSS", nil},
	"ES256": {crypto.SHA256, "EC", elliptic.P256()}, "ES384": {crypto.SHA384, "EC", elliptic.P384()}, "ES512": {crypto.SHA512, "EC", elliptic.P521()},
	"EdDSA": {0, "OKP", nil},
}

// token is a parsed compact JWS whose signature is not yet checked.
type token struct {
	alg, kid string
	// signed is the signing input (header.payload as sent), sig the
	// signature.
	signed string
	sig    []byte
	claims claimSet
}

// claimSet is a token's payload: every claim, and the registered ones
// this package checks.
type claimSet struct {
	all           map[string]any
	iss, sub      string
	aud           []string
	exp, nbf, iat *time.Time
}

// parseToken parses a compact JWS (header.payload.signature) whose header
// names an allowed algorithm and no critical extension.
func parseToken(raw string) (*token, error) {
	parts := strings.Split(raw, ".")
	if len(parts) != 3 {
		return nil, errors.New("not a compact JWS (header.payload.signature)")
	}
	hb, err := b64(parts[0])
	if err != nil {
		return nil, fmt.Errorf("header: %v", err)
	}
	h, err := jsonObject(hb)
	if err != nil {
		return nil, fmt.Errorf("header: %v", err)
	}
	t := &token{signed: parts[0] + "." + parts[1]}
	var ok bool
	if t.alg, ok = h["alg"].(string); !ok {
		return nil, errors.New("header: no alg")
	}
	if _, ok := algorithms[t.alg]; !ok {
		return nil, fmt.Errorf("algorithm %q is not allowed (asymmetric signatures only)", t.alg)
	}
	if k, present := h["kid"]; present {
		if t.kid, ok = k.(string); !ok {
			return nil, errors.New("header: kid is not a string")
		}
	}
	if _, present := h["crit"]; present {
		return nil, errors.New("header: critical extensions are not supported")
	}
	pb, err := b64(parts[1])
	if err != nil {
		return nil, fmt.Errorf("payload: %v", err)
	}
	if t.claims, err = parseClaims(pb); err != nil {
		return nil, err
	}
	if t.sig, err = b64(parts[2]); err != nil {
		return nil, fmt.Errorf("signature: %v", err)
	}
	return t, nil
}

// b64 decodes base64url without padding (trailing '=' tolerated, as
// go-jose did).
func b64(s string) ([]byte, error) {
	return base64.RawURLEncoding.DecodeString(strings.TrimRight(s, "="))
}

// maxNumericDate bounds exp/nbf/iat (2^62 s): beyond it time.Unix wraps
// and a far-future nbf would compare as past.
const maxNumericDate = 1 << 62

func parseClaims(b []byte) (claimSet, error) {
	var c claimSet
	all, err := jsonObject(b)
	if err != nil {
		return c, fmt.Errorf("malformed claims: %v", err)
	}
	c.all = all
	var ok bool
	str := func(name string, dst *string) error {
		if x, present := all[name]; present {
			if *dst, ok = x.(string); !ok {
				return fmt.Errorf("malformed claims: %s is not a string", name)
			}
		}
		return nil
	}
	date := func(name string, dst **time.Time) error {
		x, present := all[name]
		if !present {
			return nil
		}
		f, ok := x.(float64)
		if !ok || f >= maxNumericDate || f <= -maxNumericDate {
			return fmt.Errorf("malformed claims: %s is not a NumericDate", name)
		}
		t := time.Unix(int64(f), 0)
		*dst = &t
		return nil
	}
	for _, err := range []error{str("iss", &c.iss), str("sub", &c.sub), date("exp", &c.exp), date("nbf", &c.nbf), date("iat", &c.iat)} {
		if err != nil {
			return c, err
		}
	}
	switch a := all["aud"].(type) {
	case nil:
		if _, present := all["aud"]; present {
			return c, errors.New("malformed claims: aud is null")
		}
	case string:
		c.aud = []string{a}
	case []any:
		for _, x := range a {
			s, ok := x.(string)
			if !ok {
				return c, errors.New("malformed claims: aud is not a string or an array of strings")
			}
			c.aud = append(c.aud, s)
		}
	default:
		return c, errors.New("malformed claims: aud is not a string or an array of strings")
	}
	return c, nil
}

// jsonObject is strictJSON for a JSON object.
func jsonObject(b []byte) (map[string]any, error) {
	v, err := strictJSON(b)
	if err != nil {
		return nil, err
	}
	m, ok := v.(map[string]any)
	if !ok {
		return nil, errors.New("not a JSON object")
	}
	return m, nil
}

// strictJSON decodes one JSON value (objects as map[string]any, numbers
// as float64, as encoding/json does) and refuses a member name that
// repeats in an object, at any depth, and anything after the value.
func strictJSON(b []byte) (any, error) {
	d := json.NewDecoder(bytes.NewReader(b))
	d.UseNumber()
	v, err := strictValue(d, 0)
	if err != nil {
		return nil, err
	}
	if _, err := d.Token(); err != io.EOF {
		return nil, errors.New("data after the JSON value")
	}
	return v, nil
}

// maxJSONDepth bounds nesting (a token is attacker-controlled).
const maxJSONDepth = 64

func strictValue(d *json.Decoder, depth int) (any, error) {
	if depth > maxJSONDepth {
		return nil, errors.New("JSON nested too deep")
	}
	tok, err := d.Token()
	if err != nil {
		return nil, err
	}
	switch t := tok.(type) {
	case json.Delim:
		switch t {
		case '{':
			m := map[string]any{}
			for d.More() {
				kt, err := d.Token()
				if err != nil {
					return nil, err
				}
				k := kt.(string) // the decoder yields only string keys here
				if _, dup := m[k]; dup {
					return nil, fmt.Errorf("duplicate member %q", k)
				}
				if m[k], err = strictValue(d, depth+1); err != nil {
					return nil, err
				}
			}
			_, err := d.Token() // '}'
			return m, err
		case '[':
			a := []any{}
			for d.More() {
				v, err := strictValue(d, depth+1)
				if err != nil {
					return nil, err
				}
				a = append(a, v)
			}
			_, err := d.Token() // ']'
			return a, err
		}
		return nil, fmt.Errorf("unexpected %v", t)
	case json.Number:
		return strconv.ParseFloat(string(t), 64)
	}
	return tok, nil // string, bool, nil
}

// jwk is one usable public key of a JWKS.
type jwk struct {
	kid, use, alg string
	key           crypto.PublicKey
}

// parseJWKS returns the public keys of a JWKS it can use: RSA, EC (P-256,
// P-384, P-521, the point checked on its curve) and OKP Ed25519. Keys of
// other types or with missing or bad members are skipped, as RFC 7517 5
// asks; a document that is not a JSON object with a "keys" array (or
// none: no keys) is an error.
func parseJWKS(b []byte) ([]jwk, error) {
	var doc struct {
		Keys []json.RawMessage `json:"keys"`
	}
	if err := json.Unmarshal(b, &doc); err != nil {
		return nil, err
	}
	// Not nil even with no usable key: the cache takes nil for "never
	// fetched" and would fetch again on every token, unlimited.
	out := make([]jwk, 0, len(doc.Keys))
	for _, raw := range doc.Keys {
		var k struct {
			Kty, Use, Alg, Kid, Crv, N, E, X, Y string
		}
		if json.Unmarshal(raw, &k) != nil {
			continue
		}
		pub := publicKey(k.Kty, k.Crv, k.N, k.E, k.X, k.Y)
		if pub == nil {
			continue
		}
		out = append(out, jwk{kid: k.Kid, use: k.Use, alg: k.Alg, key: pub})
	}
	return out, nil
}

func publicKey(kty, crv, n, e, x, y string) crypto.PublicKey {
	switch kty {
	case "RSA":
		nb, err1 := b64(n)
		eb, err2 := b64(e)
		if err1 != nil || err2 != nil || len(nb) == 0 || len(eb) == 0 || len(eb) > 4 {
			return nil
		}
		ev := new(big.Int).SetBytes(eb).Int64()
		if ev < 3 {
			return nil
		}
		return &rsa.PublicKey{N: new(big.Int).SetBytes(nb), E: int(ev)}
	case "EC":
		var c elliptic.Curve
		switch crv {
		case "P-256":
			c = elliptic.P256()
		case "P-384":
			c = elliptic.P384()
		case "P-521":
			c = elliptic.P521()
		default:
			return nil
		}
		size := (c.Params().BitSize + 7) / 8
		xb, err1 := b64(x)
		yb, err2 := b64(y)
		if err1 != nil || err2 != nil || len(xb) != size || len(yb) != size {
			return nil
		}
		pub, err := ecdsa.ParseUncompressedPublicKey(c, append(append([]byte{4}, xb...), yb...))
		if err != nil {
			return nil // not on the curve
		}
		return pub
	case "OKP":
		xb, err := b64(x)
		if crv != "Ed25519" || err != nil || len(xb) != ed25519.PublicKeySize {
			return nil
		}
		return ed25519.PublicKey(xb)
	}
	return nil
}

// verifySignature checks t's signature with pub, which must be of the
// key type (and curve) t's algorithm names.
func verifySignature(t *token, pub crypto.PublicKey) bool {
	a := algorithms[t.alg]
	var digest []byte
	if a.hash != 0 {
		h := a.hash.New()
		h.Write([]byte(t.signed))
		digest = h.Sum(nil)
	}
	switch k := pub.(type) {
	case *rsa.PublicKey:
		switch a.kind {
		case "RSA":
			return rsa.VerifyPKCS1v15(k, a.hash, digest, t.sig) == nil
		case "PSS":
			return rsa.VerifyPSS(k, a.hash, digest, t.sig, nil) == nil
		}
	case *ecdsa.PublicKey:
		if a.kind != "EC" || k.Curve != a.curve {
			return false
		}
		size := (a.curve.Params().BitSize + 7) / 8
		if len(t.sig) != 2*size {
			return false
		}
		r := new(big.Int).SetBytes(t.sig[:size])
		s := new(big.Int).SetBytes(t.sig[size:])
		return ecdsa.Verify(k, digest, r, s)
	case ed25519.PublicKey:
		return a.kind == "OKP" && ed25519.Verify(k, []byte(t.signed), t.sig)
	}
	return false
}
