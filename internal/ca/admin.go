package ca

import (
	"crypto/rand"
	"encoding/base64"
	"errors"
	"sort"
	"strings"
	"time"

	"github.com/meshauth/meshauth/internal/careport"
	"github.com/meshauth/meshauth/internal/identity"
)

// JoinTokenPrefix starts every join token, so an authenticator can tell a
// join token from a Kubernetes JWT without a store lookup.
const JoinTokenPrefix = "mjt1."

// JoinToken is a created join token; Secret is shown once and never stored.
type JoinToken struct {
	Secret    string
	ID        string
	SPIFFEID  identity.ID
	ExpiresAt time.Time
	Uses      int
}

// CreateJoinToken makes a token that proves id for ttl (default 1h) and uses
// (default 1) issuances. Only its SHA-256 is stored: the secret has 256 bits
// of entropy, so a fast hash is enough and a leaked ca.db yields no usable
// token.
func (c *CA) CreateJoinToken(id identity.ID, ttl time.Duration, uses int) (*JoinToken, error) {
	if id.TrustDomain != c.td {
		return nil, refuse(KindInvalid, ReasonForeignTrustDomain, "identity %s is not in this CA's trust domain %q", id, c.td)
	}
	if c.reserved(id) {
		c.log.Warn("refused join token", "spiffe_id", id.String(), "reason", ReasonReservedIdentity)
		return nil, refuse(KindDenied, ReasonReservedIdentity, "%s is the control plane's own identity: a workload holding it could serve the CA, Discovery and Admin APIs to every sidecar; the control plane issues its own certificate, no join token can prove it", id)
	}
	if ttl == 0 {
		ttl = time.Hour
	}
	if uses == 0 {
		uses = 1
	}
	if ttl < 0 || uses < 0 {
		return nil, refuse(KindInvalid, "bad_token_request", "TTL %s and uses %d must be positive", ttl, uses)
	}
	var b [32]byte
	if _, err := rand.Read(b[:]); err != nil {
		return nil, internal("token entropy", err)
	}
	secret := JoinTokenPrefix + base64.RawURLEncoding.EncodeToString(b[:])
	h := hashToken(secret)
	now := c.cfg.Clock()
	rec := &TokenRecord{ID: h[:12], SPIFFEID: id.String(), ExpiresAt: now.Add(ttl).UTC(), Uses: uses, CreatedAt: now.UTC()}
	if err := c.store.PutToken(h, rec); err != nil {
		return nil, internal("store join token", err)
	}
	c.log.Info("created join token", "token_id", rec.ID, "spiffe_id", id.String(), "expires_at", rec.ExpiresAt, "uses", uses)
	return &JoinToken{Secret: secret, ID: rec.ID, SPIFFEID: id, ExpiresAt: rec.ExpiresAt, Uses: uses}, nil
}

// Revoke revokes one serial (lowercase hex) or every unexpired certificate
// logged for spiffeID; exactly one must be given. The revocations are in the
// bundle (and so pushed to every sidecar) when it returns.
func (c *CA) Revoke(serial, spiffeID, reason string) ([]Revocation, uint64, error) {
	serial = strings.ToLower(strings.TrimPrefix(strings.TrimSpace(serial), "0x"))
	serial = strings.ReplaceAll(serial, ":", "") // openssl prints AB:CD:...
	serial = strings.TrimLeft(serial, "0")
	if (serial == "") == (spiffeID == "") {
		return nil, 0, refuse(KindInvalid, "bad_revoke_request", "give exactly one of --serial or --identity")
	}
	if spiffeID != "" {
		id, err := identity.Parse(spiffeID)
		if err != nil {
			return nil, 0, refuse(KindInvalid, "bad_revoke_request", "identity: %v", err)
		}
		spiffeID = id.String()
	}
	if _, ok := serialBytes(serial); serial != "" && !ok {
		return nil, 0, refuse(KindInvalid, "bad_serial", "serial %q is not hex", serial)
	}
	now := c.cfg.Clock()
	c.mu.Lock()
	defer c.mu.Unlock()
	added, version, err := c.store.Revoke(serial, spiffeID, reason, now)
	if err != nil {
		var e *Error
		if errors.As(err, &e) {
			return nil, 0, e
		}
		return nil, 0, internal("record revocation", err)
	}
	if err := c.reload(); err != nil {
		return nil, 0, err
	}
	for _, r := range added {
		c.log.Warn("revoked certificate", "serial", r.Serial, "spiffe_id", r.SPIFFEID, "reason", r.Reason, "bundle_version", version)
	}
	return added, version, nil
}

// retireGrace is how long after the signing switch an old root stays at
// least, covering issuances that were in flight at the switch.
const retireGrace = time.Minute

