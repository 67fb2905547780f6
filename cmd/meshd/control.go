//go:build !sidecaronly

// `meshd control`; left out of the sidecar image's build (-tags sidecaronly,
// see cmd/meshd/main.go).

package main

import (
	"log/slog"
	"os"
	"os/signal"
	"runtime/pprof"
	"syscall"
	"time"

	"github.com/spf13/cobra"

	"github.com/meshauth/meshauth/internal/ca"
	"github.com/meshauth/meshauth/internal/control"
)

func init() {
	var (
		cfg     control.Config
		keyType string
		cpuProf string
	)
	cmd := &cobra.Command{
		Use:   "control",
		Short: "run the control plane: CA (signing, rotation, revocation) and the admin API",
		Long: `meshd control serves the CA and Admin APIs over gRPC/TLS on --listen.

State lives in --dir: ca.db (CA store), admin.token (0600, for meshctl),
root-cert.pem (the trust bundle's roots) and control.addr (the address it
listens on). With --config DIR it loads and watches policy YAML (see
docs/policy.md) and pushes each sidecar its snapshot. With --cacerts DIR it signs with an operator's intermediate
(ca-cert.pem, ca-key.pem, cert-chain.pem, root-cert.pem) instead of a
self-signed root.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			cfg.CA.KeyType = ca.KeyType(keyType)
			if cpuProf != "" {
				// For profiling the CA under load (BENCHMARKS.md); written
				// when meshd exits on SIGINT/SIGTERM.
				f, err := os.Create(cpuProf)
				if err != nil {
					return err
				}
				defer f.Close()
				if err := pprof.StartCPUProfile(f); err != nil {
					return err
				}
				defer pprof.StopCPUProfile()
			}
			cfg.Log = slog.New(slog.NewTextHandler(os.Stderr, nil))
			srv, err := control.New(cfg)
			if err != nil {
				return err
			}
			defer srv.Plane().Close()
			ctx, stop := signal.NotifyContext(cmd.Context(), os.Interrupt, syscall.SIGTERM)
			defer stop()
			tuneGC(ctx) // unless GOGC/GOMEMLIMIT are set; see gctune.go
			return srv.Serve(ctx)
		},
	}
	f := cmd.Flags()
	dir := os.Getenv("MESHAUTH_DIR")
	if dir == "" {
		dir = ".meshauth"
	}
	f.StringVar(&cfg.Dir, "dir", dir, "state directory (env MESHAUTH_DIR)")
	f.StringVar(&cpuProf, "cpuprofile", "", "write a CPU profile to this file until exit")
	f.MarkHidden("cpuprofile")
	f.StringVar(&cfg.Listen, "listen", control.DefaultListen, "gRPC/TLS listen address (port 0: pick one, see DIR/control.addr)")
	f.StringVar(&cfg.MetricsListen, "metrics-listen", "127.0.0.1:15014", "Prometheus /metrics address (empty: off)")
	f.StringVar(&cfg.CA.TrustDomain, "trust-domain", "cluster.local", "trust domain of every identity this CA signs")
	f.StringVar(&cfg.CA.CACertsDir, "cacerts", "", "plugged-in CA directory (ca-cert.pem, ca-key.pem, cert-chain.pem, root-cert.pem)")
	f.StringVar(&keyType, "key-type", string(ca.KeyECDSAP256), "self-signed root key: ecdsa-p256, rsa-2048 or rsa-3072")
	f.DurationVar(&cfg.CA.DefaultTTL, "default-ttl", 24*time.Hour, "workload certificate TTL when none is asked")
	f.DurationVar(&cfg.CA.MaxTTL, "max-ttl", 90*24*time.Hour, "longest workload certificate TTL a caller may ask")
	f.DurationVar(&cfg.CA.RotationOverlap, "rotation-overlap", 0, "default minimum time a new root is trusted before it signs, even once every sidecar has ACKed it")
	f.DurationVar(&cfg.CA.LogRetention, "issuance-log-retention", 365*24*time.Hour, "keep issuance log records this long after their certificate expired (0: forever); pruned hourly")
	f.DurationVar(&cfg.TickInterval, "tick", 10*time.Second, "how often rotation, root retirement and revocation pruning run")
	f.StringVar(&cfg.Plane.ConfigDir, "config", "", "config directory (Policy, DestinationRule, RBAC, Service, Workload YAML), watched; a bad batch is rejected whole")
	f.DurationVar(&cfg.Plane.PollInterval, "config-poll", time.Second, "how often --config is checked for changes")
	root.AddCommand(cmd)
}
