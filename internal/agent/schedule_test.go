package agent_test

import (
	"context"
	"crypto/tls"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/meshauth/meshauth/internal/agent"
	"github.com/meshauth/meshauth/internal/ca"
	"github.com/meshauth/meshauth/internal/client"
	"github.com/meshauth/meshauth/internal/control"
	"github.com/meshauth/meshauth/internal/control/controltest"
	"github.com/meshauth/meshauth/internal/identity"
	"github.com/meshauth/meshauth/internal/sidecar"
	"google.golang.org/grpc"
)

// fakeClock is the agent's and the CA's clock in the schedule tests: time
// moves only when the test advances it, to the next time somebody waits
// for. It is a fake only of time; the CA, gRPC and TLS are real.
type fakeClock struct {
	mu      sync.Mutex
	now     time.Time
	waiters []fakeWaiter
	calls   int // After calls so far
	changed chan struct{}
}

type fakeWaiter struct {
	at   time.Time
	ch   chan time.Time
	call int
}

func newFakeClock(t0 time.Time) *fakeClock {
	return &fakeClock{now: t0, changed: make(chan struct{})}
}

func (c *fakeClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

func (c *fakeClock) After(d time.Duration) <-chan time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	ch := make(chan time.Time, 1)
	c.calls++
	if d <= 0 {
		ch <- c.now
		return ch
	}
	c.waiters = append(c.waiters, fakeWaiter{at: c.now.Add(d), ch: ch, call: c.calls})
	close(c.changed)
	c.changed = make(chan struct{})
	return ch
}

// next waits (in real time, up to limit) for a waiter registered after
// call number since, and returns the earliest such deadline and the call
// count. ok is false if nobody waited in time.
func (c *fakeClock) next(since int, limit time.Duration) (at time.Time, calls int, ok bool) {
	deadline := time.After(limit)
	for {
		c.mu.Lock()
		ch := c.changed
		found := false
		for _, w := range c.waiters {
			if w.call > since && (!found || w.at.Before(at)) {
				at, found = w.at, true
			}
		}
		calls = c.calls
		c.mu.Unlock()
		if found {
			return at, calls, true
		}
		select {
		case <-ch:
		case <-deadline:
			return time.Time{}, calls, false
		}
	}
}

// advance sets the clock to t and fires every waiter due by then.
func (c *fakeClock) advance(t time.Time) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.now = t
	keep := c.waiters[:0]
	for _, w := range c.waiters {
		if w.at.After(t) {
			keep = append(keep, w)
			continue
		}
		w.ch <- t
	}
	c.waiters = keep
}

// newClockedControlPlane starts a real control plane whose CA runs on clock.
func newClockedControlPlane(t *testing.T, clock func() time.Time, caCfg ca.Config) *control.Server {
	t.Helper()
	return controltest.Start(t, control.Config{Clock: clock, CA: caCfg})
}

// connectTo is the sidecar's gRPC CA client to srv, with the join token
// from tokens.
func connectTo(t *testing.T, srv *control.Server, dir string, store *agent.Store, tokens *agent.TokenSource) agent.CA {
	roots, err := client.LoadRoots(dir, "")
	if err != nil {
		t.Fatal(err)
	}
	return sidecar.GRPCCA{Dial: func(ctx context.Context, bootstrap bool) (*grpc.ClientConn, error) {
		o := client.Options{Dir: dir, Addr: srv.Addr(), Roots: func() *identity.Bundle {
			if b := store.Bundle(); b != nil {
				return b
			}
			return roots
		}}
		if !bootstrap {
			o.GetClientCertificate = func(*tls.CertificateRequestInfo) (*tls.Certificate, error) { return currentCert(store), nil }
		} else {
			tok, err := tokens.Token()
			if err != nil {
				return nil, err
			}
			o.Token = tok
		}
		return client.Dial(ctx, o)
	}}
}

// currentCert is the certificate the agent presents: store's, or none.
func currentCert(store *agent.Store) *tls.Certificate {
	if s := store.SVID(); s != nil {
		return s.TLS
	}
	return &tls.Certificate{}
}

