// Package pushclient is the sidecar's side of the Discovery stream
// (internal/push is the control plane's): it keeps one stream open,
// validates every snapshot before it ACKs it (NACK keeps the last good
// one), and hands accepted snapshots and trust bundles to the sidecar. It
// is its own package so the sidecar does not link the push server, the
// policy engine, the registry or the config kinds.
package pushclient

import (
	"context"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"google.golang.org/grpc"

	pb "github.com/meshauth/meshauth/api/meshauth/v1"
	"github.com/meshauth/meshauth/internal/meshapi/sidecarapi"
	"github.com/meshauth/meshauth/internal/policy"
)

// Update is one accepted snapshot. Treat it as immutable. (The trust
// bundle is not part of it: the certificate agent follows the CA's
// WatchTrustBundle stream.)
type Update struct {
	Version  string
	Snapshot *policy.Snapshot
}

// ClientConfig configures the sidecar side. Zero values get the defaults
// named.
type ClientConfig struct {
	// Conn is a connection to the control plane that presents the
	// workload's certificate (internal/client.Dial with
	// GetClientCertificate). Required.
	Conn grpc.ClientConnInterface
	// Register describes the workload; it is sent first on every stream
	// (LastVersion is filled in by the client). Required.
	Register func() *pb.Register
	// Validate is the sidecar's own check of a snapshot before it is
	// accepted (e.g. it can bind every inbound port); an error NACKs the
	// snapshot and the last good one stays. Optional: shape checks
	// (policy.Snapshot.Validate) always run.
	Validate func(*Update) error
	// MinBackoff and MaxBackoff bound the reconnect delay (200ms, 30s).
	// The delay doubles per failed attempt, with full jitter, and resets
	// after a stream that delivered a snapshot.
	MinBackoff, MaxBackoff time.Duration
	// Log defaults to slog.Default().
	Log *slog.Logger
}

// Client keeps a sidecar's snapshot in step with the control plane.
type Client struct {
	cfg     ClientConfig
	log     *slog.Logger
	current atomic.Pointer[Update]

	mu      sync.Mutex
	changed chan struct{}
	// connected reports whether a stream is up (for /healthz and tests).
	connected atomic.Bool
	nacks     atomic.Uint64
}

// NewClient returns a client; call Run to start it.
func NewClient(cfg ClientConfig) *Client {
	if cfg.MinBackoff == 0 {
		cfg.MinBackoff = 200 * time.Millisecond
	}
	if cfg.MaxBackoff == 0 {
		cfg.MaxBackoff = 30 * time.Second
	}
	if cfg.Log == nil {
		cfg.Log = slog.Default()
	}
	return &Client{cfg: cfg, log: cfg.Log.With("component", "push-client"), changed: make(chan struct{})}
}

// Current returns the last accepted snapshot, nil before the first. It
// stays in force while the control plane is unreachable.
func (c *Client) Current() *Update { return c.current.Load() }

// Changed returns a channel closed when Current changes. Take a new channel
// after each wake-up.
func (c *Client) Changed() <-chan struct{} {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.changed
}

// Connected reports whether a discovery stream is currently up.
func (c *Client) Connected() bool { return c.connected.Load() }

// NACKs counts rejected snapshots.
func (c *Client) NACKs() uint64 { return c.nacks.Load() }

// Run keeps a stream open until ctx is done, reconnecting with backoff.
func (c *Client) Run(ctx context.Context) error {
	attempt := 0
	for {
		got, err := c.stream(ctx)
		c.connected.Store(false)
		if ctx.Err() != nil {
			return ctx.Err()
		}
		if got {
			attempt = 0
		}
		d := c.backoff(attempt)
		attempt++
		c.log.Warn("discovery stream ended; keeping the last good snapshot and reconnecting",
			"error", err, "retry_in", d.Round(time.Millisecond), "version", c.version())
		t := time.NewTimer(d)
		select {
		case <-ctx.Done():
			t.Stop()
			return ctx.Err()
		case <-t.C:
		}
	}
}

func (c *Client) version() string {
	if u := c.current.Load(); u != nil {
		return u.Version
	}
	return ""
}

// backoff is exponential with full jitter: uniform in [min, min*2^attempt],
// capped at max, so a control plane restart is not met by every sidecar at
// the same instant.
func (c *Client) backoff(attempt int) time.Duration {
	hi := c.cfg.MinBackoff << min(attempt, 20)
	if hi > c.cfg.MaxBackoff || hi <= 0 {
		hi = c.cfg.MaxBackoff
	}
	lo := c.cfg.MinBackoff
	if hi <= lo {
		return lo
	}
	return lo + rand.N(hi-lo)
}

// stream runs one Discovery stream; got reports whether it delivered at
// least one snapshot.
func (c *Client) stream(ctx context.Context) (got bool, err error) {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	st, err := pb.NewDiscoveryClient(c.cfg.Conn).Stream(ctx)
	if err != nil {
		return false, fmt.Errorf("push: open stream: %w", err)
	}
	reg := c.cfg.Register()
	reg.LastVersion = c.version()
	if err := st.Send(&pb.DiscoveryRequest{Kind: &pb.DiscoveryRequest_Register{Register: reg}}); err != nil {
		return false, fmt.Errorf("push: register: %w", err)
	}
	for {
		m, err := st.Recv()
		if err != nil {
			return got, fmt.Errorf("push: receive: %w", err)
		}
		c.connected.Store(true)
		got = true
		ack := &pb.Ack{Version: m.Version}
		if err := c.accept(m); err != nil {
			ack.Error = err.Error()
			c.nacks.Add(1)
			c.log.Error("snapshot rejected (NACK); keeping the last good one", "version", m.Version, "error", err, "current", c.version())
		}
		if err := st.Send(&pb.DiscoveryRequest{Kind: &pb.DiscoveryRequest_Ack{Ack: ack}}); err != nil {
			return got, fmt.Errorf("push: ack: %w", err)
		}
	}
}

// accept converts and checks a snapshot and, if good, makes it current.
func (c *Client) accept(m *pb.Snapshot) error {
	s, err := sidecarapi.SnapshotFromProto(m.Policy)
	if err != nil {
		return fmt.Errorf("decode snapshot: %w", err)
	}
	if s.Version != m.Version {
		return fmt.Errorf("snapshot version %q does not match message version %q", s.Version, m.Version)
	}
	if err := s.Validate(); err != nil {
		return err
	}
	u := &Update{Version: m.Version, Snapshot: s}
	if c.cfg.Validate != nil {
		if err := c.cfg.Validate(u); err != nil {
			return err
		}
	}
	prev := c.current.Load()
	if prev != nil && prev.Version == u.Version {
		return nil
	}
	c.current.Store(u)
	c.mu.Lock()
	close(c.changed)
	c.changed = make(chan struct{})
	c.mu.Unlock()
	c.log.Info("snapshot applied", "version", u.Version, "inbound_ports", len(s.Inbound), "outbound_services", len(s.Outbound))
	// Registration is closed by default: say, on every change, which
	// services refused this workload as an endpoint and why (the operator
	// adds its service account to the Service's spec.serviceAccounts).
	if prev == nil || !slices.Equal(prev.Snapshot.Refused, s.Refused) {
		for _, r := range s.Refused {
			c.log.Warn("not an endpoint of a service this sidecar registered for: the control plane refused its identity", "service", r.Service, "spiffe_id", r.SPIFFEID, "reason", r.Reason)
		}
	}
	return nil
}
