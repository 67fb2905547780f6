package proxy

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	jose "github.com/go-jose/go-jose/v4"
	"github.com/go-jose/go-jose/v4/jwt"
	"google.golang.org/grpc/codes"
	testpb "google.golang.org/grpc/interop/grpc_testing"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	"github.com/meshauth/meshauth/internal/ca/catest"
	"github.com/meshauth/meshauth/internal/jwtauthn"
	"github.com/meshauth/meshauth/internal/policy"
)

// End-user (origin JWT) authentication on the HTTP/2 path (h2in.go), with
// real TLS, a real JWKS endpoint over TLS on loopback and tokens signed
// here. Without the change, HTTP/2 requests on an HTTP port passed with no
// token at all (and a client's sec-istio-auth-userinfo reached the app),
// and connections to an HTTP2/GRPC port whose Policy has origins were
// refused (endUserNeedsH1).

// testIssuer is a JWT issuer: its JWKS is served over TLS on loopback.
type testIssuer struct {
	key jose.JSONWebKey
	srv *httptest.Server
}

// newTestIssuer starts an issuer and makes the sidecars of this test
// trust its JWKS endpoint (the verifier is the process's one; restored at
// the end).
func newTestIssuer(t *testing.T) *testIssuer {
	t.Helper()
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	iss := &testIssuer{key: jose.JSONWebKey{Key: k, KeyID: "k1", Algorithm: string(jose.ES256), Use: "sig"}}
	iss.srv = httptest.NewTLSServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_ = json.NewEncoder(w).Encode(jose.JSONWebKeySet{Keys: []jose.JSONWebKey{iss.key.Public()}})
	}))
	t.Cleanup(iss.srv.Close)
	pool := x509.NewCertPool()
	pool.AddCert(iss.srv.Certificate())
	v, old := jwtauthn.New(pool), endUserVerifier
	endUserVerifier = func() *jwtauthn.Verifier { return v }
	t.Cleanup(func() { endUserVerifier = old })
	return iss
}

const testIssuerName = "https://issuer.example"

// endUser is the port's origins: this issuer, audience "httpbin".
func (iss *testIssuer) endUser() *policy.EndUserAuthn {
	return &policy.EndUserAuthn{DecidedBy: "Policy/default/jwt", UseOrigin: true,
		JWT: []policy.JWTRule{{Issuer: testIssuerName, Audiences: []string{"httpbin"}, JwksURI: iss.srv.URL + "/jwks"}}}
}

// token signs a token for sub with groups, expiring at exp.
func (iss *testIssuer) token(t *testing.T, sub string, groups []string, exp time.Time) string {
	t.Helper()
	s, err := jose.NewSigner(jose.SigningKey{Algorithm: jose.ES256, Key: iss.key}, (&jose.SignerOptions{}).WithHeader("kid", "k1"))
	if err != nil {
		t.Fatal(err)
	}
	raw, err := jwt.Signed(s).Claims(struct {
		jwt.Claims
		Groups []string `json:"groups"`
	}{jwt.Claims{Issuer: testIssuerName, Subject: sub, Audience: jwt.Audience{"httpbin"}, Expiry: jwt.NewNumericDate(exp),
		IssuedAt: jwt.NewNumericDate(time.Now().Add(-time.Minute))}, groups}).Serialize()
	if err != nil {
		t.Fatal(err)
	}
	return raw
}

// withEndUser pushes a snapshot equal to the sidecar's current one with
// every listed port given eu.
func withEndUser(t *testing.T, s *sidecar, eu *policy.EndUserAuthn) {
	t.Helper()
	snap := *s.config.Current()
	snap.Inbound = append([]policy.InboundPort(nil), snap.Inbound...)
	for i := range snap.Inbound {
		snap.Inbound[i].EndUser = eu
	}
	snap.Version = "with-end-user"
	if err := s.config.Set(&snap); err != nil {
		t.Fatal(err)
	}
}

// adminsOnly is RBAC allowing request.auth.claims[groups] admin only.
var adminsOnly = &policy.RBAC{DecidedBy: "RbacConfig/default", Policies: []policy.RBACPolicy{{
	Role: "default/admins", Bindings: []string{"default/admins"},
	Rules:    []policy.RBACRule{{Services: []string{"*"}, Methods: []string{"*"}}},
	Subjects: []policy.RBACSubject{{Properties: map[string]string{"request.auth.claims[groups]": "admin"}, Binding: "default/admins"}},
}}}

