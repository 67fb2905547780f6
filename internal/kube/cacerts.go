package kube

import (
	"context"
	"crypto/sha256"
	"encoding/binary"
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
	"github.com/meshauth/meshauth/internal/identity"
)

// PluggedSecret is the ca.Backend of an operator's CA in Secret cacerts
// (ca-cert.pem, ca-key.pem, cert-chain.pem, root-cert.pem), held in memory.
// Watch takes in a changed Secret without a restart: a new intermediate
// signs from then on and the bundle follows (ca.CA.Refresh). A Secret that
// does not check out (a key that does not match, an expired or not-yet-
// valid certificate, one that is not a CA, a chain that does not reach
// root-cert.pem, a key missing) is refused with a log line naming what is
// wrong, and the last good CA stays in force.
type PluggedSecret struct {
	client kubernetes.Interface
	ns     string
	// Clock decides validity (default time.Now).
	Clock func() time.Time

	mu  sync.Mutex
	rv  string // resourceVersion of the Secret in force
	cur ca.Backend
	// next is the staged CA from cacerts-next (nil: none), activating at
	// nextAt (ca.Pending until the fleet has ACKed its root).
	next   ca.Backend
	nextAt time.Time
	nextRV string
}

func (p *PluggedSecret) Mode() string   { return "plugged-in" }
func (p *PluggedSecret) Source() string { return "Kubernetes secret " + p.ns + "/" + PluggedCASecret }

// Authorities returns the CA in force and the staged one, if any. Their
// IDs come from their certificates (the issuance log keeps which one
// signed what across the promotion of cacerts-next to cacerts).
func (p *PluggedSecret) Authorities() ([]*ca.Authority, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	cur, err := p.cur.Authorities()
	if err != nil {
		return nil, err
	}
	out := []*ca.Authority{withID(cur[0], time.Time{})}
	if p.next != nil {
		next, err := p.next.Authorities()
		if err != nil {
			return nil, err
		}
		out = append(out, withID(next[0], p.nextAt))
	}
	return out, nil
}

// withID is a copy of a with the ID of its certificate and activateAt.
func withID(a *ca.Authority, activateAt time.Time) *ca.Authority {
	c := *a
	sum := sha256.Sum256(a.Certificate.Raw)
	c.ID = binary.BigEndian.Uint64(sum[:8]) >> 1
	c.ActivateAt = activateAt
	return &c
}

// loadCacerts checks a cacerts (or cacerts-next) Secret as a plugged-in CA.
func loadCacerts(ns string, s *corev1.Secret, now time.Time) (ca.Backend, error) {
	for _, k := range []string{CACertKey, CAKeyKey, CertChainKey, RootCertKey} {
		if len(s.Data[k]) == 0 {
			return nil, fmt.Errorf("kube: secret %s/%s has no %s: a plugged-in CA needs ca-cert.pem, ca-key.pem, cert-chain.pem and root-cert.pem", ns, s.Name, k)
		}
	}
	return ca.NewPluggedBackend(secretCA(ns, s.Name, s.Data[CACertKey], s.Data[CAKeyKey], s.Data[CertChainKey], s.Data[RootCertKey]), now)
}

// apply takes s in force if it checks out and is newer than the one in
// force. It reports whether it changed the CA.
func (p *PluggedSecret) apply(s *corev1.Secret) (bool, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if s.ResourceVersion == p.rv || older(s.ResourceVersion, p.rv) {
		return false, nil
	}
	b, err := loadCacerts(p.ns, s, p.Clock())
	if err != nil {
		return false, err
	}
	p.cur, p.rv = b, s.ResourceVersion
	return true, nil
}

// Watch follows Secret cacerts until ctx is done, taking each good change
// in and calling refresh (ca.CA.Refresh) so the CA signs with it and the
// bundle carries its roots. A bad change, or the Secret's deletion, is
// logged and changes nothing.
func (p *PluggedSecret) Watch(ctx context.Context, refresh func() error, log *slog.Logger) error {
	log = log.With("secret", p.ns+"/"+PluggedCASecret)
	return watchSecret(ctx, p.client, p.ns, PluggedCASecret, log, func(s *corev1.Secret) {
		if s == nil {
			log.Error("plugged-in CA secret deleted; the CA keeps signing with the one it has")
			return
		}
		old, _ := p.Authorities()
		changed, err := p.apply(s)
		if err != nil {
			log.Error("plugged-in CA secret changed but is refused; the CA keeps signing with the last good one", "resource_version", s.ResourceVersion, "error", err)
			return
		}
		if !changed {
			return
		}
		now, _ := p.Authorities()
		log.Warn("plugged-in CA reloaded from the secret", "resource_version", s.ResourceVersion,
			"subject", now[0].Certificate.Subject.String(), "not_after", now[0].Certificate.NotAfter.UTC(), "root", identity.Fingerprint(now[0].Root))
		if !now[0].Root.Equal(old[0].Root) && !slices.ContainsFunc(now[0].OtherRoots, old[0].Root.Equal) {
			log.Warn("the new plugged-in CA does not trust the old root: certificates signed under it stop verifying once sidecars take the new bundle (put both roots in root-cert.pem to rotate without an outage)", "old_root", identity.Fingerprint(old[0].Root))
		}
		if err := refresh(); err != nil {
			log.Error("CA refresh after the plugged-in CA changed", "error", err)
		}
	})
}

