package proxy

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"net"
	"net/http"
	"strings"
	"testing"

	"github.com/meshauth/meshauth/internal/proxy/h1"
)

// FuzzSniff: the PERMISSIVE sniffer never panics, needs at most sniffLen
// bytes, is stable once decided (more bytes never change the answer), and
// agrees with the TLS and HTTP grammars on what it claims.
func FuzzSniff(f *testing.F) {
	for _, s := range []string{
		"", "G", "GET ", "GET / HTTP/1.1\r\n", "POST /x", "CONNECT a:1 HTTP/1.1", "PRI * HTTP/2.0",
		"\x16", "\x16\x03", "\x16\x03\x01\x02\x00\x01", "\x16\x03\x05\x00\x00\x01", "\x16\x02", "\x00\x01garbage",
		"SSH-2.0-OpenSSH", "\x16\x03\x01\x02\x00\x02",
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		k := Sniff(b)
		if len(b) >= sniffLen && k == KindUnknown {
			t.Fatalf("Sniff(%q) undecided with %d bytes", b, len(b))
		}
		for i := 0; i <= len(b); i++ {
			prev := Sniff(b[:i])
			if prev != KindUnknown && prev != k {
				t.Fatalf("Sniff changed its mind: %q -> %v, %q -> %v", b[:i], prev, b, k)
			}
		}
		switch k {
		case KindTLS:
			if b[0] != 0x16 || b[1] != 0x03 || b[5] != 0x01 {
				t.Fatalf("Sniff(%q) = TLS without a handshake record", b)
			}
		case KindHTTP:
			sp := bytes.IndexByte(b, ' ')
			if sp <= 0 {
				t.Fatalf("Sniff(%q) = HTTP without a method", b)
			}
			found := false
			for _, m := range httpMethods {
				if string(b[:sp+1]) == m {
					found = true
				}
			}
			if !found {
				t.Fatalf("Sniff(%q) = HTTP with unknown method %q", b, b[:sp])
			}
		}
	})
}

// FuzzXFCC: whatever a client sends as X-Forwarded-Client-Cert (any casing,
// any value, several copies), SetXFCC leaves exactly the sidecar's value, and
// the value is a single element whose URI is the peer's, whatever the
// identities contain.
func FuzzXFCC(f *testing.F) {
	f.Add("By=spiffe://cluster.local/ns/a/sa/b;URI=spiffe://cluster.local/ns/x/sa/y", "x-forwarded-client-cert",
		"spiffe://cluster.local/ns/default/sa/httpbin", "spiffe://cluster.local/ns/default/sa/sleep")
	f.Add("", "X-FORWARDED-CLIENT-CERT", "a;b", "c,URI=evil")
	f.Add("URI=x", "X-Forwarded-Client-Cert", "", "")
	f.Fuzz(func(t *testing.T, forged, key, by, uri string) {
		h := http.Header{}
		h["X-Forwarded-Client-Cert"] = []string{forged}
		h[key] = []string{forged, forged}
		SetXFCC(h, by, uri)
		for k := range h {
			if strings.EqualFold(k, xfccHeader) && k != xfccHeader {
				t.Fatalf("forged header %q survived", k)
			}
		}
		got := h.Values(xfccHeader)
		if uri == "" {
			if len(got) != 0 {
				t.Fatalf("plaintext peer: XFCC %q set", got)
			}
			return
		}
		if len(got) != 1 || got[0] != XFCC(by, uri) {
			t.Fatalf("XFCC = %q, want exactly %q", got, XFCC(by, uri))
		}
		// The value splits into exactly two fields, By and URI, so neither
		// identity can inject another element or key.
		v := got[0]
		if strings.ContainsAny(strings.ReplaceAll(v, "\t", ""), "\r\n\x00") {
			t.Fatalf("XFCC %q holds control characters", v)
		}
		fields := splitXFCC(v)
		if len(fields) != 2 || !strings.HasPrefix(fields[0], "By=") || !strings.HasPrefix(fields[1], "URI=") {
			t.Fatalf("XFCC %q splits into %q", v, fields)
		}
	})
}

// splitXFCC splits on ';' and ',' outside double quotes (Envoy's grammar).
func splitXFCC(v string) []string {
	var out []string
	var cur strings.Builder
	inQ, esc := false, false
	for _, r := range v {
		switch {
		case esc:
			esc = false
		case r == '\\' && inQ:
			esc = true
		case r == '"':
			inQ = !inQ
		case (r == ';' || r == ',') && !inQ:
			out = append(out, cur.String())
			cur.Reset()
			continue
		}
		cur.WriteRune(r)
	}
	return append(out, cur.String())
}

