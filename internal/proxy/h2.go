package proxy

import (
	"context"
	"errors"
	"io"
	"net"
	"net/http"
	"net/textproto"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// HTTP/2 is terminated per request (issue #14), on both sides, with
// net/http's own HTTP/2 (the copy of golang.org/x/net/http2 it bundles and
// every Go binary with net/http links anyway), not a codec of our own and
// not a second copy from x/net: the server side is an http.Server that
// speaks only HTTP/2 with prior knowledge (Protocols: UnencryptedHTTP2; on
// a mesh connection "unencrypted" means over the mTLS the proxy already
// terminated and verified), fed the connections the proxy hands it
// through a listener of its own (h2Server); the client side is
// http.Transport with UnencryptedHTTP2 over connections the proxy dials
// itself (the app over h2c; the server sidecar over mTLS with ALPN h2,
// one http.ClientConn each in h2Pool). Its defences against the HTTP/2
// abuse of the last years are what the adversarial suite checks: rapid
// reset (CVE-2023-44487), CONTINUATION floods (CVE-2023-45288), HPACK
// bombs (decoded header bytes bounded by MaxHeaderBytes), SETTINGS and
// PING floods (bounded control-frame queue).
//
//   - inbound (h2in.go): every request is end-user authenticated (the
//     port's JWT origins) and authorized by the policy engine (a gRPC call
//     as POST /pkg.Service/Method), the client's X-Forwarded-Client-Cert
//     and sec-istio-auth-userinfo in any spelling dropped and the verified
//     ones set, the normalised :path forwarded; forwarded to the app over h2c
//     (HTTP2, GRPC and undeclared ports) or HTTP/1.1 (HTTP ports).
//   - outbound (h2out.go): HTTP/2 from the app is routed per request and
//     carried to the server sidecar multiplexed over mTLS with ALPN h2.

// alpnH2 is HTTP/2's ALPN protocol id: between sidecars it carries HTTP/2
// requests multiplexed on one mTLS connection. The server sidecar still
// decides by the port's protocol and the preface, not by ALPN.
const alpnH2 = "h2"

// h2Preface is the client connection preface (RFC 9113 3.4).
const h2Preface = "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"

// Limits of the HTTP/2 server (both sides).
const (
	// h2MaxHeaderBytes bounds the decoded header block of one request
	// (HPACK bomb, CONTINUATION flood): as HTTP/1.x's head limit.
	h2MaxHeaderBytes = 64 << 10
	// h2MaxStreams is the concurrent streams one client may open.
	h2MaxStreams = 250
)

// h2State is the proxy's HTTP/2 machinery, built once in New.
type h2State struct {
	// in serves inbound connections, out the app's outbound ones: the
	// same settings, each counting protocol errors under its direction.
	in, out *h2Server
	// app holds the h2c (prior knowledge) connections to the app;
	// toAppH1 reaches an HTTP port's app over HTTP/1.1.
	app     *h2Pool
	toAppH1 *http.Transport
	// pool holds the client sidecar's HTTP/2 upstream connections.
	pool *h2Pool
}

// h2Only is the protocol set of every HTTP/2 server and client here:
// HTTP/2 with prior knowledge on a connection the proxy provides, and
// nothing else (no HTTP/1 fallback, no TLS of net/http's own).
func h2Only() *http.Protocols {
	var ps http.Protocols
	ps.SetUnencryptedHTTP2(true)
	return &ps
}

func (p *Proxy) newH2State() *h2State {
	s := &h2State{}
	s.in, s.out = p.newH2Server("inbound"), p.newH2Server("outbound")
	dialApp := func(ctx context.Context, network, addr string) (net.Conn, error) {
		return dialer.DialContext(ctx, network, addr)
	}
	s.toAppH1 = &http.Transport{
		DialContext:         dialApp,
		DisableCompression:  true,
		MaxIdleConnsPerHost: 64,
		IdleConnTimeout:     p.cfg.IdleTimeout / 2,
		// The response head must come within the same limit as on
		// HTTP/1.x.
		ResponseHeaderTimeout:  p.cfg.ResponseHeadersTimeout,
		MaxResponseHeaderBytes: h2MaxHeaderBytes,
		Proxy:                  nil,
	}
	s.app, s.pool = newH2Pool(p), newH2Pool(p)
	return s
}

// h2Server serves HTTP/2 on connections the proxy hands it (serve). An
// http.Server serves only what a Listener accepts, so serve passes each
// connection through l, with the handler of its direction and connection
// (h2Served), which the server's handler finds in the request's context.
// hs.Shutdown sends every connection GOAWAY (drain).
type h2Server struct {
	hs    *http.Server
	l     *connListener
	start sync.Once
}

func (p *Proxy) newH2Server(dir string) *h2Server {
	return &h2Server{l: newConnListener(), hs: &http.Server{
		Protocols: h2Only(),
		Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			r.Context().Value(h2ConnKey{}).(http.Handler).ServeHTTP(w, r)
		}),
		ConnContext: func(ctx context.Context, c net.Conn) context.Context {
			return context.WithValue(ctx, h2ConnKey{}, c.(*h2Served).h)
		},
		// OPTIONS * is the app's to answer (h2Target), not net/http's.
		DisableGeneralOptionsHandler: true,
		// The decoded header block of one request (HPACK's header list).
		MaxHeaderBytes: h2MaxHeaderBytes,
		IdleTimeout:    p.cfg.IdleTimeout,
		HTTP2: &http.HTTP2Config{
			MaxConcurrentStreams: h2MaxStreams,
			// A client that stops reading (TCP) holds a connection no
			// longer than a body without a byte moving.
			WriteByteTimeout: p.cfg.BodyIdleTimeout,
			SendPingTimeout:  p.cfg.IdleTimeout / 2,
			PingTimeout:      15 * time.Second,
			// Protocol errors (rapid reset, bad frames, ...) are counted
			// as meshauth_sidecar_connections_closed_total{reason="http2_<kind>"}.
			CountError: func(kind string) { p.m.Closed.WithLabelValues(dir, "http2_"+kind).Inc() },
		},
	}}
}

