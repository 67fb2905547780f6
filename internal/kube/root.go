package kube

import (
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"log/slog"
	"math/big"
	"net"
	"slices"
	"strconv"
	"sync"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"

	"github.com/meshauth/meshauth/internal/ca"
	"github.com/meshauth/meshauth/internal/identity"
	"github.com/meshauth/meshauth/internal/pki"
)

// RootSource says where NewCABackend found the CA.
type RootSource string

const (
	// RootPlugged is an operator's CA from the cacerts Secret.
	RootPlugged RootSource = "cacerts"
	// RootSelfSigned is the self-signed root kept in istio-ca-secret.
	RootSelfSigned RootSource = "istio-ca-secret"
)

// NewCABackend finds the CA's signing key in the control plane's namespace
// and returns a ca.Backend that holds it in memory (no key is written to
// the pod's disk):
//
//   - a Secret "cacerts" with ca-cert.pem, ca-key.pem, cert-chain.pem and
//     root-cert.pem (an operator's intermediate) wins, as in the seed
//     (PluggedSecret: a change is taken in without a restart);
//   - otherwise the self-signed root in Secret "istio-ca-secret"
//     (ca-cert.pem, ca-key.pem), created on first start (SecretRoots; a
//     signing root that has expired or is about to is re-issued from its
//     key first, as Istio's root rotator does: RenewRoots).
//
// Keeping the root in a Secret, not on the pod's disk, is what lets the
// control plane restart or move without re-rooting the mesh. If two
// replicas race to create istio-ca-secret, the loser reads the winner's.
func NewCABackend(ctx context.Context, client kubernetes.Interface, namespace, trustDomain string, now time.Time, log *slog.Logger) (ca.Backend, RootSource, error) {
	if log == nil {
		log = slog.Default()
	}
	secrets := client.CoreV1().Secrets(namespace)
	if s, err := secrets.Get(ctx, PluggedCASecret, metav1.GetOptions{}); err == nil {
		p := &PluggedSecret{client: client, ns: namespace, Clock: func() time.Time { return now }}
		if _, err := p.apply(s); err != nil {
			return nil, "", err
		}
		if err := p.loadNext(ctx, log); err != nil {
			return nil, "", err
		}
		p.Clock = time.Now
		return p, RootPlugged, nil
	} else if !apierrors.IsNotFound(err) {
		return nil, "", fmt.Errorf("kube: read secret %s/%s: %w", namespace, PluggedCASecret, err)
	}

	s, err := secrets.Get(ctx, CASecret, metav1.GetOptions{})
	if apierrors.IsNotFound(err) {
		certPEM, keyPEM, gerr := newSelfSignedRoot(trustDomain, now)
		if gerr != nil {
			return nil, "", gerr
		}
		s, err = secrets.Create(ctx, &corev1.Secret{
			ObjectMeta: metav1.ObjectMeta{Name: CASecret, Namespace: namespace},
			Type:       CASecretType,
			Data:       map[string][]byte{CACertKey: certPEM, CAKeyKey: keyPEM},
		}, metav1.CreateOptions{})
		if apierrors.IsAlreadyExists(err) {
			s, err = secrets.Get(ctx, CASecret, metav1.GetOptions{})
		}
	}
	if err != nil {
		return nil, "", fmt.Errorf("kube: root secret %s/%s: %w", namespace, CASecret, err)
	}
	if _, err := decodeRoots(namespace, s); err != nil {
		return nil, "", err
	}
	r := &SecretRoots{client: client, ns: namespace, Clock: func() time.Time { return now }, RetireAfter: DefaultRetireAfter}
	if err := r.RenewRoots(log); err != nil {
		return nil, "", err
	}
	r.Clock = time.Now
	return r, RootSelfSigned, nil
}

// RootsKey is the key of istio-ca-secret that holds every self-signed root
// once the CA has rotated: JSON, oldest first. ca-cert.pem and ca-key.pem
// keep the oldest, for readers that know only those.
const RootsKey = "meshauth-roots.json"

// DefaultRetireAfter is how long after its successor starts signing a
// rotated-out root stays in istio-ca-secret: the CA's default maximum TTL
// (90 days) and a day, so that no replica can still have a valid
// certificate it signed.
const DefaultRetireAfter = 91 * 24 * time.Hour

