// Package push streams each sidecar its own effective configuration.
//
// The server half runs in `meshd control`: a sidecar opens
// Discovery.Stream, authenticates with its workload certificate (the server
// takes namespace and service account from the verified certificate, never
// from the request), registers its workload, and then receives a versioned
// policy.Snapshot (typed protobuf, converted by internal/meshapi) every time
// something that concerns it changes. It answers each snapshot with an ACK,
// or a NACK with the reason. The trust bundle is not pushed here: the
// sidecar's certificate agent has it from the CA's WatchTrustBundle stream,
// the one source of roots and revocations in every mode; the server only
// uses bundle changes to recheck connected sidecars for revocation.
//
// The client half runs in the sidecar and is internal/push/pushclient: it
// keeps the last good snapshot (a NACKed one never replaces it), keeps
// serving it while the control plane is away, and reconnects with
// exponential backoff and jitter. The sidecar reads Current() and waits on
// Changed().
package push

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"regexp"
	"sort"
	"sync"
	"sync/atomic"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/peer"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	pb "github.com/meshauth/meshauth/api/meshauth/v1"
	"github.com/meshauth/meshauth/internal/identity"
	"github.com/meshauth/meshauth/internal/meshapi"
	"github.com/meshauth/meshauth/internal/meshapi/sidecarapi"
	"github.com/meshauth/meshauth/internal/policy"
	"github.com/meshauth/meshauth/internal/policy/engine"
	"github.com/meshauth/meshauth/internal/registry"
)

// Config configures the push server. Zero values get the defaults named.
type Config struct {
	// Identity returns the verified identity of a stream's peer (its mTLS
	// certificate checked against the current bundle and revocations).
	// Required.
	Identity func(ctx context.Context) (identity.ID, error)
	// Debounce is how long the server waits after a change before pushing,
	// so that a burst (a config batch, many sidecars registering) costs one
	// round of snapshots. Default 50ms.
	Debounce time.Duration
	// Log defaults to slog.Default().
	Log *slog.Logger
	// Stopping, when closed, ends every stream with Unavailable, so the
	// gRPC server's graceful stop does not wait for sidecars to hang up
	// (they reconnect to the next control plane). Optional.
	Stopping <-chan struct{}
	// RegistrationGrace is how long a sidecar's self-registration stays in
	// the registry after its stream ends, so that a reconnect (a control
	// plane restart, a network blip) does not remove and re-add the
	// endpoint. A revoked sidecar is removed at once. Default
	// DefaultRegistrationGrace; negative means none.
	RegistrationGrace time.Duration
}

// DefaultRegistrationGrace is Config.RegistrationGrace's default, as
// Istio's WorkloadEntry auto-registration cleanup grace period.
const DefaultRegistrationGrace = 10 * time.Second

// Server implements the Discovery service.
type Server struct {
	pb.UnimplementedDiscoveryServer
	cfg    Config
	log    *slog.Logger
	engine atomic.Pointer[engine.Engine]
	held   atomic.Bool // Hold: no snapshot goes out
	// bundleVersion is the CA's trust bundle version (BundleChanged).
	bundleVersion atomic.Uint64
	kick          chan struct{}
	// gen counts SetEngine/BundleChanged calls; a conn records the gen it last
	// computed under, so WaitSynced knows who has seen the latest config.
	gen atomic.Uint64
	// Counters for metrics (Stats).
	sent, acks, nacks, refused, regRefused atomic.Uint64

	mu    sync.Mutex
	conns map[*conn]struct{}
	// synced is closed (and replaced) whenever a sidecar ACKs or NACKs, so
	// that WaitSynced can wake without polling.
	synced chan struct{}
}

// conn is one connected sidecar.
type conn struct {
	id       identity.ID
	workload string
	kick     chan struct{}

	// bundleChecked is the bundle version the peer certificate was last
	// checked against (for revocations that arrive while connected).
	bundleChecked uint64
	// revoked is set when the stream ends because the peer's certificate
	// was revoked: its registration leaves at once, with no grace.
	revoked bool

	mu      sync.Mutex
	gen     uint64
	sent    string
	acked   string
	nacked  string
	nackErr string
}

