package proxy

import (
	"context"
	"errors"
	"net"
	"os"
	"os/exec"
	"runtime"
	"strconv"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/meshauth/meshauth/internal/ca/catest"
	"github.com/meshauth/meshauth/internal/netns"
	"github.com/meshauth/meshauth/internal/policy"
)

// TestLoopbackClient: the decision the explicit proxy and the --upstream
// ports make from the client's address.
func TestLoopbackClient(t *testing.T) {
	for _, c := range []struct {
		addr net.Addr
		want bool
	}{
		{&net.TCPAddr{IP: net.ParseIP("127.0.0.1"), Port: 1}, true},
		{&net.TCPAddr{IP: net.ParseIP("127.0.0.2"), Port: 1}, true},
		{&net.TCPAddr{IP: net.ParseIP("::1"), Port: 1}, true},
		{&net.TCPAddr{IP: net.ParseIP("::ffff:127.0.0.1"), Port: 1}, true},
		{&net.TCPAddr{IP: net.ParseIP("10.244.0.1"), Port: 1}, false},
		{&net.TCPAddr{IP: net.ParseIP("192.0.2.2"), Port: 1}, false},
		{&net.TCPAddr{IP: net.ParseIP("::ffff:10.0.0.1"), Port: 1}, false},
		{&net.TCPAddr{IP: net.ParseIP("fe80::1"), Port: 1}, false},
		{&net.TCPAddr{IP: net.IPv4zero, Port: 1}, false},
		{&net.TCPAddr{}, false},
		{(*net.TCPAddr)(nil), false},
		{&net.UnixAddr{Name: "@x", Net: "unix"}, false},
		{nil, false},
	} {
		if got := loopbackClient(c.addr); got != c.want {
			t.Errorf("loopbackClient(%v) = %v, want %v", c.addr, got, c.want)
		}
	}
}

// TestUpstreamPortRefusesNonLoopback: an --upstream port (and the explicit
// proxy) bound to 0.0.0.0 serves a client on loopback and refuses, with a
// logged reason and a metric, one that connects over the network. The
// listeners are opened inside a network-namespace pod (internal/netns), so
// the refused client is a real other host: curl in the node namespace,
// connecting to the pod's address. Needs root; skipped otherwise.
func TestUpstreamPortRefusesNonLoopback(t *testing.T) {
	if err := netns.Available(); err != nil {
		t.Skip(err)
	}
	curl, err := exec.LookPath("curl")
	if err != nil {
		t.Skip("needs curl")
	}
	cl, err := netns.New(netns.Config{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cl.Close() })
	pod, err := cl.AddPod("sleep", "default")
	if err != nil {
		t.Fatal(err)
	}

	ca := catest.New(t)
	srv := startServer(t, ca, httpbinID, policy.ServerStrict, sidecarOpts{})
	snap := &policy.Snapshot{TrustDomain: "cluster.local",
		Outbound: []policy.OutboundService{httpbinService(t, srv.InboundAddrs[0].String(), policy.ClientIstioMutual, httpbinID)}}
	cli := startSidecar(t, ca, sleepID, sidecarOpts{snap: snap, noStart: true,
		outbound: true, outboundListen: "0.0.0.0:0",
		upstreams: []Upstream{{Listen: "0.0.0.0:0", Service: "httpbin:8000"}}})
	// The listeners are bound in the pod; the proxy's own dials (to the
	// server sidecar on this host's loopback) run on other threads, in the
	// test's namespace.
	if err := inNetNS(pod.NetNS, cli.Start); err != nil {
		t.Fatal(err)
	}
	upPort := strconv.Itoa(cli.UpstreamAddrs[0].(*net.TCPAddr).Port)
	proxyPort := strconv.Itoa(cli.OutboundAddr.(*net.TCPAddr).Port)

	run := func(cmd *exec.Cmd) string {
		out, _ := cmd.Output() // curl's exit status is in %{http_code} = 000
		return string(out)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	curlArgs := []string{"-s", "-o", "/dev/null", "-w", "%{http_code}", "--max-time", "10"}

	// The workload itself, on loopback: served.
	if got := run(pod.Command(ctx, curl, append(curlArgs, "http://127.0.0.1:"+upPort+"/headers")...)); got != "200" {
		t.Fatalf("loopback client of the upstream port: %q, want 200\n%s", got, cli.log.String())
	}
	// Another host (the node, over the bridge): refused.
	if got := run(cl.NodeCommand(ctx, curl, append(curlArgs, "http://"+pod.IP+":"+upPort+"/headers")...)); got != "000" {
		t.Errorf("curl from %s to the upstream port at %s:%s: %q, want a reset (000)", cl.NodeIP(), pod.IP, upPort, got)
	}
	// The same for the explicit proxy, which shares the rule.
	if got := run(cl.NodeCommand(ctx, curl, append(curlArgs, "-x", "http://"+pod.IP+":"+proxyPort, "http://httpbin:8000/headers")...)); got != "000" {
		t.Errorf("curl from %s through the explicit proxy at %s:%s: %q, want a reset (000)", cl.NodeIP(), pod.IP, proxyPort, got)
	}
	// The pod's own non-loopback address is not loopback either.
	if got := run(pod.Command(ctx, curl, append(curlArgs, "http://"+pod.IP+":"+upPort+"/headers")...)); got != "000" {
		t.Errorf("curl in the pod to its own address %s:%s: %q, want a reset (000)", pod.IP, upPort, got)
	}

	if n := counterValue(t, cli.m.Closed.WithLabelValues("outbound", reasonNotLoopback)); n != 3 {
		t.Errorf("refusals counted %v, want 3", n)
	}
	var upstream, explicit int
	for _, l := range cli.log.lines(t) {
		if l["reason"] != reasonNotLoopback {
			continue
		}
		switch {
		case l["listener"] == "upstream httpbin:8000" && strings.HasPrefix(l["peer"].(string), cl.NodeIP()+":"):
			upstream++
		case l["listener"] == "explicit proxy":
			explicit++
		}
	}
	if upstream != 1 || explicit != 1 {
		t.Errorf("refusals logged: upstream from the node %d, explicit proxy %d; want 1 each\n%s", upstream, explicit, cli.log.String())
	}
}

// inNetNS runs f on an OS thread that has joined the named network
// namespace (`ip netns`), so sockets f opens live there. The thread goes
// back to its namespace afterwards, or exits if it cannot.
func inNetNS(name string, f func() error) error {
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		orig, err := os.Open("/proc/thread-self/ns/net")
		if err != nil {
			errc <- err
			return // the locked thread exits with this goroutine
		}
		defer orig.Close()
		target, err := os.Open("/var/run/netns/" + name)
		if err != nil {
			errc <- err
			return
		}
		defer target.Close()
		if err := unix.Setns(int(target.Fd()), unix.CLONE_NEWNET); err != nil {
			errc <- err
			return
		}
		ferr := f()
		if err := unix.Setns(int(orig.Fd()), unix.CLONE_NEWNET); err != nil {
			errc <- errors.Join(ferr, err)
			return
		}
		runtime.UnlockOSThread()
		errc <- ferr
	}()
	return <-errc
}