type secretRoot struct {
	ID         uint64    `json:"id"`
	ActivateAt time.Time `json:"activateAt,omitzero"`
	Cert       string    `json:"cert"`
	Key        string    `json:"key"`
}

// SecretRoots is the ca.Backend and ca.Rotator of the self-signed roots in
// Secret istio-ca-secret. It holds the keys in memory only; a rotation is
// written to the Secret (with the API server's optimistic concurrency), and
// every replica picks it up through Watch and ca.CA.Refresh.
type SecretRoots struct {
	client kubernetes.Interface
	ns     string
	// Clock is the time RetireRoot decides by (default time.Now).
	Clock func() time.Time
	// RetireAfter: see DefaultRetireAfter.
	RetireAfter time.Duration

	mu    sync.Mutex
	rv    string // resourceVersion of the Secret the roots came from
	roots []secretRoot
	auths []*ca.Authority
}

func (r *SecretRoots) Mode() string   { return "self-signed" }
func (r *SecretRoots) Source() string { return "Kubernetes secret " + r.ns + "/" + CASecret }

// Authorities returns the roots last read from the Secret.
func (r *SecretRoots) Authorities() ([]*ca.Authority, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]*ca.Authority(nil), r.auths...), nil
}

// decodeRoots reads the roots of istio-ca-secret, unchecked.
func decodeRoots(ns string, s *corev1.Secret) ([]secretRoot, error) {
	var roots []secretRoot
	if j := s.Data[RootsKey]; len(j) > 0 {
		if err := json.Unmarshal(j, &roots); err != nil {
			return nil, fmt.Errorf("kube: secret %s/%s key %s: %w", ns, CASecret, RootsKey, err)
		}
		if len(roots) == 0 {
			return nil, fmt.Errorf("kube: secret %s/%s key %s holds no root", ns, CASecret, RootsKey)
		}
		return roots, nil
	}
	cert, key := s.Data[CACertKey], s.Data[CAKeyKey]
	if len(cert) == 0 || len(key) == 0 {
		return nil, fmt.Errorf("kube: secret %s/%s lacks %s or %s; delete it to have a new root made, or fill it in", ns, CASecret, CACertKey, CAKeyKey)
	}
	return []secretRoot{{ID: 0, Cert: string(cert), Key: string(key)}}, nil
}

// parseRoots reads the roots of istio-ca-secret and checks each as a
// plugged-in CA (a CA certificate, its key, valid now).
func parseRoots(ns string, s *corev1.Secret, now time.Time) ([]secretRoot, []*ca.Authority, error) {
	roots, err := decodeRoots(ns, s)
	if err != nil {
		return nil, nil, err
	}
	auths := make([]*ca.Authority, 0, len(roots))
	for i, sr := range roots {
		b, err := ca.NewPluggedBackend(rootCA(ns, s, i, sr), now)
		if err != nil {
			return nil, nil, err
		}
		as, _ := b.Authorities()
		a := *as[0]
		a.ID, a.ActivateAt = sr.ID, sr.ActivateAt
		auths = append(auths, &a)
	}
	return roots, auths, nil
}

// rootCA is root i of istio-ca-secret as a plugged-in CA, its keys named
// for refusals.
func rootCA(ns string, s *corev1.Secret, i int, sr secretRoot) ca.PluggedCA {
	p := secretCA(ns, CASecret, []byte(sr.Cert), []byte(sr.Key), []byte(sr.Cert), []byte(sr.Cert))
	if len(s.Data[RootsKey]) > 0 {
		name := fmt.Sprintf("secret %s/%s key %s root %d", ns, CASecret, RootsKey, i)
		p.CertName, p.KeyName, p.ChainName, p.RootName = name+" cert", name+" key", name+" cert", name+" cert"
	}
	return p
}

// RenewFraction: the signing root of istio-ca-secret is re-issued once
// less than this fraction of its lifetime is left (or it has expired), as
// Istio's self-signed root rotator does (its default grace period, 20 %).
const RenewFraction = 0.2

