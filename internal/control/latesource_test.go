package control_test

import (
	"context"
	"io"
	"log/slog"
	"testing"
	"time"

	pb "github.com/meshauth/meshauth/api/meshauth/v1"
	"github.com/meshauth/meshauth/internal/client"
	"github.com/meshauth/meshauth/internal/control"
	"github.com/meshauth/meshauth/internal/policy"
	"github.com/meshauth/meshauth/internal/push/pushclient"
)

// lateSource is chanSource whose content arrives only through Watch, as
// Kubernetes' does once its informers have synced.
type lateSource struct{ chanSource }

func (s *lateSource) Load() ([]any, error) { return nil, nil }
func (s *lateSource) LoadsLate() bool      { return true }

// TestLateSourceHoldsSnapshots: a control plane whose config has not
// arrived yet (kube-control before its informers sync: a restart, a new
// replica, a rollout) sends a connecting sidecar no snapshot, instead of
// the empty config's (authPolicy NONE: DISABLE to every service, plaintext
// accepted); the sidecar keeps its last good snapshot or its STRICT
// default. The first content goes out to everyone at once. (Failed before:
// the sidecar got the empty config's snapshot at once.)
func TestLateSourceHoldsSnapshots(t *testing.T) {
	src := &lateSource{chanSource{batches: make(chan batch)}}
	e := start(t, func(c *control.Config) { c.Plane = control.PlaneConfig{Source: src} })
	t.Cleanup(e.srv.Plane().Close)

	cert, _ := e.issueTLS(t, "default", "sleep")
	c := pushclient.NewClient(pushclient.ClientConfig{Conn: e.dial(t, client.Options{GetClientCertificate: withCert(cert)}), MinBackoff: 10 * time.Millisecond,
		Log: slog.New(slog.NewTextHandler(io.Discard, nil)), Register: func() *pb.Register { return &pb.Register{Workload: "sleep-1"} }})
	ctx, stop := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { c.Run(ctx); close(done) }()
	defer func() { stop(); <-done }()

	waitUntil(t, "the sidecar's stream registered", func() bool { return len(e.srv.Plane().Push().Status()) == 1 })
	// The stream computes and sends its first snapshot right after it
	// registers; give a held one ample time to (wrongly) arrive.
	time.Sleep(500 * time.Millisecond)
	if u := c.Current(); u != nil {
		t.Fatalf("before the config source's first content, the sidecar was sent snapshot %s (outbound %+v)", u.Snapshot.Version, u.Snapshot.Outbound)
	}

	src.batches <- batch{objs: parseObjs(t, "cluster", settleMeshDoc+"---\n"+ratingsDoc)}
	waitUntil(t, "the first content's snapshot", func() bool {
		u := c.Current()
		return u != nil && len(u.Snapshot.Outbound) == 1 && u.Snapshot.Outbound[0].Ports[0].TLSMode == policy.ClientIstioMutual
	})
}