func issuedTo(t *testing.T, srv *control.Server, id identity.ID) int {
	t.Helper()
	recs, err := srv.CA().IssuanceLog()
	if err != nil {
		t.Fatal(err)
	}
	n := 0
	for _, r := range recs {
		if r.SPIFFEID == id.String() {
			n++
		}
	}
	return n
}

// startClockedAgent runs an agent configured as `meshd sidecar` configures
// it (only ID, Dir, Connect, Store, TTL, Tokens set: renewal fraction,
// jitter, minimum interval and backoff are the agent's defaults) on clock.
func startClockedAgent(t *testing.T, srv *control.Server, clock *fakeClock, id identity.ID, token string, ttl time.Duration, opts ...func(*agent.Config)) *agent.Agent {
	t.Helper()
	tokens, err := agent.NewTokenSource(token, "")
	if err != nil {
		t.Fatal(err)
	}
	store := agent.NewStore(agent.StoreConfig{Want: id, Now: clock.Now})
	cfg := agent.Config{
		ID: id, NoFiles: true, CA: connectTo(t, srv, srv.Dir(), store, tokens), Store: store, TTL: ttl, Tokens: tokens,
		Now: clock.Now, After: clock.After,
	}
	for _, o := range opts {
		o(&cfg)
	}
	a, err := agent.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { a.Run(ctx); close(done) }()
	t.Cleanup(func() { cancel(); <-done })
	return a
}

// TestRenewalRateShortTTL: with --cert-ttl 1m an agent renews about every
// 30s (half the lifetime, +-10%), counted as issuances at a real CA over five
// minutes of (fake) time, and never lets its certificate expire. The CA
// back-dates NotBefore by a minute, so an agent that counted the lifetime
// from NotBefore reached "half" at the issuance itself and renewed in a
// tight loop (~60 CreateCertificate calls a second, issue #11).
func TestRenewalRateShortTTL(t *testing.T) {
	// One bootstrap, then one renewal every 24-36s: 9 to 13 in 300s.
	testRenewalRate(t, 9, 13)
}

// TestRenewalRateFloor: whatever the lifetime and fraction, an agent asks
// for at most one certificate per MinRenewInterval (10s by default): here
// the renewal time is 0.6s after issuance, and five minutes see at most 31
// certificates, not 500.
func TestRenewalRateFloor(t *testing.T) {
	testRenewalRate(t, 25, 31, func(c *agent.Config) { c.RenewFraction = 0.01; c.Jitter = -1 })
}

func testRenewalRate(t *testing.T, low, high int, opts ...func(*agent.Config)) {
	if testing.Short() {
		t.Skip("runs a control plane")
	}
	clock := newFakeClock(time.Now().Truncate(time.Second))
	srv := newClockedControlPlane(t, clock.Now, ca.Config{})
	id := identity.MustParse("spiffe://cluster.local/ns/default/sa/short")
	tok, err := srv.CA().CreateJoinToken(id, time.Hour, 1)
	if err != nil {
		t.Fatal(err)
	}
	const ttl = time.Minute
	const window = 5 * time.Minute
	a := startClockedAgent(t, srv, clock, id, tok.Secret, ttl, opts...)
	t0 := clock.Now()
	end := t0.Add(window)
	since := 0
	for {
		at, calls, ok := clock.next(since, 10*time.Second)
		if !ok {
			t.Fatalf("the agent did not wait for its renewal time within 10s of real time; it made %d CreateCertificate calls meanwhile (a tight renewal loop)", issuedTo(t, srv, id))
		}
		if n := issuedTo(t, srv, id); n > 2*high {
			t.Fatalf("%d certificates issued by %s (%s of fake time): renewal is not rate-bounded", n, clock.Now().Sub(t0), window)
		}
		if s := a.Store().SVID(); s != nil && !at.Before(s.NotAfter()) {
			t.Fatalf("next wake-up %s is not before the certificate's expiry %s", at.Format(time.RFC3339), s.NotAfter().Format(time.RFC3339))
		}
		if at.After(end) {
			break
		}
		since = calls
		clock.advance(at)
	}
	n := issuedTo(t, srv, id)
	t.Logf("%d certificates issued in %s of fake time with TTL %s", n, window, ttl)
	if n < low || n > high {
		t.Fatalf("%d certificates issued in %s with TTL %s, want %d-%d", n, window, ttl, low, high)
	}
}

