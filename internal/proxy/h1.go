package proxy

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"strconv"
)

// This file is the proxy's HTTP/1.x codec. The sidecar forwards every
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

var (
	errHeadTooLarge = errors.New("http: message head larger than 64 KiB")
	errBadHead      = errors.New("http: malformed message head")
	// errHTTP2Preface: HTTP/2 with prior knowledge where HTTP/1.x is read.
	errHTTP2Preface = fmt.Errorf("%w: HTTP/2 connection preface on a port that is HTTP/1.x (declare the port HTTP2 or GRPC to relay HTTP/2)", errBadHead)
)

// span is a [start,end) slice of head.buf.
type span struct{ s, e int }

type field struct{ name, value span }

// head is a parsed request or response head. It is reused across messages on
// one connection; its spans point into buf.
type head struct {
	buf    []byte
	fields []field

	// request line
	method, target span
	// status line
	status int
	reason span

	minor int // HTTP/1.<minor>

	contentLength int64 // -1: not given
	chunked       bool
	// close: the sender will close after this message (Connection: close,
	// or HTTP/1.0 without keep-alive).
	close bool
	// upgrade: Connection: upgrade with an Upgrade header.
	upgrade   bool
	expect100 bool
	host      span
	hasHost   bool
	// request: this is a request head (trailers of its body are filtered).
	request bool
	// fwdTarget, if set, is the request target to forward instead of the
	// one received (the server sidecar's normalised path).
	fwdTarget []byte
	// connTokens are header names listed in Connection (hop-by-hop).
	connTokens []span
}

func (h *head) str(s span) string      { return string(h.buf[s.s:s.e]) }
func (h *head) bytesOf(s span) []byte  { return h.buf[s.s:s.e] }
func (h *head) methodIs(m string) bool { return string(h.buf[h.method.s:h.method.e]) == m }

func (h *head) reset() {
	h.buf = h.buf[:0]
	h.fields = h.fields[:0]
	h.connTokens = h.connTokens[:0]
	h.status, h.minor = 0, 1
	h.contentLength = -1
	h.chunked, h.close, h.upgrade, h.expect100, h.hasHost = false, false, false, false, false
	h.request, h.fwdTarget = false, nil
}

