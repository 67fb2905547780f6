package main

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"
	testpb "google.golang.org/grpc/interop/grpc_testing"
)

// The gRPC rows (issue #14): a gRPC server (grpc-go's interop TestService)
// behind each pair, and load from a grpc-go client of ours, as ghz does:
// one client connection, -c concurrent calls. Unary: UnaryCall with a
// 100-byte request and a 1 KiB answer. Streaming: -c bidi streams
// (FullDuplexCall), each a ping-pong of 100-byte requests and 1 KiB
// answers. Pairs: meshauth (a GRPC port; the app dials the client
// sidecar's --upstream port with h2c; HTTP/2 between the sidecars over
// mTLS), haproxy in HTTP mode (h2 in, h2 over mTLS between the pair, h2 to
// the server) and nginx with grpc_pass (grpcs between the pair).
//
//	go run ./bench -grpc -runs 3 -d 5s -c 16

// grpcRespSize is the unary answer and each streamed message: 1 KiB, as
// the HTTP rows' body.
const grpcRespSize = 1024

type grpcBackend struct {
	testpb.UnimplementedTestServiceServer
}

func (grpcBackend) UnaryCall(_ context.Context, r *testpb.SimpleRequest) (*testpb.SimpleResponse, error) {
	return &testpb.SimpleResponse{Payload: &testpb.Payload{Body: make([]byte, r.ResponseSize)}}, nil
}

func (grpcBackend) FullDuplexCall(s testpb.TestService_FullDuplexCallServer) error {
	for {
		m, err := s.Recv()
		if errors.Is(err, io.EOF) {
			return nil
		}
		if err != nil {
			return err
		}
		for _, p := range m.ResponseParameters {
			if err := s.Send(&testpb.StreamingOutputCallResponse{Payload: &testpb.Payload{Body: make([]byte, p.Size)}}); err != nil {
				return err
			}
		}
	}
}

// serveGRPCBackend is the gRPC application behind every gRPC variant.
func serveGRPCBackend(addr string) error {
	l, err := net.Listen("tcp", addr)
	if err != nil {
		return err
	}
	s := grpc.NewServer()
	testpb.RegisterTestServiceServer(s, grpcBackend{})
	return s.Serve(l)
}

// grpcPeers are the HTTP/2-capable peer pairs.
var grpcPeers = []peer{
	{name: "haproxy", label: "haproxy HTTP-mode pair (h2, mTLS)", bins: []string{"haproxy"}, start: startHAProxyH2},
	{name: "nginx", label: "nginx grpc_pass pair (grpcs)", bins: []string{"nginx"}, start: startNginxGRPC},
}

// startHAProxyH2: app -> haproxy (h2c in, h2 over mTLS out, ALPN h2) ->
// haproxy (mTLS, client certificate required) -> gRPC server (h2c).
func startHAProxyH2(ctx context.Context, e *env) (*variant, error) {
	ca, sa, err := twoPorts()
	if err != nil {
		return nil, err
	}
	head := haproxyHead(e.workers)
	server := head + fmt.Sprintf(`frontend fe
  bind %s ssl crt %s ca-file %s verify required ssl-min-ver TLSv1.3 alpn h2
  default_backend app
backend app
  server app %s proto h2
`, sa, e.pki.Server.Combined, e.pki.RootFile, e.backend)
	client := head + fmt.Sprintf(`frontend fe
  bind %s proto h2
  default_backend mesh
backend mesh
  server peer %s ssl crt %s ca-file %s verify required verifyhost %s ssl-min-ver TLSv1.3 alpn h2
`, ca, sa, e.pki.Client.Combined, e.pki.RootFile, serverName)
	return startPair(ctx, e, "haproxy-h2", "haproxy HTTP-mode pair (h2, mTLS)", "haproxy", ca, sa, [2]string{server, client},
		func(conf string) []string { return []string{"-db", "-f", conf} })
}

