package main

import (
	"os/exec"
	"strings"
	"testing"
)

// TestSidecarStaysSmall keeps client-go and the Kubernetes controllers out of
// meshd, which every workload runs as its sidecar (DESIGN: the sidecar binary
// stays small). Kubernetes support lives in its own binary.
func TestSidecarStaysSmall(t *testing.T) {
	out, err := exec.Command("go", "list", "-deps", ".", "../../internal/proxy", "../../internal/agent", "../../internal/capture").CombinedOutput()
	if err != nil {
		t.Fatalf("go list: %v\n%s", err, out)
	}
	for _, dep := range strings.Fields(string(out)) {
		for _, banned := range []string{"k8s.io/client-go", "k8s.io/apimachinery", "github.com/meshauth/meshauth/internal/kube"} {
			if dep == banned || strings.HasPrefix(dep, banned+"/") {
				t.Errorf("meshd depends on %s", dep)
			}
		}
	}
}