// userinfoLike returns every value of every field a CGI-style mapping
// would take to HTTP_SEC_ISTIO_AUTH_USERINFO, in headers and trailers.
func (s sawApp) userinfoLike() []string {
	var out []string
	for _, m := range []map[string][]string{s.Headers, s.Trailer} {
		for k, v := range m {
			if normalEqual([]byte(k), userinfoHeader) {
				out = append(out, v...)
			}
		}
	}
	return out
}

// TestEndUserJWTOverHTTP2: HTTP/2 requests (mTLS, x/net's client) to a
// port whose Policy has origins, declared HTTP (the app gets HTTP/1.1) or
// GRPC (h2c): no token and an expired one get 401 before RBAC; a valid
// one reaches RBAC (request.auth.claims) and the app, which sees only the
// sidecar's sec-istio-auth-userinfo, never a client's (any spelling, in
// the head or the trailers).
func TestEndUserJWTOverHTTP2(t *testing.T) {
	ca := catest.New(t)
	iss := newTestIssuer(t)
	sleep := ca.Issue(t, sleepID)
	now := time.Now()
	admin := iss.token(t, "alice", []string{"admin"}, now.Add(time.Hour))
	forged := "eyJpc3MiOiJodHRwczovL2lzc3Vlci5leGFtcGxlIiwic3ViIjoiYWRtaW4ifQ"
	for _, proto := range []string{"HTTP", "GRPC"} {
		t.Run(proto, func(t *testing.T) {
			srv := startEcho2(t, ca, policy.ServerPermissive, proto, adminsOnly)
			withEndUser(t, srv, iss.endUser())
			cl := h2Client(srv.InboundAddrs[0].String(), sleep)
			do := func(t *testing.T, tok string, forgedName string, trailer bool) (*http.Response, string, *sawApp) {
				t.Helper()
				var body io.Reader
				method := "GET"
				if trailer {
					method, body = "POST", strings.NewReader("abc")
				}
				req, _ := http.NewRequest(method, "http://httpbin/headers", body)
				if tok != "" {
					req.Header.Set("Authorization", "Bearer "+tok)
				}
				if forgedName != "" && !trailer {
					req.Header[forgedName] = []string{forged}
				}
				if trailer {
					req.Trailer = http.Header{forgedName: []string{forged}, "X-Other-Trailer": []string{"kept"}}
				}
				resp, err := cl.Do(req)
				if err != nil {
					t.Fatalf("HTTP/2 request: %v", err)
				}
				defer resp.Body.Close()
				b, _ := io.ReadAll(resp.Body)
				if resp.ProtoMajor != 2 {
					t.Fatalf("answered over %s, want HTTP/2", resp.Proto)
				}
				if resp.Header.Get(reasonHeader) != "" {
					return resp, string(b), nil
				}
				var s sawApp
				if err := json.Unmarshal(b, &s); err != nil {
					t.Fatalf("app answer %q: %v", b, err)
				}
				return resp, string(b), &s
			}
			t.Run("no token", func(t *testing.T) {
				resp, body, _ := do(t, "", "Sec-Istio-Auth-Userinfo", false)
				if resp.StatusCode != 401 || resp.Header.Get(reasonHeader) != reasonJWT || !strings.Contains(body, "Origin authentication failed") {
					t.Fatalf("want 401 Origin authentication failed (%s), got %d %q %s", reasonJWT, resp.StatusCode, resp.Header.Get(reasonHeader), body)
				}
			})
			t.Run("expired token", func(t *testing.T) {
				resp, body, _ := do(t, iss.token(t, "alice", []string{"admin"}, now.Add(-time.Hour)), "", false)
				if resp.StatusCode != 401 || !strings.Contains(body, "token expired") {
					t.Fatalf("want 401 token expired, got %d %s", resp.StatusCode, body)
				}
			})
			t.Run("valid token, RBAC denies by claim", func(t *testing.T) {
				resp, body, _ := do(t, iss.token(t, "bob", []string{"dev"}, now.Add(time.Hour)), "", false)
				if resp.StatusCode != 403 || !strings.Contains(body, "RBAC: access denied") {
					t.Fatalf("want 403 RBAC, got %d %s", resp.StatusCode, body)
				}
			})
			want := strings.Split(admin, ".")[1]
			for _, name := range []string{"Sec-Istio-Auth-Userinfo", "Sec_istio_auth_userinfo", "Sec.istio.auth.userinfo"} {
				for _, trailer := range []bool{false, true} {
					where := "header"
					if trailer {
						where = "trailer"
					}
					t.Run("valid token, forged "+where+" "+name, func(t *testing.T) {
						resp, body, saw := do(t, admin, name, trailer)
						if resp.StatusCode != 200 || saw == nil {
							t.Fatalf("want 200 from the app, got %d %s", resp.StatusCode, body)
						}
						if got := saw.userinfoLike(); len(got) != 1 || got[0] != want {
							t.Fatalf("app saw sec-istio-auth-userinfo %q (trailers %v), want only the verified %q", got, saw.Trailer, want)
						}
						// (An HTTP port's app gets HTTP/1.1 with the
						// body's length: trailers cannot follow.)
						if trailer && proto == "GRPC" && len(saw.Trailer["X-Other-Trailer"]) == 0 {
							t.Errorf("an unrelated trailer was dropped: %v", saw.Trailer)
						}
					})
				}
			}
			waitFor(t, func() bool {
				return strings.Contains(srv.log.String(), `"protocol":"HTTP/2"`) && strings.Contains(srv.log.String(), `"reason":"jwt: token expired`)
			}, "the access log of a refused HTTP/2 request names the token's fault")
		})
	}
}

