package ca

import (
	"strings"
	"time"
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
//     transitively (store.Revoke here; on Kubernetes every replica does it
//     for its own log, internal/kube's SecretStore): whoever stole the key
//     may have renewed it already.

// Lineage indexes (part of) an issuance log by the serial each record was
// renewed from. Revocation is a rare act, so it is built by one scan of the
// log when needed rather than kept as an index every issuance would pay for.
type Lineage map[string][]IssuanceRecord

// Add indexes r if it is a renewal.
func (l Lineage) Add(r IssuanceRecord) {
	if p := r.RenewedFrom(); p != "" {
		l[p] = append(l[p], r)
	}
}

// Revocations returns a revocation for every certificate renewed, directly
// or transitively, from one of revoked, parents before children, except
// those expired at now or already revoked (isRevoked); the walk goes on
// through them. Each reason names the certificate it was renewed from and
// keeps the words of the revocation its lineage descends from.
func (l Lineage) Revocations(revoked []Revocation, isRevoked func(serial string) bool, now time.Time) []Revocation {
	type item struct{ serial, reason string }
	seen := map[string]bool{}
	var queue []item
	for _, r := range revoked {
		seen[r.Serial] = true
		queue = append(queue, item{r.Serial, lineageBase(r.Reason)})
	}
	var out []Revocation
	for len(queue) > 0 {
		p := queue[0]
		queue = queue[1:]
		for _, c := range l[p.serial] {
			if seen[c.Serial] {
				continue
			}
			seen[c.Serial] = true
			queue = append(queue, item{c.Serial, p.reason})
			if c.NotAfter < now.Unix() || isRevoked(c.Serial) {
				continue
			}
			why := "renewed from revoked " + p.serial
			if p.reason != "" {
				why += ": " + p.reason
			}
			out = append(out, Revocation{Serial: c.Serial, SPIFFEID: c.SPIFFEID, NotAfter: time.Unix(c.NotAfter, 0).UTC(), RevokedAt: now.UTC(), Reason: why})
		}
	}
	return out
}

// lineageBase is the operator's words in a revocation's reason: a reason
// that is itself a lineage's is not stacked.
func lineageBase(reason string) string {
	if rest, ok := strings.CutPrefix(reason, "renewed from revoked "); ok {
		_, reason, _ = strings.Cut(rest, ": ")
	}
	return reason
}
