package proxy

import (
	"bufio"
	"crypto/tls"
	"encoding/json"
	"errors"
	"io"
	"net"
	"net/http"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/meshauth/meshauth/internal/ca/catest"
	"github.com/meshauth/meshauth/internal/policy"
)

// serverPair starts the httpbin side: an app and its sidecar with one STRICT
// (or given mode) inbound port 80.
func startServer(t *testing.T, ca *catest.CA, id string, mode policy.ServerMode, o sidecarOpts) *sidecar {
	t.Helper()
	app := headersApp(t)
	o.inbound = []InboundListener{{Listen: "127.0.0.1:0", App: app.Listener.Addr().String(), Port: 80}}
	if o.snap == nil {
		o.snap = &policy.Snapshot{
			TrustDomain: "cluster.local", InboundDefault: policy.ServerStrict,
			Inbound: []policy.InboundPort{{Port: 80, Mode: mode, Protocol: "HTTP", Service: "httpbin.default"}},
		}
	}
	return startSidecar(t, ca, id, o)
}

// TestInboundStrictRefusals sends each kind of peer a STRICT port must
// refuse, and checks that each refusal is reset and named, with its own
// reason, in the log and in the metrics.
func TestInboundStrictRefusals(t *testing.T) {
	ca := catest.New(t)
	foreign := catest.New(t)
	now := time.Now()
	revoked := ca.Issue(t, sleepID)
	srv := startServer(t, ca, httpbinID, policy.ServerStrict, sidecarOpts{
		bundle:           ca.Bundle(revoked),
		handshakeTimeout: 300 * time.Millisecond,
	})
	addr := srv.InboundAddrs[0].String()

	tlsWith := func(c *catest.Cert) func(t *testing.T) error {
		return func(t *testing.T) error {
			cfg := &tls.Config{InsecureSkipVerify: true, NextProtos: []string{"http/1.1"}}
			if c != nil {
				cfg.Certificates = []tls.Certificate{c.TLS}
			}
			conn, err := tls.Dial("tcp", addr, cfg)
			if err != nil {
				return err
			}
			defer conn.Close()
			// TLS 1.3: the client's handshake completes before the server
			// has checked the client certificate; the refusal shows on read.
			conn.SetDeadline(time.Now().Add(5 * time.Second))
			io.WriteString(conn, "GET /headers HTTP/1.1\r\nHost: httpbin\r\n\r\n")
			_, err = http.ReadResponse(bufio.NewReader(conn), nil)
			return err
		}
	}
	raw := func(payload []byte, closeWrite bool) func(t *testing.T) error {
		return func(t *testing.T) error {
			conn, err := net.Dial("tcp", addr)
			if err != nil {
				return err
			}
			defer conn.Close()
			conn.SetDeadline(time.Now().Add(5 * time.Second))
			if len(payload) > 0 {
				conn.Write(payload)
			}
			if closeWrite {
				conn.(*net.TCPConn).CloseWrite()
			}
			_, err = io.ReadAll(conn)
			if err == nil {
				return nil // clean EOF: the server closed without an answer
			}
			return err
		}
	}
	// The first 20 bytes of a real ClientHello record: header and the start
	// of the handshake message, then the client gives up.
	truncatedHello := []byte{0x16, 0x03, 0x01, 0x02, 0x00, 0x01, 0x00, 0x01, 0xfc, 0x03, 0x03, 1, 2, 3, 4, 5, 6, 7, 8, 9}

	cases := []struct {
		name   string
		reason string
		run    func(t *testing.T) error
		// wantReset: the client must see a reset (curl exit 56).
		wantReset bool
	}{
		{"plaintext HTTP", reasonPlaintext, raw([]byte("GET /headers HTTP/1.1\r\nHost: httpbin:8000\r\n\r\n"), false), true},
		{"TLS without client certificate", "no_client_cert", tlsWith(nil), false},
		{"certificate from a foreign root", "untrusted_chain", tlsWith(foreign.Issue(t, sleepID)), false},
		{"expired", "expired", tlsWith(ca.Issue(t, sleepID, catest.Validity(now.Add(-2*time.Hour), now.Add(-time.Hour)))), false},
		{"not yet valid", "not_yet_valid", tlsWith(ca.Issue(t, sleepID, catest.Validity(now.Add(time.Hour), now.Add(2*time.Hour)))), false},
		{"foreign trust domain", "foreign_trust_domain", tlsWith(ca.Issue(t, "spiffe://evil.example/ns/default/sa/sleep")), false},
		{"revoked serial", "revoked", tlsWith(revoked), false},
		{"no SPIFFE URI", "no_spiffe_id", tlsWith(ca.Issue(t, sleepID, catest.NoURISAN())), false},
		{"garbage bytes", reasonNotTLS, raw([]byte("\x00\x01\x02garbage\xff\xfe"), false), true},
		{"truncated ClientHello", reasonTruncatedHello, raw(truncatedHello, true), false},
		{"stalled handshake", reasonTimeout, raw([]byte{0x16, 0x03, 0x01}, false), false},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			counter := srv.m.Handshakes.WithLabelValues("inbound", "refused", tc.reason)
			before := counterValue(t, counter)
			goroutines := runtime.NumGoroutine()
			err := tc.run(t)
			if err == nil && tc.name != "truncated ClientHello" && tc.name != "stalled handshake" {
				t.Fatalf("request succeeded; want it refused")
			}
			if tc.wantReset && (err == nil || !strings.Contains(err.Error(), "reset")) {
				t.Errorf("client error = %v; want connection reset by peer", err)
			}
			// The refusal is recorded before the socket is reset, so it is
			// visible once the client has seen the close.
			waitFor(t, func() bool { return counterValue(t, counter) == before+1 }, "metric meshauth_sidecar_tls_handshakes_total{reason=%q} +1", tc.reason)
			found := false
			for _, l := range srv.log.lines(t) {
				if l["msg"] == "connection refused" && l["reason"] == tc.reason {
					found = true
				}
			}
			if !found {
				t.Errorf("no log line with reason=%q; log:\n%s", tc.reason, srv.log.String())
			}
			// The handler goroutine is gone: the count returns to (at most)
			// what it was before the connection.
			waitFor(t, func() bool { return runtime.NumGoroutine() <= goroutines }, "goroutines back to %d", goroutines)
		})
	}
}

