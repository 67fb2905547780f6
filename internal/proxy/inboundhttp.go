package proxy

import (
	"bytes"
	"context"
	"crypto/x509"
	"errors"
	"net"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/meshauth/meshauth/internal/jwtauthn"
	"github.com/meshauth/meshauth/internal/policy"
)

// inboundTarget checks and normalises the request target of an inbound
// request before it is authorized. Accepted: origin-form ("/path?query"),
// absolute-form ("http://host/path", reduced to its origin-form) and "*"
// for OPTIONS. The path is normalised by policy.NormalizePath and, if that
// changed it, the normalised path (with the query as sent) is what the app
// receives, so the app acts on exactly the path that was authorized. A
// target that cannot be normalised is answered 400 with the reason; ok is
// false then.
func (p *Proxy) inboundTarget(d *dconn) (exchangeResult, bool) {
	t := d.req.Bytes(d.req.Target)
	switch {
	case len(t) == 1 && t[0] == '*':
		if d.req.MethodIs("OPTIONS") {
			return exchangeResult{}, true
		}
		return p.badTarget(d, "request target \"*\" is only allowed with OPTIONS"), false
	case len(t) > 0 && t[0] == '/':
	case bytes.HasPrefix(t, []byte("http://")) || bytes.HasPrefix(t, []byte("https://")):
	default:
		return p.badTarget(d, "request target "+strconv.Quote(string(t))+" is neither a path (origin-form) nor an absolute http URI"), false
	}
	fwd, err := normalizeOrigin(d.req.OriginForm())
	if err != nil {
		return p.badTarget(d, err.Error()), false
	}
	if fwd != nil {
		d.req.FwdTarget = fwd
	}
	return exchangeResult{}, true
}

// normalizeOrigin normalises the path of an origin-form target ("/path" or
// "/path?query") with policy.NormalizePath. It returns the target the app
// gets (the normalised path, the query as sent), or nil when the path is
// already normal; an error says why the path cannot be normalised safely.
// HTTP/1.x (inboundTarget) and HTTP/2 (inboundH2) share it.
func normalizeOrigin(ot []byte) ([]byte, error) {
	path, query := ot, []byte(nil)
	if i := bytes.IndexByte(ot, '?'); i >= 0 {
		path, query = ot[:i], ot[i:]
	}
	if len(path) > 0 && path[0] == '/' && policy.PathIsNormal(path) {
		return nil, nil // the common case: nothing to do
	}
	norm, err := policy.NormalizePath(string(path))
	if err != nil {
		return nil, err
	}
	if norm == string(path) {
		return nil, nil
	}
	return append([]byte(norm), query...), nil
}

// reasonBadPath is the access log reason of a request refused by
// inboundTarget.
const reasonBadPath = "bad_path"

func (p *Proxy) badTarget(d *dconn, msg string) exchangeResult {
	d.req.Close = true
	return p.localError(d, http.StatusBadRequest, reasonBadPath, msg)
}

// stripH2CUpgrade removes an upgrade to HTTP/2 (Upgrade: h2c) from an
// inbound request: after a 101 the connection would be relayed as bytes,
// and the HTTP/2 requests in it would reach the app unparsed, with any
// X-Forwarded-Client-Cert the client wrote. Without the upgrade the app
// answers the request as HTTP/1.1 (Envoy strips h2c upgrades the same way).
// Other upgrades (WebSocket) are kept.
func stripH2CUpgrade(d *dconn) {
	h := &d.req
	if !h.Upgrade {
		return
	}
	for _, v := range h.UpgradeTokens() {
		if len(v) >= 2 && (v[0] == 'h' || v[0] == 'H') && v[1] == '2' || bytes.HasPrefix(bytes.ToUpper(v), []byte("HTTP/2")) {
			h.Upgrade = false
			d.dropped = append(d.dropped, "Upgrade")
			return
		}
	}
}