// h2ConnKey is the context key of a connection's handler.
type h2ConnKey struct{}

// h2Served is a connection on its way to an h2Server: it hides the
// connection's type (net/http would redo a *tls.Conn's handshake and
// pick the protocol by ALPN; here the preface decides, as the sniffer
// did) and tells serve when the server closed it.
type h2Served struct {
	net.Conn
	h    http.Handler
	once sync.Once
	done chan struct{}
}

func (c *h2Served) Close() error {
	err := c.Conn.Close()
	c.once.Do(func() { close(c.done) })
	return err
}

// serve serves HTTP/2 on c (whose next bytes are the client preface)
// with h until the connection ends.
func (s *h2Server) serve(c net.Conn, h http.Handler) {
	s.start.Do(func() { go s.hs.Serve(s.l) })
	sc := &h2Served{Conn: c, h: h, done: make(chan struct{})}
	if !s.l.push(sc) {
		c.Close() // the proxy is closing
		return
	}
	<-sc.done
}

// drain sends every connection GOAWAY (streams in flight finish, new
// ones go elsewhere) and serves no new one. It does not wait: the
// already-cancelled context makes Shutdown return once GOAWAY is under
// way.
func (s *h2Server) drain() {
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	s.hs.Shutdown(ctx)
	s.l.Close()
}

// connListener is a net.Listener whose connections come from push.
type connListener struct {
	conns  chan net.Conn
	closed chan struct{}
	once   sync.Once
}

func newConnListener() *connListener {
	return &connListener{conns: make(chan net.Conn), closed: make(chan struct{})}
}

// push hands c to Accept; false once the listener is closed.
func (l *connListener) push(c net.Conn) bool {
	select {
	case l.conns <- c:
		return true
	case <-l.closed:
		return false
	}
}

func (l *connListener) Accept() (net.Conn, error) {
	select {
	case c := <-l.conns:
		return c, nil
	case <-l.closed:
		return nil, net.ErrClosed
	}
}

