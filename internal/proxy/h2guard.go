package proxy

import (
	"bufio"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"

	"golang.org/x/net/http2/hpack"
)

// HTTP/2 on an inbound port declared HTTP2 or GRPC is not terminated per
// request yet: the server sidecar authorizes the connection (with TCP
// semantics: a rule that names paths or methods never matches it) and
// relays the client's byte stream to the app. It does not relay blindly:
// h2Guard reads the stream frame by frame and decodes every header block
// with an HPACK decoder fed exactly what the app's decoder is fed, so it
// sees every field the app will see. A field the app must never get from a
// client — X-Forwarded-Client-Cert in any spelling (see clientMayNotSend) —
// ends the connection before the frame that completes it is passed on. So
// on HTTP/2 a client cannot claim an identity through a header.
//
// For an mTLS peer the guard adds the verified XFCC to each request's
// header block: the frame that ends the block loses its END_HEADERS flag
// and is followed by a CONTINUATION frame holding one "literal never
// indexed" field (RFC 7541 6.2.3), which leaves the HPACK dynamic tables of
// both ends untouched. Trailers get none.

const h2Preface = "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"

// HTTP/2 frame types and flags the guard interprets (RFC 9113 section 6).
const (
	h2FrameHeaders      = 0x1
	h2FramePushPromise  = 0x5
	h2FrameContinuation = 0x9

	h2FlagEndHeaders = 0x4
	h2FlagPadded     = 0x8
	h2FlagPriority   = 0x20
)

// h2MaxHeaderFrame bounds one HEADERS or CONTINUATION frame the guard
// buffers (the protocol allows 16 MiB; apps advertise 16 KiB by default).
const h2MaxHeaderFrame = 1 << 20

// h2MaxTableSize is the largest HPACK dynamic table a client may ask for.
// An app advertises at most this much in practice (the default is 4 KiB).
const h2MaxTableSize = 1 << 16

// errH2Refused wraps every reason the guard ends a connection for.
var errH2Refused = errors.New("http2 stream refused")

// reasonH2ClientXFCC is the access log reason of a refused HTTP/2 connection
// that carried a client X-Forwarded-Client-Cert.
const reasonH2ClientXFCC = "http2_client_xfcc"

// h2Guard is the client side of an inbound HTTP/2 relay (see above). Read
// returns the client's bytes unchanged once they are checked.
type h2Guard struct {
	net.Conn
	br      *bufio.Reader
	pending []byte // checked bytes not yet returned
	remain  int    // payload bytes of a pass-through frame not yet returned
	preface bool
	dec     *hpack.Decoder
	inBlock bool
	stream  uint32 // stream of the header block in progress
	bad     error  // why the connection is refused; sticky
	reason  string // short reason for logs
	buf     []byte
	// xfcc is the CONTINUATION frame payload to add to each request's
	// header block (nil: plaintext peer, none).
	xfcc      []byte
	request   bool   // the block in progress is a request's (not trailers)
	maxStream uint32 // highest stream a request was seen on
}

// newH2Guard guards the client side c; xfcc, if not empty, is the verified
// X-Forwarded-Client-Cert value to give each request.
func newH2Guard(c net.Conn, xfcc string) *h2Guard {
	g := &h2Guard{Conn: c, br: bufio.NewReaderSize(c, 16<<10)}
	if xfcc != "" {
		g.xfcc = hpackNeverIndexed(nil, xfccNorm, xfcc)
	}
	g.dec = hpack.NewDecoder(4096, g.field)
	g.dec.SetAllowedMaxDynamicTableSize(h2MaxTableSize)
	g.dec.SetMaxStringLength(h2MaxHeaderFrame)
	return g
}

func (g *h2Guard) field(f hpack.HeaderField) {
	if g.bad == nil && clientMayNotSend([]byte(f.Name)) {
		g.refuse(reasonH2ClientXFCC, "the client sent %q in an HTTP/2 header block of stream %d; the app never gets a client's X-Forwarded-Client-Cert", f.Name, g.stream)
	}
}

func (g *h2Guard) refuse(reason, format string, args ...any) {
	if g.bad == nil {
		g.reason = reason
		g.bad = fmt.Errorf("%w: "+format, append([]any{errH2Refused}, args...)...)
	}
}

// CloseWrite half-closes the client connection (relay's shutdown).
func (g *h2Guard) CloseWrite() error {
	if cw, ok := g.Conn.(closeWriter); ok {
		return cw.CloseWrite()
	}
	return nil
}

func (g *h2Guard) Read(p []byte) (int, error) {
	if g.bad != nil {
		return 0, g.bad
	}
	if len(g.pending) > 0 {
		n := copy(p, g.pending)
		g.pending = g.pending[n:]
		return n, nil
	}
	if g.remain > 0 {
		n, err := g.br.Read(p[:min(len(p), g.remain)])
		g.remain -= n
		return n, err
	}
	if err := g.next(); err != nil {
		return 0, err
	}
	n := copy(p, g.pending)
	g.pending = g.pending[n:]
	return n, nil
}

