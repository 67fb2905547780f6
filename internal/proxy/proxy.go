// Package proxy is the sidecar's data plane: it terminates and originates
// mutual TLS for a workload without the workload knowing.
//
// Inbound, each connection is handled by the mode policy gives its port:
// STRICT (mTLS with a verified mesh identity, anything else is reset),
// PERMISSIVE (the first bytes decide: a ClientHello goes to mTLS, the rest to
// plaintext) or DISABLE (plaintext). HTTP requests are authorized one by one
// and get an X-Forwarded-Client-Cert header; TCP connections are authorized
// once. Outbound, the proxy is an HTTP forward proxy (http_proxy, CONNECT) or,
// in transparent mode, the target of an iptables redirect whose original
// destination it recovers with SO_ORIGINAL_DST. Either way the destination
// picks a service, the service's DestinationRule picks plaintext or mTLS,
// and with mTLS the server's identity must be one that runs the service
// (secure naming).
//
// Certificates, bundle and policy are read through sources whose values are
// swapped atomically, so rotation never touches an established connection.
// HTTP between sidecars rides pooled, resumable mTLS connections, so a new
// client connection does not cost a handshake.
package proxy

import (
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"strconv"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/meshauth/meshauth/internal/agent"
	"github.com/meshauth/meshauth/internal/capture"
	"github.com/meshauth/meshauth/internal/identity"
	"github.com/meshauth/meshauth/internal/policy"
)

// InboundListener is one explicit inbound port: the sidecar listens on Listen
// and forwards to the app at App. Port is the workload port the policy and
// RBAC rules name (defaults to App's port).
type InboundListener struct {
	Listen string
	App    string
	Port   uint32
}

// Upstream is one explicit outbound TCP port: connections to Listen go to
// Service ("host:port", a name from the snapshot's outbound table).
type Upstream struct {
	Listen  string
	Service string
}

// Config configures a Proxy. Zero values mean the defaults noted.
type Config struct {
	// Certs supplies the workload certificate and trust bundle. Required.
	Certs agent.Source
	// Policy supplies the effective configuration. Required.
	Policy ConfigSource

	// Log is for operational messages; nil discards.
	Log *slog.Logger
	// AccessLog gets one line per request or TCP connection; nil uses Log.
	AccessLog *slog.Logger
	// Metrics; nil creates unregistered ones.
	Metrics *Metrics
	// Now is the clock used for certificate checks; nil means time.Now.
	Now func() time.Time

	// HandshakeTimeout bounds sniffing plus the TLS handshake, so a stalled
	// peer cannot hold a goroutine (default 10s).
	HandshakeTimeout time.Duration
	// IdleTimeout closes keep-alive connections idle between requests and
	// TCP relays idle in both directions (or whose receiver stops
	// reading) (default 90s). Pooled upstream connections are closed
	// after half of it.
	IdleTimeout time.Duration
	// RequestHeadersTimeout bounds reading a request head once its first
	// byte arrived (slowloris) (default 10s). Answered with 408.
	RequestHeadersTimeout time.Duration
	// ResponseHeadersTimeout bounds the wait for the upstream's response
	// head after the request (with its body) was sent (default 15s; < 0:
	// none). Answered with 504.
	ResponseHeadersTimeout time.Duration
	// BodyIdleTimeout aborts a request or response body (and a response
	// the client stops reading) after this long without a byte moving
	// (default 60s). A body with traffic is never cut.
	BodyIdleTimeout time.Duration
	// RequestTimeout, if > 0, bounds a whole HTTP exchange, from sending
	// the request to the end of the response (default: none, as Istio).
	RequestTimeout time.Duration
	// MaxConnections bounds the downstream connections served at once
	// over all proxy listeners (default 4096; < 0: no bound). One more is
	// reset on accept, logged (at most once a second) and counted as
	// meshauth_sidecar_connections_closed_total{reason="max_connections"}.
	MaxConnections int

	// Inbound lists explicit inbound listeners (no root needed).
	Inbound []InboundListener
	// InboundCapture, if set, is the transparent inbound listener (":15006"):
	// the original destination port picks the policy, and traffic goes to the
	// app on InboundAppHost:<that port>.
	InboundCapture string
	// InboundAppHost is where captured inbound traffic is delivered
	// (default 127.0.0.1).
	InboundAppHost string

	// Outbound, if set, is the outbound listener ("127.0.0.1:15001"): an HTTP
	// forward proxy, and with Transparent also the iptables redirect target.
	Outbound    string
	Transparent bool
	// Upstreams lists explicit per-upstream TCP ports.
	Upstreams []Upstream
	// DenyUnknown refuses outbound traffic to destinations that are not in
	// the snapshot (502 / close). By default such traffic passes through in
	// plaintext, as Istio's ALLOW_ANY.
	DenyUnknown bool

	// OutboundUIDs, when set, limits the explicit proxy and the --upstream
	// ports to local processes of these uids (see peeruid.go).
	OutboundUIDs []int

	// OriginalDst recovers a redirected connection's destination; nil uses
	// capture.OriginalDst (SO_ORIGINAL_DST).
	OriginalDst func(net.Conn) (netip.AddrPort, error)
}

