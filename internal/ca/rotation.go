package ca

import (
	"errors"
	"fmt"
	"slices"
	"sort"
	"strings"
	"time"

	"github.com/meshauth/meshauth/internal/careport"
	"github.com/meshauth/meshauth/internal/identity"
)

// A root rotation goes through three steps, each recorded in the store
// (RotationRecord) before the CA acts on the next, so that a control plane
// killed at any point continues where it was when it starts again:
//
//  1. RotateRoot makes a new root and adds it to the bundle, not signing
//     (its ActivateAt is Pending): phase distributing.
//  2. Once every sidecar of the fleet has ACKed a bundle that holds it
//     (fleet.go) and the minimum overlap has passed, the new root signs
//     (Rotator.ActivateRoot): phase reissuing. Workloads get certificates
//     from it at their own renewal time.
//  3. Once no live certificate chains to an old root, it leaves the bundle
//     (Rotator.RetireRoot); RetireOldRoots with force does it earlier and
//     says what breaks: phase done.
//
// Each step's effect is in the Backend (the root, its activation, its
// removal), and the record follows: advanceRotation reconciles a record
// that is behind its Backend (the CA died between the two writes), so no
// step is done twice and none is skipped.

// Pending is the ActivateAt of a root that is in the bundle but waits for
// the fleet's ACKs before it signs.
var Pending = time.Date(9999, 12, 31, 23, 59, 59, 0, time.UTC)

// RotationRecord is a root rotation's progress, as the store keeps it.
type RotationRecord struct {
	Phase          string        `json:"phase"`
	NewAuthority   uint64        `json:"new_authority"`
	NewRoot        string        `json:"new_root"`
	OldAuthorities []uint64      `json:"old_authorities"`
	OldRoots       []string      `json:"old_roots"`
	BundleVersion  uint64        `json:"bundle_version"`
	StartedAt      time.Time     `json:"started_at"`
	MinOverlap     time.Duration `json:"min_overlap"`
	SwitchedAt     time.Time     `json:"switched_at,omitzero"`
	RetiredAt      time.Time     `json:"retired_at,omitzero"`
	Forced         []string      `json:"forced,omitempty"`
}

// Rotation is the outcome of RotateRoot.
type Rotation struct {
	NewRoot       string // SHA-256 fingerprint
	BundleVersion uint64
	// MinOverlapUntil: signing switches after every sidecar ACKed, and not
	// before this.
	MinOverlapUntil time.Time
}

// String renders a one-line summary, for logs.
func (r *Rotation) String() string {
	return fmt.Sprintf("new root %s in bundle v%d, signs once every sidecar ACKed (not before %s)", r.NewRoot[:16], r.BundleVersion, r.MinOverlapUntil.UTC().Format(time.RFC3339))
}

