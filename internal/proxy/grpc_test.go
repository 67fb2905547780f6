package proxy

import (
	"context"
	"crypto/tls"
	"errors"
	"io"
	"net"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/net/http2"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	testpb "google.golang.org/grpc/interop/grpc_testing"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	"github.com/meshauth/meshauth/internal/ca/catest"
	"github.com/meshauth/meshauth/internal/policy"
)

// grpcApp is a real gRPC server (grpc-go's interop TestService) behind the
// server sidecar. It answers with the X-Forwarded-Client-Cert values it
// received in SimpleResponse.Username (unary) and counts the streams whose
// context ended because the caller cancelled.
type grpcApp struct {
	testpb.UnimplementedTestServiceServer
	cancelled atomic.Int32
}

func xfccOf(ctx context.Context) string {
	md, _ := metadata.FromIncomingContext(ctx)
	var all []string
	for k, v := range md {
		if normalEqual([]byte(k), xfccNorm) {
			all = append(all, v...)
		}
	}
	return strings.Join(all, "|")
}

func (a *grpcApp) EmptyCall(context.Context, *testpb.Empty) (*testpb.Empty, error) {
	return &testpb.Empty{}, nil
}

func (a *grpcApp) UnaryCall(ctx context.Context, r *testpb.SimpleRequest) (*testpb.SimpleResponse, error) {
	if s := r.GetResponseStatus(); s != nil && s.Code != 0 {
		return nil, status.Error(codes.Code(s.Code), s.Message)
	}
	if r.GetFillServerId() { // "slow": wait for the caller's deadline
		<-ctx.Done()
		return nil, ctx.Err()
	}
	return &testpb.SimpleResponse{Username: xfccOf(ctx),
		Payload: &testpb.Payload{Body: make([]byte, r.ResponseSize)}}, nil
}

func (a *grpcApp) StreamingOutputCall(r *testpb.StreamingOutputCallRequest, s testpb.TestService_StreamingOutputCallServer) error {
	for _, p := range r.ResponseParameters {
		if d := time.Duration(p.IntervalUs) * time.Microsecond; d > 0 {
			select {
			case <-time.After(d):
			case <-s.Context().Done():
				a.cancelled.Add(1)
				return s.Context().Err()
			}
		}
		if err := s.Send(&testpb.StreamingOutputCallResponse{Payload: &testpb.Payload{Body: make([]byte, p.Size)}}); err != nil {
			return err
		}
	}
	return nil
}

func (a *grpcApp) StreamingInputCall(s testpb.TestService_StreamingInputCallServer) error {
	n := 0
	for {
		m, err := s.Recv()
		if errors.Is(err, io.EOF) {
			return s.SendAndClose(&testpb.StreamingInputCallResponse{AggregatedPayloadSize: int32(n)})
		}
		if err != nil {
			return err
		}
		n += len(m.GetPayload().GetBody())
	}
}

func (a *grpcApp) FullDuplexCall(s testpb.TestService_FullDuplexCallServer) error {
	for {
		m, err := s.Recv()
		if errors.Is(err, io.EOF) {
			return nil
		}
		if err != nil {
			if s.Context().Err() != nil {
				a.cancelled.Add(1)
			}
			return err
		}
		for _, p := range m.ResponseParameters {
			if err := s.Send(&testpb.StreamingOutputCallResponse{Payload: &testpb.Payload{Body: make([]byte, p.Size)}}); err != nil {
				return err
			}
		}
	}
}

const greeterID = "spiffe://cluster.local/ns/default/sa/greeter"

// grpcPair is a gRPC app behind a server sidecar (port 9090, GRPC,
// STRICT) and a client sidecar whose --upstream port leads to it.
type grpcPair struct {
	app      *grpcApp
	cli, srv *sidecar
	conn     *grpc.ClientConn
	tc       testpb.TestServiceClient
	appAddr  string
}

