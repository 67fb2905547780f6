// Package sidecar wires one workload's sidecar together: the certificate
// agent (or certificates read from a directory), the connection to the
// control plane for the CA and the push stream, the mTLS proxy, the
// sidecar's own HTTP servers (admin, health, Prometheus), the Workload API,
// SIGHUP reload and the app it supervises. `meshd sidecar` maps its flags to
// a Config and calls Run; everything it does after flag parsing is here.
//
// The files, in the order Run uses them: control.go (how the sidecar
// reaches the control plane: roots, join token, dialer for the agent and
// the push client), ca.go (GRPCCA, the agent's CA over gRPC), staticcerts.go (--static-certs: load, watch, reload),
// servers.go (admin, health, Prometheus), app.go (the supervised app and
// signals), register.go (what a self-registering sidecar reports).
package sidecar

import (
	"context"
	"fmt"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"time"

	"google.golang.org/grpc"

	pb "github.com/meshauth/meshauth/api/meshauth/v1"
	"github.com/meshauth/meshauth/internal/agent"
	"github.com/meshauth/meshauth/internal/identity"
	"github.com/meshauth/meshauth/internal/metrics"
	"github.com/meshauth/meshauth/internal/policy"
	"github.com/meshauth/meshauth/internal/proxy"
	"github.com/meshauth/meshauth/internal/push/pushclient"
)

// Config is one sidecar. Field names follow `meshd sidecar`'s flags
// (docs/sidecar.md); the zero value of a listener address turns it off.
type Config struct {
	// The workload's identity and instance name (Workload: default
	// ServiceAccount).
	Workload, Namespace, ServiceAccount, TrustDomain string

	// The control plane: address (default ControlDir/control.addr, then
	// 127.0.0.1:15012), its state directory (control.addr, root-cert.pem,
	// revocations.json) and CARoots, the PEM roots to verify it with
	// (default ControlDir's, then CertsDir/root-cert.pem).
	Control, ControlDir, CARoots string
	// Token or TokenFile (read again on every use) is the join token.
	Token, TokenFile string
	// CertTTL is the lifetime to ask for (0: the CA's default).
	CertTTL time.Duration
	// CertsDir holds cert-chain.pem, key.pem and root-cert.pem. With
	// StaticCerts the sidecar runs no agent and uses the files there
	// (watched, and re-read on SIGHUP).
	CertsDir    string
	StaticCerts bool
	// Snapshot is a policy.Snapshot JSON file (re-read on SIGHUP); empty:
	// the control plane's push stream, or with StaticCerts and no control
	// plane every port STRICT.
	Snapshot string
	// Labels and Address are sent to the registry when self-registering.
	Labels  map[string]string
	Address string

	// The proxy's listeners: explicit inbound, explicit outbound TCP
	// ports, the outbound HTTP proxy / capture target, the inbound capture
	// (with Transparent; default :15006).
	Inbound        []proxy.InboundListener
	Upstreams      []proxy.Upstream
	Outbound       string
	InboundCapture string
	Transparent    bool
	DenyUnknown    bool
	OutboundUIDs   []int
	// Limits, as proxy.Config has them (0: the default; negative: none).
	HandshakeTimeout, IdleTimeout                 time.Duration
	RequestHeadersTimeout, ResponseHeadersTimeout time.Duration
	BodyIdleTimeout, RequestTimeout               time.Duration
	MaxConnections                                int

	// The sidecar's own servers: admin API (loopback), health with the
	// app probes of AppProbers ($MESHAUTH_APP_PROBERS), Prometheus-only.
	Admin, Health, Prometheus string
	AppProbers                string
	// WorkloadAPI is the Workload API socket: "" means CertsDir-agent.sock,
	// "off" disables. WorkloadAPIUIDs may use it besides the sidecar's uid.
	WorkloadAPI     string
	WorkloadAPIUIDs []int

	// Log gets the sidecar's log; AccessLog adds one line per request or
	// TCP connection to it.
	Log       *slog.Logger
	AccessLog bool

	// App, if set, is started, signalled and waited for; Run returns its
	// exit (an *exec.ExitError for a non-zero status).
	App []string
}