// RotateRoot starts a root rotation: a new root, in the bundle now, that
// signs once every sidecar has ACKed a bundle holding it and minOverlap
// (0: Config.RotationOverlap; negative refused) has passed. The new root
// is self-signed, made here (from ""), or the operator's CA that a
// Stager Backend finds by from (Kubernetes: Secret cacerts-next). Tick
// (and every ACK) moves the rotation on; RotationStatus shows it.
func (c *CA) RotateRoot(minOverlap time.Duration, from string) (*Rotation, error) {
	rot, isRotator := c.backend.(Rotator)
	stager, isStager := c.backend.(Stager)
	_, isDir := c.backend.(*pluggedDir)
	switch {
	case from == "" && !isRotator && isStager && isDir:
		return nil, refuse(KindFailedPrecondition, "plugged_in", "this CA signs with %s, an operator's CA: put the new CA's four files (ca-cert.pem, ca-key.pem, cert-chain.pem, root-cert.pem) in a directory beside it and stage it with `meshctl ca rotate-root --from /absolute/path/to/it`", c.backend.Source())
	case from == "" && !isRotator && isStager:
		return nil, refuse(KindFailedPrecondition, "plugged_in", "this CA signs with %s, an operator's CA: put the new CA in Secret cacerts-next (ca-cert.pem, ca-key.pem, cert-chain.pem, root-cert.pem) and stage it with `meshctl ca rotate-root --from cacerts-next`", c.backend.Source())
	case from == "" && !isRotator:
		return nil, refuse(KindFailedPrecondition, "plugged_in", "this CA signs with %s; rotate by replacing them (with the old and new roots in root-cert.pem) and restarting", c.backend.Source())
	case from != "" && !isStager:
		return nil, refuse(KindFailedPrecondition, "no_staging", "--from stages an operator's CA, which this CA (%s, %s) does not take: rotate without --from", c.backend.Mode(), c.backend.Source())
	}
	if minOverlap < 0 {
		return nil, refuse(KindInvalid, "bad_overlap", "minimum overlap %s is negative", minOverlap)
	}
	if minOverlap == 0 {
		minOverlap = c.cfg.RotationOverlap
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if err := c.advanceRotation(); err != nil {
		return nil, err
	}
	now := c.cfg.Clock()
	if r, err := c.store.Rotation(); err != nil {
		return nil, internal("read rotation", err)
	} else if r != nil && r.Phase != careport.PhaseDone {
		return nil, refuse(KindFailedPrecondition, "rotation_pending", "a rotation is already in progress (phase %s, new root %s): see `meshctl ca rotation status`", r.Phase, r.NewRoot[:16])
	}
	for _, a := range c.state.Load().authorities {
		if a.activateAt.After(now) {
			return nil, refuse(KindFailedPrecondition, "rotation_pending", "a rotation is already pending: root %s is not signing yet", identity.Fingerprint(a.root)[:16])
		}
	}
	if from != "" {
		if err := stager.Stage(from); err != nil {
			var e *Error
			if errors.As(err, &e) {
				return nil, e
			}
			return nil, refuse(KindInvalid, "bad_staged_ca", "%v", err)
		}
		if _, err := c.store.Bump(); err != nil { // the bundle gains the staged root
			return nil, internal("bump bundle version", err)
		}
	} else if err := c.addRoot(rot, now, Pending); err != nil {
		return nil, err
	}
	if err := c.reload(); err != nil {
		return nil, err
	}
	r, err := c.adoptPending(now, minOverlap)
	if err != nil {
		return nil, err
	}
	c.log.Warn("root rotation started: new root in the bundle, signing switches once every sidecar has ACKed it",
		"new_root", r.NewRoot, "bundle_version", r.BundleVersion, "min_overlap", minOverlap, "backend", c.backend.Source())
	return &Rotation{NewRoot: r.NewRoot, BundleVersion: r.BundleVersion, MinOverlapUntil: r.StartedAt.Add(r.MinOverlap)}, nil
}

// adoptPending writes the record of a rotation whose root is in the
// Backend as Pending (just added, or added before the CA died).
func (c *CA) adoptPending(now time.Time, minOverlap time.Duration) (*RotationRecord, error) {
	s := c.state.Load()
	r := &RotationRecord{Phase: careport.PhaseDistributing, BundleVersion: s.bundle.Version, StartedAt: now.UTC(), MinOverlap: minOverlap}
	for _, a := range s.authorities {
		if a.activateAt.Equal(Pending) {
			r.NewAuthority, r.NewRoot = a.id, identity.Fingerprint(a.root)
		} else {
			r.OldAuthorities = append(r.OldAuthorities, a.id)
			r.OldRoots = append(r.OldRoots, identity.Fingerprint(a.root))
		}
	}
	if r.NewRoot == "" {
		return nil, internal("new root", fmt.Errorf("no pending root in %s after adding one", c.backend.Source()))
	}
	if err := c.store.PutRotation(r); err != nil {
		return nil, internal("record rotation", err)
	}
	return r, nil
}

// kickRotation moves a rotation on at once (an ACK may have been the last
// one it waited for) rather than at the next Tick.
func (c *CA) kickRotation() {
	r, err := c.store.Rotation()
	if err != nil || r == nil || r.Phase != careport.PhaseDistributing {
		return
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if err := c.advanceRotation(); err != nil {
		c.log.Error("root rotation step failed; retried at the next tick", "error", err)
	}
}

func (c *CA) authorityByID(id uint64) *authority {
	for _, a := range c.state.Load().authorities {
		if a.id == id {
			return a
		}
	}
	return nil
}

// advanceRotation does the next step of the rotation in progress, if its
// condition holds. c.mu is held.
func (c *CA) advanceRotation() error {
	now := c.cfg.Clock()
	r, err := c.store.Rotation()
	if err != nil {
		return internal("read rotation", err)
	}
	if r == nil || r.Phase == careport.PhaseDone {
		// A Pending root with no rotation in progress: the CA died between
		// adding it and writing the record. Adopt it.
		for _, a := range c.state.Load().authorities {
			if a.activateAt.Equal(Pending) {
				if _, err := c.adoptPending(now, 0); err != nil {
					return err
				}
				c.log.Warn("resumed a root rotation whose record was not written", "new_root", identity.Fingerprint(a.root))
				return c.advanceRotation()
			}
		}
		return nil
	}
	na := c.authorityByID(r.NewAuthority)
	if na == nil {
		c.log.Error("the rotation's new root is no longer in the backend; rotation abandoned", "new_root", r.NewRoot, "backend", c.backend.Source())
		r.Phase = careport.PhaseDone
		r.RetiredAt = now.UTC()
		return c.putRotation(r)
	}
	if r.Phase == careport.PhaseDistributing {
		if !na.activateAt.Equal(Pending) { // switched before the record was written
			r.Phase, r.SwitchedAt = careport.PhaseReissuing, na.activateAt.UTC()
			if err := c.putRotation(r); err != nil {
				return err
			}
		} else if err := c.maybeSwitch(r, now); err != nil || r.Phase == careport.PhaseDistributing {
			return err
		}
	}
	return c.maybeRetire(r, now, false)
}

func (c *CA) putRotation(r *RotationRecord) error {
	if err := c.store.PutRotation(r); err != nil {
		return internal("record rotation", err)
	}
	return nil
}

// maybeSwitch makes the new root sign once every sidecar has ACKed it and
// the minimum overlap has passed.
func (c *CA) maybeSwitch(r *RotationRecord, now time.Time) error {
	if now.Before(r.StartedAt.Add(r.MinOverlap)) {
		return nil
	}
	if _, waiting := c.fleetReport(r.NewRoot, true, now); waiting > 0 {
		return nil
	}
	rot, ok := c.backend.(rootSwitcher)
	if !ok {
		return nil
	}
	if _, err := c.store.Bump(); err != nil {
		return internal("bump bundle version", err)
	}
	if err := rot.ActivateRoot(r.NewAuthority, now); err != nil {
		return internal("activate new root", err)
	}
	if err := c.reload(); err != nil {
		return err
	}
	r.Phase, r.SwitchedAt = careport.PhaseReissuing, now.UTC()
	if err := c.putRotation(r); err != nil {
		return err
	}
	c.log.Warn("every sidecar ACKed the new root: signing switched to it", "root", r.NewRoot, "bundle_version", c.state.Load().bundle.Version)
	return nil
}

// maybeRetire drops each old root that no live certificate chains to (or
// every old root, with force), and ends the rotation when none is left.
func (c *CA) maybeRetire(r *RotationRecord, now time.Time, force bool) error {
	rot, ok := c.backend.(rootSwitcher)
	if !ok || r.Phase != careport.PhaseReissuing {
		return nil
	}
	left := 0
	for _, id := range r.OldAuthorities {
		a := c.authorityByID(id)
		if a == nil {
			continue
		}
		if !force {
			// A Sign that picked the old root just before the switch may
			// still be committing: a minute's grace.
			if now.Before(r.SwitchedAt.Add(retireGrace)) {
				left++
				continue
			}
			if live, err := c.liveCerts(id, now, 0); err != nil || len(live) > 0 {
				left++
				if err != nil {
					return err
				}
				continue
			}
		}
		retired, err := rot.RetireRoot(id, force)
		if err != nil {
			return internal("retire root", err)
		}
		if !retired {
			left++
			continue
		}
		if _, err := c.store.Bump(); err != nil {
			return internal("bump bundle version", err)
		}
		if err := c.reload(); err != nil {
			return err
		}
		c.log.Warn("old root left the bundle", "root", identity.Fingerprint(a.root), "forced", force)
	}
	if left > 0 {
		return nil
	}
	r.Phase, r.RetiredAt = careport.PhaseDone, now.UTC()
	if err := c.putRotation(r); err != nil {
		return err
	}
	c.log.Warn("root rotation done", "root", r.NewRoot)
	return nil
}

// liveCerts lists "<spiffe id> serial <hex>" for the certificates in the
// issuance log signed by authority id that are unexpired, unrevoked and
// not superseded (a renewal of it, or a newer certificate the control
// plane issued for the same identity, was issued at least retireGrace
// ago), up to limit (0: all).
func (c *CA) liveCerts(id uint64, now time.Time, limit int) ([]string, error) {
	if a := c.authorityByID(id); a != nil && a.maxIssued.Load() < now.Unix() {
		return nil, nil // everything it signed has expired
	}
	recs, err := c.store.Issued()
	if err != nil {
		return nil, internal("read issuance log", err)
	}
	revoked := c.state.Load().bundle.ident.Revoked
	cutoff := now.Add(-retireGrace).Unix()
	superseded := map[string]bool{}
	// A certificate the control plane issued itself ("self...") is
	// replaced, not renewed: the newest one for the same requester and
	// identity supersedes the older ones. The log keeps seconds, so a tie
	// is broken by the authority: one signed by another root than id in
	// the same second was signed after the switch (the control plane
	// following it), so it is the newer.
	newestSelf := map[string]int64{}  // requester+identity -> latest IssuedAt
	newestOther := map[string]int64{} // the same, of authorities other than id
	for _, r := range recs {
		if p := r.RenewedFrom(); p != "" && r.IssuedAt <= cutoff {
			superseded[p] = true
		}
		if r.RenewedFrom() == "" && r.IssuedAt <= cutoff {
			k := r.Requester + " " + r.SPIFFEID
			newestSelf[k] = max(newestSelf[k], r.IssuedAt)
			if r.Authority != id && r.Authority != 0 {
				newestOther[k] = max(newestOther[k], r.IssuedAt)
			}
		}
	}
	legacy := legacyAuthority(c.state.Load().authorities)
	var out []string
	for _, r := range recs {
		if (r.Authority != id && !(legacy && r.Authority == 0)) || r.NotAfter <= now.Unix() || superseded[r.Serial] {
			continue
		}
		if _, ok := revoked[r.Serial]; ok {
			continue
		}
		if len(r.Requester) >= 4 && r.Requester[:4] == "self" {
			k := r.Requester + " " + r.SPIFFEID
			// (IssuedAt > 0: a key with no other authority's record, 0
			// here, never ties.)
			if newestSelf[k] > r.IssuedAt || newestOther[k] >= r.IssuedAt {
				continue
			}
		}
		out = append(out, r.SPIFFEID+" serial "+r.Serial)
	}
	sort.Strings(out)
	if limit > 0 && len(out) > limit {
		out = out[:limit]
	}
	return out, nil
}

// RetireOldRoots ends the rotation's third step now: it refuses while a
// live certificate chains to an old root, naming them, unless force,
// which drops the old roots anyway and returns what that breaks (every
// such certificate fails verification at every sidecar from the next
// bundle on).
func (c *CA) RetireOldRoots(force bool) ([]string, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if err := c.advanceRotation(); err != nil {
		return nil, err
	}
	r, err := c.store.Rotation()
	if err != nil {
		return nil, internal("read rotation", err)
	}
	switch {
	case r == nil || r.Phase == careport.PhaseDone:
		return nil, refuse(KindFailedPrecondition, "no_rotation", "no rotation is in progress: nothing to retire")
	case r.Phase == careport.PhaseDistributing:
		return nil, refuse(KindFailedPrecondition, "not_switched", "the new root does not sign yet (waiting for ACKs: see `meshctl ca rotation status`); retiring the old root now would leave every certificate without a trusted root")
	}
	now := c.cfg.Clock()
	var live []string
	for _, id := range r.OldAuthorities {
		if c.authorityByID(id) == nil {
			continue
		}
		l, err := c.liveCerts(id, now, 0)
		if err != nil {
			return nil, err
		}
		live = append(live, l...)
	}
	if len(live) > 0 && !force {
		return live, refuse(KindFailedPrecondition, "live_certificates", "%d live certificate(s) still chain to the old root: %s; they renew from the new root at their own pace, or retire now with --force (they fail verification at every sidecar from then on)", len(live), sample(live, 10))
	}
	r.Forced = live
	if err := c.maybeRetire(r, now, true); err != nil {
		return nil, err
	}
	if len(live) > 0 {
		c.log.Warn("old root retired by force; these certificates no longer verify", "count", len(live), "certificates", sample(live, 50))
	}
	return live, nil
}

func sample(s []string, n int) string {
	if len(s) <= n {
		return strings.Join(s, ", ")
	}
	return fmt.Sprintf("%s and %d more", strings.Join(s[:n], ", "), len(s)-n)
}

// RotationStatus reports the rotation in progress (or the last one) and
// the fleet.
func (c *CA) RotationStatus() (*careport.Rotation, error) {
	now := c.cfg.Clock()
	r, err := c.store.Rotation()
	if err != nil {
		return nil, internal("read rotation", err)
	}
	st := &careport.Rotation{Now: now.UTC()}
	newRoot, gating := "", false
	if r != nil {
		st.Phase, st.NewRoot, st.OldRoots, st.BundleVersion = r.Phase, r.NewRoot, r.OldRoots, r.BundleVersion
		st.StartedAt, st.SwitchedAt, st.RetiredAt, st.Forced = r.StartedAt, r.SwitchedAt, r.RetiredAt, r.Forced
		st.MinOverlapUntil = r.StartedAt.Add(r.MinOverlap)
		newRoot, gating = r.NewRoot, r.Phase == careport.PhaseDistributing
	}
	st.Sidecars, st.Waiting = c.fleetReport(newRoot, gating, now)
	s := c.state.Load()
	signer := pickSigner(s.authorities, now)
	for _, a := range s.authorities {
		live, err := c.liveCerts(a.id, now, 0)
		if err != nil {
			return nil, err
		}
		state := careport.RootRetiring
		switch {
		case a == signer:
			state = careport.RootSigning
		case a.activateAt.After(now):
			state = careport.RootPending
		}
		st.Live = append(st.Live, careport.RootLive{Root: identity.Fingerprint(a.root), State: state, Live: len(live), Sample: live[:min(len(live), 10)]})
	}
	st.Next = nextStep(st, r, now)
	return st, nil
}

func nextStep(st *careport.Rotation, r *RotationRecord, now time.Time) string {
	switch {
	case r == nil:
		return "no rotation has been started (meshctl ca rotate-root)"
	case r.Phase == careport.PhaseDistributing && st.Waiting > 0:
		return fmt.Sprintf("step 2 of 3: waiting for %d sidecar(s) to ACK a bundle with the new root before signing switches to it", st.Waiting)
	case r.Phase == careport.PhaseDistributing && now.Before(st.MinOverlapUntil):
		return "step 2 of 3: every sidecar has ACKed; signing switches at the end of the minimum overlap, " + st.MinOverlapUntil.UTC().Format(time.RFC3339)
	case r.Phase == careport.PhaseDistributing:
		return "step 2 of 3: every sidecar has ACKed; signing switches at the next tick"
	case r.Phase == careport.PhaseReissuing:
		n := 0
		for _, l := range st.Live {
			if slices.Contains(r.OldRoots, l.Root) {
				n += l.Live
			}
		}
		return fmt.Sprintf("step 3 of 3: the new root signs; %d live certificate(s) still chain to the old root, which leaves the bundle when none does (or now: meshctl ca rotate-root --retire --force)", n)
	default:
		return "done: the old root has left the bundle"
	}
}
