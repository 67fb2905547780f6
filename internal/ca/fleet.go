package ca

import (
	"crypto/x509"
	"fmt"
	"slices"
	"sort"
	"strings"
	"time"

	"github.com/meshauth/meshauth/internal/careport"
	"github.com/meshauth/meshauth/internal/identity"
)

// The fleet is every sidecar the CA knows on its bundle stream
// (SyncTrustBundle): who is connected, which bundle each has ACKed — that
// is, installed in the verifier its proxy uses — and what went wrong. A
// root rotation switches signing only when every sidecar of the fleet has
// ACKed a bundle that holds the new root (RotationRecord, advanceRotation).
//
// Think as the attacker. An ACK is a message on the stream it refers to:
// it counts for the sidecar that opened that stream and nobody else, and
// the stream needs a certificate that verifies against the bundle (mTLS).
// A sidecar is its certificate's lineage (the first serial of the chain of
// renewals, from the issuance log) and the instance name it gives, so a
// workload can only ACK for a lineage whose key it holds. A certificate
// the control plane issued on its own (the Secret controller's, shared by
// every pod of a ServiceAccount) or that this replica did not sign has no
// lineage here: its sidecar is its identity and instance name, and any
// holder of that identity's key can speak for it (they hold the same key). An ACK names the
// bundle version and its roots; a version this stream was never sent, or
// roots that are not that version's, are refused and end the stream. Every
// record the CA has seen stays in the store: a sidecar that was connected
// and is not now still holds the switch back (it may be serving with the
// old bundle) until it comes back and ACKs, its certificate has expired,
// or the operator forgets it.

// SidecarRecord is one sidecar of the fleet, as the store keeps it.
type SidecarRecord struct {
	Key          string    `json:"key"`
	SPIFFEID     string    `json:"spiffe_id"`
	Instance     string    `json:"instance,omitempty"`
	Serial       string    `json:"serial"`
	CertNotAfter time.Time `json:"cert_not_after"`
	// Connected is what the CA last wrote; a CA that starts reads every
	// record as disconnected since it last saw it.
	Connected    bool      `json:"connected"`
	Since        time.Time `json:"since"`
	AckedVersion uint64    `json:"acked_version,omitempty"`
	AckedRoots   []string  `json:"acked_roots,omitempty"`
	AckedAt      time.Time `json:"acked_at,omitzero"`
	Error        string    `json:"error,omitempty"`
	ErrorVersion uint64    `json:"error_version,omitempty"`
}

// SetSidecarGone gives the CA a way to know that a disconnected sidecar
// is gone for good (on Kubernetes: its pod, the instance name in its
// SPIFFE ID's namespace, no longer exists), so a rotation does not wait
// for it. gone must answer false when it does not know.
func (c *CA) SetSidecarGone(gone func(spiffeID, instance string) bool) {
	c.fleetMu.Lock()
	defer c.fleetMu.Unlock()
	c.gone = gone
}

type fleetEntry struct {
	rec     SidecarRecord
	streams int
}

// origin is the part of the record's key before its instance name: the
// lineage's first serial, or the SPIFFE ID for a certificate with no
// lineage here.
func (r *SidecarRecord) origin() string {
	return strings.TrimSuffix(r.Key, "/"+r.Instance)
}

// How many sidecar records one holder of a key can make. A lineage is one
// sidecar, which may come back under a new instance name (a new pod name
// for the same certs directory), so a few records; a certificate with no
// lineage here (the Secret controller's istio.<sa>, shared by every pod
// of the ServiceAccount) speaks for many pods. The instance name is the
// caller's to choose: without a bound, one stolen key could fill the store
// (on Kubernetes the Secret that also holds the revocations) with records.
const (
	maxInstancesPerLineage  = 8
	maxInstancesPerIdentity = 1024
)

