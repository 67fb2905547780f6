package ca

import (
	"encoding/json"
	"fmt"
	"time"

	bolt "go.etcd.io/bbolt"

	"github.com/meshauth/meshauth/internal/identity"
)

// ImportRevocations adds revocations this CA learned from elsewhere — on
// Kubernetes, from the other control plane replicas and from before a
// restart, through a shared Secret — to its own list, so that they are in
// its bundle and reach its sidecars. Unlike Revoke, the serials need not be
// in this CA's issuance log (another replica may have signed them). Entries
// already expired or already revoked are skipped; a malformed entry is
// refused with the reason and nothing is imported. It returns what was added.
func (c *CA) ImportRevocations(rs []Revocation) ([]Revocation, uint64, error) {
	now := c.cfg.Clock()
	for i, r := range rs {
		if _, ok := serialBytes(r.Serial); !ok {
			return nil, 0, refuse(KindInvalid, "bad_serial", "revocation %d: serial %q is not lowercase hex without leading zeros", i, r.Serial)
		}
		if r.SPIFFEID != "" {
			if _, err := identity.Parse(r.SPIFFEID); err != nil {
				return nil, 0, refuse(KindInvalid, "bad_revocation", "revocation %d (serial %s): %v", i, r.Serial, err)
			}
		}
		if r.NotAfter.IsZero() {
			return nil, 0, refuse(KindInvalid, "bad_revocation", "revocation %d (serial %s): not_after missing (needed to prune it when the certificate expires)", i, r.Serial)
		}
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	added, version, err := c.store.ImportRevocations(rs, now)
	if err != nil {
		return nil, 0, err
	}
	if len(added) == 0 {
		return nil, version, nil
	}
	if err := c.reload(); err != nil {
		return nil, 0, err
	}
	for _, r := range added {
		c.log.Warn("revocation imported", "serial", r.Serial, "spiffe_id", r.SPIFFEID, "reason", r.Reason, "bundle_version", version)
	}
	return added, version, nil
}

func (s *store) ImportRevocations(rs []Revocation, now time.Time) (added []Revocation, version uint64, err error) {
	err = s.db.Update(func(tx *bolt.Tx) error {
		rb := tx.Bucket(bucketRevoked)
		for _, r := range rs {
			if r.NotAfter.Before(now) || rb.Get([]byte(r.Serial)) != nil {
				continue
			}
			v, err := json.Marshal(r)
			if err != nil {
				return fmt.Errorf("encode revocation %s: %w", r.Serial, err)
			}
			if err := rb.Put([]byte(r.Serial), v); err != nil {
				return err
			}
			added = append(added, r)
		}
		if len(added) > 0 {
			// Certificates this CA renewed from a serial revoked elsewhere
			// go too, so the lineage-expanded set is in this CA's bundle
			// and (through the Secret) reaches every replica.
			roots := make([]string, 0, len(added))
			reasons := make(map[string]string, len(added))
			for _, r := range added {
				roots = append(roots, r.Serial)
				reasons[r.Serial] = r.Reason
			}
			desc, err := descendants(tx, roots)
			if err != nil {
				return err
			}
			for _, d := range desc {
				reasons[d.Serial] = reasons[d.parent] // the reason the lineage was revoked for
				if d.NotAfter < now.Unix() {
					continue
				}
				if err := addLineage(rb, &added, d, reasons[d.parent], now); err != nil {
					return err
				}
			}
		}
		if len(added) == 0 {
			version = u64(tx.Bucket(bucketMeta).Get(keyBundleVersion))
			return nil
		}
		version, err = bumpVersion(tx)
		return err
	})
	return added, version, err
}

// RevokeIssuedBefore revokes every unexpired certificate in this CA's log
// for spiffeID that was issued at or before before: another replica's
// revocation of the identity, applied to what this replica signed.
// Certificates issued after it (the workload's fresh identity) stay valid.
// It is idempotent and finding nothing is not an error.
func (c *CA) RevokeIssuedBefore(spiffeID string, before time.Time, reason string) ([]Revocation, uint64, error) {
	id, err := identity.Parse(spiffeID)
	if err != nil {
		return nil, 0, refuse(KindInvalid, "bad_revoke_request", "identity: %v", err)
	}
	recs, err := c.store.Issued()
	if err != nil {
		return nil, 0, err
	}
	now := c.cfg.Clock()
	var batch []Revocation
	for _, r := range recs {
		if r.SPIFFEID != id.String() || r.IssuedAt > before.Unix() || r.NotAfter < now.Unix() {
			continue
		}
		batch = append(batch, Revocation{Serial: r.Serial, SPIFFEID: r.SPIFFEID, NotAfter: time.Unix(r.NotAfter, 0).UTC(), RevokedAt: now.UTC(), Reason: reason})
	}
	if len(batch) == 0 {
		return nil, c.Bundle().Version, nil
	}
	return c.ImportRevocations(batch)
}

// pruneIssued deletes up to max issuance log records whose certificate
// expired before cutoff (Unix seconds). A pruned certificate had long
// expired: nothing can renew with it, revoke it or be verified with it.
func (s *store) PruneIssued(cutoff int64, max int) (n int, err error) {
	var dead [][]byte
	err = s.db.View(func(tx *bolt.Tx) error {
		cur := tx.Bucket(bucketIssued).Cursor()
		for k, v := cur.First(); k != nil && len(dead) < max; k, v = cur.Next() {
			var r IssuanceRecord
			if err := json.Unmarshal(v, &r); err != nil {
				return fmt.Errorf("issuance %x: %w", k, err)
			}
			if r.NotAfter < cutoff {
				dead = append(dead, append([]byte(nil), k...))
			}
		}
		return nil
	})
	if err != nil || len(dead) == 0 {
		return 0, err
	}
	err = s.db.Update(func(tx *bolt.Tx) error {
		b := tx.Bucket(bucketIssued)
		for _, k := range dead {
			if err := b.Delete(k); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		return 0, err
	}
	return len(dead), nil
}
