package kube

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/fields"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes"
	corelisters "k8s.io/client-go/listers/core/v1"
	"k8s.io/client-go/tools/cache"
	"k8s.io/client-go/util/workqueue"

	"github.com/meshauth/meshauth/internal/ca"
	"github.com/meshauth/meshauth/internal/identity"
)

// Signer is the part of the CA the secret controller uses (*ca.CA).
type Signer interface {
	Sign(ctx context.Context, caller ca.Caller, csr []byte, ttl time.Duration) (*ca.Issued, error)
	Bundle() *ca.TrustBundle
	TrustDomain() string
}

// SecretControllerConfig configures the CA controller's secret mode.
type SecretControllerConfig struct {
	Client kubernetes.Interface
	CA     Signer
	// Namespaces limits the controller to these namespaces; empty means all.
	Namespaces []string
	// CertTTL of workload certificates (default 90 days, the seed's
	// Not Before/Not After span).
	CertTTL time.Duration
	// GracePeriodRatio: a certificate is re-issued when less than this share
	// of its lifetime is left (default 0.5).
	GracePeriodRatio float64
	// MinGracePeriod is the least remaining life before re-issue (default
	// 10 minutes), so short-lived certificates are renewed in time.
	MinGracePeriod time.Duration
	// ResyncPeriod re-checks every ServiceAccount (default 1 minute): that is
	// what renews certificates as they age and repairs edited Secrets.
	ResyncPeriod time.Duration
	// Clock decides renewal (default time.Now). Tests share one with the CA.
	Clock func() time.Time
	Log   *slog.Logger
}

// SecretController keeps one Secret istio.<sa> of type istio.io/key-and-cert
// per ServiceAccount, holding cert-chain.pem, key.pem and root-cert.pem for
// spiffe://<td>/ns/<ns>/sa/<sa>: created with the ServiceAccount, re-created
// if deleted, re-issued before expiry or when the root changes, and deleted
// with its ServiceAccount. This is the seed's (Istio 0.8 Citadel's) secret
// mode; the CA makes the key, so CSR mode (the key never leaves the pod) is
// preferred where the sidecar supports it.
type SecretController struct {
	cfg          SecretControllerConfig
	log          *slog.Logger
	ns           map[string]bool
	factory      informers.SharedInformerFactory
	secrets      informers.SharedInformerFactory
	saLister     corelisters.ServiceAccountLister
	secretLister corelisters.SecretLister
	queue        workqueue.TypedRateLimitingInterface[string]
	synced       []cache.InformerSynced
}

// NewSecretController fills cfg's defaults and sets up the informers; call
// Run to start it.
func NewSecretController(cfg SecretControllerConfig) (*SecretController, error) {
	if cfg.Client == nil || cfg.CA == nil {
		return nil, errors.New("kube: secret controller needs Client and CA")
	}
	if cfg.CertTTL == 0 {
		cfg.CertTTL = 90 * 24 * time.Hour
	}
	if cfg.GracePeriodRatio == 0 {
		cfg.GracePeriodRatio = 0.5
	}
	if cfg.GracePeriodRatio < 0 || cfg.GracePeriodRatio >= 1 {
		return nil, fmt.Errorf("kube: grace period ratio %v: want 0 < ratio < 1", cfg.GracePeriodRatio)
	}
	if cfg.MinGracePeriod == 0 {
		cfg.MinGracePeriod = 10 * time.Minute
	}
	if cfg.ResyncPeriod == 0 {
		cfg.ResyncPeriod = time.Minute
	}
	if cfg.Clock == nil {
		cfg.Clock = time.Now
	}
	if cfg.Log == nil {
		cfg.Log = slog.Default()
	}
	c := &SecretController{
		cfg: cfg,
		log: cfg.Log.With("component", "secret-controller"),
		queue: workqueue.NewTypedRateLimitingQueueWithConfig(workqueue.DefaultTypedControllerRateLimiter[string](),
			workqueue.TypedRateLimitingQueueConfig[string]{Name: "istio-secrets"}),
	}
	if len(cfg.Namespaces) > 0 {
		c.ns = map[string]bool{}
		for _, n := range cfg.Namespaces {
			c.ns[n] = true
		}
	}
	c.factory = informers.NewSharedInformerFactory(cfg.Client, cfg.ResyncPeriod)
	// Only our Secrets: a cluster can hold many large Secrets we never read.
	c.secrets = informers.NewSharedInformerFactoryWithOptions(cfg.Client, cfg.ResyncPeriod,
		informers.WithTweakListOptions(func(o *metav1.ListOptions) {
			o.FieldSelector = fields.OneTermEqualSelector("type", SecretType).String()
		}))
	sa := c.factory.Core().V1().ServiceAccounts()
	sec := c.secrets.Core().V1().Secrets()
	c.saLister, c.secretLister = sa.Lister(), sec.Lister()
	c.synced = []cache.InformerSynced{sa.Informer().HasSynced, sec.Informer().HasSynced}

	enqueueSA := func(obj any) {
		if key, err := cache.DeletionHandlingMetaNamespaceKeyFunc(obj); err == nil && c.watched(key) {
			c.queue.Add(key)
		}
	}
	// The resync period replays every object as an update: that is the
	// periodic re-check that renews ageing certificates.
	_, _ = sa.Informer().AddEventHandler(cache.ResourceEventHandlerFuncs{
		AddFunc:    enqueueSA,
		UpdateFunc: func(_, obj any) { enqueueSA(obj) },
		DeleteFunc: enqueueSA,
	})
	enqueueOwner := func(obj any) {
		if d, ok := obj.(cache.DeletedFinalStateUnknown); ok {
			obj = d.Obj
		}
		s, ok := obj.(*corev1.Secret)
		if !ok {
			return
		}
		name := s.Annotations[AnnotationServiceAccount]
		if name == "" || s.Name != SecretName(name) {
			return
		}
		if key := s.Namespace + "/" + name; c.watched(key) {
			c.queue.Add(key)
		}
	}
	_, _ = sec.Informer().AddEventHandler(cache.ResourceEventHandlerFuncs{
		UpdateFunc: func(_, obj any) { enqueueOwner(obj) },
		DeleteFunc: enqueueOwner,
	})
	return c, nil
}

