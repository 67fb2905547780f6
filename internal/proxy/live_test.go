package proxy

import (
	"bufio"
	"crypto/tls"
	"io"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/meshauth/meshauth/internal/ca/catest"
	"github.com/meshauth/meshauth/internal/policy"
)

// echoApp is a TCP app that echoes every line back.
func echoApp(t *testing.T) net.Listener {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() { io.Copy(c, c); c.Close() }()
		}
	}()
	return ln
}

func tcpSnap(mode policy.ServerMode, rbac *policy.RBAC) *policy.Snapshot {
	return &policy.Snapshot{TrustDomain: "cluster.local", InboundDefault: policy.ServerStrict, RBAC: rbac,
		Inbound: []policy.InboundPort{{Port: 3306, Mode: mode, Protocol: "TCP", Service: "mysql.default"}}}
}

// startTCPServer is a sidecar with one TCP inbound port (3306) in front of
// an echo app.
func startTCPServer(t *testing.T, ca *catest.CA, snap *policy.Snapshot) *sidecar {
	app := echoApp(t)
	return startSidecar(t, ca, "spiffe://cluster.local/ns/default/sa/mysql", sidecarOpts{
		snap:    snap,
		inbound: []InboundListener{{Listen: "127.0.0.1:0", App: app.Addr().String(), Port: 3306}},
	})
}

// echo sends a line and reads it back; an error means the connection is gone.
func echo(c net.Conn, br *bufio.Reader) error {
	c.SetDeadline(time.Now().Add(5 * time.Second))
	if _, err := io.WriteString(c, "ping\n"); err != nil {
		return err
	}
	line, err := br.ReadString('\n')
	if err == nil && line != "ping\n" {
		return io.ErrUnexpectedEOF
	}
	return err
}

