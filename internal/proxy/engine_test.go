package proxy

import (
	"bufio"
	"bytes"
	"crypto/sha256"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/meshauth/meshauth/internal/ca/catest"
	"github.com/meshauth/meshauth/internal/policy"
)

// semanticsApp answers the HTTP edge cases the engine must carry through.
func semanticsApp(t *testing.T) *httptest.Server {
	mux := http.NewServeMux()
	mux.HandleFunc("/echo", func(w http.ResponseWriter, r *http.Request) {
		b, _ := io.ReadAll(r.Body)
		sum := sha256.Sum256(b)
		fmt.Fprintf(w, "%d %x", len(b), sum)
	})
	mux.HandleFunc("/big", func(w http.ResponseWriter, r *http.Request) {
		w.Write(bytes.Repeat([]byte("x"), 3<<20))
	})
	mux.HandleFunc("/stream", func(w http.ResponseWriter, r *http.Request) {
		f := w.(http.Flusher)
		for i := 0; i < 5; i++ {
			fmt.Fprintf(w, "event %d\n", i)
			f.Flush()
		}
	})
	mux.HandleFunc("/nocontent", func(w http.ResponseWriter, r *http.Request) { w.WriteHeader(204) })
	mux.HandleFunc("/long", func(w http.ResponseWriter, r *http.Request) {
		// Answers with a field and a trailer as long as the request's
		// X-Long (a chunked response: the body is flushed before the end).
		n := len(r.Header.Get("X-Long"))
		w.Header().Set("Trailer", "X-Long-Trailer")
		w.Header().Set("X-Long-Back", strings.Repeat("b", n))
		fmt.Fprintf(w, "%d", n)
		w.(http.Flusher).Flush()
		w.Header().Set("X-Long-Trailer", strings.Repeat("t", n))
	})
	mux.HandleFunc("/close", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Connection", "close")
		io.WriteString(w, "bye")
	})
	mux.HandleFunc("/untileof", func(w http.ResponseWriter, r *http.Request) {
		// No Content-Length, no chunking: the body ends when the app closes.
		c, bw, _ := w.(http.Hijacker).Hijack()
		bw.WriteString("HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n\r\nuntil the end")
		bw.Flush()
		c.Close()
	})
	mux.HandleFunc("/upgrade", func(w http.ResponseWriter, r *http.Request) {
		if r.Header.Get("Upgrade") != "echo" {
			http.Error(w, "want Upgrade: echo", 400)
			return
		}
		c, bw, _ := w.(http.Hijacker).Hijack()
		bw.WriteString("HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: echo\r\n\r\n")
		bw.Flush()
		io.Copy(c, bw) // echo
		c.Close()
	})
	s := httptest.NewServer(mux)
	t.Cleanup(s.Close)
	return s
}

func semanticsPair(t *testing.T) (cli, srv *sidecar) {
	ca := catest.New(t)
	app := semanticsApp(t)
	srv = startSidecar(t, ca, httpbinID, sidecarOpts{
		inbound: []InboundListener{{Listen: "127.0.0.1:0", App: app.Listener.Addr().String(), Port: 80}},
		snap: &policy.Snapshot{TrustDomain: "cluster.local", InboundDefault: policy.ServerStrict,
			Inbound: []policy.InboundPort{{Port: 80, Mode: policy.ServerStrict, Protocol: "HTTP"}}},
	})
	cli = startSidecar(t, ca, sleepID, sidecarOpts{outbound: true, snap: &policy.Snapshot{
		TrustDomain: "cluster.local",
		Outbound:    []policy.OutboundService{httpbinService(t, srv.InboundAddrs[0].String(), policy.ClientIstioMutual, httpbinID)},
	}})
	return cli, srv
}