// startNginxGRPC: app -> nginx (http2 in, grpc_pass grpcs://) -> nginx
// (ssl http2, client certificate required, grpc_pass grpc://) -> gRPC
// server.
func startNginxGRPC(ctx context.Context, e *env) (*variant, error) {
	ca, sa, err := twoPorts()
	if err != nil {
		return nil, err
	}
	head := func(side string) string {
		tmp := filepath.Join(e.dir, "nginx-grpc-"+side+"-tmp")
		os.MkdirAll(tmp, 0o700)
		return fmt.Sprintf(`daemon off;
master_process on;
worker_processes %d;
worker_rlimit_nofile 65536;
pid %s;
error_log %s warn;
events { worker_connections 16384; }
http {
  access_log off;
  keepalive_requests 1000000;
  client_body_temp_path %s/body;
  proxy_temp_path %s/proxy;
  fastcgi_temp_path %s/fastcgi;
  uwsgi_temp_path %s/uwsgi;
  scgi_temp_path %s/scgi;
`, e.workers, filepath.Join(e.dir, "nginx-grpc-"+side+".pid"), filepath.Join(e.dir, "nginx-grpc-"+side+".err"), tmp, tmp, tmp, tmp, tmp)
	}
	server := head("server") + fmt.Sprintf(`  server {
    listen %s ssl http2;
    ssl_certificate %s;
    ssl_certificate_key %s;
    ssl_client_certificate %s;
    ssl_verify_client on;
    ssl_protocols TLSv1.3;
    location / { grpc_pass grpc://%s; }
  }
}
`, sa, e.pki.Server.CertFile, e.pki.Server.KeyFile, e.pki.RootFile, e.backend)
	client := head("client") + fmt.Sprintf(`  upstream mesh {
    server %s;
    keepalive 64;
  }
  server {
    listen %s http2;
    location / {
      grpc_pass grpcs://mesh;
      grpc_ssl_certificate %s;
      grpc_ssl_certificate_key %s;
      grpc_ssl_trusted_certificate %s;
      grpc_ssl_verify on;
      grpc_ssl_name %s;
      grpc_ssl_protocols TLSv1.3;
      grpc_ssl_session_reuse on;
    }
  }
}
`, sa, ca, e.pki.Client.CertFile, e.pki.Client.KeyFile, e.pki.RootFile, serverName)
	return startPair(ctx, e, "nginx-grpc", "nginx grpc_pass pair (grpcs)", "nginx", ca, sa, [2]string{server, client},
		func(conf string) []string { return []string{"-c", conf} })
}

// grpcLoadResult is one load run's outcome.
type grpcLoadResult struct {
	rate     float64 // calls (unary) or round trips (streaming) per second
	p50, p99 float64 // ms
	errors   int64
	firstErr string
}

// grpcLoad runs conc workers against addr for d: unary calls, or
// ping-pongs on one bidi stream per worker. One client connection.
func grpcLoad(ctx context.Context, addr string, conc int, d time.Duration, streaming bool) (grpcLoadResult, error) {
	conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		return grpcLoadResult{}, err
	}
	defer conn.Close()
	tc := testpb.NewTestServiceClient(conn)
	req := &testpb.SimpleRequest{ResponseSize: grpcRespSize, Payload: &testpb.Payload{Body: make([]byte, 100)}}
	sreq := &testpb.StreamingOutputCallRequest{Payload: &testpb.Payload{Body: make([]byte, 100)},
		ResponseParameters: []*testpb.ResponseParameters{{Size: grpcRespSize}}}
	// Warm up: the connection (and the pair's) exist before the clock runs.
	wctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	_, err = tc.UnaryCall(wctx, req)
	cancel()
	if err != nil {
		return grpcLoadResult{}, fmt.Errorf("warm-up call: %w", err)
	}
	var (
		wg    sync.WaitGroup
		mu    sync.Mutex
		lats  []float64
		n     atomic.Int64
		errsN atomic.Int64
		first atomic.Value
	)
	// Calls run without a deadline (one that expires mid-call would count
	// as an error); the workers stop starting calls at end, and the
	// streams are cancelled after their last round trip.
	lctx, stop := context.WithCancel(ctx)
	defer stop()
	start := time.Now()
	end := start.Add(d)
	for range conc {
		wg.Add(1)
		go func() {
			defer wg.Done()
			local := make([]float64, 0, 4096)
			defer func() { mu.Lock(); lats = append(lats, local...); mu.Unlock() }()
			var s testpb.TestService_FullDuplexCallClient
			if streaming {
				var err error
				if s, err = tc.FullDuplexCall(lctx); err != nil {
					errsN.Add(1)
					return
				}
			}
			for t0 := time.Now(); t0.Before(end) && lctx.Err() == nil; t0 = time.Now() {
				var err error
				if streaming {
					if err = s.Send(sreq); err == nil {
						_, err = s.Recv()
					}
				} else {
					_, err = tc.UnaryCall(lctx, req)
				}
				if err != nil {
					errsN.Add(1)
					first.CompareAndSwap(nil, err.Error())
					if streaming {
						return
					}
					continue
				}
				n.Add(1)
				local = append(local, float64(time.Since(t0).Microseconds())/1000)
			}
		}()
	}
	wg.Wait()
	el := time.Since(start).Seconds()
	stop()
	slices.Sort(lats)
	r := grpcLoadResult{rate: float64(n.Load()) / el, errors: errsN.Load()}
	if s, ok := first.Load().(string); ok {
		r.firstErr = s
	}
	if len(lats) > 0 {
		r.p50, r.p99 = lats[len(lats)/2], lats[min(len(lats)-1, len(lats)*99/100)]
	}
	return r, nil
}

