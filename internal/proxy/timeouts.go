package proxy

import (
	"errors"
	"io"
	"net"
	"os"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
)

// Resource limits of the data path. No peer — a client that stops
// sending, an app that never answers, a server that closes a pooled
// connection — can hold a goroutine or a file descriptor for longer than
// one of these limits:
//
//   - a request head must be complete RequestHeadersTimeout after its
//     first byte (slowloris); a keep-alive connection may sit idle between
//     requests for IdleTimeout;
//   - the upstream must start its response (status line and headers)
//     ResponseHeadersTimeout after the request was sent (504 otherwise);
//   - a request or response body in flight may go BodyIdleTimeout without
//     a byte moving in the direction concerned, reading or writing: a
//     stream with traffic is never cut, however long it lasts;
//   - with RequestTimeout set, a whole exchange is bounded;
//   - a TCP relay idle in both directions for IdleTimeout is closed, and
//     one whose receiver stops reading for IdleTimeout too;
//   - a client that goes away while its request waits for the upstream
//     is noticed (watchClient) and the upstream request abandoned;
//   - pooled upstream connections are reaped on a timer when idle too
//     long or closed by their server (reapPool);
//   - at most MaxConnections downstream connections are served at once.

// idleIO is the reader/writer under a connection's bufio buffers. While
// an idle limit is set for a direction, every read (write) that reaches
// the socket first moves the connection's read (write) deadline to now +
// limit, so the limit applies to silence, not to the length of a stream.
// The deadline is moved at most every limit/8, so a silent peer is cut
// between 7/8 of the limit and the limit.
type idleIO struct {
	rw io.ReadWriter
	c  net.Conn
	// limits in nanoseconds; 0: leave the deadline as last set.
	rIdle, wIdle atomic.Int64
	// when the deadline was last moved (UnixNano); 0 forces a move.
	rSet, wSet atomic.Int64
	// wfail: a write failed (the peer's side, not ours, broke).
	wfail atomic.Bool
}

func newIdleIO(c net.Conn, writeIdle time.Duration) *idleIO {
	x := &idleIO{rw: fastIO(c), c: c}
	x.wIdle.Store(int64(writeIdle))
	return x
}

func (x *idleIO) Read(p []byte) (int, error) {
	if d := x.rIdle.Load(); d > 0 {
		now := time.Now()
		if n := now.UnixNano(); n-x.rSet.Load() > d/8 {
			x.c.SetReadDeadline(now.Add(time.Duration(d)))
			x.rSet.Store(n)
		}
	}
	return x.rw.Read(p)
}

func (x *idleIO) Write(p []byte) (int, error) {
	if d := x.wIdle.Load(); d > 0 {
		now := time.Now()
		if n := now.UnixNano(); n-x.wSet.Load() > d/8 {
			x.c.SetWriteDeadline(now.Add(time.Duration(d)))
			x.wSet.Store(n)
		}
	}
	n, err := x.rw.Write(p)
	if err != nil {
		x.wfail.Store(true)
	}
	return n, err
}

// readIdle makes reads idle-limited by d (0: no limit at all).
func (x *idleIO) readIdle(d time.Duration) {
	x.rIdle.Store(int64(d))
	x.rSet.Store(0)
	if d <= 0 {
		x.c.SetReadDeadline(time.Time{})
	}
}

// readBy sets a fixed read deadline (zero: none), ending any idle limit.
func (x *idleIO) readBy(t time.Time) {
	x.rIdle.Store(0)
	x.c.SetReadDeadline(t)
}

// limitFor returns now + d, or the zero time (no deadline) when d <= 0.
func limitFor(d time.Duration) time.Time {
	if d <= 0 {
		return time.Time{}
	}
	return time.Now().Add(d)
}

// aLongTimeAgo interrupts a blocked read.
var aLongTimeAgo = time.Unix(1, 0)

// Timeout kinds for logs and meshauth_sidecar_timeouts_total.
const (
	timeoutRequestHeaders  = "request_headers"
	timeoutResponseHeaders = "response_headers"
	timeoutBodyIdle        = "body_idle"
	timeoutRequest         = "request"
	timeoutIdle            = "idle"
)

// Reasons of requests the sidecar ended itself because of a limit.
const (
	reasonUpstreamTimeout = "upstream_timeout"     // no response head in time (504)
	reasonRequestTimeout  = "request_timeout"      // RequestTimeout (504)
	reasonBodyTimeout     = "request_body_timeout" // client stalled its body (408)
	reasonBadBody         = "bad_request_body"     // malformed chunked body (400)
	reasonClientClosed    = "client_closed"        // client went away first (499, nothing sent)
	reasonHeadersTimeout  = "request_headers_timeout"
	reasonMaxConnections  = "max_connections"
)

