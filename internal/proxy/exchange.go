package proxy

import (
	"bufio"
	"bytes"
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
	"sync"
	"sync/atomic"
	"time"

	"github.com/meshauth/meshauth/internal/proxy/h1"
)

// The HTTP engine: one goroutine per downstream connection reads requests
// with the codec in package h1 and forwards each over an upstream connection —
// the app (server sidecar, one app connection per downstream connection) or
// a pooled mTLS connection to the server sidecar (client sidecar). No
// per-request goroutine unless the request has a body.
//
// This file is the exchange both sides share (serveH1, exchange,
// relayResponse, localError); the server sidecar's request handling is in
// inboundhttp.go (serveInboundH1), the client sidecar's in outboundhttp.go
// (serveOutboundH1, connectH1), the idle upstream connections in pool.go.

// connBufSize is the size of each connection's read and write buffers
// (net/http's too). Every downstream and upstream connection holds one of
// each while it is open: at 16 KiB, with 16 keep-alive clients, they were
// 1.05 MB of the 1.8 MB a sidecar's heap profile showed under load
// (BENCHMARKS.md, issue #15, "Sidecar memory under load"). Nothing needs
// them larger: a head line longer than the reader is gathered by
// h1.Head.Read (the head is bounded, 64 KiB, not each line), a chunk line
// by the relay, and bodies move through the relay's 64 KiB buffer, which
// bufio reads into and writes from directly.
const connBufSize = 4 << 10

