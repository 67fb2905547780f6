package e2e

import (
	"context"
	"fmt"
	"net"
	"os"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	testpb "google.golang.org/grpc/interop/grpc_testing"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	"github.com/meshauth/meshauth/internal/netns"
)

// grpcHelperArg, as os.Args[1], turns the test binary into the gRPC app or
// client of TestGRPCCaptured inside a pod:
//
//	e2e.test e2e-grpc server :9090
//	e2e.test e2e-grpc call greeter.default:9090 unary|empty
const grpcHelperArg = "e2e-grpc"

// runGRPCHelper is the test binary in helper mode; it exits the process.
func runGRPCHelper(args []string) {
	if len(args) == 3 && args[0] == "call" {
		fmt.Println(grpcCall(args[1], args[2]))
		os.Exit(0)
	}
	if len(args) != 2 || args[0] != "server" {
		fmt.Fprintln(os.Stderr, "usage: e2e-grpc server ADDR | call ADDR unary|empty")
		os.Exit(2)
	}
	l, err := net.Listen("tcp", args[1])
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	s := grpc.NewServer()
	testpb.RegisterTestServiceServer(s, xfccEcho{})
	fmt.Fprintln(os.Stderr, "e2e-grpc: serving on", args[1])
	s.Serve(l)
	os.Exit(1)
}

// xfccEcho answers UnaryCall with the X-Forwarded-Client-Cert it got.
type xfccEcho struct {
	testpb.UnimplementedTestServiceServer
}

func (xfccEcho) UnaryCall(ctx context.Context, _ *testpb.SimpleRequest) (*testpb.SimpleResponse, error) {
	md, _ := metadata.FromIncomingContext(ctx)
	return &testpb.SimpleResponse{Username: strings.Join(md.Get("x-forwarded-client-cert"), "|")}, nil
}

func (xfccEcho) EmptyCall(context.Context, *testpb.Empty) (*testpb.Empty, error) {
	return &testpb.Empty{}, nil
}

// grpcCall makes one call with h2c (prior knowledge), as an app does, and
// says what came back: "OK <xfcc>" or "ERR <code>: <message>". A forged
// XFCC goes with it.
func grpcCall(addr, method string) string {
	conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		return "ERR dial: " + err.Error()
	}
	defer conn.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	ctx = metadata.AppendToOutgoingContext(ctx, "x-forwarded-client-cert", "By=spiffe://cluster.local/ns/default/sa/greeter;URI=spiffe://cluster.local/ns/default/sa/admin")
	tc := testpb.NewTestServiceClient(conn)
	if method == "empty" {
		_, err = tc.EmptyCall(ctx, &testpb.Empty{})
		if err == nil {
			return "OK"
		}
	} else {
		var resp *testpb.SimpleResponse
		if resp, err = tc.UnaryCall(ctx, &testpb.SimpleRequest{}); err == nil {
			return "OK " + resp.Username
		}
	}
	st := status.Convert(err)
	return fmt.Sprintf("ERR %s: %s", st.Code(), st.Message())
}

// TestGRPCCaptured (issue #14): a grpc-go client and server in pods with
// sidecars and iptables capture (meshd init-net). The client dials the
// service's VIP with h2c, as an unmodified app does; its sidecar captures
// the connection, terminates HTTP/2 and carries each call over mTLS (ALPN
// h2) to the server's sidecar, which authorizes the call by method: RBAC
// lets sleep call UnaryCall only. The app sees the caller's verified SPIFFE
// ID, never the one the client wrote; EmptyCall is PERMISSION_DENIED with
// the reason.
func TestGRPCCaptured(t *testing.T) {
	needPods(t)
	needPieces(t)
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	c := newCluster(t)
	greeter, err := c.AddPod("greeter", "default")
	if err != nil {
		t.Fatal(err)
	}
	sleep, err := c.AddPod("sleep", "default")
	if err != nil {
		t.Fatal(err)
	}
	svc, err := c.AddService("greeter", "default", []netns.Port{{Name: "grpc", Port: 9090, TargetPort: 9090}}, greeter)
	if err != nil {
		t.Fatal(err)
	}
	m := newMesh(t, c, map[string]string{
		"mesh.yaml": meshConfig("MUTUAL_TLS"),
		"services.yaml": fmt.Sprintf(`apiVersion: meshauth.io/v1alpha1
kind: Service
metadata: {name: greeter, namespace: default}
spec:
  address: %s
  selector: {app: greeter}
  ports: [{name: grpc, number: 9090, targetPort: 9090, protocol: GRPC}]
---
apiVersion: rbac.istio.io/v1alpha1
kind: RbacConfig
metadata: {name: default}
spec:
  mode: ON_WITH_INCLUSION
  inclusion: {services: [greeter.default.svc.cluster.local]}
---
apiVersion: rbac.istio.io/v1alpha1
kind: ServiceRole
metadata: {name: unary-caller, namespace: default}
spec:
  rules:
  - services: ["greeter.default.svc.cluster.local"]
    methods: ["POST"]
    paths: ["/grpc.testing.TestService/UnaryCall"]
---
apiVersion: rbac.istio.io/v1alpha1
kind: ServiceRoleBinding
metadata: {name: sleep-unary, namespace: default}
spec:
  subjects: [{user: "cluster.local/ns/default/sa/sleep"}]
  roleRef: {kind: ServiceRole, name: unary-caller}
`, svc.VIP),
	})
	m.addSidecar(greeter, "greeter", 9090)
	// The pod's container port is gRPC.
	m.writeConfig("workload-greeter.yaml", strings.ReplaceAll(workloadConfig(greeter, "greeter", []int{9090}), "protocol: HTTP", "protocol: GRPC"))
	app := greeter.Command(context.Background(), self, grpcHelperArg, "server", ":9090")
	app.Stdout, app.Stderr = testWriter{t}, testWriter{t}
	if err := c.Start(app); err != nil {
		t.Fatal(err)
	}
	m.addSidecar(sleep, "sleep")
	waitRoute(t, sleep, "greeter", greeter.IP)

	call := func(method string) string {
		out, err := sleep.Command(context.Background(), self, grpcHelperArg, "call", "greeter.default:9090", method).Output()
		if err != nil {
			t.Fatalf("gRPC client in pod sleep: %v", err)
		}
		return strings.TrimSpace(string(out))
	}
	want := "OK By=spiffe://cluster.local/ns/default/sa/greeter;URI=spiffe://cluster.local/ns/default/sa/sleep"
	var got string
	waitFor(t, "a gRPC call from sleep to reach greeter's app", func() error {
		if got = call("unary"); got != want {
			return fmt.Errorf("got %q, want %q", got, want)
		}
		return nil
	})
	got = call("empty")
	if !strings.HasPrefix(got, "ERR PermissionDenied: RBAC: access denied") || !strings.Contains(got, "/grpc.testing.TestService/EmptyCall") {
		t.Fatalf("EmptyCall from sleep: %q; want PermissionDenied naming the method", got)
	}
}