// sidecar is a Config being run.
type sidecar struct {
	cfg      Config
	id       identity.ID
	log      *slog.Logger
	reg      *metrics.Registry
	metrics  *proxy.Metrics
	cfgStore *proxy.ConfigStore
	store    *agent.Store
	cc       *controlConn
	ag       *agent.Agent
}

// Run runs the sidecar until SIGINT or SIGTERM (forwarded to the app), ctx
// ends, the app exits, or the agent gives up (the CA refused the first
// certificate for good).
func Run(ctx context.Context, cfg Config) error {
	if cfg.Log == nil {
		cfg.Log = slog.New(slog.DiscardHandler)
	}
	id, err := identity.New(cfg.TrustDomain, cfg.Namespace, cfg.ServiceAccount)
	if err != nil {
		return err
	}
	if cfg.Workload == "" {
		cfg.Workload = cfg.ServiceAccount
	}
	s := &sidecar{cfg: cfg, id: id, log: cfg.Log.With("workload", cfg.Workload), reg: metrics.NewRegistry()}
	s.reg.RegisterRuntime()
	s.metrics = proxy.NewMetrics(s.reg)
	if err := s.loadSnapshot(); err != nil {
		return err
	}
	ctx, stop := context.WithCancel(ctx)
	defer stop()

	s.store = agent.NewStore(agent.StoreConfig{
		Want: id, Log: s.log,
		OnRefused: func(what, reason string) { s.metrics.CertUpdates.WithLabelValues(what, "refused", reason).Inc() },
	})
	agentDone, err := s.startCerts(ctx)
	if err != nil {
		return err
	}
	var policySrc proxy.ConfigSource = s.cfgStore
	if s.usePush() {
		pc, closeConn, err := s.startPush(ctx)
		if err != nil {
			return err
		}
		defer closeConn()
		policySrc = pushSource{pc}
	}
	if err := s.startWorkloadAPI(ctx); err != nil {
		return err
	}
	p, err := s.startProxy(policySrc)
	if err != nil {
		return err
	}
	defer p.Close()
	closeServers, err := s.startServers(p)
	defer closeServers()
	if err != nil {
		return err
	}
	if cfg.StaticCerts {
		go watchStaticCerts(ctx, s.log, cfg.CertsDir, s.store)
		if s.cc != nil {
			// No agent: the roots come from the files; the CA still
			// learns, on the bundle stream, which of its bundles they
			// cover (a root rotation waits for it).
			go agent.AckFromFiles(ctx, s.cc.ca(), cfg.Workload, s.store, s.log.With("component", "bundle-ack"))
		}
	}
	s.log.Info("sidecar started", "spiffe_id", id.String(), "outbound", addrString(p.OutboundAddr),
		"inbound", fmt.Sprint(p.InboundAddrs), "capture", addrString(p.CaptureAddr), "admin", cfg.Admin, "transparent", cfg.Transparent)
	return s.superviseApp(ctx, agentDone)
}

// loadSnapshot sets the policy the proxy starts with: the Snapshot file, or
// every port STRICT until the push client takes over.
func (s *sidecar) loadSnapshot() error {
	snap := &policy.Snapshot{TrustDomain: s.id.TrustDomain, InboundDefault: policy.ServerStrict}
	if s.cfg.Snapshot != "" {
		var err error
		if snap, err = proxy.LoadSnapshotFile(s.cfg.Snapshot); err != nil {
			return err
		}
	}
	if snap.Workload.Name == "" {
		snap.Workload = policy.WorkloadRef{Name: s.cfg.Workload, Namespace: s.cfg.Namespace, ServiceAccount: s.cfg.ServiceAccount}
	}
	s.cfgStore = proxy.NewConfigStore(nil)
	return s.cfgStore.Set(snap)
}

// usePush: policy comes from the control plane unless a snapshot file is
// given or the sidecar has static certificates and no control plane.
func (s *sidecar) usePush() bool {
	return s.cfg.Snapshot == "" && (!s.cfg.StaticCerts || s.cfg.Control != "" || s.cfg.ControlDir != "")
}

