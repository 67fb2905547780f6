// Package control is `meshd control`: one gRPC-over-TLS server on the
// control-plane port that serves the CertificateAuthority API, the Admin API
// and Discovery. New builds the server and its config plane (plane.go)
// together: Server.Plane returns it.
//
// The server presents a certificate its own CA issued for
// spiffe://<td>/ns/meshauth-system/sa/meshd; clients verify it against the
// trust bundle and that ID (see internal/client). It requests but does not
// require client certificates: renewing sidecars present theirs, bootstrap
// callers bring a join token instead. Admin calls need the admin token that
// New writes to DIR/admin.token (0600).
//
// The state directory holds:
//
//	ca.db          the CA store (bbolt, 0600)
//	admin.token    the admin credential (0600)
//	root-cert.pem  the current bundle's roots, rewritten on every change
//	revocations.json  the bundle's revoked serials, rewritten with it, so
//	               clients reading the directory refuse a revoked control
//	               plane certificate (client.LoadRoots)
//	control.addr   the address actually listened on, written after listen
package control

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/subtle"
	"crypto/tls"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/peer"

	pb "github.com/meshauth/meshauth/api/meshauth/v1"
	"github.com/meshauth/meshauth/internal/atomicfile"
	"github.com/meshauth/meshauth/internal/ca"
	"github.com/meshauth/meshauth/internal/client"
	"github.com/meshauth/meshauth/internal/identity"
	"github.com/meshauth/meshauth/internal/tlsprofile"
)

// File names in the state directory.
const (
	FileAdminToken  = "admin.token"
	FileRootCert    = "root-cert.pem"
	FileControlAddr = "control.addr"
	DefaultListen   = "127.0.0.1:15012"
	// ServerNamespace and ServerServiceAccount make the control plane's
	// own identity, spiffe://<td>/ns/meshauth-system/sa/meshd.
	ServerNamespace      = "meshauth-system"
	ServerServiceAccount = "meshd"
)

// ServerID returns the identity the control plane serves with in td.
func ServerID(td string) identity.ID {
	id, err := identity.New(td, ServerNamespace, ServerServiceAccount)
	if err != nil {
		panic(err) // td was validated by the caller; the names are constants
	}
	return id
}

// Config configures the server. Zero values get the defaults named.
type Config struct {
	// Dir is the state directory (default ./.meshauth).
	Dir string
	// Listen address (default 127.0.0.1:15012; port 0 picks a free one,
	// written to DIR/control.addr).
	Listen string
	// MetricsListen serves Prometheus /metrics over HTTP; empty disables.
	MetricsListen string
	// CA configures the certificate authority; its Dir, Clock, Log and
	// Metrics default to the server's.
	CA ca.Config
	// Authenticators are tried after join tokens and before mTLS (e.g. the
	// Kubernetes ServiceAccount token reviewer).
	Authenticators []ca.Authenticator
	// Plane configures the config plane (config directory, push debounce);
	// it serves Discovery and Admin.ApplyConfig/GetState.
	Plane PlaneConfig
	// TickInterval is how often the CA's time-driven work runs (10s).
	TickInterval time.Duration
	Clock        func() time.Time
	Log          *slog.Logger
	// Metrics is the registry the CA and the server register in and that
	// /metrics serves (default: a new registry with Go and process collectors).
	Metrics *prometheus.Registry
}

// Server is a configured control plane.
type Server struct {
	cfg        Config
	log        *slog.Logger
	ca         *ca.CA
	grpc       *grpc.Server
	adminToken string
	auths      []ca.Authenticator

	plane     *Plane
	serving   atomic.Pointer[tls.Certificate]
	tlsConfig *tls.Config // the gRPC server's, from tlsprofile

	lis  net.Listener
	addr atomic.Value // string
	// stopping is closed when Serve begins to shut down, so long-lived
	// streams (WatchTrustBundle, Discovery) end and GracefulStop can finish.
	stopping chan struct{}
}

