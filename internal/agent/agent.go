// Package agent is the sidecar's certificate agent. It generates the
// workload's private key (which never leaves the process), has the CA sign a
// CSR for it — with a join token the first time and over mTLS with its own
// certificate afterwards — writes the seed's cert-chain.pem, key.pem and
// root-cert.pem atomically, renews at about half of the lifetime with
// jitter, follows the CA's trust bundle and revocation stream, and serves
// the SPIFFE Workload API so unmodified SPIFFE clients get the same SVID.
//
// Everything the agent learns goes into a Store, the Source the proxy reads.
// When the CA is down the agent retries with capped backoff and the current
// certificate keeps serving until it expires.
package agent

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"os"
	"path/filepath"
	"sync"
	"time"

	"github.com/meshauth/meshauth/internal/atomicfile"
	"github.com/meshauth/meshauth/internal/identity"
	"github.com/meshauth/meshauth/internal/metrics"
)

// File names in the certs directory, as the seed shows them in /etc/certs.
const (
	ChainFile = "cert-chain.pem"
	KeyFile   = "key.pem"
	RootFile  = "root-cert.pem"
)

// Config configures an Agent.
type Config struct {
	// ID is the identity the agent asks for. Required.
	ID identity.ID
	// Dir is the certs directory (default /etc/certs). Empty string with
	// NoFiles set writes nothing.
	Dir     string
	NoFiles bool
	// CA signs the agent's certificates and sends its trust bundle.
	// Required.
	CA CA
	// Instance names this sidecar on the bundle stream (its pod or
	// workload name), so `meshctl ca rotation status` can say which one
	// has not ACKed a bundle.
	Instance string
	// Store receives certificates and bundles; nil creates one.
	Store *Store
	// TTL is the certificate lifetime to ask for (0: the CA's default).
	TTL time.Duration
	// RenewFraction of the lifetime after which to renew (default 0.5), with
	// Jitter (default 0.1; negative: none) of the lifetime added or removed
	// at random so a fleet does not renew in lockstep. The lifetime runs
	// from the issuance (when the agent received the certificate) to
	// NotAfter, not from the CA's back-dated NotBefore.
	RenewFraction float64
	Jitter        float64
	// MinRenewInterval is the least time between two certificates, whatever
	// the lifetime (default 10s): it bounds what one agent can cost the CA.
	MinRenewInterval time.Duration
	// MinBackoff and MaxBackoff bound the retry delay after a CA failure
	// (defaults 500ms and 30s). A permanent refusal (see Permanent) is
	// retried after MaxBackoff, or at once when the token changes.
	MinBackoff, MaxBackoff time.Duration
	// Tokens is the bootstrap credential the CA uses; the agent
	// polls it every TokenPoll (default 5s) and retries at once when it
	// changes. May be nil.
	Tokens    *TokenSource
	TokenPoll time.Duration
	// Now is the clock; nil means time.Now. After waits on that clock; nil
	// means time.After. Tests drive both.
	Now   func() time.Time
	After func(time.Duration) <-chan time.Time
	// Log; nil discards.
	Log *slog.Logger
	// Metrics is the registry of the agent's metrics; nil keeps them
	// unexported.
	Metrics *metrics.Registry
}

// Agent obtains and rotates the workload certificate.
type Agent struct {
	cfg   Config
	store *Store
	log   *slog.Logger
	now   func() time.Time

	renewals *metrics.CounterVec
	expiry   *metrics.Gauge
	bundles  *metrics.CounterVec

	// kick wakes the renewal loop: the bundle revoked our certificate, or
	// the token changed.
	kick chan struct{}

	mu        sync.Mutex
	lastError string
	lastRenew time.Time
	nextTry   time.Time
}

