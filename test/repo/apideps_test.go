package repo

import (
	"os/exec"
	"slices"
	"strings"
	"testing"
)

const mod = "github.com/meshauth/meshauth/"

// goList runs `go list` with args from the repository root and returns
// its output's fields.
func goList(t *testing.T, args ...string) []string {
	t.Helper()
	cmd := exec.Command("go", append([]string{"list"}, args...)...)
	cmd.Dir = "../.."
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("go list %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	return strings.Fields(string(out))
}

// TestMeshctlReadsTypedAPI pins what issue #12's typed control-plane API
// achieved: meshctl reads the Admin answers (CA status, issuance log,
// state) as protobuf converted by internal/meshapi into internal/careport
// and meshapi types, so no meshctl source file imports internal/control or
// internal/ca, and the packages it reads them through reach neither.
// meshctl still links both through one import, internal/kube (install,
// kube-inject and --kubeconfig's cluster state live there beside the
// in-cluster control plane); this test fails if another import starts
// pulling them in.
func TestMeshctlReadsTypedAPI(t *testing.T) {
	server := []string{mod + "internal/control", mod + "internal/ca"}
	imports := goList(t, "-f", `{{join .Imports " "}}`, "./cmd/meshctl")
	for _, s := range server {
		if slices.Contains(imports, s) {
			t.Errorf("cmd/meshctl imports %s; read the API through internal/meshapi", s)
		}
	}
	for _, p := range []string{"internal/meshapi", "internal/careport"} {
		for _, dep := range goList(t, "-deps", "./"+p) {
			if slices.Contains(server, dep) {
				t.Errorf("%s depends on %s: meshctl would link the server to read its answers", p, dep)
			}
		}
	}
	var through []string
	for _, imp := range imports {
		if !strings.HasPrefix(imp, mod) {
			continue
		}
		deps := goList(t, "-deps", imp)
		if slices.Contains(deps, server[0]) || slices.Contains(deps, server[1]) {
			through = append(through, strings.TrimPrefix(imp, mod))
		}
	}
	if want := []string{"internal/kube"}; !slices.Equal(through, want) {
		t.Errorf("meshctl reaches internal/control or internal/ca through %v, want only %v", through, want)
	}
	// careport is what meshctl prints the CA's reports from: standard
	// library only.
	for _, dep := range goList(t, "-deps", "./internal/careport") {
		if strings.Contains(dep, ".") && dep != mod+"internal/careport" {
			t.Errorf("internal/careport depends on %s; it is meant to be a leaf", dep)
		}
	}
}