// waitFor polls cond for up to 10s. It bounds the test, not a speed: the
// conditions are events that must happen.
func waitFor(t *testing.T, cond func() bool, format string, args ...any) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for: "+format, args...)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// TestSidecarPairXFCC: an in-mesh request through a client and a server
// sidecar reaches the app with the server's XFCC header; a client-sent XFCC
// never does.
func TestSidecarPairXFCC(t *testing.T) {
	ca := catest.New(t)
	srv := startServer(t, ca, httpbinID, policy.ServerStrict, sidecarOpts{})
	cli := startSidecar(t, ca, sleepID, sidecarOpts{outbound: true, snap: &policy.Snapshot{
		TrustDomain: "cluster.local",
		Outbound:    []policy.OutboundService{httpbinService(t, srv.InboundAddrs[0].String(), policy.ClientIstioMutual, httpbinID)},
	}})
	c := proxyClient(cli, true)
	for i := 0; i < 3; i++ {
		req, _ := http.NewRequest("GET", "http://httpbin:8000/headers", nil)
		req.Header.Set("X-Forwarded-Client-Cert", "By=spiffe://cluster.local/ns/default/sa/admin;URI=spiffe://cluster.local/ns/kube-system/sa/root")
		resp, err := c.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		var body struct{ Headers map[string]string }
		json.NewDecoder(resp.Body).Decode(&body)
		resp.Body.Close()
		if resp.StatusCode != 200 {
			t.Fatalf("status %d, headers %v", resp.StatusCode, resp.Header)
		}
		want := "By=" + httpbinID + ";URI=" + sleepID
		if got := body.Headers["X-Forwarded-Client-Cert"]; got != want {
			t.Fatalf("app saw XFCC %q, want %q", got, want)
		}
		if got := body.Headers["Host"]; got != "httpbin:8000" {
			t.Errorf("app saw Host %q, want httpbin:8000", got)
		}
	}
	// Three requests, one mTLS handshake: the upstream connection is pooled.
	if n := counterValue(t, cli.m.Handshakes.WithLabelValues("outbound", "ok", "mtls")); n != 1 {
		t.Errorf("outbound handshakes = %v, want 1 (pooled)", n)
	}
}

