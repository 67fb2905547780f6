package ca

import (
	"crypto"
	"crypto/x509"
	"encoding/pem"
	"fmt"
	"slices"
	"time"
)

// Backend holds the keys the CA signs with, as step-ca's CAS seam does: for
// each CA certificate, the certificate that signs workloads, the chain that
// follows a workload's leaf, and the crypto.Signer. The CA core (Sign,
// rotation, the bundle) reaches keys only through a Backend; the issuance
// log, revocations and join tokens stay in the CA's store.
//
// Implementations: the self-signed roots kept in the bbolt store (the
// default), an operator's plugged-in files (Config.CACertsDir,
// NewPluggedBackend), and internal/kube's Kubernetes Secret backend.
type Backend interface {
	// Authorities returns every CA certificate the bundle trusts, oldest
	// first. The CA signs with the newest whose ActivateAt has passed. It
	// is called on every bundle change, so a Backend may return fresh
	// values (the store's) or the same ones every time (plugged-in files).
	Authorities() ([]*Authority, error)
	// Mode names the backend in `meshctl ca status`: "self-signed" or
	// "plugged-in".
	Mode() string
	// Source says where the keys are, for logs and refusals.
	Source() string
}

// Rotator is implemented by a Backend whose roots the CA may create and
// retire itself (found by type assertion, as step-ca does). A Backend
// without it is rotated by its operator (RotateRoot refuses).
type Rotator interface {
	// AddRoot keeps a new self-signed root (made by the CA with its key
	// type and TTL) that starts signing at activateAt. The CA bumps the
	// bundle version before it calls AddRoot.
	AddRoot(cert *x509.Certificate, key crypto.Signer, activateAt, now time.Time) error
	// ActivateRoot sets when the authority with this ID starts signing (a
	// root added as Pending, once the fleet has ACKed it). The CA bumps the
	// bundle version before it calls ActivateRoot.
	ActivateRoot(id uint64, at time.Time) error
	// RetireRoot drops the authority with this ID from the bundle, once
	// this CA no longer needs it (everything it signed here has expired).
	// A Backend shared by replicas may keep it (false) until no replica can
	// need it, unless force (the operator's `rotate-root --retire
	// --force`). The CA bumps the bundle version after a retirement (a
	// bundle that still holds a retired root is harmless).
	RetireRoot(id uint64, force bool) (retired bool, err error)
}

// Stager is implemented by a Backend whose next CA an operator supplies
// (a plugged-in CA on Kubernetes: Secret cacerts-next): RotateRoot with
// from stages it as a pending authority, and the rotation goes on through
// the same steps as a self-signed one (ActivateRoot once the fleet has
// ACKed its root, RetireRoot of the old one, which makes the staged CA
// the one in force).
type Stager interface {
	// Stage checks the operator's CA named by from and adds it to the
	// bundle as Pending (not signing).
	Stage(from string) error
	ActivateRoot(id uint64, at time.Time) error
	RetireRoot(id uint64, force bool) (retired bool, err error)
}

// rootSwitcher is what a rotation needs of its Backend after the new root
// is in: both a Rotator and a Stager are one.
type rootSwitcher interface {
	ActivateRoot(id uint64, at time.Time) error
	RetireRoot(id uint64, force bool) (retired bool, err error)
}

// Authority is one CA certificate a Backend signs with.
type Authority struct {
	// ID tells authorities apart in the issuance log (0 for a single
	// operator-managed CA).
	ID uint64
	// Certificate signs workload certificates.
	Certificate *x509.Certificate
	// Signer is Certificate's private key.
	Signer crypto.Signer
	// Chain is what follows the leaf in a workload's cert-chain.pem: empty
	// for a self-signed root, Certificate and the intermediates above it
	// (not the root) for a plugged-in CA.
	Chain []*x509.Certificate
	// Root is the anchor of Certificate's chain (Certificate itself for a
	// self-signed root).
	Root *x509.Certificate
	// OtherRoots are further roots to trust, not the anchor of this chain
	// (an operator's own rotation: old and new roots in root-cert.pem).
	OtherRoots []*x509.Certificate
	// ActivateAt is when it starts signing (zero: always).
	ActivateAt time.Time
}

