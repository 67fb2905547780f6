// Package agent is the sidecar's certificate agent. It generates the
// workload's private key (which never leaves the process), has the CA sign a
// CSR for it — with a join token the first time and over mTLS with its own
// certificate afterwards — writes the seed's cert-chain.pem, key.pem and
// root-cert.pem atomically, renews at about half of the lifetime with
// jitter, follows the CA's trust bundle and revocation stream, and serves
// the SPIFFE Workload API so unmodified SPIFFE clients get the same SVID.
//
// Everything the agent learns goes into a Store, the Source the proxy reads.
// When the CA is down the agent retries with capped backoff and the current
// certificate keeps serving until it expires.
package agent

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"os"
	"path/filepath"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	pb "github.com/meshauth/meshauth/api/meshauth/v1"
	"github.com/meshauth/meshauth/internal/identity"
)

// File names in the certs directory, as the seed shows them in /etc/certs.
const (
	ChainFile = "cert-chain.pem"
	KeyFile   = "key.pem"
	RootFile  = "root-cert.pem"
)

// ConnectFunc opens a client to the CA. With mtls false the connection must
// authenticate with the join token (bootstrap); with mtls true it presents
// the agent's current certificate (getCert) and no token.
type ConnectFunc func(ctx context.Context, mtls bool, getCert func() *tls.Certificate) (pb.CertificateAuthorityClient, io.Closer, error)

// Config configures an Agent.
type Config struct {
	// ID is the identity the agent asks for. Required.
	ID identity.ID
	// Dir is the certs directory (default /etc/certs). Empty string with
	// NoFiles set writes nothing.
	Dir     string
	NoFiles bool
	// Connect reaches the CA. Required.
	Connect ConnectFunc
	// Store receives certificates and bundles; nil creates one.
	Store *Store
	// TTL is the certificate lifetime to ask for (0: the CA's default).
	TTL time.Duration
	// RenewFraction of the lifetime after which to renew (default 0.5), with
	// Jitter (default 0.1) of the lifetime added or removed at random so a
	// fleet does not renew in lockstep.
	RenewFraction float64
	Jitter        float64
	// MinBackoff and MaxBackoff bound the retry delay after a CA failure
	// (defaults 500ms and 30s).
	MinBackoff, MaxBackoff time.Duration
	// Now is the clock; nil means time.Now.
	Now func() time.Time
	// Log; nil discards.
	Log *slog.Logger
	// Registerer for the agent's metrics; nil keeps them unexported.
	Registerer prometheus.Registerer
}

// Agent obtains and rotates the workload certificate.
type Agent struct {
	cfg   Config
	store *Store
	log   *slog.Logger
	now   func() time.Time

	renewals *prometheus.CounterVec
	expiry   prometheus.Gauge
	bundles  *prometheus.CounterVec

	mu        sync.Mutex
	lastError string
	lastRenew time.Time
}

// New checks cfg and fills defaults.
func New(cfg Config) (*Agent, error) {
	if cfg.ID.IsZero() {
		return nil, errors.New("agent: Config.ID is required")
	}
	if cfg.Connect == nil {
		return nil, errors.New("agent: Config.Connect is required")
	}
	if cfg.Dir == "" && !cfg.NoFiles {
		cfg.Dir = "/etc/certs"
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	if cfg.Log == nil {
		cfg.Log = slog.New(slog.DiscardHandler)
	}
	if cfg.RenewFraction <= 0 || cfg.RenewFraction >= 1 {
		cfg.RenewFraction = 0.5
	}
	if cfg.Jitter < 0 || cfg.Jitter >= cfg.RenewFraction {
		cfg.Jitter = 0.1
	}
	if cfg.MinBackoff <= 0 {
		cfg.MinBackoff = 500 * time.Millisecond
	}
	if cfg.MaxBackoff < cfg.MinBackoff {
		cfg.MaxBackoff = 30 * time.Second
	}
	a := &Agent{cfg: cfg, log: cfg.Log, now: cfg.Now}
	a.renewals = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "meshauth_agent_certificate_requests_total",
		Help: "CSRs sent to the CA, by kind (bootstrap|renewal) and result (ok|error).",
	}, []string{"kind", "result"})
	a.expiry = prometheus.NewGauge(prometheus.GaugeOpts{
		Name: "meshauth_agent_cert_expiry_timestamp_seconds",
		Help: "NotAfter of the agent's current certificate, as Unix seconds.",
	})
	a.bundles = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "meshauth_agent_bundle_updates_total",
		Help: "Trust bundles received from the CA, by result (applied|refused).",
	}, []string{"result"})
	if cfg.Registerer != nil {
		cfg.Registerer.MustRegister(a.renewals, a.expiry, a.bundles)
	}
	a.store = cfg.Store
	if a.store == nil {
		a.store = NewStore(StoreConfig{Want: cfg.ID, Now: cfg.Now, Log: cfg.Log})
	}
	return a, nil
}

