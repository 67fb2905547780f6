package proxy

import (
	"net/http"
	"strings"

	"github.com/meshauth/meshauth/internal/proxy/h1"
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

// SetXFCC removes every X-Forwarded-Client-Cert the client sent, in any
// spelling an app may map to the same name (a client must never be able to
// claim an identity through a header), and, for an authenticated peer, sets
// the sidecar's own. An empty uri (plaintext peer) leaves the header absent.
func SetXFCC(h http.Header, by, uri string) {
	for k := range h {
		if clientMayNotSend([]byte(k)) {
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

// Header names an app may map to the same variable. CGI (RFC 3875 4.1.18),
// WSGI, PHP, Rack and many frameworks turn a header name into a variable by
// upper-casing it and replacing '-' with '_': X-Forwarded-Client-Cert and
// X_Forwarded_Client_Cert both become HTTP_X_FORWARDED_CLIENT_CERT, and
// some also map '.' or other punctuation. So the server sidecar compares
// names in a normal form — ASCII lower case, every character but a letter
// or digit turned into '-' — and, on every inbound request in every mode:
//
//   - drops every field whose normal form is x-forwarded-client-cert (the
//     sidecar sets its own for a verified peer; a client never chooses its
//     identity through a header, whatever spelling it uses);
//   - drops every field that is another spelling (not just another case) of
//     a field the sidecar frames or manages a connection by:
//     Content_Length, Transfer_Encoding, Keep_Alive, Proxy_Connection,
//     Proxy_Authorization, Proxy_Authenticate, HTTP2_Settings. The sidecar
//     frames by the real field; an app server that also honoured the other
//     spelling would frame the request differently (request smuggling).
//
// Other fields with '_' pass unchanged: the sidecar does not act on them.
// This is Envoy's headers_with_underscores_action: DROP_HEADER narrowed to
// the names that matter (nginx drops every underscore field by default).
// Dropped names are listed in the request's access log line
// ("dropped_headers"). HTTP/2 requests (h2in.go) are filtered the same
// way, in the header block and the trailers.

// protectedNames are the normal forms the sidecar manages (see above).
var protectedNames = [...]string{
	"x-forwarded-client-cert",
	"content-length", "transfer-encoding", "keep-alive", "proxy-connection",
	"proxy-authorization", "proxy-authenticate", "http2-settings",
}

// normalEqual reports whether name's normal form equals norm (lower case,
// letters, digits and '-').
func normalEqual(name []byte, norm string) bool {
	if len(name) != len(norm) {
		return false
	}
	for i := 0; i < len(name); i++ {
		c := name[i]
		switch {
		case 'A' <= c && c <= 'Z':
			c += 'a' - 'A'
		case 'a' <= c && c <= 'z', '0' <= c && c <= '9':
		default:
			c = '-'
		}
		if c != norm[i] {
			return false
		}
	}
	return true
}

// clientMayNotSend reports whether a request field named name must never
// reach the app from a client: X-Forwarded-Client-Cert in any spelling.
func clientMayNotSend(name []byte) bool {
	return normalEqual(name, xfccNorm)
}

const xfccNorm = "x-forwarded-client-cert"

// dropInbound reports whether the server sidecar drops a request field
// before the app: any spelling of X-Forwarded-Client-Cert, and any other
// spelling than the real one of a field it frames or manages the
// connection by (the real ones are handled as framing and hop-by-hop).
func dropInbound(name []byte) bool {
	for _, n := range protectedNames {
		if normalEqual(name, n) && (n == xfccNorm || !h1.ASCIIEqualFold(name, n)) {
			return true
		}
	}
	return false
}
