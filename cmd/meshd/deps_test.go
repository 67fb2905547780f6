package main

import (
	"os/exec"
	"strings"
	"testing"
)

// TestSidecarStaysSmall keeps client-go and the Kubernetes controllers out of
// the sidecar (DESIGN: the sidecar binary stays small): the sidecar packages
// never depend on them, and meshd built for the sidecar image (-tags nokube,
// which drops `meshd kube-control`) has none of them.
func TestSidecarStaysSmall(t *testing.T) {
	out, err := exec.Command("go", "list", "-tags", "nokube", "-deps", ".", "../../internal/proxy", "../../internal/agent", "../../internal/capture").CombinedOutput()
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
