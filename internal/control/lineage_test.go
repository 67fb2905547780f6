package control_test

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"log/slog"
	"slices"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	pb "github.com/meshauth/meshauth/api/meshauth/v1"
	"github.com/meshauth/meshauth/internal/ca"
	"github.com/meshauth/meshauth/internal/client"
	"github.com/meshauth/meshauth/internal/control"
	"github.com/meshauth/meshauth/internal/identity"
	"github.com/meshauth/meshauth/internal/meshapi/sidecarapi"
)

// renewOver renews over real mTLS gRPC, presenting cert, and returns the
// new certificate ready for the next renewal.
func (e *env) renewOver(t *testing.T, cert *tls.Certificate, ttl time.Duration) (*tls.Certificate, *pb.CreateCertificateResponse, error) {
	t.Helper()
	key := ecKey(t)
	conn := e.dial(t, client.Options{GetClientCertificate: withCert(cert)})
	resp, err := pb.NewCertificateAuthorityClient(conn).CreateCertificate(context.Background(), &pb.CreateCertificateRequest{Csr: newCSR(t, key, nil), TtlSeconds: int64(ttl / time.Second)})
	if err != nil {
		return nil, nil, err
	}
	return tlsCert(t, resp.CertChain, key), resp, nil
}

func lifetime(t *testing.T, c *tls.Certificate) time.Duration {
	return c.Leaf.NotAfter.Sub(c.Leaf.NotBefore)
}

// TestRenewalCannotRaiseTTL (issue 11, finding 2): the holder of a 24h
// certificate asks the CA, over mTLS, for the 90-day maximum. The renewal
// is refused with InvalidArgument naming the cap; the default and the
// granted lifetime still renew, and so does a lineage whose bootstrap was
// granted a longer lifetime, down the generations, never above it.
func TestRenewalCannotRaiseTTL(t *testing.T) {
	e := start(t, nil)
	cert, _ := e.issueTLS(t, "default", "sleep") // join token, the CA's default 24h

	_, _, err := e.renewOver(t, cert, 90*24*time.Hour)
	if status.Code(err) != codes.InvalidArgument || control.ReasonFromError(err) != ca.ReasonTTL ||
		!strings.Contains(status.Convert(err).Message(), "over the 24h0m0s a renewal") {
		t.Fatalf("renewal of a 24h certificate asking for 90 days: %v; want InvalidArgument naming the 24h cap", err)
	}
	_, _, err = e.renewOver(t, cert, 25*time.Hour)
	if status.Code(err) != codes.InvalidArgument {
		t.Fatalf("renewal asking for 25h: %v", err)
	}
	c1, _, err := e.renewOver(t, cert, 24*time.Hour)
	if err != nil {
		t.Fatalf("renewal at the cap: %v", err)
	}
	c2, _, err := e.renewOver(t, c1, 0)
	if err != nil || lifetime(t, c2) > 24*time.Hour+time.Minute {
		t.Fatalf("renewal with the default TTL: %v", err)
	}
	if _, _, err := e.renewOver(t, c2, 48*time.Hour); status.Code(err) != codes.InvalidArgument {
		t.Fatalf("second-generation renewal asking for 48h: %v", err)
	}

	// A bootstrap asking for 72h (the operator's --cert-ttl): the lineage
	// keeps 72h, and not a second more.
	key := ecKey(t)
	conn := e.dial(t, client.Options{Token: e.token(t, "default", "batch", time.Hour, 1)})
	resp, err := pb.NewCertificateAuthorityClient(conn).CreateCertificate(context.Background(), &pb.CreateCertificateRequest{Csr: newCSR(t, key, nil), TtlSeconds: 72 * 3600})
	if err != nil {
		t.Fatal(err)
	}
	long := tlsCert(t, resp.CertChain, key)
	for gen := 1; gen <= 3; gen++ {
		if _, _, err := e.renewOver(t, long, 72*time.Hour+time.Second); status.Code(err) != codes.InvalidArgument {
			t.Fatalf("generation %d asking for 72h1s: %v", gen, err)
		}
		if long, _, err = e.renewOver(t, long, 72*time.Hour); err != nil {
			t.Fatalf("generation %d at its 72h grant: %v", gen, err)
		}
		if got := lifetime(t, long); got != 72*time.Hour+time.Minute {
			t.Fatalf("generation %d lifetime %s", gen, got)
		}
	}
}

