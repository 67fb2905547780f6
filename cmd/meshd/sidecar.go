package main

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"runtime"
	"runtime/debug"
	"runtime/pprof"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"github.com/spf13/cobra"
	"google.golang.org/grpc"

	pb "github.com/meshauth/meshauth/api/meshauth/v1"
	"github.com/meshauth/meshauth/internal/agent"
	"github.com/meshauth/meshauth/internal/client"
	"github.com/meshauth/meshauth/internal/identity"
	"github.com/meshauth/meshauth/internal/policy"
	"github.com/meshauth/meshauth/internal/proxy"
	"github.com/meshauth/meshauth/internal/push"
)

// sidecarFlags are the flags of `meshd sidecar`.
type sidecarFlags struct {
	workload, namespace, sa, trustDomain string
	control, controlDir, caRoots         string
	token, tokenFile                     string
	certTTL                              time.Duration
	certsDir                             string
	staticCerts                          bool
	snapshot                             string
	inbound, upstreams                   []string
	outbound, capture, admin             string
	transparent, denyUnknown             bool
	workloadAPI                          string
	workloadAPIUIDs                      []int
	outboundUIDs                         []int
	labels                               map[string]string
	address                              string
	// Port-number forms, as the Kubernetes injector passes them.
	inboundPort, outboundPort, adminPort, healthPort int
	prometheus                                       string
	prometheusPort                                   int
	certSource                                       string
	health                                           string
	logLevel                                         string
	accessLog                                        bool
	handshakeTimeout, idleTimeout                    time.Duration
	requestHeadersTimeout, responseHeadersTimeout    time.Duration
	bodyIdleTimeout, requestTimeout                  time.Duration
	maxConnections                                   int
	cpuProfile                                       string
	cpus                                             int
}

