package policy

import (
	"errors"
	"fmt"
	"strings"
)

// Path normalisation: the server sidecar authorizes the path an app will
// act on, not the bytes a client wrote. A rule that allows /public/* must
// not let /public/../secret, /public/%2e%2e/secret or //secret through to an
// app that normalises them to /secret itself. So the sidecar normalises the
// path first, authorizes the normalised path and forwards exactly that path
// (the query is kept as sent), as Envoy does for Istio with normalize_path,
// merge_slashes and path_with_escaped_slashes_action: REJECT_REQUEST.
//
// NormalizePath's rules, in order:
//
//  1. The path must start with "/". A '#' (a fragment never belongs in a
//     request), a backslash, or a percent-escaped '/' or '\' (%2F, %5C, any
//     case) is refused: apps disagree about whether they separate segments.
//     A '%' not followed by two hex digits is refused.
//  2. Percent-escapes of unreserved characters (ALPHA, DIGIT, '-', '.',
//     '_', '~') are decoded (%2e -> '.', %41 -> 'A'); every other escape is
//     kept, with upper-case hex digits (%3b -> %3B).
//  3. Runs of '/' are merged into one (//secret -> /secret).
//  4. Dot segments are removed as RFC 3986 section 5.2.4 says (/a/./b ->
//     /a/b, /a/b/../c -> /a/c, /.. -> /); a path that ended in a dot segment
//     keeps its trailing '/'.
//  5. A segment that is "." or ".." followed by a ';' parameter (/..;/x,
//     /.;x/) is refused: servlet containers strip the parameter and treat it
//     as a dot segment, other apps as a name.
//
// The result is idempotent: normalising it again changes nothing, and it
// has no dot segments, no empty segments (but a trailing '/'), no escaped
// unreserved characters and no escaped or raw separators beyond '/'.
//
// Merging slashes before removing dot segments is what path.Clean and
// Python's posixpath.normpath do, so an app that normalises the forwarded
// path again arrives at the same path.

// ErrBadPath is wrapped by every error NormalizePath returns.
var ErrBadPath = errors.New("path refused")

// NormalizePath returns the normalised form of an origin-form path (no
// query), or an error wrapping ErrBadPath that says what was wrong.
func NormalizePath(p string) (string, error) {
	if p == "" || p[0] != '/' {
		return "", fmt.Errorf("%w: %q does not start with '/'", ErrBadPath, p)
	}
	if pathIsNormal(p) {
		return p, nil
	}
	return normalizeSlow(p)
}

// normalizeSlow is NormalizePath without the fast path.
func normalizeSlow(p string) (string, error) {
	// Decode (step 1 and 2) into a byte slice, then split.
	dec := make([]byte, 0, len(p))
	for i := 0; i < len(p); i++ {
		c := p[i]
		switch c {
		case '#':
			return "", fmt.Errorf("%w: a fragment ('#' at byte %d) is not allowed in a request path", ErrBadPath, i)
		case '\\':
			return "", fmt.Errorf("%w: a backslash (byte %d) is not allowed in a request path", ErrBadPath, i)
		case '%':
			if i+2 >= len(p) || !isHex(p[i+1]) || !isHex(p[i+2]) {
				return "", fmt.Errorf("%w: '%%' at byte %d is not followed by two hex digits", ErrBadPath, i)
			}
			v := unhex(p[i+1])<<4 | unhex(p[i+2])
			switch {
			case v == '/' || v == '\\':
				return "", fmt.Errorf("%w: an escaped slash (%s at byte %d) is not allowed in a request path", ErrBadPath, p[i:i+3], i)
			case isUnreserved(v):
				dec = append(dec, v)
			default:
				dec = append(dec, '%', upperHex(p[i+1]), upperHex(p[i+2]))
			}
			i += 2
		default:
			dec = append(dec, c)
		}
	}
	// Steps 3 to 5 over the segments of dec (which starts with '/').
	segs := strings.Split(string(dec[1:]), "/")
	out := make([]string, 0, len(segs))
	trailing := false
	for i, s := range segs {
		last := i == len(segs)-1
		switch s {
		case "":
			// An empty segment: merged with its neighbour; if it is the
			// last one the path ended in '/'.
			if last {
				trailing = true
			}
			continue
		case ".":
			if last {
				trailing = true
			}
			continue
		case "..":
			if len(out) > 0 {
				out = out[:len(out)-1]
			}
			if last {
				trailing = true
			}
			continue
		}
		if name, _, ok := strings.Cut(s, ";"); ok && (name == "." || name == "..") {
			return "", fmt.Errorf("%w: the dot segment with a parameter %q is ambiguous", ErrBadPath, s)
		}
		out = append(out, s)
		trailing = false
	}
	var sb strings.Builder
	sb.Grow(len(dec))
	for _, s := range out {
		sb.WriteByte('/')
		sb.WriteString(s)
	}
	if len(out) == 0 || trailing {
		sb.WriteByte('/')
	}
	return sb.String(), nil
}

// PathIsNormal is the fast path of NormalizePath, for a path that starts
// with '/': a path with none of the characters normalisation looks at, no
// "//" and no dot segment is already normal (NormalizePath returns it as
// it is). It takes bytes too, so a caller need not allocate a string.
func PathIsNormal[T ~string | ~[]byte](p T) bool {
	return pathIsNormal(p)
}

func pathIsNormal[T ~string | ~[]byte](p T) bool {
	for i := 0; i < len(p); i++ {
		switch p[i] {
		case '%', '#', '\\':
			return false
		case '/':
			if i+1 < len(p) && p[i+1] == '/' {
				return false
			}
		case '.':
			// A '.' that starts a segment may begin a dot segment.
			if p[i-1] == '/' {
				return false
			}
		}
	}
	return true
}

// PathParamsStripped returns p (already normalised) with every ';'
// parameter removed from its segments, normalised again: the path a servlet
// container acts on. The sidecar authorizes both forms of a path with ';'.
func PathParamsStripped(p string) (string, error) {
	if !strings.Contains(p, ";") {
		return p, nil
	}
	segs := strings.Split(p, "/")
	for i, s := range segs {
		if j := strings.IndexByte(s, ';'); j >= 0 {
			segs[i] = s[:j]
		}
	}
	return NormalizePath(strings.Join(segs, "/"))
}

func isHex(c byte) bool {
	return '0' <= c && c <= '9' || 'a' <= c && c <= 'f' || 'A' <= c && c <= 'F'
}

func unhex(c byte) byte {
	switch {
	case c <= '9':
		return c - '0'
	case c >= 'a':
		return c - 'a' + 10
	}
	return c - 'A' + 10
}

func upperHex(c byte) byte {
	if 'a' <= c && c <= 'f' {
		return c - 'a' + 'A'
	}
	return c
}

func isUnreserved(c byte) bool {
	return 'a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9' ||
		c == '-' || c == '.' || c == '_' || c == '~'
}

// AuthorizeHTTP authorizes an HTTP request whose Path NormalizePath has
// already normalised. A path with ';' parameters must be allowed both as
// it is and as a servlet container reads it (PathParamsStripped), so that
// a rule like "*.html" cannot be met by /secret;.html.
func AuthorizeHTTP(s *Snapshot, r Request) Decision {
	d := Authorize(s, r)
	if !d.Allow || strings.IndexByte(r.Path, ';') < 0 {
		return d
	}
	alt, err := PathParamsStripped(r.Path)
	if err != nil {
		return Decision{Allow: false, Reason: err.Error()}
	}
	if alt == r.Path {
		return d
	}
	r.Path = alt
	return Authorize(s, r)
}
