package adversarial

import (
	"strings"
	"testing"
)

// userinfoSpellings are sec-istio-auth-userinfo, the header that carries
// the claims of a verified end-user token to the app, as a client could
// forge it (any case, and the spellings a CGI-style app maps to the same
// variable).
var userinfoSpellings = []string{"sec-istio-auth-userinfo", "Sec-Istio-Auth-Userinfo", "SEC_ISTIO_AUTH_USERINFO", "sec.istio.auth.userinfo"}

// forgedUserinfo is base64 of {"iss":"https://issuer.example","sub":"admin"}.
const forgedUserinfo = "eyJpc3MiOiJodHRwczovL2lzc3Vlci5leGFtcGxlIiwic3ViIjoiYWRtaW4ifQ=="

// userinfoSeen returns every sec-istio-auth-userinfo the app saw, in any
// spelling a CGI-style app maps to the same variable.
func userinfoSeen(a appSaw) []string { return cgiValues(a, "HTTP_SEC_ISTIO_AUTH_USERINFO") }

// TestForgedUserinfo (issue 16): the app trusts sec-istio-auth-userinfo as
// the claims of a token the sidecar verified, so a client's own, in any
// spelling, never reaches it: not on a port without end-user
// authentication, not on one where the token is optional and absent.
// Without a token where one is required, the request is refused (401).
func TestForgedUserinfo(t *testing.T) {
	optional := httpbinPermissive + `  origins:
  - jwt:
      issuer: https://issuer.example
      jwksUri: https://127.0.0.1:1/jwks
  originIsOptional: true
`
	var curlArgs []string
	for _, s := range userinfoSpellings {
		curlArgs = append(curlArgs, "-H", s+": "+forgedUserinfo)
	}

	t.Run("no end-user authentication, mTLS", func(t *testing.T) {
		m := startMesh(t, meshOptions{})
		var hdrs strings.Builder
		for _, s := range userinfoSpellings {
			hdrs.WriteString(s + ": " + forgedUserinfo + "\r\n")
		}
		out := openssl(t, m.Httpbin.InboundAddr, m.Sleep.CertsDir, "", "GET /headers HTTP/1.1\r\nHost: httpbin:8000\r\n"+hdrs.String()+"Connection: close\r\n\r\n")
		if statusOf(out) != 200 {
			t.Fatalf("want 200, got:\n%s", out)
		}
		if got := userinfoSeen(parseAppSaw(t, out)); len(got) != 0 {
			t.Fatalf("the app saw a client's sec-istio-auth-userinfo: %q", got)
		}
	})

	t.Run("optional origin, no token, plaintext", func(t *testing.T) {
		m := startMesh(t, meshOptions{Config: map[string]string{"jwt.yaml": optional}})
		body, stderr, code := curl(t, append(curlArgs, "-i", "http://"+m.Httpbin.InboundAddr+"/headers")...)
		if code != 0 || statusOf(body) != 200 {
			t.Fatalf("curl: code %d, %s\n%s", code, stderr, body)
		}
		if got := userinfoSeen(parseAppSaw(t, body)); len(got) != 0 {
			t.Fatalf("the app saw a client's sec-istio-auth-userinfo: %q", got)
		}
	})

	t.Run("required origin, no token or a bad one", func(t *testing.T) {
		required := strings.Replace(optional, "  originIsOptional: true\n", "", 1)
		m := startMesh(t, meshOptions{Config: map[string]string{"jwt.yaml": required}})
		for _, extra := range [][]string{nil, {"-H", "Authorization: Bearer not.a.jwt"}} {
			body, stderr, code := curl(t, append(append(append([]string{}, curlArgs...), extra...), "-i", "http://"+m.Httpbin.InboundAddr+"/headers")...)
			if code != 0 || statusOf(body) != 401 || !strings.Contains(body, "Origin authentication failed") {
				t.Fatalf("want 401 Origin authentication failed, got code %d, %s\n%s", code, stderr, body)
			}
		}
	})
}