func (l *connListener) Close() error {
	l.once.Do(func() { close(l.closed) })
	return nil
}

func (l *connListener) Addr() net.Addr { return &net.UnixAddr{Name: "h2", Net: "unix"} }

// serveH2 serves HTTP/2 on c (whose next bytes are the client preface)
// with h until the connection ends; srv is h2State.in or out.
func (p *Proxy) serveH2(srv *h2Server, c net.Conn, h http.Handler) {
	srv.serve(c, h)
}

// drainH2 sends every HTTP/2 connection GOAWAY: streams in flight finish,
// new ones go elsewhere.
func (p *Proxy) drainH2() {
	p.h2.in.drain()
	p.h2.out.drain()
	p.h2.toAppH1.CloseIdleConnections()
	p.h2.app.closeIdle() // streams in flight to the app finish
	p.h2.pool.closeAll()
}

// isGRPC reports whether a request is a gRPC call (RFC: Content-Type
// application/grpc, +proto, ...).
func isGRPC(h http.Header) bool {
	ct := h.Get("Content-Type")
	return strings.HasPrefix(ct, "application/grpc") && (len(ct) == len("application/grpc") || ct[len("application/grpc")] == '+' || ct[len("application/grpc")] == ';')
}

// gRPC status codes the sidecar answers with.
const (
	grpcPermissionDenied = "7"
	grpcUnauthenticated  = "16"
	grpcUnavailable      = "14"
	grpcInternal         = "13"
	grpcDeadlineExceeded = "4"
)

// grpcStatusFor maps the HTTP status of a local answer to a gRPC code.
func grpcStatusFor(status int) string {
	switch status {
	case http.StatusForbidden:
		return grpcPermissionDenied
	case http.StatusUnauthorized:
		return grpcUnauthenticated
	case http.StatusGatewayTimeout, http.StatusRequestTimeout:
		return grpcDeadlineExceeded
	case http.StatusBadGateway, http.StatusServiceUnavailable:
		return grpcUnavailable
	}
	return grpcInternal
}

// localH2 answers a request on the sidecar's own behalf (see
// writeLocalH2), counts and logs it. A denial's l.reason is the policy's
// reason, set by the caller.
func (p *Proxy) localH2(w http.ResponseWriter, r *http.Request, info *connInfo, l *reqLog, status int, reason, msg string) {
	l.status = status
	if l.reason == "" {
		l.reason = reason
	}
	l.grpcStatus = writeLocalH2(w, r, status, reason, msg)
	p.cached.requests(l.dir, status).Inc()
	p.logRequest(info, *l)
}

// writeLocalH2 writes a sidecar's own answer: a gRPC call gets a
// trailers-only response (HTTP 200, grpc-status and grpc-message in the
// only header block), anything else status with a text body. It returns
// the grpc-status sent ("" for plain HTTP/2).
func writeLocalH2(w http.ResponseWriter, r *http.Request, status int, reason, msg string) string {
	h := w.Header()
	h.Set(reasonHeader, reason)
	if status != http.StatusForbidden || reason != reasonRBACDenied {
		msg = "meshauth sidecar: " + msg
	}
	if isGRPC(r.Header) {
		code := grpcStatusFor(status)
		h.Set("Content-Type", "application/grpc")
		h.Set("Grpc-Status", code)
		h.Set("Grpc-Message", grpcEncodeMessage(msg))
		w.WriteHeader(http.StatusOK)
		return code
	}
	h.Set("Content-Type", "text/plain; charset=utf-8")
	w.WriteHeader(status)
	if r.Method != http.MethodHead {
		w.Write([]byte(msg + "\n"))
	}
	return ""
}

// reasonRBACDenied is the reason of a request the policy denies.
const reasonRBACDenied = "rbac_denied"

