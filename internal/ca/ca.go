// Package ca is meshauth's certificate authority: it holds the roots (a
// self-signed root it creates, or an operator's plugged-in intermediate),
// signs workload certificates for identities that callers have proven, and
// keeps the trust bundle, the issuance log, revocations and join tokens in
// an embedded bbolt store (DIR/ca.db).
//
// The CA knows nothing of gRPC: internal/control authenticates callers with
// the Authenticators here (mTLS renewal, join tokens, and later Kubernetes
// service-account tokens from internal/kube) and calls Sign with the proven
// Caller. All time comes from Config.Clock so tests can pin NotBefore and
// NotAfter exactly and walk through a root rotation.
package ca

import (
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/hex"
	"encoding/pem"
	"errors"
	"fmt"
	"log/slog"
	"math/big"
	"net/url"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/meshauth/meshauth/internal/identity"
	"github.com/meshauth/meshauth/internal/pki"
)

// KeyType names the root key algorithm.
type KeyType string

const (
	KeyECDSAP256 KeyType = "ecdsa-p256"
	KeyRSA2048   KeyType = "rsa-2048"
	KeyRSA3072   KeyType = "rsa-3072"
)

// Config configures a CA. Zero values get the defaults named on each field.
type Config struct {
	// Dir is the state directory; the store is Dir/ca.db. Required.
	Dir string
	// TrustDomain is used when the store is new (default cluster.local). An
	// existing store keeps the trust domain it was created with; a different
	// value here is refused rather than silently re-rooting the mesh.
	TrustDomain string
	// KeyType of self-signed roots (default ecdsa-p256).
	KeyType KeyType
	// RootTTL of self-signed roots (default 10 years).
	RootTTL time.Duration
	// DefaultTTL of workload certificates when the caller asks for none (24h).
	DefaultTTL time.Duration
	// MaxTTL a caller may ask for (90 days).
	MaxTTL time.Duration
	// Backdate is subtracted from NotBefore so peers with slightly slow
	// clocks accept a fresh certificate (default 1 minute).
	Backdate time.Duration
	// RotationOverlap is the default minimum overlap of a root rotation:
	// the least time a new root is only trusted, not yet signing, even
	// once every sidecar has ACKed it (default 0: the ACKs decide).
	RotationOverlap time.Duration
	// CACertsDir, if set, holds the plugged-in CA files (ca-cert.pem,
	// ca-key.pem, cert-chain.pem, root-cert.pem); the CA signs with them
	// instead of a self-signed root. A root rotation stages the operator's
	// next CA (RotateRoot with from, a directory beside CACertsDir) in
	// Dir/cacerts-next and, once it is done, writes it into CACertsDir.
	CACertsDir string
	// Backend, if set, holds the keys the CA signs with instead of the
	// store or CACertsDir (e.g. internal/kube's Secret backend, which keeps
	// the root key in memory). Set at most one of Backend and CACertsDir.
	Backend Backend
	// Store, if set, keeps the issuance log, revocations, join tokens and
	// the bundle version instead of Dir/ca.db; the CA closes it. The
	// default Backend (self-signed roots) needs the default store, so set
	// a Backend with it.
	Store Store
	// Clock returns the current time (default time.Now).
	Clock func() time.Time
	// Log (default slog.Default()).
	Log *slog.Logger
	// Metrics registers the CA's collectors (default: a private registry,
	// i.e. metrics are kept but not exported).
	Metrics prometheus.Registerer
	// Reserved identities are signed only for the CA's own process
	// (Caller{Method: "self"} with no Subject): the control plane's own
	// identity, which every client trusts to serve the CA, Discovery and
	// Admin APIs. No join token, ServiceAccount token, renewal or
	// controller acting for a ServiceAccount can get a certificate for one.
	Reserved []identity.ID
	// LogRetention keeps an issuance log record this long after its
	// certificate expired; Tick prunes older ones (at most once an hour).
	// 0 keeps the log forever.
	LogRetention time.Duration
}

