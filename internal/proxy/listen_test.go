package proxy

import (
	"errors"
	"net"
	"net/netip"
	"os"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/meshauth/meshauth/internal/ca/catest"
	"github.com/meshauth/meshauth/internal/policy"
)

// sockopt reads an integer socket option of c.
func sockopt(t *testing.T, c syscall.Conn, level, opt int) int {
	t.Helper()
	rc, err := c.SyscallConn()
	if err != nil {
		t.Fatal(err)
	}
	var (
		v    int
		gerr error
	)
	if err := rc.Control(func(fd uintptr) { v, gerr = syscall.GetsockoptInt(int(fd), level, opt) }); err != nil {
		t.Fatal(err)
	}
	if gerr != nil {
		t.Fatal(gerr)
	}
	return v
}

// TestListenLocal: the outbound and --upstream ports' listener sets no TCP
// keep-alive on the connections it accepts (TCP_NODELAY stays), and
// accepts a client that has sent nothing yet.
func TestListenLocal(t *testing.T) {
	l, err := listenLocal("127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	tl := l.(*net.TCPListener)
	if d := sockopt(t, tl, syscall.IPPROTO_TCP, syscall.TCP_DEFER_ACCEPT); d != 0 {
		t.Errorf("TCP_DEFER_ACCEPT is %d: a silent connection would not count against --max-connections at once", d)
	}
	c, err := net.Dial("tcp", l.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	tl.SetDeadline(time.Now().Add(10 * time.Second))
	a, err := l.Accept()
	if err != nil {
		t.Fatal(err)
	}
	defer a.Close()
	ac := a.(*net.TCPConn)
	if ka := sockopt(t, ac, syscall.SOL_SOCKET, syscall.SO_KEEPALIVE); ka != 0 {
		t.Errorf("accepted connection has SO_KEEPALIVE %d", ka)
	}
	if nd := sockopt(t, ac, syscall.IPPROTO_TCP, syscall.TCP_NODELAY); nd == 0 {
		t.Error("accepted connection lost TCP_NODELAY")
	}
}

// TestLocalListenersNoKeepAlive: the connections the sidecar accepts on
// the explicit proxy and an --upstream port have no keep-alive timer (in
// both modes), those on an inbound port, reached over the network, do.
// The timer is read where the kernel shows it: the "tr" field of the
// socket's /proc/net/tcp line (2: keep-alive timer pending).
func TestLocalListenersNoKeepAlive(t *testing.T) {
	ca := catest.New(t)
	for _, transparent := range []bool{false, true} {
		// httpbin:8000 is an HTTP service: the --upstream port's connection
		// waits for a request head, as the explicit proxy's does.
		snap := &policy.Snapshot{TrustDomain: "cluster.local", InboundDefault: policy.ServerStrict,
			Outbound: []policy.OutboundService{httpbinService(t, "127.0.0.1:9", policy.ClientIstioMutual, httpbinID)}}
		cli := startSidecar(t, ca, sleepID, sidecarOpts{outbound: true, snap: snap,
			inbound:   []InboundListener{{Listen: "127.0.0.1:0", App: "127.0.0.1:9", Port: 80}},
			upstreams: []Upstream{{Listen: "127.0.0.1:0", Service: "httpbin:8000"}},
			config: func(c *Config) {
				c.Transparent = transparent
				// Not redirected: the explicit proxy serves it.
				c.OriginalDst = func(net.Conn) (netip.AddrPort, error) { return netip.AddrPort{}, errors.New("not redirected") }
			}})
		for _, addr := range []net.Addr{cli.OutboundAddr, cli.UpstreamAddrs[0], cli.InboundAddrs[0]} {
			wantKA := addr == cli.InboundAddrs[0]
			c, err := net.Dial("tcp", addr.String())
			if err != nil {
				t.Fatal(err)
			}
			// A partial request head: the connection stays open, idle.
			c.Write([]byte("G"))
			// The kernel lists the socket as soon as it completes the
			// handshake, before the sidecar's accept (which is where Go
			// sets keep-alive): wait until the listener's accept queue is
			// empty, so what is read is the sidecar's setting.
			ka, found := false, false
			for deadline := time.Now().Add(5 * time.Second); time.Now().Before(deadline); time.Sleep(10 * time.Millisecond) {
				if acceptQueue(t, addr) != 0 {
					continue
				}
				if ka, found = keepAliveTimer(t, addr, c.LocalAddr()); found {
					break
				}
			}
			c.Close()
			if !found {
				t.Fatalf("the sidecar's end of %s -> %s is not in /proc/net/tcp\n%s", c.LocalAddr(), addr, cli.log.String())
			}
			if ka != wantKA {
				t.Errorf("transparent %v: connection accepted on %s has a keep-alive timer %v, want %v", transparent, addr, ka, wantKA)
			}
		}
	}
}

// keepAliveTimer finds the socket local -> remote in /proc/net/tcp and
// reports whether its keep-alive timer is pending.
func keepAliveTimer(t *testing.T, local, remote net.Addr) (ka, found bool) {
	t.Helper()
	b, err := os.ReadFile("/proc/net/tcp")
	if err != nil {
		t.Skip("no /proc/net/tcp:", err)
	}
	l := procAddr(local.(*net.TCPAddr).AddrPort(), false)
	r := procAddr(remote.(*net.TCPAddr).AddrPort(), false)
	for _, line := range strings.Split(string(b), "\n")[1:] {
		f := strings.Fields(line)
		if len(f) > 5 && f[1] == l && f[2] == r {
			return strings.HasPrefix(f[5], "02:"), true
		}
	}
	return false, false
}

// acceptQueue is the number of connections waiting in the accept queue of
// the listening socket on addr: for a LISTEN socket (state 0A) the
// rx_queue field of /proc/net/tcp holds it. -1 if not found.
func acceptQueue(t *testing.T, addr net.Addr) int64 {
	t.Helper()
	b, err := os.ReadFile("/proc/net/tcp")
	if err != nil {
		t.Skip("no /proc/net/tcp:", err)
	}
	l := procAddr(addr.(*net.TCPAddr).AddrPort(), false)
	for _, line := range strings.Split(string(b), "\n")[1:] {
		f := strings.Fields(line)
		if len(f) > 4 && f[1] == l && f[3] == "0A" {
			if _, rx, ok := strings.Cut(f[4], ":"); ok {
				n, err := strconv.ParseInt(rx, 16, 64)
				if err == nil {
					return n
				}
			}
		}
	}
	return -1
}
