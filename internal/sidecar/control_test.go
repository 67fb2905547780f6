package sidecar

import (
	"crypto/x509"
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/meshauth/meshauth/internal/agent"
	"github.com/meshauth/meshauth/internal/ca/catest"
	"github.com/meshauth/meshauth/internal/client"
	"github.com/meshauth/meshauth/internal/identity"
)

// With --control-dir, the bundle that verifies the control plane before the
// first one arrives over the stream includes the revoked serials meshd
// control wrote beside its roots: the bootstrap call carries the join token,
// so a control plane certificate revoked after its key was stolen must be
// refused then too (issue #11, finding 9). Before, only root-cert.pem was read.
func TestControlConnUsesStateDirRevocations(t *testing.T) {
	ca := catest.New(t)
	meshd := ca.Issue(t, "spiffe://cluster.local/ns/meshauth-system/sa/meshd")
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "root-cert.pem"), ca.RootPEM(), 0o644); err != nil {
		t.Fatal(err)
	}
	var revs client.Revocations
	revs.BundleVersion = 7
	revs.Revocations = append(revs.Revocations, struct {
		Serial   string `json:"serial"`
		SPIFFEID string `json:"spiffe_id"`
	}{meshd.Serial(), "spiffe://cluster.local/ns/meshauth-system/sa/meshd"})
	b, err := json.Marshal(revs)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, client.FileRevocations), b, 0o644); err != nil {
		t.Fatal(err)
	}
	id := identity.ID{TrustDomain: "cluster.local", Namespace: "default", ServiceAccount: "sleep"}
	c, err := newControlConn(Config{ControlDir: dir, Token: "unused", CertsDir: t.TempDir()}, id, agent.NewStore(agent.StoreConfig{}))
	if err != nil {
		t.Fatal(err)
	}
	if _, ok := c.roots().Revoked[meshd.Serial()]; !ok {
		t.Fatalf("the bundle that verifies the control plane does not list its revoked serial %s (revoked: %v)", meshd.Serial(), c.roots().Revoked)
	}
	if _, err := c.roots().Verify([]*x509.Certificate{meshd.Leaf}, time.Now()); !errors.Is(err, identity.ErrRevoked) {
		t.Fatalf("the revoked control plane certificate against the sidecar's initial bundle: %v, want revoked", err)
	}
}
