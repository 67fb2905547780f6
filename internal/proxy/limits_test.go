package proxy

import (
	"bufio"
	"crypto/tls"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"os"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/meshauth/meshauth/internal/ca/catest"
	"github.com/meshauth/meshauth/internal/policy"
)

// The abuse tests of issue #11 finding 5: each pins resources the way the
// reported attack did, with small limits, and checks that the sidecars'
// goroutines and file descriptors (this process's: both sidecars and the
// apps run in it) are back at their baseline within about the limit.

// small limits for these tests.
const (
	tHeaders = 300 * time.Millisecond // request head, response head
	tBody    = 300 * time.Millisecond // body idle
)

func smallLimits(c *Config) {
	c.RequestHeadersTimeout = tHeaders
	c.ResponseHeadersTimeout = tHeaders
	c.BodyIdleTimeout = tBody
	c.IdleTimeout = 5 * time.Second
}

func fdCount(t testing.TB) int {
	t.Helper()
	ents, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		t.Skip("needs /proc/self/fd")
	}
	return len(ents)
}

type baseline struct{ g, fd int }

func takeBaseline(t testing.TB) baseline {
	runtime.GC()
	return baseline{runtime.NumGoroutine(), fdCount(t)}
}

// settle waits until goroutines and fds are back to b (a few of slack for
// the runtime's and the test clients' own), failing after within.
func (b baseline) settle(t testing.TB, within time.Duration, what string) {
	t.Helper()
	const slack = 4
	deadline := time.Now().Add(within)
	for {
		g, fd := runtime.NumGoroutine(), fdCount(t)
		if g <= b.g+slack && fd <= b.fd+slack {
			t.Logf("%s: goroutines %d (baseline %d), fds %d (baseline %d)", what, g, b.g, fd, b.fd)
			return
		}
		if time.Now().After(deadline) {
			buf := make([]byte, 1<<20)
			n := runtime.Stack(buf, true)
			t.Fatalf("%s: after %s goroutines %d (baseline %d), fds %d (baseline %d)\n%s", what, within, g, b.g, fd, b.fd, summarizeStacks(string(buf[:n])))
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// summarizeStacks counts goroutines by their top proxy frame.
func summarizeStacks(s string) string {
	count := map[string]int{}
	for _, g := range strings.Split(s, "\n\n") {
		key := "other"
		for _, ln := range strings.Split(g, "\n") {
			if strings.Contains(ln, "internal/proxy.") {
				key = strings.TrimSpace(ln)
				break
			}
		}
		count[key]++
	}
	var b strings.Builder
	for k, v := range count {
		fmt.Fprintf(&b, "%5d %s\n", v, k)
	}
	return b.String()
}

// limitPair is a client sidecar (explicit proxy) and a server sidecar
// (STRICT) in front of app, both with small limits.
func limitPair(t *testing.T, app string, cfg func(*Config)) (cli, srv *sidecar) {
	t.Helper()
	if cfg == nil {
		cfg = smallLimits
	}
	ca := catest.New(t)
	srv = startSidecar(t, ca, httpbinID, sidecarOpts{
		inbound: []InboundListener{{Listen: "127.0.0.1:0", App: app, Port: 80}},
		snap: &policy.Snapshot{TrustDomain: "cluster.local", InboundDefault: policy.ServerStrict,
			Inbound: []policy.InboundPort{{Port: 80, Mode: policy.ServerStrict, Protocol: "HTTP", Service: "httpbin.default"}}},
		config: cfg,
	})
	cli = startSidecar(t, ca, sleepID, sidecarOpts{outbound: true, config: cfg,
		snap: &policy.Snapshot{TrustDomain: "cluster.local",
			Outbound: []policy.OutboundService{httpbinService(t, srv.InboundAddrs[0].String(), policy.ClientIstioMutual, httpbinID)}}})
	return cli, srv
}

// rawApp is an app on loopback that hands each connection to serve and
// closes it when serve returns; Close waits for all of them.
type rawApp struct {
	l  net.Listener
	wg sync.WaitGroup
}

func startRawApp(t *testing.T, serve func(c net.Conn)) *rawApp {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	a := &rawApp{l: l}
	var (
		mu    sync.Mutex
		conns []net.Conn
	)
	a.wg.Add(1)
	go func() {
		defer a.wg.Done()
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			mu.Lock()
			conns = append(conns, c)
			mu.Unlock()
			a.wg.Add(1)
			go func() {
				defer a.wg.Done()
				defer c.Close()
				serve(c)
			}()
		}
	}()
	// At the end the app lets go of everything itself, so a test that
	// failed because a sidecar held on does not hang here.
	t.Cleanup(func() {
		l.Close()
		mu.Lock()
		for _, c := range conns {
			c.Close()
		}
		mu.Unlock()
		a.wg.Wait()
	})
	return a
}

func (a *rawApp) addr() string { return a.l.Addr().String() }

// hungApp reads requests and never answers; it notices only a close.
func hungApp(c net.Conn) { io.Copy(io.Discard, c) }

// okApp answers every request with 200 and a small body.
func okApp(c net.Conn) {
	br := bufio.NewReader(c)
	for {
		req, err := http.ReadRequest(br)
		if err != nil {
			return
		}
		io.Copy(io.Discard, req.Body)
		if _, err := io.WriteString(c, "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"); err != nil {
			return
		}
	}
}

// proxyGet sends one request through the explicit proxy on a fresh
// connection and returns the response (nil on a connection error).
func proxyGet(t testing.TB, proxy string, extra string) (*http.Response, error) {
	c, err := net.Dial("tcp", proxy)
	if err != nil {
		return nil, err
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(20 * time.Second))
	if _, err := io.WriteString(c, "GET http://httpbin:8000/ HTTP/1.1\r\nHost: httpbin:8000\r\n"+extra+"\r\n"); err != nil {
		return nil, err
	}
	resp, err := http.ReadResponse(bufio.NewReader(c), nil)
	if err != nil {
		return nil, err
	}
	io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	return resp, nil
}

// warm makes one good request so both sidecars have their long-lived
// pieces (pooled connection, TLS session) before the baseline.
func warm(t *testing.T, cli *sidecar) {
	t.Helper()
	resp, err := proxyGet(t, cli.OutboundAddr.String(), "")
	if err != nil {
		t.Fatalf("warm-up request: %v", err)
	}
	_ = resp
}

// TestHungAppReleased: 300 requests to an app that never answers get a
// 504 with reason upstream_timeout after the response-head limit, and
// leave nothing behind in either sidecar.
func TestHungAppReleased(t *testing.T) {
	app := startRawApp(t, hungApp)
	cli, srv := limitPair(t, app.addr(), nil)
	base := takeBaseline(t)
	const n = 300
	var wg sync.WaitGroup
	codes := make(chan string, n)
	start := time.Now()
	for range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			resp, err := proxyGet(t, cli.OutboundAddr.String(), "")
			if err != nil {
				codes <- "error: " + err.Error()
				return
			}
			codes <- strconv.Itoa(resp.StatusCode) + " " + resp.Header.Get(reasonHeader)
		}()
	}
	wg.Wait()
	close(codes)
	got := map[string]int{}
	for c := range codes {
		got[c]++
	}
	// The server sidecar times out first and answers 504; the client
	// sidecar relays that answer (its own limit is the same, so a few
	// may be its own 504).
	if got["504 "+reasonUpstreamTimeout] != n {
		t.Errorf("responses %v, want %d x 504 %s", got, n, reasonUpstreamTimeout)
	}
	t.Logf("%d requests answered in %s", n, time.Since(start).Round(time.Millisecond))
	base.settle(t, 3*tHeaders+2*time.Second, "after 300 requests to a hung app")
	if v := counterValue(t, srv.m.Timeouts.WithLabelValues("inbound", timeoutResponseHeaders)); v < n/2 {
		t.Errorf("server sidecar counted %v response-head timeouts", v)
	}
	if !strings.Contains(srv.log.String(), `"reason":"`+reasonUpstreamTimeout+`"`) {
		t.Errorf("access log lacks reason %s", reasonUpstreamTimeout)
	}
}

