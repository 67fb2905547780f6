package kube

import (
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"fmt"
	"math/big"
	"net"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"

	"github.com/meshauth/meshauth/internal/ca"
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
//     root-cert.pem (an operator's intermediate) wins, as in the seed;
//   - otherwise the self-signed root in Secret "istio-ca-secret"
//     (ca-cert.pem, ca-key.pem), created on first start.
//
// Keeping the root in a Secret, not on the pod's disk, is what lets the
// control plane restart or move without re-rooting the mesh. If two
// replicas race to create istio-ca-secret, the loser reads the winner's.
func NewCABackend(ctx context.Context, client kubernetes.Interface, namespace, trustDomain string, now time.Time) (ca.Backend, RootSource, error) {
	secrets := client.CoreV1().Secrets(namespace)
	if s, err := secrets.Get(ctx, PluggedCASecret, metav1.GetOptions{}); err == nil {
		for _, k := range []string{CACertKey, CAKeyKey, CertChainKey, RootCertKey} {
			if len(s.Data[k]) == 0 {
				return nil, "", fmt.Errorf("kube: secret %s/%s has no %s: a plugged-in CA needs ca-cert.pem, ca-key.pem, cert-chain.pem and root-cert.pem", namespace, PluggedCASecret, k)
			}
		}
		b, err := ca.NewPluggedBackend(secretCA(namespace, PluggedCASecret, s.Data[CACertKey], s.Data[CAKeyKey], s.Data[CertChainKey], s.Data[RootCertKey]), now)
		return b, RootPlugged, err
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
	cert, key := s.Data[CACertKey], s.Data[CAKeyKey]
	if len(cert) == 0 || len(key) == 0 {
		return nil, "", fmt.Errorf("kube: secret %s/%s lacks %s or %s; delete it to have a new root made, or fill it in", namespace, CASecret, CACertKey, CAKeyKey)
	}
	b, err := ca.NewPluggedBackend(secretCA(namespace, CASecret, cert, key, cert, cert), now)
	return b, RootSelfSigned, err
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