func init() {
	var f sidecarFlags
	cmd := &cobra.Command{
		Use:   "sidecar [flags] [-- app command...]",
		Short: "Run the certificate agent and the mTLS proxy for one workload",
		Long: `sidecar gives one workload a mesh identity and mutual TLS.

The agent generates the workload's key, has the CA (meshd control) sign it
(join token the first time, its own certificate afterwards), writes
cert-chain.pem, key.pem and root-cert.pem into --certs-dir, renews at about half
the lifetime and serves the SPIFFE Workload API on --workload-api.

The proxy serves inbound traffic on explicit listeners (--inbound
LISTEN=APP, no root needed) or on the capture port (--transparent, after
meshd init-net), with the mode the policy gives each port (STRICT,
PERMISSIVE, DISABLE), and outbound traffic as an HTTP proxy on
--outbound-listen (http_proxy=http://127.0.0.1:15001) or, with --transparent,
as the iptables redirect target. The policy comes from --snapshot (a JSON
policy.Snapshot, reloaded on SIGHUP).

With an app command after --, the sidecar starts it, forwards signals, and
exits with its status.`,
		Example: `  meshd sidecar --control 127.0.0.1:15012 --control-dir .meshauth --token $(cat join.token) \
    --namespace default --service-account httpbin --workload httpbin-1 \
    --certs-dir ./certs/httpbin --snapshot httpbin.json \
    --inbound 18000=127.0.0.1:8000 --outbound-listen 127.0.0.1:15101 --admin 127.0.0.1:15100`,
		RunE: func(cmd *cobra.Command, args []string) error { return runSidecar(cmd, f, args) },
	}
	fl := cmd.Flags()
	fl.StringVar(&f.workload, "workload", "", "workload (instance) name, for logs and registration")
	fl.StringVar(&f.namespace, "namespace", "default", "namespace of the workload's identity")
	fl.StringVar(&f.sa, "service-account", "default", "service account of the workload's identity")
	fl.StringVar(&f.trustDomain, "trust-domain", identity.DefaultTrustDomain, "mesh trust domain")
	fl.StringVar(&f.control, "control", "", "control plane address (default: CONTROL_DIR/control.addr, then 127.0.0.1:15012)")
	fl.StringVar(&f.controlDir, "control-dir", "", "control plane state dir, to read control.addr and root-cert.pem")
	fl.StringVar(&f.caRoots, "ca-roots", "", "PEM roots that the control plane's certificate chains to (default CONTROL_DIR/root-cert.pem, then CERTS_DIR/root-cert.pem)")
	fl.StringVar(&f.token, "token", "", "join token for the first certificate (prefer --token-file)")
	fl.StringVar(&f.tokenFile, "token-file", "", "file holding the join token (or Kubernetes token); read again on every use, so a new token written into it gets a revoked sidecar a new certificate without a restart")
	fl.DurationVar(&f.certTTL, "cert-ttl", 0, "certificate lifetime to ask for (0: the CA's default); renewed at about half of it from issuance, +-10% jitter, at most once per 10s. A TTL the CA refuses makes the sidecar exit 1 at start-up with the CA's message")
	fl.StringVar(&f.certsDir, "certs-dir", "/etc/certs", "directory for cert-chain.pem, key.pem and root-cert.pem")
	fl.BoolVar(&f.staticCerts, "static-certs", false, "no agent: use the certificates already in --certs-dir (re-read on SIGHUP)")
	fl.StringVar(&f.snapshot, "snapshot", "", "policy snapshot JSON file (re-read on SIGHUP); default: the control plane's push stream, or with --static-certs every port STRICT and no outbound services")
	fl.StringToStringVar(&f.labels, "label", nil, "workload label k=v sent to the control plane's registry, where Service selectors match it (self-registration, no Workload YAML needed); the Service must allow this identity (spec.serviceAccounts); repeatable")
	fl.StringVar(&f.address, "address", "", "workload address for the registry (default: as the control plane sees the connection)")
	fl.StringArrayVar(&f.inbound, "inbound", nil, "explicit inbound listener LISTEN=APP, e.g. 18000=127.0.0.1:8000 (the app's port names the policy port); repeatable")
	fl.StringArrayVar(&f.upstreams, "upstream", nil, "explicit outbound TCP port LISTEN=SERVICE:PORT, e.g. 127.0.0.1:13306=mysql:3306; serves loopback clients only (and --outbound-uid), whatever address it binds; repeatable")
	fl.StringVar(&f.outbound, "outbound-listen", "127.0.0.1:15001", "outbound listener: HTTP proxy, and the capture target with --transparent (empty: off)")
	fl.StringVar(&f.capture, "inbound-capture", "", "inbound capture listener (default 0.0.0.0:15006 with --transparent)")
	fl.BoolVar(&f.transparent, "transparent", false, "serve traffic redirected by meshd init-net (SO_ORIGINAL_DST); run as uid 1337")
	fl.BoolVar(&f.denyUnknown, "deny-unknown", false, "refuse outbound traffic to destinations that are not mesh services (default: pass through)")
	fl.IntSliceVar(&f.outboundUIDs, "outbound-uid", nil, "serve the explicit proxy and --upstream ports only to local processes of these uids (found via /proc/net/tcp; one table read per connection); repeatable; default: any local process")
	fl.StringVar(&f.admin, "admin", "127.0.0.1:15000", "admin listener: /healthz/ready, /certs, /config_dump, /metrics (empty: off)")
	fl.StringVar(&f.workloadAPI, "workload-api", "", `SPIFFE Workload API unix socket (default CERTS_DIR-agent.sock, beside the certs directory; "off" disables)`)
	fl.IntSliceVar(&f.workloadAPIUIDs, "workload-api-uid", nil, "uid besides the sidecar's own that may use the Workload API (it hands out the private key); repeatable")
	fl.StringVar(&f.logLevel, "log-level", "info", "debug, info, warn or error")
	fl.BoolVar(&f.accessLog, "access-log", true, "log one line per request / TCP connection")
	fl.DurationVar(&f.handshakeTimeout, "handshake-timeout", 10*time.Second, "limit for the first bytes plus the TLS handshake of a connection")
	fl.DurationVar(&f.idleTimeout, "idle-timeout", 90*time.Second, "close keep-alive connections idle between requests, and TCP relays idle both ways (or not read by their receiver), after this long; pooled upstream connections after half of it")
	fl.DurationVar(&f.requestHeadersTimeout, "request-headers-timeout", proxy.DefaultRequestHeadersTimeout, "a request head must be complete this long after its first byte (slowloris; 408)")
	fl.DurationVar(&f.responseHeadersTimeout, "response-headers-timeout", proxy.DefaultResponseHeadersTimeout, "the upstream must start its response this long after the request was sent (504; 0: no limit)")
	fl.DurationVar(&f.bodyIdleTimeout, "body-idle-timeout", proxy.DefaultBodyIdleTimeout, "abort a request or response body after this long without a byte moving (a stream with traffic is never cut)")
	fl.DurationVar(&f.requestTimeout, "request-timeout", 0, "bound a whole HTTP exchange, request to end of response (504; 0: no limit)")
	fl.IntVar(&f.maxConnections, "max-connections", proxy.DefaultMaxConnections, "downstream connections served at once over all proxy listeners; more are reset, logged and counted (0: no limit)")
	// The injector's (and Istio's) port-number flags; each sets the
	// matching address flag, and --inbound-port/--outbound-port mean
	// transparent capture.
	fl.IntVar(&f.inboundPort, "inbound-port", 0, "transparent mode: inbound capture port (sets --inbound-capture :PORT and --transparent)")
	fl.IntVar(&f.outboundPort, "outbound-port", 0, "transparent mode: outbound capture port (sets --outbound-listen :PORT and --transparent)")
	fl.IntVar(&f.adminPort, "admin-port", 0, "admin port on 127.0.0.1 (sets --admin)")
	fl.IntVar(&f.healthPort, "health-port", 0, "health port on all addresses (sets --health :PORT)")
	fl.StringVar(&f.prometheus, "prometheus", "", "metrics-only listener for Prometheus: /metrics and /stats/prometheus, nothing else of the admin API (empty: off)")
	fl.IntVar(&f.prometheusPort, "prometheus-port", 0, "Prometheus port on all addresses (sets --prometheus :PORT; injected pods use 15090, as Istio's)")
	fl.StringVar(&f.health, "health", "", "health listener: /healthz/ready and the app probes from $MESHAUTH_APP_PROBERS (empty: off)")
	fl.StringVar(&f.certSource, "cert-source", "ca", `where certificates come from: "ca" (the agent) or "files" (--certs-dir, written by someone else, e.g. a Secret; re-read when they change)`)
	fl.StringVar(&f.certsDir, "cert-dir", "/etc/certs", "alias of --certs-dir")
	fl.StringVar(&f.caRoots, "ca-root", "", "alias of --ca-roots")
	fl.IntVar(&f.cpus, "cpus", defaultCPUs, "threads running Go code at once (GOMAXPROCS; 0: one per CPU, or the cgroup CPU limit); a GOMAXPROCS environment variable wins over the default")
	fl.StringVar(&f.cpuProfile, "cpuprofile", "", "write a CPU profile to this file until exit (bench/ -pprof)")
	for _, n := range []string{"cert-dir", "ca-root", "cpuprofile"} {
		fl.MarkHidden(n)
	}
	root.AddCommand(cmd)
}