// renewRoots is what Istio's SelfSignedCARootCertRotator does to a root
// about to expire, for the roots of istio-ca-secret: the signing root
// (the newest that has started signing) is re-issued from its own key,
// with the same subject, for its original lifetime from now, once less
// than RenewFraction of its lifetime is left or it has expired. Same key
// and subject: every certificate it signed still verifies against the new
// root certificate and vice versa, so nothing in the mesh has to change
// but the bundle. An expired root that no longer signs is dropped
// (nothing it signed is still valid). It returns nil when nothing is due,
// and what it did, for the log.
func renewRoots(roots []secretRoot, now time.Time) ([]secretRoot, []string, error) {
	signer := -1
	for i, sr := range roots {
		if !sr.ActivateAt.After(now) && (signer < 0 || sr.ActivateAt.After(roots[signer].ActivateAt)) {
			signer = i
		}
	}
	var out []secretRoot
	var did []string
	for i, sr := range roots {
		cert, err := identity.ParseCertsPEM([]byte(sr.Cert))
		if err != nil || len(cert) == 0 {
			return nil, nil, fmt.Errorf("root %d: certificate: %v", sr.ID, err)
		}
		c := cert[0]
		life := c.NotAfter.Sub(c.NotBefore)
		switch {
		case i != signer && now.After(c.NotAfter) && sr.ActivateAt.Before(now):
			did = append(did, fmt.Sprintf("dropped root %d (expired %s, no longer signing)", sr.ID, c.NotAfter.UTC().Format(time.RFC3339)))
			continue
		case i == signer && c.NotAfter.Sub(now) < time.Duration(float64(life)*RenewFraction):
			key, err := ca.ParsePrivateKeyPEM([]byte(sr.Key))
			if err != nil {
				return nil, nil, fmt.Errorf("root %d: key: %w", sr.ID, err)
			}
			n, err := pki.SelfSignedCA(key, pki.CA{Subject: c.Subject, NotBefore: now.Add(-time.Hour), NotAfter: now.Add(life), KeyUsage: c.KeyUsage, URIs: c.URIs})
			if err != nil {
				return nil, nil, fmt.Errorf("root %d: re-issue: %w", sr.ID, err)
			}
			did = append(did, fmt.Sprintf("re-issued signing root %d from its own key (was valid until %s, now until %s)", sr.ID, c.NotAfter.UTC().Format(time.RFC3339), n.NotAfter.UTC().Format(time.RFC3339)))
			sr.Cert = string(pemCert(n))
		}
		out = append(out, sr)
	}
	if len(did) == 0 {
		return nil, nil, nil
	}
	return out, did, nil
}

// RenewRoots re-issues istio-ca-secret's signing root from its own key if
// it has expired or is about to (renewRoots), and writes it with the API
// server's optimistic concurrency: when replicas race, the first write
// wins and the others find nothing left to do. NewCABackend calls it
// before loading the roots, so an expired root no longer stops start-up;
// kube-control calls it every hour after.
func (r *SecretRoots) RenewRoots(log *slog.Logger) error {
	var did []string
	err := r.update(func(roots []secretRoot) ([]secretRoot, error) {
		out, d, err := renewRoots(roots, r.Clock())
		did = d
		return out, err
	})
	for _, d := range did {
		log.Warn("CA root in secret "+r.ns+"/"+CASecret+": "+d, "as", "Istio's self-signed root rotator")
	}
	return err
}

// RenewLoop calls RenewRoots every interval until ctx is done.
func (r *SecretRoots) RenewLoop(ctx context.Context, every time.Duration, log *slog.Logger) error {
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-time.After(every):
		}
		if err := r.RenewRoots(log); err != nil && ctx.Err() == nil {
			log.Error("CA root renewal check failed; retried in an hour", "secret", r.ns+"/"+CASecret, "error", err)
		}
	}
}