// CA is a running certificate authority. It is safe for concurrent use.
type CA struct {
	cfg     Config
	log     *slog.Logger
	store   Store
	td      string
	backend Backend // the keys: store, plugged-in files or Config.Backend
	metrics *metrics

	// mu serialises changes to state (rotation, revocation, ticks); Sign
	// only loads the pointer.
	mu    sync.Mutex
	state atomic.Pointer[state]
	// changed is closed and replaced whenever the bundle changes.
	changed chan struct{}

	peerMu    sync.Mutex
	peerCache map[[32]byte]peerEntry

	lastLogPrune time.Time // under mu

	// The fleet on the bundle stream (fleet.go): records by key, and the
	// lineage origin of each serial seen.
	fleetMu sync.Mutex
	fleet   map[string]*fleetEntry
	origins map[string]string
	gone    func(spiffeID, instance string) bool
}

// authority is one root (or plugged-in intermediate) the CA can sign with.
type authority struct {
	id   uint64
	cert *x509.Certificate // signs workloads
	key  crypto.Signer
	root *x509.Certificate // == cert for self-signed roots
	// otherRoots and chain: see Authority.
	otherRoots []*x509.Certificate
	chain      []*x509.Certificate
	chainPEM   []string
	// notAfter bounds every certificate it signs: the earliest NotAfter
	// along its chain to the root.
	notAfter, notBefore time.Time
	activateAt          time.Time
	// maxIssued is the latest NotAfter of anything it signed (unix seconds).
	maxIssued atomic.Int64
}

// state is an immutable view: the authorities and the bundle built from them.
type state struct {
	authorities []*authority // oldest first
	signer      *authority
	bundle      *TrustBundle
}

// TrustBundle is the set of roots workloads trust plus the revocation list.
// It is immutable; the CA replaces it on every change.
type TrustBundle struct {
	Version     uint64
	TrustDomain string
	// Roots, current signing root first.
	Roots       []*x509.Certificate
	RootsPEM    []string
	Revocations []Revocation

	ident *identity.Bundle
}

// Identity returns the bundle in identity's form, for verifying peers.
func (b *TrustBundle) Identity() *identity.Bundle { return b.ident }

// Revocation is one revoked certificate.
type Revocation struct {
	Serial    string    `json:"serial"`
	SPIFFEID  string    `json:"spiffe_id"`
	NotAfter  time.Time `json:"not_after"`
	RevokedAt time.Time `json:"revoked_at"`
	Reason    string    `json:"reason,omitempty"`
}

// New opens (or creates) the CA in cfg.Dir. On first start it creates a
// self-signed root; later starts reuse the stored roots. With CACertsDir set
// it loads and checks the plugged-in CA and refuses to start if the files
// are inconsistent.
func New(cfg Config) (*CA, error) {
	if cfg.Dir == "" {
		return nil, errors.New("ca: Config.Dir is required")
	}
	if cfg.TrustDomain == "" {
		cfg.TrustDomain = identity.DefaultTrustDomain
	}
	if cfg.KeyType == "" {
		cfg.KeyType = KeyECDSAP256
	}
	if cfg.RootTTL == 0 {
		cfg.RootTTL = 10 * 365 * 24 * time.Hour
	}
	if cfg.DefaultTTL == 0 {
		cfg.DefaultTTL = 24 * time.Hour
	}
	if cfg.MaxTTL == 0 {
		cfg.MaxTTL = 90 * 24 * time.Hour
	}
	if cfg.DefaultTTL > cfg.MaxTTL {
		return nil, fmt.Errorf("ca: default TTL %s is over the maximum TTL %s", cfg.DefaultTTL, cfg.MaxTTL)
	}
	if cfg.Backdate == 0 {
		cfg.Backdate = time.Minute
	}
	if cfg.Clock == nil {
		cfg.Clock = time.Now
	}
	if cfg.Log == nil {
		cfg.Log = slog.Default()
	}
	if cfg.Metrics == nil {
		cfg.Metrics = prometheus.NewRegistry()
	}
	switch cfg.KeyType {
	case KeyECDSAP256, KeyRSA2048, KeyRSA3072:
	default:
		return nil, fmt.Errorf("ca: key type %q: use %s, %s or %s", cfg.KeyType, KeyECDSAP256, KeyRSA2048, KeyRSA3072)
	}
	if _, err := identity.New(cfg.TrustDomain, "x", "x"); err != nil {
		return nil, fmt.Errorf("ca: %w", err)
	}

	st := cfg.Store
	if st == nil {
		bs, err := openStore(cfg.Dir)
		if err != nil {
			return nil, fmt.Errorf("ca: %w", err)
		}
		st = bs
	}
	c := &CA{cfg: cfg, log: cfg.Log.With("component", "ca"), store: st, changed: make(chan struct{}), peerCache: map[[32]byte]peerEntry{},
		origins: map[string]string{}}
	if err := c.loadFleet(); err != nil {
		st.Close()
		return nil, err
	}
	if err := c.open(); err != nil {
		st.Close()
		return nil, err
	}
	c.metrics = newMetrics(c)
	if err := c.metrics.register(cfg.Metrics); err != nil {
		st.Close()
		return nil, fmt.Errorf("ca: register metrics: %w", err)
	}
	return c, nil
}