// runGRPC measures every gRPC variant, interleaved, and returns the
// markdown table.
func runGRPC(ctx context.Context, cfg config) (string, error) {
	cfg.defaults()
	log := cfg.Log
	dir := cfg.WorkDir
	if dir == "" {
		d, err := os.MkdirTemp("", "meshauth-bench-grpc-")
		if err != nil {
			return "", err
		}
		defer os.RemoveAll(d)
		dir = d
	} else if err := os.MkdirAll(dir, 0o755); err != nil {
		return "", err
	}
	dir, _ = filepath.Abs(dir)
	p, err := newPKI(dir, time.Now())
	if err != nil {
		return "", err
	}
	backend, addr, err := startChild(ctx, dir, "grpc-backend")
	if err != nil {
		return "", err
	}
	defer backend.stop()
	e := &env{dir: dir, pki: p, backend: addr, workers: cfg.Workers, grpc: true}
	var vs []*variant
	defer func() {
		for _, v := range vs {
			stopAll(v.procs)
			stopAll(v.aux)
		}
	}()
	var notes []string
	for _, name := range cfg.Variants {
		if name == "stunnel" {
			continue // not HTTP/2-aware; the HTTP rows' default list has it
		}
		v, err := startGRPCVariant(ctx, e, &cfg, name)
		if err == nil && v.serverTLS != "" {
			err = grpcRefusesNoCert(ctx, v.serverTLS)
		}
		if err != nil {
			notes = append(notes, fmt.Sprintf("%s: %v", name, err))
			log.Warn("gRPC variant not measured", "variant", name, "error", err)
			if v != nil {
				stopAll(v.procs)
				stopAll(v.aux)
			}
			continue
		}
		vs = append(vs, v)
	}
	type key struct {
		v      string
		stream bool
	}
	res := map[key][]grpcLoadResult{}
	cpu := map[key][]float64{}
	for run := 0; run < cfg.Runs; run++ {
		for _, v := range vs {
			for _, streaming := range []bool{false, true} {
				settle()
				s := startSampler(v.procs)
				r, err := grpcLoad(ctx, v.addr, cfg.Conns, cfg.Duration, streaming)
				c, wall, _, _ := s.stop()
				if err != nil {
					notes = append(notes, fmt.Sprintf("%s run %d: %v", v.name, run+1, err))
					continue
				}
				k := key{v.name, streaming}
				res[k] = append(res[k], r)
				if r.rate > 0 {
					cpu[k] = append(cpu[k], c/(r.rate*wall)*1000*1000) // CPU ms per 1k calls
				}
				log.Info("gRPC run", "variant", v.name, "streaming", streaming, "run", run+1, "rate", int(r.rate), "p50_ms", r.p50, "p99_ms", r.p99, "errors", r.errors, "first_error", r.firstErr)
			}
		}
	}
	var b strings.Builder
	fmt.Fprintf(&b, "| variant | call | calls/s (median of %d) | p50 ms | p99 ms | pair CPU ms per 1k calls | errors |\n|---|---|---|---|---|---|---|\n", cfg.Runs)
	for _, v := range vs {
		for _, streaming := range []bool{false, true} {
			k := key{v.name, streaming}
			rs := res[k]
			if len(rs) == 0 {
				continue
			}
			call := "unary"
			if streaming {
				call = "bidi stream round trip"
			}
			var rate, p50, p99 []float64
			var errs int64
			for _, r := range rs {
				rate, p50, p99 = append(rate, r.rate), append(p50, r.p50), append(p99, r.p99)
				errs += r.errors
			}
			cpuS := "-"
			if len(v.procs) > 0 && len(cpu[k]) > 0 {
				cpuS = fmtNum(median(cpu[k]), 1)
			}
			fmt.Fprintf(&b, "| %s | %s | %s | %s | %s | %s | %d |\n", v.label, call, commas(int64(median(rate))), fmtNum(median(p50), 2), fmtNum(median(p99), 2), cpuS, errs)
		}
	}
	for _, n := range notes {
		fmt.Fprintf(&b, "\nnot measured: %s\n", n)
	}
	return b.String(), nil
}

// grpcRefusesNoCert makes a gRPC call over TLS without a client
// certificate to a pair's server side and fails if it is answered: no
// variant is measured without the mutual TLS it claims. (nginx refuses
// at the HTTP level, with 400, the others in the handshake.)
func grpcRefusesNoCert(ctx context.Context, addr string) error {
	creds := credentials.NewTLS(&tls.Config{InsecureSkipVerify: true})
	conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(creds))
	if err != nil {
		return err
	}
	defer conn.Close()
	ctx, cancel := context.WithTimeout(ctx, 3*time.Second)
	defer cancel()
	if _, err := testpb.NewTestServiceClient(conn).UnaryCall(ctx, &testpb.SimpleRequest{}); err == nil {
		return fmt.Errorf("server side %s answered a gRPC call from a client without a certificate", addr)
	}
	return nil
}

// startGRPCVariant starts a pair that carries gRPC to e's gRPC backend.
func startGRPCVariant(ctx context.Context, e *env, cfg *config, name string) (*variant, error) {
	if name == "direct" {
		return &variant{name: "direct", label: "direct (no proxy)", addr: e.backend, target: e.backend}, nil
	}
	if name == "meshauth" || strings.HasPrefix(name, "meshauth@") || strings.HasPrefix(name, "meshauth+") {
		return startMeshauth(ctx, e, cfg, name) // A/B pairs as in the HTTP rows
	}
	for _, p := range grpcPeers {
		if p.name == name {
			if m := p.missing(); m != "" {
				return nil, fmt.Errorf("%s is not installed", m)
			}
			return p.start(ctx, e)
		}
	}
	return nil, fmt.Errorf("unknown gRPC variant %q", name)
}