// NewServer returns a push server computing snapshots with e.
func NewServer(cfg Config, e *engine.Engine) *Server {
	if cfg.Debounce == 0 {
		cfg.Debounce = 50 * time.Millisecond
	}
	if cfg.Log == nil {
		cfg.Log = slog.Default()
	}
	if cfg.RegistrationGrace == 0 {
		cfg.RegistrationGrace = DefaultRegistrationGrace
	}
	s := &Server{cfg: cfg, log: cfg.Log.With("component", "push"), kick: make(chan struct{}, 1),
		conns: map[*conn]struct{}{}, synced: make(chan struct{})}
	s.engine.Store(e)
	return s
}

// SetEngine installs the engine for a new config and pushes to everyone.
// The engine should share the registry of the previous one.
func (s *Server) SetEngine(e *engine.Engine) {
	s.engine.Store(e)
	s.gen.Add(1)
	s.poke()
}

// Hold stops snapshots from being sent (streams are still accepted and
// registered) until Release: for a control plane whose config has not
// arrived yet, where the empty config would mean authPolicy NONE. A
// sidecar that gets no snapshot keeps its last good one, or its STRICT
// default.
func (s *Server) Hold() { s.held.Store(true) }

// Release sends snapshots again, to everyone at once.
func (s *Server) Release() {
	if s.held.Swap(false) {
		s.gen.Add(1)
		s.poke()
	}
}

// Engine returns the engine in use.
func (s *Server) Engine() *engine.Engine { return s.engine.Load() }

// BundleChanged tells the server that the CA's trust bundle (roots or
// revocations) is now at version v: every connected sidecar's certificate
// is checked again (Config.Identity) and a revoked one's stream ends. The
// bundle itself reaches sidecars on the CA's WatchTrustBundle stream, not
// on this one.
func (s *Server) BundleChanged(v uint64) {
	s.bundleVersion.Store(v)
	s.gen.Add(1)
	s.poke()
}

func (s *Server) poke() {
	select {
	case s.kick <- struct{}{}:
	default:
	}
}

// Run pushes on every registry or config change until ctx is done.
func (s *Server) Run(ctx context.Context) {
	for {
		changed := s.engine.Load().Registry().Changed()
		select {
		case <-ctx.Done():
			return
		case <-changed:
		case <-s.kick:
		}
		// Debounce: let the rest of a burst arrive, then push once.
		t := time.NewTimer(s.cfg.Debounce)
		select {
		case <-ctx.Done():
			t.Stop()
			return
		case <-t.C:
		}
		s.mu.Lock()
		for c := range s.conns {
			select {
			case c.kick <- struct{}{}:
			default:
			}
		}
		s.mu.Unlock()
	}
}

// workloadName is what a sidecar may call itself: a Kubernetes name.
var workloadName = regexp.MustCompile(`^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$`)

