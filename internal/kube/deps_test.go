package kube

import (
	"os/exec"
	"strings"
	"testing"
)

// TestSidecarDepsHaveNoClientGo keeps client-go (and every other k8s.io
// module) out of the packages the sidecar is built from, in the manner of
// tailscale's tstest/deptest: the sidecar runs in every pod, so its size and
// attack surface matter, and it has no business talking to the API server.
// Only this package, the control plane and meshctl link client-go.
func TestSidecarDepsHaveNoClientGo(t *testing.T) {
	if testing.Short() {
		t.Skip("go list is slow in -short mode")
	}
	goBin, err := exec.LookPath("go")
	if err != nil {
		t.Skip("go tool not in PATH")
	}
	// The check itself must be able to see client-go: this package links it.
	self, err := exec.Command(goBin, "list", "-deps", "github.com/meshauth/meshauth/internal/kube").CombinedOutput()
	if err != nil || !strings.Contains(string(self), "k8s.io/apimachinery/pkg/runtime\n") {
		t.Fatalf("go list -deps internal/kube does not show k8s.io packages; the check below would prove nothing: %v", err)
	}
	// meshd's plain build (local mode, the sidecar image) has no
	// kube-control: that is opt-in with -tags kube.
	t.Run("meshd", func(t *testing.T) {
		out, err := exec.Command(goBin, "list", "-deps", "github.com/meshauth/meshauth/cmd/meshd").CombinedOutput()
		if err != nil {
			t.Fatalf("go list: %v\n%s", err, out)
		}
		for _, dep := range strings.Fields(string(out)) {
			if strings.HasPrefix(dep, "k8s.io/") || strings.HasPrefix(dep, "sigs.k8s.io/") {
				t.Errorf("meshd (plain build: local mode and the sidecar image) depends on %s", dep)
			}
		}
	})
	for _, pkg := range []string{
		"github.com/meshauth/meshauth/internal/proxy",
		"github.com/meshauth/meshauth/internal/agent",
		"github.com/meshauth/meshauth/internal/identity",
		"github.com/meshauth/meshauth/internal/policy",
	} {
		t.Run(pkg[strings.LastIndex(pkg, "/")+1:], func(t *testing.T) {
			out, err := exec.Command(goBin, "list", "-deps", pkg).CombinedOutput()
			if err != nil {
				if strings.Contains(string(out), "cannot find package") || strings.Contains(string(out), "is not in std") ||
					strings.Contains(string(out), "no required module") || strings.Contains(string(out), "matched no packages") {
					t.Skipf("%s does not exist yet: %s", pkg, strings.TrimSpace(string(out)))
				}
				t.Fatalf("go list -deps %s: %v\n%s", pkg, err, out)
			}
			for _, dep := range strings.Fields(string(out)) {
				if strings.HasPrefix(dep, "k8s.io/") || strings.HasPrefix(dep, "sigs.k8s.io/") ||
					dep == "github.com/meshauth/meshauth/internal/kube" {
					t.Errorf("%s depends on %s: the sidecar must not link Kubernetes client code", pkg, dep)
				}
			}
		})
	}
}
