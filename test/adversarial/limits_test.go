package adversarial

import (
	"bufio"
	"crypto/tls"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"
)

// Issue #11 finding 5: resources a peer could pin. Each attack runs against
// real `meshd sidecar` processes with small limits, checks the refusal and
// its logged reason, and that both sidecars' file descriptors
// (/proc/<pid>/fd) and goroutines (go_goroutines on the admin port) return
// to their baseline within about the limit.

// limArgs are the sidecars' small limits for these attacks.
var limArgs = []string{"--response-headers-timeout", "2s", "--body-idle-timeout", "2s", "--request-headers-timeout", "1s"}

// limProxyRequest sends raw bytes to sleep's explicit proxy (a workload
// process on loopback, as the seed's sleep app) and returns the response
// status and X-Meshauth-Reason, or the error.
func limProxyRequest(proxyURL, raw string, timeout time.Duration) (int, string, error) {
	c, err := net.Dial("tcp", strings.TrimPrefix(proxyURL, "http://"))
	if err != nil {
		return 0, "", err
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(timeout))
	if _, err := io.WriteString(c, raw); err != nil {
		return 0, "", err
	}
	resp, err := http.ReadResponse(bufio.NewReader(c), nil)
	if err != nil {
		return 0, "", err
	}
	io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	return resp.StatusCode, resp.Header.Get("X-Meshauth-Reason"), nil
}

// parallel runs f n times at once and counts the outcomes.
func limParallel(n int, f func() string) map[string]int {
	var (
		mu  sync.Mutex
		wg  sync.WaitGroup
		got = map[string]int{}
	)
	for range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			r := f()
			mu.Lock()
			got[r]++
			mu.Unlock()
		}()
	}
	wg.Wait()
	return got
}

// TestLimitsHungApp: 300 requests to an app that never
// answers are answered 504 (upstream_timeout) after the response-head
// limit, and both sidecars let go of everything.
func TestLimitsHungApp(t *testing.T) {
	m := startMesh(t, meshOptions{HttpbinArgs: limArgs, SleepArgs: limArgs})
	baseSrv, baseCli := m.usage(t, m.Httpbin), m.usage(t, m.Sleep)
	req := "GET http://httpbin:8000/hang HTTP/1.1\r\nHost: httpbin:8000\r\n\r\n"
	got := limParallel(300, func() string {
		code, reason, err := limProxyRequest(m.Sleep.OutboundProxy, req, 20*time.Second)
		if err != nil {
			return "error: " + err.Error()
		}
		return fmt.Sprint(code, " ", reason)
	})
	if got["504 upstream_timeout"] != 300 {
		t.Errorf("300 requests to a hung app: %v, want all 504 upstream_timeout", got)
	}
	m.WaitLog(t, "httpbin", 5*time.Second, `"path":"/hang"`, `"status":504`, `"reason":"upstream_timeout"`)
	m.waitBaseline(t, m.Httpbin, baseSrv, 5, 10*time.Second)
	m.waitBaseline(t, m.Sleep, baseCli, 5, 10*time.Second)
}

// TestLimitsClientGone: clients that give up on a hung app are noticed
// long before the response-head limit (here a minute), and the upstream
// requests are abandoned on both sidecars (logged as client_closed).
func TestLimitsClientGone(t *testing.T) {
	args := []string{"--response-headers-timeout", "1m"}
	m := startMesh(t, meshOptions{HttpbinArgs: args, SleepArgs: args})
	baseSrv, baseCli := m.usage(t, m.Httpbin), m.usage(t, m.Sleep)
	limParallel(100, func() string {
		c, err := net.Dial("tcp", strings.TrimPrefix(m.Sleep.OutboundProxy, "http://"))
		if err != nil {
			return err.Error()
		}
		io.WriteString(c, "GET http://httpbin:8000/hang HTTP/1.1\r\nHost: httpbin:8000\r\n\r\n")
		time.Sleep(time.Second)
		c.Close()
		return ""
	})
	m.waitBaseline(t, m.Sleep, baseCli, 5, 10*time.Second)
	m.waitBaseline(t, m.Httpbin, baseSrv, 5, 10*time.Second)
	m.WaitLog(t, "sleep", 5*time.Second, `"status":499`, `"reason":"client_closed"`)
	m.WaitLog(t, "httpbin", 5*time.Second, `"status":499`, `"reason":"client_closed"`)
}

