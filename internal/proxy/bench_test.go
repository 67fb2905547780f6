package proxy

import (
	"bufio"
	"bytes"
	"context"
	"crypto/tls"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"testing"

	"github.com/meshauth/meshauth/internal/ca/catest"
	"github.com/meshauth/meshauth/internal/policy"
)

// BenchmarkHandshake measures one mTLS handshake between the sidecars' own
// client and server configs over loopback TCP, including the SPIFFE
// verification on both sides: full, and resumed from a session ticket.
func BenchmarkHandshake(b *testing.B) {
	ca := catest.New(b)
	srv := startSidecar(b, ca, httpbinID, sidecarOpts{})
	cli := startSidecar(b, ca, sleepID, sidecarOpts{})
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	defer l.Close()
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			go func() {
				tc := tls.Server(c, srv.serverConf)
				if tc.Handshake() == nil {
					tc.Write([]byte{1}) // lets the client see the server's verdict
				}
				tc.Close()
			}()
		}
	}()
	for _, resume := range []bool{false, true} {
		name := "full"
		if resume {
			name = "resumed"
		}
		b.Run(name, func(b *testing.B) {
			cfg := cli.clientTLS([]string{httpbinID}, "", alpnTCP)
			if !resume {
				cfg.ClientSessionCache = nil
			}
			b.ReportAllocs()
			for i := 0; i < b.N; i++ {
				c, err := net.Dial("tcp", l.Addr().String())
				if err != nil {
					b.Fatal(err)
				}
				tc := tls.Client(c, cfg)
				if err := tc.HandshakeContext(context.Background()); err != nil {
					b.Fatal(err)
				}
				var one [1]byte
				if _, err := io.ReadFull(tc, one[:]); err != nil {
					b.Fatal(err)
				}
				if resume && i > 0 && !tc.ConnectionState().DidResume {
					b.Fatal("session not resumed")
				}
				tc.Close()
			}
		})
	}
}

// benchPair is an app behind a server sidecar and a client sidecar that
// routes httpbin:8000 to it.
func benchPair(b *testing.B) (cli *sidecar, appAddr string) {
	ca := catest.New(b)
	app := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		io.Copy(io.Discard, r.Body)
		w.Header().Set("Content-Type", "text/plain")
		io.WriteString(w, "hello from the app\n")
	}))
	b.Cleanup(app.Close)
	srv := startSidecar(b, ca, httpbinID, sidecarOpts{
		inbound: []InboundListener{{Listen: "127.0.0.1:0", App: app.Listener.Addr().String(), Port: 80}},
		snap: &policy.Snapshot{TrustDomain: "cluster.local", InboundDefault: policy.ServerStrict,
			Inbound: []policy.InboundPort{{Port: 80, Mode: policy.ServerStrict, Protocol: "HTTP"}}},
	})
	srv.access = discardLogger()
	cli = startSidecar(b, ca, sleepID, sidecarOpts{outbound: true, snap: &policy.Snapshot{
		TrustDomain: "cluster.local",
		Outbound:    []policy.OutboundService{httpbinService(b, srv.InboundAddrs[0].String(), policy.ClientIstioMutual, httpbinID)},
	}})
	cli.access = discardLogger()
	return cli, app.Listener.Addr().String()
}

// BenchmarkRequest sends HTTP GETs through a client and a server sidecar
// (mTLS between them), next to the same requests sent directly to the app.
// "close" opens a new client connection per request, as wrk -H
// 'Connection: close' does; the sidecars' pooled mTLS connections mean it
// costs no handshake.
func BenchmarkRequest(b *testing.B) {
	cli, appAddr := benchPair(b)
	for _, tc := range []struct {
		name      string
		viaProxy  bool
		keepAlive bool
	}{
		{"direct/keepalive", false, true},
		{"sidecars/keepalive", true, true},
		{"direct/close", false, false},
		{"sidecars/close", true, false},
	} {
		b.Run(tc.name, func(b *testing.B) {
			tr := &http.Transport{DisableKeepAlives: !tc.keepAlive, MaxIdleConnsPerHost: 64}
			url := "http://" + appAddr + "/"
			if tc.viaProxy {
				tr.Proxy = http.ProxyURL(mustParseURL(b, "http://"+cli.OutboundAddr.String()))
				url = "http://httpbin:8000/"
			}
			c := &http.Client{Transport: tr}
			b.ReportAllocs()
			b.RunParallel(func(pb *testing.PB) {
				for pb.Next() {
					resp, err := c.Get(url)
					if err != nil {
						b.Error(err)
						return
					}
					io.Copy(io.Discard, resp.Body)
					resp.Body.Close()
					if resp.StatusCode != 200 {
						b.Errorf("status %d", resp.StatusCode)
						return
					}
				}
			})
			tr.CloseIdleConnections()
		})
	}
}

