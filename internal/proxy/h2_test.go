package proxy

import (
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"os/exec"
	"strings"
	"testing"

	"github.com/meshauth/meshauth/internal/ca/catest"
	"github.com/meshauth/meshauth/internal/policy"
)

// FuzzH2Target: whatever :path and method a client sends, h2Target either
// refuses it or returns a normal path (what is authorized is what the app
// gets) and the query as sent.
func FuzzH2Target(f *testing.F) {
	for _, s := range []string{"/a/../b?q=1", "*", "/public/%2e%2e/secret", "//x", "/a;/..;/b", "http://h/x", "/%2F", "/grpc.health.v1.Health/Check"} {
		f.Add("GET", s)
		f.Add("OPTIONS", s)
	}
	f.Fuzz(func(t *testing.T, method, target string) {
		r := &http.Request{Method: method, RequestURI: target}
		path, query, msg := h2Target(r)
		if msg != "" {
			return
		}
		if path == "*" {
			if method != http.MethodOptions || target != "*" {
				t.Fatalf("%s %q: \"*\" accepted", method, target)
			}
			return
		}
		if !strings.HasPrefix(path, "/") {
			t.Fatalf("%q -> %q: not a path", target, path)
		}
		if n, err := policy.NormalizePath(path); err != nil || n != path {
			t.Fatalf("%q -> %q: normalising again gives %q, %v", target, path, n, err)
		}
		if _, q, ok := strings.Cut(target, "?"); ok && q != query || !ok && query != "" {
			t.Fatalf("%q: query %q, want it as sent", target, query)
		}
	})
}

// TestGRPCEncodeMessage: grpc-message is percent-encoded outside
// printable ASCII, '%' included.
func TestGRPCEncodeMessage(t *testing.T) {
	for in, want := range map[string]string{
		"RBAC: access denied": "RBAC: access denied",
		"100% \n\xff":         "100%25 %0A%FF",
	} {
		if got := grpcEncodeMessage(in); got != want {
			t.Errorf("grpcEncodeMessage(%q) = %q, want %q", in, got, want)
		}
	}
}

// TestH2CPriorKnowledgeOnHTTPPort (issue #14): curl with HTTP/2 prior
// knowledge to the client sidecar's --upstream port of an HTTP service:
// the client sidecar terminates HTTP/2 (the preface, detected on an HTTP
// port) and carries each request to the server sidecar over mTLS with
// ALPN h2; the server sidecar authorizes it and the HTTP/1.x app gets it
// as HTTP/1.1 with the verified XFCC, never the forged one.
func TestH2CPriorKnowledgeOnHTTPPort(t *testing.T) {
	if _, err := exec.LookPath("curl"); err != nil {
		t.Skip("curl not installed")
	}
	srv, cli := startHTTPPair(t)
	out, err := exec.Command("curl", "-sS", "--path-as-is", "--http2-prior-knowledge", "-H", "X-Forwarded-Client-Cert: "+forgedXFCC,
		"-w", "\n%{http_version}", "http://"+cli.UpstreamAddrs[0].String()+"/a/../headers?x=1").CombinedOutput()
	if err != nil {
		t.Fatalf("curl: %v: %s", err, out)
	}
	i := strings.LastIndexByte(string(out), '\n')
	body, version := string(out[:i]), string(out[i+1:])
	var saw sawApp
	if err := json.Unmarshal([]byte(body), &saw); err != nil {
		t.Fatalf("curl got %q: %v", out, err)
	}
	if version != "2" || saw.Proto != "HTTP/1.1" || saw.Target != "/headers?x=1" {
		t.Fatalf("curl spoke HTTP/%s, app saw %s %q; want HTTP/2 from curl, HTTP/1.1 at the app, the normalised path", version, saw.Proto, saw.Target)
	}
	if got, want := saw.xfccLike(), "By="+httpbinID+";URI="+sleepID; len(got) != 1 || got[0] != want {
		t.Fatalf("app saw XFCC %q, want only %q", got, want)
	}
	if n := counterValue(t, srv.m.Handshakes.WithLabelValues("inbound", "ok", "mtls")); n != 1 {
		t.Fatalf("%v mTLS handshakes at the server sidecar, want 1", n)
	}
	waitFor(t, func() bool {
		return strings.Contains(srv.log.String(), `"path":"/headers","status":200,"decision":"allow","reason":"","duration"`) &&
			strings.Contains(cli.log.String(), `"direction":"outbound"`)
	}, "both sidecars' access log lines")
}