// TestRevokeSerialRevokesRenewals (issue 11, finding 2): a stolen
// certificate was renewed twice before its serial was revoked. Revoking
// the serial revokes the whole lineage, says so, and the grandchild is
// refused by the CA's mTLS verification; a certificate of the same
// identity from another lineage is untouched.
func TestRevokeSerialRevokesRenewals(t *testing.T) {
	e := start(t, nil)
	ctx := context.Background()
	stolen, first := e.issueTLS(t, "default", "sleep")
	child, childResp, err := e.renewOver(t, stolen, 0)
	if err != nil {
		t.Fatal(err)
	}
	grandchild, grandResp, err := e.renewOver(t, child, 0)
	if err != nil {
		t.Fatal(err)
	}
	sibling, siblingResp := e.issueTLS(t, "default", "sleep") // the workload's own, other lineage

	resp, err := e.admin(t).Revoke(ctx, &pb.RevokeRequest{Serial: first.Serial, Reason: "key stolen"})
	if err != nil {
		t.Fatal(err)
	}
	want := []string{first.Serial, childResp.Serial, grandResp.Serial}
	if !slices.Equal(resp.Serials, want) {
		t.Fatalf("revoked %v, want the serial then its renewals %v", resp.Serials, want)
	}
	if _, _, err := e.renewOver(t, grandchild, 0); control.ReasonFromError(err) != ca.ReasonCallerCert || !strings.Contains(status.Convert(err).Message(), "revoked") {
		t.Fatalf("renewal with the revoked lineage's grandchild: %v", err)
	}
	if _, _, err := e.renewOver(t, sibling, 0); err != nil {
		t.Fatalf("the other lineage: %v", err)
	}

	// The bundle every sidecar gets lists all three, with why.
	b, err := pb.NewCertificateAuthorityClient(e.dial(t, client.Options{})).GetTrustBundle(ctx, &pb.GetTrustBundleRequest{})
	if err != nil {
		t.Fatal(err)
	}
	reasons := map[string]string{}
	for _, r := range b.Revocations {
		reasons[r.Serial] = r.Reason
	}
	if reasons[first.Serial] != "key stolen" || reasons[grandResp.Serial] != "renewed from revoked "+childResp.Serial+": key stolen" || reasons[siblingResp.Serial] != "" {
		t.Fatalf("bundle revocations %v", reasons)
	}
	ib, err := sidecarapi.BundleFromProto(b)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := ib.Verify([]*x509.Certificate{grandchild.Leaf}, time.Now()); identity.Reason(err) != "revoked" {
		t.Fatalf("the sidecars' bundle verifies the grandchild: %v", err)
	}

	// Revoking it again finds nothing new.
	resp, err = e.admin(t).Revoke(ctx, &pb.RevokeRequest{Serial: childResp.Serial})
	if err != nil || len(resp.Serials) != 0 {
		t.Fatalf("second revoke: %v %v", resp, err)
	}
}

// servingSerial does a real TLS handshake with the control plane and
// returns the serial of the certificate it presents.
func servingSerial(t *testing.T, addr string) string {
	t.Helper()
	conn, err := tls.Dial("tcp", addr, &tls.Config{InsecureSkipVerify: true, NextProtos: []string{"h2"}})
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	return identity.SerialHex(conn.ConnectionState().PeerCertificates[0])
}

