package main

import (
	"os/exec"
	"slices"
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

// TestSidecarOnlyBuild: the sidecar image's meshd (-tags
// nokube,sidecaronly,grpcnotrace, install/docker/proxy.Dockerfile) leaves out
// the control plane, its CA store and gRPC's tracing, which is most of what
// makes it smaller than -tags nokube.
func TestSidecarOnlyBuild(t *testing.T) {
	out, err := exec.Command("go", "list", "-tags", "nokube,sidecaronly,grpcnotrace", "-deps", ".").CombinedOutput()
	if err != nil {
		t.Fatalf("go list: %v\n%s", err, out)
	}
	deps := strings.Fields(string(out))
	for _, dep := range deps {
		for _, banned := range []string{"github.com/meshauth/meshauth/internal/control", "github.com/meshauth/meshauth/internal/ca", "go.etcd.io/bbolt", "golang.org/x/net/trace", "html/template", "k8s.io/client-go"} {
			if dep == banned || strings.HasPrefix(dep, banned+"/") {
				t.Errorf("meshd -tags nokube,sidecaronly,grpcnotrace depends on %s", dep)
			}
		}
	}
	for _, want := range []string{"github.com/meshauth/meshauth/internal/proxy", "github.com/meshauth/meshauth/internal/agent", "github.com/meshauth/meshauth/internal/capture"} {
		if !slices.Contains(deps, want) {
			t.Errorf("meshd -tags nokube,sidecaronly,grpcnotrace lacks %s", want)
		}
	}
}
