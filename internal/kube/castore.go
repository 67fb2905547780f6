package kube

import (
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"slices"
	"strings"
	"sync"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"

	"github.com/meshauth/meshauth/internal/ca"
)

// StoreSecret is the part of the CA store the control plane replicas
// share, in their namespace: the bundle version, the revocations and the
// revocations by identity (store.json). Every write is a read-modify-write
// of this one object with the API server's optimistic concurrency (the
// Update carries the resourceVersion it read; a conflict is read again and
// retried), so a write lands whole or not at all.
const (
	StoreSecret = "meshauth-ca-store"
	storeKey    = "store.json"
)

// storeDoc is StoreSecret's store.json.
type storeDoc struct {
	TrustDomain   string          `json:"trustDomain,omitempty"`
	BundleVersion uint64          `json:"bundleVersion"`
	Revocations   []ca.Revocation `json:"revocations"`
	// Identities are revocations by identity: every replica revokes what
	// it signed for the identity up to RevokedAt.
	Identities []IdentityRevocation `json:"identities,omitempty"`
	// Rotation is the root rotation in progress (or the last one), and
	// Sidecars the fleet whose ACKs it waits for: every replica's
	// sidecars, so that no replica switches signing while a sidecar
	// connected to another has not ACKed (internal/ca rotation.go,
	// fleet.go).
	Rotation *ca.RotationRecord `json:"rotation,omitempty"`
	Sidecars []ca.SidecarRecord `json:"sidecars,omitempty"`
}

// IdentityRevocation is `meshctl ca revoke --identity` made on some replica.
type IdentityRevocation struct {
	SPIFFEID  string    `json:"spiffe_id"`
	RevokedAt time.Time `json:"revoked_at"`
	Reason    string    `json:"reason,omitempty"`
}

func (r IdentityRevocation) key() string {
	return r.SPIFFEID + "@" + r.RevokedAt.UTC().Format(time.RFC3339Nano)
}

// identityKeep is how long an identity revocation, or the revocation of a
// serial no replica's log held when it was revoked, is kept: past the
// longest certificate lifetime a CA grants (90 days by default), nothing
// it could apply to is still valid.
const identityKeep = 91 * 24 * time.Hour

// SecretStoreConfig configures NewSecretStore.
type SecretStoreConfig struct {
	Client    kubernetes.Interface
	Namespace string // the control plane's namespace
	// Local keeps what each replica keeps for itself: the issuance log
	// (with the latest NotAfter per root) and join tokens
	// (ca.OpenStore(dir)). The SecretStore closes it.
	Local ca.Store
	// Clock (default time.Now) dates the lineage scans.
	Clock func() time.Time
	Log   *slog.Logger
}

// SecretStore is the ca.Store of a control plane replica on Kubernetes.
// What replicas must agree on is in the Secret StoreSecret: the bundle
// version and the revocations (by serial, lineage-expanded, and by
// identity), so a revocation made on any replica is in every replica's
// bundle and refused by every replica. The issuance log and join tokens
// stay in the replica's own bbolt store (Local): an apiserver object per
// issued certificate, kept a year, is more than etcd is for, and join
// tokens are a local-mode bootstrap (on Kubernetes workloads prove
// themselves with ServiceAccount tokens).
//
// Because each replica has its own log, each revokes the renewals in its
// own log of every revoked serial (the lineage) and what it signed for an
// identity revoked elsewhere, as soon as the revocation reaches it (Run's
// watch, or the fresh read a renewal makes), and writes those to the
// Secret. A renewal from a serial revoked in the Secret is refused; one
// that committed on this replica before the revocation reached it is
// revoked by that scan (the two take lineageMu in turn).
type SecretStore struct {
	ca.Store
	client kubernetes.Interface
	ns     string
	clock  func() time.Time
	log    *slog.Logger

	// lineageMu: renewals hold it (read) from their check of the parent
	// to their commit; Revoke and the lineage scan (settle) hold it
	// (write), so a renewal either commits before a scan that finds it,
	// or sees the revocation and is refused.
	lineageMu sync.RWMutex

	mu      sync.Mutex
	rv      string // resourceVersion doc was read at ("" before any)
	doc     storeDoc
	revoked map[string]bool
	scanned map[string]bool // revoked serials whose renewals here are revoked
	applied map[string]bool // identity revocations applied to the local log
}

