// Package catest is an in-memory certificate authority for tests: a root
// (optionally with an intermediate) that issues workload certificates with
// whatever defect a test needs — expired, not yet valid, from a foreign root
// or trust domain, without a URI SAN, with extra SANs, or as a CA.
//
// It is deliberately independent of internal/ca: tests of the sidecar, the
// proxy and the identity package must be able to make certificates that the
// real CA would refuse to sign. Nothing here persists; keys live in memory.
//
// Typical use:
//
//	ca := catest.New(t)                                   // root only, cluster.local
//	good := ca.Issue(t, "spiffe://cluster.local/ns/default/sa/sleep")
//	old := ca.Issue(t, id, catest.Validity(t0.Add(-2*time.Hour), t0.Add(-time.Hour)))
//	other := catest.New(t)                                // a foreign root
//	evil := other.Issue(t, id)
//	bundle := ca.Bundle()                                 // *identity.Bundle with ca's root
//	cfg := &tls.Config{Certificates: []tls.Certificate{good.TLS}, RootCAs: ca.Pool()}
package catest

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"math/big"
	"net/url"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/meshauth/meshauth/internal/identity"
)

// CA is an in-memory root (and optional intermediate) for tests. Its fields
// are exported so tests can build unusual chains by hand; treat them as
// read-only.
type CA struct {
	TrustDomain string
	Root        *x509.Certificate
	RootKey     crypto.Signer
	// Intermediate is nil unless the CA was made WithIntermediate. When set,
	// workload certificates are signed by it and their chains include it.
	Intermediate    *x509.Certificate
	IntermediateKey crypto.Signer
	// Now is the reference time: roots are valid from Now-1h to Now+10y and
	// workload certificates default to Now-1m .. Now+24h.
	Now time.Time
}

// Option configures New.
type Option func(*caConfig)

type caConfig struct {
	trustDomain  string
	intermediate bool
	now          time.Time
	rootValidity [2]time.Time
	rsaRoot      int
}

// WithTrustDomain sets the trust domain of the CA's bundle (default cluster.local).
// It only names the bundle; Issue signs whatever SPIFFE ID it is given.
func WithTrustDomain(td string) Option { return func(c *caConfig) { c.trustDomain = td } }

// WithIntermediate makes the CA sign workloads through an intermediate, so
// chains are leaf, intermediate and the root sits only in the bundle.
func WithIntermediate() Option { return func(c *caConfig) { c.intermediate = true } }

// WithNow sets the CA's reference time (default time.Now at New).
func WithNow(t time.Time) Option { return func(c *caConfig) { c.now = t } }

// WithRootValidity sets the root's (and intermediate's) NotBefore/NotAfter,
// for tests of an expired or not-yet-valid CA.
func WithRootValidity(notBefore, notAfter time.Time) Option {
	return func(c *caConfig) { c.rootValidity = [2]time.Time{notBefore, notAfter} }
}

// WithRSARoot makes the root key RSA of the given size instead of ECDSA P-256.
func WithRSARoot(bits int) Option { return func(c *caConfig) { c.rsaRoot = bits } }

// New creates a fresh root (and intermediate, if asked). Each call makes new
// keys, so two CAs are foreign to each other.
func New(t testing.TB, opts ...Option) *CA {
	t.Helper()
	cfg := caConfig{trustDomain: identity.DefaultTrustDomain}
	for _, o := range opts {
		o(&cfg)
	}
	if cfg.now.IsZero() {
		cfg.now = time.Now()
	}
	if cfg.rootValidity[0].IsZero() {
		cfg.rootValidity = [2]time.Time{cfg.now.Add(-time.Hour), cfg.now.AddDate(10, 0, 0)}
	}
	ca := &CA{TrustDomain: cfg.trustDomain, Now: cfg.now}

	var rootKey crypto.Signer
	if cfg.rsaRoot > 0 {
		rootKey = mustRSA(t, cfg.rsaRoot)
	} else {
		rootKey = mustECDSA(t)
	}
	rootTmpl := &x509.Certificate{
		SerialNumber:          randSerial(t),
		Subject:               pkix.Name{Organization: []string{"meshauth test"}, CommonName: "catest root " + cfg.trustDomain},
		NotBefore:             cfg.rootValidity[0],
		NotAfter:              cfg.rootValidity[1],
		IsCA:                  true,
		BasicConstraintsValid: true,
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign | x509.KeyUsageDigitalSignature,
		URIs:                  []*url.URL{{Scheme: "spiffe", Host: cfg.trustDomain}},
	}
	ca.Root = mustCreate(t, rootTmpl, rootTmpl, rootKey.Public(), rootKey)
	ca.RootKey = rootKey

	if cfg.intermediate {
		ik := mustECDSA(t)
		itmpl := &x509.Certificate{
			SerialNumber:          randSerial(t),
			Subject:               pkix.Name{Organization: []string{"meshauth test"}, CommonName: "catest intermediate " + cfg.trustDomain},
			NotBefore:             cfg.rootValidity[0],
			NotAfter:              cfg.rootValidity[1],
			IsCA:                  true,
			BasicConstraintsValid: true,
			MaxPathLenZero:        true,
			KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign | x509.KeyUsageDigitalSignature,
			URIs:                  []*url.URL{{Scheme: "spiffe", Host: cfg.trustDomain}},
		}
		ca.Intermediate = mustCreate(t, itmpl, ca.Root, ik.Public(), rootKey)
		ca.IntermediateKey = ik
	}
	return ca
}

