// Package h1 is the sidecar's HTTP/1.x codec: message heads read into a
// reusable per-connection buffer, only what a proxy must interpret
// (framing, connection management, the target, Host) interpreted, and
// everything else written through unchanged; bodies relayed as framed.
package h1

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"strconv"
)

// This is the proxy's HTTP/1.x codec. The sidecar forwards every
// request through two proxies, so net/http's per-request machinery (a
// goroutine per read, header maps, request clones) would cost more than the
// app itself. The codec reads a message head into a per-connection buffer,
// interprets only what a proxy must (framing, connection management, the
// headers it rewrites) and writes the rest through unchanged.
//
// It is strict where laxness enables request smuggling: obsolete line
// folding, both Content-Length and Transfer-Encoding, conflicting
// Content-Lengths, any transfer coding but "chunked", and bare LF in chunk
// framing are refused.

// maxHeadBytes bounds a request or response head (line + headers).
const maxHeadBytes = 64 << 10

// Read's errors: ErrBadHead (wrapped with what was wrong) for a message a
// proxy must not forward, ErrHeadTooLarge past 64 KiB.
var (
	ErrHeadTooLarge = errors.New("http: message head larger than 64 KiB")
	ErrBadHead      = errors.New("http: malformed message head")
	// errHTTP2Preface: HTTP/2 with prior knowledge where HTTP/1.x is read.
	errHTTP2Preface = fmt.Errorf("%w: HTTP/2 connection preface after HTTP/1.x requests on the same connection", ErrBadHead)
)

// Span is a [start,end) slice of a Head's buffer.
type Span struct{ s, e int }

type field struct{ name, value Span }

// Head is a parsed request or response head. It is reused across messages
// on one connection; its spans point into its buffer (Str, Bytes).
type Head struct {
	buf    []byte
	fields []field

	// request line
	Method, Target Span
	// status line
	Status int
	Reason Span

	Minor int // HTTP/1.<minor>

	ContentLength int64 // -1: not given
	Chunked       bool
	// Close: the sender will close after this message (Connection: close,
	// or HTTP/1.0 without keep-alive).
	Close bool
	// Upgrade: Connection: upgrade with an Upgrade header.
	Upgrade   bool
	Expect100 bool
	Host      Span
	HasHost   bool
	// FwdTarget, if set, is the request target to forward instead of the
	// one received (the server sidecar's normalised path).
	FwdTarget []byte
	// connTokens are header names listed in Connection (hop-by-hop).
	connTokens []Span
}

// Str and Bytes return a span of the head (Bytes without copying, valid
// until the next Read); MethodIs compares the request method.
func (h *Head) Str(s Span) string      { return string(h.buf[s.s:s.e]) }
func (h *Head) Bytes(s Span) []byte    { return h.buf[s.s:s.e] }
func (h *Head) MethodIs(m string) bool { return string(h.buf[h.Method.s:h.Method.e]) == m }

// Len is how many bytes of the head were read, also after a failed Read
// (0: the peer sent nothing).
func (h *Head) Len() int { return len(h.buf) }

func (h *Head) reset() {
	h.buf = h.buf[:0]
	h.fields = h.fields[:0]
	h.connTokens = h.connTokens[:0]
	h.Status, h.Minor = 0, 1
	h.ContentLength = -1
	h.Chunked, h.Close, h.Upgrade, h.Expect100, h.HasHost = false, false, false, false, false
	h.FwdTarget = nil
}

// Read reads one message head from br. request selects the start line
// grammar. io.EOF before any byte means the peer closed between messages.
// A line may be longer than br's buffer: the head as a whole is bounded
// (64 KiB), not each line, so the proxy's small per-connection readers
// take the same heads as a large one would.
func (h *Head) Read(br *bufio.Reader, request bool) error {
	h.reset()
	nlines := 0
	for {
		line, err := br.ReadSlice('\n')
		if err == bufio.ErrBufferFull {
			line, err = h.longLine(br, line)
		}
		if err != nil {
			if err == ErrHeadTooLarge {
				return err
			}
			if err == io.EOF && len(h.buf) == 0 && len(line) == 0 {
				return io.EOF
			}
			if err == io.EOF {
				return io.ErrUnexpectedEOF
			}
			return err
		}
		if len(h.buf)+len(line) > maxHeadBytes {
			return ErrHeadTooLarge
		}
		// Lines must end in CRLF; a bare LF is tolerated only as the line
		// terminator (RFC 9112 2.2), never inside a field.
		n := len(line) - 1
		if n > 0 && line[n-1] == '\r' {
			n--
		}
		if nlines == 0 && n == 0 && request {
			// RFC 9112 2.2: ignore at least one empty line before a request.
			continue
		}
		start := len(h.buf)
		h.buf = append(h.buf, line[:n]...)
		if n == 0 {
			break
		}
		if nlines == 0 {
			if err := h.parseStart(start, request); err != nil {
				return err
			}
		} else if err := h.parseField(start); err != nil {
			return err
		}
		nlines++
	}
	if nlines == 0 {
		return ErrBadHead
	}
	return h.finish(request)
}

