package adversarial

import (
	"net/http"
	"strings"
	"testing"
	"time"
)

// rbacPublicOnly turns RBAC on for default and lets sleep GET /public/*
// only.
const rbacPublicOnly = `apiVersion: rbac.istio.io/v1alpha1
kind: RbacConfig
metadata:
  name: default
spec:
  mode: ON_WITH_INCLUSION
  inclusion:
    namespaces: ["default"]
---
apiVersion: rbac.istio.io/v1alpha1
kind: ServiceRole
metadata:
  name: public-reader
  namespace: default
spec:
  rules:
  - services: ["httpbin.default.svc.cluster.local"]
    methods: ["GET"]
    paths: ["/public/*"]
---
apiVersion: rbac.istio.io/v1alpha1
kind: ServiceRoleBinding
metadata:
  name: sleep-public-reader
  namespace: default
spec:
  subjects:
  - user: "cluster.local/ns/default/sa/sleep"
  roleRef:
    kind: ServiceRole
    name: public-reader
`

// TestRBACPathEscape (issue #11 finding 4): with a ServiceRole that lets
// sleep read /public/* only, sleep used to reach /secret in an app that
// normalises paths, by writing /public/../secret and its encodings. The
// server sidecar now normalises the path before authorizing it (and
// forwards the normalised path), so each escape is denied as /secret (403)
// or refused as ambiguous (400), with the reason in its access log.
func TestRBACPathEscape(t *testing.T) {
	m := startMesh(t, meshOptions{Config: map[string]string{"rbac.yaml": rbacPublicOnly}})
	get := func(t *testing.T, path string) (string, int) {
		// curl --path-as-is through sleep's sidecar, as sleep's app would.
		body, stderr, code := curl(t, "--path-as-is", "-o", "-", "-w", "\n%{http_code}", "-x", m.Sleep.OutboundProxy, "http://httpbin:8000"+path)
		if code != 0 {
			t.Fatalf("curl %s: exit %d: %s", path, code, stderr)
		}
		i := strings.LastIndexByte(body, '\n')
		st := 0
		for _, c := range body[i+1:] {
			st = st*10 + int(c-'0')
		}
		return body[:i], st
	}

	t.Run("positive control", func(t *testing.T) {
		body, st := get(t, "/public/a/../b")
		if st != 200 {
			t.Fatalf("GET /public/a/../b: %d %s", st, body)
		}
		if saw := parseAppSaw(t, body); saw.Target != "/public/b" {
			t.Fatalf("the app saw %q; want the authorized, normalised /public/b", saw.Target)
		}
	})
	denied, refused := 0, 0
	for _, tc := range []struct {
		path   string
		status int
	}{
		{"/public/../secret", http.StatusForbidden},
		{"/public/%2e%2e/secret", http.StatusForbidden},
		{"/public/%2E%2E/secret", http.StatusForbidden},
		{"//secret", http.StatusForbidden},
		{"/./secret", http.StatusForbidden},
		{"/public/..%2fsecret", http.StatusBadRequest},
		{"/public/..%5csecret", http.StatusBadRequest},
		{"/public/..;/secret", http.StatusBadRequest},
	} {
		t.Run(tc.path, func(t *testing.T) {
			body, st := get(t, tc.path)
			if st != tc.status || strings.Contains(body, `{"method"`) {
				t.Fatalf("GET %s: %d %s; want %d from the sidecar", tc.path, st, body, tc.status)
			}
			if tc.status == http.StatusForbidden {
				denied++
				m.waitLogCount(t, "httpbin", denied, `"msg":"http"`, `"path":"/secret"`, `"status":403`, `"decision":"deny"`, "RBAC is on and no ServiceRole")
			} else {
				refused++
				m.waitLogCount(t, "httpbin", refused, `"msg":"http"`, `"status":400`, `"reason":"bad_path"`)
			}
		})
	}
}

// waitLogCount waits until the named process has logged at least n lines
// that each contain every one of subs (so a subtest is not satisfied by an
// earlier subtest's line).
func (m *mesh) waitLogCount(t *testing.T, name string, n int, subs ...string) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for {
		got := 0
		for _, ln := range strings.Split(m.Log(name), "\n") {
			all := ln != ""
			for _, s := range subs {
				all = all && strings.Contains(ln, s)
			}
			if all {
				got++
			}
		}
		if got >= n {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s logged %d lines with %q, want %d; its log:\n%s", name, got, subs, n, m.Log(name))
		}
		time.Sleep(50 * time.Millisecond)
	}
}
