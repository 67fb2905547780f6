package h1

import (
	"bufio"
	"bytes"
	"io"
	"net/http/httputil"
	"slices"
	"testing"
)

// FuzzHead: the HTTP/1.x codec never panics on any input; what it accepts
// is unambiguous (never both Content-Length and chunked), and writing the
// accepted head back out and parsing it again gives the same framing and
// fields (so the two sidecars and the app cannot frame a message
// differently).
func FuzzHead(f *testing.F) {
	for _, s := range []string{
		"GET / HTTP/1.1\r\nHost: a\r\n\r\n",
		"POST http://h:1/x?y HTTP/1.1\r\nHost: h\r\nContent-Length: 3\r\n\r\nabc",
		"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n",
		"GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n",
		"GET / HTTP/1.1\r\nHost: h\r\nConnection: close, X-Foo\r\nX-Foo: 1\r\n\r\n",
		"GET / HTTP/1.1\r\nHost: h\r\nContent-Length: 1\r\nContent-Length: 1\r\n\r\n",
		"\r\nGET / HTTP/1.1\nHost: h\n\n",
		"GET / HTTP/1.1\r\nHost: h\r\nUpgrade: websocket\r\nConnection: upgrade\r\n\r\n",
	} {
		f.Add([]byte(s), true)
	}
	f.Add([]byte("HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"), false)
	f.Add([]byte("HTTP/1.1 101 Switching Protocols\r\nUpgrade: x\r\nConnection: Upgrade\r\n\r\n"), false)
	f.Add([]byte("HTTP/1.0 200\r\n\r\nbody"), false)
	f.Fuzz(func(t *testing.T, b []byte, request bool) {
		var h Head
		err := h.Read(bufio.NewReader(bytes.NewReader(b)), request)
		// The smallest reader bufio allows (16 bytes) takes every line of
		// the head in pieces: the outcome must be the same.
		var hs Head
		errs := hs.Read(bufio.NewReaderSize(bytes.NewReader(b), 16), request)
		if (err == nil) != (errs == nil) || err == nil && (!bytes.Equal(h.buf, hs.buf) || !slices.Equal(h.fields, hs.fields) ||
			h.ContentLength != hs.ContentLength || h.Chunked != hs.Chunked || h.Close != hs.Close) {
			t.Fatalf("a 16-byte reader reads %q as %+v (%v), a 4 KiB one as %+v (%v)", b, hs, errs, h, err)
		}
		if err != nil {
			return
		}
		if h.Chunked && h.ContentLength >= 0 {
			t.Fatalf("accepted both Content-Length and chunked: %q", b)
		}
		// Write it back (as the proxy would, minus hop-by-hop fields) and
		// parse again.
		var out bytes.Buffer
		w := bufio.NewWriter(&out)
		if request {
			w.Write(h.Bytes(h.Method))
			w.WriteString(" ")
			w.Write(h.OriginForm())
			w.WriteString(" HTTP/1.1\r\n")
			if !h.HasHost {
				w.WriteString("Host: x\r\n")
			}
		} else {
			WriteResponseHead(w, &h, "")
			w.Flush()
			goto reparse
		}
		h.WriteFields(w, nil)
		h.WriteFraming(w)
		w.WriteString("\r\n")
		w.Flush()
	reparse:
		var h2 Head
		if err := h2.Read(bufio.NewReader(bytes.NewReader(out.Bytes())), request); err != nil {
			t.Fatalf("re-parse of %q failed: %v\n(original %q)", out.Bytes(), err, b)
		}
		n := 0
		for _, f := range h2.fields {
			if ASCIIEqualFold(h2.Bytes(f.name), "content-length") || ASCIIEqualFold(h2.Bytes(f.name), "transfer-encoding") {
				n++
			}
		}
		if n > 1 {
			// Duplicated framing fields are refused by strict parsers (wrk,
			// many proxies) even when equal.
			t.Fatalf("written head has %d framing fields: %q", n, out.Bytes())
		}
		if h2.Chunked != h.Chunked || h2.ContentLength != h.ContentLength || h2.Upgrade != h.Upgrade {
			t.Fatalf("framing changed: %+v -> %+v for %q", h, h2, b)
		}
		if n := countFields(&h2, "content-length"); n > 1 {
			t.Fatalf("re-serialized head carries Content-Length %d times: %q", n, out.Bytes())
		}
		if request && h2.Path() != h.Path() {
			t.Fatalf("path changed %q -> %q", h.Path(), h2.Path())
		}
	})
}

// FuzzChunked: the chunked relay either fails or copies a body that Go's
// own chunked reader decodes to the same bytes as the input's.
func FuzzChunked(f *testing.F) {
	f.Add([]byte("3\r\nabc\r\n0\r\n\r\n"))
	f.Add([]byte("a;ext=1\r\n0123456789\r\n0\r\nTrailer: x\r\n\r\n"))
	f.Add([]byte("3\nabc\n0\n\n"))
	f.Add([]byte("fffffffffffffff\r\n"))
	f.Fuzz(func(t *testing.T, b []byte) {
		var out bytes.Buffer
		w := bufio.NewWriter(&out)
		buf := make([]byte, 7)
		_, err := copyChunked(w, bufio.NewReader(bytes.NewReader(b)), buf, nil)
		w.Flush()
		// A 16-byte reader gets every longer chunk line in pieces, which
		// the relay gathers in its buffer: the same bytes come out.
		var outs bytes.Buffer
		ws := bufio.NewWriter(&outs)
		_, errs := copyChunked(ws, bufio.NewReaderSize(bytes.NewReader(b), 16), make([]byte, 64<<10), nil)
		ws.Flush()
		// (Not the other way round: the first relay's 7-byte buffer
		// refuses a chunk line longer than its reader.)
		if err == nil && (errs != nil || !bytes.Equal(out.Bytes(), outs.Bytes())) {
			t.Fatalf("relay of %q: %q with a 4 KiB reader, %q (%v) with a 16-byte one", b, out.Bytes(), outs.Bytes(), errs)
		}
		if err != nil {
			return
		}
		want, err1 := io.ReadAll(httputil.NewChunkedReader(bytes.NewReader(b)))
		got, err2 := io.ReadAll(httputil.NewChunkedReader(bytes.NewReader(out.Bytes())))
		if err1 != nil || err2 != nil || !bytes.Equal(got, want) {
			t.Fatalf("relay of %q: got %q (%v), Go decodes the input as %q (%v)", b, got, err2, want, err1)
		}
	})
}

func countFields(h *Head, name string) int {
	n := 0
	for _, f := range h.fields {
		if ASCIIEqualFold(h.Bytes(f.name), name) {
			n++
		}
	}
	return n
}