// longLine reads the rest of a line that did not fit in br's buffer
// (first is its start, which ReadSlice returned with ErrBufferFull). The
// pieces are gathered at the end of h.buf, within the head's limit; the
// whole line is returned as a slice of h.buf's spare capacity (h.buf
// itself keeps its length, so Read appends the line in place). After an
// error the pieces stay counted in h.buf: Len reports bytes were read.
func (h *Head) longLine(br *bufio.Reader, first []byte) ([]byte, error) {
	start := len(h.buf)
	line, err := first, bufio.ErrBufferFull
	for {
		if len(h.buf)+len(line) > maxHeadBytes {
			return nil, ErrHeadTooLarge
		}
		h.buf = append(h.buf, line...)
		if err != bufio.ErrBufferFull {
			break
		}
		line, err = br.ReadSlice('\n')
	}
	if err != nil {
		return nil, err
	}
	line = h.buf[start:]
	h.buf = h.buf[:start]
	return line, nil
}

func isTokenChar(c byte) bool { return tokenChars[c] }

// tokenChars are RFC 9110 tchar: letters, digits and !#$%&'*+-.^_`|~ (a
// table, as every byte of every field name is checked).
var tokenChars = func() (t [256]bool) {
	for c := 0; c < 256; c++ {
		switch {
		case c >= 'a' && c <= 'z', c >= 'A' && c <= 'Z', c >= '0' && c <= '9':
			t[c] = true
		default:
			t[c] = bytes.IndexByte([]byte("!#$%&'*+-.^_`|~"), byte(c)) >= 0
		}
	}
	return t
}()

func (h *Head) parseStart(start int, request bool) error {
	line := h.buf[start:]
	sp1 := bytes.IndexByte(line, ' ')
	if sp1 <= 0 {
		return ErrBadHead
	}
	if request {
		sp2 := bytes.LastIndexByte(line, ' ')
		if sp2 <= sp1+1 {
			return ErrBadHead
		}
		for _, c := range line[:sp1] {
			if !isTokenChar(c) {
				return ErrBadHead
			}
		}
		for _, c := range line[sp1+1 : sp2] {
			if c <= ' ' || c == 0x7f {
				return ErrBadHead
			}
		}
		minor, ok := parseVersion(line[sp2+1:])
		if !ok {
			if string(line) == "PRI * HTTP/2.0" {
				return errHTTP2Preface
			}
			return ErrBadHead
		}
		h.Method = Span{start, start + sp1}
		h.Target = Span{start + sp1 + 1, start + sp2}
		h.Minor = minor
		return nil
	}
	minor, ok := parseVersion(line[:sp1])
	if !ok || len(line) < sp1+4 {
		return ErrBadHead
	}
	code := line[sp1+1 : sp1+4]
	st := 0
	for _, c := range code {
		if c < '0' || c > '9' {
			return ErrBadHead
		}
		st = st*10 + int(c-'0')
	}
	if st < 100 || (len(line) > sp1+4 && line[sp1+4] != ' ') {
		return ErrBadHead
	}
	h.Status, h.Minor = st, minor
	h.Reason = Span{min(start+sp1+5, start+len(line)), start + len(line)}
	return nil
}

func parseVersion(b []byte) (int, bool) {
	if len(b) != 8 || string(b[:7]) != "HTTP/1." || b[7] < '0' || b[7] > '9' {
		return 0, false
	}
	return int(b[7] - '0'), true
}

