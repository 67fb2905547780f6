package proxy

import (
	"bufio"
	"net"
	"net/http"
	"testing"
	"time"

	"github.com/meshauth/meshauth/internal/ca/catest"
	"github.com/meshauth/meshauth/internal/policy"
)

// TestKeepAliveRefusedAfterStrict: a plaintext keep-alive connection that
// was accepted while the port was DISABLE must not carry more requests once
// the port turns STRICT (found by test/e2e's Policy/DestinationRule mismatch
// scenario: a client sidecar's pooled plaintext connection kept getting 200
// from a server that policy had made STRICT).
func TestKeepAliveRefusedAfterStrict(t *testing.T) {
	ca := catest.New(t)
	srv := startServer(t, ca, httpbinID, policy.ServerDisable, sidecarOpts{})
	c, err := net.Dial("tcp", srv.InboundAddrs[0].String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	br := bufio.NewReader(c)
	get := func() (*http.Response, error) {
		c.SetDeadline(time.Now().Add(5 * time.Second))
		if _, err := c.Write([]byte("GET /headers HTTP/1.1\r\nHost: httpbin:8000\r\n\r\n")); err != nil {
			return nil, err
		}
		resp, err := http.ReadResponse(br, nil)
		if err == nil {
			resp.Body.Close()
		}
		return resp, err
	}
	if resp, err := get(); err != nil || resp.StatusCode != 200 {
		t.Fatalf("plaintext under DISABLE: %v %v", resp, err)
	}

	strict := &policy.Snapshot{TrustDomain: "cluster.local", InboundDefault: policy.ServerStrict,
		Inbound: []policy.InboundPort{{Port: 80, Mode: policy.ServerStrict, Protocol: "HTTP", Service: "httpbin.default"}}}
	if err := srv.config.Set(strict); err != nil {
		t.Fatal(err)
	}
	// The same connection, now that the port is STRICT.
	if resp, err := get(); err == nil {
		t.Fatalf("plaintext request on the kept-alive connection after the port turned STRICT: status %d, want the connection refused", resp.StatusCode)
	}
	// Refused once: either the recheck on the policy change closed the idle
	// connection (live.go), or the request arrived first and the engine
	// refused it.
	refused := func() float64 {
		return counterValue(t, srv.m.Handshakes.WithLabelValues("inbound", "refused", reasonPlaintext)) +
			counterValue(t, srv.m.Closed.WithLabelValues("inbound", reasonRecheckPlaintext))
	}
	waitFor(t, func() bool { return refused() == 1 }, "one refusal (reason plaintext or plaintext_now_strict); log:\n%s", srv.log.String())
}
