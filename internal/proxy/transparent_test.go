package proxy

import (
	"bufio"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/meshauth/meshauth/internal/agent"
	"github.com/meshauth/meshauth/internal/ca/catest"
	"github.com/meshauth/meshauth/internal/metrics"
	"github.com/meshauth/meshauth/internal/policy"
)

// echoServer echoes every connection's bytes back, prefixed once by name.
func echoServer(t *testing.T, name string) net.Listener {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				io.WriteString(c, name+":")
				io.Copy(c, c)
			}()
		}
	}()
	return l
}

// TestTransparentOnLoopback runs the transparent paths without iptables:
// the proxy's OriginalDst is replaced by a table of what the redirect would
// have reported (the network-namespace test in cmd/meshd checks the real
// SO_ORIGINAL_DST). A captured HTTP call to the service VIP and a captured
// TCP connection both reach the app through the server sidecar's capture
// port with mTLS; an unknown destination passes through in plaintext.
func TestTransparentOnLoopback(t *testing.T) {
	ca := catest.New(t)
	app := headersApp(t)
	echo := echoServer(t, "app")
	appPort := portOf(t, app.Listener.Addr().String())
	echoPort := portOf(t, echo.Addr().String())

	// Server sidecar: capture listener; the "original destination" of each
	// accepted connection is the pod port it was sent to.
	var srvOrig, cliOrig origTable
	// Every connection to the server's capture port was "sent to" the pod
	// port the client side recorded just before dialing.
	srvOrig.fallback = cliOrig.lastTarget
	srvStore := agent.NewStore(agent.StoreConfig{})
	if err := srvStore.Set(mustSVID(t, ca.Issue(t, httpbinID)), ca.Bundle()); err != nil {
		t.Fatal(err)
	}
	srv, err := New(Config{
		Certs: srvStore,
		Policy: NewConfigStore(&policy.Snapshot{TrustDomain: "cluster.local", InboundDefault: policy.ServerStrict,
			Inbound: []policy.InboundPort{
				{Port: appPort, Mode: policy.ServerStrict, Protocol: "HTTP"},
				{Port: echoPort, Mode: policy.ServerStrict, Protocol: "TCP"},
			}}),
		InboundCapture: "127.0.0.1:0",
		OriginalDst:    srvOrig.lookup,
		Metrics:        NewMetrics(metrics.NewRegistry()),
		Log:            slog.New(slog.DiscardHandler),
	})
	if err != nil {
		t.Fatal(err)
	}
	if err := srv.Start(); err != nil {
		t.Fatal(err)
	}
	defer srv.Close()
	capturePort := portOf(t, srv.CaptureAddr.String())

	vip := "10.96.0.10"
	svc := policy.OutboundService{
		Name: "httpbin", Namespace: "default", Hosts: []string{"httpbin"}, Address: vip,
		Ports: []policy.OutboundPort{
			{Name: "http", Port: 8000, TargetPort: appPort, Protocol: "HTTP", TLSMode: policy.ClientIstioMutual},
			{Name: "tcp", Port: 9000, TargetPort: echoPort, Protocol: "TCP", TLSMode: policy.ClientIstioMutual},
		},
		// The endpoint's "pod port" is the server sidecar's capture port on
		// loopback, for both service ports.
		Endpoints:        []policy.Endpoint{{Address: "127.0.0.1", Ports: map[uint32]uint32{appPort: capturePort, echoPort: capturePort}, Sidecar: true}},
		ServerIdentities: []string{httpbinID},
	}
	cliStore := agent.NewStore(agent.StoreConfig{})
	if err := cliStore.Set(mustSVID(t, ca.Issue(t, sleepID)), ca.Bundle()); err != nil {
		t.Fatal(err)
	}
	cli, err := New(Config{
		Certs:       cliStore,
		Policy:      NewConfigStore(&policy.Snapshot{TrustDomain: "cluster.local", Outbound: []policy.OutboundService{svc}}),
		Outbound:    "127.0.0.1:0",
		Transparent: true,
		OriginalDst: cliOrig.lookup,
		Metrics:     NewMetrics(metrics.NewRegistry()),
		Log:         slog.New(slog.DiscardHandler),
	})
	if err != nil {
		t.Fatal(err)
	}
	if err := cli.Start(); err != nil {
		t.Fatal(err)
	}
	defer cli.Close()

	// dialCaptured connects to the client sidecar as if the app had dialed
	// dst and iptables had redirected it.
	dialCaptured := func(dst string, podTarget uint32) net.Conn {
		t.Helper()
		cliOrig.set(netip.MustParseAddrPort(dst), netip.AddrPortFrom(netip.MustParseAddr("127.0.0.1"), uint16(podTarget)))
		c, err := net.Dial("tcp", cli.OutboundAddr.String())
		if err != nil {
			t.Fatal(err)
		}
		c.SetDeadline(time.Now().Add(10 * time.Second))
		return c
	}

	t.Run("HTTP to the service VIP", func(t *testing.T) {
		c := dialCaptured(vip+":8000", appPort)
		defer c.Close()
		io.WriteString(c, "GET /headers HTTP/1.1\r\nHost: httpbin:8000\r\n\r\n")
		resp, err := http.ReadResponse(bufio.NewReader(c), nil)
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(resp.Body)
		if resp.StatusCode != 200 || !strings.Contains(string(b), "URI="+sleepID) {
			t.Fatalf("status %d body %s", resp.StatusCode, b)
		}
	})
	t.Run("TCP to the service VIP", func(t *testing.T) {
		c := dialCaptured(vip+":9000", echoPort)
		defer c.Close()
		io.WriteString(c, "hello")
		got := make([]byte, len("app:hello"))
		if _, err := io.ReadFull(c, got); err != nil || string(got) != "app:hello" {
			t.Fatalf("got %q, %v", got, err)
		}
	})
	t.Run("unknown destination passes through", func(t *testing.T) {
		other := echoServer(t, "outside")
		c := dialCaptured(other.Addr().String(), 0)
		defer c.Close()
		io.WriteString(c, "x")
		got := make([]byte, len("outside:x"))
		if _, err := io.ReadFull(c, got); err != nil || string(got) != "outside:x" {
			t.Fatalf("got %q, %v", got, err)
		}
	})
}

// origTable stands in for SO_ORIGINAL_DST: the client side records the
// destination the "app" dialed and the pod port the server side will see.
type origTable struct {
	mu       sync.Mutex
	dst, pod netip.AddrPort
	fallback func() netip.AddrPort
}

func (o *origTable) set(dst, pod netip.AddrPort) {
	o.mu.Lock()
	o.dst, o.pod = dst, pod
	o.mu.Unlock()
}

func (o *origTable) lastTarget() netip.AddrPort {
	o.mu.Lock()
	defer o.mu.Unlock()
	return o.pod
}

func (o *origTable) lookup(c net.Conn) (netip.AddrPort, error) {
	if o.fallback != nil {
		return o.fallback(), nil
	}
	o.mu.Lock()
	defer o.mu.Unlock()
	if !o.dst.IsValid() {
		return netip.AddrPort{}, fmt.Errorf("no original destination")
	}
	return o.dst, nil
}
