package proxy

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/meshauth/meshauth/internal/policy"
)

// The client sidecar's HTTP: the forward proxy (absolute-form requests and
// CONNECT) and captured HTTP connections. Every request is routed by the
// outbound decision (decide.go) and exchanged over a pooled connection
// (exchange.go, pool.go).

// poolSide is the client sidecar's upstream for one request: a pooled
// connection to ep, mTLS or plaintext by the route's mode.
type poolSide struct {
	p   *Proxy
	key poolKey
	tls *tls.Config // nil: plaintext
}

func (s *poolSide) get(d *dconn, fresh bool) (*upConn, error) {
	if !fresh {
		if u := s.p.pool.get(s.key); u != nil {
			return u, nil
		}
	}
	gen := s.p.pool.gen.Load() // before the handshake that verifies the server
	var (
		c   net.Conn
		err error
	)
	if s.tls != nil {
		c, err = s.p.dialTLS(context.Background(), s.key.ep, s.tls)
	} else {
		c, err = plainDial(context.Background(), s.key.ep)
	}
	if err != nil {
		return nil, err
	}
	u := newUpConn(c, s.p.cfg.BodyIdleTimeout)
	u.gen = gen
	return u, nil
}

func (s *poolSide) done(u *upConn, reusable bool) {
	if reusable {
		s.p.pool.put(s.key, u)
		return
	}
	u.close()
}

// serveOutboundH1 is the forward proxy (absolute-form requests, CONNECT) and
// the L7 handler of captured HTTP connections.
func (p *Proxy) serveOutboundH1(c net.Conn, info *connInfo) {
	p.cached.activeOut.Inc()
	defer p.cached.activeOut.Dec()
	side := &poolSide{p: p}
	h2 := func(c net.Conn) { p.serveOutboundH2(c, info) }
	p.serveH1(c, info, h2, func(d *dconn) exchangeResult {
		start := time.Now()
		host, port := info.origHost, info.origPort
		if host == "" {
			if d.req.MethodIs("CONNECT") {
				p.connectH1(d)
				return exchangeResult{keep: false}
			}
			var err error
			host, port, err = absoluteTarget(d.req.Str(d.req.Target))
			if err != nil {
				res := p.localError(d, http.StatusBadRequest, "bad_proxy_request", err.Error())
				p.logH1("outbound", d, "", res.status, "deny", res.reason, start)
				return res
			}
		}
		o := p.decide(host, port, info.origHost != "")
		hostport := o.target
		var res exchangeResult
		dest := hostport
		switch o.verdict {
		case denyUnknown:
			res = p.localError(d, http.StatusBadGateway, "unknown_destination", hostport+" is not a mesh service and outbound passthrough is off")
		case passthrough:
			info.mode = "passthrough"
			side.key, side.tls = poolKey{"plain", hostport}, nil
			res = p.exchange(d, side, nil, nil, hostport)
		case noEndpoints:
			info.mode = string(o.route.mode)
			dest = "" // no endpoint chosen: the access log has no destination
			res = p.localError(d, http.StatusServiceUnavailable, "no_endpoints", "service "+o.route.service+" has no endpoints")
		default:
			rt := o.route
			info.mode = string(rt.mode)
			dest = o.endpoint()
			side.key, side.tls = poolKey{rt.transportKey, dest}, nil
			if rt.mode != policy.ClientDisable {
				side.tls = p.upstreamFor(rt).httpTLS
			}
			res = p.exchange(d, side, nil, nil, hostport)
		}
		p.cached.requests("outbound", res.status).Inc()
		decision := "allow"
		if res.reason != "" {
			decision = "error"
		}
		p.logH1("outbound", d, dest, res.status, decision, res.reason, start)
		return res
	})
}

func plainDial(ctx context.Context, addr string) (net.Conn, error) {
	return dialer.DialContext(ctx, "tcp", addr)
}