var _ ca.Store = (*SecretStore)(nil)

// apiTimeout bounds each read-modify-write of the Secret; renewalReadTimeout
// the fresh read (and any scan it starts) a renewal makes.
const (
	apiTimeout         = 15 * time.Second
	renewalReadTimeout = 3 * time.Second
)

// NewSecretStore reads the shared Secret (it need not exist yet) and
// revokes what the local log renewed from the revocations in it. It fails
// if the API server cannot be read or the Secret does not parse: a replica
// must not serve a bundle without the mesh's revocations (a running replica
// rewrites a damaged Secret from its own copy; see update).
func NewSecretStore(ctx context.Context, cfg SecretStoreConfig) (*SecretStore, error) {
	if cfg.Log == nil {
		cfg.Log = slog.Default()
	}
	if cfg.Clock == nil {
		cfg.Clock = time.Now
	}
	s := &SecretStore{
		Store: cfg.Local, client: cfg.Client, ns: cfg.Namespace, clock: cfg.Clock,
		log:     cfg.Log.With("component", "ca-store", "secret", cfg.Namespace+"/"+StoreSecret),
		revoked: map[string]bool{}, scanned: map[string]bool{}, applied: map[string]bool{},
	}
	sec, err := s.get(ctx)
	if err != nil {
		return nil, err
	}
	if sec != nil {
		d, err := decodeStore(sec)
		if err != nil {
			return nil, fmt.Errorf("kube: secret %s/%s: %w (a running replica rewrites it from its copy; with none running, fix or delete it: deleting it forgets every revocation)", s.ns, StoreSecret, err)
		}
		s.set(sec.ResourceVersion, d)
	} else if err := s.migrate(ctx); err != nil {
		return nil, err
	}
	if err := s.settle(ctx); err != nil {
		return nil, err
	}
	return s, nil
}

// legacyRevocationsSecret is where revocations were shared before the
// store (revocations.json: the same revocations and identities lists).
const legacyRevocationsSecret, legacyRevocationsKey = "meshauth-revocations", "revocations.json"

// migrate seeds a new shared store from the Secret an older control plane
// shared revocations through, so an upgrade forgets none. An unreadable
// old Secret is reported and skipped.
func (s *SecretStore) migrate(ctx context.Context) error {
	old, err := s.client.CoreV1().Secrets(s.ns).Get(ctx, legacyRevocationsSecret, metav1.GetOptions{})
	if apierrors.IsNotFound(err) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("kube: read secret %s/%s: %w", s.ns, legacyRevocationsSecret, err)
	}
	d, err := decodeStore(&corev1.Secret{Data: map[string][]byte{storeKey: old.Data[legacyRevocationsKey]}})
	if err != nil {
		s.log.Warn("old revocations Secret unreadable; not migrated", "old_secret", legacyRevocationsSecret, "error", err)
		return nil
	}
	_, err = s.update(ctx, func(cur *storeDoc) bool {
		if len(cur.Revocations) > 0 || len(cur.Identities) > 0 {
			return false // another replica migrated first
		}
		cur.Revocations, cur.Identities = d.Revocations, d.Identities
		cur.BundleVersion++
		return true
	})
	if err == nil {
		s.log.Warn("revocations migrated from the old Secret; it can be deleted", "old_secret", legacyRevocationsSecret, "revocations", len(d.Revocations), "identities", len(d.Identities))
	}
	return err
}

// OpenCAStore opens a replica's CA store: the local bbolt file in dir
// (ca.OpenStore) under a SecretStore sharing what replicas must share in
// namespace ns.
func OpenCAStore(ctx context.Context, client kubernetes.Interface, ns, dir string, log *slog.Logger) (*SecretStore, error) {
	local, err := ca.OpenStore(dir)
	if err != nil {
		return nil, fmt.Errorf("kube: %w", err)
	}
	st, err := NewSecretStore(ctx, SecretStoreConfig{Client: client, Namespace: ns, Local: local, Log: log})
	if err != nil {
		local.Close()
		return nil, err
	}
	return st, nil
}