// next reads and checks the preface or one frame (its header, and the
// whole payload of a header frame), leaving the bytes to pass in pending.
func (g *h2Guard) next() error {
	if !g.preface {
		b := make([]byte, len(h2Preface))
		if _, err := io.ReadFull(g.br, b); err != nil {
			return err
		}
		if string(b) != h2Preface {
			g.refuse("http2_bad_preface", "the connection does not start with the HTTP/2 preface")
			return g.bad
		}
		g.preface, g.pending = true, b
		return nil
	}
	var hdr [9]byte
	if _, err := io.ReadFull(g.br, hdr[:]); err != nil {
		return err
	}
	length := int(hdr[0])<<16 | int(hdr[1])<<8 | int(hdr[2])
	typ, flags := hdr[3], hdr[4]
	stream := binary.BigEndian.Uint32(hdr[5:9]) & 0x7fffffff
	if g.inBlock && (typ != h2FrameContinuation || stream != g.stream) {
		g.refuse("http2_protocol_error", "frame type %d on stream %d interrupts the header block of stream %d", typ, stream, g.stream)
		return g.bad
	}
	switch typ {
	case h2FramePushPromise:
		g.refuse("http2_protocol_error", "a client sent PUSH_PROMISE")
		return g.bad
	case h2FrameHeaders, h2FrameContinuation:
	default:
		g.pending = append(g.buf[:0], hdr[:]...)
		g.buf = g.pending
		g.remain = length
		return nil
	}
	if typ == h2FrameContinuation && !g.inBlock {
		g.refuse("http2_protocol_error", "CONTINUATION on stream %d without a header block", stream)
		return g.bad
	}
	if length > h2MaxHeaderFrame {
		g.refuse("http2_header_too_large", "a %d-byte header frame (the sidecar inspects at most %d)", length, h2MaxHeaderFrame)
		return g.bad
	}
	frame := append(g.buf[:0], hdr[:]...)
	frame = append(frame, make([]byte, length)...)
	g.buf = frame
	if _, err := io.ReadFull(g.br, frame[9:]); err != nil {
		return err
	}
	frag := frame[9:]
	if typ == h2FrameHeaders {
		if flags&h2FlagPadded != 0 {
			if len(frag) < 1 || int(frag[0]) > len(frag)-1 {
				g.refuse("http2_protocol_error", "bad padding in HEADERS on stream %d", stream)
				return g.bad
			}
			frag = frag[1 : len(frag)-int(frag[0])]
		}
		if flags&h2FlagPriority != 0 {
			if len(frag) < 5 {
				g.refuse("http2_protocol_error", "short priority in HEADERS on stream %d", stream)
				return g.bad
			}
			frag = frag[5:]
		}
		g.inBlock, g.stream = true, stream
		// A HEADERS frame on a new stream opens a request; on a known
		// one it carries trailers.
		g.request = stream > g.maxStream
		if g.request {
			g.maxStream = stream
		}
	}
	if _, err := g.dec.Write(frag); err != nil && g.bad == nil {
		g.refuse("http2_protocol_error", "HPACK on stream %d: %v", stream, err)
	}
	if g.bad == nil && flags&h2FlagEndHeaders != 0 {
		g.inBlock = false
		if err := g.dec.Close(); err != nil {
			g.refuse("http2_protocol_error", "HPACK on stream %d: %v", stream, err)
		}
	}
	if g.bad != nil {
		return g.bad
	}
	if flags&h2FlagEndHeaders != 0 && g.request && g.xfcc != nil {
		// The block ends here: let a CONTINUATION with the verified
		// XFCC end it instead.
		frame[4] &^= h2FlagEndHeaders
		n := len(g.xfcc)
		frame = append(frame, byte(n>>16), byte(n>>8), byte(n), h2FrameContinuation, h2FlagEndHeaders,
			byte(stream>>24), byte(stream>>16), byte(stream>>8), byte(stream))
		frame = append(frame, g.xfcc...)
		g.buf = frame
	}
	g.pending = frame
	return nil
}

// hpackNeverIndexed appends a "literal header field never indexed, new
// name" representation of name: value (RFC 7541 6.2.3), without Huffman
// coding.
func hpackNeverIndexed(b []byte, name, value string) []byte {
	b = append(b, 0x10)
	b = hpackString(b, name)
	return hpackString(b, value)
}

// hpackString appends a string literal: H=0, length as a 7-bit prefix
// integer (RFC 7541 5.1, 5.2), then the bytes.
func hpackString(b []byte, s string) []byte {
	n := uint64(len(s))
	if n < 127 {
		b = append(b, byte(n))
	} else {
		b = append(b, 127)
		n -= 127
		for n >= 128 {
			b = append(b, byte(n&0x7f|0x80))
			n >>= 7
		}
		b = append(b, byte(n))
	}
	return append(b, s...)
}
