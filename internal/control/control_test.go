package control_test

import (
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/asn1"
	"encoding/pem"
	"io"
	"log/slog"
	"net/url"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	pb "github.com/meshauth/meshauth/api/meshauth/v1"
	"github.com/meshauth/meshauth/internal/ca"
	"github.com/meshauth/meshauth/internal/ca/catest"
	"github.com/meshauth/meshauth/internal/careport"
	"github.com/meshauth/meshauth/internal/client"
	"github.com/meshauth/meshauth/internal/control"
	"github.com/meshauth/meshauth/internal/identity"
	"github.com/meshauth/meshauth/internal/meshapi"
	"github.com/meshauth/meshauth/internal/meshapi/sidecarapi"
)

// clock is the control plane's clock in tests, movable forward.
type clock struct{ off atomic.Int64 }

func (c *clock) now() time.Time      { return time.Now().Add(time.Duration(c.off.Load())) }
func (c *clock) add(d time.Duration) { c.off.Add(int64(d)) }

type env struct {
	srv *control.Server
	dir string
	clk *clock
}

func quietLogger() *slog.Logger { return slog.New(slog.NewTextHandler(io.Discard, nil)) }

// start runs a real control plane on 127.0.0.1:0 with TLS, until the test ends.
func start(t testing.TB, mod func(*control.Config)) *env {
	t.Helper()
	e := &env{dir: t.TempDir(), clk: &clock{}}
	cfg := control.Config{
		Dir: e.dir, Listen: "127.0.0.1:0", Clock: e.clk.now,
		Log: slog.New(slog.NewTextHandler(io.Discard, nil)),
	}
	if mod != nil {
		mod(&cfg)
	}
	srv, err := control.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	e.srv = srv
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- srv.Serve(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Serve: %v", err)
		}
	})
	for srv.Addr() == "" {
		select {
		case err := <-done:
			t.Fatalf("Serve: %v", err)
		case <-time.After(5 * time.Millisecond):
		}
	}
	return e
}

func (e *env) dial(t testing.TB, o client.Options) *grpc.ClientConn {
	t.Helper()
	o.Dir = e.dir
	conn, err := client.Dial(context.Background(), o)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return conn
}

func (e *env) admin(t testing.TB) pb.AdminClient {
	return pb.NewAdminClient(e.dial(t, client.Options{AdminToken: true}))
}

func (e *env) token(t testing.TB, ns, sa string, ttl time.Duration, uses int32) string {
	t.Helper()
	resp, err := e.admin(t).CreateJoinToken(context.Background(), &pb.CreateJoinTokenRequest{Namespace: ns, ServiceAccount: sa, TtlSeconds: int64(ttl / time.Second), Uses: uses})
	if err != nil {
		t.Fatal(err)
	}
	return resp.Token
}