// TestClientCloseReleasesUpstream: clients that give up while their
// request waits for a hung app are noticed, long before the response-head
// limit, and the upstream requests abandoned on both sidecars.
func TestClientCloseReleasesUpstream(t *testing.T) {
	app := startRawApp(t, hungApp)
	cli, srv := limitPair(t, app.addr(), func(c *Config) {
		smallLimits(c)
		c.ResponseHeadersTimeout = time.Minute
	})
	base := takeBaseline(t)
	const n = 50
	var wg sync.WaitGroup
	for range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			c, err := net.Dial("tcp", cli.OutboundAddr.String())
			if err != nil {
				t.Error(err)
				return
			}
			io.WriteString(c, "GET http://httpbin:8000/ HTTP/1.1\r\nHost: httpbin:8000\r\n\r\n")
			time.Sleep(200 * time.Millisecond)
			c.Close()
		}()
	}
	wg.Wait()
	base.settle(t, 3*clientWatchDelay+2*time.Second, "after 50 clients gave up on a hung app")
	for name, s := range map[string]*sidecar{"client": cli, "server": srv} {
		if n := strings.Count(s.log.String(), `"status":499,"decision":"error","reason":"`+reasonClientClosed+`"`); n == 0 {
			t.Errorf("%s sidecar logged no %s request", name, reasonClientClosed)
		}
	}
}