func dialTLS(t *testing.T, addr string, c *catest.Cert, alpn string) *tls.Conn {
	t.Helper()
	conn, err := tls.Dial("tcp", addr, &tls.Config{InsecureSkipVerify: true,
		Certificates: []tls.Certificate{c.TLS}, NextProtos: []string{alpn}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return conn
}

func closedLogged(t *testing.T, srv *sidecar, reason string) {
	t.Helper()
	waitFor(t, func() bool {
		return counterValue(t, srv.m.Closed.WithLabelValues("inbound", reason)) == 1
	}, "meshauth_sidecar_connections_closed_total{reason=%q} == 1", reason)
	for _, l := range srv.log.lines(t) {
		if l["msg"] == "established connection closed" && l["reason"] == reason {
			return
		}
	}
	t.Errorf("no log line 'established connection closed' with reason=%q; log:\n%s", reason, srv.log.String())
}

// TestPlainTCPRelayClosedWhenPortTurnsStrict: a plaintext TCP relay accepted
// while its port was DISABLE is closed when the port turns STRICT; a change
// that keeps the port DISABLE leaves it alone.
func TestPlainTCPRelayClosedWhenPortTurnsStrict(t *testing.T) {
	ca := catest.New(t)
	srv := startTCPServer(t, ca, tcpSnap(policy.ServerDisable, nil))
	c, err := net.Dial("tcp", srv.InboundAddrs[0].String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	br := bufio.NewReader(c)
	if err := echo(c, br); err != nil {
		t.Fatalf("plaintext relay under DISABLE: %v", err)
	}
	// An unrelated change (a new port) keeps the relay.
	other := tcpSnap(policy.ServerDisable, nil)
	other.Inbound = append(other.Inbound, policy.InboundPort{Port: 9000, Mode: policy.ServerStrict, Protocol: "TCP"})
	if err := srv.config.Set(other); err != nil {
		t.Fatal(err)
	}
	time.Sleep(100 * time.Millisecond) // let the watcher run its recheck
	if err := echo(c, br); err != nil {
		t.Fatalf("relay closed by a change that does not concern it: %v", err)
	}
	if err := srv.config.Set(tcpSnap(policy.ServerStrict, nil)); err != nil {
		t.Fatal(err)
	}
	closedLogged(t, srv, reasonRecheckPlaintext)
	if err := echo(c, br); err == nil {
		t.Fatal("plaintext relay still carries data after its port turned STRICT")
	}
}

// TestRevokedPeerConnectionsClosed: connections of a peer whose serial is
// revoked after they were established are closed, a TCP relay and a
// kept-alive HTTP connection alike; another peer's connection stays.
func TestRevokedPeerConnectionsClosed(t *testing.T) {
	ca := catest.New(t)
	bad := ca.Issue(t, sleepID)
	good := ca.Issue(t, "spiffe://cluster.local/ns/default/sa/other")

	t.Run("tcp", func(t *testing.T) {
		srv := startTCPServer(t, ca, tcpSnap(policy.ServerStrict, nil))
		addr := srv.InboundAddrs[0].String()
		cb, cg := dialTLS(t, addr, bad, alpnTCP), dialTLS(t, addr, good, alpnTCP)
		bb, bg := bufio.NewReader(cb), bufio.NewReader(cg)
		if err := echo(cb, bb); err != nil {
			t.Fatal(err)
		}
		if err := echo(cg, bg); err != nil {
			t.Fatal(err)
		}
		if err := srv.store.SetBundle(ca.BundleWith(2, nil, bad)); err != nil {
			t.Fatal(err)
		}
		closedLogged(t, srv, "revoked")
		if err := echo(cb, bb); err == nil {
			t.Fatal("the revoked peer's relay still carries data")
		}
		if err := echo(cg, bg); err != nil {
			t.Fatalf("a valid peer's relay was closed: %v", err)
		}
	})

	t.Run("http keep-alive", func(t *testing.T) {
		srv := startServer(t, ca, httpbinID, policy.ServerStrict, sidecarOpts{})
		c := dialTLS(t, srv.InboundAddrs[0].String(), bad, alpnHTTP1)
		br := bufio.NewReader(c)
		get := func() error {
			c.SetDeadline(time.Now().Add(5 * time.Second))
			if _, err := io.WriteString(c, "GET /headers HTTP/1.1\r\nHost: httpbin\r\n\r\n"); err != nil {
				return err
			}
			resp, err := http.ReadResponse(br, nil)
			if err != nil {
				return err
			}
			io.Copy(io.Discard, resp.Body)
			return resp.Body.Close()
		}
		if err := get(); err != nil {
			t.Fatal(err)
		}
		if err := srv.store.SetBundle(ca.BundleWith(2, nil, bad)); err != nil {
			t.Fatal(err)
		}
		closedLogged(t, srv, "revoked")
		if err := get(); err == nil {
			t.Fatal("a kept-alive connection of a revoked peer still gets answers")
		}
	})
}

// startTCPRelay starts a STRICT TCP sidecar and an mTLS relay through it
// from sleep, checked to carry data.
func startTCPRelay(t *testing.T) (*sidecar, *catest.Cert, *tls.Conn, *bufio.Reader) {
	t.Helper()
	ca := catest.New(t)
	client := ca.Issue(t, sleepID)
	srv := startTCPServer(t, ca, tcpSnap(policy.ServerStrict, nil))
	c := dialTLS(t, srv.InboundAddrs[0].String(), client, alpnTCP)
	br := bufio.NewReader(c)
	if err := echo(c, br); err != nil {
		t.Fatal(err)
	}
	return srv, client, c, br
}

// TestTCPRelayClosedWhenAuthzDenies: a TCP relay authorized at its start is
// closed when RBAC changes to deny its source.
func TestTCPRelayClosedWhenAuthzDenies(t *testing.T) {
	srv, _, c, br := startTCPRelay(t)
	// RBAC on with no role binding sleep: deny.
	if err := srv.config.Set(tcpSnap(policy.ServerStrict, &policy.RBAC{DecidedBy: "RbacConfig default"})); err != nil {
		t.Fatal(err)
	}
	closedLogged(t, srv, reasonRecheckDenied)
	if err := echo(c, br); err == nil {
		t.Fatal("relay still carries data after authorization turned to deny")
	}
}

// TestTCPPortWithOrigins: end-user (JWT) authentication is enforced on
// HTTP, HTTP2 and GRPC ports only, so a TCP port whose Policy gains origins refuses
// new connections and closes the relays it carries; no request gets
// through unauthenticated.
func TestTCPPortWithOrigins(t *testing.T) {
	srv, client, c, br := startTCPRelay(t)
	withJWT := tcpSnap(policy.ServerStrict, nil)
	withJWT.Inbound[0].EndUser = &policy.EndUserAuthn{JWT: []policy.JWTRule{{Issuer: "iss", JwksURI: "https://127.0.0.1:1/jwks"}}, Optional: true}
	if err := srv.config.Set(withJWT); err != nil {
		t.Fatal(err)
	}
	closedLogged(t, srv, reasonJWT)
	if err := echo(c, br); err == nil {
		t.Fatal("relay still carries data after its port required end-user authentication")
	}
	// A new connection is refused before its TLS handshake completes.
	c2, err := tls.Dial("tcp", srv.InboundAddrs[0].String(), &tls.Config{InsecureSkipVerify: true,
		Certificates: []tls.Certificate{client.TLS}, NextProtos: []string{alpnTCP}})
	if err == nil {
		defer c2.Close()
		if err := echo(c2, bufio.NewReader(c2)); err == nil {
			t.Fatal("a new TCP connection to a port with origins was relayed")
		}
	}
	if !strings.Contains(srv.log.String(), `"reason":"jwt_denied"`) {
		t.Errorf("no jwt_denied in the log:\n%s", srv.log.String())
	}
}

// TestPooledUpstreamOfRevokedServerDropped: the client sidecar's pooled mTLS
// connection to a server whose serial is then revoked is not reused; the
// request that would have reused it makes a new handshake, which is refused.
func TestPooledUpstreamOfRevokedServerDropped(t *testing.T) {
	ca := catest.New(t)
	srv := startServer(t, ca, httpbinID, policy.ServerStrict, sidecarOpts{})
	cli := startSidecar(t, ca, sleepID, sidecarOpts{outbound: true, snap: &policy.Snapshot{
		TrustDomain: "cluster.local",
		Outbound:    []policy.OutboundService{httpbinService(t, srv.InboundAddrs[0].String(), policy.ClientIstioMutual, httpbinID)},
	}})
	get := func() int {
		resp, err := proxyClient(cli, false).Get("http://httpbin:8000/headers")
		if err != nil {
			t.Fatal(err)
		}
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		return resp.StatusCode
	}
	if code := get(); code != 200 {
		t.Fatalf("before revocation: %d", code)
	}
	if err := cli.store.SetBundle(ca.BundleWith(2, nil, &catest.Cert{Leaf: srv.store.SVID().Chain[0]})); err != nil {
		t.Fatal(err)
	}
	waitFor(t, func() bool { return cli.pool.gen.Load() > 1 }, "the client's recheck after the bundle change")
	if code := get(); code == 200 {
		t.Fatal("the request reached a server whose certificate is revoked (pooled connection reused)")
	}
	if n := counterValue(t, cli.m.Closed.WithLabelValues("outbound", "revoked")); n != 1 {
		t.Errorf("pooled connections dropped as revoked = %v, want 1; log:\n%s", n, cli.log.String())
	}
	if n := counterValue(t, cli.m.Handshakes.WithLabelValues("outbound", "refused", "revoked")); n != 1 {
		t.Errorf("new handshakes refused as revoked = %v, want 1", n)
	}
}

// TestOutboundTunnelToRevokedServerClosed: a client sidecar's CONNECT
// tunnel (mTLS to the server sidecar) is closed when the server's serial is
// revoked in the client's bundle; the server side changes nothing here.
func TestOutboundTunnelToRevokedServerClosed(t *testing.T) {
	ca := catest.New(t)
	srv := startTCPServer(t, ca, tcpSnap(policy.ServerStrict, nil))
	addr := srv.InboundAddrs[0].String()
	host, _, _ := net.SplitHostPort(addr)
	mysql := policy.OutboundService{
		Name: "mysql", Namespace: "default",
		Hosts: []string{"mysql", "mysql.default", "mysql.default.svc.cluster.local"},
		Ports: []policy.OutboundPort{{Name: "tcp", Port: 3306, TargetPort: 3306, Protocol: "TCP", TLSMode: policy.ClientIstioMutual}},
		Endpoints: []policy.Endpoint{{Workload: "mysql-1", ServiceAccount: "mysql", Address: host, Sidecar: true,
			Ports: map[uint32]uint32{3306: portOf(t, addr)}}},
		ServerIdentities: []string{"spiffe://cluster.local/ns/default/sa/mysql"},
	}
	cli := startSidecar(t, ca, sleepID, sidecarOpts{outbound: true, snap: &policy.Snapshot{
		TrustDomain: "cluster.local", Outbound: []policy.OutboundService{mysql}}})

	c, err := net.Dial("tcp", cli.OutboundAddr.String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	br := bufio.NewReader(c)
	c.SetDeadline(time.Now().Add(5 * time.Second))
	io.WriteString(c, "CONNECT mysql:3306 HTTP/1.1\r\nHost: mysql:3306\r\n\r\n")
	resp, err := http.ReadResponse(br, &http.Request{Method: "CONNECT"})
	if err != nil || resp.StatusCode != 200 {
		t.Fatalf("CONNECT: %v %v", resp, err)
	}
	if err := echo(c, br); err != nil {
		t.Fatalf("tunnel: %v", err)
	}
	// An unrelated bundle change (a new version revoking someone else)
	// keeps the tunnel.
	if err := cli.store.SetBundle(ca.BundleWith(2, nil, ca.Issue(t, sleepID))); err != nil {
		t.Fatal(err)
	}
	waitFor(t, func() bool { return cli.pool.gen.Load() >= 2 }, "recheck after the first bundle change")
	if err := echo(c, br); err != nil {
		t.Fatalf("tunnel closed by a change that does not concern it: %v", err)
	}
	if err := cli.store.SetBundle(ca.BundleWith(3, nil, &catest.Cert{Leaf: srv.store.SVID().Chain[0]})); err != nil {
		t.Fatal(err)
	}
	waitFor(t, func() bool {
		return counterValue(t, cli.m.Closed.WithLabelValues("outbound", "revoked")) == 1
	}, "the tunnel to the revoked server closed")
	if err := echo(c, br); err == nil {
		t.Fatal("the tunnel to a revoked server still carries data")
	}
}
