package policy

import (
	"errors"
	"net/url"
	"path"
	"strings"
	"testing"
)

func TestNormalizePath(t *testing.T) {
	for _, tc := range []struct{ in, want string }{
		{"/", "/"},
		{"/public/a", "/public/a"},
		{"/public/", "/public/"},
		{"/public/../secret", "/secret"},
		{"/public/%2e%2e/secret", "/secret"},
		{"/public/%2E%2E/secret", "/secret"},
		{"/public/.%2E/secret", "/secret"},
		{"//secret", "/secret"},
		{"/./secret", "/secret"},
		{"/public//a///b", "/public/a/b"},
		{"/a/b/..", "/a/"},
		{"/a/b/.", "/a/b/"},
		{"/..", "/"},
		{"/../../x", "/x"},
		{"/a//../b", "/b"}, // slashes merged first, as path.Clean does
		{"/%41%62c", "/Abc"},
		{"/a%7e%5f%2d", "/a~_-"},
		{"/a%3bb", "/a%3Bb"},
		{"/a%20b", "/a%20b"},
		{"/a%252e%252e/b", "/a%252e%252e/b"}, // no double decoding
		{"/.well-known/x", "/.well-known/x"},
		{"/a;jsessionid=1/b", "/a;jsessionid=1/b"},
		{"/a/..../b", "/a/..../b"},
	} {
		got, err := NormalizePath(tc.in)
		if err != nil || got != tc.want {
			t.Errorf("NormalizePath(%q) = %q, %v; want %q", tc.in, got, err, tc.want)
		}
	}
	for _, in := range []string{
		"", "secret", "*", "http://x/",
		"/public/..%2fsecret", "/public/..%2Fsecret", "/a%5cb", "/a%5Cb",
		"/a\\..\\b", "/a#frag", "/a%", "/a%4", "/a%zz",
		"/public/..;/secret", "/public/.;x/secret", "/..;",
	} {
		if got, err := NormalizePath(in); !errors.Is(err, ErrBadPath) {
			t.Errorf("NormalizePath(%q) = %q, %v; want an ErrBadPath refusal", in, got, err)
		}
	}
}

func TestPathParamsStripped(t *testing.T) {
	for _, tc := range []struct{ in, want string }{
		{"/a/b", "/a/b"},
		{"/secret;.html", "/secret"},
		{"/a;x/b;y=1/", "/a/b/"},
		{"/;x/b", "/b"},
	} {
		got, err := PathParamsStripped(tc.in)
		if err != nil || got != tc.want {
			t.Errorf("PathParamsStripped(%q) = %q, %v; want %q", tc.in, got, err, tc.want)
		}
	}
}

// FuzzNormalizePath checks the normaliser's promises on any input: an
// accepted path starts with '/', has no dot or empty segment, is a fixed
// point, and means what the input meant to an app that decodes and cleans
// paths (net/url + path.Clean, the common Go and Python behaviour).
func FuzzNormalizePath(f *testing.F) {
	for _, s := range []string{"/", "/public/../secret", "/public/%2e%2e/secret", "/public/..%2fsecret",
		"//secret", "/public/%2E%2E/secret", "/./secret", "/a;b/..;/c", "/%41/%7E/%3b", "/a/b/..", "/a%",
		"/.well-known/./x/", "/a\\b", "/a#b", "/a//../b"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, in string) {
		out, err := NormalizePath(in)
		if err != nil {
			if !errors.Is(err, ErrBadPath) {
				t.Fatalf("NormalizePath(%q): error %v does not wrap ErrBadPath", in, err)
			}
			return
		}
		if !strings.HasPrefix(out, "/") {
			t.Fatalf("NormalizePath(%q) = %q: does not start with '/'", in, out)
		}
		again, err := normalizeSlow(out)
		if err != nil || again != out {
			t.Fatalf("not idempotent: %q -> %q -> %q, %v", in, out, again, err)
		}
		body := strings.TrimSuffix(out[1:], "/")
		if body != "" {
			for _, s := range strings.Split(body, "/") {
				if s == "" || s == "." || s == ".." {
					t.Fatalf("NormalizePath(%q) = %q: has segment %q", in, out, s)
				}
			}
		}
		if strings.ContainsAny(out, "\\#") {
			t.Fatalf("NormalizePath(%q) = %q: has a backslash or '#'", in, out)
		}
		// Same meaning for an app that decodes then cleans.
		ui, err1 := url.PathUnescape(in)
		uo, err2 := url.PathUnescape(out)
		if err1 != nil || err2 != nil {
			t.Fatalf("accepted %q -> %q, but net/url cannot unescape them: %v %v", in, out, err1, err2)
		}
		if strings.Contains(ui, ";") {
			return // servlet parameters are checked by PathParamsStripped's callers
		}
		if a, b := path.Clean(ui), path.Clean(uo); a != b {
			t.Fatalf("meaning changed: %q cleans to %q, its normal form %q to %q", in, a, out, b)
		}
		if c := path.Clean(uo); c != strings.TrimSuffix(uo, "/") && uo != "/" {
			t.Fatalf("an app cleaning the forwarded path %q would act on %q", uo, c)
		}
	})
}

// TestAuthorizeHTTPParams: a suffix rule cannot be met through a ';'
// parameter that a servlet container strips.
func TestAuthorizeHTTPParams(t *testing.T) {
	s := &Snapshot{RBAC: &RBAC{Policies: []RBACPolicy{{
		Role:     "default/r",
		Rules:    []RBACRule{{Services: []string{"*"}, Paths: []string{"*.html", "/public/*"}}},
		Subjects: []RBACSubject{{User: "*"}},
	}}}}
	for path, want := range map[string]bool{
		"/index.html": true, "/public/a;jsessionid=1": true,
		"/public;x/a":   false, // as written it is not under /public/: fails closed
		"/secret;.html": false, "/secret;x=.html": false,
	} {
		r := Request{Source: "spiffe://cluster.local/ns/default/sa/sleep", Port: 80, Service: "httpbin.default", Method: "GET", Path: path}
		if d := AuthorizeHTTP(s, r); d.Allow != want {
			t.Errorf("AuthorizeHTTP(%s) = %v (%s); want %v", path, d.Allow, d.Reason, want)
		}
	}
}

// FuzzPathIsNormal: whenever the fast path says a path is normal,
// NormalizePath returns it unchanged.
func FuzzPathIsNormal(f *testing.F) {
	for _, s := range []string{"/", "/a/b", "/a/.b", "/a/./b", "//", "/a%41", "/a\\b", "/a#", "/.."} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, p string) {
		if p == "" || p[0] != '/' || !PathIsNormal(p) {
			return
		}
		if PathIsNormal([]byte(p)) != true {
			t.Fatalf("PathIsNormal differs for string and bytes on %q", p)
		}
		if out, err := normalizeSlow(p); err != nil || out != p {
			t.Fatalf("PathIsNormal(%q) but NormalizePath gives %q, %v", p, out, err)
		}
	})
}