// readHead reads one message head from br. request selects the start line
// grammar. io.EOF before any byte means the peer closed between messages.
func (h *head) read(br *bufio.Reader, request bool) error {
	h.reset()
	h.request = request
	nlines := 0
	for {
		line, err := br.ReadSlice('\n')
		if err == bufio.ErrBufferFull {
			return errHeadTooLarge
		}
		if err != nil {
			if err == io.EOF && len(h.buf) == 0 && len(line) == 0 {
				return io.EOF
			}
			if err == io.EOF {
				return io.ErrUnexpectedEOF
			}
			return err
		}
		if len(h.buf)+len(line) > maxHeadBytes {
			return errHeadTooLarge
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
		return errBadHead
	}
	return h.finish(request)
}

func isTokenChar(c byte) bool {
	switch {
	case c >= 'a' && c <= 'z', c >= 'A' && c <= 'Z', c >= '0' && c <= '9':
		return true
	}
	return bytes.IndexByte([]byte("!#$%&'*+-.^_`|~"), c) >= 0
}

func (h *head) parseStart(start int, request bool) error {
	line := h.buf[start:]
	sp1 := bytes.IndexByte(line, ' ')
	if sp1 <= 0 {
		return errBadHead
	}
	if request {
		sp2 := bytes.LastIndexByte(line, ' ')
		if sp2 <= sp1+1 {
			return errBadHead
		}
		for _, c := range line[:sp1] {
			if !isTokenChar(c) {
				return errBadHead
			}
		}
		for _, c := range line[sp1+1 : sp2] {
			if c <= ' ' || c == 0x7f {
				return errBadHead
			}
		}
		minor, ok := parseVersion(line[sp2+1:])
		if !ok {
			if string(line) == "PRI * HTTP/2.0" {
				return errHTTP2Preface
			}
			return errBadHead
		}
		h.method = span{start, start + sp1}
		h.target = span{start + sp1 + 1, start + sp2}
		h.minor = minor
		return nil
	}
	minor, ok := parseVersion(line[:sp1])
	if !ok || len(line) < sp1+4 {
		return errBadHead
	}
	code := line[sp1+1 : sp1+4]
	st := 0
	for _, c := range code {
		if c < '0' || c > '9' {
			return errBadHead
		}
		st = st*10 + int(c-'0')
	}
	if st < 100 || (len(line) > sp1+4 && line[sp1+4] != ' ') {
		return errBadHead
	}
	h.status, h.minor = st, minor
	h.reason = span{min(start+sp1+5, start+len(line)), start + len(line)}
	return nil
}

func parseVersion(b []byte) (int, bool) {
	if len(b) != 8 || string(b[:7]) != "HTTP/1." || b[7] < '0' || b[7] > '9' {
		return 0, false
	}
	return int(b[7] - '0'), true
}

func (h *head) parseField(start int) error {
	line := h.buf[start:]
	if line[0] == ' ' || line[0] == '\t' {
		return errBadHead // obsolete line folding
	}
	colon := bytes.IndexByte(line, ':')
	if colon <= 0 {
		return errBadHead
	}
	for _, c := range line[:colon] {
		if !isTokenChar(c) {
			return errBadHead
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
			return errBadHead
		}
	}
	h.fields = append(h.fields, field{span{start, start + colon}, span{start + vs, start + ve}})
	return nil
}

// finish interprets the fields a proxy needs.
func (h *head) finish(request bool) error {
	closeTok, keepAlive := false, false
	connUpgrade := false
	hasUpgrade := false
	te := false
	for _, f := range h.fields {
		name, value := h.bytesOf(f.name), h.bytesOf(f.value)
		switch {
		case asciiEqualFold(name, "content-length"):
			n, err := parseContentLength(value)
			if err != nil {
				return err
			}
			if h.contentLength >= 0 && h.contentLength != n {
				return fmt.Errorf("%w: conflicting Content-Length", errBadHead)
			}
			h.contentLength = n
		case asciiEqualFold(name, "transfer-encoding"):
			if te || !asciiEqualFold(value, "chunked") {
				// Only a single "chunked" is understood; anything else
				// cannot be framed safely.
				return fmt.Errorf("%w: unsupported Transfer-Encoding %q", errBadHead, value)
			}
			te, h.chunked = true, true
		case asciiEqualFold(name, "connection"):
			for _, tok := range splitComma(value, f.value.s) {
				t := h.bytesOf(tok)
				switch {
				case asciiEqualFold(t, "close"):
					closeTok = true
				case asciiEqualFold(t, "keep-alive"):
					keepAlive = true
				case asciiEqualFold(t, "upgrade"):
					connUpgrade = true
				}
				h.connTokens = append(h.connTokens, tok)
			}
		case asciiEqualFold(name, "upgrade"):
			hasUpgrade = true
		case asciiEqualFold(name, "expect"):
			h.expect100 = asciiEqualFold(value, "100-continue")
		case asciiEqualFold(name, "host"):
			if h.hasHost {
				return fmt.Errorf("%w: more than one Host", errBadHead)
			}
			h.host, h.hasHost = f.value, true
		}
	}
	h.close = closeTok || (h.minor == 0 && !keepAlive)
	if te && h.contentLength >= 0 {
		return fmt.Errorf("%w: both Content-Length and Transfer-Encoding", errBadHead)
	}
	if te && h.minor == 0 {
		return fmt.Errorf("%w: Transfer-Encoding in HTTP/1.0", errBadHead)
	}
	h.upgrade = connUpgrade && hasUpgrade
	if request && h.minor == 1 && !h.hasHost {
		return fmt.Errorf("%w: HTTP/1.1 request without Host", errBadHead)
	}
	return nil
}

func parseContentLength(v []byte) (int64, error) {
	if len(v) == 0 || len(v) > 18 {
		return 0, fmt.Errorf("%w: bad Content-Length %q", errBadHead, v)
	}
	var n int64
	for _, c := range v {
		if c < '0' || c > '9' {
			return 0, fmt.Errorf("%w: bad Content-Length %q", errBadHead, v)
		}
		n = n*10 + int64(c-'0')
	}
	return n, nil
}

// splitComma splits a comma list into trimmed, non-empty spans; off is the
// offset of v in h.buf.
func splitComma(v []byte, off int) []span {
	var out []span
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
				out = append(out, span{off + a, off + b})
			}
			s = i + 1
		}
	}
	return out
}

