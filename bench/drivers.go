package main

import (
	"bufio"
	"context"
	"crypto/tls"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"time"
)

// wrkResult is what one wrk run reports.
type wrkResult struct {
	RPS      float64
	Requests int64
	Errors   int64 // socket errors plus non-2xx/3xx responses
}

var (
	reRPS    = regexp.MustCompile(`Requests/sec:\s+([0-9.]+)`)
	reReqs   = regexp.MustCompile(`(\d+) requests in`)
	reNon2xx = regexp.MustCompile(`Non-2xx or 3xx responses: (\d+)`)
	reSock   = regexp.MustCompile(`Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)`)
)

// runWrk drives v at full speed with wrk -t1 -c<conns>. With closeEach,
// every request carries "Connection: close", so every request is a new
// client connection (wrk reconnects after each response). For an explicit
// HTTP proxy a Lua script turns the request line into an absolute URI,
// which is all a forward proxy needs; wrk itself connects to the proxy.
func runWrk(ctx context.Context, dir string, v *variant, conns int, d time.Duration, closeEach bool) (wrkResult, error) {
	args := []string{"-t1", fmt.Sprintf("-c%d", conns), fmt.Sprintf("-d%ds", int(d.Round(time.Second)/time.Second)), "--timeout", "5s"}
	if d < time.Second {
		args[2] = "-d1s"
	}
	if closeEach {
		args = append(args, "-H", "Connection: close")
	}
	if v.proxy {
		script := filepath.Join(dir, "wrk-proxy-"+fileTag(v.name)+".lua")
		lua := fmt.Sprintf("wrk.path = %q\nwrk.headers[\"Host\"] = %q\n", v.url("/"), v.target)
		if err := os.WriteFile(script, []byte(lua), 0o644); err != nil {
			return wrkResult{}, err
		}
		args = append(args, "-s", script)
	}
	args = append(args, "http://"+v.addr+"/")
	cctx, cancel := context.WithTimeout(ctx, d+30*time.Second)
	defer cancel()
	out, err := v.command(cctx, "wrk", args...).CombinedOutput()
	if err != nil {
		return wrkResult{}, fmt.Errorf("wrk %s: %w\n%s", strings.Join(args, " "), err, out)
	}
	return parseWrk(string(out))
}

// parseWrk reads wrk's text report.
func parseWrk(out string) (wrkResult, error) {
	var r wrkResult
	m := reRPS.FindStringSubmatch(out)
	if m == nil {
		return r, fmt.Errorf("wrk printed no Requests/sec:\n%s", out)
	}
	r.RPS, _ = strconv.ParseFloat(m[1], 64)
	if m := reReqs.FindStringSubmatch(out); m != nil {
		r.Requests, _ = strconv.ParseInt(m[1], 10, 64)
	}
	if m := reNon2xx.FindStringSubmatch(out); m != nil {
		n, _ := strconv.ParseInt(m[1], 10, 64)
		r.Errors += n
	}
	if m := reSock.FindStringSubmatch(out); m != nil {
		for _, s := range m[1:] {
			n, _ := strconv.ParseInt(s, 10, 64)
			r.Errors += n
		}
	}
	return r, nil
}

// latencyResult is one fixed-rate run with the proxies' resource use.
type latencyResult struct {
	QPS           float64
	P50, P90, P99 float64 // milliseconds
	Errors        int64
	CPU           float64 // vCPU used by both proxies together
	CPUPer1k      float64 // vCPU of both proxies per 1,000 req/s
	RSSMax        float64 // MB, the larger proxy of the pair
	AnonMax       float64 // MB, private anonymous memory of the larger one
}

// fortioReport is the part of fortio's -json output we read.
type fortioReport struct {
	ActualQPS               float64
	RetCodes                map[string]int64
	ErrorsDurationHistogram struct{ Count int64 }
	DurationHistogram       struct {
		Count       int64
		Percentiles []struct {
			Percentile float64
			Value      float64 // seconds
		}
	}
}

