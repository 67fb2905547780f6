package proxy

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"slices"
	"strings"
	"sync/atomic"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/meshauth/meshauth/internal/identity"
	"github.com/meshauth/meshauth/internal/policy"
	"github.com/meshauth/meshauth/internal/tlsprofile"
)

// ALPN protocols between sidecars. "http/1.1" carries pooled HTTP requests
// (the server sidecar authorizes each request and sets XFCC); alpnTCP marks an
// opaque byte stream (TCP services, CONNECT tunnels). A peer that offers no
// ALPN (openssl s_client, curl --no-alpn) is treated by port protocol.
const (
	alpnHTTP1 = "http/1.1"
	alpnTCP   = "meshauth-tcp"
)

var (
	// ErrSecureNaming: the server showed a valid mesh certificate whose
	// identity does not run the service that was called.
	ErrSecureNaming = errors.New("secure naming: server identity is not allowed to run the service")
	// ErrNoSVID: the sidecar has no certificate yet (agent not bootstrapped).
	ErrNoSVID = errors.New("sidecar has no workload certificate yet")
)

// refusal reasons the proxy adds to identity.Reason's labels.
const (
	reasonPlaintext      = "plaintext"              // plaintext HTTP on a STRICT port
	reasonNotTLS         = "not_tls"                // other non-TLS bytes on a STRICT port
	reasonTruncatedHello = "truncated_client_hello" // TLS record started, then EOF
	reasonTimeout        = "handshake_timeout"      // nothing or not enough within the deadline
	reasonClosed         = "closed_before_handshake"
	reasonSecureNaming   = "secure_naming"
	reasonNoSVID         = "no_local_certificate"
	reasonTLSError       = "tls_error"
)

// handshakeReason names why a TLS handshake failed, for logs and metrics.
func handshakeReason(err error) string {
	switch {
	case err == nil:
		return "ok"
	case errors.Is(err, ErrSecureNaming):
		return reasonSecureNaming
	case errors.Is(err, ErrNoSVID), errors.Is(err, identity.ErrNoBundle):
		return reasonNoSVID
	case errors.Is(err, os.ErrDeadlineExceeded), errors.Is(err, context.DeadlineExceeded):
		return reasonTimeout
	case errors.Is(err, io.ErrUnexpectedEOF), errors.Is(err, io.EOF):
		return reasonTruncatedHello
	}
	if r := identity.Reason(err); r != "other" {
		return r
	}
	var ne *net.OpError
	if errors.As(err, &ne) && strings.Contains(ne.Err.Error(), "reset") {
		return reasonTruncatedHello
	}
	return reasonTLSError
}

// serverTLS is the inbound mTLS config. It asks for a client certificate but
// lets crypto/tls accept any, then verifies it itself in VerifyConnection
// (identity.VerifyConnection: roots, trust domain, SPIFFE URI and
// revocation of the current bundle; any workload of the trust domain is
// authorized here, RBAC decides per request) so that every refusal has a
// precise reason and a rotated bundle applies to the next handshake.
// VerifyConnection also runs on resumed sessions, so a revoked serial cannot
// come back through a session ticket.
func (p *Proxy) serverTLS() *tls.Config {
	c := tlsprofile.New()
	c.ClientAuth = tls.RequestClientCert
	c.GetCertificate = func(*tls.ClientHelloInfo) (*tls.Certificate, error) {
		s := p.certs.SVID()
		if s == nil {
			return nil, ErrNoSVID
		}
		return s.TLS, nil
	}
	c.NextProtos = []string{alpnH2, alpnHTTP1, alpnTCP}
	c.VerifyConnection = identity.VerifyConnection(p.certs.Bundle, p.now, identity.AuthorizeAny())
	return c
}

// verifyPeer verifies an established connection's peer chain again against
// the current bundle (rechecks after a bundle change, pooled connections).
func (p *Proxy) verifyPeer(chain []*x509.Certificate) (identity.ID, error) {
	return identity.VerifyPeer(p.certs.Bundle(), chain, p.now(), nil)
}

// peerID returns the identity of an already verified connection. The chain
// was verified in VerifyConnection, so only the URI needs reading.
func peerID(cs tls.ConnectionState) string {
	if len(cs.PeerCertificates) == 0 || len(cs.PeerCertificates[0].URIs) == 0 {
		return ""
	}
	return cs.PeerCertificates[0].URIs[0].String()
}