// New opens the CA, writes the admin token and root-cert.pem, issues the
// server's own certificate and registers the services. Call Serve to listen.
func New(cfg Config) (*Server, error) {
	if cfg.Dir == "" {
		cfg.Dir = ".meshauth"
	}
	if cfg.Listen == "" {
		cfg.Listen = DefaultListen
	}
	if cfg.TickInterval == 0 {
		cfg.TickInterval = 10 * time.Second
	}
	if cfg.Clock == nil {
		cfg.Clock = time.Now
	}
	if cfg.Log == nil {
		cfg.Log = slog.Default()
	}
	if cfg.Metrics == nil {
		cfg.Metrics = prometheus.NewRegistry()
		cfg.Metrics.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	}
	cc := cfg.CA
	cc.Dir = cfg.Dir
	td := cc.TrustDomain
	if td == "" {
		td = identity.DefaultTrustDomain
	}
	if _, err := identity.New(td, ServerNamespace, ServerServiceAccount); err == nil {
		// Only this process may hold the identity clients trust as the
		// control plane.
		cc.Reserved = append(cc.Reserved, ServerID(td))
	}
	if cc.Clock == nil {
		cc.Clock = cfg.Clock
	}
	if cc.Log == nil {
		cc.Log = cfg.Log
	}
	if cc.Metrics == nil {
		cc.Metrics = cfg.Metrics
	}
	if err := os.MkdirAll(cfg.Dir, 0o700); err != nil {
		return nil, fmt.Errorf("control: state dir: %w", err)
	}
	authority, err := ca.New(cc)
	if err != nil {
		return nil, err
	}
	s := &Server{cfg: cfg, log: cfg.Log.With("component", "control"), ca: authority, stopping: make(chan struct{})}
	ok := false
	defer func() {
		if !ok {
			authority.Close()
		}
	}()
	if s.adminToken, err = loadOrCreateAdminToken(filepath.Join(cfg.Dir, FileAdminToken)); err != nil {
		return nil, err
	}
	if err := s.writeRoots(authority.Bundle()); err != nil {
		return nil, err
	}
	if err := s.renewServing(); err != nil {
		return nil, err
	}
	s.auths = append([]ca.Authenticator{authority.JoinTokenAuthenticator()}, cfg.Authenticators...)
	s.auths = append(s.auths, authority.MTLSAuthenticator())

	tlsCfg := tlsprofile.New()
	tlsCfg.GetCertificate = func(*tls.ClientHelloInfo) (*tls.Certificate, error) {
		return s.serving.Load(), nil
	}
	// Request, never require, and do not verify here: bootstrap callers
	// have no certificate, and the authenticator verifies against the
	// bundle of the moment (roots rotate, serials get revoked).
	tlsCfg.ClientAuth = tls.RequestClientCert
	s.tlsConfig = tlsCfg
	s.grpc = grpc.NewServer(append(client.ServerKeepalive(),
		grpc.Creds(credentials.NewTLS(tlsCfg)),
		// Reuse handler goroutines: signing grows a fresh goroutine's stack
		// several times (profiled: ~5% of CPU in copystack). Requests beyond
		// the pool still get their own goroutine.
		grpc.NumStreamWorkers(64),
		// Fixed flow-control windows instead of gRPC's BDP estimation, which
		// pings and resizes windows as data arrives: calls here are small
		// (a CSR, a bundle), so there is no bandwidth-delay product to find,
		// and the pings and window updates were ~1.5% of the CPU under
		// issuance load (the loopy writer's share of meshd control's
		// profile halved). 64 KiB per stream is gRPC's default; the
		// connection window lets 256 CSRs of ~4 KiB be in flight at once.
		grpc.InitialWindowSize(64<<10),
		grpc.InitialConnWindowSize(1<<20),
		grpc.ChainUnaryInterceptor(s.adminUnary),
		grpc.ChainStreamInterceptor(s.adminStream),
	)...)
	pb.RegisterCertificateAuthorityServer(s.grpc, &caService{s: s})
	pb.RegisterAdminServer(s.grpc, &adminService{s: s})
	if s.plane, err = newPlane(s, cfg.Plane); err != nil {
		return nil, fmt.Errorf("control: register: %w", err)
	}
	pb.RegisterDiscoveryServer(s.grpc, s.plane.Push())
	ok = true
	return s, nil
}

