package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"time"
)

// result holds one variant's measurements: metric -> one value per run.
type result struct {
	v *variant
	m map[string][]float64
}

func (r *result) add(metric string, x float64) { r.m[metric] = append(r.m[metric], x) }

// Metric keys.
const (
	mKA        = "keepalive_rps"
	mKAErr     = "keepalive_errors"
	mClose     = "close_rps"
	mCloseErr  = "close_errors"
	mQPS       = "lat_qps"
	mP50       = "p50_ms"
	mP90       = "p90_ms"
	mP99       = "p99_ms"
	mLatErr    = "lat_errors"
	mCPU       = "cpu_vcpu"
	mCPU1k     = "cpu_per_1k"
	mRSS       = "rss_mb"
	mAnon      = "anon_mb"
	mUpload    = "upload_mibs"
	mUploadCPU = "upload_cpu_s_per_gib"
)

// report is everything one harness run found.
type report struct {
	cfg      config
	date     time.Time
	elapsed  time.Duration
	machine  []string
	results  []*result
	skipped  []string // variant: why it was not measured
	problems []string // measurements that failed
	raw      map[string][]float64
	ca       *caReport
	fortio   string
	podNetns []string // the pod variants' network namespaces, removed at the end
	// loadStart and loadEnd are /proc/loadavg before and after.
	loadStart, loadEnd string
}

func (r *report) problem(format string, args ...any) {
	msg := fmt.Sprintf(format, args...)
	r.problems = append(r.problems, msg)
	r.cfg.Log.Warn("problem", "what", msg)
}

// run starts the backend and every variant, measures them interleaved, and
// writes the report section. It always stops what it started.
func run(ctx context.Context, cfg config) (*report, error) {
	cfg.defaults()
	rep := &report{cfg: cfg, date: time.Now().UTC(), raw: map[string][]float64{}, loadStart: loadAvg()}
	start := time.Now()
	defer func() { rep.elapsed = time.Since(start) }()
	log := cfg.Log

	dir := cfg.WorkDir
	if dir == "" {
		d, err := os.MkdirTemp("", "meshauth-bench-")
		if err != nil {
			return nil, err
		}
		defer os.RemoveAll(d)
		dir = d
	} else if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, err
	}
	dir, _ = filepath.Abs(dir)

	p, err := newPKI(dir, time.Now())
	if err != nil {
		return nil, err
	}
	backend, backendAddr, err := startBackend(ctx, dir)
	if err != nil {
		return nil, err
	}
	defer backend.stop()
	e := &env{dir: dir, pki: p, backend: backendAddr, workers: cfg.Workers}
	// After the variants' sidecars have stopped (defers run last first).
	defer func() { rep.podNetns = e.closePods() }()

	var started []*variant
	defer func() {
		for _, v := range started {
			stopAll(v.procs)
			stopAll(v.aux)
		}
	}()
	for _, name := range cfg.Variants {
		v, err := startVariant(ctx, e, &cfg, name)
		if err != nil {
			if errors.Is(err, errSkipped) {
				rep.skipped = append(rep.skipped, err.Error())
				log.Info("skipping variant", "variant", name, "reason", err)
			} else {
				rep.problem("%s: setup failed: %v", name, err)
			}
			continue
		}
		started = append(started, v)
		if err := checkVariant(ctx, v, nil); err != nil {
			rep.problem("%s: %v", name, err)
			continue
		}
		log.Info("variant ready", "variant", name, "addr", v.addr)
		rep.results = append(rep.results, &result{v: v, m: map[string][]float64{}})
	}

	rep.fortio = findTool("fortio")
	if rep.fortio == "" {
		rep.skipped = append(rep.skipped, "latency/CPU/RSS at fixed rate: fortio not installed (go install fortio.org/fortio@v1.68.2)")
	}
	haveWrk := findTool("wrk") != ""
	if !haveWrk {
		rep.skipped = append(rep.skipped, "max req/s: wrk not installed (apt-get install wrk)")
	}
	rep.machine = machineInfo(rep.fortio)

	for run := 0; run < cfg.Runs; run++ {
		// Rotate the order every run so no variant always goes first.
		order := make([]*result, len(rep.results))
		for i := range rep.results {
			order[i] = rep.results[(i+run)%len(rep.results)]
		}
		log.Info("run", "n", run+1, "of", cfg.Runs)
		if haveWrk {
			for _, closeEach := range []bool{false, true} {
				for _, r := range order {
					if err := ctx.Err(); err != nil {
						return rep, err
					}
					w, err := runWrk(ctx, dir, r.v, cfg.Conns, cfg.Duration, closeEach)
					mode, rps, errs := "keep-alive", mKA, mKAErr
					if closeEach {
						mode, rps, errs = "one request per connection", mClose, mCloseErr
					}
					if err != nil {
						rep.problem("%s %s: %v", r.v.name, mode, err)
						continue
					}
					r.add(rps, w.RPS)
					r.add(errs, float64(w.Errors))
					log.Info("wrk", "variant", r.v.name, "mode", mode, "rps", int(w.RPS), "errors", w.Errors)
					settle()
				}
			}
		}
		if rep.fortio != "" {
			for _, r := range order {
				if err := ctx.Err(); err != nil {
					return rep, err
				}
				l, err := runFortio(ctx, dir, rep.fortio, r.v, cfg.QPS, cfg.Conns, cfg.LatDur)
				if err != nil {
					rep.problem("%s fixed rate: %v", r.v.name, err)
					continue
				}
				r.add(mQPS, l.QPS)
				r.add(mP50, l.P50)
				r.add(mP90, l.P90)
				r.add(mP99, l.P99)
				r.add(mLatErr, float64(l.Errors))
				if len(r.v.procs) > 0 {
					r.add(mCPU, l.CPU)
					r.add(mCPU1k, l.CPUPer1k)
					r.add(mRSS, l.RSSMax)
					r.add(mAnon, l.AnonMax)
				}
				log.Info("fortio", "variant", r.v.name, "qps", int(l.QPS), "p50_ms", l.P50, "p99_ms", l.P99, "cpu_per_1k", l.CPUPer1k, "rss_mb", l.RSSMax)
				settle()
			}
		}
		for _, r := range order {
			if err := ctx.Err(); err != nil {
				return rep, err
			}
			mibs, cpuGiB, err := runUpload(ctx, r.v, cfg.UploadSize)
			if err != nil {
				rep.problem("%s upload: %v", r.v.name, err)
				continue
			}
			r.add(mUpload, mibs)
			if len(r.v.procs) > 0 {
				r.add(mUploadCPU, cpuGiB)
			}
			log.Info("upload", "variant", r.v.name, "mib_per_s", int(mibs))
			settle()
		}
		if cfg.Raw {
			measureRaw(rep, p, cfg.UploadSize)
		}
	}
	if cfg.CA {
		rep.ca = runCA(ctx, &cfg, dir)
	}
	rep.elapsed = time.Since(start)
	rep.loadEnd = loadAvg()
	if cfg.Out != "" {
		if err := writeSection(cfg.Out, rep.markdown()); err != nil {
			return rep, err
		}
		log.Info("wrote", "file", cfg.Out)
	}
	return rep, nil
}

