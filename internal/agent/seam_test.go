package agent

import (
	"go/parser"
	"go/token"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
)

// TestCASeam fails when the agent's own code imports the control plane's
// protobuf API: the agent reaches the CA only through the CA interface it
// owns (ca.go), which internal/sidecar implements over gRPC (GRPCCA).
func TestCASeam(t *testing.T) {
	files, err := filepath.Glob("*.go")
	if err != nil {
		t.Fatal(err)
	}
	checked := 0
	for _, name := range files {
		if strings.HasSuffix(name, "_test.go") {
			continue
		}
		src, err := os.ReadFile(name)
		if err != nil {
			t.Fatal(err)
		}
		f, err := parser.ParseFile(token.NewFileSet(), name, src, parser.ImportsOnly)
		if err != nil {
			t.Fatal(err)
		}
		checked++
		for _, imp := range f.Imports {
			if p, _ := strconv.Unquote(imp.Path.Value); p == "github.com/meshauth/meshauth/api/meshauth/v1" {
				t.Errorf("%s imports %s: reach the CA through agent.CA, not the gRPC API", name, p)
			}
		}
	}
	if checked == 0 {
		t.Fatal("no source files found")
	}
}
