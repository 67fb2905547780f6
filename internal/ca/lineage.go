package ca

import (
	"encoding/json"
	"fmt"
	"strings"
	"time"

	bolt "go.etcd.io/bbolt"
)

// A certificate's lineage is the chain of renewals that started from one
// bootstrap issuance (join token, ServiceAccount token): each renewal is
// authenticated by the certificate before it, and the issuance log records
// that certificate's serial in the requester ("mtls:<serial>"). The lineage
// matters twice:
//
//   - a renewal may not ask for a longer lifetime than its lineage was
//     granted at bootstrap (CA.renewalLimit), so a stolen 24h certificate
//     cannot turn itself into a 90-day one;
//   - revoking a serial revokes every certificate renewed from it,
//     transitively (store.revoke, store.importRevocations): whoever stole
//     the key may have renewed it already.

// descendantEntry is a logged certificate renewed (transitively) from one
// of the roots of a descendants call, with the serial it was renewed from.
type descendantEntry struct {
	IssuanceRecord
	parent string
}

// descendants returns every logged certificate renewed, directly or
// transitively, from one of the serials in roots, parents before children.
// It scans the whole log once: revocation is a rare act, and an index by
// parent would cost every issuance a second B+tree insert.
func descendants(tx *bolt.Tx, roots []string) ([]descendantEntry, error) {
	children := map[string][]IssuanceRecord{}
	err := tx.Bucket(bucketIssued).ForEach(func(k, v []byte) error {
		var r IssuanceRecord
		if err := json.Unmarshal(v, &r); err != nil {
			return fmt.Errorf("issuance %x: %w", k, err)
		}
		if p := r.RenewedFrom(); p != "" {
			children[p] = append(children[p], r)
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	var out []descendantEntry
	seen := map[string]bool{}
	queue := append([]string(nil), roots...)
	for _, r := range roots {
		seen[r] = true
	}
	for len(queue) > 0 {
		p := queue[0]
		queue = queue[1:]
		for _, c := range children[p] {
			if seen[c.Serial] {
				continue
			}
			seen[c.Serial] = true
			out = append(out, descendantEntry{IssuanceRecord: c, parent: p})
			queue = append(queue, c.Serial)
		}
	}
	return out, nil
}

// addLineage revokes d, a certificate renewed from a revoked one, unless it
// is revoked already. Its reason names the certificate it was renewed from.
func addLineage(rb *bolt.Bucket, added *[]Revocation, d descendantEntry, reason string, now time.Time) error {
	if rb.Get([]byte(d.Serial)) != nil {
		return nil
	}
	// A reason that is itself a lineage's (imported from a replica) is
	// not stacked: keep the operator's words.
	if rest, ok := strings.CutPrefix(reason, "renewed from revoked "); ok {
		_, reason, _ = strings.Cut(rest, ": ")
	}
	why := "renewed from revoked " + d.parent
	if reason != "" {
		why += ": " + reason
	}
	r := Revocation{Serial: d.Serial, SPIFFEID: d.SPIFFEID, NotAfter: time.Unix(d.NotAfter, 0).UTC(), RevokedAt: now.UTC(), Reason: why}
	v, err := json.Marshal(r)
	if err != nil {
		return err
	}
	*added = append(*added, r)
	return rb.Put([]byte(d.Serial), v)
}