// TestHTTPSemantics drives the edge cases of HTTP/1.1 through a sidecar
// pair with Go's client: bodies of known and unknown length, chunked
// uploads, Expect: 100-continue, HEAD, 204, streaming, a body that ends at
// close, an app that closes the connection, and an Upgrade.
func TestHTTPSemantics(t *testing.T) {
	cli, _ := semanticsPair(t)
	c := proxyClient(cli, true)
	upload := bytes.Repeat([]byte("0123456789abcdef"), 1<<16) // 1 MiB
	sum := sha256.Sum256(upload)
	wantEcho := fmt.Sprintf("%d %x", len(upload), sum)

	t.Run("POST with Content-Length", func(t *testing.T) {
		resp, err := c.Post("http://httpbin:8000/echo", "application/octet-stream", bytes.NewReader(upload))
		checkBody(t, resp, err, 200, wantEcho)
	})
	t.Run("chunked upload", func(t *testing.T) {
		// An io.Reader of unknown length makes Go's client send chunked.
		resp, err := c.Post("http://httpbin:8000/echo", "application/octet-stream", io.MultiReader(bytes.NewReader(upload)))
		checkBody(t, resp, err, 200, wantEcho)
	})
	t.Run("Expect: 100-continue", func(t *testing.T) {
		tr := &http.Transport{Proxy: http.ProxyURL(mustParseURL(t, "http://"+cli.OutboundAddr.String())), ExpectContinueTimeout: 5 * time.Second}
		req, _ := http.NewRequest("PUT", "http://httpbin:8000/echo", bytes.NewReader(upload))
		req.Header.Set("Expect", "100-continue")
		resp, err := (&http.Client{Transport: tr, Timeout: 10 * time.Second}).Do(req)
		checkBody(t, resp, err, 200, wantEcho)
	})
	t.Run("large response", func(t *testing.T) {
		resp, err := c.Get("http://httpbin:8000/big")
		checkBody(t, resp, err, 200, strings.Repeat("x", 3<<20))
	})
	t.Run("HEAD", func(t *testing.T) {
		resp, err := c.Head("http://httpbin:8000/big")
		checkBody(t, resp, err, 200, "")
	})
	t.Run("204", func(t *testing.T) {
		resp, err := c.Get("http://httpbin:8000/nocontent")
		checkBody(t, resp, err, 204, "")
	})
	t.Run("streamed chunks", func(t *testing.T) {
		resp, err := c.Get("http://httpbin:8000/stream")
		checkBody(t, resp, err, 200, "event 0\nevent 1\nevent 2\nevent 3\nevent 4\n")
	})
	t.Run("body until close", func(t *testing.T) {
		resp, err := c.Get("http://httpbin:8000/untileof")
		checkBody(t, resp, err, 200, "until the end")
	})
	t.Run("app closes, next request works", func(t *testing.T) {
		for i := 0; i < 3; i++ {
			resp, err := c.Get("http://httpbin:8000/close")
			checkBody(t, resp, err, 200, "bye")
		}
	})
	t.Run("Upgrade", func(t *testing.T) {
		conn, err := net.Dial("tcp", cli.OutboundAddr.String())
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Close()
		conn.SetDeadline(time.Now().Add(10 * time.Second))
		io.WriteString(conn, "GET http://httpbin:8000/upgrade HTTP/1.1\r\nHost: httpbin:8000\r\nConnection: Upgrade\r\nUpgrade: echo\r\n\r\n")
		br := bufio.NewReader(conn)
		resp, err := http.ReadResponse(br, nil)
		if err != nil || resp.StatusCode != 101 {
			t.Fatalf("upgrade: %v %v", resp, err)
		}
		io.WriteString(conn, "ping through the tunnel")
		got := make([]byte, len("ping through the tunnel"))
		if _, err := io.ReadFull(br, got); err != nil || string(got) != "ping through the tunnel" {
			t.Fatalf("echo %q, %v", got, err)
		}
	})
	t.Run("one request per connection reuses the upstream", func(t *testing.T) {
		before := counterValue(t, cli.m.Handshakes.WithLabelValues("outbound", "ok", "mtls"))
		cc := proxyClient(cli, false)
		for i := 0; i < 5; i++ {
			resp, err := cc.Get("http://httpbin:8000/echo")
			checkBody(t, resp, err, 200, fmt.Sprintf("0 %x", sha256.Sum256(nil)))
		}
		if n := counterValue(t, cli.m.Handshakes.WithLabelValues("outbound", "ok", "mtls")) - before; n > 1 {
			t.Errorf("%v new mTLS handshakes for 5 sequential requests on new client connections; want at most 1", n)
		}
	})
}

