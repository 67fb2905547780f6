// Package cli is the command line of the sidecar: its flags, the
// environment the Kubernetes injector sets, and the process set-up (GC,
// GOMAXPROCS, CPU profile, log) around internal/sidecar.Run. Both
// `meshd sidecar` and the small sidecar binary, cmd/meshd-sidecar, run it,
// so the two take exactly the same command line. It uses pflag, not cobra
// (cobra and text/template were 0.5 MB of the sidecar binary).
package cli

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"runtime"
	"runtime/debug"
	"runtime/pprof"
	"strconv"
	"strings"
	"time"

	"github.com/spf13/pflag"

	"github.com/meshauth/meshauth/internal/identity"
	"github.com/meshauth/meshauth/internal/proxy"
	"github.com/meshauth/meshauth/internal/sidecar"
)

// Short is the one-line description of the command.
const Short = "Run the certificate agent and the mTLS proxy for one workload"

// Long is the command's help text.
const Long = `The sidecar gives one workload a mesh identity and mutual TLS.

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
exits with its status.`

// Example is the command's usage example.
const Example = `  meshd sidecar --control 127.0.0.1:15012 --control-dir .meshauth --token $(cat join.token) \
    --namespace default --service-account httpbin --workload httpbin-1 \
    --certs-dir ./certs/httpbin --snapshot httpbin.json \
    --inbound 18000=127.0.0.1:8000 --outbound-listen 127.0.0.1:15101 --admin 127.0.0.1:15100`

// flags are the sidecar's flags.
type flags struct {
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

// Main runs the sidecar command with args (without the program name): it
// parses the flags, prints the help for -h/--help, and runs the sidecar
// until it stops. name is the command as the user typed it, for the help
// and errors ("meshd sidecar" or "meshd-sidecar"). An app that exits
// non-zero makes the process exit with the app's status.
func Main(name string, args []string, stdout io.Writer) error {
	var f flags
	fl, err := parse(name, args, &f)
	if errors.Is(err, pflag.ErrHelp) {
		fmt.Fprintf(stdout, "%s\n\nUsage:\n  %s [flags] [-- app command...]\n\nExamples:\n%s\n\nFlags:\n%s", Long, name, strings.ReplaceAll(Example, "meshd sidecar", name), fl.FlagUsages())
		return nil
	}
	if err != nil {
		return err
	}
	return run(fl, f, fl.Args())
}

// Parse checks a command line as Main would parse it (the injector's
// arguments in tests), without running anything.
func Parse(args []string) error {
	var f flags
	_, err := parse("meshd sidecar", args, &f)
	return err
}

func parse(name string, args []string, f *flags) (*pflag.FlagSet, error) {
	fl := pflag.NewFlagSet(name, pflag.ContinueOnError)
	fl.SetOutput(io.Discard) // errors are returned, help is printed by Main
	bindFlags(fl, f)
	if err := fl.Parse(args); err != nil {
		return fl, err
	}
	return fl, applyEnvAndAliases(fl, f)
}

// bindFlags defines the sidecar's flags on fl, into f.
func bindFlags(fl *pflag.FlagSet, f *flags) {
	fl.StringVar(&f.workload, "workload", "", "workload (instance) name, for logs and registration")
	fl.StringVarP(&f.namespace, "namespace", "n", "default", "namespace of the workload's identity")
	fl.StringVarP(&f.sa, "service-account", "s", "default", "service account of the workload's identity")
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
func applyEnvAndAliases(fl *pflag.FlagSet, f *flags) error {
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

// run sets up the process (GOMAXPROCS and GC, CPU profile, log) and runs
// internal/sidecar with the flags as its Config.
func run(fl *pflag.FlagSet, f flags, app []string) error {
	setRuntime(fl.Changed("cpus"), f.cpus)
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
	cfg, err := config(f, app)
	if err != nil {
		return err
	}
	cfg.Log = slog.New(slog.NewJSONHandler(os.Stderr, &slog.HandlerOptions{Level: level}))
	err = sidecar.Run(context.Background(), cfg)
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		os.Exit(ee.ExitCode())
	}
	return err
}

// config maps the flags (after applyEnvAndAliases) to a sidecar.Config.
func config(f flags, app []string) (sidecar.Config, error) {
	cfg := sidecar.Config{
		Workload: f.workload, Namespace: f.namespace, ServiceAccount: f.sa, TrustDomain: f.trustDomain,
		Control: f.control, ControlDir: f.controlDir, CARoots: f.caRoots,
		Token: f.token, TokenFile: f.tokenFile, CertTTL: f.certTTL,
		CertsDir: f.certsDir, StaticCerts: f.staticCerts, Snapshot: f.snapshot,
		Labels: f.labels, Address: f.address,
		Outbound: f.outbound, InboundCapture: f.capture, Transparent: f.transparent, DenyUnknown: f.denyUnknown,
		OutboundUIDs:     f.outboundUIDs,
		HandshakeTimeout: f.handshakeTimeout, IdleTimeout: f.idleTimeout,
		RequestHeadersTimeout: offIfZero(f.requestHeadersTimeout), ResponseHeadersTimeout: offIfZero(f.responseHeadersTimeout),
		BodyIdleTimeout: offIfZero(f.bodyIdleTimeout), RequestTimeout: f.requestTimeout, MaxConnections: offIfZeroInt(f.maxConnections),
		Admin: f.admin, Health: f.health, Prometheus: f.prometheus, AppProbers: os.Getenv("MESHAUTH_APP_PROBERS"),
		WorkloadAPI: f.workloadAPI, WorkloadAPIUIDs: f.workloadAPIUIDs,
		AccessLog: f.accessLog,
		App:       app,
	}
	for _, s := range f.inbound {
		l, a, err := cutListen("--inbound", s, "", "LISTEN=APP, e.g. 18000=127.0.0.1:8000")
		if err != nil {
			return cfg, err
		}
		cfg.Inbound = append(cfg.Inbound, proxy.InboundListener{Listen: l, App: a})
	}
	for _, s := range f.upstreams {
		l, svc, err := cutListen("--upstream", s, "127.0.0.1", "LISTEN=SERVICE:PORT, e.g. 127.0.0.1:13306=mysql:3306")
		if err != nil {
			return cfg, err
		}
		cfg.Upstreams = append(cfg.Upstreams, proxy.Upstream{Listen: l, Service: svc})
	}
	return cfg, nil
}

// cutListen splits a LISTEN=TARGET flag value; a LISTEN that is only a
// port gets host (":PORT" for every address when host is empty).
func cutListen(flag, s, host, want string) (listen, target string, err error) {
	l, t, ok := strings.Cut(s, "=")
	if !ok || l == "" || t == "" {
		return "", "", fmt.Errorf("%s %q: want %s", flag, s, want)
	}
	if !strings.Contains(l, ":") {
		l = host + ":" + l
	}
	return l, t, nil
}

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