// grpcEncodeMessage percent-encodes a grpc-message value (gRPC over
// HTTP/2: bytes outside 0x20-0x7E, and '%').
func grpcEncodeMessage(s string) string {
	const hex = "0123456789ABCDEF"
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		c := s[i]
		if c < 0x20 || c > 0x7e || c == '%' {
			b.WriteByte('%')
			b.WriteByte(hex[c>>4])
			b.WriteByte(hex[c&15])
			continue
		}
		b.WriteByte(c)
	}
	return b.String()
}

// hopHeaders are the fields of an HTTP/1.x message that do not cross a
// proxy (RFC 9110 7.6.1); HTTP/2 forbids them.
var hopHeaders = []string{"Connection", "Keep-Alive", "Proxy-Connection", "Transfer-Encoding", "Upgrade", "Te", "Trailer", "Proxy-Authenticate", "Proxy-Authorization"}

// streamIdle ends a stream (cancels its context) once no byte moved in
// either direction for d; touch records movement.
type streamIdle struct {
	last   atomic.Int64
	d      time.Duration
	t      *time.Timer
	cancel context.CancelFunc
	fired  atomic.Bool
}

func newStreamIdle(d time.Duration, cancel context.CancelFunc) *streamIdle {
	s := &streamIdle{d: d, cancel: cancel}
	s.touch()
	if d > 0 {
		s.t = time.AfterFunc(d, s.check)
	}
	return s
}

func (s *streamIdle) touch() { s.last.Store(time.Now().UnixNano()) }

func (s *streamIdle) check() {
	if left := s.d - time.Since(time.Unix(0, s.last.Load())); left > 0 {
		s.t.Reset(left)
		return
	}
	s.fired.Store(true)
	s.cancel()
}

func (s *streamIdle) stop() {
	if s.t != nil {
		s.t.Stop()
	}
}

// copyResponse writes resp (head, body, trailers) to w, flushing as the
// body comes (gRPC streams), each write bounded by writeIdle. It returns
// the response's grpc-status, if any, and the first error.
func copyResponse(w http.ResponseWriter, resp *http.Response, idle *streamIdle, writeIdle time.Duration) (string, error) {
	h := w.Header()
	for k, vv := range resp.Header {
		h[k] = vv
	}
	// An HTTP/1.x app's Connection field names more hop-by-hop fields.
	for _, v := range resp.Header["Connection"] {
		for _, name := range strings.Split(v, ",") {
			delete(h, textproto.CanonicalMIMEHeaderKey(strings.TrimSpace(name)))
		}
	}
	for _, k := range hopHeaders {
		delete(h, k)
	}
	w.WriteHeader(resp.StatusCode)
	rc := http.NewResponseController(w)
	if resp.ContentLength != 0 {
		// The head goes out now (a stream may wait long for its first
		// message). A response known to be empty is not flushed: a gRPC
		// trailers-only answer must stay one header block with
		// END_STREAM.
		rc.Flush()
	}
	bp := bufPool.Get().(*[]byte)
	defer bufPool.Put(bp)
	buf := *bp
	var err error
	for {
		n, rerr := resp.Body.Read(buf)
		if n > 0 {
			idle.touch()
			if writeIdle > 0 {
				rc.SetWriteDeadline(time.Now().Add(writeIdle))
			}
			if _, werr := w.Write(buf[:n]); werr != nil {
				err = werr
				break
			}
			if ferr := rc.Flush(); ferr != nil {
				err = ferr
				break
			}
			idle.touch()
		}
		if rerr != nil {
			if !errors.Is(rerr, io.EOF) {
				err = rerr
			}
			break
		}
	}
	resp.Body.Close()
	grpcStatus := resp.Header.Get("Grpc-Status")
	if err == nil {
		for k, vv := range resp.Trailer {
			h[http.TrailerPrefix+k] = vv
			if strings.EqualFold(k, "Grpc-Status") && len(vv) > 0 {
				grpcStatus = vv[0]
			}
		}
	}
	return grpcStatus, err
}