// TestMalformedChunkedBodiesReleased: 50 requests with a malformed chunked
// body get a 400 at once (the app, still waiting for the body, is let go),
// and 50 whose body stalls get a 408 after the body idle limit; nothing is
// left behind.
func TestMalformedChunkedBodiesReleased(t *testing.T) {
	app := startRawApp(t, okApp)
	// The server sidecar waits longer for a body than the client sidecar,
	// so that each answer comes from the client sidecar, whatever the
	// load; the server sidecar must still let go of the app when the
	// client sidecar abandons the request.
	cli, srv := limitPair(t, app.addr(), func(c *Config) {
		smallLimits(c)
		if c.Outbound == "" {
			c.BodyIdleTimeout = 5 * time.Second
		}
	})
	warm(t, cli)
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("server sidecar log:\n%s", srv.log.String())
		}
	})
	base := takeBaseline(t)
	send := func(body string, want int, reason string) {
		var wg sync.WaitGroup
		for range 50 {
			wg.Add(1)
			go func() {
				defer wg.Done()
				c, err := net.Dial("tcp", cli.OutboundAddr.String())
				if err != nil {
					t.Error(err)
					return
				}
				defer c.Close()
				c.SetDeadline(time.Now().Add(20 * time.Second))
				io.WriteString(c, "POST http://httpbin:8000/post HTTP/1.1\r\nHost: httpbin:8000\r\n"+body)
				resp, err := http.ReadResponse(bufio.NewReader(c), nil)
				if err != nil {
					t.Errorf("body %q: %v", body, err)
					return
				}
				msg, _ := io.ReadAll(resp.Body)
				resp.Body.Close()
				if resp.StatusCode != want || resp.Header.Get(reasonHeader) != reason {
					t.Errorf("body %q: %d %s, want %d %s: %s", body, resp.StatusCode, resp.Header.Get(reasonHeader), want, reason, msg)
				}
			}()
		}
		wg.Wait()
	}
	send("Transfer-Encoding: chunked\r\n\r\n5\r\nhello\r\nzz\r\n", http.StatusBadRequest, reasonBadBody)
	send("Transfer-Encoding: chunked\r\n\r\n5\nhello\r\n", http.StatusBadRequest, reasonBadBody)
	base.settle(t, 2*time.Second, "after 100 malformed chunked bodies")
	send("Content-Length: 100\r\n\r\nonly ten..", http.StatusRequestTimeout, reasonBodyTimeout)
	send("Transfer-Encoding: chunked\r\n\r\n5\r\nhel", http.StatusRequestTimeout, reasonBodyTimeout)
	base.settle(t, 2*tBody+2*time.Second, "after 100 stalled bodies")
}

