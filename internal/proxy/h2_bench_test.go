package proxy

import (
	"crypto/tls"
	"io"
	"net/http"
	"os"
	"strconv"
	"strings"
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
	benchUnary(b, testpb.NewTestServiceClient(conn))
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
	benchUnary(b, testpb.NewTestServiceClient(conn))
}

var benchPar = envInt("BENCH_PAR", 8)

func envInt(k string, def int) int {
	if n, err := strconv.Atoi(os.Getenv(k)); err == nil {
		return n
	}
	return def
}

// benchHTTPPair is startHTTPPair's /headers URL on the client sidecar's
// --upstream port.
func benchHTTPPair(b *testing.B) string {
	_, cli := startHTTPPair(b)
	return "http://" + cli.UpstreamAddrs[0].String() + "/headers"
}

func benchGet(b *testing.B, c *http.Client, u string) {
	b.SetParallelism(benchPar)
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			resp, err := c.Get(u)
			if err != nil {
				b.Error(err)
				return
			}
			io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
		}
	})
}

// BenchmarkHTTPPairH1 and BenchmarkHTTPPairH2 compare the hop between
// the sidecars as HTTP/1.1 (pooled keep-alive connections) and as HTTP/2
// (one multiplexed connection) for the same HTTP/1.x app: the first client
// speaks HTTP/1.1 keep-alive, the second h2c to the client sidecar, which
// then speaks h2 to the server sidecar (which answers the app's HTTP/1.1).
// BENCHMARKS.md ("HTTP/1.1 between the sidecars or HTTP/2") has the
// numbers and the decision.
func BenchmarkHTTPPairH1(b *testing.B) {
	u := benchHTTPPair(b)
	benchGet(b, &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: 64, DisableCompression: true}}, u)
}

func BenchmarkHTTPPairH2(b *testing.B) {
	u := benchHTTPPair(b)
	benchGet(b, h2cClient(strings.TrimSuffix(strings.TrimPrefix(u, "http://"), "/headers")), u)
}

// benchUnary makes unary calls (100 bytes up, 1 KiB down), benchPar per
// CPU at once.
func benchUnary(b *testing.B, tc testpb.TestServiceClient) {
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
