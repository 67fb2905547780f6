package repo

import (
	"go/ast"
	"go/parser"
	"go/token"
	"io/fs"
	"path/filepath"
	"strings"
	"testing"
)

// TestTLSConfigsUseProfile fails when code under cmd/, internal/ or
// samples/ builds a TLS configuration other than through
// internal/tlsprofile: a tls.Config literal or new(tls.Config), a config
// from go-spiffe's tlsconfig that is not passed straight to
// tlsprofile.Apply, or a helper that brings its own defaults
// (ListenAndServeTLS, gRPC's credentials.New*TLSFrom*). Tests are exempt
// (attack clients offer weak suites on purpose), and so is bench/, whose
// baselines configure other software's clients.
func TestTLSConfigsUseProfile(t *testing.T) {
	root := filepath.Join("..", "..")
	forbiddenCalls := map[string]string{
		"ListenAndServeTLS":    "uses net/http's own TLS defaults",
		"ServeTLS":             "uses net/http's own TLS defaults when TLSConfig is nil",
		"NewClientTLSFromFile": "gRPC's TLS defaults",
		"NewServerTLSFromFile": "gRPC's TLS defaults",
		"NewClientTLSFromCert": "gRPC's TLS defaults",
		"NewServerTLSFromCert": "gRPC's TLS defaults",
	}
	files := 0
	for _, top := range []string{"cmd", "internal", "samples"} {
		err := filepath.WalkDir(filepath.Join(root, top), func(path string, d fs.DirEntry, err error) error {
			if err != nil {
				return err
			}
			if d.IsDir() && (d.Name() == "testdata" || strings.HasPrefix(d.Name(), ".")) {
				return filepath.SkipDir
			}
			if d.IsDir() && filepath.ToSlash(path) == filepath.ToSlash(filepath.Join(root, "internal", "tlsprofile")) {
				return filepath.SkipDir
			}
			if d.IsDir() || !strings.HasSuffix(path, ".go") || strings.HasSuffix(path, "_test.go") {
				return nil
			}
			fset := token.NewFileSet()
			f, err := parser.ParseFile(fset, path, nil, 0)
			if err != nil {
				return err
			}
			files++
			// Calls whose argument is allowed to be a library config.
			applied := map[ast.Node]bool{}
			ast.Inspect(f, func(n ast.Node) bool {
				if call, ok := n.(*ast.CallExpr); ok && isSel(call.Fun, "tlsprofile", "Apply") && len(call.Args) == 1 {
					applied[call.Args[0]] = true
				}
				return true
			})
			ast.Inspect(f, func(n ast.Node) bool {
				switch x := n.(type) {
				case *ast.CompositeLit:
					if isSel(x.Type, "tls", "Config") {
						t.Errorf("%s: tls.Config literal; use tlsprofile.New() and set the fields", fset.Position(x.Pos()))
					}
				case *ast.CallExpr:
					if id, ok := x.Fun.(*ast.Ident); ok && id.Name == "new" && len(x.Args) == 1 && isSel(x.Args[0], "tls", "Config") {
						t.Errorf("%s: new(tls.Config); use tlsprofile.New()", fset.Position(x.Pos()))
					}
					if sel, ok := x.Fun.(*ast.SelectorExpr); ok {
						if pkg, ok := sel.X.(*ast.Ident); ok && pkg.Name == "tlsconfig" && strings.HasSuffix(sel.Sel.Name, "Config") && !applied[x] {
							t.Errorf("%s: tlsconfig.%s(...) not passed to tlsprofile.Apply", fset.Position(x.Pos()), sel.Sel.Name)
						}
						if why, ok := forbiddenCalls[sel.Sel.Name]; ok {
							t.Errorf("%s: %s (%s); build a listener or dialer with a tlsprofile config", fset.Position(x.Pos()), sel.Sel.Name, why)
						}
					}
				}
				return true
			})
			return nil
		})
		if err != nil {
			t.Fatal(err)
		}
	}
	if files == 0 {
		t.Fatal("found no Go files; is the test running from test/repo?")
	}
}

func isSel(e ast.Expr, pkg, name string) bool {
	sel, ok := e.(*ast.SelectorExpr)
	if !ok {
		return false
	}
	id, ok := sel.X.(*ast.Ident)
	return ok && id.Name == pkg && sel.Sel.Name == name
}