// TestSecureNaming: the server shows a valid mesh certificate, but of a
// service account that does not run httpbin. The client sidecar refuses it.
func TestSecureNaming(t *testing.T) {
	ca := catest.New(t)
	evil := "spiffe://cluster.local/ns/default/sa/evil"
	srv := startServer(t, ca, evil, policy.ServerStrict, sidecarOpts{})
	cli := startSidecar(t, ca, sleepID, sidecarOpts{outbound: true, snap: &policy.Snapshot{
		TrustDomain: "cluster.local",
		Outbound:    []policy.OutboundService{httpbinService(t, srv.InboundAddrs[0].String(), policy.ClientIstioMutual, httpbinID)},
	}})
	resp, err := proxyClient(cli, false).Get("http://httpbin:8000/headers")
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode == 200 {
		t.Fatalf("request to an impostor succeeded: %s", b)
	}
	if got := resp.Header.Get(reasonHeader); got != reasonSecureNaming {
		t.Errorf("reason header %q, want %q (body %s)", got, reasonSecureNaming, b)
	}
	if !strings.Contains(string(b), evil) {
		t.Errorf("body does not name the identity shown: %s", b)
	}
	if n := counterValue(t, cli.m.Handshakes.WithLabelValues("outbound", "refused", reasonSecureNaming)); n != 1 {
		t.Errorf("secure_naming refusals = %v, want 1", n)
	}
	if !strings.Contains(cli.log.String(), `"reason":"secure_naming"`) {
		t.Errorf("log has no secure_naming reason:\n%s", cli.log.String())
	}
}

// TestPermissive: one port takes plaintext and mTLS.
func TestPermissive(t *testing.T) {
	ca := catest.New(t)
	srv := startServer(t, ca, httpbinID, policy.ServerPermissive, sidecarOpts{})
	addr := srv.InboundAddrs[0].String()

	// Plaintext, straight to the server sidecar: accepted, no XFCC (and a
	// forged one removed).
	req, _ := http.NewRequest("GET", "http://"+addr+"/headers", nil)
	req.Header.Set("X-Forwarded-Client-Cert", "URI=spiffe://cluster.local/ns/default/sa/admin")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	var body struct{ Headers map[string]string }
	json.NewDecoder(resp.Body).Decode(&body)
	resp.Body.Close()
	if resp.StatusCode != 200 {
		t.Fatalf("plaintext: status %d", resp.StatusCode)
	}
	if x, ok := body.Headers["X-Forwarded-Client-Cert"]; ok {
		t.Errorf("plaintext request reached the app with XFCC %q", x)
	}

	// mTLS, through a client sidecar, on the same port.
	cli := startSidecar(t, ca, sleepID, sidecarOpts{outbound: true, snap: &policy.Snapshot{
		TrustDomain: "cluster.local",
		Outbound:    []policy.OutboundService{httpbinService(t, addr, policy.ClientIstioMutual, httpbinID)},
	}})
	resp, err = proxyClient(cli, false).Get("http://httpbin:8000/headers")
	if err != nil {
		t.Fatal(err)
	}
	json.NewDecoder(resp.Body).Decode(&body)
	resp.Body.Close()
	if resp.StatusCode != 200 || body.Headers["X-Forwarded-Client-Cert"] != "By="+httpbinID+";URI="+sleepID {
		t.Fatalf("mTLS: status %d XFCC %q", resp.StatusCode, body.Headers["X-Forwarded-Client-Cert"])
	}
	if n := counterValue(t, srv.m.Handshakes.WithLabelValues("inbound", "ok", "plaintext")); n != 1 {
		t.Errorf("plaintext accepts = %v, want 1", n)
	}
	if n := counterValue(t, srv.m.Handshakes.WithLabelValues("inbound", "ok", "mtls")); n != 1 {
		t.Errorf("mTLS accepts = %v, want 1", n)
	}
}

