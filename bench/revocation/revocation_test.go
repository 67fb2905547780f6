// Package revocation measures how fast a revocation reaches the fleet
// (issue #17, item 3): the time from `meshctl ca revoke` to the last of N
// sidecars refusing the revoked peer. The sidecars are plain local
// processes on loopback (internal/localmesh), real `meshd sidecar` binaries
// with their agents on the CA's WatchTrustBundle stream; the peer is a
// client holding a certificate from the same CA (`meshctl cert issue`),
// which keeps one mTLS connection open to every sidecar's inbound port.
//
// A sidecar has refused the peer when both are true: it closed the open
// connection (the recheck of established connections on a bundle change),
// and a new handshake with the revoked certificate gets no answer. The
// benchmark reports the slowest sidecar (s-to-last-refusal) and the median.
//
//	go test -run '^$' -bench Revocation -benchtime 5x ./bench/revocation
//
// TestRevocationReachesEverySidecar runs the same harness with a few
// sidecars in `go test ./...`: it asserts that every sidecar refuses the
// revoked peer, never how fast.
package revocation

import (
	"bufio"
	"context"
	"crypto/tls"
	"errors"
	"flag"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/meshauth/meshauth/internal/localmesh"
)

var (
	bin      string
	buildErr error
	// sidecars is the fleet size of the benchmark.
	sidecars = flag.Int("sidecars", 100, "sidecars in BenchmarkRevocation")
)

func TestMain(m *testing.M) {
	flag.Parse()
	code := func() int {
		if testing.Short() {
			return m.Run()
		}
		bin, buildErr = localmesh.BuildTemp("meshauth-revocation-bin-", "../../cmd/meshd", "../../cmd/meshd-sidecar", "../../cmd/meshctl")
		if bin != "" {
			defer os.RemoveAll(bin)
		}
		return m.Run()
	}()
	os.Exit(code)
}

// fleet is a control plane, N sidecars whose inbound ports all forward to
// one shared app (an HTTP server in this process), and the peer.
type fleet struct {
	mesh     *localmesh.Mesh
	inbounds []string
	tb       testing.TB
}

func newFleet(tb testing.TB, n int) *fleet {
	tb.Helper()
	if testing.Short() {
		tb.Skip("starts a control plane and sidecars; skipped with -short")
	}
	if buildErr != nil {
		tb.Fatal(buildErr)
	}
	dir := tb.TempDir()
	m, err := localmesh.New(localmesh.Config{Dir: dir, Meshd: filepath.Join(bin, "meshd"), Meshctl: filepath.Join(bin, "meshctl"), StartTimeout: 60 * time.Second})
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(m.Close)
	if err := m.WriteConfig("mesh.yaml", "apiVersion: meshauth.io/v1alpha1\nkind: MeshConfig\nmetadata: {name: mesh}\nspec: {authPolicy: MUTUAL_TLS}\n"); err != nil {
		tb.Fatal(err)
	}
	ctx := context.Background()
	if err := m.StartControl(ctx); err != nil {
		tb.Fatal(err)
	}
	app := httptestServer(tb)
	f := &fleet{mesh: m, tb: tb, inbounds: make([]string, n)}
	// Ten at a time: the control plane signs and registers them while the
	// next ones start.
	var wg sync.WaitGroup
	sem := make(chan struct{}, 10)
	errs := make([]error, n)
	for i := range n {
		wg.Add(1)
		sem <- struct{}{}
		go func() {
			defer wg.Done()
			defer func() { <-sem }()
			port, err := localmesh.FreePort()
			if err != nil {
				errs[i] = err
				return
			}
			f.inbounds[i] = fmt.Sprintf("127.0.0.1:%d", port)
			_, errs[i] = m.StartWorkload(ctx, localmesh.WorkloadSpec{
				Name: fmt.Sprintf("server%03d", i), Namespace: "default", ServiceAccount: fmt.Sprintf("server%03d", i),
				SelfRegister: true,
				SidecarArgs:  []string{"--inbound", f.inbounds[i] + "=" + app, "--access-log=false"},
			})
		}()
	}
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		tb.Fatal(err)
	}
	return f
}

// httptestServer is the shared app: it answers 200 to anything.
func httptestServer(tb testing.TB) string {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		tb.Fatal(err)
	}
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) { w.WriteHeader(200) })}
	go srv.Serve(l)
	tb.Cleanup(func() { srv.Close() })
	return l.Addr().String()
}

// ctl runs meshctl against the fleet's control plane.
func (f *fleet) ctl(args ...string) (string, error) {
	cmd := exec.Command(f.mesh.Meshctl(), append([]string{"--dir", f.mesh.StateDir}, args...)...)
	var stderr strings.Builder
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		return "", fmt.Errorf("meshctl %s: %w: %s", strings.Join(args, " "), err, stderr.String())
	}
	return string(out), nil
}

// peer issues a fresh certificate for the peer identity and returns its
// TLS config and serial.
func (f *fleet) peer(name string) (*tls.Config, string) {
	f.tb.Helper()
	tok, err := f.mesh.Token(context.Background(), "default", name)
	if err != nil {
		f.tb.Fatal(err)
	}
	dir := filepath.Join(f.tb.TempDir(), name)
	out, err := f.ctl("cert", "issue", "--namespace", "default", "--service-account", name, "--token", tok, "--out", dir)
	if err != nil {
		f.tb.Fatal(err)
	}
	_, rest, ok := strings.Cut(out, " serial ")
	if !ok {
		f.tb.Fatalf("meshctl cert issue printed no serial: %q", out)
	}
	serial := strings.Fields(rest)[0]
	cert, err := tls.LoadX509KeyPair(filepath.Join(dir, "cert-chain.pem"), filepath.Join(dir, "key.pem"))
	if err != nil {
		f.tb.Fatal(err)
	}
	// The peer does not check the sidecars' names: what is measured is
	// whether the sidecar accepts the peer.
	return &tls.Config{Certificates: []tls.Certificate{cert}, InsecureSkipVerify: true, MinVersion: tls.VersionTLS13}, serial
}

