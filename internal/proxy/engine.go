package proxy

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httputil"
	"os"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/meshauth/meshauth/internal/policy"
)

// The HTTP engine: one goroutine per downstream connection reads requests
// with the codec in h1.go and forwards each over an upstream connection —
// the app (server sidecar, one app connection per downstream connection) or
// a pooled mTLS connection to the server sidecar (client sidecar). No
// per-request goroutine unless the request has a body.

var (
	readerPool = sync.Pool{New: func() any { return bufio.NewReaderSize(nil, 16<<10) }}
	writerPool = sync.Pool{New: func() any { return bufio.NewWriterSize(nil, 16<<10) }}
)

func getReader(r io.Reader) *bufio.Reader {
	br := readerPool.Get().(*bufio.Reader)
	br.Reset(r)
	return br
}

func putReader(br *bufio.Reader) { br.Reset(nil); readerPool.Put(br) }

func getWriter(w io.Writer) *bufio.Writer {
	bw := writerPool.Get().(*bufio.Writer)
	bw.Reset(w)
	return bw
}

func putWriter(bw *bufio.Writer) { bw.Reset(nil); writerPool.Put(bw) }

// upConn is an upstream connection with its buffers.
type upConn struct {
	c      net.Conn
	io     *idleIO // under br and bw: deadlines
	br     *bufio.Reader
	bw     *bufio.Writer
	reused bool
	idle   time.Time
	resp   head
	gen    uint64 // connPool.gen when its peer was last verified
	// aborted: the request body's goroutine closed this connection
	// because the client's side of the body failed (set before closing).
	aborted atomic.Bool
}

// newUpConn wraps a fresh upstream connection; writes to it are idle-
// limited by writeIdle (a server that stops reading a request body).
func newUpConn(c net.Conn, writeIdle time.Duration) *upConn {
	x := newIdleIO(c, writeIdle)
	return &upConn{c: c, io: x, br: getReader(x), bw: getWriter(x)}
}

func (u *upConn) close() {
	u.c.Close()
	if u.br != nil {
		putReader(u.br)
		putWriter(u.bw)
		u.br, u.bw = nil, nil
	}
}

// connPool keeps idle upstream connections per endpoint, newest first.
type connPool struct {
	mu      sync.Mutex
	idle    map[string][]*upConn
	maxIdle int
	timeout time.Duration
	// gen is bumped whenever the bundle, certificate or policy changes; a
	// pooled connection verified under an older generation has its server
	// verified again (revoked serial, retired root) before it is reused.
	gen    atomic.Uint64
	verify func(*upConn) error // nil: no re-verification
	// stale is called for each connection dropped by that check.
	stale func(*upConn, error)
}

func newConnPool(timeout time.Duration) *connPool {
	return &connPool{idle: map[string][]*upConn{}, maxIdle: 256, timeout: timeout}
}

func (p *connPool) get(key string) *upConn {
	p.mu.Lock()
	defer p.mu.Unlock()
	l := p.idle[key]
	for len(l) > 0 {
		u := l[len(l)-1]
		l = l[:len(l)-1]
		if time.Since(u.idle) < p.timeout {
			if g := p.gen.Load(); u.gen != g && p.verify != nil {
				if err := p.verify(u); err != nil {
					if p.stale != nil {
						p.stale(u, err)
					}
					u.close()
					continue
				}
				u.gen = g
			}
			p.idle[key] = l
			u.reused = true
			return u
		}
		u.close()
	}
	delete(p.idle, key)
	return nil
}

func (p *connPool) put(key string, u *upConn) {
	u.idle = time.Now()
	p.mu.Lock()
	if l := p.idle[key]; len(l) < p.maxIdle {
		p.idle[key] = append(l, u)
		p.mu.Unlock()
		return
	}
	p.mu.Unlock()
	u.close()
}

// reap closes the idle connections that sat longer than the pool's
// timeout or whose server closed them (or sent something unasked), so
// none lingers in CLOSE-WAIT until its endpoint is used again. It returns
// how many it closed.
func (p *connPool) reap() int {
	n := 0
	p.mu.Lock()
	defer p.mu.Unlock()
	for k, l := range p.idle {
		kept := l[:0]
		for _, u := range l {
			if time.Since(u.idle) >= p.timeout || peerGone(u.c) {
				u.close()
				n++
				continue
			}
			kept = append(kept, u)
		}
		clear(l[len(kept):])
		if len(kept) == 0 {
			delete(p.idle, k)
		} else {
			p.idle[k] = kept
		}
	}
	return n
}

