package control

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"gopkg.in/yaml.v3"

	pb "github.com/meshauth/meshauth/api/meshauth/v1"
	"github.com/meshauth/meshauth/internal/config"
	"github.com/meshauth/meshauth/internal/meshapi"
	"github.com/meshauth/meshauth/internal/policy/engine"
	"github.com/meshauth/meshauth/internal/push"
	"github.com/meshauth/meshauth/internal/registry"
)

// PlaneConfig configures the config plane. Zero values get the defaults
// named.
type PlaneConfig struct {
	// Source feeds the config from outside the admin API (a directory,
	// the cluster's objects). Nil: DirSource(ConfigDir, PollInterval) if
	// ConfigDir is set, else config comes from Admin.ApplyConfig only.
	Source ConfigSource
	// ConfigDir is watched for YAML files by DirSource (see there: two
	// polls must agree, empty files are refused).
	ConfigDir string
	// PollInterval is how often ConfigDir is checked for changes (1s).
	PollInterval time.Duration
	// Debounce is the push server's debounce (50ms).
	Debounce time.Duration
}

// Plane is the config half of the control plane: the config (directory
// plus applied batches), the registry, the policy engine and the push
// server that streams each sidecar its snapshot.
type Plane struct {
	s    *Server
	cfg  PlaneConfig
	log  *slog.Logger
	reg  *registry.Registry
	push *push.Server

	src ConfigSource // nil: config from ApplyConfig only

	mu      sync.Mutex
	srcObjs []any // last good batch from src
	// srcRejected is set while the source's content is rejected (the
	// last good config stays in force); nil when what it holds applies.
	srcRejected *meshapi.ConfigRejection
	rejects     atomic.Uint64
	applied     []any // objects from ApplyConfig, by key, in apply order
	current     *config.Config
	version     uint64

	cancel context.CancelFunc
	done   chan struct{}
}

// newPlane builds the config plane of s (New calls it: every Server has
// one, with or without a config directory) and starts its background work.
func newPlane(s *Server, pc PlaneConfig) (*Plane, error) {
	if pc.Source == nil && pc.ConfigDir != "" {
		pc.Source = DirSource(pc.ConfigDir, pc.PollInterval)
	}
	p := &Plane{s: s, cfg: pc, src: pc.Source, log: s.Log().With("subsystem", "config"), reg: registry.New(), done: make(chan struct{})}
	p.current = &config.Config{}
	p.push = push.NewServer(push.Config{Identity: s.PeerIdentity, Debounce: pc.Debounce, Log: s.Log(), Stopping: s.Stopping()}, engine.New(p.withTrustDomain(p.current), p.reg))
	p.push.BundleChanged(s.CA().Bundle().Version)
	// Config applied through the admin API survives restarts: a restart
	// that forgot it would silently weaken policy.
	applied, err := loadApplied(filepath.Join(s.Dir(), FileAppliedConfig))
	if err != nil {
		return nil, err
	}
	p.applied = applied
	// A bad directory at start-up stops meshd: running with no policy
	// would silently mean authPolicy NONE, plaintext everywhere.
	if ls, ok := p.src.(LateSource); ok && ls.LoadsLate() {
		p.push.Hold()
		p.log.Info("holding snapshots until the config source's first content", "source", p.src.Name())
	}
	if p.src != nil {
		objs, err := p.src.Load()
		if err == nil {
			var cfg *config.Config
			if cfg, err = p.combine(objs, applied); err == nil {
				p.srcObjs = objs
				p.install(cfg)
			}
		}
		if err != nil {
			return nil, fmt.Errorf("config %s: %w", p.src.Name(), err)
		}
		p.logApplied("objects", len(p.current.Objects()))
	} else if len(applied) > 0 {
		cfg, err := p.combine(nil, applied)
		if err != nil {
			return nil, fmt.Errorf("config: %s: %w", FileAppliedConfig, err)
		}
		p.install(cfg)
	}
	p.registerMetrics(s.Metrics())
	ctx, cancel := context.WithCancel(context.Background())
	p.cancel = cancel
	go p.run(ctx)
	return p, nil
}

// Close stops the plane's background work (directory watch, bundle watch,
// push loop).
func (p *Plane) Close() {
	p.cancel()
	<-p.done
}

// Registry is the mesh's registry (Kubernetes sources feed it too).
func (p *Plane) Registry() *registry.Registry { return p.reg }