func decodeStore(sec *corev1.Secret) (storeDoc, error) {
	var d storeDoc
	data, ok := sec.Data[storeKey]
	if !ok {
		return d, fmt.Errorf("no key %s", storeKey)
	}
	if err := json.Unmarshal(data, &d); err != nil {
		return d, fmt.Errorf("key %s: %w", storeKey, err)
	}
	for i, r := range d.Revocations {
		if err := checkRevocation(r); err != nil {
			return d, fmt.Errorf("key %s: revocation %d: %w", storeKey, i, err)
		}
	}
	for i, r := range d.Identities {
		if r.SPIFFEID == "" || r.RevokedAt.IsZero() {
			return d, fmt.Errorf("key %s: identity revocation %d: spiffe_id and revoked_at are required", storeKey, i)
		}
	}
	return d, nil
}

// checkRevocation refuses an entry no CA would have written: the serial
// must be lowercase hex without leading zeros (the form every bundle
// check compares), and not_after is needed to prune it.
func checkRevocation(r ca.Revocation) error {
	s := r.Serial
	if s == "" || s[0] == '0' || strings.Trim(s, "0123456789abcdef") != "" {
		return fmt.Errorf("serial %q is not lowercase hex without leading zeros", s)
	}
	if r.NotAfter.IsZero() {
		return fmt.Errorf("serial %s: not_after missing", s)
	}
	return nil
}

// get reads the Secret; nil if it does not exist.
func (s *SecretStore) get(ctx context.Context) (*corev1.Secret, error) {
	ctx, cancel := context.WithTimeout(ctx, apiTimeout)
	defer cancel()
	sec, err := s.client.CoreV1().Secrets(s.ns).Get(ctx, StoreSecret, metav1.GetOptions{})
	if apierrors.IsNotFound(err) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("kube: read secret %s/%s: %w", s.ns, StoreSecret, err)
	}
	return sec, nil
}

// set takes d, read at rv, as the current state unless this replica has
// already seen a later one (a watch event older than its own write).
func (s *SecretStore) set(rv string, d storeDoc) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if rv == s.rv || older(rv, s.rv) {
		return
	}
	s.rv, s.doc = rv, d
	s.revoked = make(map[string]bool, len(d.Revocations))
	for _, r := range d.Revocations {
		s.revoked[r.Serial] = true
	}
	for k := range s.scanned {
		if !s.revoked[k] {
			delete(s.scanned, k) // pruned
		}
	}
}

// snapshot returns a copy of the current state.
func (s *SecretStore) snapshot() (string, storeDoc) {
	s.mu.Lock()
	defer s.mu.Unlock()
	d := s.doc
	d.Revocations = slices.Clone(d.Revocations)
	d.Identities = slices.Clone(d.Identities)
	d.Sidecars = slices.Clone(d.Sidecars)
	if d.Rotation != nil {
		r := *d.Rotation
		d.Rotation = &r
	}
	return s.rv, d
}

// absorb takes in a Secret seen on the watch or read fresh. A Secret that
// does not parse, or is gone, is rewritten from this replica's copy
// (repair).
func (s *SecretStore) absorb(ctx context.Context, sec *corev1.Secret) {
	if sec == nil {
		s.repair(ctx, "deleted")
		return
	}
	d, err := decodeStore(sec)
	if err != nil {
		s.repair(ctx, err.Error())
		return
	}
	s.set(sec.ResourceVersion, d)
}

// repair rewrites a missing or damaged Secret from this replica's copy, so
// that deleting or garbling it never drops a revocation while a replica
// runs.
func (s *SecretStore) repair(ctx context.Context, why string) {
	if rv, _ := s.snapshot(); rv == "" {
		return // nothing was ever written: nothing to restore
	}
	s.log.Warn("shared CA store Secret unreadable; rewriting it from this replica's copy", "problem", why)
	if _, err := s.update(ctx, func(*storeDoc) bool { return false }); err != nil {
		s.log.Error("shared CA store Secret not repaired", "error", err)
	}
}

