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
	"k8s.io/apimachinery/pkg/fields"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/cache"

	"github.com/meshauth/meshauth/internal/ca"
)

// RevocationsSecret holds the mesh's revocations in the control plane's
// namespace, so that they outlive a control plane restart (the CA store is
// on an emptyDir) and reach every replica (each has its own store): every
// replica adds its own revocations to it and imports everyone else's.
const (
	RevocationsSecret = "meshauth-revocations"
	revocationsKey    = "revocations.json"
)

// revocationList is the Secret's revocations.json.
type revocationList struct {
	Revocations []ca.Revocation `json:"revocations"`
	// Identities are revocations by identity: every replica revokes what
	// it signed for the identity up to RevokedAt.
	Identities []IdentityRevocation `json:"identities,omitempty"`
}

// IdentityRevocation is `meshctl ca revoke --identity` made on some replica.
type IdentityRevocation struct {
	SPIFFEID  string    `json:"spiffe_id"`
	RevokedAt time.Time `json:"revoked_at"`
	Reason    string    `json:"reason,omitempty"`
}

// identityKeep is how long an identity revocation is kept: past the
// longest certificate lifetime a CA grants (90 days by default), nothing it
// could apply to is still valid.
const identityKeep = 91 * 24 * time.Hour

// IdentityRevocations collects this replica's revocations by identity (the
// CA's OnRevokeIdentity) for SyncRevocations to publish, and remembers which
// ones from the Secret were applied.
type IdentityRevocations struct {
	mu      sync.Mutex
	list    map[string]IdentityRevocation // key: id + revoked_at
	applied map[string]bool
	kick    chan struct{}
}

// NewIdentityRevocations returns an empty set; pass its Add as
// ca.Config.OnRevokeIdentity.
func NewIdentityRevocations() *IdentityRevocations {
	return &IdentityRevocations{list: map[string]IdentityRevocation{}, applied: map[string]bool{}, kick: make(chan struct{}, 1)}
}

func (r IdentityRevocation) key() string {
	return r.SPIFFEID + "@" + r.RevokedAt.UTC().Format(time.RFC3339Nano)
}

// Add records a revocation by identity made on this replica (already
// applied to its own log).
func (s *IdentityRevocations) Add(spiffeID string, at time.Time, reason string) {
	r := IdentityRevocation{SPIFFEID: spiffeID, RevokedAt: at.UTC(), Reason: reason}
	s.mu.Lock()
	s.list[r.key()] = r
	s.applied[r.key()] = true
	s.mu.Unlock()
	select {
	case s.kick <- struct{}{}:
	default:
	}
}

// apply revokes, in authority, what it signed for each identity revocation
// of theirs not applied yet, and keeps them for publishing.
func (s *IdentityRevocations) apply(authority *ca.CA, theirs []IdentityRevocation, log *slog.Logger) {
	for _, r := range theirs {
		s.mu.Lock()
		done := s.applied[r.key()]
		s.mu.Unlock()
		if done {
			continue
		}
		added, _, err := authority.RevokeIssuedBefore(r.SPIFFEID, r.RevokedAt, r.Reason)
		if err != nil {
			log.Warn("identity revocation skipped", "spiffe_id", r.SPIFFEID, "error", err)
			continue
		}
		if len(added) > 0 {
			log.Info("applied another replica's identity revocation", "spiffe_id", r.SPIFFEID, "revoked", len(added))
		}
		s.mu.Lock()
		s.applied[r.key()] = true
		s.list[r.key()] = r
		s.mu.Unlock()
	}
}

func (s *IdentityRevocations) snapshot() []IdentityRevocation {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := make([]IdentityRevocation, 0, len(s.list))
	for _, r := range s.list {
		out = append(out, r)
	}
	return out
}

// RevocationSyncConfig configures SyncRevocations.
type RevocationSyncConfig struct {
	Client    kubernetes.Interface
	Namespace string // the control plane's namespace
	CA        *ca.CA
	Log       *slog.Logger
	// Resync is how often the Secret is rewritten even with no change seen
	// (to drop expired entries). Default 10 minutes.
	Resync time.Duration
	// Identities, when set, carries revocations by identity (the CA's
	// OnRevokeIdentity must feed its Add).
	Identities *IdentityRevocations
}