func newCSR(t testing.TB, key crypto.Signer, tmpl *x509.CertificateRequest) []byte {
	t.Helper()
	if tmpl == nil {
		tmpl = &x509.CertificateRequest{}
	}
	der, err := x509.CreateCertificateRequest(rand.Reader, tmpl, key)
	if err != nil {
		t.Fatal(err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE REQUEST", Bytes: der})
}

func ecKey(t testing.TB) *ecdsa.PrivateKey {
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	return k
}

func uris(ss ...string) []*url.URL {
	var out []*url.URL
	for _, s := range ss {
		u, _ := url.Parse(s)
		out = append(out, u)
	}
	return out
}

const sleep = "spiffe://cluster.local/ns/default/sa/sleep"

// issueTLS gets a certificate with a join token and returns it ready for mTLS.
func (e *env) issueTLS(t testing.TB, ns, sa string) (*tls.Certificate, *pb.CreateCertificateResponse) {
	t.Helper()
	key := ecKey(t)
	conn := e.dial(t, client.Options{Token: e.token(t, ns, sa, time.Hour, 1)})
	resp, err := pb.NewCertificateAuthorityClient(conn).CreateCertificate(context.Background(), &pb.CreateCertificateRequest{Csr: newCSR(t, key, nil)})
	if err != nil {
		t.Fatal(err)
	}
	return tlsCert(t, resp.CertChain, key), resp
}

func tlsCert(t testing.TB, chainPEM []string, key crypto.Signer) *tls.Certificate {
	t.Helper()
	certs, err := identity.ParseCertsPEM([]byte(strings.Join(chainPEM, "")))
	if err != nil {
		t.Fatal(err)
	}
	c := &tls.Certificate{PrivateKey: key, Leaf: certs[0]}
	for _, x := range certs {
		c.Certificate = append(c.Certificate, x.Raw)
	}
	return c
}

func withCert(c *tls.Certificate) func(*tls.CertificateRequestInfo) (*tls.Certificate, error) {
	return func(*tls.CertificateRequestInfo) (*tls.Certificate, error) { return c, nil }
}

// TestCSRAbuse sends each abusive request over the real gRPC API and checks
// it is refused with its own reason and status code.
func TestCSRAbuse(t *testing.T) {
	e := start(t, nil)
	ctx := context.Background()
	key := ecKey(t)
	rsa1024, err := rsa.GenerateKey(rand.Reader, 1024)
	if err != nil {
		t.Fatal(err)
	}
	caTrue, _ := asn1.Marshal(struct {
		IsCA bool
	}{true})
	badSig := func() []byte {
		der := newCSR(t, key, nil)
		blk, _ := pem.Decode(der)
		blk.Bytes[len(blk.Bytes)-3] ^= 0xff // flip a bit of the signature
		return pem.EncodeToMemory(blk)
	}()
	otherKeySig := func() []byte {
		// A CSR whose public key is swapped for another after signing.
		csr, _ := x509.ParseCertificateRequest(pemToDER(newCSR(t, key, nil)))
		other := newCSR(t, ecKey(t), nil)
		otherCSR, _ := x509.ParseCertificateRequest(pemToDER(other))
		raw := strings.Replace(string(csr.Raw), string(csr.RawSubjectPublicKeyInfo), string(otherCSR.RawSubjectPublicKeyInfo), 1)
		return []byte(raw)
	}()

	usedUp := e.token(t, "default", "sleep", time.Hour, 1)
	if _, err := pb.NewCertificateAuthorityClient(e.dial(t, client.Options{Token: usedUp})).CreateCertificate(ctx, &pb.CreateCertificateRequest{Csr: newCSR(t, key, nil)}); err != nil {
		t.Fatal(err)
	}
	expiring := e.token(t, "default", "sleep", time.Minute, 5)
	foreignCA := catest.New(t)
	foreignCert := foreignCA.Issue(t, sleep)

	tests := []struct {
		name   string
		token  string // default: a fresh 1-use token for default/sleep
		cert   *tls.Certificate
		csr    []byte
		ttl    int64
		before func()
		code   codes.Code
		reason string
	}{
		{name: "identity not owned", csr: newCSR(t, key, &x509.CertificateRequest{URIs: uris("spiffe://cluster.local/ns/default/sa/httpbin")}),
			code: codes.PermissionDenied, reason: ca.ReasonIdentityMismatch},
		{name: "token reused past its limit", token: usedUp, csr: newCSR(t, key, nil),
			code: codes.Unauthenticated, reason: ca.ReasonTokenUsedUp},
		{name: "expired token", token: expiring, csr: newCSR(t, key, nil), before: func() { e.clk.add(2 * time.Minute) },
			code: codes.Unauthenticated, reason: ca.ReasonTokenExpired},
		{name: "CA:TRUE", csr: newCSR(t, key, &x509.CertificateRequest{ExtraExtensions: []pkix.Extension{{Id: asn1.ObjectIdentifier{2, 5, 29, 19}, Critical: true, Value: caTrue}}}),
			code: codes.InvalidArgument, reason: ca.ReasonCARequested},
		{name: "extra DNS SAN", csr: newCSR(t, key, &x509.CertificateRequest{URIs: uris(sleep), DNSNames: []string{"httpbin.default.svc"}}),
			code: codes.InvalidArgument, reason: ca.ReasonExtraSAN},
		{name: "two URIs", csr: newCSR(t, key, &x509.CertificateRequest{URIs: uris(sleep, "spiffe://cluster.local/ns/default/sa/httpbin")}),
			code: codes.InvalidArgument, reason: ca.ReasonMultipleURIs},
		{name: "foreign trust domain", csr: newCSR(t, key, &x509.CertificateRequest{URIs: uris("spiffe://evil.example/ns/default/sa/sleep")}),
			code: codes.PermissionDenied, reason: ca.ReasonForeignTrustDomain},
		{name: "RSA 1024", csr: newCSR(t, rsa1024, nil), code: codes.InvalidArgument, reason: ca.ReasonKeyType},
		{name: "bad signature", csr: badSig, code: codes.InvalidArgument, reason: ca.ReasonBadSignature},
		{name: "public key swapped after signing", csr: otherKeySig, code: codes.InvalidArgument, reason: ca.ReasonBadSignature},
		{name: "garbage DER", csr: []byte{0x30, 0x82, 0x01, 0x00, 0xde, 0xad, 0xbe, 0xef}, code: codes.InvalidArgument, reason: ca.ReasonBadCSR},
		{name: "wrong PEM type", csr: pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: foreignCert.Leaf.Raw}), code: codes.InvalidArgument, reason: ca.ReasonBadCSR},
		{name: "TTL over max", csr: newCSR(t, key, nil), ttl: int64(91 * 24 * 3600), code: codes.InvalidArgument, reason: ca.ReasonTTL},
		{name: "TTL overflowing int64 nanoseconds", csr: newCSR(t, key, nil), ttl: 1 << 62, code: codes.InvalidArgument, reason: ca.ReasonTTL},
		{name: "negative TTL", csr: newCSR(t, key, nil), ttl: -5, code: codes.InvalidArgument, reason: ca.ReasonTTL},
		{name: "no credential", token: "-", csr: newCSR(t, key, nil), code: codes.Unauthenticated, reason: ca.ReasonUnauthenticated},
		{name: "unknown join token", token: ca.JoinTokenPrefix + "forged", csr: newCSR(t, key, nil), code: codes.Unauthenticated, reason: ca.ReasonTokenUnknown},
		{name: "client cert from a foreign root", token: "-", cert: &foreignCert.TLS, csr: newCSR(t, key, nil), code: codes.Unauthenticated, reason: ca.ReasonCallerCert},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			o := client.Options{}
			switch tt.token {
			case "":
				o.Token = e.token(t, "default", "sleep", time.Hour, 1)
			case "-":
			default:
				o.Token = tt.token
			}
			if tt.cert != nil {
				o.GetClientCertificate = withCert(tt.cert)
			}
			if tt.before != nil {
				tt.before()
			}
			_, err := pb.NewCertificateAuthorityClient(e.dial(t, o)).CreateCertificate(ctx, &pb.CreateCertificateRequest{Csr: tt.csr, TtlSeconds: tt.ttl})
			if err == nil {
				t.Fatal("signed an abusive request")
			}
			if got := status.Code(err); got != tt.code {
				t.Errorf("code %v, want %v (%v)", got, tt.code, err)
			}
			if got := control.ReasonFromError(err); got != tt.reason {
				t.Errorf("reason %q, want %q (%v)", got, tt.reason, err)
			}
			if msg := status.Convert(err).Message(); len(msg) < 20 {
				t.Errorf("message %q does not explain", msg)
			}
		})
	}
	if len(tests) < 10 {
		t.Fatal("the issue asks for at least 10 abuse cases")
	}
}