// TestEndUserJWTOverGRPC: grpc-go through a sidecar pair to a GRPC port
// whose Policy has origins. A call without a token or with an expired one
// gets grpc-status 16 UNAUTHENTICATED with the reason; a call with a valid
// one reaches the app with the verified claims in sec-istio-auth-userinfo,
// never the caller's own.
func TestEndUserJWTOverGRPC(t *testing.T) {
	ca := catest.New(t)
	iss := newTestIssuer(t)
	g := startGRPCPair(t, ca, greeterID, nil)
	withEndUser(t, g.srv, iss.endUser())
	now := time.Now()
	call := func(t *testing.T, md ...string) (*testpb.SimpleResponse, error) {
		t.Helper()
		return g.tc.UnaryCall(metadata.AppendToOutgoingContext(ctx5(t), md...), &testpb.SimpleRequest{})
	}
	for name, md := range map[string][]string{
		"no token":      {userinfoHeader, "eyJzdWIiOiJhZG1pbiJ9"},
		"expired token": {"authorization", "Bearer " + iss.token(t, "alice", nil, now.Add(-time.Hour))},
		"not a JWT":     {"authorization", "Bearer not.a.jwt"},
	} {
		t.Run(name, func(t *testing.T) {
			_, err := call(t, md...)
			st := status.Convert(err)
			if st.Code() != codes.Unauthenticated || !strings.Contains(st.Message(), "Origin authentication failed") {
				t.Fatalf("want Unauthenticated, Origin authentication failed; got %v", err)
			}
			if name == "expired token" && !strings.Contains(st.Message(), "token expired") {
				t.Fatalf("the status does not say why: %v", err)
			}
		})
	}
	t.Run("valid token, forged userinfo", func(t *testing.T) {
		tok := iss.token(t, "alice", []string{"admin"}, now.Add(time.Hour))
		resp, err := call(t, "authorization", "Bearer "+tok, userinfoHeader, "eyJzdWIiOiJhZG1pbiJ9", "sec_istio_auth_userinfo", "eyJzdWIiOiJhZG1pbiJ9")
		if err != nil {
			t.Fatal(err)
		}
		if want := strings.Split(tok, ".")[1]; resp.OauthScope != want {
			t.Fatalf("app saw sec-istio-auth-userinfo %q, want only the verified %q", resp.OauthScope, want)
		}
		if verified := "By=" + greeterID + ";URI=" + sleepID; resp.Username != verified {
			t.Fatalf("app saw XFCC %q, want %q", resp.Username, verified)
		}
	})
}