// The sidecar's runtime defaults (BENCHMARKS.md, "Fixes and before/after").
const (
	// defaultCPUs is --cpus' default.
	defaultCPUs = 0
	// sidecarGOGC is the GC target unless GOGC is set: the sidecar's live
	// heap is small (buffers of open connections), and at GOGC=100 the
	// runtime lets it grow to its 4 MB minimum before collecting.
	sidecarGOGC = 50
)

// setRuntime applies --cpus (explicit, or its default when GOMAXPROCS is
// not set) and the GC target.
func setRuntime(cpusSet bool, cpus int) {
	if cpus < 0 {
		cpus = 0
	}
	if cpus > 0 && (cpusSet || os.Getenv("GOMAXPROCS") == "") {
		runtime.GOMAXPROCS(cpus)
	}
	if os.Getenv("GOGC") == "" {
		debug.SetGCPercent(sidecarGOGC)
	}
}

// applyEnvAndAliases fills identity flags from the Downward API variables
// the injector sets, and turns port-number flags into addresses.
func applyEnvAndAliases(cmd *cobra.Command, f *sidecarFlags) error {
	fl := cmd.Flags()
	for _, e := range []struct {
		flag, env string
		dst       *string
	}{
		{"workload", "POD_NAME", &f.workload},
		{"namespace", "POD_NAMESPACE", &f.namespace},
		{"service-account", "SERVICE_ACCOUNT", &f.sa},
		{"address", "INSTANCE_IP", &f.address},
	} {
		if v := os.Getenv(e.env); v != "" && !fl.Changed(e.flag) {
			*e.dst = v
		}
	}
	if f.inboundPort != 0 {
		f.transparent = true
		f.capture = ":" + strconv.Itoa(f.inboundPort)
	}
	if f.outboundPort != 0 {
		f.transparent = true
		f.outbound = ":" + strconv.Itoa(f.outboundPort)
	} else if f.transparent && !fl.Changed("outbound-listen") {
		// REDIRECT sends IPv4 to 127.0.0.1 and IPv6 to ::1: listen on both.
		// Explicit proxy use stays loopback-only (see proxy.handleOutbound).
		f.outbound = ":15001"
	}
	if f.adminPort != 0 {
		f.admin = "127.0.0.1:" + strconv.Itoa(f.adminPort)
	}
	if f.healthPort != 0 {
		f.health = ":" + strconv.Itoa(f.healthPort)
	}
	if f.prometheusPort != 0 {
		f.prometheus = ":" + strconv.Itoa(f.prometheusPort)
	}
	switch f.certSource {
	case "ca":
	case "files":
		f.staticCerts = true
	default:
		return fmt.Errorf("--cert-source %q: want ca or files", f.certSource)
	}
	return nil
}

