package proxy

import (
	"errors"
	"net"
	"net/http"
	"time"

	"github.com/meshauth/meshauth/internal/policy"
)

// The server sidecar's HTTP/2: each request on an accepted (and, for
// mTLS, verified) HTTP/2 connection is end-user authenticated (the port's
// JWT origins), authorized, cleaned of client identity headers, given the
// verified X-Forwarded-Client-Cert (and sec-istio-auth-userinfo) and
// forwarded to the app, exactly as an HTTP/1.x request (inboundhttp.go).

// inboundH2 serves the requests of one inbound HTTP/2 connection.
type inboundH2 struct {
	p    *Proxy
	c    net.Conn
	info *connInfo
	// tr reaches the app: h2c, or HTTP/1.1 for an HTTP port's app.
	tr http.RoundTripper
	// xfcc is the verified X-Forwarded-Client-Cert value; "" for a
	// plaintext peer (the app then gets none).
	xfcc string
}

// serveInboundH2 serves HTTP/2 (c's next bytes are the client preface)
// on an inbound connection whose transport is settled. proto is the
// port's protocol: an HTTP port's app is reached over HTTP/1.1, any other
// over h2c.
func (p *Proxy) serveInboundH2(c net.Conn, info *connInfo, proto string) {
	h := &inboundH2{p: p, c: c, info: info, tr: p.h2.app.transport("h2c|"+info.app, plainDial)}
	if proto == "HTTP" {
		h.tr = p.h2.toAppH1
	}
	if info.peer != "" {
		by := ""
		if s := p.certs.SVID(); s != nil {
			by = s.URI
		}
		h.xfcc = XFCC(by, info.peer)
	}
	p.cached.activeIn.Inc()
	defer p.cached.activeIn.Dec()
	p.serveH2(p.h2.in, c, h)
}

func (h *inboundH2) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	p, info := h.p, h.info
	l := reqLog{dir: "inbound", dest: info.app, method: r.Method, host: r.Host, path: r.RequestURI,
		start: time.Now(), proto: "HTTP/2", decision: "deny"}
	// A kept plaintext connection must not outlive a change of its port
	// to STRICT (as serveInboundH1).
	if !info.tls && inboundPort(p.policy.Current(), info.port).Mode == policy.ServerStrict {
		if p.claimClose(info) {
			info.mode = string(policy.ServerStrict)
			p.refuseInbound(h.c, info, reasonPlaintext, errors.New("port turned STRICT after this plaintext connection was accepted"))
		}
		panic(http.ErrAbortHandler)
	}
	fwd, query, msg := h2Target(r)
	if msg != "" {
		p.localH2(w, r, info, &l, http.StatusBadRequest, reasonBadPath, msg)
		return
	}
	l.path = fwd
	snap := p.policy.Current()
	// End-user authentication (the port's Policy origins) before RBAC,
	// which may look at its claims, as on HTTP/1.x.
	auth, claims, err := endUserAuthn(snap, info.port, info.peer, r.Header.Values, func() string { return "?" + query })
	if err != nil {
		p.cached.deny.Inc()
		l.reason = err.Error()
		p.localH2(w, r, info, &l, http.StatusUnauthorized, reasonJWT, "Origin authentication failed: "+err.Error())
		return
	}
	dec := policy.AuthorizeHTTP(snap, policy.Request{Source: info.peer, Port: info.port, Service: info.service, Method: r.Method, Path: fwd, Auth: auth})
	if !dec.Allow {
		p.cached.deny.Inc()
		l.reason = dec.Reason
		p.localH2(w, r, info, &l, http.StatusForbidden, reasonRBACDenied, "RBAC: access denied: "+dec.Reason)
		return
	}
	p.cached.allow.Inc()
	l.decision = "allow"
	// A client's X-Forwarded-Client-Cert and sec-istio-auth-userinfo, in
	// any spelling, in the head or the trailers, are dropped; the
	// sidecar's own are set.
	p.forwardH2(w, r, &l, h2Hop{info: info, tr: h.tr, addr: info.app, drop: dropInboundUserinfo, xfcc: h.xfcc, userinfo: claims}, fwd, query)
}