// Annotations of cacerts-next: when `meshctl ca rotate-root --from
// cacerts-next` staged it, and when it started signing (once every
// sidecar had ACKed its root). A cacerts-next without the first is the
// operator's, not staged yet, and not in the bundle.
const (
	AnnotationStagedAt   = "meshauth.io/staged-at"
	AnnotationActivateAt = "meshauth.io/activate-at"
)

// Stage (ca.Stager) checks the operator's next CA in Secret cacerts-next
// (from must name it), marks it staged, and adds it to the bundle,
// not signing. Its root must differ from the one in force.
func (p *PluggedSecret) Stage(from string) error {
	if name := strings.TrimPrefix(from, "secret/"); name != PluggedCANextSecret {
		return fmt.Errorf("--from %q: stage the new CA from Secret %s/%s (put ca-cert.pem, ca-key.pem, cert-chain.pem and root-cert.pem there)", from, p.ns, PluggedCANextSecret)
	}
	return p.updateNext(func(s *corev1.Secret) (bool, error) {
		b, err := loadCacerts(p.ns, s, p.Clock())
		if err != nil {
			return false, err
		}
		nb, _ := b.Authorities()
		cb, _ := p.current()
		if nb[0].Root.Equal(cb[0].Root) {
			return false, fmt.Errorf("secret %s/%s has the root in force (%s): a rotation needs a new root", p.ns, PluggedCANextSecret, identity.Fingerprint(nb[0].Root)[:16])
		}
		if s.Annotations[AnnotationStagedAt] != "" {
			return false, nil
		}
		if s.Annotations == nil {
			s.Annotations = map[string]string{}
		}
		s.Annotations[AnnotationStagedAt] = p.Clock().UTC().Format(time.RFC3339)
		return true, nil
	})
}

func (p *PluggedSecret) current() ([]*ca.Authority, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.cur.Authorities()
}

// ActivateRoot (ca.Stager) records on cacerts-next when it starts signing.
func (p *PluggedSecret) ActivateRoot(id uint64, at time.Time) error {
	return p.updateNext(func(s *corev1.Secret) (bool, error) {
		if s.Annotations[AnnotationStagedAt] == "" {
			return false, fmt.Errorf("secret %s/%s is not staged", p.ns, PluggedCANextSecret)
		}
		s.Annotations[AnnotationActivateAt] = at.UTC().Format(time.RFC3339Nano)
		return true, nil
	})
}