func parseLevel(s string) (slog.Level, error) {
	var l slog.Level
	err := l.UnmarshalText([]byte(s))
	return l, err
}

func runSidecar(cmd *cobra.Command, f sidecarFlags, app []string) error {
	if err := applyEnvAndAliases(cmd, &f); err != nil {
		return err
	}
	setRuntime(cmd.Flags().Changed("cpus"), f.cpus)
	if f.cpuProfile != "" {
		// For the hot-spot profiles in BENCHMARKS.md; written when the
		// sidecar exits on SIGINT/SIGTERM, as meshd control's --cpuprofile.
		pf, err := os.Create(f.cpuProfile)
		if err != nil {
			return fmt.Errorf("--cpuprofile: %w", err)
		}
		defer pf.Close()
		if err := pprof.StartCPUProfile(pf); err != nil {
			return fmt.Errorf("--cpuprofile: %w", err)
		}
		defer pprof.StopCPUProfile()
	}
	level, err := parseLevel(f.logLevel)
	if err != nil {
		return fmt.Errorf("--log-level: %w", err)
	}
	log := slog.New(slog.NewJSONHandler(os.Stderr, &slog.HandlerOptions{Level: level}))
	access := log
	if !f.accessLog {
		access = slog.New(slog.DiscardHandler)
	}
	id, err := identity.New(f.trustDomain, f.namespace, f.sa)
	if err != nil {
		return err
	}
	if f.workload == "" {
		f.workload = f.sa
	}
	log = log.With("workload", f.workload)

	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	metrics := proxy.NewMetrics(reg)

	// Policy: a static snapshot until the push client takes over.
	snap := &policy.Snapshot{TrustDomain: id.TrustDomain, InboundDefault: policy.ServerStrict}
	if f.snapshot != "" {
		if snap, err = proxy.LoadSnapshotFile(f.snapshot); err != nil {
			return err
		}
	}
	if snap.Workload.Name == "" {
		snap.Workload = policy.WorkloadRef{Name: f.workload, Namespace: f.namespace, ServiceAccount: f.sa}
	}
	cfgStore := proxy.NewConfigStore(nil)
	if err := cfgStore.Set(snap); err != nil {
		return err
	}

	var policySrc proxy.ConfigSource = cfgStore
	ctx, stop := context.WithCancel(context.Background())
	defer stop()

	store := agent.NewStore(agent.StoreConfig{
		Want: id, Log: log,
		OnRefused: func(what, reason string) { metrics.CertUpdates.WithLabelValues(what, "refused", reason).Inc() },
	})
	var ag *agent.Agent
	// agentDone reports an agent that gave up: the CA refused the first
	// certificate for good (agent.StartupError); the sidecar exits with it.
	agentDone := make(chan error, 1)
	usePush := f.snapshot == "" && (!f.staticCerts || f.control != "" || f.controlDir != "")
	var cc *controlConn
	if !f.staticCerts || usePush {
		if cc, err = newControlConn(f, id, store); err != nil {
			return err
		}
	}
	if f.staticCerts {
		if err := loadStaticCerts(store, f.certsDir, id.TrustDomain); err != nil {
			return err
		}
	} else {
		ag, err = agent.New(agent.Config{
			ID: id, Dir: f.certsDir, Connect: cc.connectCA, Store: store, TTL: f.certTTL,
			Tokens: cc.tokens, Log: log.With("component", "agent"), Registerer: reg,
		})
		if err != nil {
			return err
		}
		go func() { agentDone <- ag.Run(ctx) }()
	}
	if usePush {
		// Policy from the control plane's push stream, over mTLS with the
		// workload certificate once there is one (a new connection for
		// each certificate: see agent.CertConn).
		conn := agent.NewCertConn(store, func(ctx context.Context) (*grpc.ClientConn, error) { return cc.dial(ctx, true) })
		if _, err := conn.Conn(ctx); err != nil {
			return err
		}
		defer conn.Close()
		pc := push.NewClient(push.ClientConfig{
			Conn: conn,
			Log:  log,
			Register: func() *pb.Register {
				return &pb.Register{Workload: f.workload, Labels: f.labels, Address: f.address, Ports: inboundPorts(f.inbound),
					SidecarPorts: inboundSidecarPorts(f.inbound)}
			},
		})
		go func() {
			for store.SVID() == nil {
				select {
				case <-ctx.Done():
					return
				case <-store.Changed():
				}
			}
			pc.Run(ctx)
		}()
		policySrc = pushSource{pc}
	}

	if f.workloadAPI == "" {
		// Beside, not in, the certs directory, which holds exactly the
		// seed's three files.
		f.workloadAPI = filepath.Clean(f.certsDir) + "-agent.sock"
	}
	if f.workloadAPI != "off" {
		if err := os.MkdirAll(filepath.Dir(f.workloadAPI), 0o755); err != nil {
			return err
		}
		api := agent.NewWorkloadAPI(store, log)
		api.AllowUIDs = f.workloadAPIUIDs
		go func() {
			if err := api.Serve(ctx, f.workloadAPI); err != nil {
				log.Error("workload API stopped", "error", err.Error())
			}
		}()
	}

	pcfg := proxy.Config{
		Certs: store, Policy: policySrc, Log: log.With("component", "proxy"), AccessLog: access.With("log", "access"),
		Metrics: metrics, HandshakeTimeout: f.handshakeTimeout, IdleTimeout: f.idleTimeout,
		RequestHeadersTimeout: offIfZero(f.requestHeadersTimeout), ResponseHeadersTimeout: offIfZero(f.responseHeadersTimeout),
		BodyIdleTimeout: offIfZero(f.bodyIdleTimeout), RequestTimeout: f.requestTimeout, MaxConnections: offIfZeroInt(f.maxConnections),
		Outbound: f.outbound, Transparent: f.transparent, DenyUnknown: f.denyUnknown, OutboundUIDs: f.outboundUIDs,
	}
	for _, s := range f.inbound {
		l, a, ok := strings.Cut(s, "=")
		if !ok || l == "" || a == "" {
			return fmt.Errorf("--inbound %q: want LISTEN=APP, e.g. 18000=127.0.0.1:8000", s)
		}
		if !strings.Contains(l, ":") {
			l = ":" + l
		}
		pcfg.Inbound = append(pcfg.Inbound, proxy.InboundListener{Listen: l, App: a})
	}
	for _, s := range f.upstreams {
		l, svc, ok := strings.Cut(s, "=")
		if !ok || l == "" || svc == "" {
			return fmt.Errorf("--upstream %q: want LISTEN=SERVICE:PORT, e.g. 127.0.0.1:13306=mysql:3306", s)
		}
		if !strings.Contains(l, ":") {
			l = "127.0.0.1:" + l
		}
		pcfg.Upstreams = append(pcfg.Upstreams, proxy.Upstream{Listen: l, Service: svc})
	}
	if f.transparent {
		pcfg.InboundCapture = f.capture
		if pcfg.InboundCapture == "" {
			pcfg.InboundCapture = ":15006"
		}
	}
	p, err := proxy.New(pcfg)
	if err != nil {
		return err
	}
	if err := p.Start(); err != nil {
		return err
	}
	defer p.Close()

	if f.admin != "" {
		l, err := net.Listen("tcp", f.admin)
		if err != nil {
			return fmt.Errorf("--admin: %w", err)
		}
		extra := func() map[string]any {
			m := map[string]any{"snapshot_file": f.snapshot}
			if ag != nil {
				m["agent"] = ag.Status()
			}
			return m
		}
		srv := sideServer(p.AdminHandler(reg, extra), f.idleTimeout)
		go srv.Serve(l)
		defer srv.Close()
	}
	if f.health != "" {
		probers, err := proxy.ParseAppProbers(os.Getenv("MESHAUTH_APP_PROBERS"))
		if err != nil {
			return err
		}
		l, err := net.Listen("tcp", f.health)
		if err != nil {
			return fmt.Errorf("--health: %w", err)
		}
		srv := sideServer(p.HealthHandler(probers), f.idleTimeout)
		go srv.Serve(l)
		defer srv.Close()
	}
	if f.prometheus != "" {
		l, err := net.Listen("tcp", f.prometheus)
		if err != nil {
			return fmt.Errorf("--prometheus: %w", err)
		}
		mux := http.NewServeMux()
		h := promhttp.HandlerFor(reg, promhttp.HandlerOpts{})
		mux.Handle("GET /metrics", h)
		mux.Handle("GET /stats/prometheus", h) // the path Istio's scrape config uses
		srv := sideServer(mux, f.idleTimeout)
		go srv.Serve(l)
		defer srv.Close()
	}
	if f.staticCerts {
		go watchStaticCerts(ctx, log, f.certsDir, store)
	}
	log.Info("sidecar started", "spiffe_id", id.String(), "outbound", addrString(p.OutboundAddr),
		"inbound", fmt.Sprint(p.InboundAddrs), "capture", addrString(p.CaptureAddr), "admin", f.admin, "transparent", f.transparent)

	sigs := make(chan os.Signal, 4)
	signal.Notify(sigs, syscall.SIGINT, syscall.SIGTERM, syscall.SIGHUP)
	var child *exec.Cmd
	childDone := make(chan error, 1)
	if len(app) > 0 {
		child = exec.Command(app[0], app[1:]...)
		child.Stdin, child.Stdout, child.Stderr = os.Stdin, os.Stdout, os.Stderr
		if err := child.Start(); err != nil {
			return fmt.Errorf("start app %q: %w", app[0], err)
		}
		go func() { childDone <- child.Wait() }()
	}
	for {
		select {
		case sig := <-sigs:
			if sig == syscall.SIGHUP {
				reload(log, f, cfgStore, store, metrics)
				if cc != nil && cc.tokens.Check() {
					log.Info("join token file re-read on SIGHUP", "file", f.tokenFile)
				}
				continue
			}
			log.Info("shutting down", "signal", sig.String())
			if child != nil {
				child.Process.Signal(sig)
				select {
				case <-childDone:
				case <-time.After(10 * time.Second):
					child.Process.Kill()
				}
			}
			return nil
		case err := <-agentDone:
			if err == nil {
				continue
			}
			if child != nil {
				child.Process.Signal(syscall.SIGTERM)
				select {
				case <-childDone:
				case <-time.After(10 * time.Second):
					child.Process.Kill()
				}
			}
			return err
		case err := <-childDone:
			var ee *exec.ExitError
			if errors.As(err, &ee) {
				os.Exit(ee.ExitCode())
			}
			return err
		}
	}
}