// reapEvery is how often the pool is swept: a quarter of its timeout,
// between 50 ms and 1 s.
func (p *connPool) reapEvery() time.Duration {
	return min(max(p.timeout/4, 50*time.Millisecond), time.Second)
}

// closeIdle closes every idle connection (rotation tests, shutdown).
func (p *connPool) closeIdle() {
	p.mu.Lock()
	defer p.mu.Unlock()
	for k, l := range p.idle {
		for _, u := range l {
			u.close()
		}
		delete(p.idle, k)
	}
}

// dconn is one downstream connection being served.
type dconn struct {
	c    net.Conn
	io   *idleIO // under br and bw: deadlines
	br   *bufio.Reader
	bw   *bufio.Writer
	req  head
	info *connInfo
	w    clientWatch
	// dropped lists the request fields the server sidecar dropped (see
	// dropInbound), for the access log.
	dropped []string
}

// dropInboundField is the server sidecar's field filter: it drops what
// dropInbound reports and remembers the names for the access log.
func (d *dconn) dropInboundField(name []byte) bool {
	if !dropInbound(name) {
		return false
	}
	for _, n := range d.dropped {
		if n == string(name) {
			return true
		}
	}
	d.dropped = append(d.dropped, string(name))
	return true
}

// upstreamSide says how a downstream connection reaches its upstream.
type upstreamSide interface {
	// get returns a connection for this request; fresh forces a new one.
	get(d *dconn, fresh bool) (*upConn, error)
	// done returns a connection after a request; reusable says whether the
	// exchange left it clean for another request.
	done(u *upConn, reusable bool)
}

// exchangeResult is the outcome of one request.
type exchangeResult struct {
	status int
	reason string // set when the sidecar answered itself
	// keep: the downstream connection can carry another request.
	keep bool
	// upKeep: the upstream connection is clean for another request.
	upKeep bool
}

// writeRequest writes the request head to the upstream: origin-form target
// (normalised by the server sidecar), end-to-end fields but those drop
// reports, framing, then the extra fields (XFCC) and a Host if the client
// sent none.
func writeRequest(u *upConn, req *head, extra []byte, drop func([]byte) bool, host string) {
	w := u.bw
	w.Write(req.bytesOf(req.method))
	w.WriteByte(' ')
	w.Write(req.forwardTarget())
	w.WriteString(" HTTP/1.1\r\n")
	if !req.hasHost && host != "" {
		w.WriteString("Host: ")
		w.WriteString(host)
		w.WriteString("\r\n")
	}
	req.writeFields(w, drop)
	req.writeFraming(w)
	w.Write(extra)
	w.WriteString("\r\n")
}

// exchange forwards one request (already read into d.req) and its response.
func (p *Proxy) exchange(d *dconn, up upstreamSide, extra []byte, drop func([]byte) bool, host string) exchangeResult {
	req := &d.req
	isHead := req.methodIs("HEAD")
	var (
		u   *upConn
		err error
		x   xchg
	)
	if rt := p.cfg.RequestTimeout; rt > 0 {
		// The whole exchange is bounded: at the limit the upstream
		// connection is closed, which ends whatever is waiting on it.
		x.rt = &reqTimer{}
		t := time.AfterFunc(rt, x.rt.fire)
		defer t.Stop()
	}
	for attempt := 0; ; attempt++ {
		u, err = up.get(d, attempt > 0)
		if err != nil {
			return p.localError(d, http.StatusServiceUnavailable, upstreamReason(err), "upstream "+err.Error())
		}
		if x.rt != nil {
			x.rt.cur.Store(u)
			if x.rt.expired.Load() {
				u.c.Close()
			}
		}
		writeRequest(u, req, extra, drop, host)
		x.bodyErr, x.watching = nil, false
		u.aborted.Store(false)
		if req.reqHasBody() {
			// No response is due before the body is in; the body's own
			// idle limits apply meanwhile.
			u.io.readBy(time.Time{})
			// The head goes out now: a client that sent Expect:
			// 100-continue waits for the app's 100 before sending the body.
			if err = u.bw.Flush(); err != nil {
				up.done(u, false)
				if u.reused && attempt == 0 { // nothing of the body was read yet
					continue
				}
				return p.localError(d, http.StatusBadGateway, "upstream_error", "upstream write: "+err.Error())
			}
			// The body goes up while the response comes back, so an app that
			// answers early (or sends 100 Continue) is not deadlocked.
			bodyErr := make(chan error, 1)
			x.bodyErr = bodyErr
			go func(u *upConn) {
				d.io.readIdle(p.cfg.BodyIdleTimeout)
				bp := bufPool.Get().(*[]byte)
				_, err := relayBody(u.bw, d.br, req, false, *bp)
				bufPool.Put(bp)
				if err == nil {
					err = u.bw.Flush()
				}
				d.io.readBy(time.Time{})
				if err == nil {
					// The request is in: the response is due now.
					u.io.readBy(limitFor(p.cfg.ResponseHeadersTimeout))
				} else if !u.io.wfail.Load() {
					// The client's side failed (bad framing, stalled,
					// gone): abandon the upstream request rather than
					// leave the app waiting for the rest of the body.
					u.aborted.Store(true)
					u.c.Close()
				}
				bodyErr <- err
			}(u)
		} else {
			u.io.readBy(limitFor(p.cfg.ResponseHeadersTimeout))
			if err = u.bw.Flush(); err != nil {
				up.done(u, false)
				if u.reused && attempt == 0 {
					continue // a pooled connection the peer had closed
				}
				return p.localError(d, http.StatusBadGateway, "upstream_error", "upstream write: "+err.Error())
			}
			d.w.start(d, u)
			x.watching = true
		}
		res, retry := p.relayResponse(d, u, isHead, &x)
		if retry && attempt == 0 {
			up.done(u, false)
			continue
		}
		if res.upKeep && res.reason == "" {
			u.io.readBy(time.Time{})
		}
		up.done(u, res.upKeep && res.reason == "")
		if res.status != statusClientClosed {
			if err := d.bw.Flush(); err != nil {
				res.keep = false
			}
		}
		return res
	}
}