// h2Hop is where forwardH2 sends a request and how.
type h2Hop struct {
	info *connInfo
	tr   http.RoundTripper
	addr string // the URL's host: the app or the endpoint
	// drop, if set, says which request fields are not forwarded (the
	// server sidecar's dropInbound); xfcc, if set, is added.
	drop func([]byte) bool
	xfcc string
	// userinfo, if set, is the verified token's claims for
	// sec-istio-auth-userinfo.
	userinfo string
}

// forwardH2 sends a request (path already checked, query as sent) over
// hop and its response back, then counts and logs it.
func (p *Proxy) forwardH2(w http.ResponseWriter, r *http.Request, l *reqLog, hop h2Hop, path, query string) {
	hdr := make(http.Header, len(r.Header)+2)
	for k, vv := range r.Header {
		if hop.drop != nil && hop.drop([]byte(k)) {
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
	if hop.xfcc != "" {
		hdr[xfccHeader] = []string{hop.xfcc}
	}
	if hop.userinfo != "" {
		hdr[userinfoHeader] = []string{hop.userinfo}
	}
	ctx, cancel := context.WithCancel(r.Context())
	if rt := p.cfg.RequestTimeout; rt > 0 {
		ctx, cancel = context.WithTimeout(r.Context(), rt)
	}
	defer cancel()
	idle := newStreamIdle(p.cfg.BodyIdleTimeout, cancel)
	defer idle.stop()
	out := (&http.Request{
		Method: r.Method, URL: &url.URL{Scheme: "http", Host: hop.addr, Opaque: path, RawQuery: query},
		Proto: "HTTP/2.0", ProtoMajor: 2, Header: hdr, Host: r.Host, ContentLength: r.ContentLength,
	}).WithContext(ctx)
	if r.Body != nil && r.Body != http.NoBody {
		if len(r.Trailer) > 0 {
			out.Trailer = http.Header{}
			for k := range r.Trailer {
				if hop.drop == nil || !hop.drop([]byte(k)) {
					out.Trailer[k] = nil
				}
			}
		}
		out.Body = &reqBody{in: r, out: out, idle: idle}
	}
	resp, err := hop.tr.RoundTrip(out)
	if err != nil {
		p.upstreamFailedH2(w, r, hop.info, l, ctx, idle, err)
		return
	}
	gs, err := copyResponse(w, resp, idle, p.cfg.BodyIdleTimeout)
	l.status, l.grpcStatus = resp.StatusCode, gs
	p.cached.requests(l.dir, resp.StatusCode).Inc()
	if err != nil {
		// Cut mid-stream: reset the stream so the client cannot take a
		// truncated body for a whole one.
		l.decision, l.reason = "error", h2StreamReason(r, idle, err)
		p.logRequest(hop.info, *l)
		panic(http.ErrAbortHandler)
	}
	p.logRequest(hop.info, *l)
}

// upstreamFailedH2 answers a request whose response never came.
func (p *Proxy) upstreamFailedH2(w http.ResponseWriter, r *http.Request, info *connInfo, l *reqLog, ctx context.Context, idle *streamIdle, err error) {
	l.decision = "error"
	switch {
	case r.Context().Err() != nil:
		// The client reset the stream or went away: nobody to answer.
		l.status, l.reason = statusClientClosed, reasonClientClosed
		p.cached.requests(l.dir, l.status).Inc()
		p.logRequest(info, *l)
	case idle.fired.Load():
		p.localH2(w, r, info, l, http.StatusGatewayTimeout, reasonBodyTimeout, "no data either way for "+p.cfg.BodyIdleTimeout.String())
	case errors.Is(ctx.Err(), context.DeadlineExceeded):
		p.localH2(w, r, info, l, http.StatusGatewayTimeout, reasonRequestTimeout, "request not answered within "+p.cfg.RequestTimeout.String())
	case upstreamReason(err) != "upstream_error":
		// No connection (unreachable, handshake refused, secure naming):
		// 503, as on HTTP/1.x.
		p.localH2(w, r, info, l, http.StatusServiceUnavailable, upstreamReason(err), "upstream "+err.Error())
	default:
		p.localH2(w, r, info, l, http.StatusBadGateway, "upstream_error", "upstream: "+err.Error())
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
