package proxy

// Kind is what the first bytes of a connection look like.
type Kind int

const (
	// KindUnknown: too few bytes to tell yet.
	KindUnknown Kind = iota
	// KindTLS: a TLS handshake record (a ClientHello follows).
	KindTLS
	// KindHTTP: an HTTP/1.x request line ("GET / HTTP/1.1").
	KindHTTP
	// KindOther: anything else (another protocol, or garbage).
	KindOther
	// KindHTTP2: the HTTP/2 connection preface ("PRI * HTTP/2.0...").
	KindHTTP2
)

func (k Kind) String() string {
	switch k {
	case KindTLS:
		return "tls"
	case KindHTTP:
		return "http"
	case KindOther:
		return "other"
	case KindHTTP2:
		return "http2"
	}
	return "unknown"
}

// sniffLen is how many bytes Sniff needs at most to decide.
const sniffLen = 8

var httpMethods = [...]string{"GET ", "HEAD ", "POST ", "PUT ", "DELETE ", "CONNECT ", "OPTIONS ", "TRACE ", "PATCH "}

// Sniff classifies the first bytes of a connection. It never needs more than
// sniffLen bytes and returns KindUnknown only while b is a prefix of
// something it would recognise, so a caller reads until it gets an answer,
// EOF or its deadline.
//
// A TLS record starts with content type 22 (handshake) and version major 3;
// we check the handshake type (1, ClientHello) too when present so that
// random binary starting with 0x16 0x03 is less likely to be taken for TLS.
func Sniff(b []byte) Kind {
	if len(b) == 0 {
		return KindUnknown
	}
	if b[0] == 0x16 {
		if len(b) < 2 {
			return KindUnknown
		}
		if b[1] != 0x03 {
			return KindOther
		}
		if len(b) < 6 {
			return KindUnknown
		}
		// b[2] is the minor version (0..4 seen in the wild for the record
		// layer); b[3:5] the record length; b[5] the handshake type.
		if b[2] > 0x04 || b[5] != 0x01 {
			return KindOther
		}
		return KindTLS
	}
	prefix := false
	if n := min(len(b), sniffLen); string(b[:n]) == h2Preface[:n] {
		if n == sniffLen {
			return KindHTTP2
		}
		prefix = true
	}
	for _, m := range httpMethods {
		n := min(len(b), len(m))
		if string(b[:n]) == m[:n] {
			if n == len(m) {
				return KindHTTP
			}
			prefix = true
		}
	}
	if prefix {
		return KindUnknown
	}
	return KindOther
}
