package proxy

import (
	"bytes"
	"errors"
	"io"
	"net"
	"os"
	"testing"
	"time"
)

func tcpPair(t *testing.T) (*net.TCPConn, *net.TCPConn) {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	ch := make(chan net.Conn, 1)
	go func() {
		c, _ := l.Accept()
		ch <- c
	}()
	a, err := net.Dial("tcp", l.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	b := <-ch
	if b == nil {
		t.Fatal("accept failed")
	}
	t.Cleanup(func() { a.Close(); b.Close() })
	return a.(*net.TCPConn), b.(*net.TCPConn)
}

// sysIO behaves as net.TCPConn's Read and Write: data both ways (more than
// the socket buffers hold, so writes wait for the reader), io.EOF after the
// peer's FIN, deadlines, and a closed connection.
func TestSysIO(t *testing.T) {
	a, b := tcpPair(t)
	sa, sb := newSysIO(a), newSysIO(b)
	if sa == nil || sb == nil {
		t.Fatal("no sysIO for a TCP connection")
	}
	msg := bytes.Repeat([]byte("0123456789abcdef"), 1<<20) // 16 MiB
	done := make(chan error, 1)
	go func() {
		n, err := sa.Write(msg)
		if err == nil && n != len(msg) {
			err = errors.New("short write")
		}
		a.CloseWrite()
		done <- err
	}()
	got, err := io.ReadAll(sb)
	if err != nil {
		t.Fatal(err)
	}
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, msg) {
		t.Fatalf("read %d bytes, not the %d written", len(got), len(msg))
	}
	if n, err := sb.Read(make([]byte, 10)); n != 0 || err != io.EOF {
		t.Fatalf("read after EOF: %d, %v", n, err)
	}

	// The other direction still works, with a deadline.
	if _, err := sb.Write([]byte("pong")); err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 10)
	if n, err := sa.Read(buf); err != nil || string(buf[:n]) != "pong" {
		t.Fatalf("read %q, %v", buf[:n], err)
	}
	a.SetReadDeadline(time.Now().Add(20 * time.Millisecond))
	_, err = sa.Read(buf)
	var ne net.Error
	if !errors.Is(err, os.ErrDeadlineExceeded) || !errors.As(err, &ne) || !ne.Timeout() {
		t.Fatalf("read past the deadline: %v", err)
	}

	// Close from another goroutine wakes a blocked reader with net.ErrClosed.
	a.SetReadDeadline(time.Time{})
	go func() { time.Sleep(20 * time.Millisecond); a.Close() }()
	if _, err := sa.Read(buf); !errors.Is(err, net.ErrClosed) {
		t.Fatalf("read on a closed connection: %v", err)
	}
	if _, err := sa.Write([]byte("x")); !errors.Is(err, net.ErrClosed) {
		t.Fatalf("write on a closed connection: %v", err)
	}
	if newSysIO(&peekedConn{Conn: a}) != nil {
		t.Fatal("sysIO for a non-TCP net.Conn")
	}
}

func TestFastIOPeeked(t *testing.T) {
	a, b := tcpPair(t)
	pc := &peekedConn{Conn: b, buf: []byte("GET ")}
	rw := fastIO(pc)
	if _, ok := rw.(*peekedIO); !ok {
		t.Fatalf("fastIO(peekedConn over TCP) = %T", rw)
	}
	a.Write([]byte("/ HTTP/1.1\r\n"))
	a.CloseWrite()
	got, err := io.ReadAll(rw)
	if err != nil || string(got) != "GET / HTTP/1.1\r\n" {
		t.Fatalf("read %q, %v", got, err)
	}
}
