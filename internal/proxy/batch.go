package proxy

import (
	"crypto/tls"
	"io"
	"net"
	"sync"
)

// crypto/tls writes every record of a Write with its own write(2): a 64 KiB
// body chunk is four 16 KiB records and four syscalls, and on loopback each
// one also runs the receiver's TCP input and wakes it. batchedTLS gathers
// the records of one large Write and sends them with one write(2)
// (BENCHMARKS.md, "Fixes and before/after").
//
// batchConn sits under the tls.Conn; batchedTLS is the tls.Conn the proxy
// uses once the handshake is done. Records the tls.Conn writes on its own
// (alerts, key updates from its reader) while a batch is open join the
// batch: crypto/tls writes records under its own lock, so the order of the
// bytes is the order of their sequence numbers either way.

// batchMin: a Write of at most one record goes out as it is.
const batchMin = 16 << 10

// batchMax bounds one batch (the proxy's copies write at most 64 KiB).
const batchMax = 64 << 10

// batchBufPool holds batch buffers: batchMax of payload plus the record
// overhead (header, content type, AEAD tag) of its records.
var batchBufPool = sync.Pool{New: func() any { b := make([]byte, 0, batchMax+(batchMax/batchMin+1)*64); return &b }}

type batchConn struct {
	net.Conn
	io  io.ReadWriter // fastIO(Conn)
	mu  sync.Mutex
	on  bool
	buf *[]byte
	err error // sticky: after a failed batch nothing more may be sent
	// noWait: reads return errWouldBlock instead of waiting. Set and read
	// only under batchedTLS.rmu: by its Read around the records it
	// gathers, and by the tls.Conn reads it makes (every read of the
	// connection goes through batchedTLS.Read).
	noWait bool
}

func newBatchConn(c net.Conn) *batchConn { return &batchConn{Conn: c, io: fastIO(c)} }

func (b *batchConn) Read(p []byte) (int, error) {
	if b.noWait {
		if s, ok := b.io.(*sysIO); ok {
			return s.readNoWait(p)
		}
		return 0, errWouldBlock
	}
	return b.io.Read(p)
}

func (b *batchConn) Write(p []byte) (int, error) {
	b.mu.Lock()
	if b.err != nil {
		b.mu.Unlock()
		return 0, b.err
	}
	if b.on {
		*b.buf = append(*b.buf, p...)
		b.mu.Unlock()
		return len(p), nil
	}
	b.mu.Unlock()
	return b.io.Write(p)
}

// CloseWrite half-closes the underlying connection when it can.
func (b *batchConn) CloseWrite() error {
	if cw, ok := b.Conn.(closeWriter); ok {
		return cw.CloseWrite()
	}
	return nil
}

// batchedTLS is a tls.Conn (after its handshake) whose large writes go out
// in one write(2) per batchMax.
type batchedTLS struct {
	*tls.Conn
	raw *batchConn
	rmu sync.Mutex
	// rerr is an error met while gathering records after a successful
	// read (not a timeout), returned by the next Read.
	rerr error
}

// tlsOf returns the tls.Conn of c (a batchedTLS or a bare tls.Conn), or
// nil for a plaintext connection. Code that needs the TLS state of a
// connection the proxy made or accepted must use it: those are batchedTLS,
// not *tls.Conn.
func tlsOf(c net.Conn) *tls.Conn {
	switch x := c.(type) {
	case *batchedTLS:
		return x.Conn
	case *tls.Conn:
		return x
	}
	return nil
}

// newBatchedTLS wraps c, which must be a tls.Conn created over raw with
// its handshake complete (so no handshake message is ever batched).
func newBatchedTLS(c *tls.Conn, raw *batchConn) *batchedTLS {
	return &batchedTLS{Conn: c, raw: raw}
}

func (c *batchedTLS) Write(p []byte) (int, error) {
	var n int
	for len(p) > batchMin {
		chunk := p[:min(len(p), batchMax)]
		m, err := c.writeBatch(chunk)
		n += m
		if err != nil {
			return n, err
		}
		p = p[len(chunk):]
	}
	if len(p) == 0 {
		return n, nil
	}
	m, err := c.Conn.Write(p)
	return n + m, err
}

// Read reads like tls.Conn.Read, which returns at most one record (16 KiB)
// per call; for a buffer larger than a record it then takes the records
// that are already in (decrypted from what the socket holds, never
// waiting for more), so a body relayed with a 64 KiB buffer goes on with
// one write(2) per 64 KiB instead of one per record.
func (c *batchedTLS) Read(p []byte) (int, error) {
	c.rmu.Lock()
	defer c.rmu.Unlock()
	if len(p) <= batchMin && c.rerr == nil {
		return c.Conn.Read(p)
	}
	if err := c.rerr; err != nil {
		c.rerr = nil
		return 0, err
	}
	n, err := c.Conn.Read(p)
	if err != nil || n == 0 {
		return n, err
	}
	c.raw.noWait = true
	for n < len(p) {
		m, err := c.Conn.Read(p[n:])
		n += m
		if err != nil {
			// Nothing more in (errWouldBlock), or a deadline that passed
			// meanwhile: the next Read tries afresh, under whatever
			// deadline is set by then. Anything else comes with it.
			if ne, ok := err.(net.Error); !ok || !ne.Timeout() {
				c.rerr = err
			}
			break
		}
	}
	c.raw.noWait = false
	return n, nil
}

func (c *batchedTLS) writeBatch(p []byte) (int, error) {
	b := c.raw
	b.mu.Lock()
	if b.err != nil {
		b.mu.Unlock()
		return 0, b.err
	}
	b.on = true
	b.buf = batchBufPool.Get().(*[]byte)
	b.mu.Unlock()

	n, err := c.Conn.Write(p)

	b.mu.Lock()
	b.on = false
	buf := b.buf
	b.buf = nil
	if len(*buf) > 0 {
		if _, werr := b.io.Write(*buf); werr != nil {
			b.err = werr
			n, err = 0, werr
		}
	}
	b.mu.Unlock()
	*buf = (*buf)[:0]
	batchBufPool.Put(buf)
	return n, err
}