func (c *CA) open() error {
	td, err := c.store.TrustDomain(c.cfg.TrustDomain)
	if err != nil {
		return fmt.Errorf("ca: %w", err)
	}
	if td != c.cfg.TrustDomain {
		return fmt.Errorf("ca: the store in %s was created for trust domain %q, not %q; use --trust-domain %s or a new state dir", c.cfg.Dir, td, c.cfg.TrustDomain, td)
	}
	c.td = td
	switch {
	case c.cfg.Backend != nil && c.cfg.CACertsDir != "":
		return errors.New("ca: set Config.Backend or Config.CACertsDir, not both")
	case c.cfg.Backend != nil:
		c.backend = c.cfg.Backend
	case c.cfg.CACertsDir != "":
		b, err := openPluggedDir(c.cfg.CACertsDir, c.cfg.Dir, c.cfg.Clock)
		if err != nil {
			return err
		}
		c.backend = b
	default:
		bs, ok := c.store.(*store)
		if !ok {
			return errors.New("ca: the self-signed roots live in the default store: with Config.Store set Config.Backend too")
		}
		c.backend = &storeBackend{store: bs, dir: c.cfg.Dir}
	}
	auths, err := c.backend.Authorities()
	if err != nil {
		return fmt.Errorf("ca: %s: %w", c.backend.Source(), err)
	}
	if len(auths) == 0 {
		rot, ok := c.backend.(Rotator)
		if !ok {
			return fmt.Errorf("ca: %s holds no CA certificate", c.backend.Source())
		}
		now := c.cfg.Clock()
		if err := c.addRoot(rot, now, now); err != nil {
			return err
		}
		c.log.Info("created self-signed root", "trust_domain", td, "key_type", c.cfg.KeyType, "backend", c.backend.Source())
	}
	if err := c.reload(); err != nil {
		return err
	}
	if _, ok := c.backend.(Rotator); !ok {
		a := c.state.Load().signer
		c.log.Info("using "+c.backend.Mode()+" CA", "source", c.backend.Source(), "subject", a.cert.Subject.String(), "root", identity.Fingerprint(a.root))
	}
	return nil
}

// addRoot makes a new self-signed root and hands it to the Backend, after
// bumping the bundle version.
func (c *CA) addRoot(rot Rotator, now, activateAt time.Time) error {
	cert, key, err := c.newRoot(now)
	if err != nil {
		return err
	}
	if _, err := c.store.Bump(); err != nil {
		return internal("bump bundle version", err)
	}
	if err := rot.AddRoot(cert, key, activateAt, now); err != nil {
		return internal("store new root", err)
	}
	return nil
}