// TestSlowlorisHeaders: connections that dribble a request head get a 408
// (reason request_headers_timeout) once the head limit is over, at both
// the explicit proxy and the server sidecar's mTLS port, and go away.
func TestSlowlorisHeaders(t *testing.T) {
	app := startRawApp(t, okApp)
	cli, srv := limitPair(t, app.addr(), nil)
	base := takeBaseline(t)
	peer := srv.store.SVID() // any mesh certificate the server trusts
	dial := map[string]func() (net.Conn, error){
		"explicit proxy": func() (net.Conn, error) { return net.Dial("tcp", cli.OutboundAddr.String()) },
		"server sidecar mTLS": func() (net.Conn, error) {
			return tls.Dial("tcp", srv.InboundAddrs[0].String(), &tls.Config{InsecureSkipVerify: true,
				Certificates: []tls.Certificate{*peer.TLS}, NextProtos: []string{"http/1.1"}})
		},
	}
	for name, d := range dial {
		var wg sync.WaitGroup
		for range 25 {
			wg.Add(1)
			go func() {
				defer wg.Done()
				c, err := d()
				if err != nil {
					t.Error(err)
					return
				}
				defer c.Close()
				start := time.Now()
				io.WriteString(c, "GET http://httpbin:8000/ HTTP/1.1\r\nHost: httpbin:8000\r\n")
				// One byte of header every 50 ms: never a complete head.
				go func() {
					for i := 0; ; i++ {
						if _, err := io.WriteString(c, "X"); err != nil {
							return
						}
						time.Sleep(50 * time.Millisecond)
					}
				}()
				c.SetReadDeadline(time.Now().Add(20 * time.Second))
				resp, err := http.ReadResponse(bufio.NewReader(c), nil)
				if err != nil {
					t.Errorf("%s: %v after %s", name, err, time.Since(start))
					return
				}
				resp.Body.Close()
				if resp.StatusCode != http.StatusRequestTimeout || resp.Header.Get(reasonHeader) != reasonHeadersTimeout {
					t.Errorf("%s: %d %s", name, resp.StatusCode, resp.Header.Get(reasonHeader))
				}
				if el := time.Since(start); el > 2*tHeaders+time.Second {
					t.Errorf("%s: answered after %s, limit %s", name, el, tHeaders)
				}
			}()
		}
		wg.Wait()
	}
	base.settle(t, 2*time.Second, "after 50 slowloris connections")
	for name, s := range map[string]*sidecar{"client": cli, "server": srv} {
		if !strings.Contains(s.log.String(), `"reason":"`+reasonHeadersTimeout+`"`) {
			t.Errorf("%s sidecar did not log %s", name, reasonHeadersTimeout)
		}
	}
}

// closeWaitTo counts this host's TCP sockets in CLOSE-WAIT whose peer is
// addr (IPv4).
func closeWaitTo(t testing.TB, addr string) int {
	ap := mustAddrPort(t, addr)
	data, err := os.ReadFile("/proc/net/tcp")
	if err != nil {
		t.Skip("needs /proc/net/tcp")
	}
	want := procAddr(ap, false)
	n := 0
	for _, ln := range strings.Split(string(data), "\n")[1:] {
		f := strings.Fields(ln)
		if len(f) > 3 && strings.EqualFold(f[2], want) && f[3] == "08" {
			n++
		}
	}
	return n
}

// TestPooledUpstreamClosedByServerReaped: an idle pooled connection that
// the server sidecar closes (its idle limit is shorter) is reaped by the
// client sidecar on its timer — not left in CLOSE-WAIT until the endpoint
// is used again.
func TestPooledUpstreamClosedByServerReaped(t *testing.T) {
	app := startRawApp(t, okApp)
	ca := catest.New(t)
	srv := startSidecar(t, ca, httpbinID, sidecarOpts{
		inbound: []InboundListener{{Listen: "127.0.0.1:0", App: app.addr(), Port: 80}},
		snap: &policy.Snapshot{TrustDomain: "cluster.local", InboundDefault: policy.ServerStrict,
			Inbound: []policy.InboundPort{{Port: 80, Mode: policy.ServerStrict, Protocol: "HTTP", Service: "httpbin.default"}}},
		config: func(c *Config) { c.IdleTimeout = 300 * time.Millisecond },
	})
	// The client keeps pooled connections for 30 s: only the reaper's
	// check of the socket can find this one closed.
	cli := startSidecar(t, ca, sleepID, sidecarOpts{outbound: true,
		config: func(c *Config) { c.IdleTimeout = time.Minute },
		snap: &policy.Snapshot{TrustDomain: "cluster.local",
			Outbound: []policy.OutboundService{httpbinService(t, srv.InboundAddrs[0].String(), policy.ClientIstioMutual, httpbinID)}}})
	warm(t, cli)
	if n := poolSize(cli.pool); n != 1 {
		t.Fatalf("pool holds %d connections after one request, want 1", n)
	}
	upstream := srv.InboundAddrs[0].String()
	deadline := time.Now().Add(300*time.Millisecond + 2*cli.pool.reapEvery() + 2*time.Second)
	for poolSize(cli.pool) != 0 || closeWaitTo(t, upstream) != 0 {
		if time.Now().After(deadline) {
			t.Fatalf("pooled connection closed by the server still pooled (%d) / in CLOSE-WAIT (%d)", poolSize(cli.pool), closeWaitTo(t, upstream))
		}
		time.Sleep(20 * time.Millisecond)
	}
	if v := counterValue(t, cli.m.PoolReaped); v != 1 {
		t.Errorf("reaped counted %v, want 1", v)
	}
	// And the next request just opens a new one.
	if resp, err := proxyGet(t, cli.OutboundAddr.String(), ""); err != nil || resp.StatusCode != 200 {
		t.Fatalf("request after the reap: %v %v", resp, err)
	}
}

