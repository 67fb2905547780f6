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

// maxCmdFuncLines is the longest a function in cmd/ may be: cmd/ holds flag
// parsing and wiring; logic longer than this belongs in a helper or an
// internal package (issue #12).
const maxCmdFuncLines = 80

// TestCmdThin fails when a function under cmd/ is longer than
// maxCmdFuncLines (from its func keyword to its closing brace, function
// literals inside counted with it), or when cmd/meshctl registers commands
// in init functions (its commands are built by newXxxCmd constructors, so no
// flag value lives in a package variable).
func TestCmdThin(t *testing.T) {
	root := filepath.Join("..", "..", "cmd")
	fset := token.NewFileSet()
	funcs := 0
	err := filepath.WalkDir(root, func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if d.IsDir() && (d.Name() == "testdata" || strings.HasPrefix(d.Name(), ".")) {
			return filepath.SkipDir
		}
		if d.IsDir() || !strings.HasSuffix(path, ".go") || strings.HasSuffix(path, "_test.go") {
			return nil
		}
		f, err := parser.ParseFile(fset, path, nil, parser.SkipObjectResolution)
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(filepath.Join("..", ".."), path)
		for _, decl := range f.Decls {
			fn, ok := decl.(*ast.FuncDecl)
			if !ok || fn.Body == nil {
				continue
			}
			funcs++
			start, end := fset.Position(fn.Pos()), fset.Position(fn.End())
			if n := end.Line - start.Line + 1; n > maxCmdFuncLines {
				t.Errorf("%s:%d: %s is %d lines, over %d: move the logic out of cmd/ (a helper, or an internal package)",
					rel, start.Line, fn.Name.Name, n, maxCmdFuncLines)
			}
			if fn.Recv == nil && fn.Name.Name == "init" && filepath.Base(filepath.Dir(path)) == "meshctl" {
				t.Errorf("%s:%d: init function in cmd/meshctl: build the command in a newXxxCmd constructor with its flags in a struct", rel, start.Line)
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if funcs == 0 {
		t.Fatal("found no functions under cmd/; is the test running from test/repo?")
	}
}
