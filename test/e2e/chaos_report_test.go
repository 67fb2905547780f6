package e2e

import (
	"fmt"
	"os"
	"runtime"
	"sort"
	"strings"
	"time"
)

// chaosTable is the report: one row per scenario.
func chaosTable(form chaosForm, rs []scenarioResult) string {
	var b strings.Builder
	fmt.Fprintf(&b, "Form: %s; load %d req/s over 3 client -> server pairs (pair1..pair3), each request `GET /status/200` through both sidecars (iptables capture, STRICT mTLS); every certificate --cert-ttl %s in the fault scenarios; run %s on %d CPUs, shared with other builds.\n\n",
		form.name, form.rate, form.certTTL, time.Now().UTC().Format("2006-01-02 15:04 MST"), runtime.NumCPU())
	b.WriteString("| scenario | requests sent | failed | failed where the fault did not reach | recovery (s) | what happened |\n")
	b.WriteString("|---|---:|---:|---:|---:|---|\n")
	for _, r := range rs {
		others := 0
		for pair, n := range r.W.ByPair {
			if _, ok := r.Expected[pair]; !ok {
				others += n
			}
		}
		what := r.Notes
		if r.W.Failed > 0 {
			what += ". Failed: " + r.W.reasons()
		}
		var whys []string
		for pair, why := range r.Expected {
			whys = append(whys, pair+": "+why)
		}
		sort.Strings(whys)
		if len(whys) > 0 {
			what += ". Expected failures on " + strings.Join(whys, "; ")
		}
		fmt.Fprintf(&b, "| %s | %d | %d | %d | %s | %s |\n", r.Name, r.W.Sent, r.W.Failed, others, r.Recovery, strings.ReplaceAll(what, "|", "/"))
	}
	return b.String()
}

// The report goes between these markers in the file MESHAUTH_CHAOS_REPORT
// names (docs/reliability.md).
const (
	chaosBegin = "<!-- chaos report: begin (written by TestChaos, MESHAUTH_CHAOS_REPORT) -->"
	chaosEnd   = "<!-- chaos report: end -->"
)

// writeChaosReport replaces the text between the markers in path.
func writeChaosReport(path, table string) error {
	b, err := os.ReadFile(path)
	if err != nil {
		return err
	}
	s := string(b)
	i, j := strings.Index(s, chaosBegin), strings.Index(s, chaosEnd)
	if i < 0 || j < i {
		return fmt.Errorf("%s has no %q ... %q markers", path, chaosBegin, chaosEnd)
	}
	s = s[:i+len(chaosBegin)] + "\n" + table + s[j:]
	return os.WriteFile(path, []byte(s), 0o644)
}