func (h *Head) parseField(start int) error {
	line := h.buf[start:]
	if line[0] == ' ' || line[0] == '\t' {
		return ErrBadHead // obsolete line folding
	}
	colon := bytes.IndexByte(line, ':')
	if colon <= 0 {
		return ErrBadHead
	}
	for _, c := range line[:colon] {
		if !isTokenChar(c) {
			return ErrBadHead
		}
	}
	vs, ve := colon+1, len(line)
	for vs < ve && (line[vs] == ' ' || line[vs] == '\t') {
		vs++
	}
	for ve > vs && (line[ve-1] == ' ' || line[ve-1] == '\t') {
		ve--
	}
	for _, c := range line[vs:ve] {
		if (c < ' ' && c != '\t') || c == 0x7f {
			return ErrBadHead
		}
	}
	h.fields = append(h.fields, field{Span{start, start + colon}, Span{start + vs, start + ve}})
	return nil
}

// finish interprets the fields a proxy needs.
func (h *Head) finish(request bool) error {
	closeTok, keepAlive := false, false
	connUpgrade := false
	hasUpgrade := false
	te := false
	for _, f := range h.fields {
		name, value := h.Bytes(f.name), h.Bytes(f.value)
		switch len(name) {
		case len("content-length"), len("transfer-encoding"), len("connection"), len("upgrade"), len("expect"), len("host"):
		default:
			continue // none of the fields below: most fields stop here
		}
		switch {
		case ASCIIEqualFold(name, "content-length"):
			n, err := parseContentLength(value)
			if err != nil {
				return err
			}
			if h.ContentLength >= 0 && h.ContentLength != n {
				return fmt.Errorf("%w: conflicting Content-Length", ErrBadHead)
			}
			h.ContentLength = n
		case ASCIIEqualFold(name, "transfer-encoding"):
			if te || !ASCIIEqualFold(value, "chunked") {
				// Only a single "chunked" is understood; anything else
				// cannot be framed safely.
				return fmt.Errorf("%w: unsupported Transfer-Encoding %q", ErrBadHead, value)
			}
			te, h.Chunked = true, true
		case ASCIIEqualFold(name, "connection"):
			for _, tok := range splitComma(value, f.value.s) {
				t := h.Bytes(tok)
				switch {
				case ASCIIEqualFold(t, "close"):
					closeTok = true
				case ASCIIEqualFold(t, "keep-alive"):
					keepAlive = true
				case ASCIIEqualFold(t, "upgrade"):
					connUpgrade = true
				}
				h.connTokens = append(h.connTokens, tok)
			}
		case ASCIIEqualFold(name, "upgrade"):
			hasUpgrade = true
		case ASCIIEqualFold(name, "expect"):
			h.Expect100 = ASCIIEqualFold(value, "100-continue")
		case ASCIIEqualFold(name, "host"):
			if h.HasHost {
				return fmt.Errorf("%w: more than one Host", ErrBadHead)
			}
			h.Host, h.HasHost = f.value, true
		}
	}
	h.Close = closeTok || (h.Minor == 0 && !keepAlive)
	if te && h.ContentLength >= 0 {
		return fmt.Errorf("%w: both Content-Length and Transfer-Encoding", ErrBadHead)
	}
	if te && h.Minor == 0 {
		return fmt.Errorf("%w: Transfer-Encoding in HTTP/1.0", ErrBadHead)
	}
	h.Upgrade = connUpgrade && hasUpgrade
	if request && h.Minor == 1 && !h.HasHost {
		return fmt.Errorf("%w: HTTP/1.1 request without Host", ErrBadHead)
	}
	return nil
}

func parseContentLength(v []byte) (int64, error) {
	if len(v) == 0 || len(v) > 18 {
		return 0, fmt.Errorf("%w: bad Content-Length %q", ErrBadHead, v)
	}
	var n int64
	for _, c := range v {
		if c < '0' || c > '9' {
			return 0, fmt.Errorf("%w: bad Content-Length %q", ErrBadHead, v)
		}
		n = n*10 + int64(c-'0')
	}
	return n, nil
}

// splitComma splits a comma list into trimmed, non-empty spans; off is the
// offset of v in h.buf.
func splitComma(v []byte, off int) []Span {
	var out []Span
	s := 0
	for i := 0; i <= len(v); i++ {
		if i == len(v) || v[i] == ',' {
			a, b := s, i
			for a < b && (v[a] == ' ' || v[a] == '\t') {
				a++
			}
			for b > a && (v[b-1] == ' ' || v[b-1] == '\t') {
				b--
			}
			if b > a {
				out = append(out, Span{off + a, off + b})
			}
			s = i + 1
		}
	}
	return out
}

// ASCIIEqualFold reports whether b equals s, which is lower case, ignoring
// ASCII case only.
func ASCIIEqualFold(b []byte, s string) bool {
	if len(b) != len(s) {
		return false
	}
	for i := 0; i < len(b); i++ {
		c := b[i]
		if 'A' <= c && c <= 'Z' {
			c += 'a' - 'A'
		}
		if c != s[i] {
			return false
		}
	}
	return true
}