// xchg is the state of one exchange that relayResponse needs.
type xchg struct {
	bodyErr  chan error // the request body's outcome, nil without a body
	watching bool       // the client watch (dconn.w) runs
	rt       *reqTimer  // RequestTimeout, nil without one
}

// reqTimer closes the exchange's current upstream connection at
// RequestTimeout.
type reqTimer struct {
	cur     atomic.Pointer[upConn]
	expired atomic.Bool
}

func (r *reqTimer) fire() {
	r.expired.Store(true)
	if u := r.cur.Load(); u != nil {
		u.c.Close()
	}
}

func (x *xchg) expired() bool { return x.rt != nil && x.rt.expired.Load() }

// stopWatch ends the client watch, if any, and reports whether the
// client had gone away.
func (p *Proxy) stopWatch(d *dconn, x *xchg) bool {
	if !x.watching {
		return false
	}
	x.watching = false
	return d.w.stop(d)
}

// timedOut counts one timeout and logs it.
func (p *Proxy) timedOut(d *dconn, kind, msg string) {
	dir := d.info.direction()
	p.m.Timeouts.WithLabelValues(dir, kind).Inc()
	p.log.Debug("timeout", "direction", dir, "kind", kind, "peer", d.info.src, "detail", msg)
}

// relayResponse reads the upstream's response (and any 1xx before it) and
// writes it downstream. retry reports a reused connection that failed before
// any response byte, for a request without a body: safe to send again.
func (p *Proxy) relayResponse(d *dconn, u *upConn, isHead bool, x *xchg) (exchangeResult, bool) {
	req := &d.req
	resp := &u.resp
	for {
		err := resp.read(u.br, false)
		if err != nil {
			gone := p.stopWatch(d, x)
			var berr error
			bodyFirst := false
			if x.bodyErr != nil {
				// The body goroutine closes the upstream when the
				// client's side of the body fails; otherwise the upstream
				// failed first, and the body goroutine is stopped on both
				// sides (it may be waiting for the app or the client).
				bodyFirst = u.aborted.Load() && !x.expired()
				if !bodyFirst {
					u.c.Close()
					d.io.readBy(aLongTimeAgo)
				}
				berr = <-x.bodyErr
			} else if !gone && !x.expired() && u.reused && (errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) || isReset(err)) && len(resp.buf) == 0 {
				return exchangeResult{}, true
			}
			var r exchangeResult
			switch {
			case gone:
				// The client went away: nobody to answer.
				r = exchangeResult{status: statusClientClosed, reason: reasonClientClosed}
			case bodyFirst && errors.Is(berr, errBadHead):
				r = p.localError(d, http.StatusBadRequest, reasonBadBody, "request body: "+berr.Error())
			case bodyFirst && isTimeout(berr):
				p.timedOut(d, timeoutBodyIdle, "request body")
				r = p.localError(d, http.StatusRequestTimeout, reasonBodyTimeout, fmt.Sprintf("request body: no data for %s", p.cfg.BodyIdleTimeout))
			case bodyFirst:
				r = exchangeResult{status: statusClientClosed, reason: reasonClientClosed}
			case x.expired():
				p.timedOut(d, timeoutRequest, "request")
				r = p.localError(d, http.StatusGatewayTimeout, reasonRequestTimeout, fmt.Sprintf("request not answered within %s", p.cfg.RequestTimeout))
			case isTimeout(err):
				p.timedOut(d, timeoutResponseHeaders, "response head")
				r = p.localError(d, http.StatusGatewayTimeout, reasonUpstreamTimeout, fmt.Sprintf("upstream sent no response head within %s", p.cfg.ResponseHeadersTimeout))
			default:
				status, reason := http.StatusBadGateway, "upstream_error"
				if errors.Is(err, errBadHead) || errors.Is(err, errHeadTooLarge) {
					reason = "upstream_bad_response"
				}
				r = p.localError(d, status, reason, "upstream response: "+err.Error())
			}
			r.keep = false
			return r, false
		}
		if resp.status >= 100 && resp.status < 200 && resp.status != 101 {
			writeResponseHead(d.bw, resp, "")
			d.bw.Flush()
			if x.bodyErr == nil {
				u.io.readBy(limitFor(p.cfg.ResponseHeadersTimeout))
			}
			continue
		}
		break
	}
	if p.stopWatch(d, x) {
		// The client left just as the response came.
		return exchangeResult{status: statusClientClosed, reason: reasonClientClosed}, false
	}
	keep := !req.close && req.minor == 1
	if resp.status == 101 {
		if !req.upgrade {
			r := p.localError(d, http.StatusBadGateway, "upstream_bad_response", "upstream switched protocols without an upgrade request")
			r.keep = false
			return r, false
		}
		writeResponseHead(d.bw, resp, "")
		u.io.readBy(time.Time{})
		if err := d.bw.Flush(); err == nil {
			// The connection is now a tunnel; bytes already buffered on
			// either side go first.
			a := &bufferedConn{Conn: d.c, r: d.br}
			b := &bufferedConn{Conn: u.c, r: u.br}
			relay(a, b, p.cfg.IdleTimeout)
		}
		return exchangeResult{status: 101, keep: false}, false
	}
	hasBody := resp.respHasBody(isHead)
	untilEOF := hasBody && !resp.chunked && resp.contentLength < 0
	dechunk := hasBody && resp.chunked && req.minor == 0
	keep = keep && !untilEOF && !dechunk
	conn := ""
	if !keep {
		conn = "close"
	}
	if dechunk {
		// An HTTP/1.0 client cannot read chunked framing: send the decoded
		// body and end it by closing.
		saved := resp.chunked
		resp.chunked = false
		writeResponseHead(d.bw, resp, conn)
		resp.chunked = saved
	} else {
		writeResponseHead(d.bw, resp, conn)
	}
	var err error
	if hasBody {
		// A streamed response may last; silence may not.
		u.io.readIdle(p.cfg.BodyIdleTimeout)
		bp := bufPool.Get().(*[]byte)
		if dechunk {
			_, err = copyAll(d.bw, httputil.NewChunkedReader(u.br), *bp)
		} else {
			_, err = relayBody(d.bw, u.br, resp, untilEOF, *bp)
		}
		bufPool.Put(bp)
		if err != nil && isTimeout(err) {
			p.timedOut(d, timeoutBodyIdle, "response body")
		}
	}
	if untilEOF || dechunk {
		// The body ended with the upstream's close: nothing to release.
		if ferr := d.bw.Flush(); err == nil {
			err = ferr
		}
	}
	// Otherwise the last bytes are still buffered: exchange flushes them
	// after returning the upstream connection.
	upKeep := !resp.close && !untilEOF
	if x.bodyErr != nil {
		if berr := <-x.bodyErr; berr != nil {
			keep, upKeep = false, false
		}
	}
	if err != nil {
		keep, upKeep = false, false
	}
	return exchangeResult{status: resp.status, keep: keep, upKeep: upKeep}, false
}