func mustAddrPort(t testing.TB, addr string) netip.AddrPort {
	ap, err := netip.ParseAddrPort(addr)
	if err != nil {
		t.Fatal(err)
	}
	return ap
}

func poolSize(p *connPool) int {
	p.mu.Lock()
	defer p.mu.Unlock()
	n := 0
	for _, l := range p.idle {
		n += len(l)
	}
	return n
}

// TestMaxConnections: beyond MaxConnections a new connection is reset,
// logged once with the count and counted; when one ends, the next is
// served again.
func TestMaxConnections(t *testing.T) {
	app := startRawApp(t, okApp)
	cli, _ := limitPair(t, app.addr(), func(c *Config) { smallLimits(c); c.IdleTimeout = time.Minute; c.MaxConnections = 10 })
	var held []net.Conn
	for range 10 {
		c, err := net.Dial("tcp", cli.OutboundAddr.String())
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		held = append(held, c)
	}
	for deadline := time.Now().Add(5 * time.Second); cli.Conns() != 10; {
		if time.Now().After(deadline) {
			t.Fatalf("%d connections being served, want 10", cli.Conns())
		}
		time.Sleep(5 * time.Millisecond)
	}
	for range 5 {
		if resp, err := proxyGet(t, cli.OutboundAddr.String(), ""); err == nil {
			t.Fatalf("connection 11 served: %d", resp.StatusCode)
		}
	}
	if v := counterValue(t, cli.m.Closed.WithLabelValues("outbound", reasonMaxConnections)); v != 5 {
		t.Errorf("refusals counted %v, want 5", v)
	}
	if n := strings.Count(cli.log.String(), `"reason":"`+reasonMaxConnections+`"`); n != 1 {
		t.Errorf("refusals logged %d times, want once (rate-limited)\n%s", n, cli.log.String())
	}
	held[0].Close()
	deadline := time.Now().Add(5 * time.Second)
	for {
		resp, err := proxyGet(t, cli.OutboundAddr.String(), "")
		if err == nil && resp.StatusCode == 200 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("no connection served after one of 10 closed: %v", err)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// TestLongStreamsNotCut: a response that streams a chunk every 100 ms for
// 2 s, and a request body sent the same way, pass although the body idle
// limit is 1 s: the limit is on silence, not on length.
func TestLongStreamsNotCut(t *testing.T) {
	app := startRawApp(t, func(c net.Conn) {
		br := bufio.NewReader(c)
		for {
			req, err := http.ReadRequest(br)
			if err != nil {
				return
			}
			n, _ := io.Copy(io.Discard, req.Body)
			io.WriteString(c, "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
			for i := range 20 {
				if _, err := fmt.Fprintf(c, "%x\r\n%s\r\n", len(strconv.Itoa(i))+1, strconv.Itoa(i)+"\n"); err != nil {
					return
				}
				time.Sleep(100 * time.Millisecond)
			}
			fmt.Fprintf(c, "%x\r\n%s\r\n0\r\n\r\n", len(strconv.FormatInt(n, 10)), strconv.FormatInt(n, 10))
		}
	})
	// A body limit of 1 s (ten gaps between chunks, a margin a loaded
	// machine needs) and a 2 s stream each way.
	cli, _ := limitPair(t, app.addr(), func(c *Config) {
		smallLimits(c)
		c.BodyIdleTimeout = time.Second
	})
	pr, pw := io.Pipe()
	go func() {
		for range 20 {
			pw.Write([]byte("0123456789"))
			time.Sleep(100 * time.Millisecond)
		}
		pw.Close()
	}()
	req, _ := http.NewRequest("POST", "http://httpbin:8000/stream", pr)
	resp, err := proxyClient(cli, false).Do(req)
	if err != nil {
		t.Fatal(err)
	}
	body, err := io.ReadAll(resp.Body)
	resp.Body.Close()
	if err != nil || resp.StatusCode != 200 {
		t.Fatalf("stream: %d %v", resp.StatusCode, err)
	}
	if !strings.HasSuffix(string(body), "19\n200") {
		t.Fatalf("stream cut short: %q", body)
	}
}

// TestTCPRelayReceiverNotReading: a TCP relay whose client keeps sending
// (so the relay is not idle) but never reads what the app sends is closed
// once its writes have been stuck for the idle limit, instead of pinning
// the relay for as long as the client trickles.
func TestTCPRelayReceiverNotReading(t *testing.T) {
	app := startRawApp(t, func(c net.Conn) {
		go io.Copy(io.Discard, c)
		buf := make([]byte, 64<<10)
		for {
			if _, err := c.Write(buf); err != nil {
				return
			}
		}
	})
	ca := catest.New(t)
	srv := startSidecar(t, ca, httpbinID, sidecarOpts{
		inbound: []InboundListener{{Listen: "127.0.0.1:0", App: app.addr(), Port: 80}},
		snap: &policy.Snapshot{TrustDomain: "cluster.local", InboundDefault: policy.ServerStrict,
			Inbound: []policy.InboundPort{{Port: 80, Mode: policy.ServerDisable, Protocol: "TCP"}}},
		config: func(c *Config) { c.IdleTimeout = 500 * time.Millisecond },
	})
	base := takeBaseline(t)
	c, err := net.Dial("tcp", srv.InboundAddrs[0].String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.(*net.TCPConn).SetReadBuffer(4 << 10)
	// One byte every 100 ms, never a read.
	stopped := make(chan time.Time, 1)
	go func() {
		for {
			if _, err := c.Write([]byte("x")); err != nil {
				stopped <- time.Now()
				return
			}
			time.Sleep(100 * time.Millisecond)
		}
	}()
	start := time.Now()
	select {
	case at := <-stopped:
		t.Logf("relay closed after %s (idle limit 500ms)", at.Sub(start).Round(time.Millisecond))
	case <-time.After(10 * time.Second):
		t.Fatal("a client that never reads still held the relay after 10s (idle limit 500ms)")
	}
	c.Close()
	base.settle(t, 2*time.Second, "after the stuck relay")
}

// TestEarlyResponseNotCutByHeadLimit: an app that answers before it has the
// whole request body (a streaming echo, a gRPC-style bidi exchange over
// HTTP/1.1) streams its response for longer than the response-head limit.
// The limit is armed when the body is in; that must not cut a response whose
// head already came. Before, the body's end re-armed the 300 ms head limit
// under the streaming response body ("unexpected EOF"; seen in CI under load,
// made deterministic here by sending the body's end after the head came).
func TestEarlyResponseNotCutByHeadLimit(t *testing.T) {
	app := startRawApp(t, func(c net.Conn) {
		br := bufio.NewReader(c)
		req, err := http.ReadRequest(br)
		if err != nil {
			return
		}
		go io.Copy(io.Discard, req.Body)
		io.WriteString(c, "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
		for i := range 12 {
			if _, err := fmt.Fprintf(c, "2\r\n%d\n\r\n", i%10); err != nil {
				return
			}
			time.Sleep(100 * time.Millisecond)
		}
		io.WriteString(c, "3\r\nend\r\n0\r\n\r\n")
	})
	cli, _ := limitPair(t, app.addr(), nil)
	pr, pw := io.Pipe()
	headCame := make(chan struct{})
	go func() {
		pw.Write([]byte("first"))
		<-headCame
		time.Sleep(100 * time.Millisecond)
		pw.Write([]byte("last"))
		pw.Close()
	}()
	req, _ := http.NewRequest("POST", "http://httpbin:8000/echo", pr)
	resp, err := proxyClient(cli, false).Do(req)
	close(headCame)
	if err != nil {
		t.Fatal(err)
	}
	body, err := io.ReadAll(resp.Body)
	resp.Body.Close()
	if err != nil || resp.StatusCode != 200 {
		t.Fatalf("streaming response: %d %v after %q", resp.StatusCode, err, body)
	}
	if !strings.HasSuffix(string(body), "end") {
		t.Fatalf("streaming response cut short: %q", body)
	}
}