// TestRenewalScheduleFromIssuance: the renewal time is counted from the
// issuance, not from the back-dated NotBefore: with a 1-minute TTL the
// certificate is due 24-36s after it was issued (and NotBefore is a minute
// before the issuance).
func TestRenewalScheduleFromIssuance(t *testing.T) {
	if testing.Short() {
		t.Skip("runs a control plane")
	}
	clock := newFakeClock(time.Now().Truncate(time.Second))
	srv := newClockedControlPlane(t, clock.Now, ca.Config{})
	id := identity.MustParse("spiffe://cluster.local/ns/default/sa/short")
	tok, err := srv.CA().CreateJoinToken(id, time.Hour, 1)
	if err != nil {
		t.Fatal(err)
	}
	t0 := clock.Now()
	a := startClockedAgent(t, srv, clock, id, tok.Secret, time.Minute)
	waitFor(t, func() bool { return a.Store().SVID() != nil }, "first certificate")
	leaf := a.Store().SVID().Leaf()
	if !leaf.NotBefore.Before(t0) {
		t.Fatalf("NotBefore %s is not back-dated before the issuance %s", leaf.NotBefore, t0)
	}
	got := a.RenewAt().Sub(t0)
	t.Logf("issued at t0, NotBefore t0-%s, NotAfter t0+%s, renewal at t0+%s", t0.Sub(leaf.NotBefore), leaf.NotAfter.Sub(t0), got)
	if got < 24*time.Second || got > 36*time.Second {
		t.Fatalf("renewal %s after issuance, want 24s-36s (half of the 1m lifetime +-10%%)", got)
	}
}

// TestRenewalJitterSpreadsFleet: agents started at the same instant, as
// `meshd sidecar` configures them (no jitter given), get renewal times
// spread over the +-10% window, not one instant for the whole fleet.
func TestRenewalJitterSpreadsFleet(t *testing.T) {
	if testing.Short() {
		t.Skip("runs a control plane")
	}
	clock := newFakeClock(time.Now().Truncate(time.Second))
	srv := newClockedControlPlane(t, clock.Now, ca.Config{})
	id := identity.MustParse("spiffe://cluster.local/ns/default/sa/fleet")
	const n = 12
	tok, err := srv.CA().CreateJoinToken(id, time.Hour, n)
	if err != nil {
		t.Fatal(err)
	}
	const ttl = time.Hour
	t0 := clock.Now()
	var agents []*agent.Agent
	for i := 0; i < n; i++ {
		agents = append(agents, startClockedAgent(t, srv, clock, id, tok.Secret, ttl))
	}
	var offsets []time.Duration
	for _, a := range agents {
		waitFor(t, func() bool { return a.Store().SVID() != nil }, "certificates for the fleet")
		d := a.RenewAt().Sub(t0)
		if d < 24*time.Minute || d > 36*time.Minute {
			t.Errorf("renewal at t0+%s, want within 30m +-10%% of the 1h lifetime", d)
		}
		offsets = append(offsets, d)
	}
	slices.Sort(offsets)
	spread := offsets[n-1] - offsets[0]
	t.Logf("renewal offsets: %v (spread %s)", offsets, spread)
	// Uniform over 12 minutes: 12 draws all within 3 minutes has odds of
	// about 12*(1/4)^11, one in 350,000.
	if spread < 3*time.Minute {
		t.Fatalf("%d agents started together renew within %s of each other, want them spread over the 12-minute jitter window", n, spread)
	}
	if c := slices.Compact(slices.Clone(offsets)); len(c) != n {
		t.Fatalf("only %d distinct renewal times for %d agents", len(c), n)
	}
}