// TestControlPlaneReissuesRevokedCert (issue 11, finding 9): revoking the
// control plane's serving certificate (by serial, then its identity) makes
// it issue a new one and serve it from the next handshake, on the same
// listener, with a stream opened before still running; clients reading
// the state directory learn the revocation from revocations.json and
// connect to the new certificate.
func TestControlPlaneReissuesRevokedCert(t *testing.T) {
	var logs syncBuffer
	e := start(t, func(c *control.Config) { c.Log = slog.New(slog.NewTextHandler(&logs, nil)) })
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	stream, err := pb.NewCertificateAuthorityClient(e.dial(t, client.Options{})).WatchTrustBundle(ctx, &pb.GetTrustBundleRequest{})
	if err != nil {
		t.Fatal(err)
	}
	b0, err := stream.Recv()
	if err != nil {
		t.Fatal(err)
	}

	old := servingSerial(t, e.srv.Addr())
	resp, err := e.admin(t).Revoke(ctx, &pb.RevokeRequest{Serial: old, Reason: "control plane key stolen"})
	if err != nil || !slices.Equal(resp.Serials, []string{old}) {
		t.Fatalf("revoke the control plane's serial: %v %v", resp, err)
	}
	next := waitNewServing(t, e, old)
	if !strings.Contains(logs.String(), "the control plane's own certificate was revoked; issuing a new one") {
		t.Fatalf("no log line for the re-issue:\n%s", logs.String())
	}
	// meshctl's view: root-cert.pem and revocations.json from the dir,
	// written right after the new certificate is in place.
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(20 * time.Millisecond) {
		roots, err := client.LoadRoots(e.dir, "")
		if err == nil && roots.IsRevoked(old) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("revocations.json does not list the revoked serial: %v", err)
		}
	}
	if _, err := e.admin(t).CAStatus(ctx, &pb.CAStatusRequest{}); err != nil {
		t.Fatalf("a client that knows the revocation cannot reach the re-issued control plane: %v", err)
	}
	// The stream opened before the revocation is still up and saw it.
	b1, err := stream.Recv()
	if err != nil || b1.Version <= b0.Version {
		t.Fatalf("watch stream across the re-issue: %v %v", b1, err)
	}

	// Revoking the identity refuses every certificate it had; it re-issues again.
	if _, err := e.admin(t).Revoke(ctx, &pb.RevokeRequest{SpiffeId: control.ServerID("cluster.local").String()}); err != nil {
		t.Fatal(err)
	}
	waitNewServing(t, e, next)
	if _, err := e.admin(t).CAStatus(ctx, &pb.CAStatusRequest{}); err != nil {
		t.Fatalf("after revoking the control plane's identity: %v", err)
	}
}

func waitNewServing(t *testing.T, e *env, old string) string {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		s := servingSerial(t, e.srv.Addr())
		if s != old {
			return s
		}
		if time.Now().After(deadline) {
			t.Fatalf("the control plane still serves revoked certificate %s", old)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// TestControlPlaneIdentityReserved: no join token can prove the control
// plane's own identity (a workload holding it could serve the CA,
// Discovery and Admin APIs to every client), over the real Admin API; the
// control plane's own certificate is still issued, and a certificate for
// the identity is refused to any other caller (see the ca package test).
func TestControlPlaneIdentityReserved(t *testing.T) {
	e := start(t, nil)
	_, err := e.admin(t).CreateJoinToken(context.Background(), &pb.CreateJoinTokenRequest{Namespace: control.ServerNamespace, ServiceAccount: control.ServerServiceAccount})
	if status.Code(err) != codes.PermissionDenied || control.ReasonFromError(err) != ca.ReasonReservedIdentity ||
		!strings.Contains(status.Convert(err).Message(), "control plane's own identity") {
		t.Fatalf("join token for the control plane's identity: %v", err)
	}
	if s := servingSerial(t, e.srv.Addr()); s == "" {
		t.Fatal("no serving certificate")
	}
	// Another namespace's "meshd" is an ordinary identity.
	if _, err := e.admin(t).CreateJoinToken(context.Background(), &pb.CreateJoinTokenRequest{Namespace: "default", ServiceAccount: control.ServerServiceAccount}); err != nil {
		t.Fatal(err)
	}
}