// Store returns the store the agent fills (the proxy's certificate source).
func (a *Agent) Store() *Store { return a.store }

// Status is the agent's view for the admin page.
func (a *Agent) Status() map[string]any {
	a.mu.Lock()
	defer a.mu.Unlock()
	st := map[string]any{"identity": a.cfg.ID.String(), "certs_dir": a.cfg.Dir, "last_error": a.lastError}
	if !a.lastRenew.IsZero() {
		st["last_renewal"] = a.lastRenew.UTC()
	}
	if s := a.store.SVID(); s != nil {
		st["renew_at"] = a.renewAt(s).UTC()
	}
	return st
}

func (a *Agent) setErr(err error) {
	a.mu.Lock()
	defer a.mu.Unlock()
	if err == nil {
		a.lastError = ""
		a.lastRenew = a.now()
		return
	}
	a.lastError = err.Error()
}

// Run obtains a certificate (reusing a still-valid one from the certs
// directory after a restart), then keeps it renewed and the bundle current
// until ctx ends. It returns only when ctx is done.
func (a *Agent) Run(ctx context.Context) error {
	if a.store.SVID() == nil {
		if err := a.loadFiles(); err != nil {
			a.log.Info("no reusable certificate in the certs directory; bootstrapping", "dir", a.cfg.Dir, "reason", err.Error())
		}
	}
	var wg sync.WaitGroup
	wg.Add(1)
	go func() { defer wg.Done(); a.watchBundle(ctx) }()
	a.rotate(ctx)
	wg.Wait()
	return ctx.Err()
}

// rotate is the renewal loop: sleep until the renewal time, ask the CA, and
// on failure retry with capped exponential backoff. The current certificate
// stays in use the whole time.
func (a *Agent) rotate(ctx context.Context) {
	backoff := a.cfg.MinBackoff
	for {
		var wait time.Duration
		if s := a.store.SVID(); s != nil {
			wait = a.renewAt(s).Sub(a.now())
		}
		if wait > 0 {
			t := time.NewTimer(wait)
			select {
			case <-ctx.Done():
				t.Stop()
				return
			case <-t.C:
			}
		}
		err := a.renew(ctx)
		a.setErr(err)
		if err == nil {
			backoff = a.cfg.MinBackoff
			continue
		}
		if ctx.Err() != nil {
			return
		}
		s := a.store.SVID()
		attrs := []any{"error", err.Error(), "retry_in", backoff.String()}
		if s != nil {
			attrs = append(attrs, "serial", s.Serial(), "expires", s.NotAfter().UTC().Format(time.RFC3339))
		}
		a.log.Warn("certificate request failed; keeping the current certificate and retrying", attrs...)
		t := time.NewTimer(withJitter(backoff))
		select {
		case <-ctx.Done():
			t.Stop()
			return
		case <-t.C:
		}
		backoff = min(2*backoff, a.cfg.MaxBackoff)
	}
}

func withJitter(d time.Duration) time.Duration {
	return d/2 + rand.N(d/2+1)
}

// renewAt is NotBefore + lifetime*(fraction ± jitter).
func (a *Agent) renewAt(s *SVID) time.Time {
	l := s.Leaf()
	life := l.NotAfter.Sub(l.NotBefore)
	f := a.cfg.RenewFraction
	if a.cfg.Jitter > 0 {
		// Deterministic per certificate (serial-seeded), so Status and the
		// loop agree on the time.
		r := rand.New(rand.NewPCG(l.SerialNumber.Uint64(), 0x6d657368))
		f += (r.Float64()*2 - 1) * a.cfg.Jitter
	}
	return l.NotBefore.Add(time.Duration(float64(life) * f))
}

// renew makes a new key and CSR and has the CA sign it: over mTLS with the
// current certificate when there is a valid one, else with the join token.
func (a *Agent) renew(ctx context.Context) error {
	cur := a.store.SVID()
	mtls := cur != nil && a.now().Before(cur.NotAfter())
	kind := "bootstrap"
	if mtls {
		kind = "renewal"
	}
	err := a.request(ctx, mtls)
	if err != nil && mtls {
		// The CA may refuse a revoked certificate; the join token (if it is
		// still good) is the way back in.
		if err2 := a.request(ctx, false); err2 == nil {
			err = nil
		} else {
			err = fmt.Errorf("%w; with join token: %w", err, err2)
		}
	}
	result := "ok"
	if err != nil {
		result = "error"
	}
	a.renewals.WithLabelValues(kind, result).Inc()
	return err
}