// settle lets sockets and CPU quiet down between measurements.
func settle() { time.Sleep(300 * time.Millisecond) }

func measureRaw(rep *report, p *pki, size int64) {
	if v, err := rawLoopback(size); err == nil {
		rep.raw["loopback"] = append(rep.raw["loopback"], v)
	} else {
		rep.problem("raw loopback: %v", err)
	}
	if v, err := rawTLS(p, size); err == nil {
		rep.raw["tls"] = append(rep.raw["tls"], v)
	} else {
		rep.problem("raw TLS: %v", err)
	}
	d := 3 * time.Second
	if size < 1<<30 {
		d = 500 * time.Millisecond
	}
	cpu0 := selfCPU()
	if v, err := rawHandshakes(p, d); err == nil {
		rep.raw["handshakes"] = append(rep.raw["handshakes"], v)
		// Per CPU-second too: on a shared machine the wall-clock rate says
		// as much about the neighbours as about TLS.
		if cpu := selfCPU() - cpu0; cpu > 0 {
			rep.raw["handshakes_per_cpu"] = append(rep.raw["handshakes_per_cpu"], v*d.Seconds()/cpu)
		}
	} else {
		rep.problem("raw handshakes: %v", err)
	}
	rep.cfg.Log.Info("raw", "loopback_mibs", last(rep.raw["loopback"]), "tls_mibs", last(rep.raw["tls"]), "handshakes_per_s", last(rep.raw["handshakes"]))
}

func last(xs []float64) int {
	if len(xs) == 0 {
		return 0
	}
	return int(xs[len(xs)-1])
}

// startBackend starts the 1 KiB backend as a child process of this binary.
func startBackend(ctx context.Context, dir string) (*proc, string, error) {
	return startChild(ctx, dir, "backend")
}

// startChild starts the named helper (runChild) on a free port.
func startChild(ctx context.Context, dir, child string) (*proc, string, error) {
	port, err := freePort()
	if err != nil {
		return nil, "", err
	}
	addr := fmt.Sprintf("127.0.0.1:%d", port)
	exe, err := os.Executable()
	if err != nil {
		return nil, "", err
	}
	p, err := startProc(dir, child, exe, nil, []string{childEnv + "=" + child, "MESHAUTH_BENCH_LISTEN=" + addr})
	if err != nil {
		return nil, "", err
	}
	if err := waitTCP(ctx, addr, p); err != nil {
		p.stop()
		return nil, "", err
	}
	return p, addr, nil
}

