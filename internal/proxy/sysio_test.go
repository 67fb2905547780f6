package proxy

import (
	"bufio"
	"bytes"
	"errors"
	"io"
	"net"
	"os"
	"strings"
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

// A kept upstream connection keeps the read deadline of its last response
// (exchange does not clear it): the pool's check of idle connections must
// still see a healthy one as healthy once that deadline has passed, and a
// closed one as gone.
func TestPeerGoneIgnoresReadDeadline(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	c, err := net.Dial("tcp", l.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	s, err := l.Accept()
	if err != nil {
		t.Fatal(err)
	}
	c.SetReadDeadline(aLongTimeAgo)
	if peerGone(c) {
		t.Fatal("healthy idle connection with a past read deadline reported gone")
	}
	s.Close()
	for i := 0; !peerGone(c); i++ {
		if i == 5000 {
			t.Fatal("connection closed by its peer not reported gone")
		}
		time.Sleep(time.Millisecond)
	}
}

// headBuffered decides whether serveH1 may skip the request head's own
// deadline: only for a whole head already read, never for bytes that may
// still become more (empty lines first, a partial head, a partial HTTP/2
// preface).
func TestHeadBuffered(t *testing.T) {
	for _, tc := range []struct {
		in      string
		mayBeH2 bool
		want    bool
	}{
		{"GET / HTTP/1.1\r\nHost: a\r\n\r\n", true, true},
		{"GET / HTTP/1.1\r\nHost: a\r\n\r\nGET / HTTP/1.1\r\n", false, true},
		{"GET / HTTP/1.1\r\nHost: a\r\n", false, false},
		{"GET / HTTP/1.1\r\n", true, false},
		{"\r\n\r\nGET / HTTP/1.1\r\n", false, false},
		{"\r\nGET / HTTP/1.1\r\n\r\n", false, false},
		{"PRI * HTTP/2.0\r\n\r\n", true, false},
		{"PRI * HTTP/2.0\r\n\r\n", false, true},
		{h2Preface, true, true},
	} {
		br := bufio.NewReader(strings.NewReader(tc.in))
		br.Peek(1)
		if got := headBuffered(br, tc.mayBeH2); got != tc.want {
			t.Errorf("headBuffered(%q, mayBeH2=%v) = %v, want %v", tc.in, tc.mayBeH2, got, tc.want)
		}
	}
}