// lateHTTPConn is the client side of a relay on a port whose protocol is
// not declared, after the client stayed silent past the detection window
// (taken for a server-first protocol). If the client's first bytes turn
// out to be HTTP after all, the relay ends with a logged reason: an HTTP
// request that waited must not reach the app unparsed, with any
// X-Forwarded-Client-Cert it carries.
type lateHTTPConn struct {
	net.Conn
	decided bool
	pending []byte
	refused bool
}

// reasonLateHTTP is the access log reason of a relay lateHTTPConn ended.
const reasonLateHTTP = "late_http_on_undeclared_port"

var errLateHTTP = errors.New(reasonLateHTTP + ": the client sent HTTP after the protocol detection window on a port whose protocol is not declared; declare the port HTTP (or TCP)")

func (l *lateHTTPConn) Read(p []byte) (int, error) {
	if l.refused {
		return 0, errLateHTTP
	}
	if !l.decided {
		buf := make([]byte, 0, sniffLen)
		var err error
		for Sniff(buf) == KindUnknown && len(buf) < sniffLen && err == nil {
			var n int
			n, err = l.Conn.Read(buf[len(buf):cap(buf)])
			buf = buf[:len(buf)+n]
		}
		if k := Sniff(buf); k == KindHTTP || k == KindHTTP2 {
			l.refused = true
			return 0, errLateHTTP
		}
		l.decided, l.pending = true, buf
		if len(buf) == 0 && err != nil {
			return 0, err
		}
	}
	if len(l.pending) > 0 {
		n := copy(p, l.pending)
		l.pending = l.pending[n:]
		return n, nil
	}
	return l.Conn.Read(p)
}

// CloseWrite half-closes the client connection (relay's shutdown).
func (l *lateHTTPConn) CloseWrite() error {
	if cw, ok := l.Conn.(closeWriter); ok {
		return cw.CloseWrite()
	}
	return nil
}

// appSide is the server sidecar's upstream: one connection to the app per
// downstream connection, kept across its requests.
type appSide struct {
	p    *Proxy
	addr string
	u    *upConn
}

func (a *appSide) get(d *dconn, fresh bool) (*upConn, error) {
	// A request with a body cannot be retried once sent, so it does not
	// go out on an app connection that sat idle long enough for the app
	// to have closed it.
	if a.u != nil && !fresh && (!d.req.ReqHasBody() || time.Since(a.u.idle) < time.Second) {
		a.u.reused = true
		return a.u, nil
	}
	if a.u != nil {
		a.u.close()
		a.u = nil
	}
	c, err := dialer.Dial("tcp", a.addr)
	if err != nil {
		return nil, err
	}
	a.u = newUpConn(c, a.p.cfg.BodyIdleTimeout)
	return a.u, nil
}

func (a *appSide) done(u *upConn, reusable bool) {
	if !reusable && a.u != nil {
		a.u.close()
		a.u = nil
		return
	}
	u.idle = time.Now()
}