// reload rebuilds the state from the Backend and the store.
func (c *CA) reload() error {
	bauths, err := c.backend.Authorities()
	if err != nil {
		return fmt.Errorf("ca: %s: %w", c.backend.Source(), err)
	}
	if len(bauths) == 0 {
		return fmt.Errorf("ca: %s holds no CA certificate", c.backend.Source())
	}
	auths := make([]*authority, 0, len(bauths))
	for _, b := range bauths {
		a, err := newAuthority(b)
		if err != nil {
			return fmt.Errorf("ca: %s: %w", c.backend.Source(), err)
		}
		auths = append(auths, a)
	}
	maxes, err := c.store.MaxNotAfter()
	if err != nil {
		return fmt.Errorf("ca: %w", err)
	}
	// Keep the in-memory high-water marks of the current state: they may be
	// ahead of a concurrent reader of the store but never behind.
	prev := map[uint64]int64{}
	if old := c.state.Load(); old != nil {
		for _, a := range old.authorities {
			prev[a.id] = a.maxIssued.Load()
		}
	}
	// Records under authority 0 were written before plugged-in CAs had an
	// ID of their own (on files and on Kubernetes): which of today's
	// authorities signed them is not known, so every authority counts them
	// (legacyAuthority), and a root is never retired under a certificate
	// it may have signed.
	legacy := legacyAuthority(auths)
	for _, a := range auths {
		m := max(maxes[a.id], prev[a.id])
		if legacy {
			m = max(m, maxes[0])
		}
		a.maxIssued.Store(m)
	}
	version, err := c.store.BundleVersion()
	if err != nil {
		return fmt.Errorf("ca: %w", err)
	}
	revs, err := c.store.Revocations()
	if err != nil {
		return fmt.Errorf("ca: %w", err)
	}
	s := &state{authorities: auths}
	s.signer = pickSigner(auths, c.cfg.Clock())
	b := &TrustBundle{Version: version, TrustDomain: c.td, Revocations: revs}
	order := []*authority{s.signer}
	for _, a := range auths {
		if a != s.signer {
			order = append(order, a)
		}
	}
	revoked := make(map[string]string, len(revs))
	for _, r := range revs {
		revoked[r.Serial] = r.SPIFFEID
	}
	for _, a := range order {
		for _, r := range append([]*x509.Certificate{a.root}, a.otherRoots...) {
			b.Roots = append(b.Roots, r)
			b.RootsPEM = append(b.RootsPEM, string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: r.Raw})))
		}
	}
	b.ident = &identity.Bundle{Version: version, TrustDomain: c.td, Roots: b.Roots, Revoked: revoked}
	s.bundle = b
	old := c.state.Swap(s)
	if old == nil || old.bundle.Version != b.Version {
		close(c.changed)
		c.changed = make(chan struct{})
	}
	return nil
}

// pickSigner returns the authority activated last; if none has
// (impossible in practice: the first root activates at creation) the oldest.
func pickSigner(auths []*authority, now time.Time) *authority {
	signer := auths[0]
	for _, a := range auths {
		// Oldest first: of two activated at the same instant, the newer.
		if !a.activateAt.After(now) && !a.activateAt.Before(signer.activateAt) {
			signer = a
		}
	}
	return signer
}