// SyncRevocations runs on every replica until ctx is done: it imports the
// Secret's revocations into the CA whenever the Secret changes, and writes
// the CA's revocations (merged with the Secret's, expired ones dropped)
// whenever the CA's bundle changes. A malformed Secret is reported and
// ignored: it never removes a revocation the CA holds.
func SyncRevocations(ctx context.Context, cfg RevocationSyncConfig) error {
	if cfg.Log == nil {
		cfg.Log = slog.Default()
	}
	if cfg.Resync == 0 {
		cfg.Resync = 10 * time.Minute
	}
	if cfg.Identities == nil {
		cfg.Identities = NewIdentityRevocations()
	}
	log := cfg.Log.With("component", "revocation-sync", "secret", cfg.Namespace+"/"+RevocationsSecret)
	kick := make(chan struct{}, 1)
	poke := func(any) {
		select {
		case kick <- struct{}{}:
		default:
		}
	}
	factory := informers.NewSharedInformerFactoryWithOptions(cfg.Client, 0,
		informers.WithNamespace(cfg.Namespace),
		informers.WithTweakListOptions(func(o *metav1.ListOptions) {
			o.FieldSelector = fields.OneTermEqualSelector("metadata.name", RevocationsSecret).String()
		}))
	inf := factory.Core().V1().Secrets().Informer()
	_, _ = inf.AddEventHandler(cache.ResourceEventHandlerFuncs{AddFunc: poke, UpdateFunc: func(_, n any) { poke(n) }})
	factory.Start(ctx.Done())
	defer factory.Shutdown()
	if !cache.WaitForCacheSync(ctx.Done(), inf.HasSynced) {
		return nil
	}
	lister := factory.Core().V1().Secrets().Lister().Secrets(cfg.Namespace)
	for {
		b, changed := cfg.CA.Watch()
		// Import first, so that what is written below is the union.
		if s, err := lister.Get(RevocationsSecret); err == nil {
			if importSecret(cfg.CA, cfg.Identities, s, log) {
				b = cfg.CA.Bundle()
			}
		}
		if err := writeRevocations(ctx, cfg.Client, cfg.Namespace, b.Revocations, cfg.Identities.snapshot(), time.Now()); err != nil && ctx.Err() == nil {
			log.Warn("revocations Secret not written; retrying", "error", err)
			select {
			case <-ctx.Done():
				return nil
			case <-time.After(2 * time.Second):
			}
			continue
		}
		select {
		case <-ctx.Done():
			return nil
		case <-changed:
		case <-kick:
		case <-cfg.Identities.kick:
		case <-time.After(cfg.Resync):
		}
	}
}

func decodeRevocations(s *corev1.Secret) (*revocationList, error) {
	data, ok := s.Data[revocationsKey]
	if !ok {
		return nil, fmt.Errorf("no %s key", revocationsKey)
	}
	var list revocationList
	if err := json.Unmarshal(data, &list); err != nil {
		return nil, fmt.Errorf("%s: %w", revocationsKey, err)
	}
	return &list, nil
}

