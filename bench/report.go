package main

import (
	"fmt"
	"math"
	"os"
	"os/exec"
	"regexp"
	"runtime"
	"sort"
	"strings"
	"time"

	"github.com/meshauth/meshauth/internal/atomicfile"
)

// Targets from issue 7, as ratios and limits from the same run.
const (
	targetKA      = 0.50 // keep-alive req/s, x direct
	targetClose   = 0.85 // one request per connection, x direct
	targetAddP50  = 0.6  // ms added at 1,000 req/s
	targetCPU     = 0.06 // vCPU of both sidecars per 1k req/s
	targetBulk    = 650  // MiB/s
	targetRSS     = 15   // MB per sidecar
	markerBegin   = "<!-- bench:sidecar:begin (written by go run ./bench; edit the harness, not this block) -->"
	markerEnd     = "<!-- bench:sidecar:end -->"
	sectionHeader = "## Sidecar side by side"
)

func median(xs []float64) float64 {
	if len(xs) == 0 {
		return math.NaN()
	}
	s := append([]float64(nil), xs...)
	sort.Float64s(s)
	if len(s)%2 == 1 {
		return s[len(s)/2]
	}
	return (s[len(s)/2-1] + s[len(s)/2]) / 2
}

func sum(xs []float64) float64 {
	var t float64
	for _, x := range xs {
		t += x
	}
	return t
}

func (r *result) med(metric string) float64 { return median(r.m[metric]) }

func (rep *report) find(name string) *result {
	for _, r := range rep.results {
		if r.v.name == name {
			return r
		}
	}
	return nil
}

// fmtNum formats x with the given decimals, or "n/a" when unmeasured.
func fmtNum(x float64, dec int) string {
	if math.IsNaN(x) || math.IsInf(x, 0) {
		return "n/a"
	}
	if dec == 0 {
		return commas(int64(math.Round(x)))
	}
	return fmt.Sprintf("%.*f", dec, x)
}

func commas(n int64) string {
	s := fmt.Sprint(n)
	neg := strings.HasPrefix(s, "-")
	s = strings.TrimPrefix(s, "-")
	var b strings.Builder
	for i, c := range s {
		if i > 0 && (len(s)-i)%3 == 0 {
			b.WriteByte(',')
		}
		b.WriteRune(c)
	}
	if neg {
		return "-" + b.String()
	}
	return b.String()
}

func ratio(a, b float64) string {
	if math.IsNaN(a) || math.IsNaN(b) || b == 0 {
		return "n/a"
	}
	return fmt.Sprintf("%.2fx", a/b)
}

// best returns the best peer (not direct, not meshauth) for metric:
// the highest value when higher is better, else the lowest.
func (rep *report) best(metric string, higher bool) (string, float64) {
	name, val := "", math.NaN()
	for _, r := range rep.results {
		if !r.v.peer {
			continue
		}
		x := r.med(metric)
		if math.IsNaN(x) {
			continue
		}
		if math.IsNaN(val) || (higher && x > val) || (!higher && x < val) {
			name, val = r.v.name, x
		}
	}
	return name, val
}

// base is the direct variant r is compared with: pod-direct for the pod
// variants (same veth/bridge path), direct for the rest.
func (rep *report) base(r *result) *result {
	if isPodVariant(r.v.name) {
		return rep.find("pod-direct")
	}
	return rep.find("direct")
}

// addedP50 is a variant's p50 at the fixed rate minus its direct's.
func (rep *report) addedP50(r *result) float64 {
	d := rep.base(r)
	if d == nil {
		return math.NaN()
	}
	return r.med(mP50) - d.med(mP50)
}