// makeRoomLocked is called, with fleetMu held, before a record for a new
// key of origin is added. It drops every disconnected record whose
// certificate has expired (such a sidecar is never waited for and can
// only come back with a new certificate), and, when origin already has
// its quota of records, the one of them disconnected longest. It returns
// the keys to delete from the store, or an error when every record of the
// origin is connected.
func (c *CA) makeRoomLocked(origin string, lineage bool, now time.Time) ([]string, error) {
	var drop []string
	var oldest *fleetEntry
	n := 0
	for k, e := range c.fleet {
		if e.streams > 0 {
			if e.rec.origin() == origin {
				n++
			}
			continue
		}
		if !e.rec.CertNotAfter.IsZero() && e.rec.CertNotAfter.Before(now) {
			drop = append(drop, k)
			delete(c.fleet, k)
			continue
		}
		if e.rec.origin() == origin {
			n++
			if oldest == nil || e.rec.Since.Before(oldest.rec.Since) {
				oldest = e
			}
		}
	}
	limit := maxInstancesPerIdentity
	if lineage {
		limit = maxInstancesPerLineage
	}
	if n >= limit {
		if oldest == nil {
			return drop, refuse(KindFailedPrecondition, "too_many_instances", "%d sidecars of %s are connected under other instance names, at most %d", n, origin, limit)
		}
		drop = append(drop, oldest.rec.Key)
		delete(c.fleet, oldest.rec.Key)
	}
	return drop, nil
}

// maxInstance bounds the instance name a sidecar gives (a pod name is at
// most 253 characters).
const maxInstance = 253

func checkInstance(s string) error {
	if len(s) > maxInstance {
		return fmt.Errorf("instance name is %d bytes, at most %d", len(s), maxInstance)
	}
	for _, r := range s {
		if !(r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || strings.ContainsRune("._-/:", r)) {
			return fmt.Errorf("instance name %q: only letters, digits and ._-/: are allowed", s)
		}
	}
	return nil
}

// loadFleet reads the fleet from the store; every record is disconnected
// until its sidecar opens a stream to this process.
func (c *CA) loadFleet() error {
	recs, err := c.store.Sidecars()
	if err != nil {
		return fmt.Errorf("ca: read sidecar records: %w", err)
	}
	c.fleetMu.Lock()
	defer c.fleetMu.Unlock()
	c.fleet = map[string]*fleetEntry{}
	now := c.cfg.Clock().UTC()
	for _, r := range recs {
		if r.Connected {
			// It was when the last CA process wrote the record; it has not
			// been connected to this one, which starts now.
			r.Connected, r.Since = false, now
		}
		c.fleet[r.Key] = &fleetEntry{rec: r}
	}
	return nil
}

// lineageOrigin is the first serial of serial's lineage in this CA's
// issuance log, when that lineage started with a credential of one holder
// (a join token, a ServiceAccount token). It is "" when the log does not
// know the serial (another replica signed it) or the lineage started with
// a certificate the control plane issued on its own (the Kubernetes
// Secret controller's istio.<sa>, shared by every pod of the
// ServiceAccount and re-issued whole): the sidecar is then known by its
// identity and instance name only.
func (c *CA) lineageOrigin(serial string) string {
	c.fleetMu.Lock()
	o, ok := c.origins[serial]
	c.fleetMu.Unlock()
	if ok {
		return o
	}
	cur := serial
	for range 1000 {
		rec, err := c.store.IssuedRecord(cur)
		if err != nil || rec == nil || strings.HasPrefix(rec.Requester, "self") {
			cur = ""
			break
		}
		if rec.RenewedFrom() == "" {
			break
		}
		cur = rec.RenewedFrom()
		c.fleetMu.Lock()
		o, ok := c.origins[cur]
		c.fleetMu.Unlock()
		if ok {
			cur = o
			break
		}
	}
	c.fleetMu.Lock()
	if len(c.origins) > 100_000 {
		clear(c.origins)
	}
	c.origins[serial] = cur
	c.fleetMu.Unlock()
	return cur
}

// BundleStream is one sidecar's bundle stream (SyncTrustBundle) as the CA
// sees it: what it was sent, and its ACKs.
type BundleStream struct {
	c    *CA
	key  string
	sent map[uint64][]string // version -> sorted root fingerprints
	last uint64
}