// writeRevocations merges mine into the Secret (creating it), drops expired
// entries, and writes only when the content changes. Conflicts with another
// replica's write are retried on a fresh read.
func writeRevocations(ctx context.Context, cs kubernetes.Interface, ns string, mine []ca.Revocation, myIDs []IdentityRevocation, now time.Time) error {
	for attempt := 0; ; attempt++ {
		s, err := cs.CoreV1().Secrets(ns).Get(ctx, RevocationsSecret, metav1.GetOptions{})
		create := apierrors.IsNotFound(err)
		if err != nil && !create {
			return err
		}
		merged := map[string]ca.Revocation{}
		ids := map[string]IdentityRevocation{}
		var old []byte
		if !create {
			old = s.Data[revocationsKey]
			if theirs, err := decodeRevocations(s); err == nil {
				for _, r := range theirs.Revocations {
					merged[r.Serial] = r
				}
				for _, r := range theirs.Identities {
					ids[r.key()] = r
				}
			}
		}
		for _, r := range myIDs {
			ids[r.key()] = r
		}
		for _, r := range mine {
			if _, ok := merged[r.Serial]; !ok {
				merged[r.Serial] = r
			}
		}
		var list revocationList
		list.Revocations = []ca.Revocation{}
		for _, r := range merged {
			if !r.NotAfter.Before(now) {
				list.Revocations = append(list.Revocations, r)
			}
		}
		for _, r := range ids {
			if r.RevokedAt.Add(identityKeep).After(now) {
				list.Identities = append(list.Identities, r)
			}
		}
		slices.SortFunc(list.Identities, func(a, b IdentityRevocation) int { return strings.Compare(a.key(), b.key()) })
		slices.SortFunc(list.Revocations, func(a, b ca.Revocation) int { return strings.Compare(a.Serial, b.Serial) })
		data, err := json.MarshalIndent(list, "", "  ")
		if err != nil {
			return err
		}
		if !create && string(old) == string(data) {
			return nil
		}
		if create {
			s = &corev1.Secret{
				ObjectMeta: metav1.ObjectMeta{Name: RevocationsSecret, Namespace: ns,
					Labels: map[string]string{"app": "meshauth-control"}},
				Type: corev1.SecretTypeOpaque,
				Data: map[string][]byte{revocationsKey: data},
			}
			_, err = cs.CoreV1().Secrets(ns).Create(ctx, s, metav1.CreateOptions{})
		} else {
			s = s.DeepCopy()
			if s.Data == nil {
				s.Data = map[string][]byte{}
			}
			s.Data[revocationsKey] = data
			_, err = cs.CoreV1().Secrets(ns).Update(ctx, s, metav1.UpdateOptions{})
		}
		if (apierrors.IsConflict(err) || apierrors.IsAlreadyExists(err)) && attempt < 5 {
			continue
		}
		return err
	}
}

// ImportRevocationsSecret reads the revocations Secret once and imports it:
// kube-control calls it before serving, so that a restarted control plane
// never hands out a bundle without the revocations made before. Only an
// unreachable API is an error; a missing Secret is an empty list.
func ImportRevocationsSecret(ctx context.Context, cs kubernetes.Interface, ns string, authority *ca.CA, ids *IdentityRevocations, log *slog.Logger) error {
	s, err := cs.CoreV1().Secrets(ns).Get(ctx, RevocationsSecret, metav1.GetOptions{})
	if apierrors.IsNotFound(err) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("read Secret %s/%s: %w", ns, RevocationsSecret, err)
	}
	importSecret(authority, ids, s, log.With("component", "revocation-sync", "secret", ns+"/"+RevocationsSecret))
	return nil
}

// importSecret imports what it can: a malformed Secret is reported (and
// rewritten from the CA's own list by the next write); a malformed entry is
// reported and skipped. It never removes a revocation the CA holds. It
// reports whether the CA's bundle changed.
func importSecret(authority *ca.CA, ids *IdentityRevocations, s *corev1.Secret, log *slog.Logger) bool {
	all, err := decodeRevocations(s)
	if err != nil {
		log.Warn("revocations Secret unreadable; it will be rewritten from this replica's revocations", "error", err)
		return false
	}
	v0 := authority.Bundle().Version
	if ids != nil {
		ids.apply(authority, all.Identities, log)
	}
	list := all.Revocations
	added, _, err := authority.ImportRevocations(list)
	if err != nil {
		// One bad entry must not hide the others: import one by one.
		added = nil
		for _, r := range list {
			a, _, err := authority.ImportRevocations([]ca.Revocation{r})
			if err != nil {
				log.Warn("revocation entry skipped", "serial", r.Serial, "error", err)
				continue
			}
			added = append(added, a...)
		}
	}
	if len(added) > 0 {
		log.Info("imported revocations", "added", len(added))
	}
	return authority.Bundle().Version != v0
}
