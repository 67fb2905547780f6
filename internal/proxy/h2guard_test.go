package proxy

import (
	"bufio"
	"bytes"
	"errors"
	"io"
	"testing"

	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"
)

// h2Frames builds a client's HTTP/2 stream: the preface, then one request
// per field list on streams 1, 3, ..., the header block split into
// CONTINUATION frames of at most split bytes, with padding and priority.
func h2Frames(t testing.TB, split int, reqs ...[]hpack.HeaderField) []byte {
	var out bytes.Buffer
	out.WriteString(h2Preface)
	fr := http2.NewFramer(&out, nil)
	var hb bytes.Buffer
	enc := hpack.NewEncoder(&hb)
	for i, fields := range reqs {
		hb.Reset()
		for _, f := range fields {
			enc.WriteField(f)
		}
		block := hb.Bytes()
		first := block[:min(split, len(block))]
		rest := block[len(first):]
		err := fr.WriteHeaders(http2.HeadersFrameParam{StreamID: uint32(2*i + 1), BlockFragment: first,
			EndStream: true, EndHeaders: len(rest) == 0, PadLength: 3,
			Priority: http2.PriorityParam{Weight: 15}})
		for err == nil && len(rest) > 0 {
			n := min(split, len(rest))
			err = fr.WriteContinuation(uint32(2*i+1), n == len(rest), rest[:n])
			rest = rest[n:]
		}
		if err == nil {
			err = fr.WriteData(uint32(2*i+1), true, []byte("body"))
		}
		if err != nil {
			t.Fatal(err)
		}
	}
	return out.Bytes()
}

func reqFields(extra ...string) []hpack.HeaderField {
	f := []hpack.HeaderField{{Name: ":method", Value: "GET"}, {Name: ":scheme", Value: "http"},
		{Name: ":path", Value: "/headers"}, {Name: ":authority", Value: "httpbin"}, {Name: "user-agent", Value: "test"}}
	for i := 0; i+1 < len(extra); i += 2 {
		f = append(f, hpack.HeaderField{Name: extra[i], Value: extra[i+1]})
	}
	return f
}

// runGuard passes in through an h2Guard and returns what it let through
// and the error that ended it (io.EOF: all of it).
func runGuard(in []byte) ([]byte, *h2Guard, error) {
	return runGuardXFCC(in, "")
}

func runGuardXFCC(in []byte, xfcc string) ([]byte, *h2Guard, error) {
	g := newH2Guard(nil, xfcc)
	g.br = bufio.NewReader(bytes.NewReader(in))
	var out bytes.Buffer
	buf := make([]byte, 7) // small reads: frame boundaries fall anywhere
	for {
		n, err := g.Read(buf)
		out.Write(buf[:n])
		if err != nil {
			return out.Bytes(), g, err
		}
	}
}

// TestH2GuardPassesCleanStreams: a clean stream goes through byte for byte,
// whatever the framing; an XFCC in any spelling, in any request, split
// across CONTINUATION frames or not, stops the stream before the frame that
// completes its header block.
func TestH2GuardPassesCleanStreams(t *testing.T) {
	for _, split := range []int{1, 5, 1 << 14} {
		clean := h2Frames(t, split, reqFields("x-custom_thing", "a"), reqFields("accept", "*/*"))
		out, _, err := runGuard(clean)
		if err != io.EOF || !bytes.Equal(out, clean) {
			t.Fatalf("split %d: clean stream: passed %d of %d bytes, err %v", split, len(out), len(clean), err)
		}
		for _, name := range []string{"x-forwarded-client-cert", "x_forwarded_client_cert", "x.forwarded.client.cert"} {
			bad := h2Frames(t, split, reqFields(), reqFields("accept", "*/*", name, forgedXFCC))
			out, g, err := runGuard(bad)
			if !errors.Is(err, errH2Refused) || g.reason != reasonH2ClientXFCC {
				t.Fatalf("split %d, %s: err %v reason %q; want a refusal", split, name, err, g.reason)
			}
			if bytes.Contains(out, []byte(forgedXFCC)) || !bytes.HasPrefix(bad, out) {
				t.Fatalf("split %d, %s: the forged value (or altered bytes) got through", split, name)
			}
		}
	}
}