// startVariant starts one named variant, or says why it is skipped.
func startVariant(ctx context.Context, e *env, cfg *config, name string) (*variant, error) {
	switch name {
	case "direct":
		return &variant{name: "direct", label: "direct (no proxy)", addr: e.backend, target: e.backend}, nil
	}
	if isPodVariant(name) {
		return startPodVariant(ctx, e, cfg, name)
	}
	if name == "meshauth" || strings.HasPrefix(name, "meshauth@") || strings.HasPrefix(name, "meshauth+") {
		return startMeshauth(ctx, e, cfg, name)
	}
	for _, p := range peers {
		if p.name != name {
			continue
		}
		if m := p.missing(); m != "" {
			return nil, fmt.Errorf("%w: %s: %s is not installed (apt-get install nginx libnginx-mod-stream haproxy stunnel4)", errSkipped, name, m)
		}
		return p.start(ctx, e)
	}
	return nil, fmt.Errorf("unknown variant %q (want direct, meshauth, nginx, haproxy or stunnel)", name)
}

// findTool finds a tool on PATH or in $GOPATH/bin (where go install puts it).
func findTool(name string) string {
	if p, err := exec.LookPath(name); err == nil {
		return p
	}
	gopath := os.Getenv("GOPATH")
	if gopath == "" {
		if out, err := exec.Command("go", "env", "GOPATH").Output(); err == nil {
			gopath = string(trimNL(out))
		}
	}
	if gopath != "" {
		p := filepath.Join(gopath, "bin", name)
		if st, err := os.Stat(p); err == nil && st.Mode()&0o111 != 0 {
			return p
		}
	}
	return ""
}

func trimNL(b []byte) []byte {
	for len(b) > 0 && (b[len(b)-1] == '\n' || b[len(b)-1] == '\r') {
		b = b[:len(b)-1]
	}
	return b
}

// sidecarTags are the build tags of the sidecar image's meshd
// (install/docker/proxy.Dockerfile): no client-go, no control plane, no
// gRPC tracing (cmd/meshd/main.go).
const sidecarTags = "sidecaronly,grpcnotrace"

// meshdBinary returns cfg.Meshd, or builds ./cmd/meshd of this module into
// dir once, exactly as install/docker/proxy.Dockerfile builds the sidecar
// image: static (CGO_ENABLED=0), -tags sidecaronly,grpcnotrace,
// stripped, with ./cmd/meshd-sidecar (-tags grpcnotrace) beside it, which
// `meshd sidecar` then execs. That build has no `meshd control`: see
// controlBinary.
func (c *config) meshdBinary(dir string) (string, error) {
	if c.Meshd != "" {
		if _, err := os.Stat(c.Meshd); err != nil {
			return "", fmt.Errorf("-meshd %s: %w", c.Meshd, err)
		}
		return c.Meshd, nil
	}
	bin, err := buildMeshd(dir, "meshd", sidecarTags, "./cmd/meshd")
	if err != nil {
		return "", err
	}
	if _, err := buildMeshd(dir, "meshd-sidecar", "grpcnotrace", "./cmd/meshd-sidecar"); err != nil {
		return "", err
	}
	c.Meshd = bin
	return bin, nil
}

// controlBinary returns a meshd that has `meshd control` (the CA the
// sidecars get their certificates from, and the CA comparison): -meshd if
// it has one, else ./cmd/meshd's plain build (no kube-control) into dir once.
func (c *config) controlBinary(dir string) (string, error) {
	if c.control != "" {
		return c.control, nil
	}
	if c.Meshd != "" {
		if err := exec.Command(c.Meshd, "control", "--help").Run(); err == nil {
			c.control = c.Meshd
			return c.control, nil
		}
	}
	bin, err := buildMeshd(dir, "meshd-control", "", "./cmd/meshd")
	if err != nil {
		return "", err
	}
	c.control = bin
	return bin, nil
}

func buildMeshd(dir, name, tags, pkg string) (string, error) {
	out, err := exec.Command("go", "env", "GOMOD").Output()
	if err != nil || len(trimNL(out)) == 0 || string(trimNL(out)) == os.DevNull {
		return "", fmt.Errorf("not inside the meshauth module and no -meshd given")
	}
	root := filepath.Dir(string(trimNL(out)))
	bin := filepath.Join(dir, name)
	build := exec.Command("go", "build", "-tags", tags, "-trimpath", "-ldflags=-s", "-o", bin, pkg)
	build.Dir = root
	build.Env = append(os.Environ(), "CGO_ENABLED=0")
	if b, err := build.CombinedOutput(); err != nil {
		return "", fmt.Errorf("go build -tags %s %s: %w\n%s", tags, pkg, err, b)
	}
	return bin, nil
}

// selfCPU is this process's user+system CPU seconds so far.
func selfCPU() float64 {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return float64(ru.Utime.Nano()+ru.Stime.Nano()) / 1e9
}