// markdown renders the section, between the markers writeSection keeps.
func (rep *report) markdown() string {
	var b strings.Builder
	cfg := rep.cfg
	w := func(format string, args ...any) { fmt.Fprintf(&b, format, args...) }
	w("%s\n%s\n\n", markerBegin, sectionHeader)
	w("Measured %s UTC in %s with\n\n    %s\n\n", rep.date.Format("2006-01-02 15:04"), rep.elapsed.Round(time.Second), cfg.Command)
	w("Machine: %s. Load average (1, 5, 15 min) before: %s; after: %s.\n\n", strings.Join(rep.machine, "; "), rep.loadStart, rep.loadEnd)
	w("Setup: every variant carries the same client -> backend HTTP/1.1 traffic on loopback; the backend (a Go process) answers 1 KiB. ")
	w("Each pair is a client-side proxy and a server-side proxy with TLS 1.3 mutual authentication between them (ECDSA P-256 certificates with SPIFFE URI SANs), ")
	w("and each server side is checked to refuse a client without a certificate before anything is measured. ")
	w("Peers run %d worker process/thread per proxy. Figures are medians of %d interleaved runs (the order of variants rotates every run). ", cfg.Workers, cfg.Runs)
	w("Max req/s: `wrk -t1 -c%d -d%s` (one request per connection: the same with `Connection: close`, so every request is a new client connection). ", cfg.Conns, cfg.Duration)
	w("Latency: `fortio load -stdclient -qps %d -c %d -t %s` (same client for every variant); the proxies' CPU (utime+stime of both processes and their children from /proc/<pid>/stat) and peak RSS (VmRSS of the larger of the two proxies, summed over its processes; in brackets its private part, RssAnon, without the mapped binary and shared libraries) are taken during that run. ", cfg.QPS, cfg.Conns, cfg.LatDur)
	w("Upload: one HTTP POST of %s through the variant, until the backend has read it all. ", sizeName(cfg.UploadSize))
	w("meshauth: two `meshd sidecar` processes (meshd built as the sidecar image builds it: `CGO_ENABLED=0 go build -tags %s -trimpath -ldflags=-s`) whose agents got their certificates from `meshd control` with join tokens (the control plane keeps running, idle, and is not counted); the client uses its sidecar as an explicit HTTP proxy (absolute-URI requests: wrk through a Lua script that sets the absolute URI, fortio and the upload through HTTP_PROXY), the client sidecar pools mTLS connections to the server sidecar (STRICT), which forwards to the backend; access logs off, as the peers log nothing per request by default; Go's default GOMAXPROCS (%d here), where each peer proxy has %d worker", sidecarTags, runtime.NumCPU(), cfg.Workers)
	if len(cfg.MeshdEnv) > 0 {
		w("; sidecar environment `%s`", strings.Join(cfg.MeshdEnv, " "))
	}
	w(".\n\n")

	w("| variant | keep-alive req/s | x direct | 1 req/conn req/s | x direct | p50 / p90 / p99 ms at %d req/s | added p50 ms | CPU of both proxies, vCPU per 1k req/s | RSS per proxy MB (private) | %s upload MiB/s (CPU-s of both proxies per GiB) |\n", cfg.QPS, sizeName(cfg.UploadSize))
	w("|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|\n")
	dm := func(metric string) float64 {
		if d := rep.find("direct"); d != nil {
			return d.med(metric)
		}
		return math.NaN()
	}
	var errNotes []string
	for _, r := range rep.results {
		bm := func(metric string) float64 {
			if d := rep.base(r); d != nil {
				return d.med(metric)
			}
			return math.NaN()
		}
		cpu, rss := "-", "-"
		upload := fmtNum(r.med(mUpload), 0)
		if len(r.v.procs) > 0 {
			cpu, rss = fmtNum(r.med(mCPU1k), 3), fmtNum(r.med(mRSS), 1)+" ("+fmtNum(r.med(mAnon), 1)+")"
			upload += " (" + fmtNum(r.med(mUploadCPU), 2) + ")"
		}
		added := "-"
		if rep.base(r) != r {
			added = signed(rep.addedP50(r))
		}
		w("| %s | %s | %s | %s | %s | %s / %s / %s | %s | %s | %s | %s |\n", r.v.label,
			fmtNum(r.med(mKA), 0), ratio(r.med(mKA), bm(mKA)),
			fmtNum(r.med(mClose), 0), ratio(r.med(mClose), bm(mClose)),
			fmtNum(r.med(mP50), 3), fmtNum(r.med(mP90), 3), fmtNum(r.med(mP99), 3), added,
			cpu, rss, upload)
		for _, k := range []struct{ metric, what string }{{mKAErr, "keep-alive"}, {mCloseErr, "one request per connection"}, {mLatErr, "fixed rate"}} {
			if n := sum(r.m[k.metric]); n > 0 {
				errNotes = append(errNotes, fmt.Sprintf("%s: %s errors/non-200 over all runs: %s", r.v.name, k.what, commas(int64(n))))
			}
		}
	}
	w("\n")
	for _, n := range errNotes {
		w("- %s\n", n)
	}
	if len(errNotes) > 0 {
		w("\n")
	}

	if m := rep.find("meshauth"); m != nil {
		rep.targets(&b, m, dm)
	}
	rep.transparentOverhead(&b)

	if len(rep.raw) > 0 {
		w("Raw limits (same run, medians): loopback TCP %s MiB/s; Go TLS 1.3 mTLS bulk %s MiB/s (one connection, in process); full TLS 1.3 mTLS handshakes %s/s, %s per CPU-second (client and server in one process, all cores, no resumption, Go's default key exchange).\n\n",
			fmtNum(median(rep.raw["loopback"]), 0), fmtNum(median(rep.raw["tls"]), 0), fmtNum(median(rep.raw["handshakes"]), 0), fmtNum(median(rep.raw["handshakes_per_cpu"]), 0))
	}
	if rep.ca != nil {
		rep.ca.markdown(&b)
	}
	if len(rep.skipped) > 0 {
		w("Not measured in this run:\n\n")
		for _, s := range rep.skipped {
			w("- %s\n", s)
		}
		w("\n")
	}
	if len(rep.problems) > 0 {
		w("Problems in this run:\n\n")
		for _, s := range rep.problems {
			w("- %s\n", strings.ReplaceAll(strings.TrimSpace(s), "\n", " "))
		}
		w("\n")
	}
	w("%s\n", markerEnd)
	return b.String()
}