// FuzzH2Guard: on any byte stream the guard never panics, passes a prefix
// of its input unchanged, and never passes a whole header block that an
// independent HTTP/2 framer decodes to a field with an XFCC-like name.
func FuzzH2Guard(f *testing.F) {
	f.Add(h2Frames(f, 1<<14, reqFields()))
	f.Add(h2Frames(f, 3, reqFields("x-forwarded-client-cert", "x")))
	f.Add(h2Frames(f, 7, reqFields(), reqFields("x_forwarded_client_cert", "y")))
	f.Add([]byte(h2Preface + "\x00\x00\x00\x04\x00\x00\x00\x00\x00"))
	f.Fuzz(func(t *testing.T, in []byte) {
		out, _, _ := runGuard(in)
		if !bytes.HasPrefix(in, out) {
			t.Fatalf("the guard altered the stream")
		}
		checkXFCC(t, out, "")
		// With a verified XFCC to add, an app sees at most that one.
		const verified = "By=spiffe://cluster.local/ns/default/sa/httpbin;URI=spiffe://cluster.local/ns/default/sa/sleep"
		out, _, _ = runGuardXFCC(in, verified)
		checkXFCC(t, out, verified)
	})
}

// checkXFCC decodes the stream the guard let through as the app would and
// fails if a header block holds an XFCC-like field other than one copy of
// verified.
func checkXFCC(t *testing.T, out []byte, verified string) {
	if len(out) < len(h2Preface) {
		return
	}
	fr := http2.NewFramer(io.Discard, bytes.NewReader(out[len(h2Preface):]))
	fr.ReadMetaHeaders = hpack.NewDecoder(4096, nil)
	fr.ReadMetaHeaders.SetAllowedMaxDynamicTableSize(h2MaxTableSize)
	fr.MaxHeaderListSize = 1 << 24
	for {
		fm, err := fr.ReadFrame()
		if err != nil {
			return
		}
		mh, ok := fm.(*http2.MetaHeadersFrame)
		if !ok {
			continue
		}
		n := 0
		for _, hf := range mh.Fields {
			if !clientMayNotSend([]byte(hf.Name)) {
				continue
			}
			n++
			if verified == "" || hf.Value != verified || n > 1 {
				t.Fatalf("a header block with %q: %q got through", hf.Name, hf.Value)
			}
		}
	}
}

// decodeH2 decodes a client's stream with an independent HTTP/2 framer and
// returns the fields of each complete header block, in order.
func decodeH2(t testing.TB, b []byte) [][]hpack.HeaderField {
	if !bytes.HasPrefix(b, []byte(h2Preface)) {
		t.Fatalf("no preface")
	}
	fr := http2.NewFramer(io.Discard, bytes.NewReader(b[len(h2Preface):]))
	fr.ReadMetaHeaders = hpack.NewDecoder(4096, nil)
	var out [][]hpack.HeaderField
	for {
		fm, err := fr.ReadFrame()
		if err == io.EOF {
			return out
		}
		if err != nil {
			t.Fatalf("framer: %v", err)
		}
		if mh, ok := fm.(*http2.MetaHeadersFrame); ok {
			out = append(out, mh.Fields)
		}
	}
}

// TestH2GuardSetsVerifiedXFCC: for an mTLS peer each request's header
// block ends with the verified XFCC (split across CONTINUATION frames or
// not), trailers get none, the fields the client sent are unchanged, and
// an independent decoder (the app's) keeps its HPACK state in step.
func TestH2GuardSetsVerifiedXFCC(t *testing.T) {
	want := XFCC(httpbinID, sleepID)
	for _, split := range []int{1, 4, 1 << 14} {
		in := h2Frames(t, split, reqFields("x-a", "1"), reqFields("x-a", "1"), reqFields("x-b", "2"))
		// Trailers on stream 1 after stream 5 opened: no XFCC for them.
		var tr bytes.Buffer
		var hb bytes.Buffer
		hpack.NewEncoder(&hb).WriteField(hpack.HeaderField{Name: "grpc-status", Value: "0"})
		http2.NewFramer(&tr, nil).WriteHeaders(http2.HeadersFrameParam{StreamID: 1, BlockFragment: hb.Bytes(), EndStream: true, EndHeaders: true})
		in = append(in, tr.Bytes()...)
		out, _, err := runGuardXFCC(in, want)
		if err != io.EOF {
			t.Fatalf("split %d: %v", split, err)
		}
		orig, got := decodeH2(t, in), decodeH2(t, out)
		if len(got) != len(orig) || len(got) != 4 {
			t.Fatalf("split %d: %d header blocks, want %d", split, len(got), len(orig))
		}
		for i := range got {
			n := len(orig[i])
			if i < 3 {
				n++
				if last := got[i][len(got[i])-1]; last.Name != "x-forwarded-client-cert" || last.Value != want || !last.Sensitive {
					t.Fatalf("split %d block %d: last field %+v, want the verified XFCC, never indexed", split, i, last)
				}
			}
			if len(got[i]) != n {
				t.Fatalf("split %d block %d: %d fields, want %d", split, i, len(got[i]), n)
			}
			for j := range orig[i] {
				if got[i][j] != orig[i][j] {
					t.Fatalf("split %d block %d field %d: %+v, client sent %+v", split, i, j, got[i][j], orig[i][j])
				}
			}
		}
	}
}
