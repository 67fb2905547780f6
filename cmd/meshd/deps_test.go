package main

import (
	"os/exec"
	"slices"
	"strings"
	"testing"
)

// goListDeps returns `go list -deps` of pkgs in this directory with tags.
func goListDeps(t *testing.T, tags string, pkgs ...string) []string {
	t.Helper()
	args := []string{"list", "-deps"}
	if tags != "" {
		args = append(args, "-tags", tags)
	}
	out, err := exec.Command("go", append(args, pkgs...)...).CombinedOutput()
	if err != nil {
		t.Fatalf("go %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	return strings.Fields(string(out))
}

// isKube reports a package that makes a binary a Kubernetes client.
func isKube(dep string) bool {
	const kube = "github.com/meshauth/meshauth/internal/kube"
	return strings.HasPrefix(dep, "k8s.io/") || strings.HasPrefix(dep, "sigs.k8s.io/") || dep == kube || strings.HasPrefix(dep, kube+"/")
}

// TestSidecarStaysSmall keeps client-go and the Kubernetes controllers out of
// the binary local mode runs (DESIGN: the sidecar binary stays small):
// `meshctl up`, `meshctl demo` and every local sidecar run meshd as plain
// `go build ./cmd/meshd` makes it (internal/localmesh.Binary finds it beside
// meshctl), so its plain `go list -deps` has no k8s.io package, and neither
// do the sidecar's own packages. -tags kube, which adds `meshd
// kube-control`, does link client-go: that checks the check can see it.
func TestSidecarStaysSmall(t *testing.T) {
	for _, dep := range goListDeps(t, "", ".", "../../internal/sidecar", "../../internal/proxy", "../../internal/agent", "../../internal/capture") {
		if isKube(dep) {
			t.Errorf("meshd (plain build, what local mode runs) depends on %s", dep)
		}
	}
	if !slices.Contains(goListDeps(t, "kube", "."), "k8s.io/client-go/kubernetes") {
		t.Fatal("meshd -tags kube does not list k8s.io/client-go/kubernetes: kube-control is missing, or this test could not see a Kubernetes dependency")
	}
}

// TestKubeBuildVets: kube.go is compiled only with -tags kube, which `go
// build ./...` and `go vet ./...` do not set; this keeps it compiling.
func TestKubeBuildVets(t *testing.T) {
	if testing.Short() {
		t.Skip("type-checks client-go")
	}
	if out, err := exec.Command("go", "vet", "-tags", "kube", ".").CombinedOutput(); err != nil {
		t.Fatalf("go vet -tags kube ./cmd/meshd: %v\n%s", err, out)
	}
}

// TestSidecarOnlyBuild: the sidecar image's meshd (-tags
// sidecaronly,grpcnotrace, install/docker/proxy.Dockerfile) leaves out
// the control plane, its CA store and gRPC's tracing, which is most of what
// makes it smaller than the plain build.
func TestSidecarOnlyBuild(t *testing.T) {
	deps := goListDeps(t, "sidecaronly,grpcnotrace", ".")
	for _, dep := range deps {
		for _, banned := range []string{"github.com/meshauth/meshauth/internal/control", "github.com/meshauth/meshauth/internal/ca", "go.etcd.io/bbolt", "golang.org/x/net/trace", "html/template", "k8s.io/client-go"} {
			if dep == banned || strings.HasPrefix(dep, banned+"/") {
				t.Errorf("meshd -tags sidecaronly,grpcnotrace depends on %s", dep)
			}
		}
	}
	for _, want := range []string{"github.com/meshauth/meshauth/internal/sidecar", "github.com/meshauth/meshauth/internal/proxy", "github.com/meshauth/meshauth/internal/agent", "github.com/meshauth/meshauth/internal/capture"} {
		if !slices.Contains(deps, want) {
			t.Errorf("meshd -tags sidecaronly,grpcnotrace lacks %s", want)
		}
	}
}