// New checks cfg and fills defaults.
func New(cfg Config) (*Agent, error) {
	if cfg.ID.IsZero() {
		return nil, errors.New("agent: Config.ID is required")
	}
	if cfg.CA == nil {
		return nil, errors.New("agent: Config.CA is required")
	}
	if cfg.Dir == "" && !cfg.NoFiles {
		cfg.Dir = "/etc/certs"
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	if cfg.Log == nil {
		cfg.Log = slog.New(slog.DiscardHandler)
	}
	if cfg.RenewFraction <= 0 || cfg.RenewFraction >= 1 {
		cfg.RenewFraction = 0.5
	}
	switch {
	case cfg.Jitter == 0:
		cfg.Jitter = 0.1
	case cfg.Jitter < 0:
		cfg.Jitter = 0
	}
	if cfg.Jitter >= cfg.RenewFraction || cfg.Jitter >= 1-cfg.RenewFraction {
		cfg.Jitter = min(cfg.RenewFraction, 1-cfg.RenewFraction) / 2
	}
	if cfg.MinRenewInterval <= 0 {
		cfg.MinRenewInterval = 10 * time.Second
	}
	if cfg.TokenPoll <= 0 {
		cfg.TokenPoll = 5 * time.Second
	}
	if cfg.After == nil {
		cfg.After = time.After
	}
	if cfg.MinBackoff <= 0 {
		cfg.MinBackoff = 500 * time.Millisecond
	}
	if cfg.MaxBackoff < cfg.MinBackoff {
		cfg.MaxBackoff = 30 * time.Second
	}
	a := &Agent{cfg: cfg, log: cfg.Log, now: cfg.Now, kick: make(chan struct{}, 1)}
	a.renewals = cfg.Metrics.CounterVec("meshauth_agent_certificate_requests_total",
		"CSRs sent to the CA, by kind (bootstrap|renewal) and result (ok|error).",
		"kind", "result")
	a.expiry = cfg.Metrics.Gauge("meshauth_agent_cert_expiry_timestamp_seconds",
		"NotAfter of the agent's current certificate, as Unix seconds.")
	a.bundles = cfg.Metrics.CounterVec("meshauth_agent_bundle_updates_total",
		"Trust bundles received from the CA, by result (applied|refused).",
		"result")
	a.store = cfg.Store
	if a.store == nil {
		a.store = NewStore(StoreConfig{Want: cfg.ID, Now: cfg.Now, Log: cfg.Log})
	}
	return a, nil
}

// Store returns the store the agent fills (the proxy's certificate source).
func (a *Agent) Store() *Store { return a.store }

// Status is the agent's view for the admin page.
func (a *Agent) Status() map[string]any {
	a.mu.Lock()
	defer a.mu.Unlock()
	st := map[string]any{"identity": a.cfg.ID.String(), "certs_dir": a.cfg.Dir, "last_error": a.lastError}
	if !a.lastRenew.IsZero() {
		st["last_renewal"] = a.lastRenew.UTC()
	}
	if s := a.store.SVID(); s != nil {
		st["renew_at"] = a.renewAt(s).UTC()
	}
	if !a.nextTry.IsZero() {
		st["next_attempt"] = a.nextTry.UTC()
	}
	if err := a.store.Health(); err != nil {
		st["problem"] = err.Error()
	}
	return st
}

// RenewAt returns when the current certificate is due for renewal (zero
// before the first one).
func (a *Agent) RenewAt() time.Time {
	if s := a.store.SVID(); s != nil {
		return a.renewAt(s)
	}
	return time.Time{}
}

func (a *Agent) setNext(t time.Time) {
	a.mu.Lock()
	a.nextTry = t
	a.mu.Unlock()
}

func (a *Agent) wake() {
	select {
	case a.kick <- struct{}{}:
	default:
	}
}

func (a *Agent) setErr(err error) {
	a.mu.Lock()
	defer a.mu.Unlock()
	if err == nil {
		a.lastError = ""
		a.lastRenew = a.now()
		return
	}
	a.lastError = err.Error()
}

// Run obtains a certificate (reusing a still-valid one from the certs
// directory after a restart), then keeps it renewed and the bundle current
// until ctx ends, and returns nil then. It returns a *StartupError early
// when there is no certificate and the CA refuses the first one for a
// reason retrying cannot fix (a TTL over the CA's maximum, a used-up or
// unknown join token): the sidecar exits with the CA's message.
func (a *Agent) Run(ctx context.Context) error {
	if a.store.SVID() == nil {
		if err := a.loadFiles(); err != nil {
			a.log.Info("no reusable certificate in the certs directory; bootstrapping", "dir", a.cfg.Dir, "reason", err.Error())
		}
	}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var wg sync.WaitGroup
	wg.Add(2)
	go func() { defer wg.Done(); a.watchBundle(ctx) }()
	go func() { defer wg.Done(); a.watchTokens(ctx) }()
	err := a.rotate(ctx)
	cancel()
	wg.Wait()
	return err
}

// watchTokens polls the token file and wakes the renewal loop when the token
// changes (an operator wrote a new join token after a revocation, or
// kubelet rotated a projected service-account token).
func (a *Agent) watchTokens(ctx context.Context) {
	t := a.cfg.Tokens
	if t.File() == "" {
		return // a fixed token never changes
	}
	for {
		changed := false
		select {
		case <-ctx.Done():
			return
		case <-t.Changed():
			changed = true // read by a request, or Check on SIGHUP
		case <-a.cfg.After(a.cfg.TokenPoll):
			changed = t.Check()
		}
		if changed {
			a.log.Info("join token changed", "file", t.File())
			a.wake()
		}
	}
}

// rotate is the renewal loop. It requests a certificate when there is none,
// when the current one reaches its renewal time (issuance + lifetime x
// (fraction +- jitter)), or at once when the bundle says it is revoked; never
// sooner than MinRenewInterval after the last certificate. A failure is
// retried with jittered exponential backoff (a permanent refusal after
// MaxBackoff, or when the token changes), and the current certificate stays
// in use the whole time. A permanent refusal with no certificate at all ends
// the loop with a *StartupError.
func (a *Agent) rotate(ctx context.Context) error {
	backoff := a.cfg.MinBackoff
	var retryAt, lastCert, lastTry time.Time
	for {
		s := a.store.SVID()
		var at time.Time
		switch {
		case !retryAt.IsZero():
			at = retryAt
		case s == nil:
			at = a.now()
		case a.store.Revoked():
			at = lastCert.Add(a.cfg.MinRenewInterval)
		default:
			at = a.renewAt(s)
			if !lastCert.IsZero() {
				at = later(at, lastCert.Add(a.cfg.MinRenewInterval))
			}
		}
		a.setNext(at)
		if wait := at.Sub(a.now()); wait > 0 {
			select {
			case <-ctx.Done():
				return nil
			case <-a.cfg.After(wait):
			case <-a.kick:
				// Something changed (revocation, a new token): look again,
				// but no sooner than MinBackoff after the last attempt.
				if !retryAt.IsZero() {
					retryAt = later(a.now(), lastTry.Add(a.cfg.MinBackoff))
				}
				continue
			}
		}
		lastTry = a.now()
		err := a.renew(ctx)
		a.setErr(err)
		if err == nil {
			backoff = a.cfg.MinBackoff
			retryAt = time.Time{}
			lastCert = a.now()
			a.store.SetProblem(nil)
			continue
		}
		if ctx.Err() != nil {
			return nil
		}
		permanent := Permanent(err)
		if permanent && s == nil {
			a.log.Error("the CA refused the first certificate; not retrying", "error", caMessage(err), "ttl", a.cfg.TTL.String())
			return &StartupError{Err: err}
		}
		wait := withJitter(backoff)
		cur := a.store.SVID()
		if permanent {
			wait = a.cfg.MaxBackoff
		} else if cur != nil {
			wait = beforeExpiry(wait, cur.NotAfter().Sub(a.now()))
		}
		retryAt = a.now().Add(wait)
		backoff = min(2*backoff, a.cfg.MaxBackoff)
		attrs := []any{"error", caMessage(err), "retry_in", wait.String()}
		if cur != nil {
			attrs = append(attrs, "serial", cur.Serial(), "expires", cur.NotAfter().UTC().Format(time.RFC3339))
		}
		switch {
		case a.store.Revoked():
			a.store.SetProblem(fmt.Errorf("the CA refused a new certificate: %s", caMessage(err)))
			a.log.Error("own certificate is revoked and the CA refused a new one; "+a.recoveryHint(), attrs...)
		case permanent:
			a.store.SetProblem(fmt.Errorf("the CA refuses to renew the workload certificate: %s", caMessage(err)))
			a.log.Error("the CA refused to renew the certificate; keeping the current one until it expires and retrying", attrs...)
		default:
			a.log.Warn("certificate request failed; keeping the current certificate and retrying", attrs...)
		}
	}
}

// recoveryHint tells the operator how to get a revoked sidecar a new
// certificate without restarting it.
func (a *Agent) recoveryHint() string {
	if f := a.cfg.Tokens.File(); f != "" {
		return fmt.Sprintf("write a new join token into %s (meshctl token create -n %s -s %s > %s); it is read again when it changes", f, a.cfg.ID.Namespace, a.cfg.ID.ServiceAccount, f)
	}
	return "restart the sidecar with a new join token (--token-file is read again when it changes)"
}

// beforeExpiry shortens a retry wait so that the next attempt comes before
// the current certificate expires: at most half of its remaining life
// (10 ms at least). A CA that is back within the certificate's life is
// then reached in time, whatever the backoff had grown to during the
// outage (issue #17: a 1-minute certificate and a 20 s outage could end
// with the next attempt after the expiry). An expired certificate leaves
// the wait as it is.
func beforeExpiry(wait, left time.Duration) time.Duration {
	if left <= 0 {
		return wait
	}
	return min(wait, max(left/2, min(10*time.Millisecond, left)))
}

func later(a, b time.Time) time.Time {
	if b.After(a) {
		return b
	}
	return a
}

func withJitter(d time.Duration) time.Duration {
	return d/2 + rand.N(d/2+1)
}

// renewAt is issuance + lifetime*(fraction +- jitter), where the lifetime
// runs from the issuance to NotAfter. The CA back-dates NotBefore (by a
// minute) for clock skew, so NotBefore is not the start: with a 1-minute TTL
// NotBefore + half of NotAfter-NotBefore is the issuance itself, and an
// agent that counted from it renewed in a tight loop. For a certificate read
// from files the issuance is estimated (see loadFiles), never before
// NotBefore.
func (a *Agent) renewAt(s *SVID) time.Time {
	l := s.Leaf()
	start := later(s.IssuedAt, l.NotBefore)
	life := l.NotAfter.Sub(start)
	f := a.cfg.RenewFraction
	if a.cfg.Jitter > 0 {
		// Deterministic per certificate (serial-seeded), so Status and the
		// loop agree on the time; serials are random, so a fleet spreads.
		r := rand.New(rand.NewPCG(l.SerialNumber.Uint64(), 0x6d657368))
		f += (r.Float64()*2 - 1) * a.cfg.Jitter
	}
	return start.Add(time.Duration(float64(life) * f))
}

// renew makes a new key and CSR and has the CA sign it: over mTLS with the
// current certificate when there is a valid, unrevoked one, else with the
// bootstrap token. When the CA refuses the certificate itself (revoked by a
// bundle the agent has not seen yet), the token is tried too.
func (a *Agent) renew(ctx context.Context) error {
	cur := a.store.SVID()
	mtls := cur != nil && a.now().Before(cur.NotAfter()) && !a.store.Revoked()
	kind := "bootstrap"
	if mtls {
		kind = "renewal"
	}
	err := a.request(ctx, mtls)
	if err != nil && mtls && callerRefused(err) {
		if err2 := a.request(ctx, false); err2 == nil {
			err = nil
		} else {
			// The token's answer decides what happens next.
			err = fmt.Errorf("%w (with the current certificate: %s)", err2, caMessage(err))
		}
	}
	result := "ok"
	if err != nil {
		result = "error"
	}
	a.renewals.WithLabelValues(kind, result).Inc()
	return err
}

func (a *Agent) request(ctx context.Context, mtls bool) error {
	key, err := newKey()
	if err != nil {
		return fmt.Errorf("agent: generate key: %w", err)
	}
	csr, err := newCSR(key, a.cfg.ID)
	if err != nil {
		return err
	}
	cctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	chainPEM, roots, err := a.cfg.CA.Sign(cctx, csr, a.cfg.TTL, !mtls)
	if err != nil {
		return fmt.Errorf("agent: %w", err)
	}
	chain, err := identity.ParseCertsPEM(chainPEM)
	if err != nil {
		return fmt.Errorf("agent: CA response: %w", err)
	}
	svid, err := newSVID(chain, key, chainPEM, nil)
	if err != nil {
		return fmt.Errorf("agent: CA response: %w", err)
	}
	svid.IssuedAt = a.now()
	var bundle *identity.Bundle
	if cur := a.store.Bundle(); cur != nil {
		bundle = cur
	}
	if len(roots) > 0 && (bundle == nil || !sameRoots(bundle, roots)) {
		// The CA's roots are newer than ours (first contact, or a root
		// rotation the bundle stream has not shown us yet).
		version := uint64(0)
		revoked := map[string]string{}
		td := a.cfg.ID.TrustDomain
		if bundle != nil {
			version, revoked = bundle.Version, bundle.Revoked
		}
		nb, err := identity.NewBundle(td, version, roots, revoked)
		if err != nil {
			return fmt.Errorf("agent: CA response roots: %w", err)
		}
		bundle = nb
	}
	if err := a.store.Set(svid, bundle); err != nil {
		return err
	}
	a.expiry.Set(float64(svid.NotAfter().Unix()))
	a.log.Info("workload certificate issued", "spiffe_id", svid.URI, "serial", svid.Serial(),
		"not_after", svid.NotAfter().UTC().Format(time.RFC3339), "renew_at", a.renewAt(svid).UTC().Format(time.RFC3339), "mtls", mtls)
	return a.writeFiles()
}

func sameRoots(b *identity.Bundle, roots []string) bool {
	var n int
	for _, r := range roots {
		cs, err := identity.ParseCertsPEM([]byte(r))
		if err != nil {
			return false
		}
		for _, c := range cs {
			found := false
			for _, x := range b.Roots {
				if x.Equal(c) {
					found = true
					break
				}
			}
			if !found {
				return false
			}
			n++
		}
	}
	return n == len(b.Roots)
}

// watchBundle follows the bundle stream (SyncTrustBundle), installing
// each bundle and ACKing it once installed (FollowBundle).
func (a *Agent) watchBundle(ctx context.Context) {
	FollowBundle(ctx, BundleFollow{CA: a.cfg.CA, Instance: a.cfg.Instance, Store: a.store, Log: a.log,
		MinBackoff: a.cfg.MinBackoff, MaxBackoff: a.cfg.MaxBackoff,
		Update: func(u BundleUpdate, ack Acker) {
			b, err := a.applyBundle(u)
			if err != nil {
				err = ack(u.Version, nil, err.Error())
			} else {
				err = ack(u.Version, RootFingerprints(b), "")
			}
			if err != nil {
				a.log.Warn("could not ACK trust bundle", "version", u.Version, "error", err.Error())
			}
		}})
}

// RootFingerprints are the SHA-256 (lowercase hex) of b's roots, as an ACK
// names them.
func RootFingerprints(b *identity.Bundle) []string {
	out := make([]string, 0, len(b.Roots))
	for _, r := range b.Roots {
		out = append(out, identity.Fingerprint(r))
	}
	return out
}

// applyBundle checks and stores one bundle from the CA's stream, and
// returns it as installed (the proxy verifies peers with it from now on),
// or why it was refused.
func (a *Agent) applyBundle(u BundleUpdate) (*identity.Bundle, error) {
	td := u.TrustDomain
	if td == "" {
		td = a.cfg.ID.TrustDomain
	}
	revoked := u.Revoked
	if revoked == nil {
		revoked = map[string]string{}
	}
	b, err := identity.NewBundle(td, u.Version, u.Roots, revoked)
	if err != nil {
		a.bundles.WithLabelValues("refused").Inc()
		a.log.Warn("refused trust bundle from the CA", "version", u.Version, "error", err.Error())
		return nil, err
	}
	if cur := a.store.Bundle(); cur != nil && cur.Version == b.Version && cur.Version != 0 && len(cur.Revoked) == len(b.Revoked) {
		return cur, nil
	}
	if err := a.store.SetBundle(b); err != nil {
		a.bundles.WithLabelValues("refused").Inc()
		return nil, err
	}
	a.bundles.WithLabelValues("applied").Inc()
	a.log.Info("trust bundle updated", "version", b.Version, "roots", len(b.Roots), "revoked", len(b.Revoked))
	if s := a.store.SVID(); s != nil && b.IsRevoked(s.Serial()) {
		// Our own certificate was revoked: peers refuse it from now on.
		// Get a new one now, not at the next renewal time.
		a.log.Error("own certificate revoked by the CA; requesting a new one", "serial", s.Serial(), "bundle_version", b.Version)
		a.wake()
	}
	if err := a.writeFiles(); err != nil {
		a.log.Warn("writing certs directory failed", "error", err.Error())
	}
	return b, nil
}

// loadFiles reuses the certificate in the certs directory if it is for our
// identity, matches its key and is valid now; if it is past its renewal
// time the loop renews it over mTLS at once (the join token is single-use,
// so bootstrapping again is the last resort). Its issuance is estimated as
// the chain file's modification time (the agent writes it right after
// issuance and never rewrites it unchanged), within NotBefore and now.
func (a *Agent) loadFiles() error {
	if a.cfg.NoFiles {
		return errors.New("files disabled")
	}
	s, b, err := ReadFiles(a.cfg.Dir, a.cfg.ID.TrustDomain)
	if err != nil {
		return err
	}
	if !a.now().Before(s.NotAfter()) {
		return fmt.Errorf("certificate serial %s expired at %s", s.Serial(), s.NotAfter().UTC().Format(time.RFC3339))
	}
	if fi, err := os.Stat(filepath.Join(a.cfg.Dir, ChainFile)); err == nil {
		s.IssuedAt = fi.ModTime()
		if now := a.now(); s.IssuedAt.After(now) {
			s.IssuedAt = now
		}
	}
	if err := a.store.Set(s, b); err != nil {
		return err
	}
	a.log.Info("reusing certificate from the certs directory", "spiffe_id", s.URI, "serial", s.Serial(),
		"renew_at", a.renewAt(s).UTC().Format(time.RFC3339))
	return nil
}

// ReadFiles reads the three files of a certs directory (cert-chain.pem,
// key.pem, root-cert.pem): the SVID, its key checked against the leaf, and
// the roots as a bundle of trustDomain. It checks no validity period; the
// caller decides what an expired certificate means. A store refuses a bad
// set (Store.Set), so a caller keeps its current certificate.
func ReadFiles(dir, trustDomain string) (*SVID, *identity.Bundle, error) {
	chain, err := os.ReadFile(filepath.Join(dir, ChainFile))
	if err != nil {
		return nil, nil, err
	}
	key, err := os.ReadFile(filepath.Join(dir, KeyFile))
	if err != nil {
		return nil, nil, err
	}
	roots, err := os.ReadFile(filepath.Join(dir, RootFile))
	if err != nil {
		return nil, nil, err
	}
	s, err := NewSVID(chain, key)
	if err != nil {
		return nil, nil, err
	}
	b, err := identity.NewBundle(trustDomain, 0, []string{string(roots)}, nil)
	if err != nil {
		return nil, nil, err
	}
	return s, b, nil
}

// writeFiles writes the three files atomically (temp file + rename), key
// first and 0600, so a reader never sees a chain without its key.
func (a *Agent) writeFiles() error {
	if a.cfg.NoFiles {
		return nil
	}
	s, b := a.store.SVID(), a.store.Bundle()
	if s == nil || b == nil {
		return nil
	}
	return WriteFiles(a.cfg.Dir, s, b)
}

// WriteFiles writes cert-chain.pem, key.pem (0600) and root-cert.pem into dir
// atomically. A file that already holds the same bytes is left alone, so the
// chain's modification time stays the issuance time (loadFiles).
func WriteFiles(dir string, s *SVID, b *identity.Bundle) error {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return fmt.Errorf("agent: certs dir: %w", err)
	}
	for _, f := range []struct {
		name string
		data []byte
		mode os.FileMode
	}{
		{KeyFile, s.KeyPEM, 0o600},
		{ChainFile, s.ChainPEM, 0o644},
		{RootFile, b.RootsPEM(), 0o644},
	} {
		p := filepath.Join(dir, f.name)
		if old, err := os.ReadFile(p); err == nil && bytes.Equal(old, f.data) {
			if fi, err := os.Stat(p); err == nil && fi.Mode().Perm() == f.mode {
				continue
			}
		}
		if err := atomicfile.Write(filepath.Join(dir, f.name), f.data, f.mode); err != nil {
			return fmt.Errorf("agent: %w", err)
		}
	}
	return nil
}