func (a *Agent) request(ctx context.Context, mtls bool) error {
	key, err := newKey()
	if err != nil {
		return fmt.Errorf("agent: generate key: %w", err)
	}
	csr, err := newCSR(key, a.cfg.ID)
	if err != nil {
		return err
	}
	cctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	client, closer, err := a.cfg.Connect(cctx, mtls, a.currentTLS)
	if err != nil {
		return fmt.Errorf("agent: connect to CA: %w", err)
	}
	defer closer.Close()
	resp, err := client.CreateCertificate(cctx, &pb.CreateCertificateRequest{Csr: csr, TtlSeconds: int64(a.cfg.TTL / time.Second)})
	if err != nil {
		return fmt.Errorf("agent: CreateCertificate: %w", err)
	}
	var chainPEM []byte
	for _, c := range resp.CertChain {
		chainPEM = append(chainPEM, c...)
	}
	chain, err := identity.ParseCertsPEM(chainPEM)
	if err != nil {
		return fmt.Errorf("agent: CA response: %w", err)
	}
	svid, err := newSVID(chain, key, chainPEM, nil)
	if err != nil {
		return fmt.Errorf("agent: CA response: %w", err)
	}
	var bundle *identity.Bundle
	if cur := a.store.Bundle(); cur != nil {
		bundle = cur
	}
	if len(resp.Roots) > 0 && (bundle == nil || !sameRoots(bundle, resp.Roots)) {
		// The CA's roots are newer than ours (first contact, or a root
		// rotation the bundle stream has not shown us yet).
		version := uint64(0)
		revoked := map[string]string{}
		td := a.cfg.ID.TrustDomain
		if bundle != nil {
			version, revoked = bundle.Version, bundle.Revoked
		}
		nb, err := identity.NewBundle(td, version, resp.Roots, revoked)
		if err != nil {
			return fmt.Errorf("agent: CA response roots: %w", err)
		}
		bundle = nb
	}
	if err := a.store.Set(svid, bundle); err != nil {
		return err
	}
	a.expiry.Set(float64(svid.NotAfter().Unix()))
	a.log.Info("workload certificate issued", "spiffe_id", svid.URI, "serial", svid.Serial(),
		"not_after", svid.NotAfter().UTC().Format(time.RFC3339), "renew_at", a.renewAt(svid).UTC().Format(time.RFC3339), "mtls", mtls)
	return a.writeFiles()
}

func sameRoots(b *identity.Bundle, roots []string) bool {
	var n int
	for _, r := range roots {
		cs, err := identity.ParseCertsPEM([]byte(r))
		if err != nil {
			return false
		}
		for _, c := range cs {
			found := false
			for _, x := range b.Roots {
				if x.Equal(c) {
					found = true
					break
				}
			}
			if !found {
				return false
			}
			n++
		}
	}
	return n == len(b.Roots)
}

func (a *Agent) currentTLS() *tls.Certificate {
	if s := a.store.SVID(); s != nil {
		return s.TLS
	}
	return nil
}

// watchBundle follows WatchTrustBundle, reconnecting with backoff. It needs
// a certificate to authenticate, so it waits for the first one.
func (a *Agent) watchBundle(ctx context.Context) {
	backoff := a.cfg.MinBackoff
	for ctx.Err() == nil {
		if a.store.SVID() == nil {
			select {
			case <-ctx.Done():
				return
			case <-a.store.Changed():
				continue
			}
		}
		received, err := a.watchOnce(ctx)
		if ctx.Err() != nil {
			return
		}
		if received {
			backoff = a.cfg.MinBackoff
		}
		a.log.Warn("trust bundle stream ended; reconnecting", "error", fmt.Sprint(err), "retry_in", backoff.String())
		t := time.NewTimer(withJitter(backoff))
		select {
		case <-ctx.Done():
			t.Stop()
			return
		case <-t.C:
		}
		backoff = min(2*backoff, a.cfg.MaxBackoff)
	}
}

