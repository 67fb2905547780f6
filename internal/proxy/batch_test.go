package proxy

import (
	"bytes"
	"crypto/rand"
	"crypto/tls"
	"io"
	"net"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/meshauth/meshauth/internal/ca/catest"
)

// countingConn counts the writes that reach the socket.
type countingConn struct {
	net.Conn
	writes atomic.Int64
}

func (c *countingConn) Write(p []byte) (int, error) {
	c.writes.Add(1)
	return c.Conn.Write(p)
}

// batchedPair returns a client batchedTLS over TCP loopback (its socket
// writes counted) and the server's tls.Conn, both with handshakes done.
func batchedPair(t *testing.T) (*batchedTLS, *countingConn, *tls.Conn) {
	t.Helper()
	var cc *countingConn
	bt, srv := tlsPairOver(t, func(c net.Conn) net.Conn {
		cc = &countingConn{Conn: c}
		return cc
	})
	return bt, cc, srv
}

// tlsPairOver returns a client batchedTLS over wrap(a TCP loopback
// connection) and the server's tls.Conn, both with handshakes done.
func tlsPairOver(t *testing.T, wrap func(net.Conn) net.Conn) (*batchedTLS, *tls.Conn) {
	t.Helper()
	ca := catest.New(t)
	srvCert := ca.Issue(t, "spiffe://cluster.local/ns/default/sa/server")
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	srvCh := make(chan *tls.Conn, 1)
	go func() {
		c, err := l.Accept()
		if err != nil {
			srvCh <- nil
			return
		}
		// Full-size records from the first byte, so tests know how
		// many records a write makes.
		tc := tls.Server(c, &tls.Config{Certificates: []tls.Certificate{srvCert.TLS}, MinVersion: tls.VersionTLS13, DynamicRecordSizingDisabled: true})
		if tc.Handshake() != nil {
			tc.Close()
			srvCh <- nil
			return
		}
		srvCh <- tc
	}()
	c, err := net.Dial("tcp", l.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	raw := newBatchConn(wrap(c))
	tc := tls.Client(raw, &tls.Config{RootCAs: ca.Pool(), InsecureSkipVerify: true, MinVersion: tls.VersionTLS13})
	if err := tc.Handshake(); err != nil {
		t.Fatal(err)
	}
	srv := <-srvCh
	if srv == nil {
		t.Fatal("server handshake failed")
	}
	t.Cleanup(func() { tc.Close(); srv.Close() })
	return newBatchedTLS(tc, raw), srv
}

func TestBatchedTLSOneSyscallPerLargeWrite(t *testing.T) {
	bt, cc, srv := batchedPair(t)
	msgs := [][]byte{make([]byte, 64<<10), make([]byte, 100), make([]byte, 200<<10+7), make([]byte, batchMin), make([]byte, batchMin+1)}
	var want bytes.Buffer
	for _, m := range msgs {
		rand.Read(m)
		want.Write(m)
	}
	got := make(chan []byte, 1)
	go func() {
		b, _ := io.ReadAll(io.LimitReader(srv, int64(want.Len())))
		got <- b
	}()
	// Writes: 64 KiB -> 1 write(2); 100 B -> 1; 200 KiB+7 -> 4 (three
	// full batches and a 8 KiB+7 tail of one record); 16 KiB (one record) -> 1;
	// 16 KiB+1 (two records, batched) -> 1.
	wantWrites := []int64{1, 1, 4, 1, 1}
	for i, m := range msgs {
		before := cc.writes.Load()
		n, err := bt.Write(m)
		if err != nil || n != len(m) {
			t.Fatalf("write %d: %d, %v", i, n, err)
		}
		if w := cc.writes.Load() - before; w != wantWrites[i] {
			t.Errorf("write %d of %d bytes took %d socket writes, want %d", i, len(m), w, wantWrites[i])
		}
	}
	if b := <-got; !bytes.Equal(b, want.Bytes()) {
		t.Fatalf("server read %d bytes, not the %d written", len(b), want.Len())
	}
}

// Concurrent writers (a relay's two directions share nothing, but tls.Conn
// may write alerts from its reader) must never interleave records wrongly:
// every byte arrives, in each writer's order, and the stream decrypts.
func TestBatchedTLSConcurrentWrites(t *testing.T) {
	bt, _, srv := batchedPair(t)
	const n = 40
	var wg sync.WaitGroup
	total := 0
	var mu sync.Mutex
	for g := 0; g < 2; g++ {
		size := 70 << 10
		if g == 1 {
			size = 300
		}
		total += n * size
		wg.Add(1)
		go func() {
			defer wg.Done()
			b := make([]byte, size)
			for i := 0; i < n; i++ {
				mu.Lock() // one application message at a time, as the proxy's bufio writers do
				_, err := bt.Write(b)
				mu.Unlock()
				if err != nil {
					t.Error(err)
					return
				}
			}
		}()
	}
	done := make(chan int64, 1)
	go func() {
		m, _ := io.Copy(io.Discard, io.LimitReader(srv, int64(total)))
		done <- m
	}()
	wg.Wait()
	if m := <-done; m != int64(total) {
		t.Fatalf("server read %d bytes, want %d", m, total)
	}
}

// After the socket fails, a batched connection refuses further writes
// instead of sending records the peer can no longer decrypt in order.
func TestBatchedTLSStickyError(t *testing.T) {
	bt, cc, _ := batchedPair(t)
	cc.Conn.Close()
	if _, err := bt.Write(make([]byte, 64<<10)); err == nil {
		t.Fatal("write on a closed socket succeeded")
	}
	if _, err := bt.Write(make([]byte, 10)); err == nil {
		t.Fatal("write after a failed batch succeeded")
	}
}

// socketHolds waits until the socket under bt has at least n bytes queued
// for reading (SIOCINQ), so a test knows what a read without waiting finds.
func socketHolds(t *testing.T, bt *batchedTLS, n int) {
	t.Helper()
	rc, err := tcpOf(bt).SyscallConn()
	if err != nil {
		t.Fatal(err)
	}
	for i := 0; ; i++ {
		var q int
		rc.Control(func(fd uintptr) { q, _ = unix.IoctlGetInt(int(fd), unix.SIOCINQ) })
		if q >= n {
			return
		}
		if i == 5000 {
			t.Fatalf("socket holds %d bytes, want %d", q, n)
		}
		time.Sleep(time.Millisecond)
	}
}

// A Read with room for several records returns every record already in
// the socket at once (one write downstream instead of one per record),
// and the bytes come out whole and in order.
func TestBatchedTLSReadGathersRecords(t *testing.T) {
	bt, srv := tlsPairOver(t, func(c net.Conn) net.Conn { return c })
	msg := make([]byte, 3*batchMin+100) // four records
	rand.Read(msg)
	if _, err := srv.Write(msg); err != nil {
		t.Fatal(err)
	}
	socketHolds(t, bt, len(msg)+4*(5+16+1)) // payload plus each record's header, tag and type
	buf := make([]byte, 64<<10)
	n, err := bt.Read(buf)
	if err != nil || n != len(msg) {
		t.Fatalf("read %d bytes (%v), want all %d of the four records in the socket", n, err, len(msg))
	}
	if !bytes.Equal(buf[:n], msg) {
		t.Fatal("gathered bytes differ from what was written")
	}
	// A small buffer still gets at most what fits, nothing gathered.
	srv.Write(msg[:100])
	if n, err := bt.Read(buf[:10]); n != 10 || err != nil {
		t.Fatalf("small read: %d, %v", n, err)
	}
}

// Gathering never waits: what the writer has sent is returned before it
// sends more (it sends the next part only once the reader has all of the
// first). A Read that waited for more would deadlock here.
func TestBatchedTLSReadDoesNotWait(t *testing.T) {
	bt, srv := tlsPairOver(t, func(c net.Conn) net.Conn { return c })
	const part = batchMin + 100
	total := make(chan int, 64)
	go func() {
		defer close(total)
		sum := 0
		buf := make([]byte, 64<<10)
		for sum < 2*part {
			n, err := bt.Read(buf)
			if err != nil {
				t.Error(err)
				return
			}
			sum += n
			total <- sum
		}
	}()
	waitTotal := func(want int) {
		for sum := range total {
			if sum == want {
				return
			}
			if sum > want {
				t.Fatalf("read %d bytes, only %d were sent", sum, want)
			}
		}
		t.Fatalf("reader stopped before %d bytes", want)
	}
	srv.Write(make([]byte, part))
	waitTotal(part)
	srv.Write(make([]byte, part))
	waitTotal(2 * part)
}

// An end met while gathering (the peer's close_notify after its data)
// comes with the next Read, after the data.
func TestBatchedTLSReadEndAfterData(t *testing.T) {
	bt, srv := tlsPairOver(t, func(c net.Conn) net.Conn { return c })
	msg := make([]byte, batchMin+10)
	srv.Write(msg)
	srv.Close()
	socketHolds(t, bt, len(msg)+2*(5+16+1)+(5+2+16+1))
	buf := make([]byte, 64<<10)
	n, err := bt.Read(buf)
	if n != len(msg) || err != nil {
		t.Fatalf("read %d, %v; want %d bytes and no error yet", n, err, len(msg))
	}
	if n, err := bt.Read(buf); n != 0 || err != io.EOF {
		t.Fatalf("read after the data: %d, %v; want 0, EOF", n, err)
	}
}