// TestLongHeadLines: a header line or trailer longer than a connection's
// read buffer (4 KiB) goes through both sidecars both ways, up to the
// whole head's limit (64 KiB; h1's tests pin the limit itself). Read with
// a large buffer: Go's client takes trailers up to its reader's size.
func TestLongHeadLines(t *testing.T) {
	cli, _ := semanticsPair(t)
	conn, err := net.Dial("tcp", cli.OutboundAddr.String())
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	conn.SetDeadline(time.Now().Add(10 * time.Second))
	br := bufio.NewReaderSize(conn, 128<<10)
	for _, n := range []int{5 << 10, 20 << 10, 60 << 10} {
		fmt.Fprintf(conn, "GET http://httpbin:8000/long HTTP/1.1\r\nHost: httpbin:8000\r\nX-Long: %s\r\n\r\n", strings.Repeat("x", n))
		resp, err := http.ReadResponse(br, nil)
		checkBody(t, resp, err, 200, fmt.Sprint(n))
		if got := len(resp.Header.Get("X-Long-Back")); got != n {
			t.Errorf("%d-byte field: the response's came back with %d bytes", n, got)
		}
		if got := len(resp.Trailer.Get("X-Long-Trailer")); got != n {
			t.Errorf("%d-byte field: the trailer came back with %d bytes", n, got)
		}
	}
}

func checkBody(t *testing.T, resp *http.Response, err error, status int, want string) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
	b, err := io.ReadAll(resp.Body)
	resp.Body.Close()
	if err != nil {
		t.Fatalf("reading body: %v", err)
	}
	if resp.StatusCode != status {
		t.Fatalf("status %d (%s), want %d: %.200s", resp.StatusCode, resp.Header.Get(reasonHeader), status, b)
	}
	if string(b) != want {
		t.Fatalf("body %.100q (len %d), want %.100q (len %d)", b, len(b), want, len(want))
	}
}

// TestHTTPRaw sends what Go's client never would: HTTP/1.0, and requests
// that two parsers could frame differently (request smuggling). The
// ambiguous ones are refused with 400 and the connection closed.
func TestHTTPRaw(t *testing.T) {
	cli, _ := semanticsPair(t)
	cases := []struct {
		name, req  string
		wantStatus string
		wantBody   string
	}{
		{"HTTP/1.0 without Host", "GET http://httpbin:8000/stream HTTP/1.0\r\n\r\n", "HTTP/1.1 200", "event 0\nevent 1\nevent 2\nevent 3\nevent 4\n"},
		{"Content-Length and Transfer-Encoding", "POST http://httpbin:8000/echo HTTP/1.1\r\nHost: httpbin:8000\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", "HTTP/1.1 400", ""},
		{"two Content-Lengths", "POST http://httpbin:8000/echo HTTP/1.1\r\nHost: httpbin:8000\r\nContent-Length: 4\r\nContent-Length: 5\r\n\r\nabcde", "HTTP/1.1 400", ""},
		{"obsolete line folding", "GET http://httpbin:8000/echo HTTP/1.1\r\nHost: httpbin:8000\r\nX-A: b\r\n c\r\n\r\n", "HTTP/1.1 400", ""},
		{"Transfer-Encoding other than chunked", "POST http://httpbin:8000/echo HTTP/1.1\r\nHost: httpbin:8000\r\nTransfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n", "HTTP/1.1 400", ""},
		{"origin-form to the forward proxy", "GET /echo HTTP/1.1\r\nHost: httpbin:8000\r\n\r\n", "HTTP/1.1 400", ""},
	}
	t.Run("one Content-Length after two sidecars", func(t *testing.T) {
		conn, err := net.Dial("tcp", cli.OutboundAddr.String())
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Close()
		conn.SetDeadline(time.Now().Add(10 * time.Second))
		io.WriteString(conn, "GET http://httpbin:8000/echo HTTP/1.1\r\nHost: httpbin:8000\r\nConnection: close\r\n\r\n")
		all, _ := io.ReadAll(conn)
		if n := bytes.Count(bytes.ToLower(all), []byte("\r\ncontent-length:")); n != 1 {
			t.Fatalf("response has %d Content-Length fields:\n%s", n, all)
		}
	})
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			conn, err := net.Dial("tcp", cli.OutboundAddr.String())
			if err != nil {
				t.Fatal(err)
			}
			defer conn.Close()
			conn.SetDeadline(time.Now().Add(10 * time.Second))
			io.WriteString(conn, tc.req)
			resp, err := http.ReadResponse(bufio.NewReader(conn), nil)
			if err != nil {
				t.Fatalf("read: %v", err)
			}
			body, err := io.ReadAll(resp.Body)
			if err != nil {
				t.Fatalf("read body: %v", err)
			}
			if got := fmt.Sprintf("HTTP/%d.%d %d", resp.ProtoMajor, resp.ProtoMinor, resp.StatusCode); got != tc.wantStatus {
				t.Fatalf("got %s (%s), want %s", got, body, tc.wantStatus)
			}
			if tc.wantBody != "" && string(body) != tc.wantBody {
				t.Fatalf("got body %q, want %q", body, tc.wantBody)
			}
		})
	}
}