// CA returns the server's certificate authority: the bundle, revocations
// and Watch for pushing them, VerifyPeer for authenticating sidecars.
func (s *Server) CA() *ca.CA { return s.ca }

// Plane returns the server's config plane (config, registry, Discovery).
// Close it when the server is done.
func (s *Server) Plane() *Plane { return s.plane }

// Log returns the server's logger.
func (s *Server) Log() *slog.Logger { return s.log }

// Dir returns the state directory.
func (s *Server) Dir() string { return s.cfg.Dir }

// Metrics returns the Prometheus registry.
func (s *Server) Metrics() *prometheus.Registry { return s.cfg.Metrics }

// Stopping returns a channel closed when Serve starts shutting down: a
// streaming handler returns when it closes.
func (s *Server) Stopping() <-chan struct{} { return s.stopping }

// Addr returns the address Serve listens on ("" before it does).
func (s *Server) Addr() string {
	a, _ := s.addr.Load().(string)
	return a
}

// PeerIdentity returns the verified identity of the mTLS client of a call
// (ca.VerifyPeer: current bundle, revocation). Discovery uses it so that a
// sidecar's identity comes from its certificate, never from its request.
func (s *Server) PeerIdentity(ctx context.Context) (identity.ID, error) {
	certs := peerCerts(ctx)
	if len(certs) == 0 {
		return identity.ID{}, identity.ErrNoCertificate
	}
	return s.ca.VerifyPeer(certs)
}

// Serve listens on cfg.Listen, writes DIR/control.addr, and serves until ctx
// is done; then it stops gracefully (in-flight calls finish, streams end)
// and closes the CA.
func (s *Server) Serve(ctx context.Context) error {
	defer s.ca.Close()
	lis, err := net.Listen("tcp", s.cfg.Listen)
	if err != nil {
		return fmt.Errorf("control: listen %s: %w", s.cfg.Listen, err)
	}
	s.lis = lis
	if err := writeFileAtomic(filepath.Join(s.cfg.Dir, FileControlAddr), []byte(lis.Addr().String()+"\n"), 0o644); err != nil {
		lis.Close()
		return err
	}
	// Addr is set once control.addr is written: a caller that waits for
	// Addr then dials through the directory finds the file.
	s.addr.Store(lis.Addr().String())
	s.log.Info("control plane listening", "addr", lis.Addr().String(), "trust_domain", s.ca.TrustDomain(), "dir", s.cfg.Dir)

	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var wg sync.WaitGroup
	wg.Add(2)
	go func() { defer wg.Done(); s.tickLoop(ctx) }()
	go func() { defer wg.Done(); s.bundleLoop(ctx) }()
	if s.cfg.MetricsListen != "" {
		s.serveMetrics(ctx, &wg)
	}

	errc := make(chan error, 1)
	go func() { errc <- s.grpc.Serve(lis) }()
	select {
	case err = <-errc:
	case <-ctx.Done():
		// GracefulStop waits for streams; the ones that watch Stopping end
		// now, and Stop cuts any other after a grace period.
		close(s.stopping)
		done := make(chan struct{})
		go func() { s.grpc.GracefulStop(); close(done) }()
		select {
		case <-done:
		case <-time.After(5 * time.Second):
			s.grpc.Stop()
		}
		err = nil
	}
	cancel()
	wg.Wait()
	return err
}

func (s *Server) serveMetrics(ctx context.Context, wg *sync.WaitGroup) {
	mux := http.NewServeMux()
	mux.Handle("/metrics", promhttp.HandlerFor(s.cfg.Metrics, promhttp.HandlerOpts{}))
	ml, err := net.Listen("tcp", s.cfg.MetricsListen)
	if err != nil {
		// Metrics are not worth refusing to run the CA for; say so loudly.
		s.log.Warn("metrics listener failed; /metrics is not served", "addr", s.cfg.MetricsListen, "error", err)
		return
	}
	s.log.Info("metrics listening", "addr", ml.Addr().String())
	hs := &http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second}
	wg.Add(1)
	go func() {
		defer wg.Done()
		go func() { <-ctx.Done(); hs.Close() }()
		_ = hs.Serve(ml)
	}()
}