// startHTTPPair is an HTTP/1.x (and h2c) echo app behind a server sidecar
// (STRICT, port declared HTTP) and a client sidecar whose --upstream port
// leads to service httpbin:8000 there.
func startHTTPPair(t testing.TB) (srv, cli *sidecar) {
	ca := catest.New(t)
	srv = startEcho2(t, ca, policy.ServerStrict, "HTTP", nil)
	cli = startSidecar(t, ca, sleepID, sidecarOpts{
		snap: &policy.Snapshot{TrustDomain: "cluster.local",
			Outbound: []policy.OutboundService{httpbinService(t, srv.InboundAddrs[0].String(), policy.ClientIstioMutual, httpbinID)}},
		upstreams: []Upstream{{Listen: "127.0.0.1:0", Service: "httpbin:8000"}},
	})
	return srv, cli
}

// TestH2LoadThroughPair (issue #14): h2load (nghttp2) sends 2,000 HTTP/2
// requests over 4 connections, 20 streams at once on each, through the
// client sidecar's --upstream port of an HTTP service: every one succeeds
// and the server sidecar authorized every one of them on the one mTLS
// connection the client sidecar multiplexes them on.
func TestH2LoadThroughPair(t *testing.T) {
	if _, err := exec.LookPath("h2load"); err != nil {
		t.Skip("h2load not installed (apt-get install nghttp2-client)")
	}
	srv, cli := startHTTPPair(t)
	out, err := exec.Command("h2load", "-n", "2000", "-c", "4", "-m", "20",
		"http://"+cli.UpstreamAddrs[0].String()+"/headers").CombinedOutput()
	if err != nil {
		t.Fatalf("h2load: %v\n%s", err, out)
	}
	if !strings.Contains(string(out), "requests: 2000 total, 2000 started, 2000 done, 2000 succeeded, 0 failed, 0 errored") ||
		!strings.Contains(string(out), "status codes: 2000 2xx") {
		t.Fatalf("h2load:\n%s", out)
	}
	if n := counterValue(t, srv.m.Requests.WithLabelValues("inbound", "2xx")); n != 2000 {
		t.Fatalf("the server sidecar answered %v requests 2xx, want 2000", n)
	}
	if n := counterValue(t, srv.m.Handshakes.WithLabelValues("inbound", "ok", "mtls")); n != 1 {
		t.Fatalf("%v mTLS handshakes at the server sidecar, want 1 (multiplexed)", n)
	}
}

// TestCopyResponseDropsHopByHop: an HTTP/1.x app's hop-by-hop fields,
// and those its Connection field names, do not reach an HTTP/2 client;
// the body and trailers do.
func TestCopyResponseDropsHopByHop(t *testing.T) {
	resp := &http.Response{StatusCode: 200, ContentLength: -1,
		Header: http.Header{"Connection": {"X-Hop, close"}, "X-Hop": {"1"}, "Keep-Alive": {"timeout=5"}, "X-Keep": {"2"}},
		Body:   io.NopCloser(strings.NewReader("body")), Trailer: http.Header{"Grpc-Status": {"0"}}}
	rec := httptest.NewRecorder()
	gs, err := copyResponse(rec, resp, newStreamIdle(0, func() {}), 0)
	if err != nil || gs != "0" {
		t.Fatalf("copyResponse: grpc-status %q, %v", gs, err)
	}
	h := rec.Result().Header
	for _, k := range []string{"Connection", "X-Hop", "Keep-Alive"} {
		if _, ok := h[k]; ok {
			t.Errorf("hop-by-hop %s passed: %v", k, h)
		}
	}
	if h.Get("X-Keep") != "2" || rec.Body.String() != "body" || rec.Result().Trailer.Get("Grpc-Status") != "0" {
		t.Errorf("header %v, body %q, trailer %v", h, rec.Body.String(), rec.Result().Trailer)
	}
}
