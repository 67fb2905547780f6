package control

import (
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"testing"
	"time"
)

const settleMesh = `apiVersion: meshauth.io/v1alpha1
kind: MeshConfig
metadata: {name: mesh}
spec: {authPolicy: MUTUAL_TLS}
`

// TestHalfWrittenFileIsNotApplied: a file caught half-written (an editor's
// truncate-then-write seen mid-write) can be valid YAML that weakens the
// mesh: the first three lines of mesh.yaml are a MeshConfig with no spec,
// authPolicy NONE. A changed directory is applied only when the next poll
// reads it unchanged, so the prefix, replaced by the complete file before
// the next poll, is never applied. The polls are driven by hand (the
// ticker is an hour) so the test is deterministic; files, config plane and
// CA are real. (Failed without the settle rule: the prefix was applied and
// authPolicy went to NONE.)
func TestHalfWrittenFileIsNotApplied(t *testing.T) {
	dir := t.TempDir()
	mesh := filepath.Join(dir, "mesh.yaml")
	write := func(body string) {
		t.Helper()
		if err := os.WriteFile(mesh, []byte(body), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	write(settleMesh)
	srv, err := New(Config{Dir: t.TempDir(), Listen: "127.0.0.1:0", Log: slog.New(slog.NewTextHandler(io.Discard, nil)),
		Plane: PlaneConfig{ConfigDir: dir, PollInterval: time.Hour}})
	if err != nil {
		t.Fatal(err)
	}
	p := srv.Plane()
	t.Cleanup(func() { p.Close(); srv.CA().Close() })
	// One poll of the directory source, its result handed to the plane
	// as DirSource.Watch does.
	ds := p.src.(*dirSource)
	poll := func() {
		t.Helper()
		objs, changed, err := ds.read(true)
		if err != nil {
			t.Fatalf("poll: %v", err)
		}
		if changed {
			p.fromSource(objs, nil)
		}
	}
	want := func(when string, ap string, version uint64) {
		t.Helper()
		if c := p.Config(); string(c.AuthPolicy()) != ap || c.Version != version {
			t.Fatalf("%s: authPolicy %s version %d; want %s version %d", when, c.AuthPolicy(), c.Version, ap, version)
		}
	}
	want("at start", "MUTUAL_TLS", 1)

	write("apiVersion: meshauth.io/v1alpha1\nkind: MeshConfig\nmetadata: {name: mesh}\n") // mid-write
	poll()
	want("a poll that read the half-written file", "MUTUAL_TLS", 1)
	write(settleMesh + "---\napiVersion: meshauth.io/v1alpha1\nkind: Service\nmetadata: {name: ratings}\nspec: {ports: [{number: 9080}]}\n") // complete
	poll()
	want("the first poll that read the complete file", "MUTUAL_TLS", 1)
	poll()
	want("the second poll that read the complete file", "MUTUAL_TLS", 2)
	if n := len(p.Config().Services); n != 1 {
		t.Fatalf("complete file applied with %d services, want 1", n)
	}
	// Content seen, then gone, then back is not "two polls in a row".
	write(settleMesh)
	poll()
	write(settleMesh + "---\napiVersion: meshauth.io/v1alpha1\nkind: Service\nmetadata: {name: ratings}\nspec: {ports: [{number: 9080}]}\n")
	poll()
	write(settleMesh)
	poll()
	want("A, B, A across polls", "MUTUAL_TLS", 2)
	poll()
	want("A read twice in a row", "MUTUAL_TLS", 3)
}