func (s *Server) tickLoop(ctx context.Context) {
	t := time.NewTicker(s.cfg.TickInterval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			if err := s.ca.Tick(); err != nil {
				s.log.Error("CA tick failed", "error", err)
			}
			// Renew the server certificate at half its life, as sidecars do.
			if c := s.serving.Load(); c != nil && c.Leaf != nil {
				half := c.Leaf.NotBefore.Add(c.Leaf.NotAfter.Sub(c.Leaf.NotBefore) / 2)
				if s.cfg.Clock().After(half) {
					if err := s.renewServing(); err != nil {
						s.log.Error("renew server certificate failed", "error", err)
					}
				}
			}
		}
	}
}

// bundleLoop keeps root-cert.pem and the server certificate in step with
// the bundle: after a signing switch the server certificate comes from the
// new root, so clients that already dropped the old root still connect.
func (s *Server) bundleLoop(ctx context.Context) {
	for {
		b, ch := s.ca.Watch()
		// A change of signing root needs a new server certificate, and so
		// does the revocation of the one it serves (its key may be stolen;
		// clients refuse a revoked control plane certificate). The new one
		// is in place before the files that tell clients of the revocation
		// are written; GetCertificate hands it to the next handshake, the
		// listener and the connections already open stay.
		c := s.serving.Load()
		switch {
		case c == nil || c.Leaf == nil || len(c.Certificate) == 0 || !signedByChainOf(c, b.Roots[0]):
			if err := s.renewServing(); err != nil {
				s.log.Error("renew server certificate failed", "error", err)
			}
		case b.Identity().IsRevoked(identity.SerialHex(c.Leaf)):
			s.log.Warn("the control plane's own certificate was revoked; issuing a new one", "serial", identity.SerialHex(c.Leaf), "bundle_version", b.Version)
			if err := s.renewServing(); err != nil {
				s.log.Error("renew revoked server certificate failed; clients will refuse this control plane until it succeeds", "error", err)
			}
		}
		if err := s.writeRoots(b); err != nil {
			s.log.Error("write root-cert.pem failed", "error", err)
		}
		select {
		case <-ctx.Done():
			return
		case <-ch:
		}
	}
}

// renewServing issues the server's own certificate through the CA's normal
// path (so it is logged like any other).
func (s *Server) renewServing() error {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return fmt.Errorf("control: server key: %w", err)
	}
	csr, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{}, key)
	if err != nil {
		return fmt.Errorf("control: server CSR: %w", err)
	}
	iss, err := s.ca.Sign(context.Background(), ca.Caller{ID: ServerID(s.ca.TrustDomain()), Method: "self"}, csr, 0)
	if err != nil {
		return fmt.Errorf("control: issue server certificate: %w", err)
	}
	var cert tls.Certificate
	for _, p := range iss.ChainPEM {
		c, err := identity.ParseCertsPEM([]byte(p))
		if err != nil {
			return fmt.Errorf("control: server certificate: %w", err)
		}
		cert.Certificate = append(cert.Certificate, c[0].Raw)
		if cert.Leaf == nil {
			cert.Leaf = c[0]
		}
	}
	cert.PrivateKey = key
	s.serving.Store(&cert)
	s.log.Info("server certificate issued", "spiffe_id", iss.ID.String(), "serial", iss.Serial, "not_after", iss.NotAfter)
	return nil
}

// signedByChainOf reports whether the last certificate of c's chain was
// signed by root (for a self-signed root the chain is just the leaf).
func signedByChainOf(c *tls.Certificate, root *x509.Certificate) bool {
	last, err := x509.ParseCertificate(c.Certificate[len(c.Certificate)-1])
	if err != nil {
		return false
	}
	return last.CheckSignatureFrom(root) == nil
}