// BenchmarkConnPerRequest is BenchmarkRequest's one request per
// connection without Go's HTTP client: each iteration dials the client
// sidecar, writes one absolute-URI GET with "Connection: close" and reads
// the response, which the sidecar ends by closing. So the only goroutine
// started per connection is the client sidecar's own (the server sidecar
// gets the request over a pooled mTLS connection and keeps its app
// connection). "keepalive" sends the same requests without "Connection:
// close" over one connection; per request, close minus keepalive is what
// a connection costs (callgrind, docs/bench.md).
func BenchmarkConnPerRequest(b *testing.B) {
	cli, _ := benchPair(b)
	addr := cli.OutboundAddr.String()
	for _, keepAlive := range []bool{false, true} {
		name, hdr := "close", "Connection: close\r\n"
		if keepAlive {
			name, hdr = "keepalive", ""
		}
		req := []byte("GET http://httpbin:8000/ HTTP/1.1\r\nHost: httpbin:8000\r\n" + hdr + "\r\n")
		b.Run(name, func(b *testing.B) {
			var (
				c  net.Conn
				br = bufio.NewReader(nil)
			)
			defer func() {
				if c != nil {
					c.Close()
				}
			}()
			b.ReportAllocs()
			for i := 0; i < b.N; i++ {
				if c == nil {
					var err error
					if c, err = net.Dial("tcp", addr); err != nil {
						b.Fatal(err)
					}
					br.Reset(c)
				}
				if _, err := c.Write(req); err != nil {
					b.Fatal(err)
				}
				resp, err := http.ReadResponse(br, nil)
				if err != nil {
					b.Fatal(err)
				}
				io.Copy(io.Discard, resp.Body)
				resp.Body.Close()
				if resp.StatusCode != 200 || resp.Close == keepAlive {
					b.Fatalf("status %d, close %v", resp.StatusCode, resp.Close)
				}
				if !keepAlive {
					// The sidecar closes after the response: read its EOF
					// so that the connection is gone on both sides.
					if _, err := br.ReadByte(); err != io.EOF {
						b.Fatalf("after the response: %v, want EOF", err)
					}
					c.Close()
					c = nil
				}
			}
		})
	}
}

// BenchmarkBulk streams bytes through a CONNECT tunnel: client sidecar ->
// mTLS -> server sidecar -> a sink app, reporting MB/s.
func BenchmarkBulk(b *testing.B) {
	ca := catest.New(b)
	sink, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	defer sink.Close()
	go func() {
		for {
			c, err := sink.Accept()
			if err != nil {
				return
			}
			go func() { n, _ := io.Copy(io.Discard, c); fmt.Fprint(c, n); c.Close() }()
		}
	}()
	srv := startSidecar(b, ca, httpbinID, sidecarOpts{
		inbound: []InboundListener{{Listen: "127.0.0.1:0", App: sink.Addr().String(), Port: 9000}},
		snap: &policy.Snapshot{TrustDomain: "cluster.local", InboundDefault: policy.ServerStrict,
			Inbound: []policy.InboundPort{{Port: 9000, Mode: policy.ServerStrict, Protocol: "TCP"}}},
	})
	svc := httpbinService(b, srv.InboundAddrs[0].String(), policy.ClientIstioMutual, httpbinID)
	svc.Ports = []policy.OutboundPort{{Name: "tcp", Port: 9000, TargetPort: 9000, Protocol: "TCP", TLSMode: policy.ClientIstioMutual}}
	svc.Endpoints[0].Ports = map[uint32]uint32{9000: portOf(b, srv.InboundAddrs[0].String())}
	cli := startSidecar(b, ca, sleepID, sidecarOpts{outbound: true, snap: &policy.Snapshot{
		TrustDomain: "cluster.local", Outbound: []policy.OutboundService{svc}}})
	cli.access, srv.access = discardLogger(), discardLogger()

	buf := make([]byte, 256<<10)
	b.SetBytes(int64(len(buf)))
	c, err := net.Dial("tcp", cli.OutboundAddr.String())
	if err != nil {
		b.Fatal(err)
	}
	fmt.Fprint(c, "CONNECT httpbin:9000 HTTP/1.1\r\nHost: httpbin:9000\r\n\r\n")
	br := bufio.NewReader(c)
	resp, err := http.ReadResponse(br, nil)
	if err != nil || resp.StatusCode != 200 {
		b.Fatalf("CONNECT: %v %v", err, resp)
	}
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		if _, err := c.Write(buf); err != nil {
			b.Fatal(err)
		}
	}
	c.(*net.TCPConn).CloseWrite()
	got, _ := io.ReadAll(br)
	b.StopTimer()
	if want := fmt.Sprint(int64(b.N) * int64(len(buf))); string(got) != want {
		b.Fatalf("sink got %s bytes, want %s", got, want)
	}
}

// BenchmarkUpload POSTs a 16 MiB body through the sidecar pair (the HTTP
// engine's request-body path), next to the same upload sent directly.
func BenchmarkUpload(b *testing.B) {
	cli, appAddr := benchPair(b)
	body := make([]byte, 16<<20)
	for _, via := range []bool{false, true} {
		name := "direct"
		tr := &http.Transport{}
		url := "http://" + appAddr + "/upload"
		if via {
			name = "sidecars"
			tr.Proxy = http.ProxyURL(mustParseURL(b, "http://"+cli.OutboundAddr.String()))
			url = "http://httpbin:8000/upload"
		}
		b.Run(name, func(b *testing.B) {
			c := &http.Client{Transport: tr}
			b.SetBytes(int64(len(body)))
			for i := 0; i < b.N; i++ {
				resp, err := c.Post(url, "application/octet-stream", bytes.NewReader(body))
				if err != nil {
					b.Fatal(err)
				}
				io.Copy(io.Discard, resp.Body)
				resp.Body.Close()
				if resp.StatusCode != 200 {
					b.Fatalf("status %d", resp.StatusCode)
				}
			}
		})
	}
}
