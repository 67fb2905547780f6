package client_test

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	pb "github.com/meshauth/meshauth/api/meshauth/v1"
	"github.com/meshauth/meshauth/internal/ca/catest"
	"github.com/meshauth/meshauth/internal/client"
	"github.com/meshauth/meshauth/internal/control"
	"github.com/meshauth/meshauth/internal/control/controltest"
)

func TestTrustDomainOf(t *testing.T) {
	a := catest.New(t, catest.WithTrustDomain("example.org"))
	if got := client.TrustDomainOf(a.Bundle().Roots); got != "example.org" {
		t.Fatalf("TrustDomainOf = %q", got)
	}
	b, err := client.BundleFromPEM(a.RootPEM(), "")
	if err != nil || b.TrustDomain != "example.org" || len(b.Roots) != 1 {
		t.Fatalf("BundleFromPEM: %v %+v", err, b)
	}
	if b, err := client.BundleFromPEM(a.RootPEM(), "override.td"); err != nil || b.TrustDomain != "override.td" {
		t.Fatalf("explicit trust domain: %v %+v", err, b)
	}
	if _, err := client.BundleFromPEM([]byte("nope"), ""); err == nil {
		t.Fatal("garbage roots accepted")
	}
}

func TestDialErrorsSayWhatToDo(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	_, err := client.Dial(ctx, client.Options{Dir: dir})
	if err == nil || !strings.Contains(err.Error(), "root-cert.pem") || !strings.Contains(err.Error(), "meshd control") {
		t.Fatalf("no roots: %v", err)
	}
	os.WriteFile(filepath.Join(dir, "root-cert.pem"), catest.New(t).RootPEM(), 0o644)
	_, err = client.Dial(ctx, client.Options{Dir: dir, AdminToken: true})
	if err == nil || !strings.Contains(err.Error(), "admin token") {
		t.Fatalf("no admin token: %v", err)
	}
}

// TestDialFindsTheServer: with only --dir, Dial reads control.addr and
// root-cert.pem that a real control plane wrote, and the admin token.
func TestDialFindsTheServer(t *testing.T) {
	dir := t.TempDir()
	controltest.Start(t, control.Config{Dir: dir})
	ctx := context.Background()
	conn, err := client.Dial(ctx, client.Options{Dir: dir, AdminToken: true})
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	cctx, ccancel := context.WithTimeout(ctx, 10*time.Second)
	defer ccancel()
	if _, err := pb.NewAdminClient(conn).CAStatus(cctx, &pb.CAStatusRequest{}); err != nil {
		t.Fatalf("CAStatus through Dial(Dir): %v", err)
	}
}
