package proxy

import (
	"io"
	"net"
	"os"
	"sync"
	"syscall"
	"unsafe"
)

// sysIO reads and writes a TCP socket with raw read(2)/write(2) through its
// syscall.RawConn, instead of net.TCPConn's Read/Write.
//
// Why: the socket is non-blocking, so these calls never block, but
// net.TCPConn makes them as blocking syscalls (entersyscall/exitsyscall).
// On loopback a write also runs the receiver's TCP input and can take tens
// of microseconds; whenever it spans a tick of the runtime's sysmon thread
// (20 us under load), sysmon takes the P away and hands it to another
// thread, which costs futex wake-ups and context switches, and the writer
// must get a P back afterwards. A raw syscall keeps its P. When the socket
// is not ready (EAGAIN), RawConn parks the goroutine on the netpoller
// exactly as net.TCPConn does, and deadlines and Close work the same.
type sysIO struct {
	c  *net.TCPConn
	rc syscall.RawConn
	// The callbacks passed to rc are bound once (readFn, writeFn) and
	// take their arguments and results from these fields, so a Read or
	// Write allocates nothing (a closure per call costs two allocations).
	// rmu and wmu keep concurrent Reads (Writes) apart, as net.Conn allows
	// them.
	rmu, wmu        sync.Mutex
	rbuf, wbuf      []byte
	rn, wn          int
	rnowait         bool // readNoWait: EAGAIN returns instead of parking
	rerrno, werrno  syscall.Errno
	readFn, writeFn func(fd uintptr) bool
}

// newSysIO returns a sysIO for a TCP connection, or nil for anything else.
func newSysIO(c net.Conn) *sysIO {
	tc, ok := c.(*net.TCPConn)
	if !ok {
		return nil
	}
	rc, err := tc.SyscallConn()
	if err != nil {
		return nil
	}
	s := &sysIO{c: tc, rc: rc}
	s.readFn, s.writeFn = s.doRead, s.doWrite
	return s
}

func (s *sysIO) doRead(fd uintptr) bool {
	p := s.rbuf
	for {
		r, _, e := syscall.RawSyscall(syscall.SYS_READ, fd, uintptr(unsafe.Pointer(&p[0])), uintptr(len(p)))
		switch e {
		case 0:
			s.rn = int(r)
			return true
		case syscall.EINTR:
			continue
		case syscall.EAGAIN:
			if s.rnowait {
				s.rerrno = e
				return true
			}
			return false // wait on the netpoller
		}
		s.rerrno = e
		return true
	}
}

func (s *sysIO) Read(p []byte) (int, error) { return s.read(p, false) }

// readNoWait reads what the socket holds now; errWouldBlock if nothing.
func (s *sysIO) readNoWait(p []byte) (int, error) { return s.read(p, true) }

func (s *sysIO) read(p []byte, nowait bool) (int, error) {
	if len(p) == 0 {
		return 0, nil
	}
	s.rmu.Lock()
	s.rbuf, s.rn, s.rerrno, s.rnowait = p, 0, 0, nowait
	err := s.rc.Read(s.readFn)
	n, errno := s.rn, s.rerrno
	s.rbuf = nil
	s.rmu.Unlock()
	if err == nil && errno == syscall.EAGAIN {
		return 0, errWouldBlock
	}
	if err == nil && errno != 0 {
		err = os.NewSyscallError("read", errno)
	}
	if err != nil {
		return 0, &net.OpError{Op: "read", Net: "tcp", Source: s.c.LocalAddr(), Addr: s.c.RemoteAddr(), Err: err}
	}
	if n == 0 {
		return 0, io.EOF
	}
	return n, nil
}

// errWouldBlock is a read without waiting that found nothing. It is a
// temporary net.Error, so crypto/tls keeps a partly read record for the
// next Read instead of failing the connection.
var errWouldBlock error = wouldBlock{}

type wouldBlock struct{}

func (wouldBlock) Error() string   { return "read would block" }
func (wouldBlock) Timeout() bool   { return true }
func (wouldBlock) Temporary() bool { return true }

func (s *sysIO) doWrite(fd uintptr) bool {
	p := s.wbuf
	for s.wn < len(p) {
		r, _, e := syscall.RawSyscall(syscall.SYS_WRITE, fd, uintptr(unsafe.Pointer(&p[s.wn])), uintptr(len(p)-s.wn))
		switch e {
		case 0:
			s.wn += int(r)
			continue
		case syscall.EINTR:
			continue
		case syscall.EAGAIN:
			return false // wait until writable
		}
		s.werrno = e
		return true
	}
	return true
}

func (s *sysIO) Write(p []byte) (int, error) {
	s.wmu.Lock()
	s.wbuf, s.wn, s.werrno = p, 0, 0
	err := s.rc.Write(s.writeFn)
	n, errno := s.wn, s.werrno
	s.wbuf = nil
	s.wmu.Unlock()
	if err == nil && errno != 0 {
		err = os.NewSyscallError("write", errno)
	}
	if err != nil {
		return n, &net.OpError{Op: "write", Net: "tcp", Source: s.c.LocalAddr(), Addr: s.c.RemoteAddr(), Err: err}
	}
	return n, nil
}

// fastIO returns a reader/writer of c that uses sysIO when c is a TCP
// connection (or a peekedConn over one, its replayed bytes first), else c.
func fastIO(c net.Conn) io.ReadWriter {
	if pc, ok := c.(*peekedConn); ok {
		if s := newSysIO(pc.Conn); s != nil {
			return &peekedIO{pc: pc, s: s}
		}
		return c
	}
	if s := newSysIO(c); s != nil {
		return s
	}
	return c
}

type peekedIO struct {
	pc *peekedConn
	s  *sysIO
}

func (p *peekedIO) Read(b []byte) (int, error) {
	if len(p.pc.buf) > 0 {
		return p.pc.Read(b)
	}
	return p.s.Read(b)
}

func (p *peekedIO) Write(b []byte) (int, error) { return p.s.Write(b) }