// serveInboundH1 serves HTTP from an accepted (and, for mTLS, verified)
// inbound connection: per-request authorization, XFCC, forward to the app.
func (p *Proxy) serveInboundH1(c net.Conn, info *connInfo) {
	app := &appSide{p: p, addr: info.app}
	defer func() {
		if app.u != nil {
			app.u.close()
		}
	}()
	var xfcc []byte
	if info.peer != "" {
		by := ""
		if s := p.certs.SVID(); s != nil {
			by = s.URI
		}
		xfcc = []byte(xfccHeader + ": " + XFCC(by, info.peer) + "\r\n")
	}
	p.cached.activeIn.Inc()
	defer p.cached.activeIn.Dec()
	// HTTP/2 with prior knowledge (a client sidecar carrying HTTP/2 from
	// its app, or any h2c client) is terminated per request as well; on an
	// HTTP port it reaches the app as HTTP/1.1.
	h2 := func(c net.Conn) {
		p.serveInboundH2(c, info, policy.InboundProtocol(inboundPort(p.policy.Current(), info.port).Protocol, ""))
	}
	p.serveH1(c, info, h2, func(d *dconn) exchangeResult {
		start := time.Now()
		// The mode was checked when the connection was accepted; a
		// kept-alive plaintext connection must not outlive a change of its
		// port to STRICT. Refuse it as a new plaintext connection is.
		if !info.tls && inboundPort(p.policy.Current(), info.port).Mode == policy.ServerStrict {
			if p.claimClose(info) {
				info.mode = string(policy.ServerStrict)
				p.refuseInbound(c, info, reasonPlaintext, errors.New("port turned STRICT after this plaintext connection was accepted"))
			}
			return exchangeResult{}
		}
		d.dropped = d.dropped[:0]
		// The path is normalised before authorization and forwarded as
		// authorized (see policy.NormalizePath).
		if res, ok := p.inboundTarget(d); !ok {
			p.cached.requests("inbound", res.status).Inc()
			p.logH1("inbound", d, info.app, res.status, "deny", res.reason, start)
			return res
		}
		stripH2CUpgrade(d)
		snap := p.policy.Current()
		req := policy.Request{Source: info.peer, Port: info.port, Service: info.service}
		// End-user authentication (the port's Policy origins) before
		// RBAC, which may look at its claims.
		auth, claims, err := endUserAuthn(snap, info.port, info.peer, d.req.Values, func() string { return string(d.req.OriginForm()) })
		if err != nil {
			p.cached.deny.Inc()
			res := p.localError(d, http.StatusUnauthorized, reasonJWT, "Origin authentication failed: "+err.Error())
			p.cached.requests("inbound", res.status).Inc()
			p.logH1("inbound", d, info.app, res.status, "deny", err.Error(), start)
			return res
		}
		req.Auth = auth
		var userinfo []byte
		if claims != "" {
			userinfo = []byte(userinfoHeader + ": " + claims + "\r\n")
		}
		if snap != nil && snap.RBAC != nil {
			// Only built when rules may look at them (saves two
			// allocations per request with RBAC off).
			req.Method, req.Path = d.req.Str(d.req.Method), d.req.Path()
		}
		dec := policy.AuthorizeHTTP(snap, req)
		if !dec.Allow {
			p.cached.deny.Inc()
			res := p.localError(d, http.StatusForbidden, "rbac_denied", "RBAC: access denied: "+dec.Reason)
			p.cached.requests("inbound", res.status).Inc()
			p.logH1("inbound", d, info.app, res.status, "deny", dec.Reason, start)
			return res
		}
		p.cached.allow.Inc()
		// Any X-Forwarded-Client-Cert from the client, in any spelling, is
		// dropped and the sidecar's own is added: a client never chooses
		// its identity.
		// So is any sec-istio-auth-userinfo: the sidecar sets its own from
		// a token it verified.
		res := p.exchange(d, app, append(xfcc[:len(xfcc):len(xfcc)], userinfo...), d.dropInboundOrUserinfo, "")
		p.cached.requests("inbound", res.status).Inc()
		decision := "allow"
		if res.reason != "" {
			decision = "error"
		}
		p.logH1("inbound", d, info.app, res.status, decision, res.reason, start)
		return res
	})
}

// End-user (origin JWT) authentication: the hook of the inbound HTTP/1.x
// (serveInboundH1) and HTTP/2 (inboundH2) paths. Each calls endUserAuthn
// for each request, before RBAC, answers 401 on error (gRPC: grpc-status
// 16 UNAUTHENTICATED), passes the RequestAuth to policy.AuthorizeHTTP,
// sets userinfoHeader to the claims it returns, and drops a client's
// userinfoHeader in any spelling (headers and trailers). A port whose
// requests are not parsed (TCP, or undeclared and possibly relayed) is
// refused by endUserNeedsHTTP.

// reasonJWT is the access log reason of a request refused for its JWT.
const reasonJWT = "jwt_denied"

// userinfoHeader carries the verified claims to the app, as Istio's JWT
// filter forwarded them: the token's payload segment (base64url of the
// claims' JSON).
const userinfoHeader = "sec-istio-auth-userinfo"

// endUserVerifier verifies tokens for every port; one JWKS cache per
// sidecar process. jwksRoots are the CAs trusted for JWKS endpoints (nil:
// the system's, which SSL_CERT_FILE and SSL_CERT_DIR can set).
var (
	jwksRoots       *x509.CertPool
	endUserVerifier = sync.OnceValue(func() *jwtauthn.Verifier { return jwtauthn.New(jwksRoots) })
)