// Push is the Discovery server.
func (p *Plane) Push() *push.Server { return p.push }

// Config returns the config in force.
func (p *Plane) Config() *config.Config {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.current
}

func (p *Plane) run(ctx context.Context) {
	defer close(p.done)
	var wg sync.WaitGroup
	wg.Add(2)
	go func() { defer wg.Done(); p.push.Run(ctx) }()
	go func() { defer wg.Done(); p.watchBundle(ctx) }()
	if p.src != nil {
		if err := p.src.Watch(ctx, p.fromSource); err != nil && ctx.Err() == nil {
			p.log.Error("config source stopped; the config in force stays", "source", p.src.Name(), "error", err)
		}
	}
	wg.Wait()
}

// fromSource installs a new batch from the source (combined with the
// applied objects), or records and logs why it is not in force.
func (p *Plane) fromSource(objs []any, err error) {
	p.mu.Lock()
	if err == nil {
		var cfg *config.Config
		if cfg, err = p.combine(objs, p.applied); err == nil {
			p.srcObjs = objs
			p.srcRejected = nil
			p.install(cfg)
			p.mu.Unlock()
			p.logApplied()
			p.push.Release() // a late source's first content: snapshots may go out
			return
		}
	}
	p.reject(err)
	p.mu.Unlock()
	p.logRejected(err)
}

// logApplied says a batch from the source is in force.
func (p *Plane) logApplied(attrs ...any) {
	attrs = append([]any{"config_version", p.Config().Version}, attrs...)
	if _, ok := p.src.(*dirSource); ok {
		p.log.Info("config directory applied", append([]any{"dir", p.src.Name()}, attrs...)...)
		return
	}
	p.log.Info("config applied from source", append([]any{"source", p.src.Name()}, attrs...)...)
}

// watchBundle tells the push server of every new trust bundle (roots,
// revocations), so that it ends the streams of revoked sidecars. The
// sidecars get the bundle itself from the CA's WatchTrustBundle.
func (p *Plane) watchBundle(ctx context.Context) {
	for {
		b, ch := p.s.CA().Watch()
		p.push.BundleChanged(b.Version)
		select {
		case <-ctx.Done():
			return
		case <-ch:
		}
	}
}

// logRejected logs each error of a rejected batch on its own line, with
// file:line:column, so it can be found and fixed.
func (p *Plane) logRejected(err error) {
	p.rejects.Add(1)
	var list config.ErrorList
	if errors.As(err, &list) {
		for _, e := range list {
			p.log.Error("config rejected; the last good config stays in force", "at", e.Pos.String(), "object", e.Object, "field", e.Path, "error", e.Msg)
		}
		return
	}
	p.log.Error("config rejected; the last good config stays in force", "error", err)
}

// reject records why the source's content is not in force; p.mu is held.
func (p *Plane) reject(err error) {
	r := &meshapi.ConfigRejection{Dir: p.src.Name(), At: time.Now().UTC()}
	var list config.ErrorList
	if errors.As(err, &list) {
		for _, e := range list {
			r.Errors = append(r.Errors, e.Error())
		}
	} else {
		r.Errors = []string{err.Error()}
	}
	p.srcRejected = r
}

// combine builds the config in force: the directory's objects, then the
// applied ones over them (an applied object replaces a file's of the same
// kind, namespace and name).
func (p *Plane) combine(dir, applied []any) (*config.Config, error) {
	base, err := config.New(dir)
	if err != nil {
		return nil, err
	}
	cfg, err := base.Apply(applied, false)
	if err != nil {
		return nil, err
	}
	if td := cfg.TrustDomain(); cfg.Mesh != nil && cfg.Mesh.Spec.TrustDomain != "" && td != p.s.CA().TrustDomain() {
		return nil, config.ErrorList{{Pos: cfg.Mesh.Source, Object: cfg.Mesh.Key(), Path: "spec.trustDomain",
			Msg: fmt.Sprintf("trust domain %q differs from the CA's %q (meshd control --trust-domain)", td, p.s.CA().TrustDomain())}}
	}
	return cfg, nil
}