// Tick does the CA's time-driven work at the Clock's now: the next step of
// a root rotation whose condition holds (rotation.go), switching signing
// to a root whose activation time has passed, dropping a root from the
// bundle once everything it signed has expired, and pruning revocations
// of expired certificates. Each change bumps the bundle version. The control plane
// calls it periodically; tests call it after moving their clock.
func (c *CA) Tick() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if err := c.advanceRotation(); err != nil {
		return err
	}
	now := c.cfg.Clock()
	s := c.state.Load()
	changed := false
	signer := pickSigner(s.authorities, now)
	if signer != s.signer {
		if _, err := c.store.Bump(); err != nil {
			return internal("bump bundle version", err)
		}
		c.log.Warn("signing switched to new root", "root", identity.Fingerprint(signer.root))
		changed = true
	}
	if rot, ok := c.backend.(Rotator); ok {
		for _, a := range s.authorities {
			// A root that no longer signs leaves once the last certificate it
			// signed has expired, and never before it stopped signing.
			if a == signer || a.activateAt.After(now) || a.maxIssued.Load() >= now.Unix() {
				continue
			}
			// A Sign call that picked the old root just before the switch may
			// still be committing; give it a minute before the root goes.
			if now.Before(signer.activateAt.Add(retireGrace)) {
				continue
			}
			retired, err := rot.RetireRoot(a.id, false)
			if err != nil {
				return internal("retire root", err)
			}
			if !retired {
				continue
			}
			if _, err := c.store.Bump(); err != nil {
				return internal("bump bundle version", err)
			}
			c.log.Warn("old root left the bundle", "root", identity.Fingerprint(a.root))
			changed = true
		}
	}
	if c.cfg.LogRetention > 0 && now.Sub(c.lastLogPrune) >= time.Hour {
		c.lastLogPrune = now
		pruned, err := c.store.PruneIssued(now.Add(-c.cfg.LogRetention).Unix(), 100_000)
		if err != nil {
			return internal("prune issuance log", err)
		}
		if pruned > 0 {
			c.log.Info("issuance log pruned", "records", pruned, "expired_before", now.Add(-c.cfg.LogRetention).UTC())
		}
	}
	n, _, err := c.store.PruneRevocations(now)
	if err != nil {
		return internal("prune revocations", err)
	}
	if n > 0 {
		changed = true
	}
	if changed {
		return c.reload()
	}
	return nil
}

// IssuanceLog returns every issuance log record, oldest serial order not
// guaranteed. It scans the whole log: for audits and tests, not hot paths.
func (c *CA) IssuanceLog() ([]IssuanceRecord, error) { return c.store.Issued() }

func certStatus(c interface{ String() string }, fp string, nb, na time.Time) careport.CertStatus {
	return careport.CertStatus{Subject: c.String(), Fingerprint: fp, NotBefore: nb.UTC(), NotAfter: na.UTC()}
}

// Status reports roots, the signing certificate and counts.
func (c *CA) Status() (*careport.Status, error) {
	s := c.state.Load()
	now := c.cfg.Clock()
	issued, revoked, tokens, err := c.store.Counts()
	if err != nil {
		return nil, internal("read counts", err)
	}
	st := &careport.Status{
		TrustDomain: c.td, BundleVersion: s.bundle.Version,
		Issued: issued, Revoked: revoked, JoinTokens: tokens,
		DefaultTTL: c.cfg.DefaultTTL.String(), MaxTTL: c.cfg.MaxTTL.String(), Now: now.UTC(),
	}
	st.Mode = c.backend.Mode()
	signer := pickSigner(s.authorities, now)
	st.Signing = certStatus(signer.cert.Subject, identity.Fingerprint(signer.cert), signer.cert.NotBefore, signer.cert.NotAfter)
	for _, a := range s.authorities {
		rs := careport.RootStatus{CertStatus: certStatus(a.root.Subject, identity.Fingerprint(a.root), a.root.NotBefore, a.root.NotAfter), ActivateAt: a.activateAt.UTC()}
		if a.activateAt.Equal(Pending) {
			rs.ActivateAt = time.Time{} // signs once the fleet has ACKed it
		}
		switch {
		case a == signer:
			rs.State = careport.RootSigning
		case a.activateAt.After(now):
			rs.State = careport.RootPending
		default:
			rs.State = careport.RootRetiring
		}
		if m := a.maxIssued.Load(); m > 0 {
			rs.LastIssuedNotAfter = time.Unix(m, 0).UTC()
		}
		st.Roots = append(st.Roots, rs)
	}
	return st, nil
}

// ListIssued returns the issuance log, oldest first: only spiffeID's
// certificates when it is set, only unexpired ones with onlyValid, and the
// newest limit of them when limit > 0. matched counts before the limit.
func (c *CA) ListIssued(spiffeID string, onlyValid bool, limit int) (entries []careport.IssuedEntry, matched int, err error) {
	recs, err := c.store.Issued()
	if err != nil {
		return nil, 0, err
	}
	revoked := map[string]string{}
	for _, r := range c.Bundle().Revocations {
		revoked[r.Serial] = r.Reason
	}
	now := c.cfg.Clock().Unix()
	for _, r := range recs {
		if spiffeID != "" && r.SPIFFEID != spiffeID {
			continue
		}
		if onlyValid && r.NotAfter < now {
			continue
		}
		e := careport.IssuedEntry{IssuanceRecord: r}
		e.RevokedReason, e.Revoked = revoked[r.Serial]
		entries = append(entries, e)
	}
	sort.SliceStable(entries, func(i, j int) bool {
		if entries[i].IssuedAt != entries[j].IssuedAt {
			return entries[i].IssuedAt < entries[j].IssuedAt
		}
		return entries[i].Serial < entries[j].Serial
	})
	matched = len(entries)
	if limit > 0 && len(entries) > limit {
		entries = entries[len(entries)-limit:]
	}
	return entries, matched, nil
}
