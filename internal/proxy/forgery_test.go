package proxy

import (
	"bufio"
	"context"
	"crypto/tls"
	"encoding/json"
	"io"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	"golang.org/x/net/http2"
	"golang.org/x/net/http2/h2c"

	"github.com/meshauth/meshauth/internal/ca/catest"
	"github.com/meshauth/meshauth/internal/policy"
)

// Issue #11 findings 1, 3 and 4: a caller with a valid mesh identity tries
// to forge the identity the app sees (X-Forwarded-Client-Cert) or to escape
// a path rule. Every test here failed on the code before the fix.

const forgedXFCC = "By=spiffe://cluster.local/ns/default/sa/httpbin;URI=spiffe://cluster.local/ns/default/sa/admin"

// sawApp is what echoApp2 received.
type sawApp struct {
	Method  string              `json:"method"`
	Target  string              `json:"target"`
	Proto   string              `json:"proto"`
	Headers map[string][]string `json:"headers"`
	Trailer map[string][]string `json:"trailer"`
}

// xfccLike returns every value of every field whose name any CGI-style
// mapping would take to HTTP_X_FORWARDED_CLIENT_CERT, in headers and
// trailers.
func (s sawApp) xfccLike() []string {
	var out []string
	for _, m := range []map[string][]string{s.Headers, s.Trailer} {
		for k, v := range m {
			if normalEqual([]byte(k), "x-forwarded-client-cert") {
				out = append(out, v...)
			}
		}
	}
	return out
}

// echoApp2 echoes the request target as received, the headers and the
// trailers (after reading the body) as JSON. It speaks HTTP/1.1, HTTP/2
// with prior knowledge and h2c upgrades, as many Go apps do.
func echoApp2(t testing.TB) net.Listener {
	t.Helper()
	h := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		io.Copy(io.Discard, r.Body)
		w.Header().Set("Content-Type", "application/json")
		json.NewEncoder(w).Encode(sawApp{Method: r.Method, Target: r.RequestURI, Proto: r.Proto, Headers: r.Header, Trailer: r.Trailer})
	})
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: h2c.NewHandler(h, &http2.Server{})}
	go srv.Serve(ln)
	t.Cleanup(func() { srv.Close() })
	return ln
}

// startEcho2 is a sidecar with one inbound port 80 of the given mode,
// protocol and RBAC in front of echoApp2.
func startEcho2(t testing.TB, ca *catest.CA, mode policy.ServerMode, proto string, rbac *policy.RBAC) *sidecar {
	t.Helper()
	app := echoApp2(t)
	return startSidecar(t, ca, httpbinID, sidecarOpts{
		snap: &policy.Snapshot{TrustDomain: "cluster.local", InboundDefault: policy.ServerStrict, RBAC: rbac,
			Inbound: []policy.InboundPort{{Port: 80, Mode: mode, Protocol: proto, Service: "httpbin.default"}}},
		inbound:          []InboundListener{{Listen: "127.0.0.1:0", App: app.Addr().String(), Port: 80}},
		handshakeTimeout: 300 * time.Millisecond,
	})
}