func pemToDER(p []byte) []byte {
	blk, _ := pem.Decode(p)
	return blk.Bytes
}

// TestRenewal: a workload renews with its current certificate over mTLS,
// for its own identity only; a revoked or expired certificate cannot renew.
func TestRenewal(t *testing.T) {
	e := start(t, nil)
	ctx := context.Background()
	cert, first := e.issueTLS(t, "default", "sleep")
	renew := pb.NewCertificateAuthorityClient(e.dial(t, client.Options{GetClientCertificate: withCert(cert)}))

	key := ecKey(t)
	resp, err := renew.CreateCertificate(ctx, &pb.CreateCertificateRequest{Csr: newCSR(t, key, nil), TtlSeconds: 3600})
	if err != nil {
		t.Fatalf("renewal: %v", err)
	}
	if resp.SpiffeId != sleep || resp.Serial == first.Serial {
		t.Fatalf("renewed %s serial %s", resp.SpiffeId, resp.Serial)
	}
	_, err = renew.CreateCertificate(ctx, &pb.CreateCertificateRequest{Csr: newCSR(t, key, &x509.CertificateRequest{URIs: uris("spiffe://cluster.local/ns/default/sa/httpbin")})})
	if control.ReasonFromError(err) != ca.ReasonIdentityMismatch {
		t.Fatalf("renewal for another identity: %v", err)
	}

	// Revoke the first certificate: it can no longer renew.
	if _, err := e.admin(t).Revoke(ctx, &pb.RevokeRequest{Serial: first.Serial, Reason: "test"}); err != nil {
		t.Fatal(err)
	}
	_, err = renew.CreateCertificate(ctx, &pb.CreateCertificateRequest{Csr: newCSR(t, key, nil)})
	if control.ReasonFromError(err) != ca.ReasonCallerCert || !strings.Contains(status.Convert(err).Message(), "revoked") {
		t.Fatalf("renewal with a revoked certificate: %v", err)
	}

	// The certificate renewed from it was revoked with it (see
	// TestRevokeSerialRevokesRenewals); another, unrevoked, certificate
	// works until it expires.
	renewed := tlsCert(t, resp.CertChain, key)
	renew2 := pb.NewCertificateAuthorityClient(e.dial(t, client.Options{GetClientCertificate: withCert(renewed)}))
	if _, err := renew2.CreateCertificate(ctx, &pb.CreateCertificateRequest{Csr: newCSR(t, key, nil)}); control.ReasonFromError(err) != ca.ReasonCallerCert {
		t.Fatalf("renewal with a certificate renewed from a revoked one: %v", err)
	}
	other, _ := e.issueTLS(t, "default", "sleep")
	renew2 = pb.NewCertificateAuthorityClient(e.dial(t, client.Options{GetClientCertificate: withCert(other)}))
	if _, err := renew2.CreateCertificate(ctx, &pb.CreateCertificateRequest{Csr: newCSR(t, key, nil), TtlSeconds: 3600}); err != nil {
		t.Fatal(err)
	}
	e.clk.add(25 * time.Hour)
	_, err = renew2.CreateCertificate(ctx, &pb.CreateCertificateRequest{Csr: newCSR(t, key, nil)})
	if control.ReasonFromError(err) != ca.ReasonCallerCert || !strings.Contains(status.Convert(err).Message(), "expired") {
		t.Fatalf("renewal with an expired certificate: %v", err)
	}
}

