package main

import (
	"context"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"runtime"
	"strings"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/meshauth/meshauth/internal/capture"
)

// netnsAvailable says why network-namespace tests cannot run here.
func netnsAvailable() error {
	if os.Geteuid() != 0 {
		return fmt.Errorf("needs root for ip netns and iptables (CI runs as root)")
	}
	for _, tool := range []string{"ip", "iptables", "iptables-restore", "setpriv", "curl"} {
		if _, err := exec.LookPath(tool); err != nil {
			return fmt.Errorf("needs %s on PATH (make deps installs it)", tool)
		}
	}
	return nil
}

func sh(t *testing.T, args ...string) string {
	t.Helper()
	out, err := exec.Command(args[0], args[1:]...).CombinedOutput()
	if err != nil {
		t.Fatalf("%s: %v\n%s", strings.Join(args, " "), err, out)
	}
	return string(out)
}

// newNetns creates a named network namespace with loopback up and removes it
// at cleanup.
func newNetns(t *testing.T, name string) {
	t.Helper()
	exec.Command("ip", "netns", "del", name).Run()
	sh(t, "ip", "netns", "add", name)
	t.Cleanup(func() { exec.Command("ip", "netns", "del", name).Run() })
	sh(t, "ip", "-n", name, "link", "set", "lo", "up")
}

// inNetns runs fn on an OS thread that has joined the namespace, so sockets
// fn creates live there. The thread is never returned to the pool (the
// goroutine exits locked, and the runtime discards the thread).
func inNetns(t *testing.T, name string, fn func()) {
	t.Helper()
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		f, err := os.Open("/var/run/netns/" + name)
		if err != nil {
			errc <- err
			return
		}
		defer f.Close()
		if err := unix.Setns(int(f.Fd()), unix.CLONE_NEWNET); err != nil {
			errc <- fmt.Errorf("setns %s: %w", name, err)
			return
		}
		fn()
		errc <- nil
	}()
	if err := <-errc; err != nil {
		t.Fatal(err)
	}
}

// serveText answers every request on l with prefix + the original
// destination of the connection (SO_ORIGINAL_DST).
func serveText(l net.Listener, prefix string) {
	srv := &http.Server{
		Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			fmt.Fprint(w, prefix, r.Context().Value(origKey{}))
		}),
		ConnContext: func(ctx context.Context, c net.Conn) context.Context {
			dst, err := capture.OriginalDst(c)
			if err != nil {
				return context.WithValue(ctx, origKey{}, "error: "+err.Error())
			}
			return context.WithValue(ctx, origKey{}, dst.String())
		},
	}
	go srv.Serve(l)
}

type origKey struct{}

// TestInitNetCapture installs `meshd init-net` in a client namespace and a
// server namespace joined by a veth pair, and checks with the real curl that
//   - outbound TCP from the app is redirected to 15001 and the original
//     destination is recovered with SO_ORIGINAL_DST (IPv4 and IPv6);
//   - uid 1337 (the sidecar) is not captured on the way out;
//   - inbound TCP is redirected to 15006 with its original destination;
//   - --cleanup removes every rule.
func TestInitNetCapture(t *testing.T) {
	if err := netnsAvailable(); err != nil {
		t.Skip(err)
	}
	bin := meshdBinary(t)
	a, b := fmt.Sprintf("mat-%d-a", os.Getpid()), fmt.Sprintf("mat-%d-b", os.Getpid())
	newNetns(t, a)
	newNetns(t, b)
	sh(t, "ip", "link", "add", "va", "netns", a, "type", "veth", "peer", "name", "vb", "netns", b)
	sh(t, "ip", "-n", a, "addr", "add", "10.77.0.1/24", "dev", "va")
	sh(t, "ip", "-n", b, "addr", "add", "10.77.0.2/24", "dev", "vb")
	v6 := capture.HaveIPv6()
	if v6 {
		sh(t, "ip", "-n", a, "addr", "add", "fd77::1/64", "dev", "va", "nodad")
		sh(t, "ip", "-n", b, "addr", "add", "fd77::2/64", "dev", "vb", "nodad")
	}
	sh(t, "ip", "-n", a, "link", "set", "va", "up")
	sh(t, "ip", "-n", b, "link", "set", "vb", "up")

	inNetns(t, a, func() {
		l, err := net.Listen("tcp", ":15001")
		if err != nil {
			panic(err)
		}
		serveText(l, "outbound-captured ")
	})
	inNetns(t, b, func() {
		l, err := net.Listen("tcp", ":15006")
		if err != nil {
			panic(err)
		}
		serveText(l, "inbound-captured ")
		app, err := net.Listen("tcp", ":8080")
		if err != nil {
			panic(err)
		}
		serveText(app, "app ")
	})
	ipv6 := fmt.Sprint(v6)
	for _, ns := range []string{a, b} {
		out := sh(t, "ip", "netns", "exec", ns, bin, "init-net", "--ipv6="+ipv6)
		t.Logf("%s: %s", ns, strings.TrimSpace(out))
	}
	curlIn := func(ns string, uid int, url string) string {
		t.Helper()
		args := []string{"ip", "netns", "exec", ns}
		if uid != 0 {
			args = append(args, "setpriv", fmt.Sprintf("--reuid=%d", uid), fmt.Sprintf("--regid=%d", uid), "--clear-groups")
		}
		args = append(args, "curl", "-s", "-S", "-g", "--max-time", "5", "--noproxy", "*", url)
		out, err := exec.Command(args[0], args[1:]...).CombinedOutput()
		if err != nil {
			t.Fatalf("%s: %v: %s", strings.Join(args, " "), err, out)
		}
		return string(out)
	}
	type capCase struct {
		name, ns string
		uid      int
		url      string
		want     string
	}
	cases := []capCase{
		{"app traffic is captured with its original destination", a, 0, "http://10.77.0.2:8080/", "outbound-captured 10.77.0.2:8080"},
		{"uid 1337 is not captured outbound, and is captured inbound on the server", a, 1337, "http://10.77.0.2:8080/", "inbound-captured 10.77.0.2:8080"},
		{"loopback is not captured", b, 0, "http://127.0.0.1:8080/", "app "},
	}
	if v6 {
		cases = append(cases,
			capCase{"IPv6 original destination", a, 0, "http://[fd77::2]:8080/", "outbound-captured [fd77::2]:8080"},
			capCase{"IPv6 inbound original destination", a, 1337, "http://[fd77::2]:8080/", "inbound-captured [fd77::2]:8080"},
		)
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			if got := curlIn(tc.ns, tc.uid, tc.url); !strings.HasPrefix(got, tc.want) {
				t.Fatalf("got %q, want %q", got, tc.want)
			}
		})
	}
	t.Run("cleanup removes the capture", func(t *testing.T) {
		sh(t, "ip", "netns", "exec", a, bin, "init-net", "--cleanup", "--ipv6="+ipv6)
		if rules := sh(t, "ip", "netns", "exec", a, "iptables-save", "-t", "nat"); strings.Contains(rules, "MESHAUTH") {
			t.Fatalf("rules left after --cleanup:\n%s", rules)
		}
		// Without the client-side capture, the app reaches the server (whose
		// inbound capture is still on).
		if got := curlIn(a, 0, "http://10.77.0.2:8080/"); !strings.HasPrefix(got, "inbound-captured 10.77.0.2:8080") {
			t.Fatalf("after cleanup got %q", got)
		}
		// Idempotent.
		sh(t, "ip", "netns", "exec", a, bin, "init-net", "--cleanup", "--ipv6="+ipv6)
	})
}