// hopByHopByLen lists the RFC 9110 connection-specific fields and the
// forward proxy's own by the length of their names, so a field name is
// compared only with the names of its length (most match none).
var hopByHopByLen = func() (t [len("proxy-authorization") + 1][]string) {
	for _, s := range []string{"connection", "keep-alive", "proxy-connection", "proxy-authorization",
		"proxy-authenticate", "te", "trailer", "transfer-encoding", "upgrade"} {
		t[len(s)] = append(t[len(s)], s)
	}
	return t
}()

// hopByHop reports whether a field must not be forwarded: the RFC 9110
// connection-specific fields, any field the Connection header names, and
// the forward proxy's own. Upgrade and Connection are re-added by the writer
// for an upgrade.
func (h *Head) hopByHop(name []byte) bool {
	if len(name) < len(hopByHopByLen) {
		for _, s := range hopByHopByLen[len(name)] {
			if ASCIIEqualFold(name, s) {
				return true
			}
		}
	}
	for _, t := range h.connTokens {
		if bytes.EqualFold(name, h.Bytes(t)) {
			return true
		}
	}
	return false
}

// ReqHasBody reports whether a request carries a body.
func (h *Head) ReqHasBody() bool { return h.Chunked || h.ContentLength > 0 }

// RespHasBody reports whether a response to a request with method carries a
// body (RFC 9112 6.3).
func (h *Head) RespHasBody(head bool) bool {
	if head || h.Status < 200 || h.Status == 204 || h.Status == 304 {
		return false
	}
	return true
}

// Values returns the value of every field named name (ASCII case
// insensitive), in order.
func (h *Head) Values(name string) []string {
	var out []string
	name = string(bytes.ToLower([]byte(name)))
	for _, f := range h.fields {
		if ASCIIEqualFold(h.Bytes(f.name), name) {
			out = append(out, h.Str(f.value))
		}
	}
	return out
}

// WriteFields writes every end-to-end field of h, skipping hop-by-hop ones,
// the framing fields (see WriteFraming) and those drop (if set) reports.
func (h *Head) WriteFields(w *bufio.Writer, drop func(name []byte) bool) {
	for _, f := range h.fields {
		name := h.Bytes(f.name)
		// Content-Length is framing: writeFraming writes it once.
		if h.hopByHop(name) || ASCIIEqualFold(name, "content-length") || (drop != nil && drop(name)) {
			continue
		}
		w.Write(name)
		w.WriteString(": ")
		w.Write(h.Bytes(f.value))
		w.WriteString("\r\n")
	}
}

// writeInt writes v in decimal into w's free buffer space (a string from
// strconv would be an allocation per call).
func writeInt(w *bufio.Writer, v int64) {
	w.Write(strconv.AppendInt(w.AvailableBuffer(), v, 10))
}

// WriteFraming writes the framing fields for a body relayed as-is.
func (h *Head) WriteFraming(w *bufio.Writer) {
	if h.Chunked {
		w.WriteString("Transfer-Encoding: chunked\r\n")
	} else if h.ContentLength >= 0 {
		w.WriteString("Content-Length: ")
		writeInt(w, h.ContentLength)
		w.WriteString("\r\n")
	}
	if h.Upgrade {
		w.WriteString("Connection: Upgrade\r\nUpgrade: ")
		w.Write(h.UpgradeValue())
		w.WriteString("\r\n")
	}
}

// UpgradeValue returns the value of the Upgrade field, nil without one.
func (h *Head) UpgradeValue() []byte {
	for _, f := range h.fields {
		if ASCIIEqualFold(h.Bytes(f.name), "upgrade") {
			return h.Bytes(f.value)
		}
	}
	return nil
}

// UpgradeTokens returns the protocols the Upgrade field lists, trimmed.
func (h *Head) UpgradeTokens() [][]byte {
	v := h.UpgradeValue()
	var out [][]byte
	for _, t := range splitComma(v, 0) {
		out = append(out, v[t.s:t.e])
	}
	return out
}