// Cert is an issued workload certificate with its key, in the forms tests need.
type Cert struct {
	Leaf *x509.Certificate
	Key  crypto.Signer
	// Chain is leaf first, then the intermediate if any; never the root.
	Chain []*x509.Certificate
	// TLS is ready for tls.Config.Certificates (Leaf is set).
	TLS tls.Certificate
	// ChainPEM is the content of cert-chain.pem; KeyPEM that of key.pem (PKCS#8).
	ChainPEM []byte
	KeyPEM   []byte
}

// Serial returns the leaf serial in the lowercase hex form revocation lists use.
func (c *Cert) Serial() string { return identity.SerialHex(c.Leaf) }

// IssueOption changes one property of an issued certificate.
type IssueOption func(*issueConfig)

type issueConfig struct {
	notBefore, notAfter time.Time
	noURI               bool
	extraURIs           []string
	dns                 []string
	isCA                bool
	rsaBits             int
	serial              *big.Int
	extKeyUsage         []x509.ExtKeyUsage
	signer              *CA
}

// Validity sets NotBefore and NotAfter exactly (for expired or not-yet-valid certs).
func Validity(notBefore, notAfter time.Time) IssueOption {
	return func(c *issueConfig) { c.notBefore, c.notAfter = notBefore, notAfter }
}

// NoURISAN issues a certificate without any URI SAN (no SPIFFE ID).
func NoURISAN() IssueOption { return func(c *issueConfig) { c.noURI = true } }

// ExtraURIs adds URI SANs after the SPIFFE ID.
func ExtraURIs(uris ...string) IssueOption {
	return func(c *issueConfig) { c.extraURIs = append(c.extraURIs, uris...) }
}

// DNSNames adds DNS SANs (workload certificates normally have none).
func DNSNames(names ...string) IssueOption {
	return func(c *issueConfig) { c.dns = append(c.dns, names...) }
}

// AsCA marks the leaf CA:TRUE with keyCertSign, which SVID checks must refuse.
func AsCA() IssueOption { return func(c *issueConfig) { c.isCA = true } }

// RSAKey gives the leaf an RSA key of the given size instead of ECDSA P-256.
func RSAKey(bits int) IssueOption { return func(c *issueConfig) { c.rsaBits = bits } }

// Serial sets the leaf serial number.
func Serial(n *big.Int) IssueOption { return func(c *issueConfig) { c.serial = n } }

// ExtKeyUsage replaces the default serverAuth+clientAuth.
func ExtKeyUsage(u ...x509.ExtKeyUsage) IssueOption {
	return func(c *issueConfig) { c.extKeyUsage = u }
}

// Issue signs a workload certificate for spiffeID, which is used verbatim as
// the URI SAN (it need not be valid or of this CA's trust domain, so tests can
// make foreign-trust-domain or malformed identities). The defaults mirror the
// real CA's workload profile: ECDSA P-256 key, only the URI SAN, serverAuth +
// clientAuth, Now-1m .. Now+24h.
func (ca *CA) Issue(t testing.TB, spiffeID string, opts ...IssueOption) *Cert {
	t.Helper()
	cfg := issueConfig{
		notBefore:   ca.Now.Add(-time.Minute),
		notAfter:    ca.Now.Add(24 * time.Hour),
		extKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth},
	}
	for _, o := range opts {
		o(&cfg)
	}
	var key crypto.Signer
	if cfg.rsaBits > 0 {
		key = mustRSA(t, cfg.rsaBits)
	} else {
		key = mustECDSA(t)
	}
	serial := cfg.serial
	if serial == nil {
		serial = randSerial(t)
	}
	tmpl := &x509.Certificate{
		SerialNumber:          serial,
		NotBefore:             cfg.notBefore,
		NotAfter:              cfg.notAfter,
		KeyUsage:              x509.KeyUsageDigitalSignature | x509.KeyUsageKeyEncipherment,
		ExtKeyUsage:           cfg.extKeyUsage,
		BasicConstraintsValid: true,
		DNSNames:              cfg.dns,
	}
	if cfg.isCA {
		tmpl.IsCA = true
		tmpl.KeyUsage |= x509.KeyUsageCertSign
	}
	if !cfg.noURI {
		for _, s := range append([]string{spiffeID}, cfg.extraURIs...) {
			u, err := url.Parse(s)
			if err != nil {
				t.Fatalf("catest: URI SAN %q: %v", s, err)
			}
			tmpl.URIs = append(tmpl.URIs, u)
		}
	}
	parent, parentKey := ca.Root, ca.RootKey
	if ca.Intermediate != nil {
		parent, parentKey = ca.Intermediate, ca.IntermediateKey
	}
	leaf := mustCreate(t, tmpl, parent, key.Public(), parentKey)
	c := &Cert{Leaf: leaf, Key: key, Chain: []*x509.Certificate{leaf}}
	if ca.Intermediate != nil {
		c.Chain = append(c.Chain, ca.Intermediate)
	}
	for _, x := range c.Chain {
		c.TLS.Certificate = append(c.TLS.Certificate, x.Raw)
		c.ChainPEM = append(c.ChainPEM, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: x.Raw})...)
	}
	c.TLS.PrivateKey = key
	c.TLS.Leaf = leaf
	der, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		t.Fatalf("catest: marshal key: %v", err)
	}
	c.KeyPEM = pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der})
	return c
}