func TestAdminNeedsAdminToken(t *testing.T) {
	e := start(t, nil)
	ctx := context.Background()
	joinTok := e.token(t, "default", "sleep", time.Hour, 1)
	cert, _ := e.issueTLS(t, "default", "sleep")
	for name, o := range map[string]client.Options{
		"no credential": {},
		"join token":    {Token: joinTok},
		"wrong token":   {Token: "mat1.guess"},
		"workload mTLS": {GetClientCertificate: withCert(cert)},
	} {
		t.Run(name, func(t *testing.T) {
			adm := pb.NewAdminClient(e.dial(t, o))
			for what, call := range map[string]func() error{
				"CreateJoinToken": func() error {
					_, err := adm.CreateJoinToken(ctx, &pb.CreateJoinTokenRequest{Namespace: "default", ServiceAccount: "x"})
					return err
				},
				"Revoke":     func() error { _, err := adm.Revoke(ctx, &pb.RevokeRequest{SpiffeId: sleep}); return err },
				"RotateRoot": func() error { _, err := adm.RotateRoot(ctx, &pb.RotateRootRequest{}); return err },
				"CAStatus":   func() error { _, err := adm.CAStatus(ctx, &pb.CAStatusRequest{}); return err },
				"GetState":   func() error { _, err := adm.GetState(ctx, &pb.GetStateRequest{}); return err },
				"ListIssued": func() error { _, err := adm.ListIssued(ctx, &pb.ListIssuedRequest{}); return err },
			} {
				if err := call(); status.Code(err) != codes.Unauthenticated {
					t.Errorf("%s: %v, want Unauthenticated", what, err)
				}
			}
		})
	}
	// With the admin token the config methods reach the config plane
	// (plane.go attaches it to every Server).
	if _, err := e.admin(t).GetState(ctx, &pb.GetStateRequest{}); err != nil {
		t.Fatalf("GetState with the admin token: %v", err)
	}
}