func (c *CA) newRoot(now time.Time) (*x509.Certificate, crypto.Signer, error) {
	var key crypto.Signer
	var err error
	switch c.cfg.KeyType {
	case KeyRSA2048:
		key, err = rsa.GenerateKey(rand.Reader, 2048)
	case KeyRSA3072:
		key, err = rsa.GenerateKey(rand.Reader, 3072)
	default:
		key, err = ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	}
	if err != nil {
		return nil, nil, internal("generate root key", err)
	}
	cert, err := pki.SelfSignedCA(key, pki.CA{
		Subject: pkix.Name{
			Organization: []string{c.td},
			CommonName:   "meshauth root " + now.UTC().Format("2006-01-02T15:04:05Z"),
		},
		NotBefore: now.Add(-c.cfg.Backdate),
		NotAfter:  now.Add(c.cfg.RootTTL),
		KeyUsage:  x509.KeyUsageCertSign | x509.KeyUsageCRLSign | x509.KeyUsageDigitalSignature,
		// The trust domain as a URI SAN, as SPIRE's roots carry it: lets a
		// client learn the trust domain from root-cert.pem alone.
		URIs: []*url.URL{{Scheme: "spiffe", Host: c.td}},
	})
	if err != nil {
		return nil, nil, internal("create root certificate", err)
	}
	return cert, key, nil
}

func authorityFromRecord(r authorityRecord) (*Authority, error) {
	cert, err := x509.ParseCertificate(r.CertDER)
	if err != nil {
		return nil, fmt.Errorf("parse certificate: %w", err)
	}
	k, err := x509.ParsePKCS8PrivateKey(r.KeyDER)
	if err != nil {
		return nil, fmt.Errorf("parse key: %w", err)
	}
	key, ok := k.(crypto.Signer)
	if !ok || !pki.PublicKeysEqual(key.Public(), cert.PublicKey) {
		return nil, errors.New("key does not match certificate")
	}
	return &Authority{ID: r.ID, Certificate: cert, Signer: key, Root: cert, ActivateAt: r.ActivateAt}, nil
}

// serialBytes parses a lowercase hex serial to the store's key form.
func serialBytes(s string) ([]byte, bool) {
	n, ok := new(big.Int).SetString(s, 16)
	if !ok || n.Sign() <= 0 || n.Text(16) != s {
		return nil, false
	}
	return n.Bytes(), true
}

// TrustDomain returns the CA's trust domain.
func (c *CA) TrustDomain() string { return c.td }

// Bundle returns the current trust bundle.
func (c *CA) Bundle() *TrustBundle { return c.state.Load().bundle }

// Watch returns the current bundle and a channel closed when it is replaced.
// Loop: b, ch := ca.Watch(); use b; <-ch; repeat.
func (c *CA) Watch() (*TrustBundle, <-chan struct{}) {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.state.Load().bundle, c.changed
}

// Close closes the store.
func (c *CA) Close() error {
	c.metrics.unregister(c.cfg.Metrics)
	return c.store.Close()
}

// Caller is an identity a caller has proven, as an Authenticator returns it.
type Caller struct {
	ID identity.ID
	// Method is how it was proven: "mtls", "join_token", "k8s_token", "self".
	Method string
	// Subject names the credential for the issuance log: the serial of the
	// presented certificate, the join token's id, the ServiceAccount UID.
	Subject string
	// tokenHash is set by the join-token authenticator: one use is spent in
	// the transaction that logs the issuance.
	tokenHash string
	// presented is the verified leaf an mTLS (renewal) caller presented;
	// its lifetime bounds the renewal when the issuance log does not know
	// it (see renewalLimit).
	presented *x509.Certificate
}

func (c Caller) requester() string {
	if c.Subject == "" {
		return c.Method
	}
	return c.Method + ":" + c.Subject
}

// CountRefusal records in the issuance metrics a refusal that happened
// before Sign, while authenticating the caller, and logs it.
func (c *CA) CountRefusal(err error) {
	c.metrics.observe(err, 0)
	c.log.Info("refused caller", "reason", ReasonOf(err), "error", err)
}

// Issued is a signed workload certificate.
type Issued struct {
	ID identity.ID
	// ChainPEM is the leaf then the intermediates (not the root).
	ChainPEM []string
	// RootsPEM is the current bundle's roots.
	RootsPEM  []string
	Serial    string
	NotBefore time.Time
	NotAfter  time.Time
	// Leaf is the DER of the leaf.
	Leaf []byte
}