// inboundPorts returns the app ports of --inbound LISTEN=APP flags.
func inboundPorts(inbound []string) []uint32 {
	var out []uint32
	for _, s := range inbound {
		_, app, _ := strings.Cut(s, "=")
		if _, ps, err := net.SplitHostPort(app); err == nil {
			if n, err := strconv.ParseUint(ps, 10, 16); err == nil {
				out = append(out, uint32(n))
			}
		}
	}
	return out
}

// inboundSidecarPorts maps each app port of --inbound LISTEN=APP to the
// port the sidecar listens on for it, so that callers are sent to the
// sidecar (explicit mode) and not around it.
func inboundSidecarPorts(inbound []string) map[uint32]uint32 {
	out := map[uint32]uint32{}
	for _, s := range inbound {
		l, app, _ := strings.Cut(s, "=")
		if i := strings.LastIndex(l, ":"); i >= 0 {
			l = l[i+1:]
		}
		lp, err1 := strconv.ParseUint(l, 10, 16)
		_, ap, err2 := net.SplitHostPort(app)
		a, err3 := strconv.ParseUint(ap, 10, 16)
		if err1 == nil && err2 == nil && err3 == nil && lp != 0 {
			out[uint32(a)] = uint32(lp)
		}
	}
	return out
}

func addrString(a net.Addr) string {
	if a == nil {
		return ""
	}
	return a.String()
}