// TestServerIdentity: clients accept the control plane only through the
// bundle and its SPIFFE ID.
func TestServerIdentity(t *testing.T) {
	e := start(t, nil)
	ctx := context.Background()
	other := catest.New(t)
	for name, o := range map[string]client.Options{
		"foreign roots":      {Roots: func() *identity.Bundle { return other.Bundle() }},
		"wrong trust domain": {TrustDomain: "example.org"},
	} {
		t.Run(name, func(t *testing.T) {
			o.Dir = e.dir
			conn, err := client.Dial(ctx, o)
			if err != nil {
				return // refused before dialing is fine too
			}
			defer conn.Close()
			cctx, cancel := context.WithTimeout(ctx, 5*time.Second)
			defer cancel()
			if _, err := pb.NewCertificateAuthorityClient(conn).GetTrustBundle(cctx, &pb.GetTrustBundleRequest{}); status.Code(err) != codes.Unavailable {
				t.Fatalf("connected to a server it should not trust: %v", err)
			}
		})
	}
	// The real one: the server presents spiffe://cluster.local/ns/meshauth-system/sa/meshd.
	b, err := pb.NewCertificateAuthorityClient(e.dial(t, client.Options{})).GetTrustBundle(ctx, &pb.GetTrustBundleRequest{})
	if err != nil || len(b.Roots) != 1 || b.TrustDomain != "cluster.local" {
		t.Fatalf("GetTrustBundle: %v %v", b, err)
	}
}

// TestWatchTrustBundle: a stream sees the bundle now, then each change
// (revocation, rotation) with a higher version.
func TestWatchTrustBundle(t *testing.T) {
	e := start(t, nil)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	_, issued := e.issueTLS(t, "default", "sleep")
	stream, err := pb.NewCertificateAuthorityClient(e.dial(t, client.Options{})).WatchTrustBundle(ctx, &pb.GetTrustBundleRequest{})
	if err != nil {
		t.Fatal(err)
	}
	b0, err := stream.Recv()
	if err != nil || len(b0.Roots) != 1 || len(b0.Revocations) != 0 {
		t.Fatalf("first bundle: %v %v", b0, err)
	}
	adm := e.admin(t)
	if _, err := adm.Revoke(ctx, &pb.RevokeRequest{SpiffeId: sleep, Reason: "test"}); err != nil {
		t.Fatal(err)
	}
	b1, err := stream.Recv()
	if err != nil || b1.Version <= b0.Version || len(b1.Revocations) != 1 || b1.Revocations[0].Serial != issued.Serial || b1.Revocations[0].Reason != "test" {
		t.Fatalf("after revoke: %v %v", b1, err)
	}
	if _, err := adm.RotateRoot(ctx, &pb.RotateRootRequest{OverlapSeconds: 60}); err != nil {
		t.Fatal(err)
	}
	b2, err := stream.Recv()
	if err != nil || b2.Version <= b1.Version || len(b2.Roots) != 2 {
		t.Fatalf("after rotate: %v %v", b2, err)
	}
	ib, err := sidecarapi.BundleFromProto(b2)
	if err != nil || !ib.IsRevoked(issued.Serial) || len(ib.Roots) != 2 {
		t.Fatalf("BundleFromProto: %v", err)
	}
}

// TestRotationOverTheAPI: during a rotation, certificates from the old and
// the new root both verify against the served bundle, and clients that
// trust either root set keep reaching the control plane.
func TestRotationOverTheAPI(t *testing.T) {
	e := start(t, func(c *control.Config) { c.TickInterval = 20 * time.Millisecond })
	ctx := context.Background()
	oldCert, _ := e.issueTLS(t, "default", "sleep")
	// A one-second overlap on the real clock: the clients in this test use
	// real time for the server's certificate, so the CA clock is not moved.
	rot, err := e.admin(t).RotateRoot(ctx, &pb.RotateRootRequest{OverlapSeconds: 1})
	if err != nil {
		t.Fatal(err)
	}
	// Wait for the tick to switch signing (the bundle's first root changes).
	deadline := time.Now().Add(10 * time.Second)
	for identity.Fingerprint(e.srv.CA().Bundle().Roots[0]) != rot.NewRootFingerprint {
		if time.Now().After(deadline) {
			t.Fatal("signing never switched to the new root")
		}
		time.Sleep(10 * time.Millisecond)
	}
	newCert, _ := e.issueTLS(t, "default", "httpbin")
	b, err := pb.NewCertificateAuthorityClient(e.dial(t, client.Options{})).GetTrustBundle(ctx, &pb.GetTrustBundleRequest{})
	if err != nil {
		t.Fatal(err)
	}
	bundle, err := sidecarapi.BundleFromProto(b)
	if err != nil {
		t.Fatal(err)
	}
	now := e.clk.now()
	for name, c := range map[string]*tls.Certificate{"old root": oldCert, "new root": newCert} {
		var chain []*x509.Certificate
		for _, d := range c.Certificate {
			x, _ := x509.ParseCertificate(d)
			chain = append(chain, x)
		}
		if _, err := bundle.Verify(chain, now); err != nil {
			t.Errorf("%s certificate against the rotation bundle: %v", name, err)
		}
	}
	if identity.Fingerprint(newCert.Leaf) == "" || newCert.Leaf.CheckSignatureFrom(bundle.Roots[0]) != nil {
		t.Error("new certificate not signed by the new root")
	}
	// A workload renewing with its old-root certificate still can.
	renew := pb.NewCertificateAuthorityClient(e.dial(t, client.Options{GetClientCertificate: withCert(oldCert)}))
	if _, err := renew.CreateCertificate(ctx, &pb.CreateCertificateRequest{Csr: newCSR(t, ecKey(t), nil)}); err != nil {
		t.Fatalf("renewal with an old-root certificate during rotation: %v", err)
	}
}

