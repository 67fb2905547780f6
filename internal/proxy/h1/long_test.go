package h1

import (
	"bufio"
	"bytes"
	"errors"
	"io"
	"strings"
	"testing"
)

// The proxy reads with small per-connection buffers (4 KiB): a head line or
// a chunk line longer than the buffer must be read whole, and the limits
// must be those of the head (64 KiB) and of the relay's buffer, whatever
// the reader's size.

func TestHeadLinesLongerThanTheReader(t *testing.T) {
	for _, size := range []int{16, 4 << 10, 64 << 10} {
		for _, n := range []int{0, 1, 13, 14, 15, 16, 17, 31, 4093, 4096, 20 << 10, 65517} {
			v := strings.Repeat("v", n)
			raw := "GET /x HTTP/1.1\r\nHost: h\r\nX-Long: " + v + "\r\nX-Next: 1\r\n\r\n"
			var h Head
			if err := h.Read(bufio.NewReaderSize(strings.NewReader(raw), size), true); err != nil {
				if n == 65517 && errors.Is(err, ErrHeadTooLarge) {
					continue // with Host and X-Next this head is past the limit
				}
				t.Fatalf("reader %d, value %d: %v", size, n, err)
			}
			if got := h.Values("X-Long"); len(got) != 1 || got[0] != v {
				t.Fatalf("reader %d: X-Long of %d bytes read as %d values, first %d bytes", size, n, len(got), len(strings.Join(got, "")))
			}
			if got := h.Values("X-Next"); len(got) != 1 || got[0] != "1" {
				t.Fatalf("reader %d, value %d: X-Next %q", size, n, got)
			}
		}
	}
}

func TestHeadLimitWithLongLines(t *testing.T) {
	// The limit counts the stored head (lines without CRLF) plus the line
	// being read: status line 15, "X: " 3, the final CRLF 2.
	for _, size := range []int{16, 4 << 10, 64 << 10} {
		for n, want := range map[int]error{65516: nil, 65517: ErrHeadTooLarge, 200 << 10: ErrHeadTooLarge} {
			raw := "HTTP/1.1 200 OK\r\nX: " + strings.Repeat("v", n) + "\r\n\r\n"
			var h Head
			if err := h.Read(bufio.NewReaderSize(strings.NewReader(raw), size), false); !errors.Is(err, want) {
				t.Errorf("reader %d, value %d: %v, want %v", size, n, err, want)
			}
		}
	}
	// A line cut short by the end of the input after more than a buffer:
	// an unexpected EOF, and Len counts what was read (no retry).
	var h Head
	err := h.Read(bufio.NewReaderSize(strings.NewReader("HTTP/1.1 200 OK\r\nX: "+strings.Repeat("v", 100)), 16), false)
	if !errors.Is(err, io.ErrUnexpectedEOF) || h.Len() == 0 {
		t.Errorf("truncated long line: %v, Len %d", err, h.Len())
	}
}

func TestChunkLinesLongerThanTheReader(t *testing.T) {
	body := "5;ext=" + strings.Repeat("e", 5000) + "\r\nhello\r\n0\r\nX-Trailer: " + strings.Repeat("t", 20<<10) + "\r\n\r\n"
	for _, size := range []int{16, 4 << 10} {
		var out bytes.Buffer
		w := bufio.NewWriter(&out)
		if _, err := copyChunked(w, bufio.NewReaderSize(strings.NewReader(body), size), make([]byte, 64<<10), nil); err != nil {
			t.Fatalf("reader %d: %v", size, err)
		}
		w.Flush()
		if out.String() != body {
			t.Fatalf("reader %d: relayed %d bytes, want the %d of the body verbatim", size, out.Len(), len(body))
		}
		// A line longer than the relay's buffer is refused.
		_, err := copyChunked(bufio.NewWriter(&out), bufio.NewReaderSize(strings.NewReader(body), size), make([]byte, 4<<10), nil)
		if !errors.Is(err, ErrBadHead) || !strings.Contains(err.Error(), "too long") {
			t.Fatalf("reader %d, 4 KiB relay buffer: %v, want chunk line too long", size, err)
		}
	}
	// A bare LF is refused also when the CR check spans two pieces.
	for _, size := range []int{16, 4 << 10} {
		bad := "5;" + strings.Repeat("e", 30) + "\nhello\r\n0\r\n\r\n"
		if _, err := copyChunked(bufio.NewWriter(&bytes.Buffer{}), bufio.NewReaderSize(strings.NewReader(bad), size), make([]byte, 64<<10), nil); !errors.Is(err, ErrBadHead) {
			t.Fatalf("reader %d: bare LF after a long chunk line: %v", size, err)
		}
	}
}

func TestRelayBuffered(t *testing.T) {
	body := strings.Repeat("b", 40)
	msg := "HTTP/1.1 200 OK\r\nContent-Length: 40\r\n\r\n" + body + "NEXT"
	for _, tc := range []struct {
		size int
		want bool // the body is whole in a reader of this size
	}{{4 << 10, true}, {16, false}} {
		br := bufio.NewReaderSize(strings.NewReader(msg), tc.size)
		var h Head
		if err := h.Read(br, false); err != nil {
			t.Fatal(err)
		}
		var out bytes.Buffer
		w := bufio.NewWriter(&out)
		done, err := RelayBuffered(w, br, &h)
		if err != nil || done != tc.want {
			t.Fatalf("reader %d: done %v, %v; want %v", tc.size, done, err, tc.want)
		}
		if !done {
			// Nothing consumed: RelayBody relays all of it.
			if _, err := RelayBody(w, br, &h, false, make([]byte, 3), nil); err != nil {
				t.Fatal(err)
			}
		}
		w.Flush()
		rest, _ := io.ReadAll(br)
		if out.String() != body || string(rest) != "NEXT" {
			t.Fatalf("reader %d: relayed %q, left %q", tc.size, out.String(), rest)
		}
	}
}
