package e2e

import (
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
)

// TestDemo runs `meshctl demo` as a user does (no root needed) and checks
// that it exits 0, that every observation it printed matched the seed, and
// that it left no process or directory behind.
func TestDemo(t *testing.T) {
	needBinaries(t)
	needPieces(t)
	cmd := exec.Command(filepath.Join(bin, "meshctl"), "demo")
	out, err := cmd.CombinedOutput()
	t.Logf("meshctl demo:\n%s", out)
	if err != nil {
		t.Fatalf("meshctl demo: %v", err)
	}
	s := string(out)
	if strings.Contains(s, "  FAIL  ") {
		t.Errorf("demo printed a FAIL line")
	}
	// The seed's five calls and its verification steps each print a PASS.
	if n := strings.Count(s, "  PASS  "); n < 12 {
		t.Errorf("demo printed %d PASS lines, want at least 12 (one per seed check)", n)
	}
	m := regexp.MustCompile(`stopped \d+ processes and removed (\S+)`).FindStringSubmatch(s)
	if m == nil {
		t.Fatalf("demo did not report its cleanup")
	}
	if _, err := exec.Command("test", "-e", m[1]).CombinedOutput(); err == nil {
		t.Errorf("demo directory %s still exists", m[1])
	}
	if out, _ := exec.Command("pgrep", "-f", m[1]).Output(); len(out) > 0 {
		t.Errorf("processes still running from %s: %s", m[1], out)
	}
}