// withTrustDomain fills in the CA's trust domain when the config names none.
func (p *Plane) withTrustDomain(c *config.Config) *config.Config {
	td := p.s.CA().TrustDomain()
	if c.TrustDomain() == td || (c.Mesh != nil && c.Mesh.Spec.TrustDomain != "") {
		return c
	}
	cp := *c
	mesh := config.MeshConfig{}
	if c.Mesh != nil {
		mesh = *c.Mesh
	} else {
		mesh.APIVersion, mesh.Kind, mesh.Metadata.Name = config.MeshV1alpha1, config.KindMeshConfig, "mesh"
	}
	mesh.Spec.TrustDomain = td
	cp.Mesh = &mesh
	return &cp
}

// install makes cfg the config in force; p.mu is held.
func (p *Plane) install(cfg *config.Config) {
	p.version++
	cfg.Version = p.version
	p.current = cfg
	ss, ws := registry.FromConfig(cfg)
	p.reg.Sync(registry.SourceConfig, ss, ws)
	eng := engine.New(p.withTrustDomain(cfg), p.reg)
	p.push.SetEngine(eng)
	// Valid config that applies to nothing (a target or host with a typo)
	// is logged, not rejected: the service may simply not be there yet.
	for _, w := range eng.Lint() {
		p.log.Warn("config applies to nothing", "at", w.Pos.String(), "object", w.Object, "warning", w.Msg)
	}
	// A config change may close a Service to sidecars already registered
	// (or open it): say who is refused now.
	for _, r := range eng.Refusals() {
		p.log.Warn("self-registration refused: not an endpoint of the service", "spiffe_id", r.SPIFFEID, "workload", r.Workload, "service", r.Service, "reason", r.Reason)
	}
}

// ApplyConfig validates a batch and, if all of it (merged with the config
// in force) is valid, installs it. A bad batch changes nothing and the
// error lists every problem with file:line:column.
func (p *Plane) ApplyConfig(ctx context.Context, req *pb.ApplyConfigRequest) (*pb.ApplyConfigResponse, error) {
	var objs []any
	var errs config.ErrorList
	for _, f := range req.Files {
		o, e := config.ParseFile(f.Name, f.Content)
		objs = append(objs, o...)
		errs = append(errs, e...)
	}
	if len(errs) > 0 {
		errs.Sort()
		p.rejects.Add(1)
		return nil, status.Error(codes.InvalidArgument, "config rejected, nothing changed:\n"+errs.Error())
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	applied := mergeApplied(p.applied, objs, req.Replace)
	cfg, err := p.combine(p.srcObjs, applied)
	if err != nil {
		p.rejects.Add(1)
		return nil, status.Error(codes.InvalidArgument, "config rejected, nothing changed:\n"+err.Error())
	}
	if err := saveApplied(filepath.Join(p.s.Dir(), FileAppliedConfig), applied); err != nil {
		p.log.Error("cannot persist applied config; not applying it", "error", err)
		return nil, status.Errorf(codes.Internal, "config not applied: cannot save it to the state directory: %v", err)
	}
	p.applied = applied
	p.install(cfg)
	resp := &pb.ApplyConfigResponse{ConfigVersion: cfg.Version}
	for _, o := range objs {
		resp.Applied = append(resp.Applied, config.ObjectOf(o).Key())
	}
	p.log.Info("config applied", "config_version", cfg.Version, "objects", strings.Join(resp.Applied, ","))
	return resp, nil
}

// registerMetrics exposes the plane on the control plane's /metrics.
func (p *Plane) registerMetrics(reg *prometheus.Registry) {
	if reg == nil {
		return
	}
	stat := func(f func(push.Stats) float64) func() float64 {
		return func() float64 { return f(p.push.Stats()) }
	}
	cs := []prometheus.Collector{
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "meshauth_config_version", Help: "Version of the config in force (increments on every applied batch)."},
			func() float64 { return float64(p.Config().Version) }),
		prometheus.NewCounterFunc(prometheus.CounterOpts{Name: "meshauth_config_rejected_total", Help: "Config batches rejected (directory or ApplyConfig); the last good config stayed."},
			func() float64 { return float64(p.rejects.Load()) }),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "meshauth_config_dir_rejected", Help: "1 while the config directory's content is rejected (an empty, unparsable or invalid file; the last good config is in force), else 0."},
			func() float64 {
				p.mu.Lock()
				defer p.mu.Unlock()
				if p.srcRejected != nil {
					return 1
				}
				return 0
			}),
		prometheus.NewCounterFunc(prometheus.CounterOpts{Name: "meshauth_push_registrations_refused_total", Help: "Self-registrations refused as endpoints of a service that does not allow the sidecar's identity (per sidecar and service)."},
			stat(func(s push.Stats) float64 { return float64(s.RegistrationsRefused) })),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "meshauth_push_sidecars_connected", Help: "Sidecars with an open Discovery stream."},
			stat(func(s push.Stats) float64 { return float64(s.Connected) })),
		prometheus.NewCounterFunc(prometheus.CounterOpts{Name: "meshauth_push_snapshots_sent_total", Help: "Snapshots sent to sidecars."},
			stat(func(s push.Stats) float64 { return float64(s.Sent) })),
		prometheus.NewCounterFunc(prometheus.CounterOpts{Name: "meshauth_push_acks_total", Help: "Snapshots ACKed by sidecars."},
			stat(func(s push.Stats) float64 { return float64(s.ACKs) })),
		prometheus.NewCounterFunc(prometheus.CounterOpts{Name: "meshauth_push_nacks_total", Help: "Snapshots NACKed (rejected) by sidecars."},
			stat(func(s push.Stats) float64 { return float64(s.NACKs) })),
		prometheus.NewCounterFunc(prometheus.CounterOpts{Name: "meshauth_push_streams_refused_total", Help: "Discovery streams refused (no valid certificate, or a workload claimed under another identity)."},
			stat(func(s push.Stats) float64 { return float64(s.Refused) })),
	}
	for _, c := range cs {
		if err := reg.Register(c); err != nil {
			p.log.Warn("metric not registered", "error", err)
		}
	}
}