func startGRPCPair(t testing.TB, ca *catest.CA, serverID string, rbac *policy.RBAC) *grpcPair {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	app := &grpcApp{}
	gs := grpc.NewServer(grpc.MaxRecvMsgSize(16 << 20))
	testpb.RegisterTestServiceServer(gs, app)
	go gs.Serve(ln)
	t.Cleanup(gs.Stop)
	srv := startSidecar(t, ca, serverID, sidecarOpts{
		snap: &policy.Snapshot{TrustDomain: "cluster.local", InboundDefault: policy.ServerStrict, RBAC: rbac,
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
		ServerIdentities: []string{greeterID},
	}
	cli := startSidecar(t, ca, sleepID, sidecarOpts{
		snap:      &policy.Snapshot{TrustDomain: "cluster.local", Outbound: []policy.OutboundService{svc}},
		upstreams: []Upstream{{Listen: "127.0.0.1:0", Service: "greeter:9090"}},
	})
	conn, err := grpc.NewClient(cli.UpstreamAddrs[0].String(), grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithDefaultCallOptions(grpc.MaxCallRecvMsgSize(16<<20), grpc.MaxCallSendMsgSize(16<<20)))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return &grpcPair{app: app, cli: cli, srv: srv, conn: conn, tc: testpb.NewTestServiceClient(conn), appAddr: ln.Addr().String()}
}

func ctx5(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	t.Cleanup(cancel)
	return ctx
}

// TestGRPCThroughSidecarPair (issue #14): an unmodified grpc-go client
// and server talk through a sidecar pair on a port declared GRPC; every
// call is terminated and authorized by the server sidecar, and the app
// sees the caller's verified SPIFFE ID in X-Forwarded-Client-Cert on
// every call — unary, server-, client- and bidi-streaming, with large
// messages — never one the caller wrote. A server of the wrong service
// account is refused (secure naming).
func TestGRPCThroughSidecarPair(t *testing.T) {
	ca := catest.New(t)
	verified := "By=" + greeterID + ";URI=" + sleepID
	g := startGRPCPair(t, ca, greeterID, nil)

	t.Run("unary sees the verified caller, never a forged one", func(t *testing.T) {
		for i, forged := range []string{"", "x-forwarded-client-cert", "x_forwarded_client_cert"} {
			ctx := ctx5(t)
			if forged != "" {
				ctx = metadata.AppendToOutgoingContext(ctx, forged, forgedXFCC)
			}
			resp, err := g.tc.UnaryCall(ctx, &testpb.SimpleRequest{ResponseSize: 10})
			if err != nil {
				t.Fatalf("call %d: %v", i, err)
			}
			if resp.Username != verified {
				t.Fatalf("call %d (forged %q): app saw XFCC %q, want only %q", i, forged, resp.Username, verified)
			}
		}
		waitFor(t, func() bool {
			for _, l := range g.srv.log.lines(t) {
				if l["msg"] == "http" && l["protocol"] == "HTTP/2" && l["source"] == sleepID &&
					l["path"] == "/grpc.testing.TestService/UnaryCall" && l["decision"] == "allow" && l["grpc_status"] == "0" {
					return true
				}
			}
			return false
		}, "the server sidecar's access log line of the call")
	})
	t.Run("large messages", func(t *testing.T) {
		const big = 8 << 20
		resp, err := g.tc.UnaryCall(ctx5(t), &testpb.SimpleRequest{ResponseSize: big, Payload: &testpb.Payload{Body: make([]byte, big)}})
		if err != nil || len(resp.GetPayload().GetBody()) != big {
			t.Fatalf("8 MiB each way: %v", err)
		}
	})
	t.Run("server streaming", func(t *testing.T) {
		req := &testpb.StreamingOutputCallRequest{}
		for i := 0; i < 200; i++ {
			req.ResponseParameters = append(req.ResponseParameters, &testpb.ResponseParameters{Size: int32(i * 100)})
		}
		s, err := g.tc.StreamingOutputCall(ctx5(t), req)
		if err != nil {
			t.Fatal(err)
		}
		for i := 0; ; i++ {
			m, err := s.Recv()
			if errors.Is(err, io.EOF) {
				if i != 200 {
					t.Fatalf("got %d messages, want 200", i)
				}
				break
			}
			if err != nil || len(m.Payload.Body) != i*100 {
				t.Fatalf("message %d: %v", i, err)
			}
		}
	})
	t.Run("client streaming", func(t *testing.T) {
		s, err := g.tc.StreamingInputCall(ctx5(t))
		if err != nil {
			t.Fatal(err)
		}
		for i := 0; i < 100; i++ {
			if err := s.Send(&testpb.StreamingInputCallRequest{Payload: &testpb.Payload{Body: make([]byte, 1000)}}); err != nil {
				t.Fatal(err)
			}
		}
		resp, err := s.CloseAndRecv()
		if err != nil || resp.AggregatedPayloadSize != 100_000 {
			t.Fatalf("aggregated %d, %v; want 100000", resp.GetAggregatedPayloadSize(), err)
		}
	})
	t.Run("bidi streaming", func(t *testing.T) {
		s, err := g.tc.FullDuplexCall(ctx5(t))
		if err != nil {
			t.Fatal(err)
		}
		for i := 1; i <= 100; i++ {
			if err := s.Send(&testpb.StreamingOutputCallRequest{ResponseParameters: []*testpb.ResponseParameters{{Size: int32(i)}}}); err != nil {
				t.Fatal(err)
			}
			m, err := s.Recv()
			if err != nil || len(m.Payload.Body) != i {
				t.Fatalf("round trip %d: %v", i, err)
			}
		}
		s.CloseSend()
		if _, err := s.Recv(); !errors.Is(err, io.EOF) {
			t.Fatalf("end of stream: %v", err)
		}
	})
	t.Run("a long stream survives certificate rotation", func(t *testing.T) {
		s, err := g.tc.FullDuplexCall(ctx5(t))
		if err != nil {
			t.Fatal(err)
		}
		roundTrip := func(i int) {
			t.Helper()
			if err := s.Send(&testpb.StreamingOutputCallRequest{ResponseParameters: []*testpb.ResponseParameters{{Size: int32(i)}}}); err != nil {
				t.Fatal(err)
			}
			if m, err := s.Recv(); err != nil || len(m.Payload.Body) != i {
				t.Fatalf("round trip %d: %v", i, err)
			}
		}
		roundTrip(1)
		// Both sidecars get new certificates (the agent's renewal): the
		// established connections and the stream on them go on; a new
		// call works too.
		if err := g.cli.store.SetSVID(mustSVID(t, ca.Issue(t, sleepID))); err != nil {
			t.Fatal(err)
		}
		if err := g.srv.store.SetSVID(mustSVID(t, ca.Issue(t, greeterID))); err != nil {
			t.Fatal(err)
		}
		for i := 2; i < 50; i++ {
			roundTrip(i)
		}
		if _, err := g.tc.EmptyCall(ctx5(t), &testpb.Empty{}); err != nil {
			t.Fatalf("a new call after the rotation: %v", err)
		}
		s.CloseSend()
	})
	t.Run("app status and deadline pass through", func(t *testing.T) {
		_, err := g.tc.UnaryCall(ctx5(t), &testpb.SimpleRequest{ResponseStatus: &testpb.EchoStatus{Code: int32(codes.NotFound), Message: "no such thing"}})
		if status.Code(err) != codes.NotFound || status.Convert(err).Message() != "no such thing" {
			t.Fatalf("app's status: %v", err)
		}
		ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
		defer cancel()
		_, err = g.tc.UnaryCall(ctx, &testpb.SimpleRequest{FillServerId: true})
		if status.Code(err) != codes.DeadlineExceeded {
			t.Fatalf("call past its deadline: %v", err)
		}
	})
	t.Run("cancellation reaches the app", func(t *testing.T) {
		before := g.app.cancelled.Load()
		ctx, cancel := context.WithCancel(context.Background())
		s, err := g.tc.StreamingOutputCall(ctx, &testpb.StreamingOutputCallRequest{ResponseParameters: []*testpb.ResponseParameters{
			{Size: 1}, {Size: 1, IntervalUs: 60_000_000}}})
		if err != nil {
			t.Fatal(err)
		}
		if _, err := s.Recv(); err != nil {
			t.Fatal(err)
		}
		cancel()
		waitFor(t, func() bool { return g.app.cancelled.Load() > before }, "the app's stream context cancelled")
	})
	t.Run("multiplexed over one mTLS connection", func(t *testing.T) {
		// Two more app connections, 40 concurrent calls: the client
		// sidecar terminated every call (its access log) and carried all
		// of them, and all the calls above, on the one h2 connection it
		// opened first.
		var errs = make(chan error, 40)
		for i := 0; i < 2; i++ {
			conn, err := grpc.NewClient(g.cli.UpstreamAddrs[0].String(), grpc.WithTransportCredentials(insecure.NewCredentials()))
			if err != nil {
				t.Fatal(err)
			}
			defer conn.Close()
			tc := testpb.NewTestServiceClient(conn)
			for j := 0; j < 20; j++ {
				go func() { _, err := tc.UnaryCall(ctx5(t), &testpb.SimpleRequest{ResponseSize: 100}); errs <- err }()
			}
		}
		for i := 0; i < 40; i++ {
			if err := <-errs; err != nil {
				t.Fatal(err)
			}
		}
		if n := counterValue(t, g.srv.m.Handshakes.WithLabelValues("inbound", "ok", "mtls")); n != 1 {
			t.Fatalf("the server sidecar accepted %v mTLS connections, want 1 (multiplexed)", n)
		}
		waitFor(t, func() bool {
			for _, l := range g.cli.log.lines(t) {
				if l["msg"] == "http" && l["direction"] == "outbound" && l["protocol"] == "HTTP/2" && l["tls_mode"] == "ISTIO_MUTUAL" {
					return true
				}
			}
			return false
		}, "the client sidecar's per-request log line")
	})
	t.Run("wrong service account refused", func(t *testing.T) {
		bad := startGRPCPair(t, ca, "spiffe://cluster.local/ns/default/sa/impostor", nil)
		_, err := bad.tc.EmptyCall(ctx5(t), &testpb.Empty{})
		if err == nil {
			t.Fatal("gRPC call reached a server of the wrong service account")
		}
		// The client sidecar answers the call itself: UNAVAILABLE, saying why.
		if st := status.Convert(err); st.Code() != codes.Unavailable || !strings.Contains(st.Message(), "secure_naming") {
			t.Fatalf("call to the impostor: %v; want Unavailable naming secure_naming", err)
		}
		waitFor(t, func() bool {
			return counterValue(t, bad.cli.m.Handshakes.WithLabelValues("outbound", "refused", reasonSecureNaming)) >= 1
		}, "a secure_naming refusal on the client sidecar")
	})
}

// TestGRPCPerMethodRBAC (issue #14): RBAC rules name gRPC methods as
// paths (POST /pkg.Service/Method). A denied call is answered by the
// server sidecar trailers-only with grpc-status 7 (PERMISSION_DENIED) and
// a message naming the reason; the allowed method on the same connection
// still works. Before, HTTP/2 was authorized per connection, where a rule
// with paths never matches: every call was refused.
func TestGRPCPerMethodRBAC(t *testing.T) {
	ca := catest.New(t)
	rbac := &policy.RBAC{DecidedBy: "RbacConfig/default", Policies: []policy.RBACPolicy{{
		Role: "default/unary-only", Bindings: []string{"default/sleep-unary"},
		Rules:    []policy.RBACRule{{Services: []string{"*"}, Methods: []string{"POST"}, Paths: []string{"/grpc.testing.TestService/UnaryCall"}}},
		Subjects: []policy.RBACSubject{{User: sleepID, Binding: "default/sleep-unary"}},
	}}}
	g := startGRPCPair(t, ca, greeterID, rbac)
	if _, err := g.tc.UnaryCall(ctx5(t), &testpb.SimpleRequest{}); err != nil {
		t.Fatalf("the allowed method: %v", err)
	}
	_, err := g.tc.EmptyCall(ctx5(t), &testpb.Empty{})
	st := status.Convert(err)
	if st.Code() != codes.PermissionDenied || !strings.Contains(st.Message(), "RBAC: access denied") ||
		!strings.Contains(st.Message(), "/grpc.testing.TestService/EmptyCall") {
		t.Fatalf("denied method: %v; want PermissionDenied naming the method", err)
	}
	s, err := g.tc.FullDuplexCall(ctx5(t))
	if err == nil {
		_, err = s.Recv()
	}
	if status.Code(err) != codes.PermissionDenied {
		t.Fatalf("denied streaming method: %v", err)
	}
	if _, err := g.tc.UnaryCall(ctx5(t), &testpb.SimpleRequest{}); err != nil {
		t.Fatalf("the allowed method after denials: %v", err)
	}
	waitFor(t, func() bool {
		for _, l := range g.srv.log.lines(t) {
			if l["msg"] == "http" && l["path"] == "/grpc.testing.TestService/EmptyCall" && l["decision"] == "deny" &&
				l["status"] == float64(403) && l["grpc_status"] == grpcPermissionDenied {
				return true
			}
		}
		return false
	}, "the server sidecar's deny line for EmptyCall")
}

// TestH2DrainSendsGOAWAY (issue #14): closing the sidecar (drain) sends
// each HTTP/2 connection GOAWAY; a stream in flight still completes.
func TestH2DrainSendsGOAWAY(t *testing.T) {
	ca := catest.New(t)
	g := startGRPCPair(t, ca, greeterID, nil)
	s, err := g.tc.StreamingOutputCall(ctx5(t), &testpb.StreamingOutputCallRequest{ResponseParameters: []*testpb.ResponseParameters{
		{Size: 1}, {Size: 2, IntervalUs: 500_000}}})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := s.Recv(); err != nil {
		t.Fatal(err)
	}
	// A raw HTTP/2 connection to the server sidecar sees the GOAWAY.
	sleep := ca.Issue(t, sleepID)
	raw, err := tls.Dial("tcp", g.srv.InboundAddrs[0].String(), &tls.Config{InsecureSkipVerify: true,
		Certificates: []tls.Certificate{sleep.TLS}, NextProtos: []string{alpnH2}})
	if err != nil {
		t.Fatal(err)
	}
	defer raw.Close()
	raw.Write([]byte(h2Preface))
	fr := http2.NewFramer(raw, raw)
	fr.WriteSettings()
	raw.SetDeadline(time.Now().Add(10 * time.Second))
	if _, err := fr.ReadFrame(); err != nil { // the server's SETTINGS: it is serving
		t.Fatal(err)
	}
	go g.srv.Close()
	for {
		f, err := fr.ReadFrame()
		if err != nil {
			t.Fatalf("no GOAWAY before %v", err)
		}
		if ga, ok := f.(*http2.GoAwayFrame); ok {
			if ga.ErrCode != http2.ErrCodeNo {
				t.Fatalf("GOAWAY with %v, want NO_ERROR (graceful)", ga.ErrCode)
			}
			break
		}
	}
	m, err := s.Recv()
	if err != nil || len(m.Payload.Body) != 2 {
		t.Fatalf("the stream in flight did not complete after the drain: %v", err)
	}
}
