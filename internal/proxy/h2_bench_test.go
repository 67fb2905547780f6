package proxy

import (
	"crypto/tls"
	"os"
	"strconv"
	"sync/atomic"
	"testing"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"
	testpb "google.golang.org/grpc/interop/grpc_testing"

	"github.com/meshauth/meshauth/internal/ca/catest"
)

// BenchmarkGRPCPairUnary: unary gRPC calls through a sidecar pair (client
// sidecar --upstream port, HTTP/2 over mTLS, server sidecar, grpc-go app),
// 16 at once on one client connection.
func BenchmarkGRPCPairUnary(b *testing.B) {
	ca := catest.New(b)
	g := startGRPCPair(b, ca, greeterID, nil)
	req := &testpb.SimpleRequest{ResponseSize: 1024, Payload: &testpb.Payload{Body: make([]byte, 100)}}
	var errs atomic.Int64
	var first atomic.Value
	b.SetParallelism(benchPar)
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			if _, err := g.tc.UnaryCall(b.Context(), req); err != nil {
				errs.Add(1)
				first.CompareAndSwap(nil, err)
			}
		}
	})
	if n := errs.Load(); n > 0 {
		b.Fatalf("%d errors, first %v", n, first.Load())
	}
}

// BenchmarkGRPCServerSidecarUnary: the same calls straight to the server
// sidecar over mTLS (no client sidecar).
func BenchmarkGRPCServerSidecarUnary(b *testing.B) {
	ca := catest.New(b)
	g := startGRPCPair(b, ca, greeterID, nil)
	sleep := ca.Issue(b, sleepID)
	creds := credentials.NewTLS(&tls.Config{InsecureSkipVerify: true, Certificates: []tls.Certificate{sleep.TLS}})
	conn, err := grpc.NewClient(g.srv.InboundAddrs[0].String(), grpc.WithTransportCredentials(creds))
	if err != nil {
		b.Fatal(err)
	}
	defer conn.Close()
	tc := testpb.NewTestServiceClient(conn)
	req := &testpb.SimpleRequest{ResponseSize: 1024, Payload: &testpb.Payload{Body: make([]byte, 100)}}
	b.SetParallelism(benchPar)
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			if _, err := tc.UnaryCall(b.Context(), req); err != nil {
				b.Error(err)
				return
			}
		}
	})
}

// BenchmarkGRPCDirectUnary: the app alone.
func BenchmarkGRPCDirectUnary(b *testing.B) {
	ca := catest.New(b)
	g := startGRPCPair(b, ca, greeterID, nil)
	conn, err := grpc.NewClient(g.appAddr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		b.Fatal(err)
	}
	defer conn.Close()
	tc := testpb.NewTestServiceClient(conn)
	req := &testpb.SimpleRequest{ResponseSize: 1024, Payload: &testpb.Payload{Body: make([]byte, 100)}}
	b.SetParallelism(benchPar)
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			if _, err := tc.UnaryCall(b.Context(), req); err != nil {
				b.Error(err)
				return
			}
		}
	})
}

var benchPar = envInt("BENCH_PAR", 8)

func envInt(k string, def int) int {
	if n, err := strconv.Atoi(os.Getenv(k)); err == nil {
		return n
	}
	return def
}