// request makes one HTTP/1.1 request on c and reads the status line.
func request(c net.Conn, r *bufio.Reader) error {
	_ = c.SetDeadline(time.Now().Add(5 * time.Second))
	if _, err := c.Write([]byte("GET /revocation HTTP/1.1\r\nHost: app\r\n\r\n")); err != nil {
		return err
	}
	resp, err := http.ReadResponse(r, nil)
	if err != nil {
		return err
	}
	resp.Body.Close()
	_ = c.SetDeadline(time.Time{})
	if resp.StatusCode != 200 {
		return fmt.Errorf("HTTP %d", resp.StatusCode)
	}
	return nil
}

// accepted reports whether addr serves the peer on a new connection.
func accepted(addr string, cfg *tls.Config) bool {
	c, err := tls.DialWithDialer(&net.Dialer{Timeout: 2 * time.Second}, "tcp", addr, cfg)
	if err != nil {
		return false
	}
	defer c.Close()
	return request(c, bufio.NewReader(c)) == nil
}

// measure opens a connection to every sidecar as the peer, revokes the
// peer's certificate with meshctl and returns, per sidecar, how long after
// the start of `meshctl ca revoke` it had closed the connection and
// refused a new one. A sidecar that still serves the peer after bound
// gets -1.
func (f *fleet) measure(name string, bound time.Duration) ([]time.Duration, time.Duration) {
	f.tb.Helper()
	cfg, serial := f.peer(name)
	conns := make([]*tls.Conn, len(f.inbounds))
	for i, addr := range f.inbounds {
		c, err := tls.DialWithDialer(&net.Dialer{Timeout: 5 * time.Second}, "tcp", addr, cfg)
		if err == nil {
			err = request(c, bufio.NewReader(c))
		}
		if err != nil {
			f.tb.Fatalf("sidecar %d (%s) does not serve the peer before the revocation: %v", i, addr, err)
		}
		conns[i] = c
	}
	out := make([]time.Duration, len(conns))
	var wg sync.WaitGroup
	start := time.Now()
	for i, c := range conns {
		wg.Add(1)
		go func() {
			defer wg.Done()
			defer c.Close()
			_ = c.SetReadDeadline(start.Add(bound))
			_, err := c.Read(make([]byte, 1)) // returns when the sidecar closes it
			if errors.Is(err, os.ErrDeadlineExceeded) {
				out[i] = -1
				return
			}
			for accepted(f.inbounds[i], cfg) {
				if time.Since(start) > bound {
					out[i] = -1
					return
				}
				time.Sleep(20 * time.Millisecond)
			}
			out[i] = time.Since(start)
		}()
	}
	if _, err := f.ctl("ca", "revoke", "--serial", serial, "--reason", "benchmark"); err != nil {
		f.tb.Fatal(err)
	}
	cli := time.Since(start)
	wg.Wait()
	return out, cli
}

// summary is the slowest and the median sidecar, and how many never
// refused.
func summary(ds []time.Duration) (last, median time.Duration, never int) {
	var ok []time.Duration
	for _, d := range ds {
		if d < 0 {
			never++
			continue
		}
		ok = append(ok, d)
	}
	if len(ok) == 0 {
		return 0, 0, never
	}
	slices.Sort(ok)
	return ok[len(ok)-1], ok[len(ok)/2], never
}

// TestRevocationReachesEverySidecar: a revoked peer is refused by every
// sidecar of a small fleet, its open connections closed. No timing is
// asserted; 30 s is the bound that means "never".
func TestRevocationReachesEverySidecar(t *testing.T) {
	f := newFleet(t, 5)
	ds, _ := f.measure("peer", 30*time.Second)
	last, median, never := summary(ds)
	t.Logf("5 sidecars: last refusal %s after meshctl ca revoke, median %s", last, median)
	if never > 0 {
		t.Fatalf("%d of 5 sidecars still served the revoked peer 30 s after meshctl ca revoke: %v", never, ds)
	}
}

// BenchmarkRevocation: one revocation per iteration across -sidecars
// sidecars (default 100), each with its own fresh peer certificate.
func BenchmarkRevocation(b *testing.B) {
	f := newFleet(b, *sidecars)
	var lasts, medians, clis []time.Duration
	b.ResetTimer()
	for i := 0; b.Loop(); i++ {
		ds, cli := f.measure(fmt.Sprintf("peer%d", i), 60*time.Second)
		last, median, never := summary(ds)
		if never > 0 {
			b.Fatalf("%d of %d sidecars still served the revoked peer 60 s after meshctl ca revoke", never, len(ds))
		}
		b.Logf("revocation %d: %d sidecars, last refusal %s, median %s, meshctl ca revoke returned after %s", i, len(ds), last, median, cli)
		lasts, medians, clis = append(lasts, last), append(medians, median), append(clis, cli)
	}
	b.ReportMetric(mean(lasts).Seconds(), "s-to-last-refusal")
	b.ReportMetric(slices.Max(lasts).Seconds(), "s-to-last-refusal-max")
	b.ReportMetric(mean(medians).Seconds(), "s-to-median-refusal")
	b.ReportMetric(mean(clis).Seconds(), "s-meshctl-revoke")
	b.ReportMetric(0, "ns/op")
}

func mean(ds []time.Duration) time.Duration {
	var sum time.Duration
	for _, d := range ds {
		sum += d
	}
	return sum / time.Duration(len(ds))
}