// Sign signs a CSR for caller's proven identity with the requested TTL
// (0 = default). Each refusal is an *Error naming its reason. The issuance
// is committed to the log before Sign returns.
func (c *CA) Sign(ctx context.Context, caller Caller, csrData []byte, ttl time.Duration) (*Issued, error) {
	start := time.Now() // latency metric only; not CA logic
	iss, err := c.sign(ctx, caller, csrData, ttl)
	c.metrics.observe(err, time.Since(start))
	if err != nil {
		var e *Error
		if errors.As(err, &e) && e.Kind != KindInternal {
			c.log.Info("refused CSR", "spiffe_id", caller.ID.String(), "requester", caller.requester(), "reason", e.Reason, "error", e.Msg)
		} else {
			c.log.Error("signing failed", "spiffe_id", caller.ID.String(), "error", err)
		}
	}
	return iss, err
}

func (c *CA) sign(ctx context.Context, caller Caller, csrData []byte, ttl time.Duration) (*Issued, error) {
	if caller.ID.IsZero() {
		return nil, refuse(KindUnauthenticated, ReasonUnauthenticated, "no proven identity: present a valid workload certificate (mTLS) or a join token")
	}
	if caller.ID.TrustDomain != c.td {
		return nil, refuse(KindDenied, ReasonForeignTrustDomain, "caller identity %s is not in trust domain %q", caller.ID, c.td)
	}
	if c.reserved(caller.ID) && (caller.Method != "self" || caller.Subject != "") {
		return nil, refuse(KindDenied, ReasonReservedIdentity, "%s is the control plane's own identity: only the control plane issues certificates for it (requester %s)", caller.ID, caller.requester())
	}
	ttl, err := c.checkTTL(ttl)
	if err != nil {
		return nil, err
	}
	// The lifetime every renewal of this certificate may keep: what the
	// first issuance of the lineage was allowed, never more.
	granted := max(ttl, c.cfg.DefaultTTL)
	if caller.Method == "mtls" {
		limit, basis, err := c.renewalLimit(caller)
		if err != nil {
			return nil, err
		}
		if ttl > limit {
			return nil, refuse(KindInvalid, ReasonTTL, "requested TTL %s is over the %s a renewal of certificate %s may have (%s): a renewal never gets a longer lifetime than its lineage's first issuance was allowed; ask for %s or less (0 = the CA's default, %s), or get a new certificate with a join token",
				ttl, limit, caller.Subject, basis, limit, c.cfg.DefaultTTL)
		}
		granted = limit
	}
	csr, err := ParseCSR(csrData)
	if err != nil {
		return nil, err
	}
	if err := checkCSR(csr, caller.ID); err != nil {
		return nil, err
	}
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	now := c.cfg.Clock()
	s := c.state.Load()
	a := pickSigner(s.authorities, now)
	notBefore := now.Add(-c.cfg.Backdate)
	if notBefore.Before(a.notBefore) {
		notBefore = a.notBefore
	}
	notAfter := now.Add(ttl)
	if notAfter.After(a.notAfter) {
		// Never outlive the issuer: a certificate valid past its chain
		// would fail verification at the end of its life anyway.
		notAfter = a.notAfter
	}
	if !notAfter.After(now) {
		return nil, internal("signing certificate has expired", fmt.Errorf("issuer NotAfter %s", a.notAfter))
	}
	uri := caller.ID.SPIFFE().URL()
	ku := x509.KeyUsageDigitalSignature
	if _, isRSA := csr.PublicKey.(*rsa.PublicKey); isRSA {
		ku |= x509.KeyUsageKeyEncipherment
	}
	for attempt := 0; ; attempt++ {
		serial, err := pki.RandomSerial()
		if err != nil {
			return nil, internal("serial", err)
		}
		tmpl := &x509.Certificate{
			SerialNumber:          serial,
			NotBefore:             notBefore,
			NotAfter:              notAfter,
			KeyUsage:              ku,
			ExtKeyUsage:           []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth},
			BasicConstraintsValid: true,
			URIs:                  []*url.URL{uri},
		}
		der, err := x509.CreateCertificate(rand.Reader, tmpl, a.cert, csr.PublicKey, a.key)
		if err != nil {
			return nil, internal("sign certificate", err)
		}
		hexSerial := serial.Text(16)
		rec := &IssuanceRecord{
			Serial: hexSerial, SPIFFEID: caller.ID.String(),
			NotBefore: notBefore.Unix(), NotAfter: notAfter.Unix(), IssuedAt: now.Unix(),
			Requester: caller.requester(), Authority: a.id,
			GrantedTTL: int64(granted / time.Second),
		}
		err = c.store.RecordIssuance(rec, serial.Bytes(), caller.tokenHash, now)
		if errors.Is(err, ErrSerialExists) && attempt < 3 {
			continue // 2^-126 odds; the certificate is discarded unseen
		}
		if err != nil {
			var e *Error
			if errors.As(err, &e) {
				return nil, e
			}
			return nil, internal("record issuance", err)
		}
		for {
			m := a.maxIssued.Load()
			if m >= notAfter.Unix() || a.maxIssued.CompareAndSwap(m, notAfter.Unix()) {
				break
			}
		}
		if caller.Method == "mtls" {
			c.fleetRenewed(caller.Subject, hexSerial, notAfter)
		}
		chain := make([]string, 0, 1+len(a.chainPEM))
		chain = append(chain, string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})))
		chain = append(chain, a.chainPEM...)
		return &Issued{
			ID: caller.ID, ChainPEM: chain, RootsPEM: s.bundle.RootsPEM, Serial: hexSerial,
			NotBefore: notBefore, NotAfter: notAfter, Leaf: der,
		}, nil
	}
}