// RetireRoot (ca.Stager) retires the CA in force once the staged one
// signs: cacerts gets cacerts-next's keys (so a restart finds the new CA
// there), then cacerts-next is deleted. A crash between the two leaves
// both holding the new CA; loading them again finishes the job (next).
// On Kubernetes each replica keeps its own issuance log, so the CA calls
// it only by the operator's `--retire` (force here) or never.
func (p *PluggedSecret) RetireRoot(id uint64, force bool) (bool, error) {
	if !force {
		return false, nil
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	api := p.client.CoreV1().Secrets(p.ns)
	next, err := api.Get(ctx, PluggedCANextSecret, metav1.GetOptions{})
	if err != nil {
		return false, fmt.Errorf("kube: read secret %s/%s: %w", p.ns, PluggedCANextSecret, err)
	}
	if next.Annotations[AnnotationActivateAt] == "" {
		return false, fmt.Errorf("secret %s/%s does not sign yet: the root in force cannot go", p.ns, PluggedCANextSecret)
	}
	for attempt := 0; ; attempt++ {
		cur, err := api.Get(ctx, PluggedCASecret, metav1.GetOptions{})
		if err != nil {
			return false, fmt.Errorf("kube: read secret %s/%s: %w", p.ns, PluggedCASecret, err)
		}
		cur = cur.DeepCopy()
		cur.Data = map[string][]byte{}
		for _, k := range []string{CACertKey, CAKeyKey, CertChainKey, RootCertKey} {
			cur.Data[k] = next.Data[k]
		}
		upd, err := api.Update(ctx, cur, metav1.UpdateOptions{})
		if apierrors.IsConflict(err) && attempt < 5 {
			continue
		}
		if err != nil {
			return false, fmt.Errorf("kube: write secret %s/%s: %w", p.ns, PluggedCASecret, err)
		}
		if _, err := p.apply(upd); err != nil {
			return false, err
		}
		break
	}
	if err := api.Delete(ctx, PluggedCANextSecret, metav1.DeleteOptions{}); err != nil && !apierrors.IsNotFound(err) {
		return false, fmt.Errorf("kube: delete secret %s/%s: %w", p.ns, PluggedCANextSecret, err)
	}
	p.mu.Lock()
	p.next, p.nextRV = nil, ""
	p.mu.Unlock()
	return true, nil
}

// updateNext reads cacerts-next, lets change edit it, writes it if change
// says so (retrying on a conflict), and takes the result in (applyNext).
func (p *PluggedSecret) updateNext(change func(*corev1.Secret) (bool, error)) error {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	api := p.client.CoreV1().Secrets(p.ns)
	for attempt := 0; ; attempt++ {
		s, err := api.Get(ctx, PluggedCANextSecret, metav1.GetOptions{})
		if apierrors.IsNotFound(err) {
			return fmt.Errorf("no secret %s/%s: create it with the new CA (ca-cert.pem, ca-key.pem, cert-chain.pem, root-cert.pem) first", p.ns, PluggedCANextSecret)
		}
		if err != nil {
			return fmt.Errorf("kube: read secret %s/%s: %w", p.ns, PluggedCANextSecret, err)
		}
		s = s.DeepCopy()
		changed, err := change(s)
		if err != nil {
			return err
		}
		if changed {
			s, err = api.Update(ctx, s, metav1.UpdateOptions{})
			if apierrors.IsConflict(err) && attempt < 5 {
				continue
			}
			if err != nil {
				return fmt.Errorf("kube: write secret %s/%s: %w", p.ns, PluggedCANextSecret, err)
			}
		}
		return p.applyNext(s)
	}
}

// applyNext takes in cacerts-next (nil: deleted): staged, it is in the
// bundle, signing from its activate-at annotation; not staged, or holding
// the CA already in force (a promotion that died before the delete), it
// is not.
func (p *PluggedSecret) applyNext(s *corev1.Secret) error {
	if s == nil || s.Annotations[AnnotationStagedAt] == "" {
		p.mu.Lock()
		p.next, p.nextRV = nil, ""
		p.mu.Unlock()
		return nil
	}
	b, err := loadCacerts(p.ns, s, p.Clock())
	if err != nil {
		return err
	}
	at := ca.Pending
	if v := s.Annotations[AnnotationActivateAt]; v != "" {
		if at, err = time.Parse(time.RFC3339Nano, v); err != nil {
			return fmt.Errorf("secret %s/%s annotation %s: %w", p.ns, PluggedCANextSecret, AnnotationActivateAt, err)
		}
	}
	nb, _ := b.Authorities()
	p.mu.Lock()
	defer p.mu.Unlock()
	if older(s.ResourceVersion, p.nextRV) {
		return nil
	}
	cb, _ := p.cur.Authorities()
	if nb[0].Certificate.Equal(cb[0].Certificate) {
		p.next, p.nextRV = nil, ""
		return nil
	}
	p.next, p.nextAt, p.nextRV = b, at, s.ResourceVersion
	return nil
}

// loadNext takes in a staged cacerts-next at start (a rotation in
// progress), and deletes one that already holds the CA in force (its
// promotion died before the delete).
func (p *PluggedSecret) loadNext(ctx context.Context, log *slog.Logger) error {
	api := p.client.CoreV1().Secrets(p.ns)
	s, err := api.Get(ctx, PluggedCANextSecret, metav1.GetOptions{})
	if apierrors.IsNotFound(err) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("kube: read secret %s/%s: %w", p.ns, PluggedCANextSecret, err)
	}
	if err := p.applyNext(s); err != nil {
		return err
	}
	p.mu.Lock()
	promoted := p.next == nil && s.Annotations[AnnotationActivateAt] != ""
	p.mu.Unlock()
	if promoted {
		log.Warn("finishing a staged CA's promotion: cacerts holds it already; deleting cacerts-next", "namespace", p.ns)
		if err := api.Delete(ctx, PluggedCANextSecret, metav1.DeleteOptions{}); err != nil && !apierrors.IsNotFound(err) {
			return fmt.Errorf("kube: delete secret %s/%s: %w", p.ns, PluggedCANextSecret, err)
		}
	}
	return nil
}

// WatchNext follows cacerts-next as Watch follows cacerts: a rotation
// staged, switched or finished on another replica reaches this one.
func (p *PluggedSecret) WatchNext(ctx context.Context, refresh func() error, log *slog.Logger) error {
	log = log.With("secret", p.ns+"/"+PluggedCANextSecret)
	return watchSecret(ctx, p.client, p.ns, PluggedCANextSecret, log, func(s *corev1.Secret) {
		if err := p.applyNext(s); err != nil {
			log.Error("staged CA secret changed but is refused; the rotation keeps the last good one", "error", err)
			return
		}
		if err := refresh(); err != nil {
			log.Error("CA refresh after the staged CA changed", "error", err)
		}
	})
}
