package proxy

import (
	"context"
	"errors"
	"io"
	"net"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"

	"github.com/meshauth/meshauth/internal/policy"
)

// The server sidecar's HTTP/2: each request on an accepted (and, for
// mTLS, verified) HTTP/2 connection is authorized, cleaned of client
// identity headers, given the verified X-Forwarded-Client-Cert and
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
	h := &inboundH2{p: p, c: c, info: info, tr: p.h2.toAppH2}
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
	p.serveH2(c, h)
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
		h.local(w, r, &l, http.StatusBadRequest, reasonBadPath, msg)
		return
	}
	l.path = fwd
	dec := policy.AuthorizeHTTP(p.policy.Current(), policy.Request{Source: info.peer, Port: info.port, Service: info.service, Method: r.Method, Path: fwd})
	if !dec.Allow {
		p.cached.deny.Inc()
		h.local(w, r, &l, http.StatusForbidden, reasonRBACDenied, "RBAC: access denied: "+dec.Reason)
		l.reason = dec.Reason
		p.logRequest(info, l)
		return
	}
	p.cached.allow.Inc()
	l.decision = "allow"
	h.forward(w, r, &l, fwd, query)
}

// h2Target checks an HTTP/2 request's :path as inboundTarget checks an
// HTTP/1.x target: "*" only with OPTIONS, otherwise a path, normalised
// (policy.NormalizePath). It returns the path to authorize and forward,
// the query, or why the request is refused.
func h2Target(r *http.Request) (path, query, msg string) {
	t := r.RequestURI
	switch {
	case r.Method == http.MethodConnect:
		return "", "", "CONNECT over HTTP/2 is not forwarded to the app"
	case t == "*" && r.Method == http.MethodOptions:
		return "*", "", ""
	case t == "*":
		return "", "", "request target \"*\" is only allowed with OPTIONS"
	case !strings.HasPrefix(t, "/"):
		return "", "", "request target " + strconv.Quote(t) + " is not a path"
	}
	if n, err := normalizeOrigin([]byte(t)); err != nil {
		return "", "", err.Error()
	} else if n != nil {
		t = string(n)
	}
	path, query, _ = strings.Cut(t, "?")
	return path, query, ""
}

// local answers a request on the sidecar's behalf and logs it (except a
// denial, whose reason the caller logs).
func (h *inboundH2) local(w http.ResponseWriter, r *http.Request, l *reqLog, status int, reason, msg string) {
	l.status, l.reason = status, reason
	l.grpcStatus = localH2(w, r, status, reason, msg)
	h.p.cached.requests("inbound", status).Inc()
	if reason != reasonRBACDenied {
		h.p.logRequest(h.info, *l)
	}
}

// forward sends an authorized request to the app and its response back.
func (h *inboundH2) forward(w http.ResponseWriter, r *http.Request, l *reqLog, path, query string) {
	p := h.p
	hdr := make(http.Header, len(r.Header)+2)
	for k, vv := range r.Header {
		// Any X-Forwarded-Client-Cert in any spelling, and other
		// spellings of the fields the sidecar frames by, as on HTTP/1.x.
		if dropInbound([]byte(k)) {
			l.dropped = append(l.dropped, k)
			continue
		}
		hdr[k] = vv
	}
	for _, k := range hopHeaders {
		if k != "Te" {
			delete(hdr, k)
		}
	}
	delete(hdr, "Host")
	if _, ok := hdr["User-Agent"]; !ok {
		hdr["User-Agent"] = []string{""} // none added by the transport
	}
	if h.xfcc != "" {
		hdr[xfccHeader] = []string{h.xfcc}
	}
	ctx, cancel := context.WithCancel(r.Context())
	if rt := p.cfg.RequestTimeout; rt > 0 {
		ctx, cancel = context.WithTimeout(r.Context(), rt)
	}
	defer cancel()
	idle := newStreamIdle(p.cfg.BodyIdleTimeout, cancel)
	defer idle.stop()
	out := (&http.Request{
		Method: r.Method, URL: &url.URL{Scheme: "http", Host: h.info.app, Opaque: path, RawQuery: query},
		Proto: "HTTP/2.0", ProtoMajor: 2, Header: hdr, Host: r.Host, ContentLength: r.ContentLength,
	}).WithContext(ctx)
	if r.Body != nil && r.Body != http.NoBody {
		if len(r.Trailer) > 0 {
			out.Trailer = http.Header{}
			for k := range r.Trailer {
				if !dropInbound([]byte(k)) {
					out.Trailer[k] = nil
				}
			}
		}
		out.Body = &reqBody{in: r, out: out, idle: idle}
	}
	resp, err := h.tr.RoundTrip(out)
	if err != nil {
		h.upstreamFailed(w, r, l, ctx, idle, err)
		return
	}
	gs, err := copyResponse(w, resp, idle, p.cfg.BodyIdleTimeout)
	l.status, l.grpcStatus = resp.StatusCode, gs
	p.cached.requests("inbound", resp.StatusCode).Inc()
	if err != nil {
		// Cut mid-stream: reset the stream so the client cannot take a
		// truncated body for a whole one.
		l.decision, l.reason = "error", h2StreamReason(r, idle, err)
		p.logRequest(h.info, *l)
		panic(http.ErrAbortHandler)
	}
	p.logRequest(h.info, *l)
}

// upstreamFailed answers a request whose response never came.
func (h *inboundH2) upstreamFailed(w http.ResponseWriter, r *http.Request, l *reqLog, ctx context.Context, idle *streamIdle, err error) {
	l.decision = "error"
	switch {
	case r.Context().Err() != nil:
		// The client reset the stream or went away: nobody to answer.
		l.status, l.reason = statusClientClosed, reasonClientClosed
		h.p.cached.requests("inbound", l.status).Inc()
		h.p.logRequest(h.info, *l)
	case idle.fired.Load():
		h.local(w, r, l, http.StatusGatewayTimeout, reasonBodyTimeout, "no data either way for "+h.p.cfg.BodyIdleTimeout.String())
	case errors.Is(ctx.Err(), context.DeadlineExceeded):
		h.local(w, r, l, http.StatusGatewayTimeout, reasonRequestTimeout, "request not answered within "+h.p.cfg.RequestTimeout.String())
	default:
		h.local(w, r, l, http.StatusBadGateway, "upstream_error", "app: "+err.Error())
	}
}

// h2StreamReason names why a response stream was cut.
func h2StreamReason(r *http.Request, idle *streamIdle, err error) string {
	switch {
	case r.Context().Err() != nil:
		return reasonClientClosed
	case idle.fired.Load() || isTimeout(err):
		return reasonBodyTimeout
	}
	return "upstream_error"
}

// reqBody is a request body on its way up: reading it counts as stream
// activity, and at its end the client's trailers follow, cleaned as the
// head was.
type reqBody struct {
	in   *http.Request
	out  *http.Request
	idle *streamIdle
}

func (b *reqBody) Read(p []byte) (int, error) {
	n, err := b.in.Body.Read(p)
	if n > 0 {
		b.idle.touch()
	}
	if errors.Is(err, io.EOF) && b.out.Trailer != nil {
		for k, vv := range b.in.Trailer {
			if _, ok := b.out.Trailer[k]; ok {
				b.out.Trailer[k] = vv
			}
		}
	}
	return n, err
}

func (b *reqBody) Close() error { return b.in.Body.Close() }