// reload re-reads the snapshot file and, with --static-certs, the certs.
// A bad file keeps the last good state.
func reload(log *slog.Logger, f sidecarFlags, cfg *proxy.ConfigStore, store *agent.Store, m *proxy.Metrics) {
	if f.snapshot != "" {
		s, err := proxy.LoadSnapshotFile(f.snapshot)
		if err == nil {
			if s.Workload.Name == "" {
				s.Workload = cfg.Current().Workload
			}
			err = cfg.Set(s)
		}
		if err != nil {
			m.ConfigUpdates.WithLabelValues("refused").Inc()
			log.Error("snapshot reload refused; keeping the last good one", "file", f.snapshot, "error", err.Error())
		} else {
			m.ConfigUpdates.WithLabelValues("applied").Inc()
			log.Info("snapshot reloaded", "file", f.snapshot, "version", s.Version)
		}
	}
	if f.staticCerts {
		if err := loadStaticCerts(store, f.certsDir, store.Bundle().TrustDomain); err != nil {
			log.Error("certificate reload refused; keeping the current one", "dir", f.certsDir, "error", err.Error())
		}
	}
}

// watchStaticCerts re-reads the certs directory when its files change (a
// Kubernetes Secret volume swaps them atomically). A bad set is refused by
// the store and the current certificate stays.
func watchStaticCerts(ctx context.Context, log *slog.Logger, dir string, store *agent.Store) {
	stamp := func() string {
		var sb strings.Builder
		for _, n := range []string{agent.ChainFile, agent.KeyFile, agent.RootFile} {
			if fi, err := os.Stat(filepath.Join(dir, n)); err == nil {
				fmt.Fprintf(&sb, "%d/%d;", fi.ModTime().UnixNano(), fi.Size())
			}
		}
		return sb.String()
	}
	last := stamp()
	t := time.NewTicker(5 * time.Second)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		if s := stamp(); s != last {
			last = s
			td := identity.DefaultTrustDomain
			if b := store.Bundle(); b != nil {
				td = b.TrustDomain
			}
			if err := loadStaticCerts(store, dir, td); err != nil {
				log.Error("certificate files changed but were refused; keeping the current certificate", "dir", dir, "error", err.Error())
				continue
			}
			log.Info("certificate files reloaded", "dir", dir, "serial", store.SVID().Serial())
		}
	}
}

