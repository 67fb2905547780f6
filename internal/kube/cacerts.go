package kube

import (
	"context"
	"fmt"
	"log/slog"
	"slices"
	"sync"
	"time"

	corev1 "k8s.io/api/core/v1"
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
}

func (p *PluggedSecret) Mode() string   { return "plugged-in" }
func (p *PluggedSecret) Source() string { return "Kubernetes secret " + p.ns + "/" + PluggedCASecret }

// Authorities returns the CA in force.
func (p *PluggedSecret) Authorities() ([]*ca.Authority, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.cur.Authorities()
}

// loadCacerts checks a cacerts Secret as a plugged-in CA.
func loadCacerts(ns string, s *corev1.Secret, now time.Time) (ca.Backend, error) {
	for _, k := range []string{CACertKey, CAKeyKey, CertChainKey, RootCertKey} {
		if len(s.Data[k]) == 0 {
			return nil, fmt.Errorf("kube: secret %s/%s has no %s: a plugged-in CA needs ca-cert.pem, ca-key.pem, cert-chain.pem and root-cert.pem", ns, PluggedCASecret, k)
		}
	}
	return ca.NewPluggedBackend(secretCA(ns, PluggedCASecret, s.Data[CACertKey], s.Data[CAKeyKey], s.Data[CertChainKey], s.Data[RootCertKey]), now)
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
