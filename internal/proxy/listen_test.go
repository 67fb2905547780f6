package proxy

import (
	"net"
	"syscall"
	"testing"
	"time"

	"github.com/meshauth/meshauth/internal/ca/catest"
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
// keep-alive on the connections it accepts (TCP_NODELAY stays), and defers
// accept until the client has sent something only where asked to; a
// client that sends nothing is still accepted, after the deferral.
func TestListenLocal(t *testing.T) {
	for _, clientFirst := range []bool{true, false} {
		l, err := listenLocal("127.0.0.1:0", clientFirst)
		if err != nil {
			t.Fatal(err)
		}
		defer l.Close()
		tl := l.(*net.TCPListener)
		if d := sockopt(t, tl, syscall.IPPROTO_TCP, syscall.TCP_DEFER_ACCEPT); (d != 0) != clientFirst {
			t.Errorf("clientFirst %v: TCP_DEFER_ACCEPT is %d", clientFirst, d)
		}
		for _, send := range []bool{true, false} {
			c, err := net.Dial("tcp", l.Addr().String())
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			if send {
				c.Write([]byte("GET"))
			}
			// A silent client waits in the kernel for the deferral (about
			// a second), no longer.
			tl.SetDeadline(time.Now().Add(20 * time.Second))
			a, err := l.Accept()
			if err != nil {
				t.Fatalf("clientFirst %v, client sends %v: %v", clientFirst, send, err)
			}
			ac := a.(*net.TCPConn)
			if ka := sockopt(t, ac, syscall.SOL_SOCKET, syscall.SO_KEEPALIVE); ka != 0 {
				t.Errorf("accepted connection has SO_KEEPALIVE %d", ka)
			}
			if nd := sockopt(t, ac, syscall.IPPROTO_TCP, syscall.TCP_NODELAY); nd == 0 {
				t.Error("accepted connection lost TCP_NODELAY")
			}
			a.Close()
		}
	}
}

// TestOutboundListenerDefersOnlyExplicit: the explicit proxy's port defers
// accept (its clients send a request first); in transparent mode the same
// port also carries captured server-first protocols, so it does not; an
// --upstream port never does.
func TestOutboundListenerDefersOnlyExplicit(t *testing.T) {
	ca := catest.New(t)
	for _, transparent := range []bool{false, true} {
		cli := startSidecar(t, ca, sleepID, sidecarOpts{outbound: true,
			upstreams: []Upstream{{Listen: "127.0.0.1:0", Service: "httpbin:8000"}},
			config:    func(c *Config) { c.Transparent = transparent }})
		for _, l := range cli.listeners {
			want := !transparent && l.Addr().String() == cli.OutboundAddr.String()
			d := sockopt(t, l.(*net.TCPListener), syscall.IPPROTO_TCP, syscall.TCP_DEFER_ACCEPT)
			if (d != 0) != want {
				t.Errorf("transparent %v: listener %s has TCP_DEFER_ACCEPT %d", transparent, l.Addr(), d)
			}
		}
	}
}
