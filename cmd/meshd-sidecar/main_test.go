package main

import (
	"os"
	"os/exec"
	"regexp"
	"slices"
	"strings"
	"testing"
)

// TestSmallSidecar pins what keeps the sidecar binary small (its size is
// most of every sidecar's memory: BENCHMARKS.md, "Idle sidecar memory"):
// `go list -deps` of this command, built as `make build` and the proxy
// image build it, has the sidecar and none of the control plane, the CA
// store, the config loader (YAML), the registry, the policy engine,
// the push server, Kubernetes, cobra (text/template), the
// Prometheus client library, gRPC tracing (html/template), pprof's HTTP
// handlers or go-jose (JWTs are checked on crypto/*), and the proxy's
// HTTP/2 is net/http's own, not a second stack from golang.org/x/net/http2
// (which stays linked only for gRPC's framer); and the Makefile and the
// image do build it that way.
func TestSmallSidecar(t *testing.T) {
	out, err := exec.Command("go", "list", "-deps", "-tags", "grpcnotrace", ".").CombinedOutput()
	if err != nil {
		t.Fatalf("go list -deps: %v\n%s", err, out)
	}
	deps := strings.Fields(string(out))
	const mod = "github.com/meshauth/meshauth/"
	banned := []string{
		mod + "internal/control", mod + "internal/ca", mod + "internal/kube", mod + "internal/localmesh",
		mod + "internal/config", mod + "internal/registry", mod + "internal/policy/engine",
		"go.etcd.io/bbolt", "gopkg.in/yaml.v3", "sigs.k8s.io/yaml", "k8s.io",
		"github.com/spf13/cobra", "text/template", "html/template",
		"github.com/prometheus/client_golang", "github.com/prometheus/common", "github.com/prometheus/procfs",
		"golang.org/x/net/trace", "net/http/pprof", "expvar",
		"github.com/go-jose",
	}
	for _, dep := range deps {
		switch dep {
		case mod + "internal/push", // the server; the client is push/pushclient
			mod + "internal/meshapi", // the Admin API's state; the sidecar's part is meshapi/sidecarapi
			mod + "internal/careport":
			t.Errorf("meshd-sidecar depends on %s", dep)
		}
		for _, b := range banned {
			if dep == b || strings.HasPrefix(dep, b+"/") {
				t.Errorf("meshd-sidecar depends on %s", dep)
			}
		}
	}
	imports, err := exec.Command("go", "list", "-f", `{{join .Imports " "}}`, mod+"internal/proxy").CombinedOutput()
	if err != nil {
		t.Fatalf("go list internal/proxy: %v\n%s", err, imports)
	}
	if slices.Contains(strings.Fields(string(imports)), "golang.org/x/net/http2") {
		t.Error("internal/proxy imports golang.org/x/net/http2: its HTTP/2 is net/http's own")
	}
	for _, want := range []string{mod + "internal/sidecar", mod + "internal/proxy", mod + "internal/agent", mod + "internal/metrics", mod + "internal/push/pushclient", mod + "internal/meshapi/sidecarapi"} {
		if !slices.Contains(deps, want) {
			t.Errorf("meshd-sidecar lacks %s", want)
		}
	}
	// The builds users run pass the same tags, without cgo (no libc
	// mapped beside the binary).
	for file, re := range map[string]string{
		"../../Makefile":                        `CGO_ENABLED=0 \$\(GO\) build -tags grpcnotrace [^\n]*-o \$\(BIN\)/ \./cmd/meshd-sidecar`,
		"../../install/docker/proxy.Dockerfile": `CGO_ENABLED=0 [^\n]*go build -tags grpcnotrace [^\n]*\./cmd/meshd-sidecar`,
	} {
		b, err := os.ReadFile(file)
		if err != nil {
			t.Fatal(err)
		}
		if !regexp.MustCompile(re).Match(b) {
			t.Errorf("%s does not build meshd-sidecar as this test checks it (%s)", file, re)
		}
	}
}
