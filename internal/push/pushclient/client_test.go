package pushclient

import (
	"context"
	pb "github.com/meshauth/meshauth/api/meshauth/v1"
	"io"
	"log/slog"
	"net"
	"strings"
	"testing"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/protobuf/proto"
)

// goodSnapshot is the smallest snapshot a sidecar accepts.
func goodSnapshot(version string) *pb.Snapshot {
	return &pb.Snapshot{Version: version, Policy: &pb.PolicySnapshot{Version: version, TrustDomain: "cluster.local",
		Workload:       &pb.WorkloadRef{Name: "w", Namespace: "default", ServiceAccount: "sa"},
		InboundDefault: pb.ServerMode_SERVER_MODE_STRICT}}
}

// TestClientRejectsMalformedSnapshots drives the client's accept path with
// snapshots a broken or hostile (or newer) control plane could send.
func TestClientRejectsMalformedSnapshots(t *testing.T) {
	c := NewClient(ClientConfig{})
	if err := c.accept(goodSnapshot("v1")); err != nil {
		t.Fatalf("good snapshot rejected: %v", err)
	}
	outbound := func(mode pb.ClientTLSMode) func(*pb.Snapshot) {
		return func(m *pb.Snapshot) {
			m.Policy.Outbound = []*pb.OutboundService{{Name: "a", Namespace: "b", Hosts: []string{"a.b"},
				Ports: []*pb.OutboundPort{{Port: 80, TargetPort: 80, TlsMode: mode}}}}
		}
	}
	tests := []struct {
		name, wantErr string
		edit          func(*pb.Snapshot)
	}{
		{"no policy", "snapshot has no policy", func(m *pb.Snapshot) { m.Policy = nil }},
		{"version mismatch", "does not match", func(m *pb.Snapshot) { m.Policy.Version = "v3" }},
		{"unknown server mode", "inboundDefault: unknown ServerMode 7", func(m *pb.Snapshot) { m.Policy.InboundDefault = 7 }},
		{"unknown inbound mode", "inbound[0].mode: unknown ServerMode 4", func(m *pb.Snapshot) {
			m.Policy.Inbound = []*pb.InboundPort{{Port: 80, Mode: 4}}
		}},
		{"unspecified server mode", `inboundDefault "" is not STRICT`, func(m *pb.Snapshot) { m.Policy.InboundDefault = 0 }},
		{"no workload", "names no workload", func(m *pb.Snapshot) { m.Policy.Workload = nil }},
		{"unknown tls mode", "outbound[0].ports[0].tlsMode: unknown ClientTLSMode 9", outbound(9)},
		{"unspecified tls mode", `tlsMode "" is not DISABLE`, outbound(pb.ClientTLSMode_CLIENT_TLS_MODE_UNSPECIFIED)},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			m := goodSnapshot("v2")
			tc.edit(m)
			err := c.accept(m)
			if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
				t.Fatalf("accept = %v; want an error containing %q", err, tc.wantErr)
			}
			if c.Current().Version != "v1" {
				t.Fatal("bad snapshot replaced the good one")
			}
		})
	}
}