// OriginForm returns the request target as origin-form: an absolute-form
// target (forward proxy) loses its scheme and authority.
func (h *Head) OriginForm() []byte {
	t := h.Bytes(h.Target)
	if len(t) > 0 && t[0] == '/' || bytes.Equal(t, []byte("*")) {
		return t
	}
	if i := bytes.Index(t, []byte("://")); i > 0 {
		rest := t[i+3:]
		if j := bytes.IndexAny(rest, "/?"); j >= 0 {
			if rest[j] == '?' {
				return append([]byte("/"), rest[j:]...)
			}
			return rest[j:]
		}
		return []byte("/")
	}
	return t
}

// ForwardTarget is the request target to send upstream: the normalised one
// if the server sidecar set it, else the origin-form of the received one.
func (h *Head) ForwardTarget() []byte {
	if h.FwdTarget != nil {
		return h.FwdTarget
	}
	return h.OriginForm()
}

// Path returns the target's path, without query, for authorization and logs.
func (h *Head) Path() string {
	t := h.ForwardTarget()
	if i := bytes.IndexByte(t, '?'); i >= 0 {
		t = t[:i]
	}
	return string(t)
}

// RelayBody relays a message body from br to w as framed by h: exactly
// Content-Length bytes, the chunked encoding verbatim, or (untilEOF) all
// bytes until the sender closes. Data is flushed as it arrives, so streamed
// responses are not held back. dropTrailer, if set, reports trailer fields
// of a chunked body that must not be relayed (the proxy sets it for request
// bodies).
func RelayBody(w *bufio.Writer, br *bufio.Reader, h *Head, untilEOF bool, buf []byte, dropTrailer func(name []byte) bool) (int64, error) {
	switch {
	case h.Chunked:
		return copyChunked(w, br, buf, dropTrailer)
	case h.ContentLength >= 0:
		return copyN(w, br, h.ContentLength, buf)
	case untilEOF:
		return CopyAll(w, br, buf)
	}
	return 0, nil
}

// RelayBuffered relays a Content-Length body that is already all in br's
// buffer (a small message read with its head) straight from there, and
// reports whether it did; RelayBody does the rest, with a relay buffer.
// Like RelayBody it leaves the end of the body in w for the caller to
// flush.
func RelayBuffered(w *bufio.Writer, br *bufio.Reader, h *Head) (bool, error) {
	if h.Chunked || h.ContentLength < 0 || h.ContentLength > int64(br.Buffered()) {
		return false, nil
	}
	b, _ := br.Peek(int(h.ContentLength))
	_, err := w.Write(b)
	br.Discard(len(b))
	return true, err
}

func copyN(w *bufio.Writer, r io.Reader, n int64, buf []byte) (int64, error) {
	var done int64
	for done < n {
		chunk := buf
		if rem := n - done; rem < int64(len(chunk)) {
			chunk = chunk[:rem]
		}
		nr, err := r.Read(chunk)
		if nr > 0 {
			if _, werr := w.Write(chunk[:nr]); werr != nil {
				return done, werr
			}
			done += int64(nr)
			// Flush as data arrives, except the end: the caller flushes
			// that after releasing the upstream connection, so a client
			// that sends its next request at once finds it in the pool.
			if done < n {
				if werr := w.Flush(); werr != nil {
					return done, werr
				}
			}
		}
		if err != nil {
			if err == io.EOF && done < n {
				return done, io.ErrUnexpectedEOF
			}
			if done == n {
				return done, nil
			}
			return done, err
		}
	}
	return done, nil
}

// CopyAll relays r to w until EOF, flushing as data arrives.
func CopyAll(w *bufio.Writer, r io.Reader, buf []byte) (int64, error) {
	var done int64
	for {
		nr, err := r.Read(buf)
		if nr > 0 {
			if _, werr := w.Write(buf[:nr]); werr != nil {
				return done, werr
			}
			if werr := w.Flush(); werr != nil {
				return done, werr
			}
			done += int64(nr)
		}
		if err == io.EOF {
			return done, nil
		}
		if err != nil {
			return done, err
		}
	}
}