// OpenBundleStream registers the stream of a sidecar that presented leaf
// (verified against the bundle, not revoked: the caller checks it) for id,
// and calls itself instance. Close it when the stream ends.
func (c *CA) OpenBundleStream(leaf *x509.Certificate, id identity.ID, instance string) (*BundleStream, error) {
	if leaf == nil || id.IsZero() {
		return nil, refuse(KindUnauthenticated, ReasonUnauthenticated, "the bundle stream needs the sidecar's workload certificate (mTLS): an ACK counts for the certificate's holder only")
	}
	if err := checkInstance(instance); err != nil {
		return nil, refuse(KindInvalid, "bad_instance", "%v", err)
	}
	serial := identity.SerialHex(leaf)
	origin := c.lineageOrigin(serial)
	lineage := origin != ""
	if !lineage {
		origin = id.String()
	}
	key := origin + "/" + instance
	now := c.cfg.Clock()
	c.fleetMu.Lock()
	e := c.fleet[key]
	if e == nil {
		drop, err := c.makeRoomLocked(origin, lineage, now)
		if err == nil {
			e = &fleetEntry{rec: SidecarRecord{Key: key, Instance: instance}}
			c.fleet[key] = e
		}
		c.fleetMu.Unlock()
		for _, k := range drop {
			if derr := c.store.DeleteSidecar(k); derr != nil {
				c.log.Error("drop sidecar record", "sidecar", k, "error", derr)
			} else {
				c.log.Info("sidecar record dropped to make room (certificate expired, or the oldest disconnected instance of its lineage)", "sidecar", k)
			}
		}
		if err != nil {
			return nil, err
		}
		c.fleetMu.Lock()
		if e2 := c.fleet[key]; e2 != nil {
			e = e2
		} else { // forgotten in between
			c.fleet[key] = e
		}
	}
	if e.streams == 0 {
		e.rec.Connected, e.rec.Since = true, now.UTC()
	}
	e.streams++
	e.rec.SPIFFEID, e.rec.Serial, e.rec.CertNotAfter = id.String(), serial, leaf.NotAfter.UTC()
	rec := e.rec
	c.fleetMu.Unlock()
	// A new member is written before it is sent anything: after a crash
	// it is waited for even if it has not reconnected yet.
	if err := c.store.PutSidecar(&rec); err != nil {
		c.CloseStream(key)
		return nil, internal("record sidecar", err)
	}
	return &BundleStream{c: c, key: key, sent: map[uint64][]string{}}, nil
}

// Key names the sidecar the stream belongs to.
func (s *BundleStream) Key() string { return s.key }

// Sent records that b is being sent on the stream.
func (s *BundleStream) Sent(b *TrustBundle) {
	s.sent[b.Version] = rootFingerprints(b.Roots)
	s.last = max(s.last, b.Version)
	for v := range s.sent {
		if v+16 < s.last {
			delete(s.sent, v)
		}
	}
}

func rootFingerprints(roots []*x509.Certificate) []string {
	out := make([]string, 0, len(roots))
	for _, r := range roots {
		out = append(out, identity.Fingerprint(r))
	}
	sort.Strings(out)
	return slices.Compact(out)
}

// Ack records that the sidecar installed bundle version (whose roots are
// roots, SHA-256 hex), or failed to with installErr. It refuses, with an
// *Error, a version this stream was not sent and roots that are not that
// version's; the caller ends the stream then.
func (s *BundleStream) Ack(version uint64, roots []string, installErr string) error {
	want, ok := s.sent[version]
	if !ok {
		s.c.metrics.acks.WithLabelValues("refused").Inc()
		return refuse(KindInvalid, "ack_unknown_version", "ACK for bundle version %d, which this stream was never sent (last sent: %d)", version, s.last)
	}
	got := slices.Clone(roots)
	sort.Strings(got)
	got = slices.Compact(got)
	if installErr == "" && !slices.Equal(got, want) {
		s.c.metrics.acks.WithLabelValues("refused").Inc()
		return refuse(KindInvalid, "ack_roots_mismatch", "ACK for bundle version %d names roots %s; that version holds %s", version, shortFPs(got), shortFPs(want))
	}
	if len(installErr) > 1024 {
		installErr = installErr[:1024]
	}
	c := s.c
	now := c.cfg.Clock().UTC()
	c.fleetMu.Lock()
	e := c.fleet[s.key]
	if e == nil { // forgotten while connected: it is back
		e = &fleetEntry{rec: SidecarRecord{Key: s.key}, streams: 1}
		c.fleet[s.key] = e
	}
	switch {
	case installErr != "":
		c.metrics.acks.WithLabelValues("nack").Inc()
		e.rec.Error, e.rec.ErrorVersion = installErr, version
	case version >= e.rec.AckedVersion:
		c.metrics.acks.WithLabelValues("ack").Inc()
		e.rec.AckedVersion, e.rec.AckedRoots, e.rec.AckedAt = version, want, now
		if e.rec.ErrorVersion <= version {
			e.rec.Error, e.rec.ErrorVersion = "", 0
		}
	default: // an older version, ACKed late: nothing to record
		c.metrics.acks.WithLabelValues("ack").Inc()
	}
	rec := e.rec
	c.fleetMu.Unlock()
	if err := c.store.PutSidecar(&rec); err != nil {
		return internal("record ACK", err)
	}
	if installErr == "" {
		c.kickRotation()
	}
	return nil
}