// TestUnknownEnumNACKed: a snapshot with an enum value this sidecar does
// not know (a newer control plane's) goes through the whole stream: the
// sidecar NACKs it with the field named, and keeps its last good one.
func TestUnknownEnumNACKed(t *testing.T) {
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	acks := make(chan *pb.Ack, 2)
	srv := grpc.NewServer()
	pb.RegisterDiscoveryServer(srv, scriptedDiscovery{send: []*pb.Snapshot{goodSnapshot("v1"), func() *pb.Snapshot {
		m := goodSnapshot("v2")
		m.Policy.Inbound = []*pb.InboundPort{{Port: 8080, Mode: 42}}
		return m
	}()}, acks: acks})
	go srv.Serve(lis)
	defer srv.Stop()
	conn, err := grpc.NewClient(lis.Addr().String(), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	c := NewClient(ClientConfig{Conn: conn, Register: func() *pb.Register { return &pb.Register{Workload: "w"} },
		Log: slog.New(slog.NewTextHandler(io.Discard, nil))})
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { c.Run(ctx); close(done) }()
	defer func() { cancel(); <-done }()
	if a := <-acks; a.Version != "v1" || a.Error != "" {
		t.Fatalf("first answer = %+v; want ACK v1", a)
	}
	a := <-acks
	if a.Version != "v2" || !strings.Contains(a.Error, "inbound[0].mode: unknown ServerMode 42") {
		t.Fatalf("second answer = %+v; want a NACK of v2 naming inbound[0].mode", a)
	}
	if c.Current().Version != "v1" || c.NACKs() != 1 {
		t.Errorf("current = %s, NACKs = %d; want v1 kept and 1 NACK", c.Current().Version, c.NACKs())
	}
}

// scriptedDiscovery is a control plane that sends fixed snapshots (what a
// newer or broken one could send) and reports the answers. The sidecar
// side is the real client over real gRPC; plaintext, because the stream's
// authentication is not under test here (TestStreamAuthentication).
type scriptedDiscovery struct {
	pb.UnimplementedDiscoveryServer
	send []*pb.Snapshot
	acks chan<- *pb.Ack
}

func (d scriptedDiscovery) Stream(st pb.Discovery_StreamServer) error {
	if _, err := st.Recv(); err != nil { // Register
		return err
	}
	for _, m := range d.send {
		if err := st.Send(m); err != nil {
			return err
		}
		r, err := st.Recv()
		if err != nil {
			return err
		}
		d.acks <- r.GetAck()
	}
	<-st.Context().Done()
	return nil
}

// FuzzClientAccept feeds arbitrary bytes, as a Snapshot message, to the
// sidecar's accept path: it must never panic, and a rejected snapshot must
// never replace the good one.
func FuzzClientAccept(f *testing.F) {
	seed := func(m *pb.Snapshot) []byte {
		b, err := proto.Marshal(m)
		if err != nil {
			f.Fatal(err)
		}
		return b
	}
	f.Add(seed(goodSnapshot("v2")))
	rich := goodSnapshot("v2")
	rich.Policy.InboundDefault = pb.ServerMode_SERVER_MODE_DISABLE
	rich.Policy.Inbound = []*pb.InboundPort{{Port: 0, Mode: pb.ServerMode_SERVER_MODE_STRICT}}
	rich.Policy.Outbound = []*pb.OutboundService{{Name: "a", Namespace: "b", Hosts: []string{"a.b"},
		Ports:     []*pb.OutboundPort{{Port: 80, TargetPort: 8080, TlsMode: pb.ClientTLSMode_CLIENT_TLS_MODE_ISTIO_MUTUAL}},
		Endpoints: []*pb.Endpoint{{Workload: "a-1", Address: "10.0.0.1", Ports: map[uint32]uint32{8080: 15006}}}}}
	rich.Policy.Rbac = &pb.RBAC{Policies: []*pb.RBACPolicy{{Role: "n/r", Rules: []*pb.RBACRule{{Services: []string{"*"}}}, Subjects: []*pb.RBACSubject{{User: "*"}}}}}
	f.Add(seed(rich))
	f.Add([]byte{})
	f.Fuzz(func(t *testing.T, data []byte) {
		var m pb.Snapshot
		if proto.Unmarshal(data, &m) != nil {
			return // gRPC would have refused the message
		}
		c := NewClient(ClientConfig{Log: slog.New(slog.NewTextHandler(io.Discard, nil))})
		if err := c.accept(goodSnapshot("v1")); err != nil {
			t.Fatal(err)
		}
		before := c.Current()
		err := c.accept(&m)
		if err != nil && c.Current() != before {
			t.Fatal("a rejected snapshot replaced the good one")
		}
		if err == nil && c.Current().Snapshot.Validate() != nil {
			t.Fatal("accepted a snapshot that does not validate")
		}
	})
}