// FileAppliedConfig holds, in the state directory, every object applied
// through Admin.ApplyConfig (mode 0600), reloaded at start.
const FileAppliedConfig = "config-applied.yaml"

func loadApplied(path string) ([]any, error) {
	b, err := os.ReadFile(path)
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("config: read %s: %w", path, err)
	}
	objs, errs := config.Parse(path, b)
	if len(errs) > 0 {
		return nil, fmt.Errorf("config: %s (applied config saved by an earlier run; fix or remove it): %w", path, errs)
	}
	return objs, nil
}

func saveApplied(path string, objs []any) error {
	var buf bytes.Buffer
	buf.WriteString("# Objects applied with meshctl apply (Admin.ApplyConfig). Written by meshd control.\n")
	for _, o := range objs {
		buf.WriteString("---\n")
		enc := yaml.NewEncoder(&buf)
		enc.SetIndent(2)
		if err := enc.Encode(o); err != nil {
			return err
		}
		enc.Close()
	}
	return writeFileAtomic(path, buf.Bytes(), 0o600)
}

func objKey(v any) string {
	o := config.ObjectOf(v)
	k := o.Kind
	if k == config.KindClusterRbacConfig {
		k = config.KindRbacConfig
	}
	return k + "/" + o.Ref()
}

// mergeApplied upserts batch into old by kind/namespace/name; with replace,
// old objects of the kinds in batch go first.
func mergeApplied(old, batch []any, replace bool) []any {
	inBatch, kinds := map[string]bool{}, map[string]bool{}
	for _, v := range batch {
		inBatch[objKey(v)] = true
		kinds[config.ObjectOf(v).Kind] = true
	}
	var out []any
	for _, v := range old {
		if inBatch[objKey(v)] || (replace && kinds[config.ObjectOf(v).Kind]) {
			continue
		}
		out = append(out, v)
	}
	return append(out, batch...)
}

// GetState returns the config in force, the registry and the connected
// sidecars (meshapi.State); meshctl rebuilds a policy engine from it to
// answer get, tls-check, explain and check locally.
func (p *Plane) GetState(ctx context.Context, _ *pb.GetStateRequest) (*pb.GetStateResponse, error) {
	p.mu.Lock()
	cfg := p.withTrustDomain(p.current)
	rej := p.srcRejected
	p.mu.Unlock()
	st := meshapi.State{ConfigVersion: cfg.Version, Config: cfg, Registry: p.reg.State(), Sidecars: p.push.Status(), ConfigRejected: rej}
	m, err := meshapi.StateToProto(&st)
	if err != nil {
		return nil, status.Errorf(codes.Internal, "encode state: %v", err)
	}
	return m, nil
}