// clientTLS is the outbound mTLS config for one set of allowed server
// identities. The server's chain is verified against the bundle like an
// inbound peer, then its identity must be one of allowed (secure naming:
// identity.AuthorizeOneOf).
func (p *Proxy) clientTLS(allowed []string, sni, alpn string) *tls.Config {
	allowed = slices.Clone(allowed)
	ids := make([]spiffeid.ID, 0, len(allowed))
	for _, a := range allowed {
		// An entry that is no SPIFFE ID can match no certificate; it is
		// still named in the refusal.
		if id, err := spiffeid.FromString(a); err == nil {
			ids = append(ids, id)
		}
	}
	verify := identity.VerifyConnection(p.certs.Bundle, p.now, identity.AuthorizeOneOf(ids...))
	c := tlsprofile.New()
	// Workload certificates carry no DNS names (the seed's reason for
	// curl -k); the mesh identity check below replaces hostname checks.
	c.InsecureSkipVerify = true
	c.ServerName = sni
	c.NextProtos = []string{alpn}
	c.GetClientCertificate = func(*tls.CertificateRequestInfo) (*tls.Certificate, error) {
		s := p.certs.SVID()
		if s == nil {
			return nil, ErrNoSVID
		}
		return s.TLS, nil
	}
	c.ClientSessionCache = p.sessions
	c.VerifyConnection = func(cs tls.ConnectionState) error {
		err := verify(cs)
		var bad *identity.UnauthorizedIDError
		switch {
		case err == nil:
			return nil
		case !errors.As(err, &bad):
			return fmt.Errorf("server certificate: %w", err)
		case len(allowed) == 0:
			return fmt.Errorf("%w: got %s, and the service has no known server identities (no registered workloads or subjectAltNames)", ErrSecureNaming, bad.ID)
		}
		return fmt.Errorf("%w: got %s, allowed %s", ErrSecureNaming, bad.ID, strings.Join(allowed, ", "))
	}
	return c
}

// sessionCache is a TLS client session cache that is emptied whenever the
// workload certificate changes: a resumed session would otherwise keep
// presenting the old certificate's identity (and serial) to servers.
type sessionCache struct {
	cur atomic.Pointer[sessionCacheGen]
}

type sessionCacheGen struct {
	serial string
	c      tls.ClientSessionCache
}

func newSessionCache() *sessionCache {
	s := &sessionCache{}
	s.cur.Store(&sessionCacheGen{c: tls.NewLRUClientSessionCache(1024)})
	return s
}

// reset starts a new cache if serial differs from the current generation's.
func (s *sessionCache) reset(serial string) {
	if g := s.cur.Load(); g.serial == serial {
		return
	}
	s.cur.Store(&sessionCacheGen{serial: serial, c: tls.NewLRUClientSessionCache(1024)})
}

func (s *sessionCache) Get(key string) (*tls.ClientSessionState, bool) {
	return s.cur.Load().c.Get(key)
}
func (s *sessionCache) Put(key string, cs *tls.ClientSessionState) { s.cur.Load().c.Put(key, cs) }

// handshakeError is an outbound TLS handshake failure with its reason label.
type handshakeError struct {
	addr   string
	reason string
	err    error
}

func (e *handshakeError) Error() string {
	return "mTLS handshake with " + e.addr + " failed (" + e.reason + "): " + e.err.Error()
}

func (e *handshakeError) Unwrap() error { return e.err }

// tlsServer wraps c in a server-side TLS connection.
func tlsServer(c net.Conn, cfg *tls.Config) *tls.Conn { return tls.Server(c, cfg) }

// upstream is the pooled transport for one set of client TLS settings.
// Routes with equal settings share it, so connections to an endpoint are
// reused across services and snapshots.
type upstream struct {
	mode    policy.ClientTLSMode
	httpTLS *tls.Config // ALPN http/1.1, for pooled HTTP
	tcpTLS  *tls.Config // ALPN meshauth-tcp, for tunnels
	h2TLS   *tls.Config // ALPN h2, for multiplexed HTTP/2 (h2out.go)
}

func (p *Proxy) upstreamFor(r *route) *upstream {
	if v, ok := p.transports.Load(r.transportKey); ok {
		return v.(*upstream)
	}
	u := &upstream{mode: r.mode}
	if r.mode != policy.ClientDisable {
		u.httpTLS = p.clientTLS(r.allowed, r.sni, alpnHTTP1)
		u.tcpTLS = p.clientTLS(r.allowed, r.sni, alpnTCP)
		u.h2TLS = p.clientTLS(r.allowed, r.sni, alpnH2)
	}
	v, _ := p.transports.LoadOrStore(r.transportKey, u)
	return v.(*upstream)
}

// dialTLS opens an mTLS connection to a server sidecar and records the
// handshake outcome.
func (p *Proxy) dialTLS(ctx context.Context, addr string, cfg *tls.Config) (net.Conn, error) {
	c, err := dialer.DialContext(ctx, "tcp", addr)
	if err != nil {
		return nil, err
	}
	raw := newBatchConn(c)
	tc := tls.Client(raw, cfg)
	hctx, cancel := context.WithTimeout(ctx, p.cfg.HandshakeTimeout)
	err = tc.HandshakeContext(hctx)
	cancel()
	if err != nil {
		c.Close()
		reason := handshakeReason(err)
		p.m.Handshakes.WithLabelValues("outbound", "refused", reason).Inc()
		p.log.Warn("outbound mTLS handshake failed", "peer", addr, "reason", reason, "error", err.Error())
		return nil, &handshakeError{addr: addr, reason: reason, err: err}
	}
	p.cached.handshake("outbound", "ok").Inc()
	return newBatchedTLS(tc, raw), nil
}