// update applies change to the Secret as read now and writes it if change
// reports a change, retrying on a conflict with another replica's write.
// change may run several times; only the run whose write lands counts. A
// Secret missing or damaged after this replica has read a good one is
// rebuilt from its copy (and written even if change changes nothing), with
// the bundle version moved past it. It returns the document written (or
// read, if nothing changed).
func (s *SecretStore) update(ctx context.Context, change func(*storeDoc) bool) (storeDoc, error) {
	ctx, cancel := context.WithTimeout(ctx, apiTimeout)
	defer cancel()
	api := s.client.CoreV1().Secrets(s.ns)
	for attempt := 0; ; attempt++ {
		sec, err := s.get(ctx)
		if err != nil {
			return storeDoc{}, err
		}
		var d storeDoc
		restore := false
		if sec != nil {
			d, err = decodeStore(sec)
		}
		if sec == nil || err != nil {
			rv, mine := s.snapshot()
			if rv != "" {
				d, restore = mine, true
				d.BundleVersion++
			} else if err != nil {
				return storeDoc{}, fmt.Errorf("kube: secret %s/%s: %w", s.ns, StoreSecret, err)
			}
		}
		if !change(&d) && !restore {
			if sec != nil {
				s.set(sec.ResourceVersion, d)
			}
			return d, nil
		}
		data, err := json.Marshal(d)
		if err != nil {
			return storeDoc{}, err
		}
		var out *corev1.Secret
		if sec == nil {
			out, err = api.Create(ctx, &corev1.Secret{
				ObjectMeta: metav1.ObjectMeta{Name: StoreSecret, Namespace: s.ns, Labels: map[string]string{"app.kubernetes.io/part-of": "meshauth"}},
				Type:       corev1.SecretTypeOpaque,
				Data:       map[string][]byte{storeKey: data},
			}, metav1.CreateOptions{})
		} else {
			sec = sec.DeepCopy()
			if sec.Data == nil {
				sec.Data = map[string][]byte{}
			}
			sec.Data[storeKey] = data
			out, err = api.Update(ctx, sec, metav1.UpdateOptions{})
		}
		if (apierrors.IsConflict(err) || apierrors.IsAlreadyExists(err)) && attempt < 20 {
			continue
		}
		if err != nil {
			return storeDoc{}, fmt.Errorf("kube: write secret %s/%s: %w", s.ns, StoreSecret, err)
		}
		s.set(out.ResourceVersion, d)
		return d, nil
	}
}

// settle revokes, in the shared Secret, what this replica's log holds of
// revocations it has not scanned yet: the renewals of each revoked serial
// (the lineage) and, for each identity revocation, what it signed for
// that identity up to the revocation.
//
// Its own write may bring in other replicas' revocations (it reads the
// Secret afresh), so it goes on until nothing is left to scan.
func (s *SecretStore) settle(ctx context.Context) error {
	s.lineageMu.Lock()
	defer s.lineageMu.Unlock()
	for {
		more, err := s.settleOnce(ctx)
		if err != nil || !more {
			return err
		}
	}
}