// writeResponseHead writes a response head downstream; conn, if set, is the
// Connection header to send ("close").
func writeResponseHead(w *bufio.Writer, resp *head, conn string) {
	w.WriteString("HTTP/1.1 ")
	w.WriteString(strconv.Itoa(resp.status))
	w.WriteByte(' ')
	w.Write(resp.bytesOf(resp.reason))
	w.WriteString("\r\n")
	resp.writeFields(w, nil)
	resp.writeFraming(w)
	if conn != "" {
		w.WriteString("Connection: ")
		w.WriteString(conn)
		w.WriteString("\r\n")
	}
	w.WriteString("\r\n")
}

// localError answers a request on the sidecar's own behalf.
func (p *Proxy) localError(d *dconn, status int, reason, msg string) exchangeResult {
	body := "meshauth sidecar: " + msg + "\n"
	if status == http.StatusForbidden && reason == "rbac_denied" {
		body = msg + "\n"
	}
	keep := !d.req.close && d.req.minor == 1 && !d.req.reqHasBody()
	w := d.bw
	w.WriteString("HTTP/1.1 ")
	w.WriteString(strconv.Itoa(status))
	w.WriteByte(' ')
	w.WriteString(http.StatusText(status))
	w.WriteString("\r\nContent-Type: text/plain; charset=utf-8\r\n" + reasonHeader + ": ")
	w.WriteString(reason)
	w.WriteString("\r\nContent-Length: ")
	w.WriteString(strconv.Itoa(len(body)))
	if !keep {
		w.WriteString("\r\nConnection: close")
	}
	w.WriteString("\r\n\r\n")
	if !d.req.methodIs("HEAD") {
		w.WriteString(body)
	}
	w.Flush()
	return exchangeResult{status: status, reason: reason, keep: keep}
}