func shortFPs(fps []string) string {
	out := make([]string, len(fps))
	for i, f := range fps {
		out[i] = f[:min(16, len(f))]
	}
	return "[" + strings.Join(out, " ") + "]"
}

// Close ends the stream: with no other stream of the same sidecar open,
// it is disconnected from now.
func (s *BundleStream) Close() { s.c.CloseStream(s.key) }

// CloseStream: see BundleStream.Close.
func (c *CA) CloseStream(key string) {
	c.fleetMu.Lock()
	e := c.fleet[key]
	if e == nil {
		c.fleetMu.Unlock()
		return
	}
	e.streams--
	if e.streams > 0 {
		c.fleetMu.Unlock()
		return
	}
	e.streams = 0
	e.rec.Connected, e.rec.Since = false, c.cfg.Clock().UTC()
	rec := e.rec
	c.fleetMu.Unlock()
	if err := c.store.PutSidecar(&rec); err != nil {
		c.log.Error("record sidecar disconnect", "sidecar", key, "error", err)
	}
}

// fleetRenewed follows a renewal over mTLS: a bundle stream keeps the TLS
// connection it was opened on, so its record names the certificate of
// that handshake. Renewed from it (from = the presented serial), the
// sidecar now holds a certificate that lives longer; without this a
// sidecar that renewed on a live stream and then went away would stop
// being waited for at its first certificate's expiry, while its renewed
// one still lets it serve with the old bundle. (Our agent also reopens its
// stream when its certificate changes, agent.FollowBundle; this holds when
// that reopen fails or the sidecar does not.) Only the CA's own issuance
// moves the record (nothing the sidecar says), and only forward: it waits
// longer, never less. A scan of the fleet per renewal, as makeRoomLocked
// does per new sidecar.
func (c *CA) fleetRenewed(from, serial string, notAfter time.Time) {
	c.fleetMu.Lock()
	var recs []SidecarRecord
	for _, e := range c.fleet {
		if e.rec.Serial == from && notAfter.After(e.rec.CertNotAfter) {
			e.rec.Serial, e.rec.CertNotAfter = serial, notAfter.UTC()
			recs = append(recs, e.rec)
		}
	}
	c.fleetMu.Unlock()
	for i := range recs {
		if err := c.store.PutSidecar(&recs[i]); err != nil {
			c.log.Error("record sidecar renewal", "sidecar", recs[i].Key, "error", err)
		}
	}
}

// ForgetSidecars drops sidecars the operator knows are gone for good
// (decommissioned, their certificates destroyed), by key, SPIFFE ID or
// instance name; it returns the keys it dropped. A sidecar that is
// connected is not forgotten.
func (c *CA) ForgetSidecars(names []string) ([]string, error) {
	var gone []string
	c.fleetMu.Lock()
	for k, e := range c.fleet {
		if e.streams > 0 {
			continue
		}
		for _, n := range names {
			if n != "" && (n == k || n == e.rec.SPIFFEID || n == e.rec.Instance) {
				gone = append(gone, k)
				delete(c.fleet, k)
				break
			}
		}
	}
	c.fleetMu.Unlock()
	sort.Strings(gone)
	for _, k := range gone {
		if err := c.store.DeleteSidecar(k); err != nil {
			return gone, internal("forget sidecar", err)
		}
		c.log.Warn("sidecar forgotten by the operator", "sidecar", k)
	}
	if len(gone) > 0 {
		c.kickRotation()
	}
	return gone, nil
}