// settleOnce scans for what is pending; more reports whether it scanned.
func (s *SecretStore) settleOnce(ctx context.Context) (more bool, err error) {
	_, d := s.snapshot()
	s.mu.Lock()
	var serials []ca.Revocation
	for _, r := range d.Revocations {
		if !s.scanned[r.Serial] {
			serials = append(serials, r)
		}
	}
	var ids []IdentityRevocation
	for _, r := range d.Identities {
		if !s.applied[r.key()] {
			ids = append(ids, r)
		}
	}
	s.mu.Unlock()
	if len(serials) == 0 && len(ids) == 0 {
		return false, nil
	}
	recs, err := s.Store.Issued()
	if err != nil {
		return false, fmt.Errorf("kube: read issuance log: %w", err)
	}
	now := s.clock()
	lin := ca.Lineage{}
	for _, r := range recs {
		lin.Add(r)
	}
	adds := lin.Revocations(serials, func(string) bool { return false }, now)
	for _, id := range ids {
		adds = append(adds, identityMatches(recs, id.SPIFFEID, id.RevokedAt, id.Reason, now)...)
	}
	if len(adds) > 0 {
		added, _, err := s.add(ctx, adds, nil)
		if err != nil {
			return false, err
		}
		for _, r := range added {
			s.log.Warn("revoked what this replica signed after a revocation on another replica", "serial", r.Serial, "spiffe_id", r.SPIFFEID, "reason", r.Reason)
		}
	}
	s.mu.Lock()
	for _, r := range serials {
		s.scanned[r.Serial] = true
	}
	for _, r := range adds {
		s.scanned[r.Serial] = true
	}
	for _, r := range ids {
		s.applied[r.key()] = true
	}
	s.mu.Unlock()
	return true, nil
}

// identityMatches returns a revocation for every certificate in recs of
// spiffeID issued at or before before and unexpired at now.
func identityMatches(recs []ca.IssuanceRecord, spiffeID string, before time.Time, reason string, now time.Time) []ca.Revocation {
	var out []ca.Revocation
	for _, r := range recs {
		if r.SPIFFEID != spiffeID || r.IssuedAt > before.Unix() || r.NotAfter < now.Unix() {
			continue
		}
		out = append(out, ca.Revocation{Serial: r.Serial, SPIFFEID: r.SPIFFEID, NotAfter: time.Unix(r.NotAfter, 0).UTC(), RevokedAt: now.UTC(), Reason: reason})
	}
	return out
}

// add writes the revocations in rs the Secret does not hold yet, and id if
// set, bumping the bundle version if a revocation was added; it returns
// those added and the version.
func (s *SecretStore) add(ctx context.Context, rs []ca.Revocation, id *IdentityRevocation) (added []ca.Revocation, version uint64, err error) {
	d, err := s.update(ctx, func(d *storeDoc) bool {
		added = nil
		have := make(map[string]bool, len(d.Revocations))
		for _, r := range d.Revocations {
			have[r.Serial] = true
		}
		for _, r := range rs {
			if !have[r.Serial] {
				have[r.Serial] = true
				d.Revocations = append(d.Revocations, r)
				added = append(added, r)
			}
		}
		changed := len(added) > 0
		if id != nil && !slices.ContainsFunc(d.Identities, func(x IdentityRevocation) bool { return x.key() == id.key() }) {
			d.Identities = append(d.Identities, *id)
			changed = true
		}
		if len(added) > 0 {
			d.BundleVersion++
		}
		return changed
	})
	if err != nil {
		return nil, 0, err
	}
	return added, d.BundleVersion, nil
}

// Revoke revokes serial (and its renewals in this replica's log) or every
// unexpired certificate this replica logged for spiffeID, in one write of
// the Secret. A serial this replica's log does not hold is revoked all
// the same (another replica may have signed it; the replica whose log has
// it revokes its renewals when the revocation reaches it) and kept for
// identityKeep. A revocation by identity is recorded for every replica to
// apply to its own log, and is not an error when this replica signed
// nothing for it.
func (s *SecretStore) Revoke(serial, spiffeID, reason string, now time.Time) ([]ca.Revocation, uint64, error) {
	s.lineageMu.Lock()
	defer s.lineageMu.Unlock()
	recs, err := s.Store.Issued()
	if err != nil {
		return nil, 0, fmt.Errorf("read issuance log: %w", err)
	}
	var mine []ca.Revocation
	var id *IdentityRevocation
	if serial != "" {
		root := ca.Revocation{Serial: serial, NotAfter: now.Add(identityKeep).UTC(), RevokedAt: now.UTC(), Reason: reason}
		i := slices.IndexFunc(recs, func(r ca.IssuanceRecord) bool { return r.Serial == serial })
		if i >= 0 {
			root.SPIFFEID, root.NotAfter = recs[i].SPIFFEID, time.Unix(recs[i].NotAfter, 0).UTC()
		} else {
			s.log.Info("revoking a serial this replica did not sign; every replica revokes its renewals", "serial", serial)
		}
		lin := ca.Lineage{}
		for _, r := range recs {
			lin.Add(r)
		}
		mine = append([]ca.Revocation{root}, lin.Revocations([]ca.Revocation{root}, func(string) bool { return false }, now)...)
	} else {
		mine = identityMatches(recs, spiffeID, now, reason, now)
		id = &IdentityRevocation{SPIFFEID: spiffeID, RevokedAt: now.UTC(), Reason: reason}
	}
	added, version, err := s.add(context.Background(), mine, id)
	if err != nil {
		return nil, 0, err
	}
	s.mu.Lock()
	for _, r := range mine {
		s.scanned[r.Serial] = true
	}
	if id != nil {
		s.applied[id.key()] = true
	}
	s.mu.Unlock()
	return added, version, nil
}