// TestShutdownEndsWatchStreams: stopping the server ends open bundle
// streams with Unavailable (so clients reconnect) instead of holding
// GracefulStop until its grace period.
func TestShutdownEndsWatchStreams(t *testing.T) {
	dir := t.TempDir()
	srv, err := control.New(control.Config{Dir: dir, Listen: "127.0.0.1:0", Log: quietLogger()})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- srv.Serve(ctx) }()
	for srv.Addr() == "" {
		time.Sleep(5 * time.Millisecond)
	}
	conn, err := client.Dial(context.Background(), client.Options{Dir: dir})
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	stream, err := pb.NewCertificateAuthorityClient(conn).WatchTrustBundle(context.Background(), &pb.GetTrustBundleRequest{})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := stream.Recv(); err != nil {
		t.Fatal(err)
	}
	cancel()
	if _, err := stream.Recv(); status.Code(err) != codes.Unavailable {
		t.Fatalf("stream after shutdown: %v, want Unavailable", err)
	}
	if err := <-done; err != nil {
		t.Fatalf("Serve: %v", err)
	}
	select {
	case <-srv.Stopping():
	default:
		t.Fatal("Stopping not closed")
	}
}

// TestListIssued: the issuance log over the Admin API says who got which
// certificate, how they proved it, and which are revoked; filters and the
// limit apply; a bad identity is refused with its reason.
func TestListIssued(t *testing.T) {
	e := start(t, nil)
	ctx := context.Background()
	_, first := e.issueTLS(t, "default", "sleep")
	e.clk.add(time.Second)
	_, second := e.issueTLS(t, "default", "sleep")
	e.clk.add(time.Second)
	_, other := e.issueTLS(t, "default", "httpbin")
	adm := e.admin(t)
	if _, err := adm.Revoke(ctx, &pb.RevokeRequest{Serial: first.Serial, Reason: "key compromise"}); err != nil {
		t.Fatal(err)
	}
	list := func(req *pb.ListIssuedRequest) ([]careport.IssuedEntry, int32) {
		t.Helper()
		resp, err := adm.ListIssued(ctx, req)
		if err != nil {
			t.Fatal(err)
		}
		return meshapi.IssuedFromProto(resp.Entries), resp.Matched
	}
	all, _ := list(&pb.ListIssuedRequest{SpiffeId: sleep})
	if len(all) != 2 || all[0].Serial != first.Serial || all[1].Serial != second.Serial {
		t.Fatalf("sleep's certificates = %+v, want %s then %s", all, first.Serial, second.Serial)
	}
	if !all[0].Revoked || all[0].RevokedReason != "key compromise" || all[1].Revoked {
		t.Errorf("revocation state = %+v", all)
	}
	if !strings.HasPrefix(all[0].Requester, "join_token:") {
		t.Errorf("requester = %q, want join_token:<id>", all[0].Requester)
	}
	newest, matched := list(&pb.ListIssuedRequest{Limit: 1})
	if len(newest) != 1 || newest[0].Serial != other.Serial || matched < 3 {
		t.Errorf("limit 1 = %+v (matched %d), want only %s", newest, matched, other.Serial)
	}
	e.clk.add(48 * time.Hour) // every workload certificate (24h) has expired
	if valid, _ := list(&pb.ListIssuedRequest{SpiffeId: sleep, OnlyValid: true}); len(valid) != 0 {
		t.Errorf("--valid after expiry = %+v", valid)
	}
	_, err := adm.ListIssued(ctx, &pb.ListIssuedRequest{SpiffeId: "spiffe://cluster.local/not-a-workload"})
	if status.Code(err) != codes.InvalidArgument || control.ReasonFromError(err) != "bad_identity" {
		t.Errorf("bad identity: %v", err)
	}
}