// IssueID is Issue for a validated identity.
func (ca *CA) IssueID(t testing.TB, id identity.ID, opts ...IssueOption) *Cert {
	t.Helper()
	return ca.Issue(t, id.String(), opts...)
}

// Bundle returns a version-1 bundle holding this CA's root, with the given
// certificates' serials marked revoked.
func (ca *CA) Bundle(revoked ...*Cert) *identity.Bundle {
	return ca.BundleWith(1, nil, revoked...)
}

// BundleWith returns a bundle at the given version holding this CA's root
// plus extra roots (another CA's, as during a root rotation), with the given
// certificates revoked.
func (ca *CA) BundleWith(version uint64, extraRoots []*CA, revoked ...*Cert) *identity.Bundle {
	b := &identity.Bundle{
		Version:     version,
		TrustDomain: ca.TrustDomain,
		Roots:       []*x509.Certificate{ca.Root},
		Revoked:     map[string]string{},
	}
	for _, o := range extraRoots {
		b.Roots = append(b.Roots, o.Root)
	}
	for _, c := range revoked {
		id := ""
		if len(c.Leaf.URIs) > 0 {
			id = c.Leaf.URIs[0].String()
		}
		b.Revoked[c.Serial()] = id
	}
	return b
}

// Pool returns an x509.CertPool holding the root, for tls.Config.RootCAs / ClientCAs.
func (ca *CA) Pool() *x509.CertPool {
	p := x509.NewCertPool()
	p.AddCert(ca.Root)
	return p
}

// RootPEM returns the root PEM-encoded (the content of root-cert.pem).
func (ca *CA) RootPEM() []byte {
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: ca.Root.Raw})
}

// WriteFiles writes the seed's three files into dir — cert-chain.pem,
// key.pem (mode 0600) and root-cert.pem — as the sidecar agent writes them.
func (ca *CA) WriteFiles(t testing.TB, dir string, c *Cert) {
	t.Helper()
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatalf("catest: %v", err)
	}
	for _, f := range []struct {
		name string
		data []byte
		mode os.FileMode
	}{
		{"cert-chain.pem", c.ChainPEM, 0o644},
		{"key.pem", c.KeyPEM, 0o600},
		{"root-cert.pem", ca.RootPEM(), 0o644},
	} {
		if err := os.WriteFile(filepath.Join(dir, f.name), f.data, f.mode); err != nil {
			t.Fatalf("catest: write %s: %v", f.name, err)
		}
	}
}

func mustECDSA(t testing.TB) crypto.Signer {
	t.Helper()
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatalf("catest: ecdsa key: %v", err)
	}
	return k
}

func mustRSA(t testing.TB, bits int) crypto.Signer {
	t.Helper()
	k, err := rsa.GenerateKey(rand.Reader, bits)
	if err != nil {
		t.Fatalf("catest: rsa key: %v", err)
	}
	return k
}

func randSerial(t testing.TB) *big.Int {
	t.Helper()
	n, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 128))
	if err != nil {
		t.Fatalf("catest: serial: %v", err)
	}
	return n.Add(n, big.NewInt(1)) // never zero
}

func mustCreate(t testing.TB, tmpl, parent *x509.Certificate, pub crypto.PublicKey, key crypto.Signer) *x509.Certificate {
	t.Helper()
	der, err := x509.CreateCertificate(rand.Reader, tmpl, parent, pub, key)
	if err != nil {
		t.Fatalf("catest: create certificate: %v", err)
	}
	c, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatalf("catest: parse certificate: %v", err)
	}
	return c
}
