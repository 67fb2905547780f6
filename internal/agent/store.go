package agent

import (
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/meshauth/meshauth/internal/identity"
)

// Source is what the proxy reads certificates from. Reads are a pointer load,
// so the handshake path never takes a lock; rotation swaps the pointer, which
// leaves established connections untouched and makes the next handshake use
// the new certificate.
type Source interface {
	// SVID returns the current workload certificate, or nil before the first one.
	SVID() *SVID
	// Bundle returns the current trust bundle, or nil before the first one.
	Bundle() *identity.Bundle
	// Changed returns a channel closed at the next change of either.
	Changed() <-chan struct{}
}

// ErrRefused wraps every reason Store refuses a new certificate or bundle.
var ErrRefused = errors.New("agent: refused")

// Store holds the current SVID and bundle. It is the Source the proxy and the
// Workload API read, and what the agent (or a test) writes. A new SVID or
// bundle that fails validation is refused, logged and counted, and the old
// state is kept: a bad rotation must never take a working sidecar down.
type Store struct {
	svid   atomic.Pointer[SVID]
	bundle atomic.Pointer[identity.Bundle]

	// Want, if set, is the only identity the store accepts.
	want identity.ID
	now  func() time.Time
	log  *slog.Logger

	mu      sync.Mutex
	changed chan struct{}

	// OnRefused, if set, is called with a reason label for every refusal
	// (metrics hook).
	onRefused func(what, reason string)

	// problem is what the agent reports about the certificate's future (the
	// CA refuses to renew it); nil when there is none.
	problem atomic.Pointer[error]
}

// StoreConfig configures NewStore.
type StoreConfig struct {
	// Want restricts SetSVID to this identity; zero accepts any.
	Want identity.ID
	// Now is the clock; nil means time.Now.
	Now func() time.Time
	// Log receives refusals; nil discards.
	Log *slog.Logger
	// OnRefused is called for every refused update (for metrics); may be nil.
	OnRefused func(what, reason string)
}

// NewStore returns an empty store.
func NewStore(cfg StoreConfig) *Store {
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	if cfg.Log == nil {
		cfg.Log = slog.New(slog.DiscardHandler)
	}
	return &Store{want: cfg.Want, now: cfg.Now, log: cfg.Log, changed: make(chan struct{}), onRefused: cfg.OnRefused}
}

// SVID implements Source.
func (s *Store) SVID() *SVID { return s.svid.Load() }

// Bundle implements Source.
func (s *Store) Bundle() *identity.Bundle { return s.bundle.Load() }

// Changed implements Source.
func (s *Store) Changed() <-chan struct{} {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.changed
}

func (s *Store) notify() {
	s.mu.Lock()
	close(s.changed)
	s.changed = make(chan struct{})
	s.mu.Unlock()
}

// SetSVID installs a new certificate after checking it: it must verify
// against the current bundle (if any) at the store's clock, carry the wanted
// identity, and not expire before the current one would be replaced anyway.
// On error the previous SVID stays in place.
func (s *Store) SetSVID(v *SVID) error {
	if err := s.checkSVID(v, s.Bundle()); err != nil {
		s.refuse("svid", err)
		return err
	}
	s.svid.Store(v)
	s.notify()
	return nil
}

func (s *Store) checkSVID(v *SVID, b *identity.Bundle) error {
	if v == nil || len(v.Chain) == 0 {
		return fmt.Errorf("%w: empty certificate", ErrRefused)
	}
	if !s.want.IsZero() && v.ID != s.want {
		return fmt.Errorf("%w: certificate is for %s, want %s", ErrRefused, v.ID, s.want)
	}
	if b != nil {
		if _, err := b.Verify(v.Chain, s.now()); err != nil {
			return fmt.Errorf("%w: new certificate (serial %s): %w", ErrRefused, v.Serial(), err)
		}
	}
	return nil
}

// SetBundle installs a new trust bundle. It is refused if it is older than
// the current one, or if it would not verify the current certificate (that
// would cut the workload off the mesh; a root rotation keeps the old root in
// the bundle until every workload has a certificate from the new one).
func (s *Store) SetBundle(b *identity.Bundle) error {
	if b == nil || len(b.Roots) == 0 {
		err := fmt.Errorf("%w: empty bundle", ErrRefused)
		s.refuse("bundle", err)
		return err
	}
	if old := s.Bundle(); old != nil && b.Version < old.Version {
		err := fmt.Errorf("%w: bundle version %d is older than current %d", ErrRefused, b.Version, old.Version)
		s.refuse("bundle", err)
		return err
	}
	if v := s.SVID(); v != nil {
		if _, err := b.Verify(v.Chain, s.now()); err != nil && !errors.Is(err, identity.ErrRevoked) && !errors.Is(err, identity.ErrExpired) {
			// A revoked or expired own certificate is the agent's problem to
			// fix by renewing; an untrusted one means the bundle is wrong.
			err = fmt.Errorf("%w: bundle version %d does not verify the current certificate: %w", ErrRefused, b.Version, err)
			s.refuse("bundle", err)
			return err
		}
	}
	s.bundle.Store(b)
	s.notify()
	return nil
}

// Set installs a bundle and an SVID together (bootstrap, or a certificate
// from a new root), checking the SVID against the new bundle.
func (s *Store) Set(v *SVID, b *identity.Bundle) error {
	if old := s.Bundle(); b != nil && old != nil && b.Version < old.Version {
		b = old
	}
	if err := s.checkSVID(v, b); err != nil {
		s.refuse("svid", err)
		return err
	}
	if b != nil {
		s.bundle.Store(b)
	}
	s.svid.Store(v)
	s.notify()
	return nil
}

// SetProblem records why the current certificate cannot be renewed (nil
// clears it). Health reports it, and so the sidecar's readiness.
func (s *Store) SetProblem(err error) {
	if err == nil {
		s.problem.Store(nil)
		return
	}
	s.problem.Store(&err)
}

// Health says why the current certificate should not be relied on, or nil:
// the trust bundle lists its serial as revoked (peers refuse it), or the
// agent's last problem (SetProblem). The proxy's readiness
// (/healthz/ready) fails with this reason.
func (s *Store) Health() error {
	var msgs []string
	if v, b := s.SVID(), s.Bundle(); v != nil && b != nil && b.IsRevoked(v.Serial()) {
		msgs = append(msgs, fmt.Sprintf("workload certificate serial %s is revoked (trust bundle version %d); peers refuse it", v.Serial(), b.Version))
	}
	if p := s.problem.Load(); p != nil {
		msgs = append(msgs, (*p).Error())
	}
	if len(msgs) == 0 {
		return nil
	}
	return errors.New(strings.Join(msgs, "; "))
}

// Revoked reports whether the current certificate's serial is in the
// current bundle's revocations.
func (s *Store) Revoked() bool {
	v, b := s.SVID(), s.Bundle()
	return v != nil && b != nil && b.IsRevoked(v.Serial())
}

func (s *Store) refuse(what string, err error) {
	reason := identity.Reason(err)
	if reason == "other" {
		reason = "invalid"
	}
	s.log.Warn("refused new "+what+"; keeping the current one", "error", err.Error(), "reason", reason)
	if s.onRefused != nil {
		s.onRefused(what, reason)
	}
}
