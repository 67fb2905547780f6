package proxy

import (
	"bufio"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/meshauth/meshauth/internal/ca/catest"
	"github.com/meshauth/meshauth/internal/policy"
)

// TestDecideOutbound is the outbound decision every outbound path takes
// (captured connections, --upstream ports, forward-proxy requests,
// CONNECT): mesh route, no endpoints, passthrough or deny, by host:port,
// the passthrough rule and whether host:port is the original destination.
func TestDecideOutbound(t *testing.T) {
	snap := &policy.Snapshot{Outbound: []policy.OutboundService{
		{
			Name: "httpbin", Namespace: "default",
			Hosts:   []string{"httpbin", "httpbin.default", "httpbin.default.svc.cluster.local"},
			Address: "10.96.0.10",
			Ports: []policy.OutboundPort{
				{Name: "http", Port: 8000, TargetPort: 80, Protocol: "HTTP", TLSMode: policy.ClientIstioMutual},
				{Name: "tcp", Port: 9000, TargetPort: 9000, Protocol: "TCP", TLSMode: policy.ClientDisable},
			},
			Endpoints:        []policy.Endpoint{{Address: "10.1.0.5"}, {Address: "10.1.0.6", Ports: map[uint32]uint32{80: 15006}}},
			ServerIdentities: []string{"spiffe://cluster.local/ns/default/sa/httpbin"},
		},
		{
			Name: "empty", Namespace: "default",
			Hosts:   []string{"empty.default"},
			Address: "10.96.0.20",
			Ports:   []policy.OutboundPort{{Port: 8080}},
		},
	}}
	table := buildRoutes(snap)

	for _, tc := range []struct {
		name    string
		host    string
		port    uint32
		deny    bool // Config.DenyUnknown
		origDst bool
		want    outboundVerdict
		service string   // route's service, "" for none
		target  string   // host:port as asked for
		eps     []string // endpoints picked on successive calls (toMesh)
	}{
		{name: "service name", host: "httpbin", port: 8000, want: toMesh, service: "httpbin.default",
			target: "httpbin:8000", eps: []string{"10.1.0.6:15006", "10.1.0.5:80", "10.1.0.6:15006"}},
		{name: "name is case- and dot-insensitive", host: "HTTPBIN.default.svc.cluster.local.", port: 8000, want: toMesh, service: "httpbin.default",
			target: "HTTPBIN.default.svc.cluster.local.:8000"},
		{name: "virtual IP", host: "10.96.0.10", port: 8000, origDst: true, want: toMesh, service: "httpbin.default", target: "10.96.0.10:8000"},
		{name: "virtual IP mapped into IPv6", host: "::ffff:10.96.0.10", port: 8000, want: toMesh, service: "httpbin.default", target: "[::ffff:10.96.0.10]:8000"},
		{name: "endpoint dialled directly", host: "10.1.0.5", port: 80, origDst: true, want: toMesh, service: "httpbin.default"},
		{name: "second port is its own route", host: "httpbin.default", port: 9000, want: toMesh, service: "httpbin.default",
			eps: []string{"10.1.0.6:9000", "10.1.0.5:9000"}},
		{name: "mesh route wins over deny-unknown", host: "httpbin", port: 8000, deny: true, want: toMesh, service: "httpbin.default"},
		{name: "unknown port of a mesh host", host: "httpbin", port: 8001, want: passthrough, target: "httpbin:8001"},
		{name: "unknown host", host: "example.com", port: 443, want: passthrough, target: "example.com:443"},
		{name: "unknown IPv6 host", host: "2001:db8::1", port: 443, want: passthrough, target: "[2001:db8::1]:443"},
		{name: "unknown host, passthrough off", host: "example.com", port: 443, deny: true, want: denyUnknown, target: "example.com:443"},
		{name: "unknown captured IP, passthrough off", host: "192.0.2.7", port: 80, deny: true, origDst: true, want: denyUnknown},
		{name: "no endpoints, by name", host: "empty.default", port: 8080, want: noEndpoints, service: "empty.default"},
		{name: "no endpoints, deny-unknown does not apply", host: "empty.default", port: 8080, deny: true, want: noEndpoints, service: "empty.default"},
		{name: "no endpoints, captured: original destination", host: "10.96.0.20", port: 8080, origDst: true, want: toMesh, service: "empty.default",
			eps: []string{"10.96.0.20:8080", "10.96.0.20:8080"}},
		{name: "no endpoints, empty original destination", host: "", port: 8080, origDst: true, want: passthrough},
	} {
		t.Run(tc.name, func(t *testing.T) {
			o := decideOutbound(table, tc.deny, tc.host, tc.port, tc.origDst)
			if o.verdict != tc.want {
				t.Fatalf("decide(%q, %d, deny=%v, origDst=%v) = %v, want %v", tc.host, tc.port, tc.deny, tc.origDst, o.verdict, tc.want)
			}
			svc := ""
			if o.route != nil {
				svc = o.route.service
			}
			if svc != tc.service {
				t.Errorf("route service = %q, want %q", svc, tc.service)
			}
			if tc.target != "" && o.target != tc.target {
				t.Errorf("target = %q, want %q", o.target, tc.target)
			}
			for i, want := range tc.eps {
				if got := o.endpoint(); got != want {
					t.Errorf("endpoint #%d = %q, want %q", i, got, want)
				}
			}
		})
	}
}

