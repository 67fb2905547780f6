package proxy

import (
	"errors"
	"io"
	"net"
	"os"
	"sync"
	"sync/atomic"
	"time"
)

// bufPool holds copy buffers for TCP relays and HTTP bodies. 64 KiB is four
// TLS records per read: fewer syscalls per byte on bulk transfers.
var bufPool = sync.Pool{New: func() any { b := make([]byte, 64<<10); return &b }}

// connInfo is what the proxy learned about a connection before handing it to
// an HTTP server: who the peer is and where the traffic goes.
type connInfo struct {
	// inbound
	port    uint32
	app     string // app address to forward to
	mode    string // STRICT, PERMISSIVE, DISABLE
	tls     bool
	peer    string // SPIFFE ID of the verified peer, "" for plaintext
	service string
	// outbound (transparent): the original destination
	origHost string
	origPort uint32
	src      string
}

// direction names the side a connection came in on, for metrics.
func (i *connInfo) direction() string {
	if i.app != "" {
		return "inbound"
	}
	return "outbound"
}

// peekedConn replays bytes read while sniffing before reading the socket.
type peekedConn struct {
	net.Conn
	buf []byte
}

func (c *peekedConn) Read(b []byte) (int, error) {
	if len(c.buf) > 0 {
		n := copy(b, c.buf)
		c.buf = c.buf[n:]
		return n, nil
	}
	return c.Conn.Read(b)
}

// CloseWrite half-closes the underlying connection when it can.
func (c *peekedConn) CloseWrite() error {
	if cw, ok := c.Conn.(interface{ CloseWrite() error }); ok {
		return cw.CloseWrite()
	}
	return nil
}

// sniff reads until Sniff can classify the connection, EOF or the deadline
// already set on c. It returns the kind and the bytes read.
func sniff(c net.Conn) (Kind, []byte, error) {
	buf := make([]byte, 0, sniffLen)
	for {
		n, err := c.Read(buf[len(buf):cap(buf)])
		buf = buf[:len(buf)+n]
		if k := Sniff(buf); k != KindUnknown || len(buf) == cap(buf) {
			if k == KindUnknown {
				k = KindOther
			}
			return k, buf, nil
		}
		if err != nil {
			return KindUnknown, buf, err
		}
	}
}

// reset closes c with an RST instead of a FIN (SO_LINGER 0), so a plaintext
// client sees "connection reset by peer" — curl's exit code 56 in the seed —
// rather than an empty reply.
func reset(c net.Conn) {
	for {
		switch x := c.(type) {
		case *net.TCPConn:
			x.SetLinger(0)
			x.Close()
			return
		case *peekedConn:
			c = x.Conn
			continue
		}
		c.Close()
		return
	}
}

// relay copies both ways between a and b until both directions end, half-
// closing each side when its source reaches EOF so protocols that rely on
// shutdown(SHUT_WR) work. A connection idle in both directions for idle is
// closed. It returns the bytes copied a->b and b->a.
func relay(a, b net.Conn, idle time.Duration) (ab, ba int64) {
	var last atomic.Int64
	last.Store(time.Now().UnixNano())
	done := make(chan int64, 1)
	go func() {
		done <- copyHalf(b, a, idle, &last)
	}()
	ba = copyHalf(a, b, idle, &last)
	ab = <-done
	a.Close()
	b.Close()
	return ab, ba
}

type closeWriter interface{ CloseWrite() error }

func copyHalf(dst, src net.Conn, idle time.Duration, last *atomic.Int64) int64 {
	bp := bufPool.Get().(*[]byte)
	defer bufPool.Put(bp)
	buf := *bp
	var (
		n   int64
		set time.Time // when the read deadline was last moved
	)
	for {
		// Moving the deadline costs a timer update; on a busy stream once
		// a second is enough (the deadline is idle away, not per read).
		// The write deadline moves with it: a receiver that stops
		// reading holds the relay no longer than an idle one.
		if now := time.Now(); idle > 0 && now.Sub(set) > min(time.Second, idle/8) {
			src.SetReadDeadline(now.Add(idle))
			dst.SetWriteDeadline(now.Add(idle))
			set = now
		}
		nr, rerr := src.Read(buf)
		if nr > 0 {
			last.Store(time.Now().UnixNano())
			nw, werr := dst.Write(buf[:nr])
			n += int64(nw)
			if werr != nil {
				// The other side is gone: make the reader stop too.
				src.Close()
				return n
			}
		}
		if rerr != nil {
			if errors.Is(rerr, os.ErrDeadlineExceeded) && time.Since(time.Unix(0, last.Load())) < idle {
				// Only this direction is quiet; the other is busy.
				continue
			}
			if errors.Is(rerr, io.EOF) {
				if cw, ok := dst.(closeWriter); ok {
					cw.CloseWrite()
				} else {
					dst.Close()
				}
			} else {
				dst.Close()
				src.Close()
			}
			return n
		}
	}
}