func (r *SecretRoots) apply(s *corev1.Secret, now time.Time) error {
	roots, auths, err := parseRoots(r.ns, s, now)
	if err != nil {
		return err
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	if older(s.ResourceVersion, r.rv) {
		return nil // a watch event older than this replica's own write
	}
	r.rv, r.roots, r.auths = s.ResourceVersion, roots, auths
	return nil
}

// older reports whether resourceVersion a is before b. Resource versions
// are opaque to clients, but the API server's (etcd revisions) are
// integers; anything else is never older.
func older(a, b string) bool {
	x, err1 := strconv.ParseUint(a, 10, 64)
	y, err2 := strconv.ParseUint(b, 10, 64)
	return err1 == nil && err2 == nil && x < y
}

// update applies change to the roots in the Secret and writes it, retrying
// on a conflict with another replica's write; change returns nil roots
// for no change. The result is checked (apply) after it is written.
func (r *SecretRoots) update(change func([]secretRoot) ([]secretRoot, error)) error {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	api := r.client.CoreV1().Secrets(r.ns)
	for attempt := 0; ; attempt++ {
		s, err := api.Get(ctx, CASecret, metav1.GetOptions{})
		if err != nil {
			return fmt.Errorf("kube: read secret %s/%s: %w", r.ns, CASecret, err)
		}
		roots, err := decodeRoots(r.ns, s)
		if err != nil {
			return err
		}
		roots, err = change(roots)
		if err != nil {
			return err
		}
		if roots == nil { // nothing to change
			return r.apply(s, r.Clock())
		}
		j, err := json.Marshal(roots)
		if err != nil {
			return err
		}
		s = s.DeepCopy()
		s.Data[RootsKey] = j
		s.Data[CACertKey], s.Data[CAKeyKey] = []byte(roots[0].Cert), []byte(roots[0].Key)
		s, err = api.Update(ctx, s, metav1.UpdateOptions{})
		if apierrors.IsConflict(err) && attempt < 5 {
			continue
		}
		if err != nil {
			return fmt.Errorf("kube: write secret %s/%s: %w", r.ns, CASecret, err)
		}
		return r.apply(s, r.Clock())
	}
}

// AddRoot writes a new root to the Secret. It refuses while another root
// there is still pending, which a rotation on another replica may have put.
func (r *SecretRoots) AddRoot(cert *x509.Certificate, key crypto.Signer, activateAt, now time.Time) error {
	der, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return err
	}
	return r.update(func(roots []secretRoot) ([]secretRoot, error) {
		var next uint64
		for _, sr := range roots {
			if sr.ActivateAt.After(now) {
				return nil, fmt.Errorf("a rotation is already pending in secret %s/%s (root %d signs from %s)", r.ns, CASecret, sr.ID, sr.ActivateAt.UTC().Format(time.RFC3339))
			}
			next = max(next, sr.ID+1)
		}
		return append(roots, secretRoot{ID: next, ActivateAt: activateAt, Cert: string(pemCert(cert)),
			Key: string(pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der}))}), nil
	})
}

// ActivateRoot writes when a root added as pending starts signing; every
// replica takes it in from its watch.
func (r *SecretRoots) ActivateRoot(id uint64, at time.Time) error {
	return r.update(func(roots []secretRoot) ([]secretRoot, error) {
		out := slices.Clone(roots)
		for i := range out {
			if out[i].ID == id {
				if out[i].ActivateAt.Equal(at) {
					return nil, nil
				}
				out[i].ActivateAt = at
				return out, nil
			}
		}
		return nil, fmt.Errorf("no root %d in secret %s/%s", id, r.ns, CASecret)
	})
}

// RetireRoot removes a root from the Secret once its successor has signed
// for RetireAfter: before that, another replica may still have valid
// certificates it signed, so the root stays (false). With force (the
// operator's `meshctl ca rotate-root --retire --force`) it goes now.
func (r *SecretRoots) RetireRoot(id uint64, force bool) (bool, error) {
	now := r.Clock()
	r.mu.Lock()
	var successor time.Time
	for _, sr := range r.roots {
		if sr.ID > id && !sr.ActivateAt.After(now) && (successor.IsZero() || sr.ActivateAt.Before(successor)) {
			successor = sr.ActivateAt
		}
	}
	r.mu.Unlock()
	if successor.IsZero() || (!force && now.Before(successor.Add(r.RetireAfter))) {
		return false, nil
	}
	err := r.update(func(roots []secretRoot) ([]secretRoot, error) {
		out := roots[:0:0]
		for _, sr := range roots {
			if sr.ID != id {
				out = append(out, sr)
			}
		}
		if len(out) == 0 {
			return nil, fmt.Errorf("root %d is the last one in secret %s/%s", id, r.ns, CASecret)
		}
		return out, nil
	})
	return err == nil, err
}

// Watch follows istio-ca-secret and, whenever another replica changed its
// roots, takes them in and calls refresh (ca.CA.Refresh) so the bundle
// follows. A Secret that does not parse is logged and ignored: the CA
// keeps the roots it has.
func (r *SecretRoots) Watch(ctx context.Context, refresh func() error, log *slog.Logger) error {
	return watchSecret(ctx, r.client, r.ns, CASecret, log, func(s *corev1.Secret) {
		if s == nil {
			return // deleted: keep the roots in memory; the next start makes a new one
		}
		if err := r.apply(s, r.Clock()); err != nil {
			log.Error("CA root secret changed but does not parse; keeping the current roots", "error", err)
			return
		}
		if err := refresh(); err != nil {
			log.Error("CA refresh after root secret change", "error", err)
		}
	})
}

