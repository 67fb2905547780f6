package identity_test

import (
	"crypto/x509"
	"errors"
	"testing"
	"time"

	"github.com/meshauth/meshauth/internal/ca/catest"
	"github.com/meshauth/meshauth/internal/identity"
)

func TestBundleVerify(t *testing.T) {
	now := time.Date(2026, 6, 1, 12, 0, 0, 0, time.UTC)
	const sleep = "spiffe://cluster.local/ns/default/sa/sleep"
	ca := catest.New(t, catest.WithNow(now))
	inter := catest.New(t, catest.WithNow(now), catest.WithIntermediate())
	foreign := catest.New(t, catest.WithNow(now))

	good := ca.Issue(t, sleep)
	revoked := ca.Issue(t, sleep)

	tests := []struct {
		name   string
		bundle *identity.Bundle
		chain  []*x509.Certificate
		want   error // nil means success
		reason string
		wantID string
		atTime time.Time
	}{
		{name: "valid", bundle: ca.Bundle(), chain: good.Chain, wantID: sleep, reason: "ok"},
		{name: "valid through intermediate", bundle: inter.Bundle(), chain: inter.Issue(t, sleep).Chain, wantID: sleep, reason: "ok"},
		{name: "intermediate missing from chain", bundle: inter.Bundle(), chain: inter.Issue(t, sleep).Chain[:1], want: identity.ErrUntrustedChain, reason: "untrusted_chain"},
		{name: "empty chain", bundle: ca.Bundle(), chain: nil, want: identity.ErrNoCertificate, reason: "no_client_cert"},
		{name: "expired", bundle: ca.Bundle(), chain: ca.Issue(t, sleep, catest.Validity(now.Add(-2*time.Hour), now.Add(-time.Hour))).Chain, want: identity.ErrExpired, reason: "expired"},
		{name: "not yet valid", bundle: ca.Bundle(), chain: ca.Issue(t, sleep, catest.Validity(now.Add(time.Hour), now.Add(2*time.Hour))).Chain, want: identity.ErrNotYetValid, reason: "not_yet_valid"},
		{name: "valid later in its life", bundle: ca.Bundle(), chain: good.Chain, atTime: now.Add(23 * time.Hour), wantID: sleep, reason: "ok"},
		{name: "no URI SAN", bundle: ca.Bundle(), chain: ca.Issue(t, sleep, catest.NoURISAN()).Chain, want: identity.ErrNoSPIFFEID, reason: "no_spiffe_id"},
		{name: "two URI SANs", bundle: ca.Bundle(), chain: ca.Issue(t, sleep, catest.ExtraURIs("spiffe://cluster.local/ns/default/sa/other")).Chain, want: identity.ErrNoSPIFFEID, reason: "no_spiffe_id"},
		{name: "https URI SAN", bundle: ca.Bundle(), chain: ca.Issue(t, "https://cluster.local/ns/default/sa/sleep").Chain, want: identity.ErrNoSPIFFEID, reason: "no_spiffe_id"},
		{name: "foreign trust domain", bundle: ca.Bundle(), chain: ca.Issue(t, "spiffe://evil.example/ns/default/sa/sleep").Chain, want: identity.ErrForeignTrustDomain, reason: "foreign_trust_domain"},
		{name: "foreign root", bundle: ca.Bundle(), chain: foreign.Issue(t, sleep).Chain, want: identity.ErrUntrustedChain, reason: "untrusted_chain"},
		{name: "leaf is a CA", bundle: ca.Bundle(), chain: ca.Issue(t, sleep, catest.AsCA()).Chain, want: identity.ErrUntrustedChain, reason: "untrusted_chain"},
		{name: "not a workload path", bundle: ca.Bundle(), chain: ca.Issue(t, "spiffe://cluster.local/agent/x").Chain, want: identity.ErrNotWorkloadID, reason: "not_workload_id"},
		{name: "revoked", bundle: ca.Bundle(revoked), chain: revoked.Chain, want: identity.ErrRevoked, reason: "revoked"},
		{name: "other serial revoked", bundle: ca.Bundle(revoked), chain: good.Chain, wantID: sleep, reason: "ok"},
		{name: "rotation: old root cert against two-root bundle", bundle: ca.BundleWith(2, []*catest.CA{foreign}), chain: good.Chain, wantID: sleep, reason: "ok"},
		{name: "rotation: new root cert against two-root bundle", bundle: ca.BundleWith(2, []*catest.CA{foreign}), chain: foreign.Issue(t, sleep).Chain, wantID: sleep, reason: "ok"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			at := now
			if !tt.atTime.IsZero() {
				at = tt.atTime
			}
			id, err := tt.bundle.Verify(tt.chain, at)
			if got := identity.Reason(err); got != tt.reason {
				t.Errorf("Reason = %q, want %q (err %v)", got, tt.reason, err)
			}
			if tt.want != nil {
				if !errors.Is(err, tt.want) {
					t.Fatalf("Verify error = %v, want %v", err, tt.want)
				}
				if !id.IsZero() {
					t.Fatalf("Verify returned %v with an error", id)
				}
				return
			}
			if err != nil {
				t.Fatalf("Verify: %v", err)
			}
			if id.String() != tt.wantID {
				t.Fatalf("Verify = %v, want %s", id, tt.wantID)
			}
		})
	}
}