// runFortio drives v at qps with conns connections for d and measures the
// proxies' CPU and peak RSS meanwhile. fortio's standard-library client is
// used for every variant so the explicit-proxy variant (which needs
// HTTP_PROXY) is measured with the same client as the rest; its URL then
// names a host that is not loopback, because Go never proxies loopback.
func runFortio(ctx context.Context, dir, fortio string, v *variant, qps, conns int, d time.Duration) (latencyResult, error) {
	var r latencyResult
	jsonPath := filepath.Join(dir, "fortio-"+fileTag(v.name)+".json")
	args := []string{"load", "-qps", strconv.Itoa(qps), "-c", strconv.Itoa(conns), "-t", d.String(),
		"-r", "0.00001", "-p", "50,90,99", "-stdclient", "-loglevel", "Error", "-json", jsonPath}
	if v.proxy {
		// fortio resolves the URL's host itself before the first request;
		// -resolve keeps it from asking DNS for the mesh name. Its dialer
		// then rewrites only the host of what it dials — the proxy's
		// address, already 127.0.0.1 — so requests still go to the proxy.
		args = append(args, "-resolve", "127.0.0.1")
	}
	args = append(args, v.url("/"))
	cctx, cancel := context.WithTimeout(ctx, d+30*time.Second)
	defer cancel()
	cmd := v.command(cctx, fortio, args...)
	cmd.Env = os.Environ()
	if v.proxy {
		cmd.Env = append(cmd.Env, "HTTP_PROXY=http://"+v.addr, "NO_PROXY=")
	}
	sampler := startSampler(v.procs)
	out, err := cmd.CombinedOutput()
	cpu, wall, rss, anon := sampler.stop()
	if err != nil {
		return r, fmt.Errorf("fortio %s: %w\n%s", strings.Join(args, " "), err, out)
	}
	b, err := os.ReadFile(jsonPath)
	if err != nil {
		return r, err
	}
	var rep fortioReport
	if err := json.Unmarshal(b, &rep); err != nil {
		return r, fmt.Errorf("decode fortio json: %w", err)
	}
	r.QPS = rep.ActualQPS
	for code, n := range rep.RetCodes {
		if code != "200" {
			r.Errors += n
		}
	}
	for _, p := range rep.DurationHistogram.Percentiles {
		switch p.Percentile {
		case 50:
			r.P50 = p.Value * 1000
		case 90:
			r.P90 = p.Value * 1000
		case 99:
			r.P99 = p.Value * 1000
		}
	}
	if len(v.procs) > 0 && wall > 0 {
		r.CPU = cpu / wall
		if r.QPS > 0 {
			r.CPUPer1k = r.CPU / (r.QPS / 1000)
		}
		r.RSSMax = rss / (1 << 20)
		r.AnonMax = anon / (1 << 20)
	}
	return r, nil
}

// sampler measures the CPU time of a set of processes over an interval and
// samples their RSS every 200 ms, keeping the peak of the largest one.
type sampler struct {
	procs  []*proc
	start  time.Time
	cpu0   float64
	stopCh chan struct{}
	wg     sync.WaitGroup
	mu     sync.Mutex
	rss    float64
	anon   float64
}

func startSampler(procs []*proc) *sampler {
	s := &sampler{procs: procs, start: time.Now(), stopCh: make(chan struct{})}
	for _, p := range procs {
		s.cpu0 += p.cpuSeconds()
	}
	s.wg.Add(1)
	go func() {
		defer s.wg.Done()
		t := time.NewTicker(200 * time.Millisecond)
		defer t.Stop()
		for {
			s.sampleRSS()
			select {
			case <-s.stopCh:
				return
			case <-t.C:
			}
		}
	}()
	return s
}

func (s *sampler) sampleRSS() {
	for _, p := range s.procs {
		rss, anon := p.rssBytes()
		s.mu.Lock()
		s.rss = max(s.rss, float64(rss))
		s.anon = max(s.anon, float64(anon))
		s.mu.Unlock()
	}
}

// stop returns CPU seconds used, wall seconds elapsed, and the peak RSS and
// peak private anonymous bytes of the largest process.
func (s *sampler) stop() (cpu, wall, rss, anon float64) {
	s.sampleRSS()
	close(s.stopCh)
	s.wg.Wait()
	for _, p := range s.procs {
		cpu += p.cpuSeconds()
	}
	return cpu - s.cpu0, time.Since(s.start).Seconds(), s.rss, s.anon
}

// httpClient returns a client for v: through the explicit proxy if v has
// one, with a fresh connection pool.
func httpClient(v *variant) *http.Client {
	tr := &http.Transport{DisableCompression: true, MaxIdleConnsPerHost: 4, DialContext: v.dial}
	if v.proxy {
		tr.Proxy = http.ProxyURL(&url.URL{Scheme: "http", Host: v.addr})
	}
	return &http.Client{Transport: tr, Timeout: 5 * time.Minute}
}