// Stream serves one sidecar.
func (s *Server) Stream(stream pb.Discovery_StreamServer) error {
	ctx := stream.Context()
	id, err := s.cfg.Identity(ctx)
	if err != nil {
		s.refused.Add(1)
		s.log.Warn("discovery stream refused", "reason", identity.Reason(err), "error", err)
		return status.Errorf(codes.Unauthenticated, "discovery needs a valid workload certificate (mTLS): %v", err)
	}
	first, err := stream.Recv()
	if err != nil {
		return err
	}
	reg := first.GetRegister()
	if reg == nil {
		return status.Error(codes.InvalidArgument, "the first message on a discovery stream must be Register")
	}
	if len(reg.Workload) > 253 || !workloadName.MatchString(reg.Workload) {
		return status.Errorf(codes.InvalidArgument, "workload name %q is not a valid Kubernetes name", reg.Workload)
	}
	addr := reg.Address
	if addr == "" {
		if p, ok := peer.FromContext(ctx); ok {
			if host, _, err := net.SplitHostPort(p.Addr.String()); err == nil {
				addr = host
			}
		}
	}
	w := &registry.Workload{Name: reg.Workload, Namespace: id.Namespace, ServiceAccount: id.ServiceAccount,
		Labels: reg.Labels, Address: addr, Sidecar: true}
	for _, p := range reg.Ports {
		sp := reg.SidecarPorts[p]
		if p == 0 || p > 65535 || sp > 65535 {
			return status.Errorf(codes.InvalidArgument, "port %d (sidecar port %d) out of range", p, sp)
		}
		w.Ports = append(w.Ports, registry.WorkloadPort{Number: p, SidecarPort: sp})
	}
	eng := s.engine.Load()
	reger := eng.Registry()
	registered, err := reger.Register(w)
	if err != nil {
		s.refused.Add(1)
		s.log.Warn("registration refused", "spiffe_id", id.String(), "workload", reg.Workload, "error", err)
		return status.Error(codes.PermissionDenied, err.Error())
	}
	c := &conn{id: id, workload: w.Namespace + "/" + w.Name, kick: make(chan struct{}, 1)}
	// The stream's end removes a self-registration after the grace period
	// (a reconnect re-registers first, and UnregisterIf leaves the newer
	// entry alone); a revoked sidecar's at once.
	defer func() {
		if c.revoked || s.cfg.RegistrationGrace < 0 {
			reger.UnregisterIf(registered)
			return
		}
		time.AfterFunc(s.cfg.RegistrationGrace, func() { reger.UnregisterIf(registered) })
	}()
	// Registration is closed by default: the sidecar stays connected (it
	// may call out), but it serves no Service that does not allow its
	// identity, whatever labels it claimed. Say so, once per service.
	for _, r := range eng.RefusalsFor(registered) {
		s.regRefused.Add(1)
		s.log.Warn("self-registration refused: not an endpoint of the service", "spiffe_id", r.SPIFFEID, "workload", r.Workload, "service", r.Service, "reason", r.Reason)
	}

	s.mu.Lock()
	s.conns[c] = struct{}{}
	s.mu.Unlock()
	defer func() {
		s.mu.Lock()
		delete(s.conns, c)
		s.mu.Unlock()
	}()
	s.log.Info("sidecar connected", "spiffe_id", id.String(), "workload", c.workload, "last_version", reg.LastVersion)

	recvErr := make(chan error, 1)
	go func() { recvErr <- s.recvAcks(stream, c) }()
	for {
		if err := s.push(stream, c); err != nil {
			return err
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-s.cfg.Stopping:
			s.log.Info("sidecar stream ended: control plane shutting down", "workload", c.workload)
			return status.Error(codes.Unavailable, "control plane shutting down; reconnect")
		case err := <-recvErr:
			s.log.Info("sidecar disconnected", "workload", c.workload, "error", err)
			return err
		case <-c.kick:
		}
	}
}

func (s *Server) recvAcks(stream pb.Discovery_StreamServer, c *conn) error {
	for {
		m, err := stream.Recv()
		if err != nil {
			return err
		}
		a := m.GetAck()
		if a == nil {
			return status.Error(codes.InvalidArgument, "after Register, a sidecar sends only Ack messages")
		}
		if a.Error == "" {
			s.acks.Add(1)
		} else {
			s.nacks.Add(1)
		}
		c.mu.Lock()
		if a.Error == "" {
			c.acked = a.Version
		} else {
			c.nacked, c.nackErr = a.Version, a.Error
		}
		c.mu.Unlock()
		if a.Error != "" {
			s.log.Warn("sidecar rejected snapshot (NACK)", "workload", c.workload, "version", a.Version, "error", a.Error)
		}
		s.mu.Lock()
		close(s.synced)
		s.synced = make(chan struct{})
		s.mu.Unlock()
	}
}