// connectH1 serves CONNECT host:port: a TCP tunnel to a mesh service (with
// its TLS mode) or, if allowed, any host.
func (p *Proxy) connectH1(d *dconn) {
	start := time.Now()
	info := d.info
	target := d.req.Str(d.req.Target)
	host, ps, err := net.SplitHostPort(target)
	port, perr := parsePort(ps)
	if err != nil || perr != nil || host == "" {
		d.req.Close = true
		p.localError(d, http.StatusBadRequest, "bad_proxy_request", "CONNECT target "+strconv.Quote(target)+": want host:port")
		return
	}
	o := p.decide(host, port, false)
	dest := o.target
	if rt := o.route; rt != nil && (rt.http || rt.h2) {
		// CONNECT to an HTTP, HTTP2 or GRPC service port: the port's
		// protocol decides, so the tunnel's requests are proxied one by
		// one (HTTP/1.x, or HTTP/2 with prior knowledge as gRPC's
		// HTTPS_PROXY support sends it; the server sidecar parses them
		// and sets XFCC either way), never relayed as bytes.
		d.bw.WriteString("HTTP/1.1 200 Connection Established\r\n\r\n")
		if err := d.bw.Flush(); err != nil {
			return
		}
		p.log.Info("outbound: CONNECT to an HTTP service port; proxying the tunnel's requests as HTTP", "peer", info.src, "target", dest, "service", rt.service)
		tunnel := &connInfo{src: info.src, origHost: host, origPort: port, mode: string(rt.mode)}
		p.serveOutboundH1(&bufferedConn{Conn: d.c, r: d.br}, tunnel)
		return
	}
	var (
		up  net.Conn
		gen uint64
	)
	switch o.verdict {
	case noEndpoints:
		info.mode = string(o.route.mode)
		d.req.Close = true
		p.localError(d, http.StatusServiceUnavailable, "no_endpoints", "service "+o.route.service+" has no endpoints")
		return
	case denyUnknown:
		err = errors.New(dest + " is not a mesh service and outbound passthrough is off")
	case passthrough:
		info.mode = "passthrough"
		up, dest, gen, err = p.dialTunnel(context.Background(), o)
	default:
		info.mode = string(o.route.mode)
		up, dest, gen, err = p.dialTunnel(context.Background(), o)
	}
	if err != nil {
		d.req.Close = true
		reason := upstreamReason(err)
		p.localError(d, http.StatusBadGateway, reason, "CONNECT "+dest+": "+err.Error())
		p.logH1("outbound", d, dest, http.StatusBadGateway, "error", reason, start)
		return
	}
	d.bw.WriteString("HTTP/1.1 200 Connection Established\r\n\r\n")
	if err := d.bw.Flush(); err != nil {
		up.Close()
		return
	}
	p.relayOut(&bufferedConn{Conn: d.c, r: d.br}, up, info, dest, gen)
}

// absoluteTarget parses a forward-proxy request target "http://host[:port]/..."
// into host and port, without allocating a URL. Origin-form targets are not
// proxy requests.
func absoluteTarget(t string) (string, uint32, error) {
	const scheme = "http://"
	if len(t) < len(scheme) || !strings.EqualFold(t[:len(scheme)], scheme) {
		if i := strings.Index(t, "://"); i > 0 {
			return "", 0, fmt.Errorf("scheme %q is not supported by the forward proxy (use http://, or CONNECT for TLS)", t[:i])
		}
		return "", 0, errors.New("not a proxy request (need an absolute URI such as http://httpbin:8000/headers; set http_proxy to this sidecar)")
	}
	auth := t[len(scheme):]
	if i := strings.IndexAny(auth, "/?#"); i >= 0 {
		auth = auth[:i]
	}
	if strings.ContainsAny(auth, "@ %") {
		return "", 0, fmt.Errorf("absolute URI authority %q: user info and escapes are not supported", auth)
	}
	host, port := auth, uint32(80)
	if i := strings.LastIndexByte(auth, ':'); i >= 0 && !strings.HasSuffix(auth, "]") {
		var err error
		if port, err = parsePort(auth[i+1:]); err != nil {
			return "", 0, fmt.Errorf("absolute URI port: %w", err)
		}
		host = auth[:i]
	}
	if strings.HasPrefix(host, "[") {
		if !strings.HasSuffix(host, "]") || len(host) < 3 {
			return "", 0, fmt.Errorf("absolute URI host %q: bad IPv6 literal", host)
		}
		host = host[1 : len(host)-1]
		if ip := net.ParseIP(host); ip == nil || ip.To4() != nil {
			return "", 0, fmt.Errorf("absolute URI host %q: bad IPv6 literal", host)
		}
	} else if strings.ContainsAny(host, "[]:") {
		return "", 0, fmt.Errorf("absolute URI host %q is malformed", host)
	}
	if host == "" {
		return "", 0, fmt.Errorf("absolute URI %q has no host", t)
	}
	return host, port, nil
}