// checkVariant makes one request end to end and expects the 1 KiB body,
// then checks the server side refuses a TLS client with no certificate.
func checkVariant(ctx context.Context, v *variant, roots *tls.Config) error {
	c := httpClient(v)
	defer c.CloseIdleConnections()
	var lastErr error
	for i := 0; i < 20; i++ {
		lastErr = getOnce(ctx, c, v.url("/"))
		if lastErr == nil {
			break
		}
		time.Sleep(100 * time.Millisecond)
	}
	if lastErr != nil {
		return fmt.Errorf("%s: request through the pair failed: %w", v.name, lastErr)
	}
	if v.serverTLS == "" {
		return nil
	}
	return refusesNoCert(ctx, v.serverTLS, v.serverDial)
}

func getOnce(ctx context.Context, c *http.Client, u string) error {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u, nil)
	if err != nil {
		return err
	}
	resp, err := c.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		return err
	}
	if resp.StatusCode != http.StatusOK || len(b) != bodySize {
		return fmt.Errorf("got %s with %d bytes, want 200 with %d", resp.Status, len(b), bodySize)
	}
	return nil
}

// refusesNoCert connects to a server-side mTLS port without a client
// certificate and fails if it gets an HTTP response back.
func refusesNoCert(ctx context.Context, addr string, dial dialFunc) error {
	if dial == nil {
		dial = (&net.Dialer{}).DialContext
	}
	ctx, cancel := context.WithTimeout(ctx, 3*time.Second)
	defer cancel()
	raw, err := dial(ctx, "tcp", addr)
	if err != nil {
		return fmt.Errorf("server side %s: %w", addr, err)
	}
	// The server's identity is not what this check is about.
	conn := tls.Client(raw, &tls.Config{InsecureSkipVerify: true, MinVersion: tls.VersionTLS12})
	if err := conn.HandshakeContext(ctx); err != nil {
		conn.Close()
		return nil // refused during the handshake
	}
	defer conn.Close()
	conn.SetDeadline(time.Now().Add(3 * time.Second))
	if _, err := io.WriteString(conn, "GET / HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n\r\n"); err != nil {
		return nil
	}
	line, err := bufio.NewReader(conn).ReadString('\n')
	if err == nil && strings.HasPrefix(line, "HTTP/") {
		return fmt.Errorf("server side %s answered %q to a client without a certificate", addr, strings.TrimSpace(line))
	}
	return nil
}

// zeros is an endless reader of zero bytes, cut to length by LimitReader.
type zeros struct{}

func (zeros) Read(p []byte) (int, error) {
	clear(p)
	return len(p), nil
}

// runUpload POSTs size bytes through v and returns MiB/s, end to end
// (until the backend has read it all and answered), and the CPU seconds
// both proxies spent per GiB.
func runUpload(ctx context.Context, v *variant, size int64) (float64, float64, error) {
	s := startSampler(v.procs)
	mibs, err := upload(ctx, v, size)
	cpu, _, _, _ := s.stop()
	return mibs, cpu / (float64(size) / (1 << 30)), err
}

func upload(ctx context.Context, v *variant, size int64) (float64, error) {
	c := httpClient(v)
	defer c.CloseIdleConnections()
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, v.url("/upload"), io.LimitReader(zeros{}, size))
	if err != nil {
		return 0, err
	}
	req.ContentLength = size
	start := time.Now()
	resp, err := c.Do(req)
	if err != nil {
		return 0, fmt.Errorf("upload through %s: %w", v.name, err)
	}
	b, err := io.ReadAll(resp.Body)
	resp.Body.Close()
	el := time.Since(start)
	if err != nil {
		return 0, err
	}
	if resp.StatusCode != http.StatusOK || strings.TrimSpace(string(b)) != strconv.FormatInt(size, 10) {
		return 0, fmt.Errorf("upload through %s: backend answered %s %q, want 200 %d", v.name, resp.Status, b, size)
	}
	return float64(size) / (1 << 20) / el.Seconds(), nil
}

var errSkipped = errors.New("skipped")

// fileTag makes a variant name usable in a file name.
func fileTag(name string) string {
	return strings.Map(func(r rune) rune {
		if r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || r == '-' {
			return r
		}
		return '_'
	}, name)
}