// fleetRecords is every sidecar record: this process's, and, with a
// store shared by replicas (internal/kube's SecretStore), the other
// replicas' sidecars as the store holds them. A sidecar with a stream to
// this process is as this process knows it; any other as the store says
// (it may be connected to another replica).
func (c *CA) fleetRecords() []SidecarRecord {
	var shared []SidecarRecord
	if sh, ok := c.store.(SharedStore); ok && sh.SharedByReplicas() {
		var err error
		if shared, err = c.store.Sidecars(); err != nil {
			c.log.Error("read the shared sidecar records; using this replica's", "error", err)
		}
	}
	c.fleetMu.Lock()
	defer c.fleetMu.Unlock()
	recs := make([]SidecarRecord, 0, len(c.fleet)+len(shared))
	seen := map[string]bool{}
	for _, r := range shared {
		if e := c.fleet[r.Key]; e != nil && e.streams > 0 {
			continue
		}
		seen[r.Key] = true
		recs = append(recs, r)
	}
	for k, e := range c.fleet {
		if !seen[k] {
			recs = append(recs, e.rec)
		}
	}
	return recs
}

// fleetReport describes every sidecar for a rotation whose new root is
// newRoot ("" for none): whether it has ACKed it, whether it holds the
// switch back (only while gating: the rotation waits for ACKs), and why.
func (c *CA) fleetReport(newRoot string, gating bool, now time.Time) (out []careport.SidecarAck, waiting int) {
	recs := c.fleetRecords()
	c.fleetMu.Lock()
	goneFn := c.gone
	c.fleetMu.Unlock()
	sort.Slice(recs, func(i, j int) bool {
		if recs[i].SPIFFEID != recs[j].SPIFFEID {
			return recs[i].SPIFFEID < recs[j].SPIFFEID
		}
		return recs[i].Key < recs[j].Key
	})
	for _, r := range recs {
		a := careport.SidecarAck{
			Key: r.Key, SPIFFEID: r.SPIFFEID, Instance: r.Instance, Serial: r.Serial, CertNotAfter: r.CertNotAfter,
			Connected: r.Connected, Since: r.Since, AckedVersion: r.AckedVersion, AckedAt: r.AckedAt,
			HasNewRoot: newRoot != "" && slices.Contains(r.AckedRoots, newRoot), Error: r.Error, ErrorVersion: r.ErrorVersion,
		}
		gone := !r.Connected && gating && !a.HasNewRoot && goneFn != nil && goneFn(r.SPIFFEID, r.Instance)
		a.Blocking, a.Why = sidecarWhy(r, a.HasNewRoot, gating, gone, now)
		if a.Blocking {
			waiting++
		}
		out = append(out, a)
	}
	return out, waiting
}

// sidecarWhy says whether r holds a rotation's switch back, and why.
func sidecarWhy(r SidecarRecord, hasNew, rotating, gone bool, now time.Time) (bool, string) {
	ts := func(t time.Time) string { return t.UTC().Format(time.RFC3339) }
	acked := "has ACKed no bundle yet"
	if !r.AckedAt.IsZero() {
		acked = fmt.Sprintf("last ACKed bundle version %d at %s", r.AckedVersion, ts(r.AckedAt))
	}
	if r.Error != "" {
		acked += fmt.Sprintf("; install error on version %d: %s", r.ErrorVersion, r.Error)
	}
	switch {
	case !rotating || hasNew:
		if r.Connected {
			return false, "connected since " + ts(r.Since) + "; " + acked
		}
		return false, "disconnected since " + ts(r.Since) + "; " + acked
	case r.Connected:
		if !r.AckedAt.IsZero() {
			acked += " (without the new root)"
		}
		return true, "connected since " + ts(r.Since) + "; " + acked
	case !now.Before(r.CertNotAfter):
		return false, "disconnected since " + ts(r.Since) + "; its certificate expired at " + ts(r.CertNotAfter) + ", so it serves no mesh traffic: not waited for"
	case gone:
		return false, "disconnected since " + ts(r.Since) + "; its pod " + r.Instance + " no longer exists: not waited for"
	default:
		return true, fmt.Sprintf("disconnected since %s; %s; its certificate (serial %s) is valid until %s, so it may still serve with the old bundle (waited for until then, or `meshctl ca rotation forget %s`)",
			ts(r.Since), acked, r.Serial, ts(r.CertNotAfter), r.Key)
	}
}