func (c *SecretController) watched(key string) bool {
	if c.ns == nil {
		return true
	}
	ns, _, _ := strings.Cut(key, "/")
	return c.ns[ns]
}

// Run processes ServiceAccounts until ctx is done.
func (c *SecretController) Run(ctx context.Context) error {
	defer c.queue.ShutDown()
	c.factory.Start(ctx.Done())
	c.secrets.Start(ctx.Done())
	if !cache.WaitForCacheSync(ctx.Done(), c.synced...) {
		return fmt.Errorf("kube: secret controller: caches did not sync: %w", ctx.Err())
	}
	c.log.Info("secret controller running", "namespaces", c.cfg.Namespaces, "cert_ttl", c.cfg.CertTTL)
	go func() {
		<-ctx.Done()
		c.queue.ShutDown()
	}()
	for c.processNext(ctx) {
	}
	c.factory.Shutdown()
	c.secrets.Shutdown()
	return nil
}

func (c *SecretController) processNext(ctx context.Context) bool {
	key, quit := c.queue.Get()
	if quit {
		return false
	}
	defer c.queue.Done(key)
	if err := c.Reconcile(ctx, key); err != nil {
		c.log.Error("reconcile failed; will retry", "key", key, "error", err)
		c.queue.AddRateLimited(key)
		return true
	}
	c.queue.Forget(key)
	return true
}