// startCerts loads the static certificates, or starts the agent; the
// channel reports an agent that gave up.
func (s *sidecar) startCerts(ctx context.Context) (<-chan error, error) {
	agentDone := make(chan error, 1)
	if !s.cfg.StaticCerts || s.usePush() {
		var err error
		if s.cc, err = newControlConn(s.cfg, s.id, s.store); err != nil {
			return nil, err
		}
	}
	if s.cfg.StaticCerts {
		return agentDone, loadStaticCerts(s.store, s.cfg.CertsDir, s.id.TrustDomain)
	}
	var err error
	s.ag, err = agent.New(agent.Config{
		ID: s.id, Dir: s.cfg.CertsDir, CA: s.cc.ca(), Instance: s.cfg.Workload, Store: s.store, TTL: s.cfg.CertTTL,
		Tokens: s.cc.tokens, Log: s.log.With("component", "agent"), Metrics: s.reg,
	})
	if err != nil {
		return nil, err
	}
	go func() { agentDone <- s.ag.Run(ctx) }()
	return agentDone, nil
}

// startPush takes policy from the control plane's push stream, over mTLS
// with the workload certificate once there is one (a new connection for
// each certificate: see agent.CertConn).
func (s *sidecar) startPush(ctx context.Context) (*pushclient.Client, func() error, error) {
	conn := agent.NewCertConn(s.store, func(ctx context.Context) (*grpc.ClientConn, error) { return s.cc.dial(ctx, true) })
	if _, err := conn.Conn(ctx); err != nil {
		return nil, nil, err
	}
	pc := pushclient.NewClient(pushclient.ClientConfig{
		Conn: conn,
		Log:  s.log,
		Register: func() *pb.Register {
			return &pb.Register{Workload: s.cfg.Workload, Labels: s.cfg.Labels, Address: s.cfg.Address, Ports: inboundPorts(s.cfg.Inbound),
				SidecarPorts: inboundSidecarPorts(s.cfg.Inbound)}
		},
	})
	go func() {
		for s.store.SVID() == nil {
			select {
			case <-ctx.Done():
				return
			case <-s.store.Changed():
			}
		}
		pc.Run(ctx)
	}()
	return pc, conn.Close, nil
}

// startWorkloadAPI serves the SPIFFE Workload API on its unix socket.
func (s *sidecar) startWorkloadAPI(ctx context.Context) error {
	path := s.cfg.WorkloadAPI
	if path == "" {
		// Beside, not in, the certs directory, which holds exactly the
		// seed's three files.
		path = filepath.Clean(s.cfg.CertsDir) + "-agent.sock"
	}
	if path == "off" {
		return nil
	}
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return err
	}
	api := agent.NewWorkloadAPI(s.store, s.log)
	api.AllowUIDs = s.cfg.WorkloadAPIUIDs
	go func() {
		if err := api.Serve(ctx, path); err != nil {
			s.log.Error("workload API stopped", "error", err.Error())
		}
	}()
	return nil
}

// startProxy starts the mTLS proxy on the configured listeners.
func (s *sidecar) startProxy(policySrc proxy.ConfigSource) (*proxy.Proxy, error) {
	c := s.cfg
	access := c.Log
	if !c.AccessLog {
		access = slog.New(slog.DiscardHandler)
	}
	pcfg := proxy.Config{
		Certs: s.store, Policy: policySrc, Log: s.log.With("component", "proxy"), AccessLog: access.With("log", "access"),
		Metrics: s.metrics, HandshakeTimeout: c.HandshakeTimeout, IdleTimeout: c.IdleTimeout,
		RequestHeadersTimeout: c.RequestHeadersTimeout, ResponseHeadersTimeout: c.ResponseHeadersTimeout,
		BodyIdleTimeout: c.BodyIdleTimeout, RequestTimeout: c.RequestTimeout, MaxConnections: c.MaxConnections,
		Outbound: c.Outbound, Transparent: c.Transparent, DenyUnknown: c.DenyUnknown, OutboundUIDs: c.OutboundUIDs,
		Inbound: c.Inbound, Upstreams: c.Upstreams,
	}
	if c.Transparent {
		pcfg.InboundCapture = c.InboundCapture
		if pcfg.InboundCapture == "" {
			pcfg.InboundCapture = ":15006"
		}
	}
	p, err := proxy.New(pcfg)
	if err != nil {
		return nil, err
	}
	if err := p.Start(); err != nil {
		return nil, err
	}
	return p, nil
}

func addrString(a net.Addr) string {
	if a == nil {
		return ""
	}
	return a.String()
}
