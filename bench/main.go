// Command bench measures meshauth's sidecar pair side by side with the
// proxies people would pick instead — direct (no proxy), an nginx stream
// mTLS pair, an haproxy L7 pair with pooled upstream mTLS, a stunnel pair —
// plus the machine's raw limits and CA issuance against step-ca, and writes
// the "Sidecar side by side" section of BENCHMARKS.md.
//
//	go run ./bench                 # full run, minutes (make bench)
//	go run ./bench -quick          # a few seconds, the CI smoke settings
//
// Everything runs on loopback with free ports. The harness stops only the
// processes it started, by PID, and every run is bounded in time.
package main

import (
	"context"
	"flag"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"
)

// config is the whole harness configuration; defaults() fills zero values.
type config struct {
	Runs       int           // interleaved runs; medians are reported
	Duration   time.Duration // each wrk run
	LatDur     time.Duration // each fortio fixed-rate run
	QPS        int           // fortio rate
	Conns      int           // connections for wrk and fortio
	UploadSize int64         // bytes per upload
	Workers    int           // worker processes/threads per peer proxy
	Variants   []string      // direct, meshauth, nginx, haproxy, stunnel
	Raw        bool          // measure the raw limits
	CA         bool          // CA issuance comparison
	CADuration time.Duration
	CAWorkers  int
	Out        string   // BENCHMARKS.md to update; "" = print only
	Meshd      string   // meshd binary; "" = build it
	control    string   // meshd with `meshd control` (controlBinary)
	PprofDir   string   // "": no profiles; else each sidecar writes a CPU profile here
	MeshdEnv   []string // extra environment for the sidecars (experiments, e.g. GOMAXPROCS=1)
	WorkDir    string   // "" = a temporary directory, removed afterwards
	Command    string   // the command line, recorded in the report
	Log        *slog.Logger
}

func (c *config) defaults() {
	if c.Runs <= 0 {
		c.Runs = 3
	}
	if c.Duration <= 0 {
		c.Duration = 5 * time.Second
	}
	if c.LatDur <= 0 {
		c.LatDur = 8 * time.Second
	}
	if c.QPS <= 0 {
		c.QPS = 1000
	}
	if c.Conns <= 0 {
		c.Conns = 16
	}
	if c.UploadSize <= 0 {
		c.UploadSize = 1 << 30
	}
	if c.Workers <= 0 {
		c.Workers = 1
	}
	if len(c.Variants) == 0 {
		c.Variants = []string{"direct", "meshauth", "nginx", "haproxy", "stunnel"}
	}
	if c.CADuration <= 0 {
		c.CADuration = 5 * time.Second
	}
	if c.CAWorkers <= 0 {
		c.CAWorkers = 64
	}
	if c.Log == nil {
		c.Log = slog.New(slog.NewTextHandler(os.Stderr, nil))
	}
}

func main() {
	if runChild() {
		return
	}
	var cfg config
	var variants string
	var quick bool
	flag.IntVar(&cfg.Runs, "runs", 3, "interleaved runs per measurement (medians are reported)")
	flag.DurationVar(&cfg.Duration, "d", 5*time.Second, "duration of each max-throughput (wrk) run")
	flag.DurationVar(&cfg.LatDur, "lat-d", 8*time.Second, "duration of each fixed-rate (fortio) run")
	flag.IntVar(&cfg.QPS, "qps", 1000, "fixed rate for latency, CPU and RSS")
	flag.IntVar(&cfg.Conns, "c", 16, "connections for wrk and fortio")
	flag.Int64Var(&cfg.UploadSize, "upload", 1<<30, "upload size in bytes")
	flag.IntVar(&cfg.Workers, "workers", 1, "worker processes (nginx) / threads (haproxy) per peer proxy")
	flag.StringVar(&variants, "variants", "direct,meshauth,nginx,haproxy,stunnel", "variants to measure")
	flag.BoolVar(&cfg.Raw, "raw", true, "measure raw limits (loopback TCP, Go TLS bulk, handshakes)")
	flag.BoolVar(&cfg.CA, "ca", true, "compare CA issuance with step-ca")
	flag.DurationVar(&cfg.CADuration, "ca-d", 5*time.Second, "duration of each CA issuance run")
	flag.IntVar(&cfg.CAWorkers, "ca-workers", 64, "parallel CA clients")
	flag.StringVar(&cfg.Out, "out", "BENCHMARKS.md", "markdown file whose section to write (empty: stdout only)")
	flag.StringVar(&cfg.Meshd, "meshd", "", "meshd binary for the sidecars (default: ./cmd/meshd built as the sidecar image builds it, -tags sidecaronly,grpcnotrace, with ./cmd/meshd-sidecar beside it, which its `meshd sidecar` execs)")
	var meshdEnv string
	flag.StringVar(&meshdEnv, "meshd-env", "", "extra KEY=VALUE,... environment for the sidecars (profiling experiments; recorded in the report)")
	flag.StringVar(&cfg.PprofDir, "pprof", "", "directory for CPU profiles of the meshauth sidecars (meshd sidecar --cpuprofile), written when they stop")
	flag.StringVar(&cfg.WorkDir, "work", "", "work directory to keep configs and logs (default: temporary)")
	flag.BoolVar(&quick, "quick", false, "smoke settings: 1 run, sub-second durations, 16 MiB upload")
	grpcRows := flag.Bool("grpc", false, "measure the gRPC rows instead (grpc.go): unary and bidi streaming through direct, meshauth, haproxy (HTTP mode) and nginx (grpc_pass); prints the table")
	flag.Parse()
	cfg.Variants = strings.Split(variants, ",")
	if meshdEnv != "" {
		cfg.MeshdEnv = strings.Split(meshdEnv, ",")
	}
	if quick {
		applyQuick(&cfg)
	}
	cfg.Command = "go run ./bench " + strings.Join(os.Args[1:], " ")
	cfg.Command = strings.TrimSpace(cfg.Command)

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if *grpcRows {
		table, err := runGRPC(ctx, cfg)
		fmt.Print(table)
		if err != nil {
			fmt.Fprintln(os.Stderr, "bench:", err)
			os.Exit(1)
		}
		return
	}
	rep, err := run(ctx, cfg)
	if rep != nil {
		fmt.Print(rep.markdown())
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "bench:", err)
		os.Exit(1)
	}
}

// applyQuick sets the smoke-run settings the CI test uses.
func applyQuick(c *config) {
	c.Runs = 1
	c.Duration = time.Second
	c.LatDur = time.Second
	c.QPS = 200
	c.UploadSize = 16 << 20
	c.CADuration = time.Second
	c.CAWorkers = 8
}