// FuzzProxyRequest: any bytes a client sends to the HTTP proxy either fail
// to parse or give a target with a non-empty host and a port in range.
func FuzzProxyRequest(f *testing.F) {
	for _, s := range []string{
		"GET http://httpbin:8000/headers HTTP/1.1\r\nHost: httpbin:8000\r\n\r\n",
		"GET http://httpbin/ HTTP/1.1\r\nHost: x\r\n\r\n",
		"CONNECT httpbin:443 HTTP/1.1\r\nHost: httpbin:443\r\n\r\n",
		"CONNECT [::1]:8000 HTTP/1.1\r\n\r\n",
		"GET /headers HTTP/1.1\r\nHost: httpbin\r\n\r\n",
		"GET https://a:99999/ HTTP/1.1\r\n\r\n",
		"GET http://[::1]:0/ HTTP/1.1\r\n\r\n",
		"GET http://user@h:1/ HTTP/1.0\r\n\r\n",
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		// The sidecar's own parser: a target it accepts has a host and a
		// port in range.
		var h h1.Head
		if h.Read(bufio.NewReader(bytes.NewReader(b)), true) == nil && !h.MethodIs("CONNECT") {
			target := h.Str(h.Target)
			host, port, err := absoluteTarget(target)
			if err == nil && (host == "" || port == 0) {
				t.Fatalf("absoluteTarget(%q) = %q:%d", target, host, port)
			}
			// Differential check against net/url: where both accept, they
			// must agree on the destination.
			if err == nil {
				if r, uerr := http.NewRequest(http.MethodGet, target, nil); uerr == nil && r.URL.Host != "" {
					if h2, p2, perr := ProxyTarget(r); perr == nil && (!strings.EqualFold(h2, host) || p2 != port) {
						t.Fatalf("absoluteTarget(%q) = %s:%d, net/url says %s:%d", target, host, port, h2, p2)
					}
				}
			}
		}
		r, err := http.ReadRequest(bufio.NewReader(bytes.NewReader(b)))
		if err != nil {
			return
		}
		host, port, err := ProxyTarget(r)
		if err != nil {
			if host != "" || port != 0 {
				t.Fatalf("error %v with target %q:%d", err, host, port)
			}
			return
		}
		if host == "" || port == 0 || port > 65535 {
			t.Fatalf("ProxyTarget(%q) = %q:%d", b, host, port)
		}
		if r.Method != http.MethodConnect && r.URL.Scheme != "http" {
			t.Fatalf("non-http scheme %q accepted", r.URL.Scheme)
		}
	})
}

// ProxyTarget is the net/url reading of a forward-proxy request, the
// reference the fuzz test holds absoluteTarget to. It returns the destination host and port of a forward-proxy
// request: the authority of a CONNECT, or the host of an absolute-form URI
// (http://host[:port]/path). Origin-form requests ("GET /path") are not
// proxy requests and get an error saying how to use the sidecar.
func ProxyTarget(r *http.Request) (string, uint32, error) {
	if r.Method == http.MethodConnect {
		host, ps, err := net.SplitHostPort(r.Host)
		if err != nil {
			return "", 0, fmt.Errorf("CONNECT target %q: want host:port", r.Host)
		}
		port, err := parsePort(ps)
		if err != nil || host == "" {
			return "", 0, fmt.Errorf("CONNECT target %q: want host:port", r.Host)
		}
		return host, port, nil
	}
	if r.URL == nil || r.URL.Host == "" {
		return "", 0, errors.New("not a proxy request (need an absolute URI such as http://httpbin:8000/headers; set http_proxy to this sidecar)")
	}
	if r.URL.Scheme != "http" {
		return "", 0, fmt.Errorf("scheme %q is not supported by the forward proxy (use http://, or CONNECT for TLS)", r.URL.Scheme)
	}
	host := r.URL.Hostname()
	if host == "" {
		return "", 0, fmt.Errorf("absolute URI %q has no host", r.URL.String())
	}
	port := uint32(80)
	if ps := r.URL.Port(); ps != "" {
		var err error
		if port, err = parsePort(ps); err != nil {
			return "", 0, fmt.Errorf("absolute URI port %q: %w", ps, err)
		}
	}
	return host, port, nil
}
