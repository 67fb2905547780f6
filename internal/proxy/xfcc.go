package proxy

import (
	"net/http"
	"strings"
)

// xfccHeader is Envoy's X-Forwarded-Client-Cert, which the seed's httpbin
// shows the app: By=<server identity>;URI=<client identity>.
const xfccHeader = "X-Forwarded-Client-Cert"

// XFCC returns the header value the server sidecar sets for an mTLS request.
// Identities are SPIFFE URIs, which cannot contain ';', ',' or '"' once
// validated, but the value is quoted if they ever do so that a client cannot
// smuggle extra elements into it.
func XFCC(by, uri string) string {
	return "By=" + xfccValue(by) + ";URI=" + xfccValue(uri)
}

func xfccValue(v string) string {
	if !needsQuote(v) {
		return v
	}
	var sb strings.Builder
	sb.WriteByte('"')
	for _, r := range v {
		switch {
		case r == '"' || r == '\\':
			sb.WriteByte('\\')
			sb.WriteRune(r)
		case r < 0x20 || r == 0x7f:
			// Control characters cannot appear in a header value at all.
		default:
			sb.WriteRune(r)
		}
	}
	sb.WriteByte('"')
	return sb.String()
}

// SetXFCC removes every X-Forwarded-Client-Cert the client sent (a client
// must never be able to claim an identity through a header) and, for an
// authenticated peer, sets the sidecar's own. An empty uri (plaintext peer)
// leaves the header absent.
func SetXFCC(h http.Header, by, uri string) {
	// Delete by canonical key and by any odd casing a raw header map may hold.
	h.Del(xfccHeader)
	for k := range h {
		if strings.EqualFold(k, xfccHeader) {
			delete(h, k)
		}
	}
	if uri != "" {
		h[xfccHeader] = []string{XFCC(by, uri)}
	}
}

// needsQuote reports whether v holds an XFCC separator, a quote or
// backslash, whitespace or a control character.
func needsQuote(v string) bool {
	for i := 0; i < len(v); i++ {
		switch c := v[i]; {
		case c <= ' ' || c == 0x7f || c == ';' || c == ',' || c == '=' || c == '"' || c == '\\':
			return true
		}
	}
	return false
}