func loadStaticCerts(store *agent.Store, dir, td string) error {
	chain, err := os.ReadFile(filepath.Join(dir, agent.ChainFile))
	if err != nil {
		return fmt.Errorf("--static-certs: %w", err)
	}
	key, err := os.ReadFile(filepath.Join(dir, agent.KeyFile))
	if err != nil {
		return fmt.Errorf("--static-certs: %w", err)
	}
	roots, err := os.ReadFile(filepath.Join(dir, agent.RootFile))
	if err != nil {
		return fmt.Errorf("--static-certs: %w", err)
	}
	s, err := agent.NewSVID(chain, key)
	if err != nil {
		return fmt.Errorf("--static-certs: %w", err)
	}
	b, err := identity.NewBundle(td, 0, []string{string(roots)}, nil)
	if err != nil {
		return fmt.Errorf("--static-certs: %w", err)
	}
	return store.Set(s, b)
}

// controlConn holds how the sidecar reaches the control plane: its
// address, the roots to verify it before the first bundle arrives, and the
// join token.
type controlConn struct {
	addr, dir string
	tokens    *agent.TokenSource
	initial   *identity.Bundle
	store     *agent.Store
}

func newControlConn(f sidecarFlags, id identity.ID, store *agent.Store) (*controlConn, error) {
	c := &controlConn{addr: f.control, dir: f.controlDir, store: store}
	if c.dir == "" {
		c.dir = f.certsDir // client.Dial reads control.addr from it if present
	}
	// The token file is read again on every use, so a new join token
	// written into it (or a rotated Kubernetes token) is picked up.
	var err error
	if c.tokens, err = agent.NewTokenSource(f.token, f.tokenFile); err != nil {
		return nil, fmt.Errorf("--token-file: %w", err)
	}
	if f.caRoots == "" && f.controlDir != "" {
		// The control plane's own directory: its roots and the revoked
		// serials it wrote beside them, so a revoked control-plane
		// certificate is refused before the first bundle arrives too (the
		// bootstrap call carries the join token).
		if c.initial, err = client.LoadRoots(f.controlDir, id.TrustDomain); err != nil {
			return nil, fmt.Errorf("control plane roots: %w", err)
		}
		return c, nil
	}
	rootsFile := f.caRoots
	if rootsFile == "" {
		rootsFile = filepath.Join(f.certsDir, agent.RootFile)
	}
	if data, err := os.ReadFile(rootsFile); err == nil {
		if c.initial, err = identity.NewBundle(id.TrustDomain, 0, []string{string(data)}, nil); err != nil {
			return nil, fmt.Errorf("control plane roots %s: %w", rootsFile, err)
		}
	} else {
		return nil, fmt.Errorf("control plane roots: %w (pass --ca-roots or --control-dir so the sidecar can verify the control plane)", err)
	}
	return c, nil
}