// writeRoots writes root-cert.pem and revocations.json (the bundle's
// revoked serials, which clients reading this directory check the control
// plane's own certificate against, see client.LoadRoots).
func (s *Server) writeRoots(b *ca.TrustBundle) error {
	if err := writeFileAtomic(filepath.Join(s.cfg.Dir, FileRootCert), []byte(strings.Join(b.RootsPEM, "")), 0o644); err != nil {
		return err
	}
	revs := b.Revocations
	if revs == nil {
		revs = []ca.Revocation{}
	}
	data, err := json.MarshalIndent(struct {
		BundleVersion uint64          `json:"bundle_version"`
		Revocations   []ca.Revocation `json:"revocations"`
	}{b.Version, revs}, "", "  ")
	if err != nil {
		return fmt.Errorf("control: encode revocations: %w", err)
	}
	return writeFileAtomic(filepath.Join(s.cfg.Dir, client.FileRevocations), append(data, '\n'), 0o644)
}

// loadOrCreateAdminToken keeps the admin token across restarts, so scripts
// and a running meshctl keep working; delete the file to rotate it.
func loadOrCreateAdminToken(path string) (string, error) {
	if b, err := os.ReadFile(path); err == nil {
		tok := strings.TrimSpace(string(b))
		if tok != "" {
			if err := os.Chmod(path, 0o600); err != nil {
				return "", fmt.Errorf("control: chmod %s: %w", path, err)
			}
			return tok, nil
		}
	} else if !errors.Is(err, os.ErrNotExist) {
		return "", fmt.Errorf("control: read %s: %w", path, err)
	}
	var b [32]byte
	if _, err := rand.Read(b[:]); err != nil {
		return "", err
	}
	tok := "mat1." + base64.RawURLEncoding.EncodeToString(b[:])
	if err := writeFileAtomic(path, []byte(tok+"\n"), 0o600); err != nil {
		return "", err
	}
	return tok, nil
}

// writeFileAtomic writes via internal/atomicfile, so readers never see a
// half-written file.
func writeFileAtomic(path string, data []byte, mode os.FileMode) error {
	if err := atomicfile.Write(path, data, mode); err != nil {
		return fmt.Errorf("control: %w", err)
	}
	return nil
}

func peerCerts(ctx context.Context) []*x509.Certificate {
	p, ok := peer.FromContext(ctx)
	if !ok {
		return nil
	}
	ti, ok := p.AuthInfo.(credentials.TLSInfo)
	if !ok {
		return nil
	}
	return ti.State.PeerCertificates
}

func bearer(ctx context.Context) string {
	// ValueFromIncomingContext reads the one key; FromIncomingContext would
	// copy every header of the call.
	for _, v := range metadata.ValueFromIncomingContext(ctx, "authorization") {
		if tok, ok := strings.CutPrefix(v, "Bearer "); ok {
			return strings.TrimSpace(tok)
		}
	}
	return ""
}

// checkAdmin compares in constant time so the token cannot be guessed byte
// by byte from response timing.
func (s *Server) checkAdmin(ctx context.Context) error {
	tok := bearer(ctx)
	if tok == "" || subtle.ConstantTimeCompare([]byte(tok), []byte(s.adminToken)) != 1 {
		return statusf(ctx, "unauthenticated", "admin calls need \"authorization: Bearer <admin token>\" from %s (meshctl --dir finds it)", filepath.Join(s.cfg.Dir, FileAdminToken))
	}
	return nil
}

const adminPrefix = "/meshauth.v1.Admin/"

func (s *Server) adminUnary(ctx context.Context, req any, info *grpc.UnaryServerInfo, h grpc.UnaryHandler) (any, error) {
	if strings.HasPrefix(info.FullMethod, adminPrefix) {
		if err := s.checkAdmin(ctx); err != nil {
			return nil, err
		}
	}
	return h(ctx, req)
}

func (s *Server) adminStream(srv any, ss grpc.ServerStream, info *grpc.StreamServerInfo, h grpc.StreamHandler) error {
	if strings.HasPrefix(info.FullMethod, adminPrefix) {
		if err := s.checkAdmin(ss.Context()); err != nil {
			return err
		}
	}
	return h(srv, ss)
}