// TestDecideOutboundNoSnapshot: before the first snapshot every
// destination is unknown.
func TestDecideOutboundNoSnapshot(t *testing.T) {
	table := buildRoutes(nil)
	if o := decideOutbound(table, false, "httpbin", 8000, false); o.verdict != passthrough || o.route != nil {
		t.Errorf("no snapshot, passthrough on: %v (route %v), want passthrough", o.verdict, o.route)
	}
	if o := decideOutbound(table, true, "httpbin", 8000, true); o.verdict != denyUnknown {
		t.Errorf("no snapshot, passthrough off: %v, want deny_unknown", o.verdict)
	}
}

// TestOutboundPathsActOnDecision: each outbound path acts on the decision
// in its own medium, through real sidecars on loopback: the forward proxy
// answers 502 unknown_destination / 503 no_endpoints, CONNECT answers 502
// / 503 before any tunnel, an --upstream port closes the connection and
// logs the deny; with passthrough on, all three reach a host outside the
// mesh in plaintext.
func TestOutboundPathsActOnDecision(t *testing.T) {
	app := startRawApp(t, okApp)
	empty := policy.OutboundService{
		Name: "empty", Namespace: "default", Hosts: []string{"empty.default"},
		Ports: []policy.OutboundPort{{Port: 8080, Protocol: "HTTP"}, {Port: 9000, Protocol: "TCP"}},
	}
	snap := &policy.Snapshot{TrustDomain: "cluster.local", Outbound: []policy.OutboundService{empty}}
	ca := catest.New(t)

	// ask sends one request head on a fresh connection to addr and reads
	// the answer (nil and the error if the connection closed instead).
	ask := func(addr, head, method string) (*http.Response, string, error) {
		t.Helper()
		c, err := net.Dial("tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		c.SetDeadline(time.Now().Add(10 * time.Second))
		if _, err := io.WriteString(c, head); err != nil {
			return nil, "", err
		}
		br := bufio.NewReader(c)
		resp, err := http.ReadResponse(br, &http.Request{Method: method})
		if err != nil {
			return nil, "", err
		}
		body := ""
		if method != http.MethodConnect {
			b, _ := io.ReadAll(resp.Body)
			body = string(b)
		} else if resp.StatusCode == http.StatusOK {
			// Through the tunnel to the app.
			io.WriteString(c, "GET / HTTP/1.1\r\nHost: app\r\n\r\n")
			in, err := http.ReadResponse(br, nil)
			if err != nil {
				return nil, "", fmt.Errorf("through the tunnel: %w", err)
			}
			b, _ := io.ReadAll(in.Body)
			body = string(b)
		} else {
			b, _ := io.ReadAll(resp.Body)
			body = string(b)
		}
		return resp, body, nil
	}
	want := func(what string, resp *http.Response, body string, err error, status int, reason, inBody string) {
		t.Helper()
		if err != nil {
			t.Fatalf("%s: %v", what, err)
		}
		if resp.StatusCode != status || (reason != "" && resp.Header.Get(reasonHeader) != reason) || !strings.Contains(body, inBody) {
			t.Errorf("%s: %d %s=%q %q, want %d %q containing %q", what, resp.StatusCode, reasonHeader, resp.Header.Get(reasonHeader), body, status, reason, inBody)
		}
	}

	t.Run("deny unknown", func(t *testing.T) {
		s := startSidecar(t, ca, sleepID, sidecarOpts{outbound: true, snap: snap,
			upstreams: []Upstream{{Listen: "127.0.0.1:0", Service: "unknown.invalid:81"}},
			config:    func(c *Config) { c.DenyUnknown = true }})
		proxy := s.OutboundAddr.String()

		resp, body, err := ask(proxy, "GET http://unknown.invalid:81/ HTTP/1.1\r\nHost: unknown.invalid:81\r\n\r\n", "GET")
		want("forward proxy, unknown host", resp, body, err, http.StatusBadGateway, "unknown_destination", "unknown.invalid:81 is not a mesh service and outbound passthrough is off")
		resp, body, err = ask(proxy, "GET http://empty.default:8080/ HTTP/1.1\r\nHost: empty.default:8080\r\n\r\n", "GET")
		want("forward proxy, no endpoints", resp, body, err, http.StatusServiceUnavailable, "no_endpoints", "service empty.default has no endpoints")
		resp, body, err = ask(proxy, "CONNECT unknown.invalid:81 HTTP/1.1\r\nHost: unknown.invalid:81\r\n\r\n", http.MethodConnect)
		want("CONNECT, unknown host", resp, body, err, http.StatusBadGateway, "", "unknown.invalid:81 is not a mesh service and outbound passthrough is off")
		resp, body, err = ask(proxy, "CONNECT empty.default:9000 HTTP/1.1\r\nHost: empty.default:9000\r\n\r\n", http.MethodConnect)
		want("CONNECT, no endpoints", resp, body, err, http.StatusServiceUnavailable, "no_endpoints", "service empty.default has no endpoints")

		c, err := net.Dial("tcp", s.UpstreamAddrs[0].String())
		if err != nil {
			t.Fatal(err)
		}
		c.SetDeadline(time.Now().Add(10 * time.Second))
		if n, err := c.Read(make([]byte, 1)); err == nil {
			t.Errorf("--upstream port to an unknown host: read %d bytes, want the connection closed", n)
		}
		c.Close()
		waitFor(t, func() bool {
			for _, l := range s.log.lines(t) {
				if l["msg"] == "tcp" && l["direction"] == "outbound" && l["destination"] == "unknown.invalid:81" &&
					l["decision"] == "deny" && l["reason"] == "destination is not a mesh service" {
					return true
				}
			}
			return false
		}, "the --upstream port's deny in the access log")
	})

	t.Run("passthrough", func(t *testing.T) {
		s := startSidecar(t, ca, sleepID, sidecarOpts{outbound: true, snap: snap,
			upstreams: []Upstream{{Listen: "127.0.0.1:0", Service: app.addr()}}})
		proxy := s.OutboundAddr.String()

		resp, body, err := ask(proxy, "GET http://"+app.addr()+"/ HTTP/1.1\r\nHost: "+app.addr()+"\r\n\r\n", "GET")
		want("forward proxy", resp, body, err, http.StatusOK, "", "ok")
		resp, body, err = ask(proxy, "CONNECT "+app.addr()+" HTTP/1.1\r\nHost: "+app.addr()+"\r\n\r\n", http.MethodConnect)
		want("CONNECT", resp, body, err, http.StatusOK, "", "ok")
		resp, body, err = ask(s.UpstreamAddrs[0].String(), "GET / HTTP/1.1\r\nHost: app\r\n\r\n", "GET")
		want("--upstream port", resp, body, err, http.StatusOK, "", "ok")
		waitFor(t, func() bool {
			n := 0
			for _, l := range s.log.lines(t) {
				if l["direction"] == "outbound" && l["tls_mode"] == "passthrough" && l["decision"] == "allow" {
					n++
				}
			}
			return n >= 3
		}, "three passthrough lines in the access log")
	})
}

// BenchmarkDecide is the outbound decision a request makes, by service name
// (the explicit proxy's absolute URI) and by virtual IP (transparent
// capture: the original destination of the connection).
func BenchmarkDecide(b *testing.B) {
	table := buildRoutes(&policy.Snapshot{Outbound: []policy.OutboundService{{
		Name: "httpbin", Namespace: "default", Hosts: []string{"httpbin.default"}, Address: "10.96.0.10",
		Ports:     []policy.OutboundPort{{Name: "http", Port: 8000, TargetPort: 80, Protocol: "HTTP", TLSMode: policy.ClientIstioMutual}},
		Endpoints: []policy.Endpoint{{Address: "10.1.0.5"}},
	}}})
	for _, host := range []string{"httpbin.default", "10.96.0.10"} {
		b.Run(host, func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				if o := decideOutbound(table, false, host, 8000, true); o.verdict != toMesh {
					b.Fatalf("%s: verdict %v", host, o.verdict)
				}
			}
		})
	}
}