var (
	readerPool = sync.Pool{New: func() any { return bufio.NewReaderSize(nil, connBufSize) }}
	writerPool = sync.Pool{New: func() any { return bufio.NewWriterSize(nil, connBufSize) }}
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
	resp   h1.Head
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

// dconn is one downstream connection being served.
type dconn struct {
	c    net.Conn
	io   *idleIO // under br and bw: deadlines
	br   *bufio.Reader
	bw   *bufio.Writer
	req  h1.Head
	info *connInfo
	w    clientWatch
	x    xchg // the exchange in progress
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

// exchange forwards one request (already read into d.req) and its response.
func (p *Proxy) exchange(d *dconn, up upstreamSide, extra []byte, drop func([]byte) bool, host string) exchangeResult {
	req := &d.req
	isHead := req.MethodIs("HEAD")
	var (
		u   *upConn
		err error
	)
	// The exchange's state lives in the connection (one exchange at a
	// time), not in a fresh allocation per request.
	x := &d.x
	x.bodyErr, x.watching, x.rt = nil, false, nil
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
		h1.WriteRequestHead(u.bw, req, extra, drop, host)
		x.bodyErr, x.watching = nil, false
		x.head.done = false // no body goroutine runs yet
		u.aborted.Store(false)
		if req.ReqHasBody() {
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
				err := relayBody(u.bw, d.br, req, false, dropInbound)
				if err == nil {
					err = u.bw.Flush()
				}
				d.io.readBy(time.Time{})
				if err == nil {
					// The request is in: the response is due now.
					x.responseHeadDue(u, p.cfg.ResponseHeadersTimeout)
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
		res, retry := p.relayResponse(d, u, isHead, x)
		if retry && attempt == 0 {
			up.done(u, false)
			continue
		}
		// A kept connection keeps the read deadline of its last response:
		// nothing reads it until the next exchange sets its own, and the
		// pool's check of idle connections (peerGone) ignores deadlines.
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
	// head orders the body goroutine's "the response head is due now"
	// deadline against relayResponse having the head already (an app may
	// answer before the sidecar has seen its body out): a late deadline
	// would cut the response body it is streaming.
	head struct {
		sync.Mutex
		done bool
	}
}

// responseHeadDue arms the response-head limit unless the head is in.
func (x *xchg) responseHeadDue(u *upConn, d time.Duration) {
	x.head.Lock()
	defer x.head.Unlock()
	if !x.head.done {
		u.io.readBy(limitFor(d))
	}
}

// headIn records that the final response head was read.
func (x *xchg) headIn() {
	x.head.Lock()
	x.head.done = true
	x.head.Unlock()
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

// abortBody stops the request body's goroutine, if one runs, and waits
// for it: the upstream is closed and the client's read ends at once.
func (x *xchg) abortBody(d *dconn, u *upConn) {
	if x.bodyErr == nil {
		return
	}
	u.c.Close()
	d.io.readBy(aLongTimeAgo)
	<-x.bodyErr
	x.bodyErr = nil
}

// relayResponse reads the upstream's response (and any 1xx before it) and
// writes it downstream. retry reports a reused connection that failed before
// any response byte, for a request without a body: safe to send again.
func (p *Proxy) relayResponse(d *dconn, u *upConn, isHead bool, x *xchg) (exchangeResult, bool) {
	req := &d.req
	resp := &u.resp
	for {
		err := resp.Read(u.br, false)
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
			} else if !gone && !x.expired() && u.reused && (errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) || isReset(err)) && resp.Len() == 0 {
				return exchangeResult{}, true
			}
			var r exchangeResult
			switch {
			case gone:
				// The client went away: nobody to answer.
				r = exchangeResult{status: statusClientClosed, reason: reasonClientClosed}
			case bodyFirst && errors.Is(berr, h1.ErrBadHead):
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
				if errors.Is(err, h1.ErrBadHead) || errors.Is(err, h1.ErrHeadTooLarge) {
					reason = "upstream_bad_response"
				}
				r = p.localError(d, status, reason, "upstream response: "+err.Error())
			}
			r.keep = false
			return r, false
		}
		if resp.Status >= 100 && resp.Status < 200 && resp.Status != 101 {
			h1.WriteResponseHead(d.bw, resp, "")
			d.bw.Flush()
			if x.bodyErr == nil {
				u.io.readBy(limitFor(p.cfg.ResponseHeadersTimeout))
			}
			continue
		}
		break
	}
	x.headIn()
	if p.stopWatch(d, x) {
		// The client left just as the response came.
		return exchangeResult{status: statusClientClosed, reason: reasonClientClosed}, false
	}
	keep := !req.Close && req.Minor == 1
	if resp.Status == 101 {
		// The request body is still going up on its own goroutine, which
		// reads the client connection's buffer: the switch waits for it
		// (a client uses the new protocol only once its request is all
		// sent, RFC 9110 7.8), or ends it when the switch is refused. A
		// tunnel started beside it would have two goroutines reading one
		// buffer, and the buffer back in the pool while one still did.
		if !req.Upgrade {
			x.abortBody(d, u)
			r := p.localError(d, http.StatusBadGateway, "upstream_bad_response", "upstream switched protocols without an upgrade request")
			r.keep = false
			return r, false
		}
		if x.bodyErr != nil {
			berr := <-x.bodyErr
			x.bodyErr = nil
			if berr != nil {
				u.c.Close()
				return exchangeResult{status: statusClientClosed, reason: reasonClientClosed}, false
			}
		}
		h1.WriteResponseHead(d.bw, resp, "")
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
	hasBody := resp.RespHasBody(isHead)
	untilEOF := hasBody && !resp.Chunked && resp.ContentLength < 0
	dechunk := hasBody && resp.Chunked && req.Minor == 0
	keep = keep && !untilEOF && !dechunk
	conn := ""
	if !keep {
		conn = "close"
	}
	if dechunk {
		// An HTTP/1.0 client cannot read chunked framing: send the decoded
		// body and end it by closing.
		saved := resp.Chunked
		resp.Chunked = false
		h1.WriteResponseHead(d.bw, resp, conn)
		resp.Chunked = saved
	} else {
		h1.WriteResponseHead(d.bw, resp, conn)
	}
	var err error
	if hasBody {
		// A streamed response may last; silence may not.
		u.io.readIdle(p.cfg.BodyIdleTimeout)
		if dechunk {
			bp := bufPool.Get().(*[]byte)
			_, err = h1.CopyAll(d.bw, httputil.NewChunkedReader(u.br), *bp)
			bufPool.Put(bp)
		} else {
			err = relayBody(d.bw, u.br, resp, untilEOF, nil)
		}
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
	upKeep := !resp.Close && !untilEOF
	if x.bodyErr != nil {
		if berr := <-x.bodyErr; berr != nil {
			keep, upKeep = false, false
		}
	}
	if err != nil {
		keep, upKeep = false, false
	}
	return exchangeResult{status: resp.Status, keep: keep, upKeep: upKeep}, false
}

// relayBody relays a message body (h1.RelayBody). One already whole in
// br's buffer, as a small message is, goes from there without a 64 KiB
// relay buffer (under small requests, two of those were live in each
// sidecar's heap profile, and sync.Pool drops and reallocates them across
// GCs), and without copying it through one.
func relayBody(w *bufio.Writer, br *bufio.Reader, h *h1.Head, untilEOF bool, dropTrailer func([]byte) bool) error {
	if done, err := h1.RelayBuffered(w, br, h); done {
		return err
	}
	bp := bufPool.Get().(*[]byte)
	_, err := h1.RelayBody(w, br, h, untilEOF, *bp, dropTrailer)
	bufPool.Put(bp)
	return err
}

// localError answers a request on the sidecar's own behalf.
func (p *Proxy) localError(d *dconn, status int, reason, msg string) exchangeResult {
	body := "meshauth sidecar: " + msg + "\n"
	if status == http.StatusForbidden && reason == "rbac_denied" {
		body = msg + "\n"
	}
	keep := !d.req.Close && d.req.Minor == 1 && !d.req.ReqHasBody()
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
	if !d.req.MethodIs("HEAD") {
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
// called for each request head and does the exchange. A connection that
// starts with the HTTP/2 preface (prior knowledge) is handed to h2 instead
// (the preface still unread) when h2 is not nil.
func (p *Proxy) serveH1(c net.Conn, info *connInfo, h2 func(net.Conn), next func(d *dconn) exchangeResult) {
	// Writes to the client are idle-limited: one that stops reading its
	// response does not hold the connection.
	x := newIdleIO(c, p.cfg.BodyIdleTimeout)
	d := &dconn{c: c, io: x, br: getReader(x), bw: getWriter(x), info: info}
	defer func() {
		c.Close()
		if d.br != nil {
			putReader(d.br)
		}
		putWriter(d.bw)
	}()
	for first := true; ; first = false {
		// Idle between requests for at most IdleTimeout; once a request
		// starts, its head must be complete within RequestHeadersTimeout.
		d.io.readBy(limitFor(p.cfg.IdleTimeout))
		_, err := d.br.Peek(1)
		// A head that is all in already needs no deadline of its own (nor
		// clearing after): saves two deadline moves per request. The idle
		// deadline stays on the connection during the exchange; whatever
		// reads it meanwhile (a request body, the client watch, a relay)
		// sets its own.
		headDeadline := false
		if err == nil && !headBuffered(d.br, first && h2 != nil) {
			headDeadline = true
			d.io.readBy(limitFor(p.cfg.RequestHeadersTimeout))
		}
		if err == nil {
			if first && h2 != nil && prefaceNext(d.br) {
				d.io.readBy(time.Time{})
				// The reader is not pooled again: http2's frame reader
				// goroutine may still be in its Read after ServeConn
				// returns, and would write into the buffer of whichever
				// connection got it next.
				br := d.br
				d.br = nil
				h2(&bufferedConn{Conn: c, r: br})
				return
			}
			if err = d.req.Read(d.br, true); isTimeout(err) {
				d.req.Close = true
				p.timedOut(d, timeoutRequestHeaders, "request head")
				p.localError(d, http.StatusRequestTimeout, reasonHeadersTimeout, fmt.Sprintf("request head not complete within %s", p.cfg.RequestHeadersTimeout))
				p.access.LogAttrs(context.Background(), slog.LevelWarn, "bad request",
					slog.String("source", sourceName(info)), slog.String("reason", reasonHeadersTimeout),
					slog.String("error", "request head not complete within "+p.cfg.RequestHeadersTimeout.String()))
				return
			}
		}
		if err != nil {
			if errors.Is(err, h1.ErrBadHead) || errors.Is(err, h1.ErrHeadTooLarge) {
				d.req.Close = true
				status := http.StatusBadRequest
				if errors.Is(err, h1.ErrHeadTooLarge) {
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
		if headDeadline {
			d.io.readBy(time.Time{})
		}
		res := next(d)
		if !res.keep {
			return
		}
	}
}

// headBuffered reports whether br holds a whole request head: a request
// line (not the empty lines a client may send before one) and the empty
// line that ends the head. With mayBeH2, bytes that could still be the
// start of the HTTP/2 preface (which contains an empty line) do not count.
func headBuffered(br *bufio.Reader, mayBeH2 bool) bool {
	buf, _ := br.Peek(br.Buffered())
	if len(buf) == 0 || buf[0] == '\r' || buf[0] == '\n' {
		return false
	}
	if mayBeH2 && len(buf) < len(h2Preface) && bytes.HasPrefix([]byte(h2Preface), buf[:min(len(buf), 3)]) {
		return false
	}
	return bytes.Index(buf, crlfcrlf) > 0
}

var crlfcrlf = []byte("\r\n\r\n")

// prefaceNext reports whether br's next bytes are the HTTP/2 client
// preface. It reads only as far as they match it: an HTTP/1.x request
// differs by its second byte at the latest, so it never waits for bytes a
// client has not sent.
func prefaceNext(br *bufio.Reader) bool {
	for n := 1; n <= len(h2Preface); n++ {
		b, err := br.Peek(n)
		if err != nil || b[n-1] != h2Preface[n-1] {
			return false
		}
	}
	return true
}

// reasonHeader tells a caller why the sidecar, not the app, answered.
const reasonHeader = "X-Meshauth-Reason"