// secretCA names each key of a CA Secret for refusals.
func secretCA(namespace, name string, cert, key, chain, root []byte) ca.PluggedCA {
	at := func(k string) string { return "secret " + namespace + "/" + name + " key " + k }
	return ca.PluggedCA{
		Cert: cert, Key: key, Chain: chain, Root: root,
		CertName: at(CACertKey), KeyName: at(CAKeyKey), ChainName: at(CertChainKey), RootName: at(RootCertKey),
		Source: "Kubernetes secret " + namespace + "/" + name,
	}
}

// newSelfSignedRoot makes a 10-year ECDSA P-256 root for trustDomain.
func newSelfSignedRoot(trustDomain string, now time.Time) (certPEM, keyPEM []byte, err error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, nil, err
	}
	cert, err := pki.SelfSignedCA(key, pki.CA{
		Subject:   pkix.Name{Organization: []string{trustDomain}, CommonName: "meshauth root CA"},
		NotBefore: now.Add(-time.Hour),
		NotAfter:  now.Add(10 * 365 * 24 * time.Hour),
		KeyUsage:  x509.KeyUsageCertSign | x509.KeyUsageCRLSign,
	})
	if err != nil {
		return nil, nil, err
	}
	k, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return nil, nil, err
	}
	return pemCert(cert), pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: k}), nil
}

// ensureRootConfigMap creates or updates istio-ca-root-cert in ns.
func ensureRootConfigMap(ctx context.Context, cs kubernetes.Interface, ns, roots string) error {
	api := cs.CoreV1().ConfigMaps(ns)
	cm, err := api.Get(ctx, RootCertConfigMap, metav1.GetOptions{})
	if apierrors.IsNotFound(err) {
		_, err = api.Create(ctx, &corev1.ConfigMap{
			ObjectMeta: metav1.ObjectMeta{Name: RootCertConfigMap, Namespace: ns, Labels: map[string]string{"app.kubernetes.io/part-of": "meshauth"}},
			Data:       map[string]string{RootCertKey: roots},
		}, metav1.CreateOptions{})
		if apierrors.IsAlreadyExists(err) {
			return nil // someone else made it; the next round checks it
		}
		return err
	}
	if err != nil || cm.Data[RootCertKey] == roots {
		return err
	}
	cm = cm.DeepCopy()
	if cm.Data == nil {
		cm.Data = map[string]string{}
	}
	cm.Data[RootCertKey] = roots
	_, err = api.Update(ctx, cm, metav1.UpdateOptions{})
	return err
}

// selfSignedCA makes a throwaway ECDSA CA (the webhook's).
func selfSignedCA(cn string) (crypto.Signer, *x509.Certificate, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, nil, err
	}
	now := time.Now()
	c, err := pki.SelfSignedCA(key, pki.CA{
		Subject:   pkix.Name{CommonName: cn},
		NotBefore: now.Add(-time.Hour), NotAfter: now.Add(10 * 365 * 24 * time.Hour),
		KeyUsage: x509.KeyUsageCertSign,
	})
	return key, c, err
}

// servingCert issues a TLS server certificate from ca.
func servingCert(ca *x509.Certificate, caKey crypto.Signer, dns []string, ips []net.IP) (certPEM, keyPEM []byte, err error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, nil, err
	}
	serial, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 126))
	if err != nil {
		return nil, nil, err
	}
	now := time.Now()
	cn := "meshauth-webhook"
	if len(dns) > 0 {
		cn = dns[0]
	}
	tmpl := &x509.Certificate{
		SerialNumber: serial, Subject: pkix.Name{CommonName: cn},
		NotBefore: now.Add(-time.Hour), NotAfter: now.Add(10 * 365 * 24 * time.Hour),
		DNSNames: dns, IPAddresses: ips,
		KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca, key.Public(), caKey)
	if err != nil {
		return nil, nil, err
	}
	k, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return nil, nil, err
	}
	return pemCert(&x509.Certificate{Raw: der}), pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: k}), nil
}

func pemCert(c *x509.Certificate) []byte {
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: c.Raw})
}