// newAuthority is the core's view of a Backend's Authority: the validity
// window every certificate it signs must fit in, and the chain as PEM.
func newAuthority(b *Authority) (*authority, error) {
	if b.Certificate == nil || b.Signer == nil || b.Root == nil {
		return nil, fmt.Errorf("authority %d: certificate, signer and root are required", b.ID)
	}
	a := &authority{
		id: b.ID, cert: b.Certificate, key: b.Signer, root: b.Root, otherRoots: b.OtherRoots,
		chain: b.Chain, notBefore: b.Certificate.NotBefore, notAfter: b.Certificate.NotAfter,
		activateAt: b.ActivateAt,
	}
	for _, c := range b.Chain {
		if c.NotAfter.Before(a.notAfter) {
			a.notAfter = c.NotAfter
		}
		if c.NotBefore.After(a.notBefore) {
			a.notBefore = c.NotBefore
		}
		a.chainPEM = append(a.chainPEM, string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: c.Raw})))
	}
	if b.Root.NotAfter.Before(a.notAfter) {
		a.notAfter = b.Root.NotAfter
	}
	return a, nil
}

// same reports whether b is the authority a was built from: the same
// certificate, chain, roots and activation.
func (a *authority) same(b *Authority) bool {
	eq := func(x, y []*x509.Certificate) bool {
		return slices.EqualFunc(x, y, func(p, q *x509.Certificate) bool { return p.Equal(q) })
	}
	return b.Certificate != nil && b.Root != nil && a.id == b.ID && a.cert.Equal(b.Certificate) &&
		a.root.Equal(b.Root) && eq(a.chain, b.Chain) && eq(a.otherRoots, b.OtherRoots) && a.activateAt.Equal(b.ActivateAt)
}

// storeBackend is the default Backend: self-signed roots kept, with their
// keys, in the CA's bbolt store. It rotates.
type storeBackend struct {
	store *store
	dir   string
}

func (b *storeBackend) Mode() string   { return "self-signed" }
func (b *storeBackend) Source() string { return b.dir + "/ca.db" }

func (b *storeBackend) Authorities() ([]*Authority, error) {
	recs, err := b.store.authorities()
	if err != nil {
		return nil, fmt.Errorf("read roots: %w", err)
	}
	out := make([]*Authority, 0, len(recs))
	for _, r := range recs {
		a, err := authorityFromRecord(r)
		if err != nil {
			return nil, fmt.Errorf("root %d in store: %w", r.ID, err)
		}
		out = append(out, a)
	}
	return out, nil
}

func (b *storeBackend) AddRoot(cert *x509.Certificate, key crypto.Signer, activateAt, now time.Time) error {
	kder, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return fmt.Errorf("marshal root key: %w", err)
	}
	return b.store.putAuthority(&authorityRecord{CertDER: cert.Raw, KeyDER: kder, ActivateAt: activateAt, CreatedAt: now})
}

func (b *storeBackend) ActivateRoot(id uint64, at time.Time) error {
	return b.store.activateAuthority(id, at)
}

func (b *storeBackend) RetireRoot(id uint64, _ bool) (bool, error) {
	return true, b.store.retireAuthority(id)
}

// Refresh re-reads the Backend's authorities and the store's bundle
// version. If the authorities changed (another CA replica rotated a root
// kept in a shared place, e.g. a Kubernetes Secret) it bumps the bundle
// version and rebuilds the bundle; if only the store's version moved
// (another replica revoked, in a store they share) it rebuilds the bundle
// from the store. A Backend and a Store only this CA changes never need it.
func (c *CA) Refresh() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	bauths, err := c.backend.Authorities()
	if err != nil {
		return fmt.Errorf("ca: %s: %w", c.backend.Source(), err)
	}
	cur := c.state.Load()
	same := len(cur.authorities) == len(bauths)
	for i := 0; same && i < len(cur.authorities); i++ {
		same = cur.authorities[i].same(bauths[i])
	}
	if same {
		v, err := c.store.BundleVersion()
		if err != nil {
			return internal("read bundle version", err)
		}
		if v == cur.bundle.Version {
			return nil
		}
		if err := c.reload(); err != nil {
			return err
		}
		c.log.Info("CA store changed", "bundle_version", c.state.Load().bundle.Version, "revocations", len(c.state.Load().bundle.Revocations))
		return nil
	}
	if _, err := c.store.Bump(); err != nil {
		return internal("bump bundle version", err)
	}
	if err := c.reload(); err != nil {
		return err
	}
	c.log.Warn("CA roots changed in the backend", "source", c.backend.Source(), "roots", len(bauths), "bundle_version", c.state.Load().bundle.Version)
	return nil
}