func (a *Agent) watchOnce(ctx context.Context) (bool, error) {
	client, closer, err := a.cfg.Connect(ctx, true, a.currentTLS)
	if err != nil {
		return false, err
	}
	defer closer.Close()
	stream, err := client.WatchTrustBundle(ctx, &pb.GetTrustBundleRequest{})
	if err != nil {
		return false, err
	}
	received := false
	for {
		tb, err := stream.Recv()
		if err != nil {
			return received, err
		}
		received = true
		revoked := make(map[string]string, len(tb.Revocations))
		for _, r := range tb.Revocations {
			revoked[r.Serial] = r.SpiffeId
		}
		td := tb.TrustDomain
		if td == "" {
			td = a.cfg.ID.TrustDomain
		}
		b, err := identity.NewBundle(td, tb.Version, tb.Roots, revoked)
		if err != nil {
			a.bundles.WithLabelValues("refused").Inc()
			a.log.Warn("refused trust bundle from the CA", "version", tb.Version, "error", err.Error())
			continue
		}
		if cur := a.store.Bundle(); cur != nil && cur.Version == b.Version && cur.Version != 0 && len(cur.Revoked) == len(b.Revoked) {
			continue
		}
		if err := a.store.SetBundle(b); err != nil {
			a.bundles.WithLabelValues("refused").Inc()
			continue
		}
		a.bundles.WithLabelValues("applied").Inc()
		a.log.Info("trust bundle updated", "version", b.Version, "roots", len(b.Roots), "revoked", len(b.Revoked))
		if s := a.store.SVID(); s != nil && b.IsRevoked(s.Serial()) {
			// Our own certificate was revoked: get a new one now, not at
			// the next renewal time.
			a.log.Warn("own certificate revoked; requesting a new one", "serial", s.Serial())
			go func() { a.setErr(a.renew(ctx)) }()
		}
		if err := a.writeFiles(); err != nil {
			a.log.Warn("writing certs directory failed", "error", err.Error())
		}
	}
}

// loadFiles reuses the certificate in the certs directory if it is for our
// identity, matches its key and is not past its renewal time.
func (a *Agent) loadFiles() error {
	if a.cfg.NoFiles {
		return errors.New("files disabled")
	}
	chain, err := os.ReadFile(filepath.Join(a.cfg.Dir, ChainFile))
	if err != nil {
		return err
	}
	key, err := os.ReadFile(filepath.Join(a.cfg.Dir, KeyFile))
	if err != nil {
		return err
	}
	roots, err := os.ReadFile(filepath.Join(a.cfg.Dir, RootFile))
	if err != nil {
		return err
	}
	s, err := NewSVID(chain, key)
	if err != nil {
		return err
	}
	if !a.now().Before(a.renewAt(s)) {
		return fmt.Errorf("certificate serial %s is past its renewal time", s.Serial())
	}
	b, err := identity.NewBundle(a.cfg.ID.TrustDomain, 0, []string{string(roots)}, nil)
	if err != nil {
		return err
	}
	if err := a.store.Set(s, b); err != nil {
		return err
	}
	a.log.Info("reusing certificate from the certs directory", "spiffe_id", s.URI, "serial", s.Serial())
	return nil
}

// writeFiles writes the three files atomically (temp file + rename), key
// first and 0600, so a reader never sees a chain without its key.
func (a *Agent) writeFiles() error {
	if a.cfg.NoFiles {
		return nil
	}
	s, b := a.store.SVID(), a.store.Bundle()
	if s == nil || b == nil {
		return nil
	}
	return WriteFiles(a.cfg.Dir, s, b)
}

// WriteFiles writes cert-chain.pem, key.pem (0600) and root-cert.pem into dir
// atomically.
func WriteFiles(dir string, s *SVID, b *identity.Bundle) error {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return fmt.Errorf("agent: certs dir: %w", err)
	}
	for _, f := range []struct {
		name string
		data []byte
		mode os.FileMode
	}{
		{KeyFile, s.KeyPEM, 0o600},
		{ChainFile, s.ChainPEM, 0o644},
		{RootFile, b.RootsPEM(), 0o644},
	} {
		if err := writeAtomic(filepath.Join(dir, f.name), f.data, f.mode); err != nil {
			return err
		}
	}
	return nil
}

func writeAtomic(path string, data []byte, mode os.FileMode) error {
	tmp, err := os.CreateTemp(filepath.Dir(path), "."+filepath.Base(path)+".*")
	if err != nil {
		return fmt.Errorf("agent: write %s: %w", path, err)
	}
	defer os.Remove(tmp.Name())
	if err := tmp.Chmod(mode); err != nil {
		tmp.Close()
		return fmt.Errorf("agent: write %s: %w", path, err)
	}
	if _, err := tmp.Write(data); err != nil {
		tmp.Close()
		return fmt.Errorf("agent: write %s: %w", path, err)
	}
	if err := tmp.Sync(); err != nil {
		tmp.Close()
		return fmt.Errorf("agent: write %s: %w", path, err)
	}
	if err := tmp.Close(); err != nil {
		return fmt.Errorf("agent: write %s: %w", path, err)
	}
	if err := os.Rename(tmp.Name(), path); err != nil {
		return fmt.Errorf("agent: write %s: %w", path, err)
	}
	return nil
}
