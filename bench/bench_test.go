package main

import (
	"context"
	"log/slog"
	"math"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// TestMain lets the test binary serve as the backend child process, as the
// bench binary does (startBackend re-executes os.Executable()).
func TestMain(m *testing.M) {
	if runChild() {
		return
	}
	os.Exit(m.Run())
}

// TestBenchSmoke runs the whole harness for a few seconds with the peers
// that are installed and checks that it measured every variant it started
// and wrote its section without touching the rest of BENCHMARKS.md. It
// asserts no speed: the full benchmark is `make bench`, never CI.
func TestBenchSmoke(t *testing.T) {
	if testing.Short() {
		t.Skip("smoke run of the benchmark harness takes ~20 s; skipped with -short")
	}
	out := filepath.Join(t.TempDir(), "BENCHMARKS.md")
	other := "# Benchmarks\n\n## CA issuance\n\nwritten by another helper; must survive\n"
	if err := os.WriteFile(out, []byte(other), 0o644); err != nil {
		t.Fatal(err)
	}
	rep := smokeRun(t, config{Out: out, CA: true, Raw: true, Command: "go test ./bench -run TestBenchSmoke"})
	for _, s := range rep.skipped {
		t.Logf("not measured (install it to include it): %s", s)
	}

	if rep.find("direct") == nil {
		t.Fatal("direct variant missing from the results")
	}
	for _, p := range peers {
		if p.missing() == "" && rep.find(p.name) == nil {
			t.Errorf("%s is installed but was not measured", p.name)
		}
	}
	haveWrk, haveFortio := findTool("wrk") != "", findTool("fortio") != ""
	for _, r := range rep.results {
		want := []string{mUpload}
		if haveWrk {
			want = append(want, mKA, mClose)
		}
		if haveFortio {
			want = append(want, mP50, mP99)
			if len(r.v.procs) > 0 {
				want = append(want, mCPU1k, mRSS)
			}
		}
		for _, m := range want {
			if x := r.med(m); math.IsNaN(x) || x <= 0 {
				t.Errorf("%s: %s = %v, want a measured positive value", r.v.name, m, x)
			}
		}
	}

	if rep.ca == nil {
		t.Fatal("no CA comparison in the report")
	}
	wantCA := []string{"raw", "meshauth-token", "meshauth-mtls"}
	if findTool("step-ca") != "" && findTool("step") != "" {
		wantCA = append(wantCA, "step-ca")
	} else {
		t.Log("step-ca not measured: not installed (make bench-deps)")
	}
	for _, k := range wantCA {
		if x := median(rep.ca.rates[k]); math.IsNaN(x) || x <= 0 || rep.ca.errs[k] > 0 {
			t.Errorf("CA %s: %v certs/s with %d failed calls, want a measured positive rate and no failures; notes: %v", k, x, rep.ca.errs[k], rep.ca.notes)
		}
	}

	b, err := os.ReadFile(out)
	if err != nil {
		t.Fatal(err)
	}
	doc := string(b)
	if !strings.Contains(doc, "written by another helper; must survive") {
		t.Errorf("the other section was lost:\n%s", doc)
	}
	if strings.Count(doc, sectionHeader) != 1 {
		t.Errorf("want exactly one %q heading:\n%s", sectionHeader, doc)
	}
	for _, r := range rep.results {
		if !strings.Contains(doc, "| "+r.v.label+" | ") {
			t.Errorf("no table row for %s:\n%s", r.v.label, doc)
		}
	}
	// A second write replaces the section instead of appending another.
	if err := writeSection(out, rep.markdown()); err != nil {
		t.Fatal(err)
	}
	b, _ = os.ReadFile(out)
	if n := strings.Count(string(b), sectionHeader); n != 1 {
		t.Errorf("after a second write: %d headings, want 1", n)
	}
}

// smokeRun runs the harness with cfg at the smoke settings (applyQuick),
// logging to t, and fails t on an error or any problem the run reports.
func smokeRun(t *testing.T, cfg config) *report {
	t.Helper()
	cfg.Log = slog.New(slog.NewTextHandler(testWriter{t}, nil))
	applyQuick(&cfg)
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	defer cancel()
	rep, err := run(ctx, cfg)
	if err != nil {
		t.Fatalf("harness: %v", err)
	}
	for _, p := range rep.problems {
		t.Errorf("harness problem: %s", p)
	}
	return rep
}

type testWriter struct{ t *testing.T }

func (w testWriter) Write(p []byte) (int, error) {
	w.t.Log(strings.TrimRight(string(p), "\n"))
	return len(p), nil
}
