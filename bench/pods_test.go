package main

import (
	"math"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/meshauth/meshauth/internal/netns"
)

// TestBenchPodsSmoke runs the pod variants for a few seconds: direct,
// explicit and transparent (iptables capture) in network-namespace pods.
// It checks the harness measured each of them, wrote the transparent
// overhead line, and removed every namespace it created. It asserts no
// speed.
func TestBenchPodsSmoke(t *testing.T) {
	if testing.Short() {
		t.Skip("smoke run of the pod variants takes ~30 s; skipped with -short")
	}
	if err := netns.Available(); err != nil {
		t.Skipf("pod variants not run: %v", err)
	}
	if findTool("wrk") == "" || findTool("fortio") == "" {
		t.Skip("pod variants need wrk and fortio (apt-get install wrk; go install fortio.org/fortio@v1.68.2)")
	}
	variants := []string{"pod-direct", "pod-explicit", "pod-transparent"}
	rep := smokeRun(t, config{Variants: variants, Command: "go test ./bench -run TestBenchPodsSmoke"})
	for _, s := range rep.skipped {
		t.Errorf("skipped: %s", s)
	}
	for _, name := range variants {
		r := rep.find(name)
		if r == nil {
			t.Errorf("%s was not measured", name)
			continue
		}
		want := []string{mKA, mClose, mP50, mP99, mUpload}
		if name != "pod-direct" {
			want = append(want, mCPU1k, mRSS)
		}
		for _, m := range want {
			if x := r.med(m); math.IsNaN(x) || x <= 0 {
				t.Errorf("%s: %s = %v, want a measured positive value", name, m, x)
			}
		}
	}
	doc := rep.markdown()
	if !strings.Contains(doc, "Transparent over explicit (same run, medians): keep-alive ") {
		t.Errorf("no transparent overhead line:\n%s", doc)
	}
	if len(rep.podNetns) != 5 {
		t.Errorf("the run reports network namespaces %v, want the node and 4 pods", rep.podNetns)
	}
	for _, n := range rep.podNetns {
		if _, err := os.Stat(filepath.Join("/run/netns", n)); err == nil {
			t.Errorf("network namespace %s still exists after the run", n)
		}
		if _, err := os.Stat(filepath.Join("/etc/netns", n)); err == nil {
			t.Errorf("/etc/netns/%s still exists after the run", n)
		}
	}
}