// copyChunked relays a chunked body verbatim, parsing only the chunk sizes
// to find its end (last chunk and trailer section). A trailer field that
// dropTrailer (if set) reports is dropped.
func copyChunked(w *bufio.Writer, br *bufio.Reader, buf []byte, dropTrailer func(name []byte) bool) (int64, error) {
	var total int64
	for {
		line, err := readChunkLine(br, buf)
		if err != nil {
			return total, err
		}
		size, err := parseChunkSize(line)
		if err != nil {
			return total, err
		}
		w.Write(line)
		w.WriteString("\r\n")
		if size == 0 {
			// Trailer section: fields until an empty line.
			for {
				tl, err := readChunkLine(br, buf)
				if err != nil {
					return total, err
				}
				if i := bytes.IndexByte(tl, ':'); dropTrailer != nil && i > 0 && dropTrailer(tl[:i]) {
					continue
				}
				w.Write(tl)
				w.WriteString("\r\n")
				if len(tl) == 0 {
					return total, nil // the caller flushes
				}
			}
		}
		n, err := copyN(w, br, size, buf)
		total += n
		if err != nil {
			return total, err
		}
		crlf, err := readChunkLine(br, buf)
		if err != nil {
			return total, err
		}
		if len(crlf) != 0 {
			return total, fmt.Errorf("%w: chunk data longer than its size", ErrBadHead)
		}
		w.WriteString("\r\n")
		// A streamed response is delivered chunk by chunk.
		if err := w.Flush(); err != nil {
			return total, err
		}
	}
}

// readChunkLine reads a CRLF-terminated line (without the CRLF). A bare LF
// is refused: it is where request smuggling between parsers happens. A
// line longer than br's buffer is gathered in scratch (the relay's
// buffer, free while a line is read) and refused past len(scratch).
func readChunkLine(br *bufio.Reader, scratch []byte) ([]byte, error) {
	line, err := br.ReadSlice('\n')
	if err == bufio.ErrBufferFull {
		n := 0
		for err == bufio.ErrBufferFull && n+len(line) <= len(scratch) {
			n += copy(scratch[n:], line)
			line, err = br.ReadSlice('\n')
		}
		if err == nil && n+len(line) <= len(scratch) {
			n += copy(scratch[n:], line)
			line = scratch[:n]
		} else if err == nil || err == bufio.ErrBufferFull {
			err = bufio.ErrBufferFull
		}
	}
	if err != nil {
		if err == io.EOF {
			return nil, io.ErrUnexpectedEOF
		}
		if err == bufio.ErrBufferFull {
			return nil, fmt.Errorf("%w: chunk line too long", ErrBadHead)
		}
		return nil, err
	}
	if len(line) < 2 || line[len(line)-2] != '\r' {
		return nil, fmt.Errorf("%w: chunk line not terminated by CRLF", ErrBadHead)
	}
	return line[:len(line)-2], nil
}

func parseChunkSize(line []byte) (int64, error) {
	if i := bytes.IndexByte(line, ';'); i >= 0 {
		line = line[:i]
	}
	line = bytes.TrimRight(line, " \t")
	if len(line) == 0 || len(line) > 15 {
		return 0, fmt.Errorf("%w: bad chunk size %q", ErrBadHead, line)
	}
	var n int64
	for _, c := range line {
		var d byte
		switch {
		case c >= '0' && c <= '9':
			d = c - '0'
		case c >= 'a' && c <= 'f':
			d = c - 'a' + 10
		case c >= 'A' && c <= 'F':
			d = c - 'A' + 10
		default:
			return 0, fmt.Errorf("%w: bad chunk size %q", ErrBadHead, line)
		}
		n = n<<4 | int64(d)
	}
	return n, nil
}

// WriteRequestHead writes a request head upstream: the forward target
// (ForwardTarget), the end-to-end fields but those drop (if set) reports,
// the framing, then extra (whole header lines, e.g. the proxy's own
// fields) and a Host if the client sent none and host is set.
func WriteRequestHead(w *bufio.Writer, req *Head, extra []byte, drop func([]byte) bool, host string) {
	w.Write(req.Bytes(req.Method))
	w.WriteByte(' ')
	w.Write(req.ForwardTarget())
	w.WriteString(" HTTP/1.1\r\n")
	if !req.HasHost && host != "" {
		w.WriteString("Host: ")
		w.WriteString(host)
		w.WriteString("\r\n")
	}
	req.WriteFields(w, drop)
	req.WriteFraming(w)
	w.Write(extra)
	w.WriteString("\r\n")
}

// WriteResponseHead writes a response head downstream; conn, if set, is the
// Connection header to send ("close").
func WriteResponseHead(w *bufio.Writer, resp *Head, conn string) {
	w.WriteString("HTTP/1.1 ")
	writeInt(w, int64(resp.Status))
	w.WriteByte(' ')
	w.Write(resp.Bytes(resp.Reason))
	w.WriteString("\r\n")
	resp.WriteFields(w, nil)
	resp.WriteFraming(w)
	if conn != "" {
		w.WriteString("Connection: ")
		w.WriteString(conn)
		w.WriteString("\r\n")
	}
	w.WriteString("\r\n")
}