// RecordIssuance commits an issuance to the local log. A renewal is first
// checked against a fresh read of the Secret, so a revocation that has
// returned on any replica refuses it even before the watch event arrives;
// a revocation that lands between that read and the commit reaches this
// replica afterwards and its lineage scan revokes the renewal. If the API
// server cannot be read the check uses the last state seen (logged): the
// scan still follows once it can.
func (s *SecretStore) RecordIssuance(rec *ca.IssuanceRecord, serial []byte, tokenHash string, now time.Time) error {
	parent := rec.RenewedFrom()
	if parent == "" {
		return s.Store.RecordIssuance(rec, serial, tokenHash, now)
	}
	// A short wait: an API server that does not answer must not hold
	// renewals up for long.
	ctx, cancel := context.WithTimeout(context.Background(), renewalReadTimeout)
	defer cancel()
	if err := s.Sync(ctx); err != nil {
		s.log.Warn("renewal checked against the last revocations seen", "error", err)
	}
	s.lineageMu.RLock()
	defer s.lineageMu.RUnlock()
	s.mu.Lock()
	revoked := s.revoked[parent]
	s.mu.Unlock()
	if revoked {
		return &ca.Error{Kind: ca.KindUnauthenticated, Reason: ca.ReasonCallerCert,
			Msg: fmt.Sprintf("client certificate refused (revoked): serial %s was revoked while this renewal was in flight", parent)}
	}
	return s.Store.RecordIssuance(rec, serial, tokenHash, now)
}

// Sync reads the Secret now and, if it changed, scans the local log for
// the revocations new to this replica.
func (s *SecretStore) Sync(ctx context.Context) error {
	sec, err := s.get(ctx)
	if err != nil {
		return err
	}
	s.absorb(ctx, sec)
	return s.settle(ctx)
}

// TrustDomain checks want against the local store and the Secret, and
// records it in the Secret if it is the first.
func (s *SecretStore) TrustDomain(want string) (string, error) {
	td, err := s.Store.TrustDomain(want)
	if err != nil || td != want {
		return td, err
	}
	d, err := s.update(context.Background(), func(d *storeDoc) bool {
		if d.TrustDomain != "" {
			return false
		}
		d.TrustDomain = want
		return true
	})
	if err != nil {
		return "", err
	}
	return d.TrustDomain, nil
}

func (s *SecretStore) BundleVersion() (uint64, error) {
	_, d := s.snapshot()
	return d.BundleVersion, nil
}

func (s *SecretStore) Bump() (uint64, error) {
	d, err := s.update(context.Background(), func(d *storeDoc) bool { d.BundleVersion++; return true })
	return d.BundleVersion, err
}

func (s *SecretStore) Revocations() ([]ca.Revocation, error) {
	_, d := s.snapshot()
	return d.Revocations, nil
}

func (s *SecretStore) Counts() (issued, revoked, tokens int, err error) {
	issued, _, tokens, err = s.Store.Counts()
	_, d := s.snapshot()
	return issued, len(d.Revocations), tokens, err
}