// Defaults of the limits (see timeouts.go): as Envoy's or stricter.
const (
	DefaultRequestHeadersTimeout  = 10 * time.Second
	DefaultResponseHeadersTimeout = 15 * time.Second
	DefaultBodyIdleTimeout        = 60 * time.Second
	DefaultMaxConnections         = 4096
)

// orDefault maps 0 to def and a negative duration to 0 (no limit).
func orDefault(d, def time.Duration) time.Duration {
	switch {
	case d == 0:
		return def
	case d < 0:
		return 0
	}
	return d
}

// Proxy is the sidecar data plane. Create it with New, then Start.
type Proxy struct {
	cfg        Config
	certs      agent.Source
	policy     ConfigSource
	log        *slog.Logger
	access     *slog.Logger
	m          *Metrics
	now        func() time.Time
	sessions   *sessionCache
	serverConf *tls.Config

	pool       *connPool // pooled upstream HTTP connections (client side)
	h2         *h2State  // HTTP/2 server and transports (h2.go)
	live       liveSet   // established inbound connections, rechecked on changes
	transports sync.Map  // transportKey -> *upstream (TLS configs)

	routes sync.Mutex
	table  atomic.Pointer[routeTable]

	// conns counts downstream connections being served (MaxConnections);
	// refusedLog rate-limits the log line of refusals (UnixNano).
	conns      atomic.Int64
	refused    atomic.Int64
	refusedLog atomic.Int64

	mu        sync.Mutex
	listeners []net.Listener
	wg        sync.WaitGroup
	closed    chan struct{}

	// Addresses the listeners actually bound (for ":0" in tests).
	InboundAddrs  []net.Addr
	CaptureAddr   net.Addr
	OutboundAddr  net.Addr
	UpstreamAddrs []net.Addr

	cached cachedMetrics
}