// TestLimitsBadBodies: 50 malformed chunked bodies are refused
// at once (400 bad_request_body) and 50 stalled ones after the body idle
// limit (408 request_body_timeout); nothing stays pinned.
func TestLimitsBadBodies(t *testing.T) {
	m := startMesh(t, meshOptions{HttpbinArgs: limArgs, SleepArgs: limArgs})
	baseSrv, baseCli := m.usage(t, m.Httpbin), m.usage(t, m.Sleep)
	for _, c := range []struct{ body, want string }{
		{"Transfer-Encoding: chunked\r\n\r\n5\r\nhello\r\nzz\r\n", "400 bad_request_body"},
		{"Content-Length: 100\r\n\r\nten bytes.", "408 request_body_timeout"},
	} {
		got := limParallel(50, func() string {
			code, reason, err := limProxyRequest(m.Sleep.OutboundProxy, "POST http://httpbin:8000/post HTTP/1.1\r\nHost: httpbin:8000\r\n"+c.body, 20*time.Second)
			if err != nil {
				return "error: " + err.Error()
			}
			return fmt.Sprint(code, " ", reason)
		})
		if got[c.want] != 50 {
			t.Errorf("50 bodies %q: %v, want %s", c.body, got, c.want)
		}
	}
	m.WaitLog(t, "sleep", 5*time.Second, `"status":400`, `"reason":"bad_request_body"`)
	m.WaitLog(t, "sleep", 5*time.Second, `"status":408`, `"reason":"request_body_timeout"`)
	m.waitBaseline(t, m.Sleep, baseCli, 5, 10*time.Second)
	m.waitBaseline(t, m.Httpbin, baseSrv, 5, 10*time.Second)
}

// TestLimitsSlowloris: connections that dribble a request head, to the
// explicit proxy and (with a mesh certificate, over mTLS) to the server
// sidecar, are answered 408 request_headers_timeout after the head limit
// and closed.
func TestLimitsSlowloris(t *testing.T) {
	m := startMesh(t, meshOptions{HttpbinArgs: limArgs, SleepArgs: limArgs})
	baseSrv, baseCli := m.usage(t, m.Httpbin), m.usage(t, m.Sleep)
	cert, err := tls.LoadX509KeyPair(filepath.Join(m.Sleep.CertsDir, "cert-chain.pem"), filepath.Join(m.Sleep.CertsDir, "key.pem"))
	if err != nil {
		t.Fatal(err)
	}
	targets := map[string]func() (net.Conn, error){
		"sleep's proxy": func() (net.Conn, error) {
			return net.Dial("tcp", strings.TrimPrefix(m.Sleep.OutboundProxy, "http://"))
		},
		"httpbin's mTLS port": func() (net.Conn, error) {
			return tls.Dial("tcp", m.Httpbin.InboundAddr, &tls.Config{InsecureSkipVerify: true,
				Certificates: []tls.Certificate{cert}, NextProtos: []string{"http/1.1"}})
		},
	}
	for name, dial := range targets {
		got := limParallel(50, func() string {
			c, err := dial()
			if err != nil {
				return "dial: " + err.Error()
			}
			defer c.Close()
			start := time.Now()
			io.WriteString(c, "GET http://httpbin:8000/headers HTTP/1.1\r\nHost: httpbin:8000\r\n")
			go func() { // one byte of a header every 200 ms, forever
				for {
					if _, err := io.WriteString(c, "X"); err != nil {
						return
					}
					time.Sleep(200 * time.Millisecond)
				}
			}()
			c.SetReadDeadline(time.Now().Add(20 * time.Second))
			resp, err := http.ReadResponse(bufio.NewReader(c), nil)
			if err != nil {
				return "error: " + err.Error()
			}
			resp.Body.Close()
			if el := time.Since(start); el > 3*time.Second {
				return fmt.Sprintf("answered after %s", el)
			}
			return fmt.Sprint(resp.StatusCode, " ", resp.Header.Get("X-Meshauth-Reason"))
		})
		if got["408 request_headers_timeout"] != 50 {
			t.Errorf("%s: 50 slowloris clients: %v, want 408 request_headers_timeout within 3s", name, got)
		}
	}
	m.WaitLog(t, "sleep", 5*time.Second, `"reason":"request_headers_timeout"`)
	m.WaitLog(t, "httpbin", 5*time.Second, `"reason":"request_headers_timeout"`)
	m.waitBaseline(t, m.Sleep, baseCli, 5, 10*time.Second)
	m.waitBaseline(t, m.Httpbin, baseSrv, 5, 10*time.Second)
}