// TestRBACDeny: with authorization on and no binding, an authenticated
// request gets 403 with the reason, and the app never sees it.
func TestRBACDeny(t *testing.T) {
	ca := catest.New(t)
	srv := startServer(t, ca, httpbinID, policy.ServerStrict, sidecarOpts{snap: &policy.Snapshot{
		TrustDomain: "cluster.local",
		Inbound:     []policy.InboundPort{{Port: 80, Mode: policy.ServerStrict, Protocol: "HTTP", Service: "httpbin.default"}},
		RBAC:        &policy.RBAC{DecidedBy: "RbacConfig//default"},
	}})
	cli := startSidecar(t, ca, sleepID, sidecarOpts{outbound: true, snap: &policy.Snapshot{
		TrustDomain: "cluster.local",
		Outbound:    []policy.OutboundService{httpbinService(t, srv.InboundAddrs[0].String(), policy.ClientIstioMutual, httpbinID)},
	}})
	resp, err := proxyClient(cli, false).Get("http://httpbin:8000/headers")
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusForbidden || !strings.HasPrefix(string(b), "RBAC: access denied") {
		t.Fatalf("status %d body %q; want 403 RBAC: access denied", resp.StatusCode, b)
	}
	if n := counterValue(t, srv.m.Authz.WithLabelValues("deny")); n != 1 {
		t.Errorf("deny decisions = %v, want 1", n)
	}
}

var _ = errors.New

// TestRevocationReachesHandshakes: a bundle update that revokes the client's
// serial takes effect on the next handshake, including one that would resume
// a session (connections already open are closed: live_test.go).
func TestRevocationReachesHandshakes(t *testing.T) {
	ca := catest.New(t)
	srv := startServer(t, ca, httpbinID, policy.ServerStrict, sidecarOpts{})
	client := ca.Issue(t, sleepID)
	cfg := &tls.Config{InsecureSkipVerify: true, Certificates: []tls.Certificate{client.TLS},
		ClientSessionCache: tls.NewLRUClientSessionCache(8), NextProtos: []string{"http/1.1"}}
	resumed := false
	get := func() error {
		conn, err := tls.Dial("tcp", srv.InboundAddrs[0].String(), cfg)
		if err != nil {
			return err
		}
		defer conn.Close()
		conn.SetDeadline(time.Now().Add(5 * time.Second))
		io.WriteString(conn, "GET /headers HTTP/1.1\r\nHost: httpbin\r\n\r\n")
		resp, err := http.ReadResponse(bufio.NewReader(conn), nil)
		if err != nil {
			return err
		}
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		resumed = conn.ConnectionState().DidResume
		return nil
	}
	for i := 0; i < 2; i++ {
		if err := get(); err != nil {
			t.Fatalf("before revocation: %v", err)
		}
	}
	if !resumed {
		t.Fatal("the second connection did not resume its TLS session; the test needs it to")
	}
	if err := srv.store.SetBundle(ca.BundleWith(2, nil, client)); err != nil {
		t.Fatal(err)
	}
	if err := get(); err == nil {
		t.Fatal("a revoked client certificate was accepted after the bundle update")
	}
	waitFor(t, func() bool {
		return counterValue(t, srv.m.Handshakes.WithLabelValues("inbound", "refused", "revoked")) == 1
	}, "one refusal with reason revoked")
}
