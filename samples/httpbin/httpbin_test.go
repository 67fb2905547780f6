package httpbin

import (
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"testing"
)

// TestHandler drives every route over a real loopback server, the way curl
// reaches it in the walkthrough.
func TestHandler(t *testing.T) {
	srv := httptest.NewServer(Handler())
	defer srv.Close()

	tests := []struct {
		name     string
		path     string
		header   map[string]string
		wantCode int
		check    func(t *testing.T, body map[string]any)
	}{
		{
			name:     "headers shows XFCC",
			path:     "/headers",
			header:   map[string]string{"X-Forwarded-Client-Cert": "By=spiffe://cluster.local/ns/default/sa/httpbin;URI=spiffe://cluster.local/ns/default/sa/sleep"},
			wantCode: 200,
			check: func(t *testing.T, body map[string]any) {
				h := body["headers"].(map[string]any)
				if got := h["X-Forwarded-Client-Cert"]; got != "By=spiffe://cluster.local/ns/default/sa/httpbin;URI=spiffe://cluster.local/ns/default/sa/sleep" {
					t.Errorf("X-Forwarded-Client-Cert = %v", got)
				}
				if h["Host"] == nil {
					t.Errorf("Host missing from %v", h)
				}
			},
		},
		{name: "status 418", path: "/status/418", wantCode: 418},
		{name: "status 503", path: "/status/503", wantCode: 503},
		{name: "status not a number", path: "/status/abc", wantCode: 400},
		{name: "status out of range", path: "/status/99", wantCode: 400},
		{
			name: "ip", path: "/ip", wantCode: 200,
			check: func(t *testing.T, body map[string]any) {
				if body["origin"] != "127.0.0.1" {
					t.Errorf("origin = %v, want 127.0.0.1", body["origin"])
				}
			},
		},
		{
			name: "get with args", path: "/get?b=2&a=1&a=3", wantCode: 200,
			check: func(t *testing.T, body map[string]any) {
				args := body["args"].(map[string]any)
				if args["a"] != "1,3" || args["b"] != "2" {
					t.Errorf("args = %v", args)
				}
				if u, _ := body["url"].(string); u != srv.URL+"/get?b=2&a=1&a=3" {
					t.Errorf("url = %v", body["url"])
				}
			},
		},
		{name: "delay 0", path: "/delay/0", wantCode: 200},
		{name: "delay negative", path: "/delay/-1", wantCode: 400},
		{name: "unknown", path: "/nope", wantCode: 404},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			req, err := http.NewRequest("GET", srv.URL+tt.path, nil)
			if err != nil {
				t.Fatal(err)
			}
			for k, v := range tt.header {
				req.Header.Set(k, v)
			}
			resp, err := srv.Client().Do(req)
			if err != nil {
				t.Fatal(err)
			}
			defer resp.Body.Close()
			raw, _ := io.ReadAll(resp.Body)
			if resp.StatusCode != tt.wantCode {
				t.Fatalf("GET %s = %d, want %d; body %s", tt.path, resp.StatusCode, tt.wantCode, raw)
			}
			if tt.check == nil {
				return
			}
			var body map[string]any
			if err := json.Unmarshal(raw, &body); err != nil {
				t.Fatalf("body is not JSON: %v: %s", err, raw)
			}
			tt.check(t, body)
		})
	}
}

// FuzzHandler feeds arbitrary paths to the router: no input may panic or
// produce a 5xx other than one asked for via /status.
func FuzzHandler(f *testing.F) {
	for _, s := range []string{"/headers", "/status/200", "/status/x", "/delay/0.001", "/get?a=1", "/ip", "/delay/1e-9"} {
		f.Add(s)
	}
	h := Handler()
	f.Fuzz(func(t *testing.T, path string) {
		req, err := http.NewRequest("GET", "http://httpbin"+path, nil)
		if err != nil || req.URL.Path == "" || req.URL.Path[0] != '/' {
			return
		}
		if len(req.URL.Path) >= 7 && req.URL.Path[:7] == "/delay/" {
			return // waits up to MaxDelay by design
		}
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, req)
		if rec.Code >= 500 && (len(req.URL.Path) < 8 || req.URL.Path[:8] != "/status/") {
			t.Fatalf("%s -> %d", path, rec.Code)
		}
	})
}