// statusClientClosed is what the access log shows for a request whose
// client went away before its response (nginx's 499): nothing is sent.
const statusClientClosed = 499

func isTimeout(err error) bool { return errors.Is(err, os.ErrDeadlineExceeded) }

// clientWatch notices a client that goes away while its request waits
// for the upstream. clientWatchDelay after start it reads ahead on the
// downstream connection without consuming anything (Peek): EOF or an
// error there means the client is gone, and the upstream connection is
// closed, which ends the wait. stop ends the watch — it must be called
// before d.br is used again — and reports whether the client was gone.
// Bytes that arrive meanwhile (a pipelined request) stay buffered for the
// next read. One timer per downstream connection, reused: a request
// answered within the delay costs no goroutine and no allocation.
type clientWatch struct {
	t    *time.Timer
	d    *dconn
	up   atomic.Pointer[upConn]
	gone atomic.Bool
	wg   sync.WaitGroup
	// mu orders fire's clearing of the read deadline against stop's
	// moving it to the past: a watch that stop has begun to end does not
	// start its read.
	mu       sync.Mutex
	stopping bool
}

func (w *clientWatch) start(d *dconn, u *upConn) {
	w.up.Store(u)
	w.gone.Store(false)
	w.mu.Lock()
	w.stopping = false
	w.mu.Unlock()
	w.wg.Add(1)
	if w.t == nil {
		w.d = d
		w.t = time.AfterFunc(clientWatchDelay, w.fire)
		return
	}
	w.t.Reset(clientWatchDelay)
}

func (w *clientWatch) fire() {
	defer w.wg.Done()
	// serveH1 leaves the request head's (or the idle) read deadline on
	// the connection during the exchange; the watch reads with none, and
	// stop moves it to the past to end this Peek.
	w.mu.Lock()
	if w.stopping {
		w.mu.Unlock()
		return
	}
	w.d.c.SetReadDeadline(time.Time{})
	w.mu.Unlock()
	if _, err := w.d.br.Peek(1); err != nil && !isTimeout(err) {
		w.gone.Store(true)
		if u := w.up.Load(); u != nil {
			u.c.Close()
		}
	}
}

func (w *clientWatch) stop(d *dconn) bool {
	defer w.up.Store(nil)
	if w.t.Stop() {
		w.wg.Done() // never fired
		return false
	}
	w.mu.Lock()
	w.stopping = true
	d.c.SetReadDeadline(aLongTimeAgo)
	w.mu.Unlock()
	w.wg.Wait()
	d.c.SetReadDeadline(time.Time{})
	return w.gone.Load()
}

// clientWatchDelay: a request that is answered sooner costs no watcher.
const clientWatchDelay = 500 * time.Millisecond

// tcpOf returns the TCP connection under c, if any.
func tcpOf(c net.Conn) *net.TCPConn {
	for {
		switch x := c.(type) {
		case *net.TCPConn:
			return x
		case *batchedTLS:
			c = x.raw.Conn
		case *batchConn:
			c = x.Conn
		case *peekedConn:
			c = x.Conn
		case *bufferedConn:
			c = x.Conn
		default:
			return nil
		}
	}
}

// peerGone reports whether an idle connection should not be used again:
// its peer closed it (FIN or RST), or sent something unasked (a TLS
// close_notify, a stray response). A non-blocking MSG_PEEK reads nothing.
func peerGone(c net.Conn) bool {
	tc := tcpOf(c)
	if tc == nil {
		return false
	}
	rc, err := tc.SyscallConn()
	if err != nil {
		return true
	}
	gone := false
	var b [1]byte
	// Control, not Read: the peek does not wait, and a read deadline
	// left on the idle connection by its last exchange (see exchange)
	// must not make it look gone.
	err = rc.Control(func(fd uintptr) {
		for {
			_, _, e := syscall.Recvfrom(int(fd), b[:], syscall.MSG_PEEK|syscall.MSG_DONTWAIT)
			if e == syscall.EINTR {
				continue
			}
			// Nothing to read (EAGAIN) is the only healthy answer: 0
			// bytes is EOF, bytes are unasked, an error is an error.
			gone = e != syscall.EAGAIN
			return
		}
	})
	return gone || err != nil
}
