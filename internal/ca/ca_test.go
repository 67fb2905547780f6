package ca_test

import (
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"io"
	"log/slog"
	"net/url"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"

	"github.com/meshauth/meshauth/internal/ca"
	"github.com/meshauth/meshauth/internal/identity"
)

// clock is a settable clock for CA tests.
type clock struct{ t atomic.Pointer[time.Time] }

func newClock(t time.Time) *clock { c := &clock{}; c.set(t); return c }
func (c *clock) now() time.Time   { return *c.t.Load() }
func (c *clock) set(t time.Time)  { c.t.Store(&t) }
func (c *clock) add(d time.Duration) {
	c.set(c.now().Add(d))
}

var t0 = time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)

func quietLog() *slog.Logger { return slog.New(slog.NewTextHandler(io.Discard, nil)) }

func newCA(t *testing.T, dir string, clk *clock, mod func(*ca.Config)) *ca.CA {
	t.Helper()
	cfg := ca.Config{Dir: dir, Clock: clk.now, Log: quietLog()}
	if mod != nil {
		mod(&cfg)
	}
	c, err := ca.New(cfg)
	if err != nil {
		t.Fatalf("ca.New: %v", err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

func csrFor(t testing.TB, key crypto.Signer, uris ...string) []byte {
	t.Helper()
	tmpl := &x509.CertificateRequest{}
	for _, u := range uris {
		pu, err := url.Parse(u)
		if err != nil {
			t.Fatal(err)
		}
		tmpl.URIs = append(tmpl.URIs, pu)
	}
	der, err := x509.CreateCertificateRequest(rand.Reader, tmpl, key)
	if err != nil {
		t.Fatal(err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE REQUEST", Bytes: der})
}

func ecKey(t testing.TB) *ecdsa.PrivateKey {
	t.Helper()
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	return k
}

func chainOf(t testing.TB, iss *ca.Issued) []*x509.Certificate {
	t.Helper()
	certs, err := identity.ParseCertsPEM([]byte(strings.Join(iss.ChainPEM, "")))
	if err != nil {
		t.Fatal(err)
	}
	return certs
}

var sleepID = identity.MustParse("spiffe://cluster.local/ns/default/sa/sleep")

func self(id identity.ID) ca.Caller { return ca.Caller{ID: id, Method: "test"} }

func TestWorkloadProfile(t *testing.T) {
	clk := newClock(t0)
	c := newCA(t, t.TempDir(), clk, nil)
	key := ecKey(t)
	iss, err := c.Sign(context.Background(), self(sleepID), csrFor(t, key), 0)
	if err != nil {
		t.Fatal(err)
	}
	chain := chainOf(t, iss)
	if len(chain) != 1 {
		t.Fatalf("self-signed root: chain has %d certs, want the leaf only", len(chain))
	}
	leaf := chain[0]
	checks := []struct {
		name string
		ok   bool
	}{
		{"one URI SAN, the caller's ID", len(leaf.URIs) == 1 && leaf.URIs[0].String() == sleepID.String()},
		{"no DNS/IP/email SANs", len(leaf.DNSNames)+len(leaf.IPAddresses)+len(leaf.EmailAddresses) == 0},
		{"serverAuth+clientAuth", len(leaf.ExtKeyUsage) == 2 && leaf.ExtKeyUsage[0] == x509.ExtKeyUsageServerAuth && leaf.ExtKeyUsage[1] == x509.ExtKeyUsageClientAuth},
		{"not a CA", !leaf.IsCA && leaf.BasicConstraintsValid},
		{"digitalSignature only for ECDSA", leaf.KeyUsage == x509.KeyUsageDigitalSignature},
		{"128-bit serial", leaf.SerialNumber.BitLen() > 120 && leaf.SerialNumber.BitLen() <= 128},
		{"serial reported in hex", iss.Serial == leaf.SerialNumber.Text(16)},
		{"NotBefore backdated 1m", leaf.NotBefore.Equal(t0.Add(-time.Minute))},
		{"NotAfter default 24h", leaf.NotAfter.Equal(t0.Add(24 * time.Hour))},
		{"key is the CSR's", leaf.PublicKey.(*ecdsa.PublicKey).Equal(key.Public())},
		{"roots returned", len(iss.RootsPEM) == 1},
	}
	for _, ch := range checks {
		if !ch.ok {
			t.Errorf("%s: failed (leaf %+v)", ch.name, leaf.URIs)
		}
	}
	// go-spiffe's own SVID checks accept it, with the bundle from the CA.
	td := spiffeid.RequireTrustDomainFromString("cluster.local")
	bundle := x509bundle.FromX509Authorities(td, c.Bundle().Roots)
	keyDER, _ := x509.MarshalPKCS8PrivateKey(key)
	svid, err := x509svid.ParseRaw(leaf.Raw, keyDER)
	if err != nil {
		t.Fatalf("x509svid.ParseRaw: %v", err)
	}
	if _, _, err := x509svid.Verify(svid.Certificates, bundle, x509svid.WithTime(t0)); err != nil {
		t.Fatalf("x509svid.Verify: %v", err)
	}
	if id, err := c.Bundle().Identity().Verify(chain, t0); err != nil || id != sleepID {
		t.Fatalf("identity Verify = %v, %v", id, err)
	}

	// TTL: explicit, maximum, over maximum.
	iss, err = c.Sign(context.Background(), self(sleepID), csrFor(t, key), 2*time.Hour)
	if err != nil || !iss.NotAfter.Equal(t0.Add(2*time.Hour)) {
		t.Fatalf("2h TTL: NotAfter %v, err %v", iss.NotAfter, err)
	}
	if _, err := c.Sign(context.Background(), self(sleepID), csrFor(t, key), 90*24*time.Hour); err != nil {
		t.Fatalf("max TTL refused: %v", err)
	}
	if _, err := c.Sign(context.Background(), self(sleepID), csrFor(t, key), 90*24*time.Hour+time.Second); !errors.Is(err, ca.ErrTTL) {
		t.Fatalf("over max TTL: %v", err)
	}
}

func TestNotAfterCappedByIssuer(t *testing.T) {
	clk := newClock(t0)
	// A root that expires in 2h: a 24h request gets a certificate that ends
	// with the root, never after it.
	c := newCA(t, t.TempDir(), clk, func(cfg *ca.Config) { cfg.RootTTL = 2 * time.Hour })
	iss, err := c.Sign(context.Background(), self(sleepID), csrFor(t, ecKey(t)), 0)
	if err != nil {
		t.Fatal(err)
	}
	if want := c.Bundle().Roots[0].NotAfter; !iss.NotAfter.Equal(want) {
		t.Fatalf("NotAfter %v, want the root's %v", iss.NotAfter, want)
	}
}

func TestRestartKeepsRoot(t *testing.T) {
	dir := t.TempDir()
	clk := newClock(t0)
	c1, err := ca.New(ca.Config{Dir: dir, Clock: clk.now, Log: quietLog()})
	if err != nil {
		t.Fatal(err)
	}
	root1 := c1.Bundle().Roots[0]
	iss, err := c1.Sign(context.Background(), self(sleepID), csrFor(t, ecKey(t)), 0)
	if err != nil {
		t.Fatal(err)
	}
	c1.Close()

	c2 := newCA(t, dir, clk, nil)
	if !c2.Bundle().Roots[0].Equal(root1) {
		t.Fatal("restart created a new root")
	}
	if _, err := c2.Bundle().Identity().Verify(chainOf(t, iss), t0); err != nil {
		t.Fatalf("certificate from before the restart: %v", err)
	}
	log, err := c2.IssuanceLog()
	if err != nil || len(log) != 1 || log[0].Serial != iss.Serial {
		t.Fatalf("issuance log after restart: %v %+v", err, log)
	}
	if log[0].Requester != "test" || log[0].SPIFFEID != sleepID.String() || log[0].NotAfter != iss.NotAfter.Unix() {
		t.Fatalf("log record %+v", log[0])
	}
	// Revocations survive a restart too.
	if _, _, err := c2.Revoke(iss.Serial, "", "test"); err != nil {
		t.Fatal(err)
	}
	v := c2.Bundle().Version
	c2.Close()
	c3 := newCA(t, dir, clk, nil)
	if !c3.Bundle().Identity().IsRevoked(iss.Serial) || c3.Bundle().Version != v {
		t.Fatalf("after restart: revoked=%v version %d, want %d", c3.Bundle().Identity().IsRevoked(iss.Serial), c3.Bundle().Version, v)
	}
	c3.Close()

	// A different trust domain on the same store is refused, not re-rooted.
	_, err = ca.New(ca.Config{Dir: dir, TrustDomain: "example.org", Clock: clk.now, Log: quietLog()})
	if err == nil || !strings.Contains(err.Error(), `created for trust domain "cluster.local"`) {
		t.Fatalf("trust domain change: %v", err)
	}
}

func TestRSARoot(t *testing.T) {
	c := newCA(t, t.TempDir(), newClock(t0), func(cfg *ca.Config) { cfg.KeyType = ca.KeyRSA2048 })
	if alg := c.Bundle().Roots[0].PublicKeyAlgorithm; alg != x509.RSA {
		t.Fatalf("root key %v, want RSA", alg)
	}
	iss, err := c.Sign(context.Background(), self(sleepID), csrFor(t, ecKey(t)), 0)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := c.Bundle().Identity().Verify(chainOf(t, iss), t0); err != nil {
		t.Fatal(err)
	}
	if _, err := ca.New(ca.Config{Dir: t.TempDir(), KeyType: "dsa"}); err == nil {
		t.Fatal("unknown key type accepted")
	}
}

// TestRotation walks a root rotation on a fake clock with no sidecar on
// the bundle stream (rotation_test.go has the ACK gate): the new root is
// trusted at once, signs after the minimum overlap, and the old root
// leaves only once everything it signed has expired. At every step certificates from
// both roots verify against the bundle.
func TestRotation(t *testing.T) {
	clk := newClock(t0)
	c := newCA(t, t.TempDir(), clk, nil)
	ctx := context.Background()
	sign := func() []*x509.Certificate {
		t.Helper()
		iss, err := c.Sign(ctx, self(sleepID), csrFor(t, ecKey(t)), 0)
		if err != nil {
			t.Fatal(err)
		}
		return chainOf(t, iss)
	}
	verify := func(what string, chain []*x509.Certificate) {
		t.Helper()
		if _, err := c.Bundle().Identity().Verify(chain, clk.now()); err != nil {
			t.Fatalf("%s: %v", what, err)
		}
	}
	oldRoot := c.Bundle().Roots[0]
	oldCert := sign()
	v1 := c.Bundle().Version

	rot, err := c.RotateRoot(30*time.Minute, "")
	if err != nil {
		t.Fatal(err)
	}
	b := c.Bundle()
	if len(b.Roots) != 2 || b.Version <= v1 || !b.Roots[0].Equal(oldRoot) {
		t.Fatalf("after rotate: %d roots, version %d, signing root first = %v", len(b.Roots), b.Version, b.Roots[0].Equal(oldRoot))
	}
	if !rot.MinOverlapUntil.Equal(t0.Add(30 * time.Minute)) {
		t.Fatalf("min overlap until %v", rot.MinOverlapUntil)
	}
	if _, err := c.RotateRoot(0, ""); err == nil {
		t.Fatal("second rotation while one is pending was accepted")
	}
	// During the overlap the old root still signs.
	during := sign()
	if during[0].CheckSignatureFrom(oldRoot) != nil {
		t.Fatal("signing switched before the overlap ended")
	}

	clk.add(31 * time.Minute)
	if err := c.Tick(); err != nil {
		t.Fatal(err)
	}
	newRoot := c.Bundle().Roots[0]
	if newRoot.Equal(oldRoot) || identity.Fingerprint(newRoot) != rot.NewRoot {
		t.Fatal("after the overlap the new root is not first in the bundle")
	}
	newCert := sign()
	if err := newCert[0].CheckSignatureFrom(newRoot); err != nil {
		t.Fatalf("after the switch: %v", err)
	}
	verify("old-root certificate during rotation", oldCert)
	verify("old-root certificate issued during overlap", during)
	verify("new-root certificate during rotation", newCert)

	// The old root stays while its last certificate (issued at t0, 24h) lives.
	clk.add(20 * time.Hour)
	if err := c.Tick(); err != nil {
		t.Fatal(err)
	}
	if len(c.Bundle().Roots) != 2 {
		t.Fatal("old root left the bundle while a certificate it signed is valid")
	}
	verify("old-root certificate late in its life", during)

	clk.add(5 * time.Hour) // t0+25h31m: everything the old root signed has expired
	if err := c.Tick(); err != nil {
		t.Fatal(err)
	}
	b = c.Bundle()
	if len(b.Roots) != 1 || !b.Roots[0].Equal(newRoot) {
		t.Fatalf("old root still in the bundle: %d roots", len(b.Roots))
	}
	verify("new-root certificate after the old root left", sign())
	st, err := c.Status()
	if err != nil || len(st.Roots) != 1 || st.Roots[0].State != "signing" {
		t.Fatalf("status: %v %+v", err, st)
	}
}

func TestRevoke(t *testing.T) {
	clk := newClock(t0)
	c := newCA(t, t.TempDir(), clk, nil)
	ctx := context.Background()
	other := identity.MustParse("spiffe://cluster.local/ns/default/sa/other")
	var sleepCerts [][]*x509.Certificate
	for range 3 {
		iss, err := c.Sign(ctx, self(sleepID), csrFor(t, ecKey(t)), 0)
		if err != nil {
			t.Fatal(err)
		}
		sleepCerts = append(sleepCerts, chainOf(t, iss))
	}
	iss, err := c.Sign(ctx, self(other), csrFor(t, ecKey(t)), time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	otherCert := chainOf(t, iss)

	_, watch := c.Watch()
	v0 := c.Bundle().Version
	revs, v1, err := c.Revoke(strings.ToUpper(iss.Serial), "", "key compromise")
	if err != nil || len(revs) != 1 || revs[0].Serial != iss.Serial || v1 != v0+1 {
		t.Fatalf("revoke serial: %v %+v v%d", err, revs, v1)
	}
	select {
	case <-watch:
	default:
		t.Fatal("Watch channel not closed on revocation")
	}
	if _, err := c.Bundle().Identity().Verify(otherCert, t0); !errors.Is(err, identity.ErrRevoked) {
		t.Fatalf("revoked cert verified: %v", err)
	}
	revs, _, err = c.Revoke("", sleepID.String(), "decommissioned")
	if err != nil || len(revs) != 3 {
		t.Fatalf("revoke identity: %v, %d revocations", err, len(revs))
	}
	for _, ch := range sleepCerts {
		if _, err := c.Bundle().Identity().Verify(ch, t0); !errors.Is(err, identity.ErrRevoked) {
			t.Fatalf("cert of revoked identity verified: %v", err)
		}
	}
	for name, args := range map[string][2]string{
		"unknown serial":   {"abcdef", ""},
		"unknown identity": {"", "spiffe://cluster.local/ns/x/sa/y"},
		"both":             {"abcdef", sleepID.String()},
		"neither":          {"", ""},
		"bad serial":       {"xyz", ""},
	} {
		if _, _, err := c.Revoke(args[0], args[1], ""); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
	// Revocations of expired certificates are pruned from the bundle.
	clk.add(2 * time.Hour)
	if err := c.Tick(); err != nil {
		t.Fatal(err)
	}
	if n := len(c.Bundle().Revocations); n != 3 {
		t.Fatalf("after the 1h cert expired: %d revocations, want 3", n)
	}
}

func TestJoinTokens(t *testing.T) {
	clk := newClock(t0)
	c := newCA(t, t.TempDir(), clk, nil)
	ctx := context.Background()
	auth := c.JoinTokenAuthenticator()

	tok, err := c.CreateJoinToken(sleepID, 10*time.Minute, 3)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.HasPrefix(tok.Secret, ca.JoinTokenPrefix) {
		t.Fatalf("token %q", tok.Secret)
	}
	// Concurrent spending: exactly Uses of 20 callers succeed, because the
	// use is spent in the transaction that logs the issuance.
	var ok, usedUp atomic.Int32
	var wg sync.WaitGroup
	for range 20 {
		wg.Go(func() {
			caller, err := auth.Authenticate(ctx, ca.Credentials{BearerToken: tok.Secret})
			if err == nil {
				_, err = c.Sign(ctx, caller, csrFor(t, ecKey(t)), 0)
			}
			switch {
			case err == nil:
				ok.Add(1)
			case errors.Is(err, ca.ErrTokenUsedUp):
				usedUp.Add(1)
			default:
				t.Errorf("unexpected: %v", err)
			}
		})
	}
	wg.Wait()
	if ok.Load() != 3 || usedUp.Load() != 17 {
		t.Fatalf("%d issued, %d used up; want 3 and 17", ok.Load(), usedUp.Load())
	}

	tok2, err := c.CreateJoinToken(sleepID, 10*time.Minute, 1)
	if err != nil {
		t.Fatal(err)
	}
	clk.add(11 * time.Minute)
	if _, err := auth.Authenticate(ctx, ca.Credentials{BearerToken: tok2.Secret}); !errors.Is(err, ca.ErrTokenExpired) {
		t.Fatalf("expired token: %v", err)
	}
	if _, err := auth.Authenticate(ctx, ca.Credentials{BearerToken: ca.JoinTokenPrefix + "nope"}); !errors.Is(err, ca.ErrTokenUnknown) {
		t.Fatalf("unknown token: %v", err)
	}
	if _, err := auth.Authenticate(ctx, ca.Credentials{BearerToken: "eyJhbGciOi..."}); !errors.Is(err, ca.ErrNoCredential) {
		t.Fatalf("a JWT must be left to the next authenticator: %v", err)
	}
	if _, err := c.CreateJoinToken(identity.MustParse("spiffe://other.td/ns/a/sa/b"), 0, 0); !errors.Is(err, ca.ErrForeignDomain) {
		t.Fatalf("foreign-domain token: %v", err)
	}
	// The secret is not in the store: only its hash.
	st, _ := c.Status()
	if st.JoinTokens != 2 {
		t.Fatalf("status counts %d tokens", st.JoinTokens)
	}
}

// TestJoinTokenUsesAcrossRestart: the store's use counter is what counts,
// across a restart, whatever the authenticator remembered.
func TestJoinTokenUsesAcrossRestart(t *testing.T) {
	clk := newClock(t0)
	dir := t.TempDir()
	ctx := context.Background()
	c := newCA(t, dir, clk, nil)
	tok, err := c.CreateJoinToken(sleepID, 10*time.Minute, 3)
	if err != nil {
		t.Fatal(err)
	}
	issue := func(c *ca.CA) error {
		caller, err := c.JoinTokenAuthenticator().Authenticate(ctx, ca.Credentials{BearerToken: tok.Secret})
		if err != nil {
			return err
		}
		_, err = c.Sign(ctx, caller, csrFor(t, ecKey(t)), 0)
		return err
	}
	for range 2 {
		if err := issue(c); err != nil {
			t.Fatal(err)
		}
	}
	c.Close()
	c = newCA(t, dir, clk, nil)
	if err := issue(c); err != nil {
		t.Fatalf("third use after restart: %v", err)
	}
	// Used up: the authenticator already knows, before any signing.
	if _, err := c.JoinTokenAuthenticator().Authenticate(ctx, ca.Credentials{BearerToken: tok.Secret}); !errors.Is(err, ca.ErrTokenUsedUp) {
		t.Fatalf("fourth use: %v", err)
	}
	c.Close()
	c = newCA(t, dir, clk, nil)
	if err := issue(c); !errors.Is(err, ca.ErrTokenUsedUp) {
		t.Fatalf("fourth use after restart: %v", err)
	}
	// A caller that passed the authenticator's check before the last use
	// was spent elsewhere is refused by the spend itself.
	tok2, err := c.CreateJoinToken(sleepID, 10*time.Minute, 1)
	if err != nil {
		t.Fatal(err)
	}
	auth := c.JoinTokenAuthenticator()
	a1, err1 := auth.Authenticate(ctx, ca.Credentials{BearerToken: tok2.Secret})
	a2, err2 := auth.Authenticate(ctx, ca.Credentials{BearerToken: tok2.Secret})
	if err1 != nil || err2 != nil {
		t.Fatal(err1, err2)
	}
	if _, err := c.Sign(ctx, a1, csrFor(t, ecKey(t)), 0); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Sign(ctx, a2, csrFor(t, ecKey(t)), 0); !errors.Is(err, ca.ErrTokenUsedUp) {
		t.Fatalf("second spend of a one-use token: %v", err)
	}
	// An expired token is refused even though the authenticator saw it.
	tok3, err := c.CreateJoinToken(sleepID, 10*time.Minute, 5)
	if err != nil {
		t.Fatal(err)
	}
	a3, err := auth.Authenticate(ctx, ca.Credentials{BearerToken: tok3.Secret})
	if err != nil {
		t.Fatal(err)
	}
	clk.add(11 * time.Minute)
	if _, err := c.Sign(ctx, a3, csrFor(t, ecKey(t)), 0); !errors.Is(err, ca.ErrTokenExpired) {
		t.Fatalf("expired token at the spend: %v", err)
	}
}

func TestMetrics(t *testing.T) {
	reg := prometheus.NewRegistry()
	c := newCA(t, t.TempDir(), newClock(t0), func(cfg *ca.Config) { cfg.Metrics = reg })
	ctx := context.Background()
	if _, err := c.Sign(ctx, self(sleepID), csrFor(t, ecKey(t)), 0); err != nil {
		t.Fatal(err)
	}
	c.Sign(ctx, self(sleepID), []byte("garbage"), 0)
	c.Sign(ctx, self(sleepID), csrFor(t, ecKey(t), "spiffe://cluster.local/ns/default/sa/other"), 0)
	want := `
# HELP meshauth_ca_issuances_total Certificate signing requests by result (issued, refused, error) and reason.
# TYPE meshauth_ca_issuances_total counter
meshauth_ca_issuances_total{reason="bad_csr",result="refused"} 1
meshauth_ca_issuances_total{reason="identity_mismatch",result="refused"} 1
meshauth_ca_issuances_total{reason="ok",result="issued"} 1
`
	if err := testutil.GatherAndCompare(reg, strings.NewReader(want), "meshauth_ca_issuances_total"); err != nil {
		t.Fatal(err)
	}
	if n := testutil.CollectAndCount(reg, "meshauth_ca_root_expiry_timestamp_seconds", "meshauth_ca_signing_cert_expiry_timestamp_seconds", "meshauth_ca_signing_seconds"); n != 3 {
		t.Fatalf("%d expiry/latency metrics", n)
	}
	mfs, _ := reg.Gather()
	for _, mf := range mfs {
		if mf.GetName() == "meshauth_ca_root_expiry_timestamp_seconds" {
			if got := mf.GetMetric()[0].GetGauge().GetValue(); got != float64(c.Bundle().Roots[0].NotAfter.Unix()) {
				t.Fatalf("root expiry gauge %v", got)
			}
		}
	}
}
