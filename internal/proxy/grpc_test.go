package proxy

import (
	"context"
	"net"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"

	"github.com/meshauth/meshauth/internal/ca/catest"
	"github.com/meshauth/meshauth/internal/policy"
)

// TestGRPCThroughSidecarPair: an unmodified gRPC (HTTP/2 cleartext) client
// and server talk through a sidecar pair on a port declared GRPC: the
// client sidecar's --upstream port -> mTLS -> the server sidecar (STRICT) ->
// the app. HTTP/2 is relayed as a byte stream (no per-request
// authorization); the hop between the sidecars is mutual TLS with secure
// naming like any other. A server of the wrong service account is refused.
func TestGRPCThroughSidecarPair(t *testing.T) {
	ca := catest.New(t)
	// The app: a real gRPC server with the standard health service.
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	gs := grpc.NewServer()
	healthpb.RegisterHealthServer(gs, health.NewServer())
	go gs.Serve(ln)
	t.Cleanup(gs.Stop)

	const grpcID = "spiffe://cluster.local/ns/default/sa/greeter"
	start := func(t *testing.T, serverID string) (*sidecar, *sidecar) {
		srv := startSidecar(t, ca, serverID, sidecarOpts{
			snap: &policy.Snapshot{TrustDomain: "cluster.local", InboundDefault: policy.ServerStrict,
				Inbound: []policy.InboundPort{{Port: 9090, Mode: policy.ServerStrict, Protocol: "GRPC", Service: "greeter.default"}}},
			inbound: []InboundListener{{Listen: "127.0.0.1:0", App: ln.Addr().String(), Port: 9090}},
		})
		addr := srv.InboundAddrs[0].String()
		host, _, _ := net.SplitHostPort(addr)
		svc := policy.OutboundService{
			Name: "greeter", Namespace: "default", Hosts: []string{"greeter", "greeter.default"},
			Ports: []policy.OutboundPort{{Name: "grpc", Port: 9090, TargetPort: 9090, Protocol: "GRPC", TLSMode: policy.ClientIstioMutual}},
			Endpoints: []policy.Endpoint{{Workload: "greeter-1", ServiceAccount: "greeter", Address: host, Sidecar: true,
				Ports: map[uint32]uint32{9090: portOf(t, addr)}}},
			ServerIdentities: []string{grpcID},
		}
		return startSidecar(t, ca, sleepID, sidecarOpts{
			snap:      &policy.Snapshot{TrustDomain: "cluster.local", Outbound: []policy.OutboundService{svc}},
			upstreams: []Upstream{{Listen: "127.0.0.1:0", Service: "greeter:9090"}},
		}), srv
	}
	check := func(t *testing.T, cli *sidecar) error {
		conn, err := grpc.NewClient(cli.UpstreamAddrs[0].String(), grpc.WithTransportCredentials(insecure.NewCredentials()))
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Close()
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		resp, err := healthpb.NewHealthClient(conn).Check(ctx, &healthpb.HealthCheckRequest{})
		if err == nil && resp.Status != healthpb.HealthCheckResponse_SERVING {
			t.Fatalf("health = %v", resp.Status)
		}
		return err
	}

	t.Run("through the pair", func(t *testing.T) {
		cli, srv := start(t, grpcID)
		for i := 0; i < 3; i++ {
			if err := check(t, cli); err != nil {
				t.Fatalf("gRPC health check through the sidecars: %v", err)
			}
		}
		// The server sidecar relayed the calls over mTLS from sleep's
		// verified identity (its access log line is written when the
		// relayed connection ends).
		waitFor(t, func() bool {
			for _, l := range srv.log.lines(t) {
				if l["msg"] == "tcp" && l["direction"] == "inbound" && l["source"] == sleepID && l["decision"] == "allow" {
					return true
				}
			}
			return false
		}, "the server sidecar's log of the relay from %s", sleepID)
	})
	t.Run("wrong service account refused", func(t *testing.T) {
		cli, _ := start(t, "spiffe://cluster.local/ns/default/sa/impostor")
		if err := check(t, cli); err == nil {
			t.Fatal("gRPC call reached a server of the wrong service account")
		}
		waitFor(t, func() bool {
			return counterValue(t, cli.m.Handshakes.WithLabelValues("outbound", "refused", reasonSecureNaming)) >= 1
		}, "a secure_naming refusal on the client sidecar")
	})
}