// rawExchange writes req on conn and reads one response (and, if the app
// answered, what it saw).
func rawExchange(t *testing.T, conn net.Conn, req string) (*http.Response, *sawApp) {
	t.Helper()
	conn.SetDeadline(time.Now().Add(5 * time.Second))
	if _, err := io.WriteString(conn, req); err != nil {
		t.Fatalf("write: %v", err)
	}
	resp, err := http.ReadResponse(bufio.NewReader(conn), nil)
	if err != nil {
		t.Fatalf("response to %q: %v", req, err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	if resp.Header.Get(reasonHeader) != "" || !strings.HasPrefix(string(b), "{") {
		return resp, nil
	}
	var s sawApp
	if err := json.Unmarshal(b, &s); err != nil {
		t.Fatalf("app answer %q: %v", b, err)
	}
	return resp, &s
}

func mtlsConn(t *testing.T, addr string, c *catest.Cert, alpn string) *tls.Conn {
	t.Helper()
	cfg := &tls.Config{InsecureSkipVerify: true, Certificates: []tls.Certificate{c.TLS}}
	if alpn != "" {
		cfg.NextProtos = []string{alpn}
	}
	conn, err := tls.Dial("tcp", addr, cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return conn
}

// TestHTTPPortIgnoresClientALPN (finding 1): on a port declared HTTP every
// request is parsed and gets the verified XFCC, whatever ALPN the client
// offered. Before the fix, ALPN meshauth-tcp got a raw relay and the app saw
// the caller's forged XFCC.
func TestHTTPPortIgnoresClientALPN(t *testing.T) {
	ca := catest.New(t)
	srv := startEcho2(t, ca, policy.ServerStrict, "HTTP", nil)
	addr := srv.InboundAddrs[0].String()
	sleep := ca.Issue(t, sleepID)
	want := "By=" + httpbinID + ";URI=" + sleepID
	for _, alpn := range []string{alpnTCP, "", alpnHTTP1} {
		t.Run("alpn="+alpn, func(t *testing.T) {
			conn := mtlsConn(t, addr, sleep, alpn)
			for i := 0; i < 2; i++ { // and the next request on the connection
				resp, saw := rawExchange(t, conn, "GET /headers HTTP/1.1\r\nHost: httpbin\r\nX-Forwarded-Client-Cert: "+forgedXFCC+"\r\n\r\n")
				if resp.StatusCode != 200 || saw == nil {
					t.Fatalf("status %d", resp.StatusCode)
				}
				if got := saw.xfccLike(); len(got) != 1 || got[0] != want {
					t.Fatalf("request %d: app saw XFCC %q, want only %q", i, got, want)
				}
			}
		})
	}
	t.Run("HTTP/2 prior knowledge on an HTTP/1 port is terminated per request", func(t *testing.T) {
		// Issue #14: before, the preface was answered 400; now each
		// HTTP/2 request is authorized, gets the verified XFCC and
		// reaches the HTTP/1.x app as HTTP/1.1.
		req, _ := http.NewRequest("GET", "http://httpbin/headers", nil)
		req.Header.Set("X-Forwarded-Client-Cert", forgedXFCC)
		resp, err := h2Client(addr, sleep).Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		var saw sawApp
		if err := json.NewDecoder(resp.Body).Decode(&saw); err != nil || saw.Proto != "HTTP/1.1" {
			t.Fatalf("status %d, app saw %+v (%v); want the app's answer over HTTP/1.1", resp.StatusCode, saw, err)
		}
		if got := saw.xfccLike(); len(got) != 1 || got[0] != want {
			t.Fatalf("app saw XFCC %q, want only %q", got, want)
		}
	})
	t.Run("h2c upgrade stripped", func(t *testing.T) {
		conn := mtlsConn(t, addr, sleep, alpnTCP)
		resp, saw := rawExchange(t, conn, "GET /headers HTTP/1.1\r\nHost: httpbin\r\nConnection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\nHTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA\r\n\r\n")
		if resp.StatusCode != 200 || saw == nil || saw.Proto != "HTTP/1.1" {
			t.Fatalf("status %d, app saw %+v; want the app's HTTP/1.1 answer, no 101", resp.StatusCode, saw)
		}
		waitFor(t, func() bool { return strings.Contains(srv.log.String(), `"dropped_headers":["Upgrade"]`) }, "the access log lists the dropped upgrade")
	})
}

// TestPlaintextSilentClientStaysHTTP (findings 1 and 3): in PERMISSIVE, a
// plaintext client that waits past the sniff deadline before sending used to
// get a raw relay (taken for a server-first protocol), so its XFCC reached
// the app. On an HTTP port it is served by the HTTP engine.
func TestPlaintextSilentClientStaysHTTP(t *testing.T) {
	ca := catest.New(t)
	srv := startEcho2(t, ca, policy.ServerPermissive, "HTTP", nil)
	conn, err := net.Dial("tcp", srv.InboundAddrs[0].String())
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	time.Sleep(600 * time.Millisecond) // twice the handshake timeout
	resp, saw := rawExchange(t, conn, "GET /headers HTTP/1.1\r\nHost: httpbin\r\nX_Forwarded_Client_Cert: "+forgedXFCC+"\r\nX-Forwarded-Client-Cert: "+forgedXFCC+"\r\n\r\n")
	if resp.StatusCode != 200 || saw == nil {
		t.Fatalf("status %d", resp.StatusCode)
	}
	if got := saw.xfccLike(); len(got) != 0 {
		t.Fatalf("plaintext request reached the app with XFCC %q", got)
	}
}

// TestConnectToHTTPServiceIsProxiedAsHTTP (finding 1, client side): CONNECT
// through the caller's own sidecar to an HTTP service no longer yields a
// byte tunnel; the tunnel's requests are proxied as HTTP, and the app sees
// the verified identity only.
func TestConnectToHTTPServiceIsProxiedAsHTTP(t *testing.T) {
	ca := catest.New(t)
	srv := startEcho2(t, ca, policy.ServerStrict, "HTTP", nil)
	cli := startSidecar(t, ca, sleepID, sidecarOpts{outbound: true, snap: &policy.Snapshot{
		TrustDomain: "cluster.local",
		Outbound:    []policy.OutboundService{httpbinService(t, srv.InboundAddrs[0].String(), policy.ClientIstioMutual, httpbinID)},
	}})
	conn, err := net.Dial("tcp", cli.OutboundAddr.String())
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	conn.SetDeadline(time.Now().Add(5 * time.Second))
	io.WriteString(conn, "CONNECT httpbin:8000 HTTP/1.1\r\nHost: httpbin:8000\r\n\r\n")
	br := bufio.NewReader(conn)
	resp, err := http.ReadResponse(br, &http.Request{Method: "CONNECT"})
	if err != nil || resp.StatusCode != 200 {
		t.Fatalf("CONNECT: %v %v", resp, err)
	}
	io.WriteString(conn, "GET /headers HTTP/1.1\r\nHost: httpbin:8000\r\nX-Forwarded-Client-Cert: "+forgedXFCC+"\r\n\r\n")
	resp, err = http.ReadResponse(br, nil)
	if err != nil {
		t.Fatal(err)
	}
	var saw sawApp
	json.NewDecoder(resp.Body).Decode(&saw)
	resp.Body.Close()
	want := "By=" + httpbinID + ";URI=" + sleepID
	if got := saw.xfccLike(); len(got) != 1 || got[0] != want {
		t.Fatalf("app saw XFCC %q through CONNECT, want only %q", got, want)
	}
	waitFor(t, func() bool {
		return strings.Contains(cli.log.String(), "CONNECT to an HTTP service port; proxying the tunnel's requests as HTTP")
	}, "the client sidecar logs the CONNECT handled as HTTP")
}

// h2Client speaks HTTP/2 with prior knowledge over mTLS with ALPN
// meshauth-tcp, as a client sidecar's tunnel does.
func h2Client(addr string, c *catest.Cert) *http.Client {
	tr := &http2.Transport{AllowHTTP: true, DialTLSContext: func(ctx context.Context, _, _ string, _ *tls.Config) (net.Conn, error) {
		d := tls.Dialer{Config: &tls.Config{InsecureSkipVerify: true, Certificates: []tls.Certificate{c.TLS}, NextProtos: []string{alpnTCP}}}
		return d.DialContext(ctx, "tcp", addr)
	}}
	return &http.Client{Transport: tr, Timeout: 5 * time.Second}
}

// TestHTTP2PortStripsClientXFCC (finding 1, HTTP/2; issue #14): on a
// GRPC/HTTP2 port every HTTP/2 request is terminated: a client
// X-Forwarded-Client-Cert in any spelling, in the header block or the
// trailers, is dropped (and named in the access log) and the app gets the
// verified one; a plaintext PERMISSIVE peer's request reaches the app with
// none. Before: the byte relay passed the forged header to the app, then
// the HPACK guard ended the whole connection.
func TestHTTP2PortStripsClientXFCC(t *testing.T) {
	ca := catest.New(t)
	srv := startEcho2(t, ca, policy.ServerPermissive, "GRPC", nil)
	addr := srv.InboundAddrs[0].String()
	sleep := ca.Issue(t, sleepID)
	verified := "By=" + httpbinID + ";URI=" + sleepID

	get := func(t *testing.T, cl *http.Client, name string, trailer bool) *sawApp {
		t.Helper()
		var body io.Reader
		method := "GET"
		if trailer {
			method, body = "POST", io.MultiReader(strings.NewReader("abc"))
		}
		req, _ := http.NewRequest(method, "http://httpbin/headers", body)
		if name != "" && !trailer {
			req.Header[name] = []string{forgedXFCC}
		}
		if trailer {
			req.Trailer = http.Header{name: []string{forgedXFCC}, "X-Other-Trailer": []string{"kept"}}
		}
		resp, err := cl.Do(req)
		if err != nil {
			t.Fatalf("HTTP/2 request with %q: %v", name, err)
		}
		defer resp.Body.Close()
		var s sawApp
		if err := json.NewDecoder(resp.Body).Decode(&s); err != nil || s.Proto != "HTTP/2.0" {
			t.Fatalf("HTTP/2 request with %q: status %d, app saw %+v (%v)", name, resp.StatusCode, s, err)
		}
		return &s
	}
	names := []string{"X-Forwarded-Client-Cert", "X_forwarded_client_cert", "X.forwarded.client.cert"}
	for _, name := range names {
		t.Run("mTLS/"+name, func(t *testing.T) {
			if got := get(t, h2Client(addr, sleep), name, false).xfccLike(); len(got) != 1 || got[0] != verified {
				t.Fatalf("app saw XFCC %q, want only the verified %q", got, verified)
			}
			waitFor(t, func() bool {
				return strings.Contains(srv.log.String(), `"protocol":"HTTP/2","dropped_headers":["`+name+`"]`)
			}, "the access log names the dropped %s", name)
		})
		t.Run("trailer/"+name, func(t *testing.T) {
			saw := get(t, h2Client(addr, sleep), name, true)
			if got := saw.xfccLike(); len(got) != 1 || got[0] != verified {
				t.Fatalf("app saw XFCC %q (trailers %v), want only the verified %q", got, saw.Trailer, verified)
			}
			if len(saw.Trailer["X-Other-Trailer"]) == 0 {
				t.Errorf("an unrelated trailer was dropped: %v", saw.Trailer)
			}
		})
		t.Run("plaintext/"+name, func(t *testing.T) {
			if got := get(t, h2cClient(addr), name, false).xfccLike(); len(got) != 0 {
				t.Fatalf("app saw XFCC %q from a plaintext peer, want none", got)
			}
		})
	}
}

// h2cClient speaks HTTP/2 with prior knowledge in plaintext.
func h2cClient(addr string) *http.Client {
	tr := &http2.Transport{AllowHTTP: true, DialTLSContext: func(ctx context.Context, _, _ string, _ *tls.Config) (net.Conn, error) {
		var d net.Dialer
		return d.DialContext(ctx, "tcp", addr)
	}}
	return &http.Client{Transport: tr, Timeout: 5 * time.Second}
}

// TestUnderscoreXFCCDropped (finding 3): every spelling an app maps to
// HTTP_X_FORWARDED_CLIENT_CERT is dropped, in STRICT (mTLS) and PERMISSIVE
// plaintext, in headers and chunked trailers; another spelling of a framing
// field is dropped; other underscore fields pass.
func TestUnderscoreXFCCDropped(t *testing.T) {
	ca := catest.New(t)
	srv := startEcho2(t, ca, policy.ServerPermissive, "HTTP", nil)
	addr := srv.InboundAddrs[0].String()
	req := "POST /post HTTP/1.1\r\nHost: httpbin\r\n" +
		"X_Forwarded_Client_Cert: " + forgedXFCC + "\r\n" +
		"x_forwarded_client_cert: " + forgedXFCC + "\r\n" +
		"X-Forwarded_Client-Cert: " + forgedXFCC + "\r\n" +
		"X.Forwarded.Client.Cert: " + forgedXFCC + "\r\n" +
		"X-FORWARDED-CLIENT-CERT: " + forgedXFCC + "\r\n" +
		"Transfer_Encoding: chunked\r\n" +
		"Content_Length: 99\r\n" +
		"X_Custom_Thing: kept\r\n" +
		"Transfer-Encoding: chunked\r\n\r\n" +
		"3\r\nabc\r\n0\r\nX_Forwarded_Client_Cert: " + forgedXFCC + "\r\nX-Other-Trailer: kept\r\n\r\n"
	check := func(t *testing.T, conn net.Conn, want []string) {
		resp, saw := rawExchange(t, conn, req)
		if resp.StatusCode != 200 || saw == nil {
			t.Fatalf("status %d", resp.StatusCode)
		}
		if got := saw.xfccLike(); strings.Join(got, "|") != strings.Join(want, "|") {
			t.Fatalf("app saw XFCC %q, want %q", got, want)
		}
		for k := range saw.Headers {
			if normalEqual([]byte(k), "transfer-encoding") || normalEqual([]byte(k), "content-length") {
				t.Errorf("app saw framing field %q", k)
			}
		}
		if len(saw.Headers["X_custom_thing"]) == 0 && len(saw.Headers["X_Custom_Thing"]) == 0 {
			t.Errorf("an unrelated underscore field was dropped: %v", saw.Headers)
		}
		if len(saw.Trailer["X-Other-Trailer"]) == 0 {
			t.Errorf("an unrelated trailer was dropped: %v", saw.Trailer)
		}
	}
	t.Run("STRICT-style mTLS", func(t *testing.T) {
		check(t, mtlsConn(t, addr, ca.Issue(t, sleepID), alpnHTTP1), []string{"By=" + httpbinID + ";URI=" + sleepID})
	})
	t.Run("PERMISSIVE plaintext", func(t *testing.T) {
		conn, err := net.Dial("tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Close()
		check(t, conn, nil)
	})
	waitFor(t, func() bool {
		return strings.Contains(srv.log.String(), `"dropped_headers":["X_Forwarded_Client_Cert","x_forwarded_client_cert","X-Forwarded_Client-Cert","X.Forwarded.Client.Cert","X-FORWARDED-CLIENT-CERT","Transfer_Encoding","Content_Length"]`)
	}, "the access log lists every dropped field")
}

// TestPathNormalizedBeforeRBAC (finding 4): with a ServiceRole that allows
// only /public/* (and *.html), paths that an app normalises to /secret are
// denied or refused, and allowed ones reach the app in normal form.
func TestPathNormalizedBeforeRBAC(t *testing.T) {
	ca := catest.New(t)
	rbac := &policy.RBAC{Policies: []policy.RBACPolicy{{
		Role: "default/public", Bindings: []string{"default/public"},
		Rules:    []policy.RBACRule{{Services: []string{"*"}, Methods: []string{"GET"}, Paths: []string{"/public/*", "*.html"}}},
		Subjects: []policy.RBACSubject{{User: sleepID}},
	}}}
	srv := startEcho2(t, ca, policy.ServerStrict, "HTTP", rbac)
	addr := srv.InboundAddrs[0].String()
	sleep := ca.Issue(t, sleepID)
	for _, tc := range []struct {
		target string
		status int
		saw    string // target the app saw, for 200
	}{
		{"/public/a", 200, "/public/a"},
		{"/public/a/../b", 200, "/public/b"},
		{"/public/%61?q=%2F..%2F&x", 200, "/public/a?q=%2F..%2F&x"},
		{"http://httpbin/public/./c", 200, "/public/c"},
		{"/public/../secret", 403, ""},
		{"/public/%2e%2e/secret", 403, ""},
		{"/public/%2E%2E/secret", 403, ""},
		{"//secret", 403, ""},
		{"/./secret", 403, ""},
		{"/public//../secret", 403, ""},
		{"/secret;.html", 403, ""},
		{"/public/..%2fsecret", 400, ""},
		{"/public/..%5Csecret", 400, ""},
		{"/public/..\\secret", 400, ""},
		{"/public/..;/secret", 400, ""},
		{"/public/a#x", 400, ""},
		{"*", 400, ""},
	} {
		t.Run(tc.target, func(t *testing.T) {
			conn := mtlsConn(t, addr, sleep, alpnHTTP1)
			resp, saw := rawExchange(t, conn, "GET "+tc.target+" HTTP/1.1\r\nHost: httpbin\r\n\r\n")
			if resp.StatusCode != tc.status {
				t.Fatalf("status %d, want %d (app saw %+v)", resp.StatusCode, tc.status, saw)
			}
			if tc.status != 200 {
				if saw != nil {
					t.Fatalf("the app saw %q", saw.Target)
				}
				return
			}
			if saw == nil || saw.Target != tc.saw {
				t.Fatalf("app saw %+v, want target %q", saw, tc.saw)
			}
		})
	}
	lines := srv.log.String()
	for _, want := range []string{`"path":"/secret","status":403,"decision":"deny"`, `"reason":"bad_path"`} {
		if !strings.Contains(lines, want) {
			t.Errorf("log has no %s:\n%s", want, lines)
		}
	}
}

// TestUndeclaredPortDetectsHTTP (finding 1, undeclared ports): with no
// protocol declared the server sidecar detects it from the first bytes,
// never from ALPN. HTTP that arrives at once, or starts at once and
// trickles in, is served by the HTTP engine; HTTP that waits past the
// detection window (to be taken for a server-first protocol and relayed)
// is refused with a logged reason.
func TestUndeclaredPortDetectsHTTP(t *testing.T) {
	ca := catest.New(t)
	srv := startEcho2(t, ca, policy.ServerPermissive, "", nil)
	addr := srv.InboundAddrs[0].String()
	sleep := ca.Issue(t, sleepID)
	req := "GET /headers HTTP/1.1\r\nHost: httpbin\r\nX-Forwarded-Client-Cert: " + forgedXFCC + "\r\n\r\n"
	want := "By=" + httpbinID + ";URI=" + sleepID
	t.Run("at once", func(t *testing.T) {
		resp, saw := rawExchange(t, mtlsConn(t, addr, sleep, alpnTCP), req)
		if resp.StatusCode != 200 || saw == nil || strings.Join(saw.xfccLike(), "|") != want {
			t.Fatalf("status %d, app saw %+v", resp.StatusCode, saw)
		}
	})
	t.Run("trickling", func(t *testing.T) {
		conn := mtlsConn(t, addr, sleep, alpnTCP)
		io.WriteString(conn, req[:2])
		time.Sleep(2 * sniffTimeout)
		resp, saw := rawExchange(t, conn, req[2:])
		if resp.StatusCode != 200 || saw == nil || strings.Join(saw.xfccLike(), "|") != want {
			t.Fatalf("status %d, app saw %+v", resp.StatusCode, saw)
		}
	})
	for _, tc := range []struct {
		name string
		dial func(t *testing.T) net.Conn
	}{
		{"late over mTLS", func(t *testing.T) net.Conn { return mtlsConn(t, addr, sleep, alpnTCP) }},
		{"late in plaintext", func(t *testing.T) net.Conn {
			c, err := net.Dial("tcp", addr)
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { c.Close() })
			return c
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			before := strings.Count(srv.log.String(), reasonLateHTTP)
			conn := tc.dial(t)
			time.Sleep(2 * time.Second / 3) // past sniffTimeout and the 300ms handshake timeout
			conn.SetDeadline(time.Now().Add(5 * time.Second))
			io.WriteString(conn, req)
			b, _ := io.ReadAll(conn)
			if len(b) != 0 {
				t.Fatalf("late HTTP got an answer: %q", b)
			}
			waitFor(t, func() bool { return strings.Count(srv.log.String(), reasonLateHTTP) > before }, "a log line with %s", reasonLateHTTP)
		})
	}
}

// TestUndeclaredPortServerFirst: a server-first protocol on a port with no
// declared protocol still works over mTLS: after the detection window the
// relay starts, the app's greeting arrives, and the conversation goes on.
func TestUndeclaredPortServerFirst(t *testing.T) {
	ca := catest.New(t)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				io.WriteString(c, "220 greetings\n")
				io.Copy(c, c)
			}()
		}
	}()
	srv := startSidecar(t, ca, httpbinID, sidecarOpts{
		snap: &policy.Snapshot{TrustDomain: "cluster.local", InboundDefault: policy.ServerStrict,
			Inbound: []policy.InboundPort{{Port: 25, Mode: policy.ServerStrict, Service: "smtp.default"}}},
		inbound: []InboundListener{{Listen: "127.0.0.1:0", App: ln.Addr().String(), Port: 25}},
	})
	conn := mtlsConn(t, srv.InboundAddrs[0].String(), ca.Issue(t, sleepID), alpnTCP)
	conn.SetDeadline(time.Now().Add(5 * time.Second))
	br := bufio.NewReader(conn)
	if l, err := br.ReadString('\n'); err != nil || l != "220 greetings\n" {
		t.Fatalf("greeting %q, %v", l, err)
	}
	io.WriteString(conn, "EHLO sleep\n")
	if l, err := br.ReadString('\n'); err != nil || l != "EHLO sleep\n" {
		t.Fatalf("echo %q, %v", l, err)
	}
}
