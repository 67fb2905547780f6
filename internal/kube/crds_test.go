package kube

import (
	"bytes"
	"os"
	"testing"
)

// TestCRDManifest keeps install/kubernetes/crds.yaml equal to CRDManifest.
func TestCRDManifest(t *testing.T) {
	const path = "../../install/kubernetes/crds.yaml"
	got := CRDManifest()
	if *update {
		if err := os.WriteFile(path, got, 0o644); err != nil {
			t.Fatal(err)
		}
		return
	}
	want, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("%v (run go test ./internal/kube -run TestCRDManifest -update)", err)
	}
	if !bytes.Equal(got, want) {
		t.Errorf("%s is stale: run go test ./internal/kube -run TestCRDManifest -update", path)
	}
}
