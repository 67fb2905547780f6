package adversarial

import (
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// forgedAdmin is the identity an attacker with sleep's certificate claims.
const forgedAdmin = "By=spiffe://cluster.local/ns/default/sa/httpbin;URI=spiffe://cluster.local/ns/default/sa/admin"

const sleepXFCC = "By=spiffe://cluster.local/ns/default/sa/httpbin;URI=spiffe://cluster.local/ns/default/sa/sleep"

// TestForgedXFCCThroughALPN (issue #11 finding 1): a workload with a valid
// identity (sleep) used to get a raw relay to httpbin's app by offering
// ALPN meshauth-tcp, and the app then trusted the X-Forwarded-Client-Cert
// it wrote. The port is HTTP by policy, so the server sidecar parses every
// request whatever the client offers: the app sees sleep's verified
// identity only, and the access log lists the dropped client header.
func TestForgedXFCCThroughALPN(t *testing.T) {
	m := startMesh(t, meshOptions{})
	in := m.Httpbin.InboundAddr
	req := "GET /headers HTTP/1.1\r\nHost: httpbin:8000\r\nX-Forwarded-Client-Cert: " + forgedAdmin + "\r\nConnection: close\r\n\r\n"

	for i, alpn := range []string{"meshauth-tcp", ""} {
		t.Run("alpn="+alpn, func(t *testing.T) {
			out := openssl(t, in, m.Sleep.CertsDir, alpn, req)
			if statusOf(out) != 200 {
				t.Fatalf("want 200 from the app, got:\n%s", out)
			}
			saw := parseAppSaw(t, out)
			if xfcc := saw.header("X-Forwarded-Client-Cert"); len(xfcc) != 1 || xfcc[0] != sleepXFCC {
				t.Fatalf("app saw XFCC %q; want only sleep's verified identity %q", xfcc, sleepXFCC)
			}
			m.waitLogCount(t, "httpbin", i+1, `"msg":"http"`, `"source":"spiffe://cluster.local/ns/default/sa/sleep"`, `"dropped_headers":["X-Forwarded-Client-Cert"]`)
		})
	}

	t.Run("HTTP/2 on the HTTP/1 port", func(t *testing.T) {
		// curl negotiates ALPN h2 with sleep's certificate: the sidecar
		// terminates each HTTP/2 request (issue #14; it used to answer
		// the preface 400), and the HTTP/1.x app gets it as HTTP/1.1
		// with only the verified XFCC.
		out, errOut, code := curl(t, "-k", "--http2", "--cert", filepath.Join(m.Sleep.CertsDir, "cert-chain.pem"),
			"--key", filepath.Join(m.Sleep.CertsDir, "key.pem"), "-H", "X-Forwarded-Client-Cert: "+forgedAdmin,
			"-w", "\nHTTP/%{http_version}", "https://"+in+"/headers")
		if code != 0 || !strings.HasSuffix(out, "\nHTTP/2") {
			t.Fatalf("curl --http2: exit %d %s %s", code, out, errOut)
		}
		saw := parseAppSaw(t, out)
		if xfcc := saw.header("X-Forwarded-Client-Cert"); saw.Proto != "HTTP/1.1" || len(xfcc) != 1 || xfcc[0] != sleepXFCC {
			t.Fatalf("app saw %s with XFCC %q; want HTTP/1.1 and only %q", saw.Proto, xfcc, sleepXFCC)
		}
		m.WaitLog(t, "httpbin", 5*time.Second, `"msg":"http"`, `"protocol":"HTTP/2","dropped_headers":["X-Forwarded-Client-Cert"]`)
	})

	t.Run("h2c upgrade", func(t *testing.T) {
		up := "GET /headers HTTP/1.1\r\nHost: httpbin:8000\r\nConnection: Upgrade, HTTP2-Settings, close\r\nUpgrade: h2c\r\n" +
			"HTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA\r\nX-Forwarded-Client-Cert: " + forgedAdmin + "\r\n\r\n"
		out := openssl(t, in, m.Sleep.CertsDir, "meshauth-tcp", up)
		if statusOf(out) != 200 {
			t.Fatalf("want the app's HTTP/1.1 200 (no 101), got:\n%s", out)
		}
		if xfcc := parseAppSaw(t, out).header("X-Forwarded-Client-Cert"); len(xfcc) != 1 || xfcc[0] != sleepXFCC {
			t.Fatalf("app saw XFCC %q", xfcc)
		}
		m.WaitLog(t, "httpbin", 5*time.Second, `"msg":"http"`, `"dropped_headers":["Upgrade","X-Forwarded-Client-Cert"]`)
	})

	t.Run("CONNECT through sleep's own sidecar", func(t *testing.T) {
		// curl -p: CONNECT httpbin:8000 through sleep's sidecar, then the
		// request inside the tunnel.
		body, stderr, code := curl(t, "-p", "-x", m.Sleep.OutboundProxy,
			"-H", "X-Forwarded-Client-Cert: "+forgedAdmin, "http://httpbin:8000/headers")
		if code != 0 {
			t.Fatalf("curl -p: exit %d: %s", code, stderr)
		}
		saw := parseAppSaw(t, body)
		if xfcc := saw.header("X-Forwarded-Client-Cert"); len(xfcc) != 1 || xfcc[0] != sleepXFCC {
			t.Fatalf("app saw XFCC %q through CONNECT; want only %q", xfcc, sleepXFCC)
		}
		m.WaitLog(t, "sleep", 5*time.Second, "CONNECT to an HTTP service port; proxying the tunnel's requests as HTTP", `"target":"httpbin:8000"`)
		m.waitLogCount(t, "httpbin", 3, `"msg":"http"`, `"dropped_headers":["X-Forwarded-Client-Cert"]`)
	})
}
