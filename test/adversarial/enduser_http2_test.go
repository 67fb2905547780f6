package adversarial

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	jose "github.com/go-jose/go-jose/v4"
	"github.com/go-jose/go-jose/v4/jwt"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	testpb "google.golang.org/grpc/interop/grpc_testing"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	"github.com/meshauth/meshauth/internal/localmesh"
)

// userinfoApp is a gRPC app (grpc-go's interop TestService): UnaryCall
// answers with every sec-istio-auth-userinfo it received, in any spelling
// a CGI-style mapping takes to the same variable, in OauthScope.
type userinfoApp struct {
	testpb.UnimplementedTestServiceServer
}

func (userinfoApp) UnaryCall(ctx context.Context, _ *testpb.SimpleRequest) (*testpb.SimpleResponse, error) {
	md, _ := metadata.FromIncomingContext(ctx)
	var seen []string
	for k, v := range md {
		if cgiName(k) == "HTTP_SEC_ISTIO_AUTH_USERINFO" {
			seen = append(seen, v...)
		}
	}
	return &testpb.SimpleResponse{OauthScope: strings.Join(seen, "|")}, nil
}

// TestEndUserJWTOverHTTP2 (issues #14 and #16): end-user authentication
// holds whatever HTTP version the client speaks.
//
//   - HTTP port, HTTP/2 with prior knowledge (curl): before, the sidecar
//     handed HTTP/2 on an HTTP port to its HTTP/2 path, which checked no
//     token: a request without one reached the app (200) with the
//     client's forged sec-istio-auth-userinfo. Now: 401, and with a valid
//     token the app sees only the sidecar's userinfo.
//   - GRPC port (grpc-go client, grpc-go app): before, a connection to a
//     GRPC port whose Policy has origins was refused outright. Now each
//     call is authenticated: valid token OK with the verified claims,
//     expired token UNAUTHENTICATED naming the reason, a forged userinfo
//     never reaching the app.
func TestEndUserJWTOverHTTP2(t *testing.T) {
	needTool(t, "python3")
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	key := jose.JSONWebKey{Key: k, KeyID: "k1", Algorithm: string(jose.ES256), Use: "sig"}
	jwks := serveJWKS(t, func() jose.JSONWebKey { return key })
	now := time.Now()
	token := func(aud string, exp time.Time) string {
		s, err := jose.NewSigner(jose.SigningKey{Algorithm: jose.ES256, Key: key}, (&jose.SignerOptions{}).WithHeader("kid", "k1"))
		if err != nil {
			t.Fatal(err)
		}
		raw, err := jwt.Signed(s).Claims(jwt.Claims{Issuer: "https://issuer.example", Subject: "alice", Audience: jwt.Audience{aud},
			Expiry: jwt.NewNumericDate(exp), IssuedAt: jwt.NewNumericDate(now.Add(-time.Minute))}).Serialize()
		if err != nil {
			t.Fatal(err)
		}
		return raw
	}
	policyFor := func(svc string) string {
		return `apiVersion: authentication.istio.io/v1alpha1
kind: Policy
metadata: {name: ` + svc + `-jwt, namespace: default}
spec:
  targets: [{name: ` + svc + `}]
  peers: [{mtls: {mode: PERMISSIVE}}]
  origins:
  - jwt:
      issuer: https://issuer.example
      audiences: [` + svc + `]
      jwksUri: ` + jwks.URL + `/jwks
`
	}
	m := startMesh(t, meshOptions{Config: map[string]string{"jwt-httpbin.yaml": policyFor("httpbin"), "jwt-grpcbin.yaml": policyFor("grpcbin")}})

	t.Run("HTTP port, HTTP/2 prior knowledge", func(t *testing.T) {
		h2 := func(extra ...string) (code, body string) {
			args := []string{"--http2-prior-knowledge", "-o", "-", "-w", "\n%{http_code} %{http_version}"}
			for _, s := range userinfoSpellings {
				args = append(args, "-H", s+": "+forgedUserinfo)
			}
			out, stderr, exit := curl(t, append(append(args, extra...), "http://"+m.Httpbin.InboundAddr+"/headers")...)
			i := strings.LastIndexByte(out, '\n')
			if exit != 0 || i < 0 || !strings.HasSuffix(out, " 2") {
				t.Fatalf("curl over HTTP/2: exit %d %s\n%s", exit, stderr, out)
			}
			return strings.Fields(out[i+1:])[0], out[:i]
		}
		for _, extra := range [][]string{nil, {"-H", "Authorization: Bearer " + token("httpbin", now.Add(-time.Hour))}} {
			if code, body := h2(extra...); code != "401" || !strings.Contains(body, "Origin authentication failed") {
				t.Fatalf("%v: want 401 Origin authentication failed, got %s\n%s", extra, code, body)
			}
		}
		tok := token("httpbin", now.Add(time.Hour))
		code, body := h2("-H", "Authorization: Bearer "+tok)
		if code != "200" {
			t.Fatalf("valid token: want 200, got %s\n%s", code, body)
		}
		if seen := userinfoSeen(parseAppSaw(t, body)); len(seen) != 1 || seen[0] != strings.Split(tok, ".")[1] {
			t.Fatalf("app saw sec-istio-auth-userinfo %q; want only the verified claims", seen)
		}
	})

	t.Run("GRPC port, grpc-go", func(t *testing.T) {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		gs := grpc.NewServer()
		testpb.RegisterTestServiceServer(gs, userinfoApp{})
		go gs.Serve(ln)
		defer gs.Stop()
		fwd := filepath.Join(t.TempDir(), "forward.py")
		if err := os.WriteFile(fwd, []byte(tcpForwarder), 0o644); err != nil {
			t.Fatal(err)
		}
		g, err := m.StartWorkload(context.Background(), localmesh.WorkloadSpec{
			Name: "grpcbin", Namespace: "default", ServiceAccount: "grpcbin", Service: "grpcbin", ServicePort: 9000,
			App: []string{"python3", fwd, "{{port}}", ln.Addr().String()},
		})
		if err != nil {
			t.Fatal(err)
		}
		m.declareGRPC(t, "grpcbin")
		conn, err := grpc.NewClient(g.InboundAddr, grpc.WithTransportCredentials(insecure.NewCredentials()))
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Close()
		tc := testpb.NewTestServiceClient(conn)
		call := func(tok string) (*testpb.SimpleResponse, error) {
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			defer cancel()
			md := []string{"sec-istio-auth-userinfo", forgedUserinfo, "sec_istio_auth_userinfo", forgedUserinfo}
			if tok != "" {
				md = append(md, "authorization", "Bearer "+tok)
			}
			return tc.UnaryCall(metadata.AppendToOutgoingContext(ctx, md...), &testpb.SimpleRequest{})
		}
		// Positive control, once the sidecar has the GRPC port and its
		// Policy: a valid token's call gets through.
		tok := token("grpcbin", now.Add(time.Hour))
		deadline := time.Now().Add(20 * time.Second)
		var resp *testpb.SimpleResponse
		for {
			if resp, err = call(tok); err == nil {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("a call with a valid token never got through the GRPC port; last: %v", err)
			}
			time.Sleep(200 * time.Millisecond)
		}
		if resp.OauthScope != strings.Split(tok, ".")[1] {
			t.Fatalf("app saw sec-istio-auth-userinfo %q; want only the verified claims", resp.OauthScope)
		}
		for name, tok := range map[string]string{"no token": "", "expired": token("grpcbin", now.Add(-time.Hour)), "other audience": token("httpbin", now.Add(time.Hour))} {
			_, err := call(tok)
			if st := status.Convert(err); st.Code() != codes.Unauthenticated || !strings.Contains(st.Message(), "Origin authentication failed") {
				t.Errorf("%s: want UNAUTHENTICATED, Origin authentication failed; got %v", name, err)
			} else if name == "expired" && !strings.Contains(st.Message(), "token expired") {
				t.Errorf("expired: the status does not say why: %v", err)
			}
		}
		m.waitLogCount(t, "grpcbin", 1, `"msg":"http"`, `"protocol":"HTTP/2"`, `"grpc_status":"16"`, `"reason":"jwt: token expired`)
	})
}
