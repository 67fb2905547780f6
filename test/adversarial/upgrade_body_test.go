package adversarial

import (
	"bufio"
	"errors"
	"io"
	"net"
	"net/http"
	"os"
	"strings"
	"testing"
	"time"
)

// TestUpgradeBeforeBody: the app (or anything upstream: a peer's app is not
// trusted) answers 101 Switching Protocols while the request body is still
// coming. Both sidecars used to start the tunnel at once, beside the
// goroutine still relaying the body: two goroutines reading the client
// connection's buffer, bytes of the body and of the tunnel racing each
// other, and the buffer handed back to the pool (to another connection)
// while the body goroutine still read it. Now the switch waits until the
// request is all sent (RFC 9110 7.8): no 101 reaches the client before
// its body is complete, and the app then gets the body and the tunnel's
// bytes once each, in order.
func TestUpgradeBeforeBody(t *testing.T) {
	m := startMesh(t, meshOptions{})
	c, err := net.Dial("tcp", strings.TrimPrefix(m.Sleep.OutboundProxy, "http://"))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	io.WriteString(c, "POST http://httpbin:8000/upgrade-early HTTP/1.1\r\nHost: httpbin:8000\r\n"+
		"Connection: Upgrade\r\nUpgrade: echo\r\nContent-Length: 10\r\n\r\nfirst")
	br := bufio.NewReader(c)
	// Half the body is in: the app has answered 101 by now (it does not
	// wait for the body), but the switch must not reach the client yet.
	c.SetReadDeadline(time.Now().Add(2 * time.Second))
	if b, err := br.Peek(1); !errors.Is(err, os.ErrDeadlineExceeded) {
		rest, _ := br.Peek(br.Buffered())
		t.Fatalf("with half the request body sent, the client got %q%q (%v): the switch went ahead of the body", b, rest, err)
	}
	c.SetReadDeadline(time.Now().Add(10 * time.Second))
	io.WriteString(c, "secon")
	io.WriteString(c, "TUNNEL")
	resp, err := http.ReadResponse(br, nil)
	if err != nil {
		t.Fatalf("after the whole body: %v", err)
	}
	if resp.StatusCode != 101 {
		t.Fatalf("status %d, want 101", resp.StatusCode)
	}
	want := "firstseconTUNNEL"
	got := make([]byte, len(want))
	if _, err := io.ReadFull(br, got); err != nil || string(got) != want {
		t.Fatalf("through the tunnel the app echoed %q (%v), want %q: the body and the tunnel's bytes once each, in order", got, err, want)
	}
}
