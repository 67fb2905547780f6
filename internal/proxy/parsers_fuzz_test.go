package proxy

import (
	"strings"
	"testing"
)

// FuzzParseAppProbers: $MESHAUTH_APP_PROBERS (set by injection, so by
// whoever writes the pod spec) never panics the sidecar, and every accepted
// prober has an /app-health/ path and a valid port.
func FuzzParseAppProbers(f *testing.F) {
	f.Add(`{"/app-health/httpbin/readyz":{"path":"/status/200","port":80}}`)
	f.Add(`{"/x":{"port":0}}`)
	f.Add(``)
	f.Fuzz(func(t *testing.T, s string) {
		m, err := ParseAppProbers(s)
		if err != nil {
			return
		}
		for path, p := range m {
			if !strings.HasPrefix(path, "/app-health/") || p.Port <= 0 || p.Port > 65535 {
				t.Fatalf("accepted prober %q %+v", path, p)
			}
		}
	})
}

// FuzzParseSnapshot: a --snapshot file never panics the sidecar; an accepted
// snapshot passes validation again (decode and validation agree).
func FuzzParseSnapshot(f *testing.F) {
	f.Add([]byte(`{"trustDomain":"cluster.local","inboundDefault":"STRICT","inbound":[{"port":80,"mode":"STRICT","protocol":"HTTP","service":"httpbin.default"}]}`))
	f.Add([]byte(`{"inbound":[{"port":70000,"mode":"BOGUS"}]}`))
	f.Add([]byte(`{"outbound":[{"host":"httpbin.default.svc.cluster.local","ports":[{"port":8000,"tlsMode":"ISTIO_MUTUAL"}]}]}`))
	f.Add([]byte(`[]`))
	f.Fuzz(func(t *testing.T, data []byte) {
		s, err := ParseSnapshot(data, "fuzz.json")
		if err != nil {
			if !strings.Contains(err.Error(), "fuzz.json") {
				t.Fatalf("error does not name the file: %v", err)
			}
			return
		}
		if err := ValidateSnapshot(s); err != nil {
			t.Fatalf("accepted snapshot fails validation: %v", err)
		}
		buildRoutes(s) // the route table is built from every accepted snapshot
	})
}
