package sidecar

import (
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/meshauth/meshauth/internal/control"
	"github.com/meshauth/meshauth/internal/control/controltest"
	"github.com/meshauth/meshauth/internal/identity"
)

// TestBundleWithoutDiscovery: the trust bundle reaches a sidecar on one
// stream, the CA's WatchTrustBundle that its agent follows, not on
// Discovery. A sidecar whose policy comes from a --snapshot file opens no
// Discovery stream, and still gets a root rotation and a revocation (its
// own certificate's: readiness fails with the reason) from a real control
// plane.
func TestBundleWithoutDiscovery(t *testing.T) {
	srv := controltest.Start(t, control.Config{})
	id := identity.ID{TrustDomain: "cluster.local", Namespace: "default", ServiceAccount: "sleep"}
	tok, err := srv.CA().CreateJoinToken(id, time.Hour, 1)
	if err != nil {
		t.Fatal(err)
	}
	snap := filepath.Join(t.TempDir(), "snapshot.json")
	if err := os.WriteFile(snap, []byte(`{"version":"file-1","trustDomain":"cluster.local","inboundDefault":"STRICT"}`), 0o644); err != nil {
		t.Fatal(err)
	}
	cfg := Config{Namespace: "default", ServiceAccount: "sleep", TrustDomain: "cluster.local",
		ControlDir: srv.Dir(), Token: tok.Secret, CertsDir: filepath.Join(t.TempDir(), "certs"), Snapshot: snap,
		WorkloadAPI: "off", Outbound: "127.0.0.1:0", Admin: freeAddr(t)}
	runCtx, stop := context.WithCancel(context.Background())
	ran := make(chan error, 1)
	go func() { ran <- Run(runCtx, cfg) }()
	defer func() { stop(); <-ran }()

	type certs struct {
		Serial        string   `json:"serial"`
		BundleVersion uint64   `json:"bundle_version"`
		Roots         []string `json:"root_sha256_fingerprints"`
	}
	current := func() (certs, bool) {
		code, body, err := get("http://" + cfg.Admin + "/certs")
		var doc struct{ Certificates []certs }
		if err != nil || code != 200 || json.Unmarshal([]byte(body), &doc) != nil || len(doc.Certificates) != 1 {
			return certs{}, false
		}
		return doc.Certificates[0], doc.Certificates[0].Serial != ""
	}
	waitFor := func(what string, cond func() bool) {
		t.Helper()
		deadline := time.Now().Add(20 * time.Second)
		for !cond() {
			if time.Now().After(deadline) {
				t.Fatalf("timed out waiting for %s", what)
			}
			time.Sleep(20 * time.Millisecond)
		}
	}
	var first certs
	waitFor("the first certificate and bundle", func() bool {
		var ok bool
		first, ok = current()
		select {
		case err := <-ran:
			t.Fatalf("Run: %v", err)
		default:
		}
		return ok && first.BundleVersion == srv.CA().Bundle().Version
	})

	// A root rotation: the new root is in the sidecar's bundle.
	if _, err := srv.CA().RotateRoot(time.Hour, ""); err != nil {
		t.Fatal(err)
	}
	waitFor("the rotated bundle (two roots)", func() bool {
		c, ok := current()
		return ok && len(c.Roots) == 2 && c.BundleVersion > first.BundleVersion
	})
	// A revocation of the sidecar's own certificate: it is refused from now
	// on, and the sidecar says so (its join token is spent, so it cannot
	// get another).
	if _, _, err := srv.CA().Revoke(first.Serial, "", "test"); err != nil {
		t.Fatal(err)
	}
	waitFor("readiness to fail with the revocation", func() bool {
		code, body, err := get("http://" + cfg.Admin + "/healthz/ready")
		return err == nil && code == 503 && strings.Contains(body, "revoked")
	})
	if st := srv.Plane().Push().Status(); len(st) != 0 {
		t.Errorf("a --snapshot sidecar opened a Discovery stream: %+v", st)
	}
}
