package proxy

import (
	"net/http"
	"strings"
	"testing"

	"github.com/meshauth/meshauth/internal/policy"
)

// FuzzH2Target: whatever :path and method a client sends, h2Target either
// refuses it or returns a normal path (what is authorized is what the app
// gets) and the query as sent.
func FuzzH2Target(f *testing.F) {
	for _, s := range []string{"/a/../b?q=1", "*", "/public/%2e%2e/secret", "//x", "/a;/..;/b", "http://h/x", "/%2F", "/grpc.health.v1.Health/Check"} {
		f.Add("GET", s)
		f.Add("OPTIONS", s)
	}
	f.Fuzz(func(t *testing.T, method, target string) {
		r := &http.Request{Method: method, RequestURI: target}
		path, query, msg := h2Target(r)
		if msg != "" {
			return
		}
		if path == "*" {
			if method != http.MethodOptions || target != "*" {
				t.Fatalf("%s %q: \"*\" accepted", method, target)
			}
			return
		}
		if !strings.HasPrefix(path, "/") {
			t.Fatalf("%q -> %q: not a path", target, path)
		}
		if n, err := policy.NormalizePath(path); err != nil || n != path {
			t.Fatalf("%q -> %q: normalising again gives %q, %v", target, path, n, err)
		}
		if _, q, ok := strings.Cut(target, "?"); ok && q != query || !ok && query != "" {
			t.Fatalf("%q: query %q, want it as sent", target, query)
		}
	})
}

// TestGRPCEncodeMessage: grpc-message is percent-encoded outside
// printable ASCII, '%' included.
func TestGRPCEncodeMessage(t *testing.T) {
	for in, want := range map[string]string{
		"RBAC: access denied": "RBAC: access denied",
		"100% \n\xff":         "100%25 %0A%FF",
	} {
		if got := grpcEncodeMessage(in); got != want {
			t.Errorf("grpcEncodeMessage(%q) = %q, want %q", in, got, want)
		}
	}
}
