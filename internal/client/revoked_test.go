package client_test

import (
	"context"
	"crypto/tls"
	"encoding/json"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/status"

	pb "github.com/meshauth/meshauth/api/meshauth/v1"
	"github.com/meshauth/meshauth/internal/ca/catest"
	"github.com/meshauth/meshauth/internal/client"
	"github.com/meshauth/meshauth/internal/identity"
)

// impostor serves gRPC over TLS on loopback with cert, as someone holding
// a control plane's stolen key would. Its handlers are the unimplemented
// ones: a call answered Unimplemented got through the handshake.
func impostor(t *testing.T, cert *catest.Cert) string {
	t.Helper()
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := grpc.NewServer(grpc.Creds(credentials.NewTLS(&tls.Config{Certificates: []tls.Certificate{cert.TLS}, MinVersion: tls.VersionTLS12})))
	pb.RegisterCertificateAuthorityServer(srv, pb.UnimplementedCertificateAuthorityServer{})
	go srv.Serve(lis)
	t.Cleanup(srv.Stop)
	return lis.Addr().String()
}

func call(t *testing.T, o client.Options) error {
	t.Helper()
	conn, err := client.Dial(context.Background(), o)
	if err != nil {
		return err
	}
	defer conn.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	_, err = pb.NewCertificateAuthorityClient(conn).GetTrustBundle(ctx, &pb.GetTrustBundleRequest{})
	return err
}

// TestRefusesRevokedControlPlane (issue 11, finding 9): a server presenting
// the control plane's identity with a certificate the bundle lists as
// revoked is refused by the client, with the reason, whether the bundle
// comes from the caller (the sidecar's current bundle) or from the control
// plane's state directory (meshctl: root-cert.pem + revocations.json).
func TestRefusesRevokedControlPlane(t *testing.T) {
	a := catest.New(t)
	stolen := a.Issue(t, "spiffe://cluster.local/ns/meshauth-system/sa/meshd")
	addr := impostor(t, stolen)

	// Trusting the roots alone, the impostor gets through: the handshake
	// succeeds and the call reaches its (unimplemented) handler.
	if err := call(t, client.Options{Addr: addr, Roots: func() *identity.Bundle { return a.Bundle() }}); status.Code(err) != codes.Unimplemented {
		t.Fatalf("sanity: without the revocation: %v", err)
	}
	err := call(t, client.Options{Addr: addr, Roots: func() *identity.Bundle { return a.Bundle(stolen) }})
	if status.Code(err) != codes.Unavailable || !strings.Contains(err.Error(), "serial "+stolen.Serial()+", which the trust bundle (version 1) lists as revoked") {
		t.Fatalf("revoked control plane certificate, bundle from the caller: %v", err)
	}

	// meshctl's way: the state directory.
	dir := t.TempDir()
	os.WriteFile(filepath.Join(dir, "root-cert.pem"), a.RootPEM(), 0o644)
	if err := call(t, client.Options{Dir: dir, Addr: addr}); status.Code(err) != codes.Unimplemented {
		t.Fatalf("sanity: directory without revocations.json: %v", err)
	}
	revs, _ := json.Marshal(map[string]any{"bundle_version": 7, "revocations": []map[string]string{{"serial": stolen.Serial(), "spiffe_id": "spiffe://cluster.local/ns/meshauth-system/sa/meshd"}}})
	os.WriteFile(filepath.Join(dir, client.FileRevocations), revs, 0o644)
	err = call(t, client.Options{Dir: dir, Addr: addr})
	if status.Code(err) != codes.Unavailable || !strings.Contains(err.Error(), "(version 7) lists as revoked") {
		t.Fatalf("revoked control plane certificate, bundle from the directory: %v", err)
	}
	b, err := client.LoadRoots(dir, "")
	if err != nil || !b.IsRevoked(stolen.Serial()) || b.Version != 7 {
		t.Fatalf("LoadRoots: %v %+v", err, b)
	}
	// A damaged revocations.json is an error, not an empty list.
	os.WriteFile(filepath.Join(dir, client.FileRevocations), []byte(`{"revocations": [`), 0o644)
	if _, err := client.LoadRoots(dir, ""); err == nil || !strings.Contains(err.Error(), client.FileRevocations) {
		t.Fatalf("LoadRoots with a truncated revocations.json: %v", err)
	}
}

// FuzzRevocationsFile: whatever is in DIR/revocations.json, LoadRoots never
// panics, and either refuses the file or returns the roots with exactly
// the serials the file lists.
func FuzzRevocationsFile(f *testing.F) {
	f.Add([]byte(`{"bundle_version":3,"revocations":[{"serial":"ab12","spiffe_id":"spiffe://cluster.local/ns/meshauth-system/sa/meshd"}]}`))
	f.Add([]byte(`{"bundle_version":1,"revocations":[]}`))
	f.Add([]byte(`{"revocations": [`))
	f.Add([]byte(`null`))
	f.Add([]byte(`{"revocations":[{"serial":1}]}`))
	root := catest.New(f).RootPEM()
	f.Fuzz(func(t *testing.T, data []byte) {
		dir := t.TempDir()
		os.WriteFile(filepath.Join(dir, "root-cert.pem"), root, 0o644)
		os.WriteFile(filepath.Join(dir, client.FileRevocations), data, 0o644)
		b, err := client.LoadRoots(dir, "")
		if err != nil {
			if !strings.Contains(err.Error(), client.FileRevocations) {
				t.Fatalf("error does not name the file: %v", err)
			}
			return
		}
		var want client.Revocations
		if err := json.Unmarshal(data, &want); err != nil {
			t.Fatalf("LoadRoots accepted what encoding/json refuses: %v", err)
		}
		n := map[string]bool{}
		for _, r := range want.Revocations {
			n[r.Serial] = true
			if !b.IsRevoked(r.Serial) {
				t.Fatalf("serial %q listed but not revoked", r.Serial)
			}
		}
		if len(b.Revoked) != len(n) || len(b.Roots) != 1 {
			t.Fatalf("%d revoked, %d roots from %q", len(b.Revoked), len(b.Roots), data)
		}
	})
}
