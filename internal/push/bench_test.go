package push

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"testing"
	"time"

	pb "github.com/meshauth/meshauth/api/meshauth/v1"
	"github.com/meshauth/meshauth/internal/push/pushclient"
)

// BenchmarkConfigChangeAcked1000 measures how long a config change takes to
// be ACKed by 1,000 connected sidecars: 1,000 push clients in this process,
// each with its own certificate and its own gRPC/TLS connection over
// loopback, against one push server with the default 50ms debounce. One op
// is: install a new config (a DestinationRule flips between DISABLE and
// ISTIO_MUTUAL), then wait until every sidecar has been evaluated against
// it, received its new snapshot, validated it and ACKed it.
func BenchmarkConfigChangeAcked1000(b *testing.B) {
	const sidecars = 1000
	e := newEnvDebounce(b, 50*time.Millisecond)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	for i := 0; i < sidecars; i++ {
		name := fmt.Sprintf("sc-%d", i)
		c := pushclient.NewClient(pushclient.ClientConfig{
			Conn: e.dial(fmt.Sprintf("spiffe://cluster.local/ns/default/sa/sleep-%d", i%50)),
			Register: func() *pb.Register {
				return &pb.Register{Workload: name, Labels: map[string]string{"app": "sleep"}, Address: "127.0.0.3"}
			},
			MinBackoff: 50 * time.Millisecond,
			Log:        slog.New(slog.NewTextHandler(io.Discard, nil)),
		})
		runCtx, stop := context.WithCancel(ctx)
		done := make(chan struct{})
		go func() { c.Run(runCtx); close(done) }()
		b.Cleanup(func() { stop(); <-done })
	}
	if err := e.server.WaitSynced(ctx, sidecars); err != nil {
		b.Fatal(err)
	}
	modes := []string{"DISABLE", "ISTIO_MUTUAL"}
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		b.StopTimer()
		eng := engineFor(b, e.reg, meshYAML, `apiVersion: networking.istio.io/v1alpha3
kind: DestinationRule
metadata: {name: httpbin}
spec:
  host: httpbin
  trafficPolicy: {tls: {mode: `+modes[i%2]+`}}
`)
		b.StartTimer()
		e.server.SetEngine(eng)
		if err := e.server.WaitSynced(ctx, sidecars); err != nil {
			b.Fatal(err)
		}
	}
	b.StopTimer()
	if n := len(e.server.Status()); n != sidecars {
		b.Fatalf("%d sidecars connected at the end, want %d", n, sidecars)
	}
}