// New checks cfg and fills defaults. It binds nothing; call Start.
func New(cfg Config) (*Proxy, error) {
	if cfg.Certs == nil {
		return nil, errors.New("proxy: Config.Certs is required")
	}
	if cfg.Policy == nil {
		return nil, errors.New("proxy: Config.Policy is required")
	}
	if cfg.Log == nil {
		cfg.Log = slog.New(slog.DiscardHandler)
	}
	if cfg.AccessLog == nil {
		cfg.AccessLog = cfg.Log
	}
	if cfg.Metrics == nil {
		cfg.Metrics = NewMetrics(nil)
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	if cfg.HandshakeTimeout <= 0 {
		cfg.HandshakeTimeout = 10 * time.Second
	}
	if cfg.IdleTimeout <= 0 {
		cfg.IdleTimeout = 90 * time.Second
	}
	cfg.RequestHeadersTimeout = orDefault(cfg.RequestHeadersTimeout, DefaultRequestHeadersTimeout)
	cfg.ResponseHeadersTimeout = orDefault(cfg.ResponseHeadersTimeout, DefaultResponseHeadersTimeout)
	cfg.BodyIdleTimeout = orDefault(cfg.BodyIdleTimeout, DefaultBodyIdleTimeout)
	if cfg.MaxConnections == 0 {
		cfg.MaxConnections = DefaultMaxConnections
	}
	if cfg.InboundAppHost == "" {
		cfg.InboundAppHost = "127.0.0.1"
	}
	if cfg.OriginalDst == nil {
		cfg.OriginalDst = capture.OriginalDst
	}
	for i, in := range cfg.Inbound {
		_, ps, err := net.SplitHostPort(in.App)
		if err != nil {
			return nil, fmt.Errorf("proxy: inbound %d: app address %q: %w", i, in.App, err)
		}
		if in.Port == 0 {
			n, err := strconv.ParseUint(ps, 10, 16)
			if err != nil {
				return nil, fmt.Errorf("proxy: inbound %d: app port %q: %w", i, ps, err)
			}
			cfg.Inbound[i].Port = uint32(n)
		}
	}
	p := &Proxy{
		cfg:      cfg,
		certs:    cfg.Certs,
		policy:   cfg.Policy,
		log:      cfg.Log,
		access:   cfg.AccessLog,
		m:        cfg.Metrics,
		now:      cfg.Now,
		sessions: newSessionCache(),
		closed:   make(chan struct{}),
	}
	p.cached = newCachedMetrics(p.m)
	p.serverConf = p.serverTLS()
	p.h2 = p.newH2State()
	// Close pooled connections well before the server sidecar's idle
	// timeout would, so a request rarely meets a connection being closed.
	p.pool = newConnPool(cfg.IdleTimeout / 2)
	p.pool.verify = p.verifyPooled
	p.pool.stale = p.poolStale
	return p, nil
}

// Start binds every configured listener and serves them in the background
// until Close. If any bind fails, nothing is left listening.
func (p *Proxy) Start() error {
	type pending struct {
		l     net.Listener
		serve func(net.Conn)
		dir   string
	}
	var ls []pending
	fail := func(err error) error {
		for _, x := range ls {
			x.l.Close()
		}
		return err
	}
	for _, in := range p.cfg.Inbound {
		l, err := net.Listen("tcp", in.Listen)
		if err != nil {
			return fail(fmt.Errorf("proxy: inbound listener for port %d: %w", in.Port, err))
		}
		in := in
		ls = append(ls, pending{l, func(c net.Conn) { p.handleInbound(c, in.Port, in.App) }, "inbound"})
		p.InboundAddrs = append(p.InboundAddrs, l.Addr())
	}
	if p.cfg.InboundCapture != "" {
		l, err := net.Listen("tcp", p.cfg.InboundCapture)
		if err != nil {
			return fail(fmt.Errorf("proxy: inbound capture listener: %w", err))
		}
		ls = append(ls, pending{l, p.handleInboundCaptured, "inbound"})
		p.CaptureAddr = l.Addr()
	}
	if p.cfg.Outbound != "" {
		l, err := listenLocal(p.cfg.Outbound)
		if err != nil {
			return fail(fmt.Errorf("proxy: outbound listener: %w", err))
		}
		ls = append(ls, pending{l, p.handleOutbound, "outbound"})
		p.OutboundAddr = l.Addr()
	}
	for _, u := range p.cfg.Upstreams {
		host, ps, err := net.SplitHostPort(u.Service)
		if err != nil {
			return fail(fmt.Errorf("proxy: upstream %q: want host:port: %w", u.Service, err))
		}
		port, err := strconv.ParseUint(ps, 10, 16)
		if err != nil {
			return fail(fmt.Errorf("proxy: upstream %q: port: %w", u.Service, err))
		}
		l, err := listenLocal(u.Listen)
		if err != nil {
			return fail(fmt.Errorf("proxy: upstream listener for %s: %w", u.Service, err))
		}
		ls = append(ls, pending{l, func(c net.Conn) { p.handleUpstream(c, host, uint32(port)) }, "outbound"})
		p.UpstreamAddrs = append(p.UpstreamAddrs, l.Addr())
	}
	p.mu.Lock()
	for _, x := range ls {
		p.listeners = append(p.listeners, x.l)
		p.wg.Add(1)
		go p.acceptLoop(x.l, x.serve, x.dir)
	}
	p.mu.Unlock()
	go p.watch()
	go p.reapPool()
	return nil
}

// Close stops accepting and closes idle connections. Established TCP
// tunnels end when their peers close them; HTTP/2 connections get GOAWAY
// (drain: their streams in flight finish, new ones go elsewhere).
func (p *Proxy) Close() error {
	p.mu.Lock()
	select {
	case <-p.closed:
		p.mu.Unlock()
		return nil
	default:
	}
	close(p.closed)
	for _, l := range p.listeners {
		l.Close()
	}
	p.mu.Unlock()
	p.wg.Wait()
	p.pool.closeIdle()
	p.drainH2()
	return nil
}

func (p *Proxy) acceptLoop(l net.Listener, serve func(net.Conn), dir string) {
	defer p.wg.Done()
	var delay time.Duration
	for {
		c, err := l.Accept()
		if err != nil {
			select {
			case <-p.closed:
				return
			default:
			}
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() || errors.Is(err, syscall.EMFILE) || errors.Is(err, syscall.ENFILE) {
				// Out of file descriptors: back off instead of spinning.
				delay = min(max(2*delay, 5*time.Millisecond), time.Second)
				p.log.Warn("accept failed; backing off", "listener", l.Addr().String(), "error", err.Error(), "delay", delay.String())
				time.Sleep(delay)
				continue
			}
			if errors.Is(err, net.ErrClosed) {
				return
			}
			p.log.Error("accept failed", "listener", l.Addr().String(), "error", err.Error())
			time.Sleep(10 * time.Millisecond)
			continue
		}
		delay = 0
		if n := p.conns.Add(1); p.cfg.MaxConnections > 0 && n > int64(p.cfg.MaxConnections) {
			p.conns.Add(-1)
			p.refuseOverLimit(c, dir)
			continue
		}
		go func() {
			defer p.conns.Add(-1)
			reserveStack()
			serve(c)
		}()
	}
}

// refuseOverLimit resets a connection accepted beyond MaxConnections. The
// refusal is counted every time and logged at most once a second, with
// the number refused since the last line, so a flood cannot flood the log.
func (p *Proxy) refuseOverLimit(c net.Conn, dir string) {
	p.m.Closed.WithLabelValues(dir, reasonMaxConnections).Inc()
	n := p.refused.Add(1)
	now := time.Now().UnixNano()
	if last := p.refusedLog.Load(); now-last >= int64(time.Second) && p.refusedLog.CompareAndSwap(last, now) {
		p.refused.Add(-n)
		p.log.Warn("refusing connections: the sidecar serves --max-connections at once",
			"direction", dir, "peer", c.RemoteAddr().String(), "reason", reasonMaxConnections,
			"max_connections", p.cfg.MaxConnections, "refused_since_last_log", n)
	}
	reset(c)
}

// reapPool sweeps the upstream pool until Close (see connPool.reap).
func (p *Proxy) reapPool() {
	t := time.NewTicker(p.pool.reapEvery())
	defer t.Stop()
	for {
		select {
		case <-p.closed:
			return
		case <-t.C:
			if n := p.pool.reap(); n > 0 {
				p.m.PoolReaped.Add(float64(n))
			}
		}
	}
}

// Conns returns the number of downstream connections being served.
func (p *Proxy) Conns() int { return int(p.conns.Load()) }

// watch follows certificate and policy changes: it rebuilds the route table,
// resets the TLS session cache on a new certificate, and updates metrics.
func (p *Proxy) watch() {
	for {
		cc := p.certs.Changed()
		pc := p.policy.Changed()
		if s := p.certs.SVID(); s != nil {
			p.sessions.reset(s.Serial())
			p.m.CertExpiry.Set(float64(s.NotAfter().Unix()))
		}
		p.routeTable()
		p.recheck()
		select {
		case <-p.closed:
			return
		case <-cc:
		case <-pc:
		}
	}
}

// routeTable returns the routes for the current snapshot, rebuilding them
// when the snapshot pointer changed.
func (p *Proxy) routeTable() *routeTable {
	s := p.policy.Current()
	if t := p.table.Load(); t != nil && t.snap == s {
		return t
	}
	p.routes.Lock()
	defer p.routes.Unlock()
	t := p.table.Load()
	if t == nil || t.snap != s {
		t = buildRoutes(s)
		p.table.Store(t)
	}
	return t
}

// Snapshot returns the policy snapshot in force (for the admin page).
func (p *Proxy) Snapshot() *policy.Snapshot { return p.policy.Current() }

// Ready reports whether the proxy can serve mTLS: it has an unexpired
// certificate, a bundle and a policy snapshot, and the certificate source
// reports no problem (a revoked certificate, a renewal the CA refuses).
func (p *Proxy) Ready() error {
	switch s := p.certs.SVID(); {
	case s == nil:
		return ErrNoSVID
	case !p.now().Before(s.NotAfter()):
		// The agent could not renew in time (CA down for a whole
		// lifetime): peers refuse this certificate, so say so.
		return fmt.Errorf("workload certificate serial %s expired at %s", s.Serial(), s.NotAfter().UTC().Format(time.RFC3339))
	case p.certs.Bundle() == nil:
		return fmt.Errorf("sidecar has %w", identity.ErrNoBundle)
	case p.policy.Current() == nil:
		return errors.New("sidecar has no policy snapshot yet")
	}
	// The source's own verdict (agent.Store: the certificate is revoked, or
	// the CA refuses to renew it).
	if h, ok := p.certs.(interface{ Health() error }); ok {
		if err := h.Health(); err != nil {
			return err
		}
	}
	return nil
}

// reserveStack grows a new connection goroutine's stack to what serving
// a request needs (8 KiB) while the goroutine is one frame deep. A
// goroutine starts with the runtime's average stack size (a few KiB), and
// the request path outgrew it in its deepest frames, reading the
// upstream's TLS record: the runtime then copies the stack and adjusts
// every frame on it through a stack-map lookup, 36k of the 76k
// instructions a connection cost the client sidecar (callgrind,
// BenchmarkConnPerRequest; BENCHMARKS.md). Growing it here copies one
// frame (3k). A goroutine that needs less pays for zeroing 6 KiB (under
// 1k instructions); its stack goes back to the runtime's cache when it
// ends, and the GC shrinks one that stays idle with little in use.
//
//go:noinline
func reserveStack() {
	var b [stackReserve]byte
	touchStack(&b)
}

// touchStack keeps reserveStack's array (and so its frame) from being
// optimised away.
//
//go:noinline
func touchStack(b *[stackReserve]byte) { b[0] = 1 }

// stackReserve is the frame of reserveStack: with the runtime doubling a
// stack until the frame fits, 6 KiB makes it 8 KiB.
const stackReserve = 6 << 10