func isReset(err error) bool {
	var op *net.OpError
	return errors.As(err, &op) && !op.Timeout()
}

// bufferedConn reads through a bufio.Reader that may hold bytes already.
type bufferedConn struct {
	net.Conn
	r *bufio.Reader
}

func (b *bufferedConn) Read(p []byte) (int, error) { return b.r.Read(p) }

func (b *bufferedConn) CloseWrite() error {
	if cw, ok := b.Conn.(closeWriter); ok {
		return cw.CloseWrite()
	}
	return nil
}

// serveH1 runs the request loop of one downstream connection. next is
// called for each request head and does the exchange.
func (p *Proxy) serveH1(c net.Conn, info *connInfo, next func(d *dconn) exchangeResult) {
	// Writes to the client are idle-limited: one that stops reading its
	// response does not hold the connection.
	x := newIdleIO(c, p.cfg.BodyIdleTimeout)
	d := &dconn{c: c, io: x, br: getReader(x), bw: getWriter(x), info: info}
	defer func() {
		c.Close()
		putReader(d.br)
		putWriter(d.bw)
	}()
	for {
		// Idle between requests for at most IdleTimeout; once a request
		// starts, its head must be complete within RequestHeadersTimeout.
		d.io.readBy(limitFor(p.cfg.IdleTimeout))
		_, err := d.br.Peek(1)
		if err == nil {
			d.io.readBy(limitFor(p.cfg.RequestHeadersTimeout))
			if err = d.req.read(d.br, true); isTimeout(err) {
				d.req.close = true
				p.timedOut(d, timeoutRequestHeaders, "request head")
				p.localError(d, http.StatusRequestTimeout, reasonHeadersTimeout, fmt.Sprintf("request head not complete within %s", p.cfg.RequestHeadersTimeout))
				p.access.LogAttrs(context.Background(), slog.LevelWarn, "bad request",
					slog.String("source", sourceName(info)), slog.String("reason", reasonHeadersTimeout),
					slog.String("error", "request head not complete within "+p.cfg.RequestHeadersTimeout.String()))
				return
			}
		}
		if err != nil {
			if errors.Is(err, errBadHead) || errors.Is(err, errHeadTooLarge) {
				d.req.close = true
				status := http.StatusBadRequest
				if errors.Is(err, errHeadTooLarge) {
					status = http.StatusRequestHeaderFieldsTooLarge
				}
				p.localError(d, status, "bad_request", err.Error())
				p.access.LogAttrs(context.Background(), slog.LevelWarn, "bad request",
					slog.String("source", sourceName(info)), slog.String("error", err.Error()))
			} else if !errors.Is(err, io.EOF) && !errors.Is(err, os.ErrDeadlineExceeded) && !errors.Is(err, net.ErrClosed) {
				p.log.Debug("reading request", "peer", info.src, "error", err.Error())
			}
			return
		}
		d.io.readBy(time.Time{})
		res := next(d)
		if !res.keep {
			return
		}
	}
}