// endUserAuthn applies the end-user authentication of a request to port
// (from the Policy that set the port's mode) for the peer peerID ("" for
// plaintext): with origins, a token must verify (unless originIsOptional
// and there is none). header returns a request header's values (any case
// of the name), target the request target (path and query). It returns
// request.auth for RBAC and the value of userinfoHeader for the app ("" for
// none). Without origins, request.auth.principal is the peer's, as in
// Istio; nil when there is no token to check and RBAC is off (nothing
// would read it).
func endUserAuthn(snap *policy.Snapshot, port uint32, peerID string, header func(string) []string, target func() string) (*policy.RequestAuth, string, error) {
	eu := endUserOf(snap, port)
	if (eu == nil || len(eu.JWT) == 0) && (snap == nil || snap.RBAC == nil) {
		// No token to check and no RBAC to look at request.auth: none
		// (saves an allocation per request on the common path).
		return nil, "", nil
	}
	auth := &policy.RequestAuth{}
	if eu == nil || !eu.UseOrigin {
		auth.Principal = strings.TrimPrefix(peerID, "spiffe://")
	}
	if eu == nil || len(eu.JWT) == 0 {
		return auth, "", nil
	}
	var q url.Values
	query := func(name string) []string {
		if q == nil {
			_, rawQuery, _ := strings.Cut(target(), "?")
			q, _ = url.ParseQuery(rawQuery)
		}
		return q[name]
	}
	raw, applicable, err := jwtauthn.TokenFrom(eu.JWT, header, query)
	if err == jwtauthn.ErrNoToken && eu.Optional {
		return auth, "", nil
	}
	if err != nil {
		return nil, "", err
	}
	res, err := endUserVerifier().Verify(context.Background(), raw, applicable)
	if err != nil {
		return nil, "", err
	}
	if eu.UseOrigin {
		auth.Principal = res.Principal
	}
	auth.Audiences, auth.Presenter, auth.Claims = res.Audiences, res.Presenter, res.Claims
	return auth, res.Payload, nil
}

// errEndUserNotHTTP refuses a connection to a port whose Policy has
// origins but whose protocol is not declared HTTP, HTTP2 or GRPC: only
// their requests are parsed, so only they can be checked for a token (and
// cleaned of a client's userinfo header); a relay would let requests
// through unauthenticated.
var errEndUserNotHTTP = errors.New("the port's Policy requires end-user (JWT) authentication, which is enforced on HTTP, HTTP2 and GRPC ports only: declare the port's protocol")

// endUserNeedsHTTP reports whether a connection to port, whose protocol
// (policy.InboundProtocol) is proto, must be refused by errEndUserNotHTTP.
func endUserNeedsHTTP(s *policy.Snapshot, port uint32, proto string) bool {
	if proto == "HTTP" || proto == "HTTP2" {
		return false
	}
	eu := endUserOf(s, port)
	return eu != nil && len(eu.JWT) > 0
}

// endUserOf returns the end-user authentication of port: its own, or for a
// port not listed, the default; nil for none.
func endUserOf(s *policy.Snapshot, port uint32) *policy.EndUserAuthn {
	if s == nil {
		return nil
	}
	for _, ip := range s.Inbound {
		if ip.Port == port {
			return ip.EndUser
		}
	}
	return s.InboundDefaultEndUser
}

// dropInboundOrUserinfo is dropInboundField plus any spelling of
// sec-istio-auth-userinfo: a client never writes the claims the app trusts.
func (d *dconn) dropInboundOrUserinfo(name []byte) bool {
	if normalEqual(name, userinfoHeader) {
		d.dropped = append(d.dropped, string(name))
		return true
	}
	return d.dropInboundField(name)
}

// dropInboundUserinfo is HTTP/2's inbound field filter: dropInbound plus
// any spelling of sec-istio-auth-userinfo.
func dropInboundUserinfo(name []byte) bool {
	return normalEqual(name, userinfoHeader) || dropInbound(name)
}
