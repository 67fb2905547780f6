package agent_test

import (
	"context"
	"errors"
	"sync/atomic"
	"testing"
	"time"

	"github.com/meshauth/meshauth/internal/agent"
	"github.com/meshauth/meshauth/internal/ca"
	"github.com/meshauth/meshauth/internal/identity"
)

// downCA is a real CA client that the test can take down: while down,
// Sign fails as a CA that cannot be reached does (no gRPC status, so the
// agent retries with backoff).
type downCA struct {
	agent.CA
	down atomic.Bool
}

func (d *downCA) Sign(ctx context.Context, csr []byte, ttl time.Duration, bootstrap bool) ([]byte, []string, error) {
	if d.down.Load() {
		return nil, nil, errors.New("connect to CA: connection refused (test: the CA is down)")
	}
	return d.CA.Sign(ctx, csr, ttl, bootstrap)
}

// TestRetryNeverSleepsPastExpiry (issue #17, found by the chaos suite): while
// the CA is unreachable the agent backs off exponentially up to MaxBackoff
// (30 s). It used to do so whatever its certificate's remaining life, so a
// 1-minute certificate whose renewal failed for 20 s had its next attempt
// scheduled after its expiry: a control plane back within the
// certificate's life still found the sidecar's certificate expired. Every
// retry must now be scheduled before the current certificate expires.
func TestRetryNeverSleepsPastExpiry(t *testing.T) {
	if testing.Short() {
		t.Skip("runs a control plane")
	}
	clock := newFakeClock(time.Now().Truncate(time.Second))
	srv := newClockedControlPlane(t, clock.Now, ca.Config{})
	id := identity.MustParse("spiffe://cluster.local/ns/default/sa/outage")
	tok, err := srv.CA().CreateJoinToken(id, time.Hour, 1)
	if err != nil {
		t.Fatal(err)
	}
	var dca *downCA
	a := startClockedAgent(t, srv, clock, id, tok.Secret, time.Minute, func(c *agent.Config) {
		dca = &downCA{CA: c.CA}
		c.CA = dca
	})
	waitFor(t, func() bool { return a.Store().SVID() != nil }, "first certificate")
	notAfter := a.Store().SVID().NotAfter()
	dca.down.Store(true) // from now on every renewal fails
	since, retries := 0, 0
	for {
		at, calls, ok := clock.next(since, 10*time.Second)
		if !ok {
			t.Fatal("the agent stopped waiting on its clock")
		}
		if !clock.Now().Before(notAfter) {
			break // expired: nothing left to save
		}
		if at.After(notAfter) {
			t.Fatalf("at %s (certificate valid until %s, %s left) the agent's next attempt is at %s, after the expiry: a CA back before then finds the certificate expired (%d failed retries so far)",
				clock.Now().Format(time.RFC3339Nano), notAfter.Format(time.RFC3339), notAfter.Sub(clock.Now()), at.Format(time.RFC3339Nano), retries)
		}
		retries++
		since = calls
		clock.advance(at)
	}
	t.Logf("%d attempts, each scheduled before the certificate's expiry", retries)
}
