package adversarial

import (
	"strings"
	"testing"
	"time"
)

// underscoreSpellings are X-Forwarded-Client-Cert as CGI, WSGI, PHP and
// Rack apps see it (HTTP_X_FORWARDED_CLIENT_CERT) from differently spelled
// header names.
var underscoreSpellings = []string{"X_Forwarded_Client_Cert", "x_forwarded_client_cert", "X-Forwarded_Client-Cert", "X.Forwarded.Client.Cert"}

// cgiName is the variable name a CGI-style app derives from a header name.
func cgiName(h string) string {
	var sb strings.Builder
	for _, c := range strings.ToUpper(h) {
		if c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' {
			sb.WriteRune(c)
		} else {
			sb.WriteByte('_')
		}
	}
	return "HTTP_" + sb.String()
}

// httpbinPermissive is a Policy that makes httpbin's port PERMISSIVE.
const httpbinPermissive = `apiVersion: authentication.istio.io/v1alpha1
kind: Policy
metadata:
  name: httpbin-permissive
  namespace: default
spec:
  targets:
  - name: httpbin
  peers:
  - mtls:
      mode: PERMISSIVE
`

// cgiXFCC returns every value the app saw under a header that a CGI-style
// app maps to HTTP_X_FORWARDED_CLIENT_CERT.
func cgiXFCC(a appSaw) []string { return cgiValues(a, "HTTP_X_FORWARDED_CLIENT_CERT") }

// cgiValues returns every value the app saw under a header that a
// CGI-style app maps to the variable v.
func cgiValues(a appSaw, v string) []string {
	var out []string
	for k, vals := range a.Headers {
		if cgiName(k) == v {
			out = append(out, vals...)
		}
	}
	return out
}

// TestUnderscoreXFCC (issue #11 finding 3): X_Forwarded_Client_Cert and
// the other spellings an app maps to the same variable used to pass the
// sidecar untouched, with a certificate (STRICT) and, on a PERMISSIVE
// port, with none at all. Now every spelling is dropped (and listed in the
// access log), and only the sidecar's own XFCC reaches the app.
func TestUnderscoreXFCC(t *testing.T) {
	permissive := httpbinPermissive
	m := startMesh(t, meshOptions{Config: map[string]string{"permissive.yaml": permissive}})
	in := m.Httpbin.InboundAddr
	var hdrs strings.Builder
	var curlArgs []string
	for _, s := range underscoreSpellings {
		hdrs.WriteString(s + ": " + forgedAdmin + "\r\n")
		curlArgs = append(curlArgs, "-H", s+": "+forgedAdmin)
	}
	dropped := `"dropped_headers":["` + strings.Join(underscoreSpellings, `","`) + `"]`

	t.Run("mTLS with sleep's certificate", func(t *testing.T) {
		out := openssl(t, in, m.Sleep.CertsDir, "", "GET /headers HTTP/1.1\r\nHost: httpbin:8000\r\n"+hdrs.String()+"Connection: close\r\n\r\n")
		if statusOf(out) != 200 {
			t.Fatalf("want 200, got:\n%s", out)
		}
		if got := cgiXFCC(parseAppSaw(t, out)); len(got) != 1 || got[0] != sleepXFCC {
			t.Fatalf("a CGI app would read HTTP_X_FORWARDED_CLIENT_CERT from %q; want only %q", got, sleepXFCC)
		}
		m.WaitLog(t, "httpbin", 5*time.Second, `"msg":"http"`, `"source":"spiffe://cluster.local/ns/default/sa/sleep"`, dropped)
	})

	t.Run("PERMISSIVE plaintext, no certificate", func(t *testing.T) {
		body, stderr, code := curl(t, append(curlArgs, "http://"+in+"/headers")...)
		if code != 0 {
			t.Fatalf("curl: exit %d: %s", code, stderr)
		}
		if got := cgiXFCC(parseAppSaw(t, body)); len(got) != 0 {
			t.Fatalf("a plaintext caller made the app see XFCC %q", got)
		}
		m.WaitLog(t, "httpbin", 5*time.Second, `"msg":"http"`, `"source":"127.0.0.1:`, `"tls_mode":"PERMISSIVE"`, dropped)
	})
}