// Reconcile brings the Secret of ServiceAccount key (namespace/name) in
// line: created, re-issued, or deleted.
func (c *SecretController) Reconcile(ctx context.Context, key string) error {
	ns, name, err := cache.SplitMetaNamespaceKey(key)
	if err != nil {
		return err
	}
	secrets := c.cfg.Client.CoreV1().Secrets(ns)
	sa, err := c.saLister.ServiceAccounts(ns).Get(name)
	if apierrors.IsNotFound(err) {
		// The ServiceAccount is gone: its identity must not stay usable.
		err := secrets.Delete(ctx, SecretName(name), metav1.DeleteOptions{})
		if err == nil {
			c.log.Info("deleted secret of deleted service account", "namespace", ns, "secret", SecretName(name))
		}
		if apierrors.IsNotFound(err) {
			return nil
		}
		return err
	}
	if err != nil {
		return err
	}
	cur, err := c.secretLister.Secrets(ns).Get(SecretName(name))
	if err != nil && !apierrors.IsNotFound(err) {
		return err
	}
	if cur != nil {
		reason := c.renewReason(cur)
		if reason == "" {
			return nil
		}
		data, err := c.issue(ctx, ns, name)
		if err != nil {
			return err
		}
		upd := cur.DeepCopy()
		upd.Data = data
		if upd.Annotations == nil {
			upd.Annotations = map[string]string{}
		}
		upd.Annotations[AnnotationServiceAccount] = name
		if _, err := secrets.Update(ctx, upd, metav1.UpdateOptions{}); err != nil {
			return fmt.Errorf("update secret %s/%s: %w", ns, upd.Name, err)
		}
		c.log.Info("re-issued workload secret", "namespace", ns, "secret", upd.Name, "reason", reason)
		return nil
	}
	data, err := c.issue(ctx, ns, name)
	if err != nil {
		return err
	}
	t := true
	s := &corev1.Secret{
		ObjectMeta: metav1.ObjectMeta{
			Name: SecretName(name), Namespace: ns,
			Annotations: map[string]string{AnnotationServiceAccount: name},
			// With a garbage collector (a real cluster) the Secret also goes
			// when the ServiceAccount does, even if this controller is down.
			OwnerReferences: []metav1.OwnerReference{{
				APIVersion: "v1", Kind: "ServiceAccount", Name: name, UID: sa.UID, BlockOwnerDeletion: &t,
			}},
		},
		Type: SecretType,
		Data: data,
	}
	if _, err := secrets.Create(ctx, s, metav1.CreateOptions{}); err != nil {
		if apierrors.IsAlreadyExists(err) {
			// Our informer only sees Secrets of our type: one of another
			// type with our name is someone else's, and we leave it.
			if other, gerr := secrets.Get(ctx, s.Name, metav1.GetOptions{}); gerr == nil && other.Type != SecretType {
				c.log.Warn("a Secret with the workload secret's name but another type exists; not touching it",
					"namespace", ns, "secret", s.Name, "type", string(other.Type))
				return nil
			}
		}
		return fmt.Errorf("create secret %s/%s: %w", ns, s.Name, err)
	}
	c.log.Info("created workload secret", "namespace", ns, "secret", s.Name, "spiffe_id", "spiffe://"+c.cfg.CA.TrustDomain()+"/ns/"+ns+"/sa/"+name)
	return nil
}

// renewReason says why the Secret needs a new certificate, or "".
func (c *SecretController) renewReason(s *corev1.Secret) string {
	if s.Type != SecretType {
		return "" // not ours (someone else's Secret with our name): leave it
	}
	certs, err := identity.ParseCertsPEM(s.Data[CertChainKey])
	if err != nil || len(certs) == 0 {
		return "certificate missing or unreadable"
	}
	if len(s.Data[KeyKey]) == 0 {
		return "key missing"
	}
	want := strings.Join(c.cfg.CA.Bundle().RootsPEM, "")
	if !bytes.Equal(s.Data[RootCertKey], []byte(want)) {
		return "root changed"
	}
	leaf := certs[0]
	id := "spiffe://" + c.cfg.CA.TrustDomain() + "/ns/" + s.Namespace + "/sa/" + s.Annotations[AnnotationServiceAccount]
	if len(leaf.URIs) != 1 || leaf.URIs[0].String() != id {
		return "identity does not match the service account"
	}
	if NeedsRenewal(leaf.NotBefore, leaf.NotAfter, c.cfg.Clock(), c.cfg.GracePeriodRatio, c.cfg.MinGracePeriod) {
		return "within the grace period of expiry"
	}
	return ""
}

// NeedsRenewal reports whether a certificate valid from notBefore to
// notAfter must be re-issued at now: when the remaining life is under
// ratio × lifetime, or under minGrace if that is longer (Citadel's rule).
func NeedsRenewal(notBefore, notAfter, now time.Time, ratio float64, minGrace time.Duration) bool {
	grace := time.Duration(float64(notAfter.Sub(notBefore)) * ratio)
	if grace < minGrace {
		grace = minGrace
	}
	return !now.Add(grace).Before(notAfter)
}

// issue makes a key and has the CA sign it for ns/sa. The controller proves
// the identity itself (Method "self"): it acts for the ServiceAccount that
// it just read from the API, which only cluster admins can create.
func (c *SecretController) issue(ctx context.Context, ns, sa string) (map[string][]byte, error) {
	id, err := identity.New(c.cfg.CA.TrustDomain(), ns, sa)
	if err != nil {
		return nil, err
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, err
	}
	csr, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{URIs: nil}, key)
	if err != nil {
		return nil, err
	}
	iss, err := c.cfg.CA.Sign(ctx, ca.Caller{ID: id, Method: "self", Subject: "secret-controller"}, csr, c.cfg.CertTTL)
	if err != nil {
		return nil, fmt.Errorf("sign %s: %w", id, err)
	}
	der, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return nil, err
	}
	return map[string][]byte{
		CertChainKey: []byte(strings.Join(iss.ChainPEM, "")),
		KeyKey:       pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der}),
		RootCertKey:  []byte(strings.Join(iss.RootsPEM, "")),
	}, nil
}