// logH1 writes the access-log line of one request.
func (p *Proxy) logH1(dir string, d *dconn, dest string, status int, decision, reason string, start time.Time) {
	if !p.access.Enabled(context.Background(), slog.LevelInfo) {
		return
	}
	info := d.info
	host := ""
	if d.req.hasHost {
		host = d.req.str(d.req.host)
	}
	attrs := []slog.Attr{
		slog.String("direction", dir),
		slog.String("source", sourceName(info)),
		slog.String("destination", dest),
		slog.String("tls_mode", info.mode),
		slog.String("method", d.req.str(d.req.method)),
		slog.String("host", host),
		slog.String("path", d.req.path()),
		slog.Int("status", status),
		slog.String("decision", decision),
		slog.String("reason", reason),
		slog.Duration("duration", time.Since(start)),
	}
	if len(d.dropped) > 0 {
		attrs = append(attrs, slog.Any("dropped_headers", d.dropped))
	}
	p.access.LogAttrs(context.Background(), slog.LevelInfo, "http", attrs...)
}

// ---- server sidecar: inbound HTTP ----

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
	if a.u != nil && !fresh && (!d.req.reqHasBody() || time.Since(a.u.idle) < time.Second) {
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
	p.serveH1(c, info, func(d *dconn) exchangeResult {
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
		if snap != nil && snap.RBAC != nil {
			// Only built when rules may look at them (saves two
			// allocations per request with RBAC off).
			req.Method, req.Path = d.req.str(d.req.method), d.req.path()
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
		res := p.exchange(d, app, xfcc, d.dropInboundField, "")
		p.cached.requests("inbound", res.status).Inc()
		decision := "allow"
		if res.reason != "" {
			decision = "error"
		}
		p.logH1("inbound", d, info.app, res.status, decision, res.reason, start)
		return res
	})
}

// ---- client sidecar: outbound HTTP ----

// poolSide is the client sidecar's upstream for one request: a pooled
// connection to ep, mTLS or plaintext by the route's mode.
type poolSide struct {
	p    *Proxy
	key  string
	ep   string
	dial func(ctx context.Context, addr string) (net.Conn, error)
}

func (s *poolSide) get(d *dconn, fresh bool) (*upConn, error) {
	if !fresh {
		if u := s.p.pool.get(s.key); u != nil {
			return u, nil
		}
	}
	gen := s.p.pool.gen.Load() // before the handshake that verifies the server
	c, err := s.dial(context.Background(), s.ep)
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
	p.serveH1(c, info, func(d *dconn) exchangeResult {
		start := time.Now()
		host, port := info.origHost, info.origPort
		if host == "" {
			if d.req.methodIs("CONNECT") {
				p.connectH1(d)
				return exchangeResult{keep: false}
			}
			var err error
			host, port, err = absoluteTarget(d.req.str(d.req.target))
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
			side.key, side.ep = "plain|"+hostport, hostport
			side.dial = plainDial
			res = p.exchange(d, side, nil, nil, hostport)
		case noEndpoints:
			info.mode = string(o.route.mode)
			dest = "" // no endpoint chosen: the access log has no destination
			res = p.localError(d, http.StatusServiceUnavailable, "no_endpoints", "service "+o.route.service+" has no endpoints")
		default:
			rt := o.route
			info.mode = string(rt.mode)
			dest = o.endpoint()
			side.key, side.ep = rt.transportKey+"|"+dest, dest
			if rt.mode == policy.ClientDisable {
				side.dial = plainDial
			} else {
				cfg := p.upstreamFor(rt).httpTLS
				side.dial = func(ctx context.Context, addr string) (net.Conn, error) { return p.dialTLS(ctx, addr, cfg) }
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
	target := d.req.str(d.req.target)
	host, ps, err := net.SplitHostPort(target)
	port, perr := parsePort(ps)
	if err != nil || perr != nil || host == "" {
		d.req.close = true
		p.localError(d, http.StatusBadRequest, "bad_proxy_request", "CONNECT target "+strconv.Quote(target)+": want host:port")
		return
	}
	o := p.decide(host, port, false)
	dest := o.target
	if rt := o.route; rt != nil && rt.http {
		// CONNECT to an HTTP/1.x service port: the port's protocol
		// decides, so the tunnel's requests are proxied one by one (the
		// server sidecar parses them and sets XFCC either way), never
		// relayed as bytes.
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
		d.req.close = true
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
		d.req.close = true
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