// push computes c's snapshot and sends it if it differs from the last one
// sent. The version is a hash of the content, so an unchanged snapshot is
// never resent and versions are stable across control plane restarts.
func (s *Server) push(stream pb.Discovery_StreamServer, c *conn) error {
	gen := s.gen.Load()
	e := s.engine.Load()
	ns, name, _ := cutKey(c.workload)
	w := e.Registry().Workload(ns, name)
	if w == nil {
		return status.Errorf(codes.NotFound, "workload %s left the registry", c.workload)
	}
	// A certificate revoked while its stream is open ends the stream: the
	// revoked workload gets no more policy or endpoints. (Expiry does not:
	// the sidecar renews its certificate but keeps its TLS connection, and
	// proved its identity when it connected.)
	if bv := s.bundleVersion.Load(); bv != 0 && bv != c.bundleChecked {
		c.bundleChecked = bv
		if _, err := s.cfg.Identity(stream.Context()); errors.Is(err, identity.ErrRevoked) {
			s.refused.Add(1)
			c.revoked = true
			s.log.Warn("sidecar certificate revoked; ending its discovery stream", "workload", c.workload, "spiffe_id", c.id.String(), "error", err)
			return status.Errorf(codes.PermissionDenied, "workload certificate revoked: %v", err)
		}
	}
	if s.held.Load() {
		return nil // Release kicks every stream
	}
	snap := e.Snapshot(w)
	m, version, err := encode(snap)
	if err != nil {
		return status.Errorf(codes.Internal, "encode snapshot: %v", err)
	}
	c.mu.Lock()
	same := c.sent == version
	if same {
		c.gen = gen
	}
	c.mu.Unlock()
	if same {
		return nil
	}
	if err := stream.Send(&pb.Snapshot{Version: version, Policy: m}); err != nil {
		return err
	}
	s.sent.Add(1)
	c.mu.Lock()
	c.sent, c.gen = version, gen
	c.mu.Unlock()
	return nil
}

func cutKey(k string) (string, string, bool) {
	for i := 0; i < len(k); i++ {
		if k[i] == '/' {
			return k[:i], k[i+1:], true
		}
	}
	return "", k, false
}

// encode converts snap with its version set to a content hash: SHA-256 of
// the deterministic protobuf encoding without the version.
func encode(snap *policy.Snapshot) (*pb.PolicySnapshot, string, error) {
	snap.Version = ""
	m, err := sidecarapi.SnapshotToProto(snap)
	if err != nil {
		return nil, "", err
	}
	b, err := proto.MarshalOptions{Deterministic: true}.Marshal(m)
	if err != nil {
		return nil, "", err
	}
	h := sha256.Sum256(b)
	version := hex.EncodeToString(h[:8])
	snap.Version, m.Version = version, version
	return m, version, nil
}

// Stats are the server's counters since it started.
type Stats struct {
	Connected                  int
	Sent, ACKs, NACKs, Refused uint64
	// RegistrationsRefused counts (sidecar, service) pairs where a
	// self-registered sidecar claimed a service that does not allow its
	// identity.
	RegistrationsRefused uint64
}

// Stats returns the counters, for metrics.
func (s *Server) Stats() Stats {
	s.mu.Lock()
	n := len(s.conns)
	s.mu.Unlock()
	return Stats{Connected: n, Sent: s.sent.Load(), ACKs: s.acks.Load(), NACKs: s.nacks.Load(), Refused: s.refused.Load(), RegistrationsRefused: s.regRefused.Load()}
}

// Status lists connected sidecars, by workload.
func (s *Server) Status() []meshapi.SidecarStatus {
	s.mu.Lock()
	out := make([]meshapi.SidecarStatus, 0, len(s.conns))
	for c := range s.conns {
		c.mu.Lock()
		out = append(out, meshapi.SidecarStatus{Workload: c.workload, SPIFFEID: c.id.String(), Sent: c.sent, Acked: c.acked, Nacked: c.nacked, NackError: c.nackErr})
		c.mu.Unlock()
	}
	s.mu.Unlock()
	sort.Slice(out, func(i, j int) bool { return out[i].Workload < out[j].Workload })
	return out
}

// ErrNotSynced is returned by WaitSynced when ctx ends first.
var ErrNotSynced = errors.New("push: sidecars did not all ACK in time")

// WaitSynced waits until at least n sidecars are connected, every one has
// been evaluated against the config and bundle in force when WaitSynced was
// called, and every one has ACKed the last snapshot it was sent.
func (s *Server) WaitSynced(ctx context.Context, n int) error {
	want := s.gen.Load()
	for {
		s.mu.Lock()
		ch := s.synced
		total, behind := len(s.conns), 0
		for c := range s.conns {
			c.mu.Lock()
			if c.sent == "" || c.acked != c.sent || c.gen < want {
				behind++
			}
			c.mu.Unlock()
		}
		s.mu.Unlock()
		if total >= n && behind == 0 {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("%w: %d connected, %d behind", ErrNotSynced, total, behind)
		case <-ch:
		case <-time.After(20 * time.Millisecond):
			// Also wakes for connects and sends, which do not close synced.
		}
	}
}