// PruneRevocations drops revocations of expired certificates and identity
// revocations older than identityKeep. Every replica ticks, so it writes
// only when the last state seen has something to drop.
func (s *SecretStore) PruneRevocations(now time.Time) (int, uint64, error) {
	expired := func(r ca.Revocation) bool { return r.NotAfter.Before(now) }
	old := func(r IdentityRevocation) bool { return !r.RevokedAt.Add(identityKeep).After(now) }
	_, d := s.snapshot()
	if !slices.ContainsFunc(d.Revocations, expired) && !slices.ContainsFunc(d.Identities, old) {
		return 0, d.BundleVersion, nil
	}
	n := 0
	d, err := s.update(context.Background(), func(d *storeDoc) bool {
		before, ids := len(d.Revocations), len(d.Identities)
		d.Revocations = slices.DeleteFunc(d.Revocations, expired)
		d.Identities = slices.DeleteFunc(d.Identities, old)
		n = before - len(d.Revocations)
		if n > 0 {
			d.BundleVersion++
		}
		return n > 0 || ids != len(d.Identities)
	})
	return n, d.BundleVersion, err
}

// SharedByReplicas: the sidecar records in the Secret are every replica's
// (ca.SharedStore).
func (s *SecretStore) SharedByReplicas() bool { return true }

// Rotation is the rotation record in the shared Secret.
func (s *SecretStore) Rotation() (*ca.RotationRecord, error) {
	_, d := s.snapshot()
	return d.Rotation, nil
}

// PutRotation writes the rotation record to the shared Secret.
func (s *SecretStore) PutRotation(r *ca.RotationRecord) error {
	_, err := s.update(context.Background(), func(d *storeDoc) bool {
		c := *r
		d.Rotation = &c
		return true
	})
	return err
}

// Sidecars are the fleet's records in the shared Secret.
func (s *SecretStore) Sidecars() ([]ca.SidecarRecord, error) {
	_, d := s.snapshot()
	return d.Sidecars, nil
}

// PutSidecar writes one sidecar's record to the shared Secret, unless the
// Secret already holds exactly it.
func (s *SecretStore) PutSidecar(r *ca.SidecarRecord) error {
	_, err := s.update(context.Background(), func(d *storeDoc) bool {
		for i := range d.Sidecars {
			if d.Sidecars[i].Key == r.Key {
				if sameSidecar(d.Sidecars[i], *r) {
					return false
				}
				d.Sidecars[i] = *r
				return true
			}
		}
		d.Sidecars = append(d.Sidecars, *r)
		return true
	})
	return err
}

func sameSidecar(a, b ca.SidecarRecord) bool {
	x, _ := json.Marshal(a)
	y, _ := json.Marshal(b)
	return string(x) == string(y)
}

// DeleteSidecar drops one sidecar's record from the shared Secret.
func (s *SecretStore) DeleteSidecar(key string) error {
	_, err := s.update(context.Background(), func(d *storeDoc) bool {
		n := len(d.Sidecars)
		d.Sidecars = slices.DeleteFunc(d.Sidecars, func(r ca.SidecarRecord) bool { return r.Key == key })
		return n != len(d.Sidecars)
	})
	return err
}

// Run follows the Secret until ctx is done: each change made by another
// replica is taken in, the local log is scanned for it (settle), and
// onChange (ca.CA.Refresh, which does nothing if the version has not
// moved) rebuilds the bundle.
func (s *SecretStore) Run(ctx context.Context, onChange func() error) error {
	return watchSecret(ctx, s.client, s.ns, StoreSecret, s.log, func(sec *corev1.Secret) {
		s.absorb(ctx, sec)
		// Even with no news: a write of this replica's may have brought
		// in another's revocations, and a failed scan is retried here.
		if err := s.settle(ctx); err != nil && ctx.Err() == nil {
			s.log.Error("lineage scan after a revocation elsewhere failed; retried on the next change", "error", err)
		}
		if err := onChange(); err != nil && ctx.Err() == nil {
			s.log.Error("CA refresh after a store change", "error", err)
		}
	})
}