func (c *CA) reserved(id identity.ID) bool {
	for _, r := range c.cfg.Reserved {
		if r == id {
			return true
		}
	}
	return false
}

// renewalLimit is the longest TTL an mTLS renewal by caller may ask for,
// and what it is based on (for the refusal message): the TTL granted to
// the presented certificate's lineage when it started, from the issuance
// log. For a certificate logged before grants were recorded it is the
// larger of the default TTL and that certificate's own lifetime; for one
// this CA did not log (another replica signed it, on Kubernetes) the larger
// of the default TTL and the presented certificate's lifetime. Never over
// MaxTTL.
func (c *CA) renewalLimit(caller Caller) (time.Duration, string, error) {
	rec, err := c.store.IssuedRecord(caller.Subject)
	if err != nil {
		return 0, "", internal("read issuance log", err)
	}
	var limit time.Duration
	var basis string
	switch {
	case rec != nil && rec.GrantedTTL > 0:
		limit = time.Duration(rec.GrantedTTL) * time.Second
		basis = "granted when its lineage started"
	case rec != nil:
		limit = max(c.cfg.DefaultTTL, time.Duration(rec.NotAfter-rec.IssuedAt)*time.Second)
		basis = "its own lifetime, or the CA's default TTL if longer"
	case caller.presented != nil:
		life := caller.presented.NotAfter.Sub(caller.presented.NotBefore) - c.cfg.Backdate
		limit = max(c.cfg.DefaultTTL, life.Truncate(time.Second))
		basis = "its own lifetime, or the CA's default TTL if longer"
	default:
		limit = c.cfg.DefaultTTL
		basis = "the CA's default TTL"
	}
	return min(limit, c.cfg.MaxTTL), basis, nil
}

// hashToken returns the store key of a join token secret.
func hashToken(token string) string {
	sum := sha256.Sum256([]byte(token))
	return hex.EncodeToString(sum[:])
}

// legacyAuthority reports whether issuance records under authority ID 0
// are of an unknown authority: none of auths has ID 0 (IDs of store roots
// start at 1; plugged-in authorities' are hashes of their certificate
// since the staged rotation, 0 before it).
func legacyAuthority(auths []*authority) bool {
	for _, a := range auths {
		if a.id == 0 {
			return false
		}
	}
	return true
}