// roots is the bundle to verify the control plane with: the agent's current
// one (it follows root rotations), else the configured roots.
func (c *controlConn) roots() *identity.Bundle {
	if b := c.store.Bundle(); b != nil {
		return b
	}
	return c.initial
}

// dial opens a connection; with mtls it presents the workload certificate,
// otherwise the join token.
func (c *controlConn) dial(ctx context.Context, mtls bool) (*grpc.ClientConn, error) {
	o := client.Options{Dir: c.dir, Addr: c.addr, Roots: c.roots, TrustDomain: c.initial.TrustDomain}
	if mtls {
		o.GetClientCertificate = func(*tls.CertificateRequestInfo) (*tls.Certificate, error) {
			if s := c.store.SVID(); s != nil {
				return s.TLS, nil
			}
			return &tls.Certificate{}, nil
		}
	} else {
		tok, err := c.tokens.Token()
		if err != nil {
			return nil, err
		}
		o.Token = tok
	}
	return client.Dial(ctx, o)
}

// connectCA is the agent's ConnectFunc.
func (c *controlConn) connectCA(ctx context.Context, mtls bool, _ func() *tls.Certificate) (pb.CertificateAuthorityClient, io.Closer, error) {
	conn, err := c.dial(ctx, mtls)
	if err != nil {
		return nil, nil, err
	}
	return pb.NewCertificateAuthorityClient(conn), conn, nil
}

// pushSource adapts the push client to the proxy's ConfigSource.
type pushSource struct{ c *push.Client }

func (p pushSource) Current() *policy.Snapshot {
	if u := p.c.Current(); u != nil {
		return u.Snapshot
	}
	return nil
}
func (p pushSource) Changed() <-chan struct{} { return p.c.Changed() }

// offIfZero maps a flag's 0 ("no limit") to proxy.Config's "no limit" (a
// negative value; 0 there means the default).
func offIfZero(d time.Duration) time.Duration {
	if d == 0 {
		return -1
	}
	return d
}

func offIfZeroInt(n int) int {
	if n == 0 {
		return -1
	}
	return n
}

// sideServer is the HTTP server of the sidecar's own endpoints (admin,
// health, Prometheus: the last two listen on every address in a pod). A
// client that opens connections and goes quiet holds none of them longer
// than the request-head limit or, between requests, the sidecar's
// --idle-timeout, as on the proxy's own listeners.
func sideServer(h http.Handler, idle time.Duration) *http.Server {
	return &http.Server{Handler: h, ReadHeaderTimeout: 10 * time.Second, IdleTimeout: idle, MaxHeaderBytes: 64 << 10}
}