// closeWait counts this host's IPv4 sockets in CLOSE-WAIT whose peer is addr.
func limCloseWait(t *testing.T, addr string) int {
	ap, err := netip.ParseAddrPort(addr)
	if err != nil {
		t.Fatal(err)
	}
	a := ap.Addr().As4()
	want := fmt.Sprintf("%02X%02X%02X%02X:%04X", a[3], a[2], a[1], a[0], ap.Port())
	data, err := os.ReadFile("/proc/net/tcp")
	if err != nil {
		t.Skipf("needs /proc/net/tcp: %v", err)
	}
	n := 0
	for _, ln := range strings.Split(string(data), "\n")[1:] {
		f := strings.Fields(ln)
		if len(f) > 3 && f[2] == want && f[3] == "08" {
			n++
		}
	}
	return n
}

// TestLimitsPooledUpstreamClosed: httpbin's sidecar closes idle
// connections after 1 s; sleep's keeps pooled ones for 30 s. The pooled
// connection httpbin closed is reaped by sleep's sidecar at once, not left
// in CLOSE-WAIT until httpbin is called again.
func TestLimitsPooledUpstreamClosed(t *testing.T) {
	m := startMesh(t, meshOptions{HttpbinArgs: []string{"--idle-timeout", "1s"}, SleepArgs: []string{"--idle-timeout", "1m"}})
	base := m.usage(t, m.Sleep)
	for range 20 { // up to 20 pooled connections at once
		limParallel(20, func() string {
			code, _, err := limProxyRequest(m.Sleep.OutboundProxy, "GET http://httpbin:8000/headers HTTP/1.1\r\nHost: httpbin:8000\r\n\r\n", 10*time.Second)
			return fmt.Sprint(code, err)
		})
	}
	deadline := time.Now().Add(5 * time.Second)
	for limCloseWait(t, m.Httpbin.InboundAddr) != 0 {
		if time.Now().After(deadline) {
			t.Fatalf("%d connections to httpbin's sidecar still in CLOSE-WAIT 5s after it closed them (idle timeout 1s)", limCloseWait(t, m.Httpbin.InboundAddr))
		}
		time.Sleep(100 * time.Millisecond)
	}
	m.waitBaseline(t, m.Sleep, base, 5, 10*time.Second)
	if v := limMetric(t, m.Sleep.AdminAddr, "meshauth_sidecar_pool_reaped_total"); v < 1 {
		t.Errorf("meshauth_sidecar_pool_reaped_total %v, want >= 1", v)
	}
}

// metric reads one unlabelled series from a sidecar's /metrics.
func limMetric(t *testing.T, admin, name string) float64 {
	t.Helper()
	resp, err := http.Get("http://" + admin + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		if v, ok := strings.CutPrefix(sc.Text(), name+" "); ok {
			var f float64
			fmt.Sscan(v, &f)
			return f
		}
	}
	return 0
}

// TestLimitsConnectionBound: with --max-connections 20, twenty idle clients hold
// every slot; more are reset with a logged reason and counted, and once a
// slot frees the proxy serves again.
func TestLimitsConnectionBound(t *testing.T) {
	m := startMesh(t, meshOptions{SleepArgs: []string{"--max-connections", "20"}})
	var held []net.Conn
	for range 20 {
		c, err := net.Dial("tcp", strings.TrimPrefix(m.Sleep.OutboundProxy, "http://"))
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		held = append(held, c)
	}
	time.Sleep(200 * time.Millisecond) // all twenty accepted
	req := "GET http://httpbin:8000/headers HTTP/1.1\r\nHost: httpbin:8000\r\n\r\n"
	if code, _, err := limProxyRequest(m.Sleep.OutboundProxy, req, 5*time.Second); err == nil {
		t.Fatalf("the 21st connection was served: %d", code)
	}
	m.WaitLog(t, "sleep", 5*time.Second, `"reason":"max_connections"`, `"max_connections":20`)
	held[0].Close()
	deadline := time.Now().Add(5 * time.Second)
	for {
		code, _, err := limProxyRequest(m.Sleep.OutboundProxy, req, 5*time.Second)
		if err == nil && code == 200 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("not served after a slot freed: %d %v", code, err)
		}
		time.Sleep(100 * time.Millisecond)
	}
}
