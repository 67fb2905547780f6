package ca_test

import (
	"context"
	"errors"
	"slices"
	"testing"
	"time"

	"github.com/meshauth/meshauth/internal/ca"
	"github.com/meshauth/meshauth/internal/identity"
)

// renewer authenticates the holder of iss the way the control plane does
// for a renewal over mTLS.
func renewer(t *testing.T, c *ca.CA, iss *ca.Issued) ca.Caller {
	t.Helper()
	caller, err := ca.Authenticate(context.Background(), ca.Credentials{PeerCertificates: chainOf(t, iss)}, c.MTLSAuthenticator())
	if err != nil {
		t.Fatalf("authenticate with %s: %v", iss.Serial, err)
	}
	return caller
}

func serials(rs []ca.Revocation) []string {
	var out []string
	for _, r := range rs {
		out = append(out, r.Serial)
	}
	return out
}

// TestRenewalRacingRevocation (issue 11, finding 2): whichever way a
// renewal and the revocation of the certificate it presented interleave,
// nothing renewed from the revoked certificate stays valid. A renewal
// committed before the revocation is revoked with it; one authenticated
// before the revocation but committing after it is refused.
func TestRenewalRacingRevocation(t *testing.T) {
	clk := newClock(t0)
	c := newCA(t, t.TempDir(), clk, nil)
	ctx := context.Background()
	stolen, err := c.Sign(ctx, self(sleepID), csrFor(t, ecKey(t)), 0)
	if err != nil {
		t.Fatal(err)
	}
	caller := renewer(t, c, stolen) // verified, not revoked: the renewal is under way
	before, err := c.Sign(ctx, caller, csrFor(t, ecKey(t)), 0)
	if err != nil {
		t.Fatal(err)
	}
	grand, err := c.Sign(ctx, renewer(t, c, before), csrFor(t, ecKey(t)), 0)
	if err != nil {
		t.Fatal(err)
	}

	revs, _, err := c.Revoke(stolen.Serial, "", "key compromise")
	if err != nil {
		t.Fatal(err)
	}
	if want := []string{stolen.Serial, before.Serial, grand.Serial}; !slices.Equal(serials(revs), want) {
		t.Fatalf("revoked %v, want %v", serials(revs), want)
	}
	if revs[2].Reason != "renewed from revoked "+before.Serial+": key compromise" {
		t.Fatalf("reason of the grandchild's revocation: %q", revs[2].Reason)
	}
	for _, iss := range []*ca.Issued{before, grand} {
		if _, err := c.Bundle().Identity().Verify(chainOf(t, iss), t0); !errors.Is(err, identity.ErrRevoked) {
			t.Fatalf("certificate renewed from the revoked one verifies: %v", err)
		}
	}

	n0 := len(mustLog(t, c))
	_, err = c.Sign(ctx, caller, csrFor(t, ecKey(t)), 0)
	if !errors.Is(err, ca.ErrCallerCertInvalid) {
		t.Fatalf("renewal committing after the revocation of its certificate: %v", err)
	}
	if n := len(mustLog(t, c)); n != n0 {
		t.Fatalf("the refused renewal is in the issuance log (%d records, was %d)", n, n0)
	}
}

func mustLog(t *testing.T, c *ca.CA) []ca.IssuanceRecord {
	t.Helper()
	l, err := c.IssuanceLog()
	if err != nil {
		t.Fatal(err)
	}
	return l
}

// TestReplicaRenewalLineage: two replicas signing with the same plugged-in
// CA (as kube-control's do). A certificate one signed is renewed at the
// other, which does not have it in its log: the renewal keeps the lifetime
// the presented certificate had, no more. (Revoking across replicas, with
// the lineage, is internal/kube's TestSecretStoreLineage.)
func TestReplicaRenewalLineage(t *testing.T) {
	cacerts, _ := opensslCA(t)
	// Two minutes on, so that NotBefore is backdated normally rather than
	// clamped to the fresh intermediate's own NotBefore (which would make
	// the presented lifetime, and so the cap, a few seconds shorter).
	clk := newClock(time.Now().Add(2 * time.Minute))
	a := newCA(t, t.TempDir(), clk, func(c *ca.Config) { c.CACertsDir = cacerts })
	b := newCA(t, t.TempDir(), clk, func(c *ca.Config) { c.CACertsDir = cacerts })
	ctx := context.Background()
	p, err := a.Sign(ctx, self(sleepID), csrFor(t, ecKey(t)), 48*time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	caller := renewer(t, b, p)
	if _, err := b.Sign(ctx, caller, csrFor(t, ecKey(t)), 48*time.Hour+time.Second); !errors.Is(err, ca.ErrTTL) {
		t.Fatalf("renewal at the other replica above the presented lifetime: %v", err)
	}
	child, err := b.Sign(ctx, caller, csrFor(t, ecKey(t)), 48*time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	if child.NotAfter.Sub(child.NotBefore) > p.NotAfter.Sub(p.NotBefore) {
		t.Fatalf("the renewal at the other replica outlives the presented certificate: %s > %s", child.NotAfter.Sub(child.NotBefore), p.NotAfter.Sub(p.NotBefore))
	}
}

// TestReservedIdentity: a reserved identity (the control plane's) is
// signed only for the CA's own process, never for a join token, a
// renewal, or a controller acting for a ServiceAccount.
func TestReservedIdentity(t *testing.T) {
	clk := newClock(t0)
	cp := identity.MustParse("spiffe://cluster.local/ns/meshauth-system/sa/meshd")
	c := newCA(t, t.TempDir(), clk, func(c *ca.Config) { c.Reserved = []identity.ID{cp} })
	ctx := context.Background()
	if _, err := c.CreateJoinToken(cp, 0, 0); ca.ReasonOf(err) != ca.ReasonReservedIdentity {
		t.Fatalf("join token for the reserved identity: %v", err)
	}
	own, err := c.Sign(ctx, ca.Caller{ID: cp, Method: "self"}, csrFor(t, ecKey(t)), 0)
	if err != nil {
		t.Fatalf("the control plane's own certificate: %v", err)
	}
	for name, caller := range map[string]ca.Caller{
		"renewal":           renewer(t, c, own),
		"secret controller": {ID: cp, Method: "self", Subject: "secret-controller"},
		"k8s token":         {ID: cp, Method: "k8s_token", Subject: "uid"},
	} {
		if _, err := c.Sign(ctx, caller, csrFor(t, ecKey(t)), 0); ca.ReasonOf(err) != ca.ReasonReservedIdentity {
			t.Errorf("%s: %v", name, err)
		}
	}
}