func asciiEqualFold(b []byte, s string) bool {
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

// hopByHop reports whether a field must not be forwarded: the RFC 9110
// connection-specific fields, any field the Connection header names, and
// the forward proxy's own. Upgrade and Connection are re-added by the writer
// for an upgrade.
func (h *head) hopByHop(name []byte) bool {
	for _, s := range [...]string{"connection", "keep-alive", "proxy-connection", "proxy-authorization",
		"proxy-authenticate", "te", "trailer", "transfer-encoding", "upgrade"} {
		if asciiEqualFold(name, s) {
			return true
		}
	}
	for _, t := range h.connTokens {
		if bytes.EqualFold(name, h.bytesOf(t)) {
			return true
		}
	}
	return false
}

// hasBody reports whether a request carries a body.
func (h *head) reqHasBody() bool { return h.chunked || h.contentLength > 0 }

// respHasBody reports whether a response to a request with method carries a
// body (RFC 9112 6.3).
func (h *head) respHasBody(head bool) bool {
	if head || h.status < 200 || h.status == 204 || h.status == 304 {
		return false
	}
	return true
}

// writeFields writes every end-to-end field of h, skipping hop-by-hop ones,
// the framing fields (see writeFraming) and those drop (if set) reports.
func (h *head) writeFields(w *bufio.Writer, drop func(name []byte) bool) {
	for _, f := range h.fields {
		name := h.bytesOf(f.name)
		// Content-Length is framing: writeFraming writes it once.
		if h.hopByHop(name) || asciiEqualFold(name, "content-length") || (drop != nil && drop(name)) {
			continue
		}
		w.Write(name)
		w.WriteString(": ")
		w.Write(h.bytesOf(f.value))
		w.WriteString("\r\n")
	}
}

// writeFraming writes the framing fields for a body relayed as-is.
func (h *head) writeFraming(w *bufio.Writer) {
	if h.chunked {
		w.WriteString("Transfer-Encoding: chunked\r\n")
	} else if h.contentLength >= 0 {
		w.WriteString("Content-Length: ")
		w.WriteString(strconv.FormatInt(h.contentLength, 10))
		w.WriteString("\r\n")
	}
	if h.upgrade {
		w.WriteString("Connection: Upgrade\r\nUpgrade: ")
		w.Write(h.upgradeValue())
		w.WriteString("\r\n")
	}
}

func (h *head) upgradeValue() []byte {
	for _, f := range h.fields {
		if asciiEqualFold(h.bytesOf(f.name), "upgrade") {
			return h.bytesOf(f.value)
		}
	}
	return nil
}

// originForm returns the request target as origin-form: an absolute-form
// target (forward proxy) loses its scheme and authority.
func (h *head) originForm() []byte {
	t := h.bytesOf(h.target)
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

// forwardTarget is the request target to send upstream: the normalised one
// if the server sidecar set it, else the origin-form of the received one.
func (h *head) forwardTarget() []byte {
	if h.fwdTarget != nil {
		return h.fwdTarget
	}
	return h.originForm()
}

// path returns the target's path, without query, for authorization and logs.
func (h *head) path() string {
	t := h.forwardTarget()
	if i := bytes.IndexByte(t, '?'); i >= 0 {
		t = t[:i]
	}
	return string(t)
}

// relayBody relays a message body from br to w as framed by h: exactly
// Content-Length bytes, the chunked encoding verbatim, or (untilEOF) all
// bytes until the sender closes. Data is flushed as it arrives, so streamed
// responses are not held back.
func relayBody(w *bufio.Writer, br *bufio.Reader, h *head, untilEOF bool, buf []byte) (int64, error) {
	switch {
	case h.chunked:
		return copyChunked(w, br, buf, h.request)
	case h.contentLength >= 0:
		return copyN(w, br, h.contentLength, buf)
	case untilEOF:
		return copyAll(w, br, buf)
	}
	return 0, nil
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

func copyAll(w *bufio.Writer, r io.Reader, buf []byte) (int64, error) {
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
// to find its end (last chunk and trailer section). In a request's trailer
// section (request), a field the app must never get from a client (any
// spelling of X-Forwarded-Client-Cert, see dropInbound) is dropped too.
func copyChunked(w *bufio.Writer, br *bufio.Reader, buf []byte, request bool) (int64, error) {
	var total int64
	for {
		line, err := readChunkLine(br)
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
				tl, err := readChunkLine(br)
				if err != nil {
					return total, err
				}
				if i := bytes.IndexByte(tl, ':'); request && i > 0 && dropInbound(tl[:i]) {
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
		crlf, err := readChunkLine(br)
		if err != nil {
			return total, err
		}
		if len(crlf) != 0 {
			return total, fmt.Errorf("%w: chunk data longer than its size", errBadHead)
		}
		w.WriteString("\r\n")
		// A streamed response is delivered chunk by chunk.
		if err := w.Flush(); err != nil {
			return total, err
		}
	}
}

// readChunkLine reads a CRLF-terminated line (without the CRLF). A bare LF
// is refused: it is where request smuggling between parsers happens.
func readChunkLine(br *bufio.Reader) ([]byte, error) {
	line, err := br.ReadSlice('\n')
	if err != nil {
		if err == io.EOF {
			return nil, io.ErrUnexpectedEOF
		}
		if err == bufio.ErrBufferFull {
			return nil, fmt.Errorf("%w: chunk line too long", errBadHead)
		}
		return nil, err
	}
	if len(line) < 2 || line[len(line)-2] != '\r' {
		return nil, fmt.Errorf("%w: chunk line not terminated by CRLF", errBadHead)
	}
	return line[:len(line)-2], nil
}

func parseChunkSize(line []byte) (int64, error) {
	if i := bytes.IndexByte(line, ';'); i >= 0 {
		line = line[:i]
	}
	line = bytes.TrimRight(line, " \t")
	if len(line) == 0 || len(line) > 15 {
		return 0, fmt.Errorf("%w: bad chunk size %q", errBadHead, line)
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
			return 0, fmt.Errorf("%w: bad chunk size %q", errBadHead, line)
		}
		n = n<<4 | int64(d)
	}
	return n, nil
}