// targets writes the targets for meshauth against this run.
func (rep *report) targets(b *strings.Builder, m *result, dm func(string) float64) {
	w := func(format string, args ...any) { fmt.Fprintf(b, format, args...) }
	w("Targets for meshauth (issue 7), from this run:\n\n")
	w("| target | meshauth | met | best peer | meshauth / best peer |\n|---|--:|:-:|--:|--:|\n")
	met := func(ok bool, x float64) string {
		if math.IsNaN(x) {
			return "n/a"
		}
		if ok {
			return "yes"
		}
		return "**no**"
	}
	row := func(name string, val, bestVal float64, valS, bestS string, ok bool, bestName string) {
		if math.IsNaN(val) {
			valS = "n/a"
		}
		if math.IsNaN(bestVal) {
			bestS, bestName = "n/a", "no peer measured"
		}
		w("| %s | %s | %s | %s (%s) | %s |\n", name, valS, met(ok, val), bestS, bestName, ratio(val, bestVal))
	}
	// Throughput ratios.
	for _, t := range []struct {
		name, metric string
		target       float64
	}{{"keep-alive req/s >= 0.50x direct", mKA, targetKA}, {"one request per connection >= 0.85x direct", mClose, targetClose}} {
		x := m.med(t.metric) / dm(t.metric)
		bn, bv := rep.best(t.metric, true)
		row(t.name, m.med(t.metric), bv, fmtNum(x, 2)+"x", fmtNum(bv/dm(t.metric), 2)+"x", x >= t.target, bn)
	}
	// Added p50: lower is better.
	add := rep.addedP50(m)
	bn, bv := "", math.NaN()
	for _, r := range rep.results {
		if !r.v.peer {
			continue
		}
		if a := rep.addedP50(r); !math.IsNaN(a) && (math.IsNaN(bv) || a < bv) {
			bn, bv = r.v.name, a
		}
	}
	row(fmt.Sprintf("added p50 at %s req/s <= 0.6 ms", commas(int64(rep.cfg.QPS))), add, bv, signed(add)+" ms", signed(bv)+" ms", add <= targetAddP50, bn)
	bn, bv = rep.best(mCPU1k, false)
	row("CPU of both sidecars <= 0.06 vCPU per 1k req/s", m.med(mCPU1k), bv, fmtNum(m.med(mCPU1k), 3), fmtNum(bv, 3), m.med(mCPU1k) <= targetCPU, bn)
	bn, bv = rep.best(mUpload, true)
	row("bulk >= 650 MiB/s", m.med(mUpload), bv, fmtNum(m.med(mUpload), 0)+" MiB/s", fmtNum(bv, 0)+" MiB/s", m.med(mUpload) >= targetBulk, bn)
	bn, bv = rep.best(mRSS, false)
	row(fmt.Sprintf("sidecar RSS <= 15 MB at %s req/s", commas(int64(rep.cfg.QPS))), m.med(mRSS), bv, fmtNum(m.med(mRSS), 1)+" MB", fmtNum(bv, 1)+" MB", m.med(mRSS) <= targetRSS, bn)
	w("\n")
}