func TestNewBundle(t *testing.T) {
	a, b := catest.New(t), catest.New(t)
	bundle, err := identity.NewBundle("cluster.local", 7, []string{string(a.RootPEM()), string(b.RootPEM())}, nil)
	if err != nil {
		t.Fatal(err)
	}
	if len(bundle.Roots) != 2 || bundle.Version != 7 || bundle.Revoked == nil {
		t.Fatalf("bundle = %+v", bundle)
	}
	// RootsPEM round-trips through ParseCertsPEM in order.
	certs, err := identity.ParseCertsPEM(bundle.RootsPEM())
	if err != nil || len(certs) != 2 || !certs[0].Equal(a.Root) || !certs[1].Equal(b.Root) {
		t.Fatalf("RootsPEM round trip: %v, %d certs", err, len(certs))
	}
	if got := bundle.X509Bundle().X509Authorities(); len(got) != 2 {
		t.Fatalf("X509Bundle has %d authorities", len(got))
	}
	if identity.Fingerprint(a.Root) == identity.Fingerprint(b.Root) || len(identity.Fingerprint(a.Root)) != 64 {
		t.Fatal("fingerprints wrong")
	}

	for name, in := range map[string][]string{
		"no roots":    nil,
		"not PEM":     {"hello"},
		"corrupt DER": {"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n"},
	} {
		t.Run(name, func(t *testing.T) {
			if _, err := identity.NewBundle("cluster.local", 1, in, nil); err == nil {
				t.Fatal("NewBundle accepted bad roots")
			}
		})
	}
}

// TestCatestFiles checks that the catest helper's files are what the sidecar
// expects to read: a chain that parses and a key that matches.
func TestCatestFiles(t *testing.T) {
	ca := catest.New(t, catest.WithIntermediate())
	c := ca.Issue(t, "spiffe://cluster.local/ns/default/sa/sleep")
	certs, err := identity.ParseCertsPEM(c.ChainPEM)
	if err != nil || len(certs) != 2 {
		t.Fatalf("chain PEM: %v (%d certs)", err, len(certs))
	}
	if c.TLS.Leaf != c.Leaf || len(c.TLS.Certificate) != 2 {
		t.Fatal("tls.Certificate not filled")
	}
	if id, err := ca.Bundle().Verify(certs, ca.Now); err != nil || id.ServiceAccount != "sleep" {
		t.Fatalf("verify parsed chain: %v %v", id, err)
	}
}
