package ca_test

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/meshauth/meshauth/internal/ca"
	"github.com/meshauth/meshauth/internal/identity"
)

// TestImportRevocations: revocations made by another CA replica (serials
// not in this CA's log) are imported into the bundle, survive a restart,
// are idempotent, skip expired entries, and a malformed batch imports nothing.
func TestImportRevocations(t *testing.T) {
	clk := newClock(t0)
	dir := t.TempDir()
	a := newCA(t, t.TempDir(), clk, nil) // the replica that signed and revoked
	ctx := context.Background()
	iss, err := a.Sign(ctx, self(sleepID), csrFor(t, ecKey(t)), time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	if _, _, err := a.Revoke(iss.Serial, "", "key compromise"); err != nil {
		t.Fatal(err)
	}
	revs := a.Bundle().Revocations
	expired := ca.Revocation{Serial: "abc123", SPIFFEID: sleepID.String(), NotAfter: t0.Add(-time.Minute), RevokedAt: t0}

	b := newCA(t, dir, clk, nil)
	if _, _, err := b.ImportRevocations([]ca.Revocation{revs[0], {Serial: "00ff", NotAfter: t0.Add(time.Hour)}}); err == nil {
		t.Fatal("serial with a leading zero accepted")
	}
	if _, _, err := b.ImportRevocations([]ca.Revocation{{Serial: "ff", SPIFFEID: "spiffe://x/y", NotAfter: t0.Add(time.Hour)}}); err == nil {
		t.Fatal("malformed SPIFFE ID accepted")
	}
	if _, _, err := b.ImportRevocations([]ca.Revocation{{Serial: "ff"}}); err == nil {
		t.Fatal("revocation without not_after accepted")
	}
	if n := len(b.Bundle().Revocations); n != 0 {
		t.Fatalf("a refused batch left %d revocations", n)
	}
	v0 := b.Bundle().Version
	added, v1, err := b.ImportRevocations(append(revs, expired))
	if err != nil || len(added) != 1 || added[0].Serial != iss.Serial || v1 != v0+1 {
		t.Fatalf("import: %v %+v v%d (was v%d)", err, added, v1, v0)
	}
	// The other replica's certificate is refused by this replica's bundle.
	chain := chainOf(t, iss)
	// Both CAs have their own roots here, so check the serial directly.
	if _, ok := b.Bundle().Identity().Revoked[identity.SerialHex(chain[0])]; !ok {
		t.Fatalf("imported serial not in the bundle: %+v", b.Bundle().Identity().Revoked)
	}
	if _, err := a.Bundle().Identity().Verify(chain, t0); !errors.Is(err, identity.ErrRevoked) {
		t.Fatalf("sanity: the signer's bundle does not refuse its revoked cert: %v", err)
	}
	// Idempotent.
	if added, v2, err := b.ImportRevocations(revs); err != nil || len(added) != 0 || v2 != v1 {
		t.Fatalf("second import: %v %+v v%d", err, added, v2)
	}
	// Kept across a restart.
	b.Close()
	b2 := newCA(t, dir, clk, nil)
	if got := b2.Bundle().Revocations; len(got) != 1 || got[0].Serial != iss.Serial || got[0].Reason != "key compromise" {
		t.Fatalf("after restart: %+v", got)
	}
}

// TestRevokeIssuedBefore: another replica's revocation of an identity
// revokes what this CA signed for it up to that time, not after, not other
// identities; finding nothing is not an error.
func TestRevokeIssuedBefore(t *testing.T) {
	clk := newClock(t0)
	c := newCA(t, t.TempDir(), clk, nil)
	ctx := context.Background()
	sign := func(id identity.ID) string {
		iss, err := c.Sign(ctx, self(id), csrFor(t, ecKey(t)), time.Hour)
		if err != nil {
			t.Fatal(err)
		}
		return iss.Serial
	}
	other := identity.MustParse("spiffe://cluster.local/ns/default/sa/other")
	old, otherOld := sign(sleepID), sign(other)
	cut := clk.now()
	clk.add(time.Minute)
	fresh := sign(sleepID)
	added, _, err := c.RevokeIssuedBefore(sleepID.String(), cut, "replica a")
	if err != nil || len(added) != 1 || added[0].Serial != old || added[0].Reason != "replica a" {
		t.Fatalf("RevokeIssuedBefore = %+v, %v; want only %s", added, err, old)
	}
	rev := c.Bundle().Identity().Revoked
	if _, ok := rev[fresh]; ok {
		t.Error("a certificate issued after the cut was revoked")
	}
	if _, ok := rev[otherOld]; ok {
		t.Error("another identity's certificate was revoked")
	}
	if added, _, err := c.RevokeIssuedBefore("spiffe://cluster.local/ns/default/sa/ghost", cut, ""); err != nil || len(added) != 0 {
		t.Errorf("unknown identity: %+v, %v", added, err)
	}
	if _, _, err := c.RevokeIssuedBefore("not-an-id", cut, ""); err == nil {
		t.Error("malformed identity accepted")
	}
}

// TestIssuanceLogRetention: Tick prunes log records of certificates that
// expired more than LogRetention ago, keeps the others, and survives a
// restart with the pruned state; 0 keeps everything.
func TestIssuanceLogRetention(t *testing.T) {
	clk := newClock(t0)
	dir := t.TempDir()
	c := newCA(t, dir, clk, func(cfg *ca.Config) { cfg.LogRetention = 24 * time.Hour })
	ctx := context.Background()
	sign := func(ttl time.Duration) string {
		iss, err := c.Sign(ctx, self(sleepID), csrFor(t, ecKey(t)), ttl)
		if err != nil {
			t.Fatal(err)
		}
		return iss.Serial
	}
	short := sign(time.Hour)
	long := sign(72 * time.Hour)
	serials := func(c *ca.CA) map[string]bool {
		recs, err := c.IssuanceLog()
		if err != nil {
			t.Fatal(err)
		}
		out := map[string]bool{}
		for _, r := range recs {
			out[r.Serial] = true
		}
		return out
	}
	clk.add(2 * time.Hour) // short expired 1h ago: inside the retention
	if err := c.Tick(); err != nil {
		t.Fatal(err)
	}
	if s := serials(c); !s[short] || !s[long] {
		t.Fatalf("pruned inside the retention: %v", s)
	}
	clk.add(24 * time.Hour) // short expired 25h ago
	if err := c.Tick(); err != nil {
		t.Fatal(err)
	}
	if s := serials(c); s[short] || !s[long] {
		t.Fatalf("after the retention: %v, want only %s", s, long)
	}
	c.Close()
	c2 := newCA(t, dir, clk, nil) // LogRetention 0: keeps everything
	clk.add(30 * 24 * time.Hour)
	if err := c2.Tick(); err != nil {
		t.Fatal(err)
	}
	if s := serials(c2); s[short] || !s[long] {
		t.Fatalf("after restart with retention 0: %v", s)
	}
}