func signed(x float64) string {
	if math.IsNaN(x) {
		return "n/a"
	}
	return fmt.Sprintf("%+.3f", x)
}

func sizeName(n int64) string {
	switch {
	case n >= 1<<30 && n%(1<<30) == 0:
		return fmt.Sprintf("%d GiB", n>>30)
	case n >= 1<<20 && n%(1<<20) == 0:
		return fmt.Sprintf("%d MiB", n>>20)
	}
	return fmt.Sprintf("%d B", n)
}

// machineInfo describes the machine and the tools' versions.
func machineInfo(fortio string) []string {
	var out []string
	cpu := "unknown CPU"
	if b, err := os.ReadFile("/proc/cpuinfo"); err == nil {
		for _, l := range strings.Split(string(b), "\n") {
			if strings.HasPrefix(l, "model name") {
				cpu = strings.TrimSpace(strings.SplitN(l, ":", 2)[1])
				break
			}
		}
	}
	out = append(out, fmt.Sprintf("%s, %d vCPU", cpu, runtime.NumCPU()))
	if b, err := os.ReadFile("/proc/meminfo"); err == nil {
		var kb int64
		fmt.Sscanf(strings.SplitN(string(b), "\n", 2)[0], "MemTotal: %d kB", &kb)
		out = append(out, fmt.Sprintf("%d GiB RAM", (kb+(1<<19))>>20))
	}
	kern, _ := os.ReadFile("/proc/sys/kernel/osrelease")
	osName := "Linux " + strings.TrimSpace(string(kern))
	if b, err := readFile("/etc/debian_version"); err == nil {
		osName += ", Debian " + strings.TrimSpace(b)
	}
	out = append(out, osName, runtime.Version())
	// ver runs a tool's version command and keeps what re captures.
	ver := func(name, re string, args ...string) {
		bin := findTool(name)
		if bin == "" {
			return
		}
		o, _ := exec.Command(bin, args...).CombinedOutput()
		if m := regexp.MustCompile(re).FindStringSubmatch(string(o)); m != nil {
			out = append(out, strings.Join(m[1:], " "))
		}
	}
	ver("nginx", `(nginx)/(\S+)`, "-v")
	ver("haproxy", `(HAProxy) version (\S+)`, "-v")
	ver("stunnel4", `(stunnel) (\S+) on`, "-version")
	ver("openssl", `(OpenSSL) (\S+)`, "version")
	ver("wrk", `(wrk) (\S+)`, "-v")
	if fortio != "" {
		o, _ := exec.Command(fortio, "version").Output()
		out = append(out, "fortio "+strings.TrimSpace(string(o)))
	}
	return out
}

// loadAvg is the first three fields of /proc/loadavg: other work on the
// machine shows in every figure, so the report says how busy it was.
func loadAvg() string {
	b, err := readFile("/proc/loadavg")
	if f := strings.Fields(b); err == nil && len(f) >= 3 {
		return strings.Join(f[:3], " ")
	}
	return "unknown"
}

func readFile(p string) (string, error) {
	b, err := os.ReadFile(p)
	return string(b), err
}

// writeSection replaces the block between the markers in path with section,
// or appends it (creating the file if needed). Everything else in the file
// — other helpers' sections, hand-written notes — is kept as it is.
func writeSection(path, section string) error {
	old, err := os.ReadFile(path)
	if err != nil && !os.IsNotExist(err) {
		return err
	}
	s := string(old)
	var out string
	i := strings.Index(s, markerBegin)
	j := strings.Index(s, markerEnd)
	switch {
	case i >= 0 && j > i:
		out = s[:i] + strings.TrimRight(section, "\n") + s[j+len(markerEnd):]
	case s == "":
		out = "# Benchmarks\n\n" + section
	default:
		out = strings.TrimRight(s, "\n") + "\n\n" + section
	}
	if !strings.HasSuffix(out, "\n") {
		out += "\n"
	}
	return atomicfile.Write(path, []byte(out), 0o644)
}
