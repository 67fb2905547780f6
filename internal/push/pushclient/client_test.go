package pushclient

import (
	"io"
	"log/slog"
	"strings"
	"testing"

	pb "github.com/meshauth/meshauth/api/meshauth/v1"
)

// TestClientRejectsMalformedSnapshots drives the client's accept path with
// snapshots a broken or hostile control plane could send.
func TestClientRejectsMalformedSnapshots(t *testing.T) {
	c := NewClient(ClientConfig{})
	good := `{"version":"v1","trustDomain":"cluster.local","workload":{"name":"w","namespace":"default","serviceAccount":"sa"},"inboundDefault":"STRICT"}`
	if err := c.accept(&pb.Snapshot{Version: "v1", SnapshotJson: []byte(good)}); err != nil {
		t.Fatalf("good snapshot rejected: %v", err)
	}
	tests := []struct{ name, version, js string }{
		{"not json", "v2", `{`},
		{"version mismatch", "v2", strings.Replace(good, "v1", "v3", 1)},
		{"unknown server mode", "v2", strings.NewReplacer("v1", "v2", "STRICT", "MAYBE").Replace(good)},
		{"no workload", "v2", `{"version":"v2","inboundDefault":"STRICT"}`},
		{"bad tls mode", "v2", strings.Replace(strings.Replace(good, "v1", "v2", 1), `"inboundDefault":"STRICT"`,
			`"inboundDefault":"STRICT","outbound":[{"name":"a","namespace":"b","hosts":["a.b"],"ports":[{"port":80,"targetPort":80,"tlsMode":"TLS"}]}]`, 1)},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			if err := c.accept(&pb.Snapshot{Version: tc.version, SnapshotJson: []byte(tc.js)}); err == nil {
				t.Fatal("accepted")
			}
			if c.Current().Version != "v1" {
				t.Fatal("bad snapshot replaced the good one")
			}
		})
	}
}

// FuzzClientAccept feeds arbitrary snapshot JSON to the sidecar's accept
// path: it must never panic, and a rejected snapshot must never replace the
// good one.
func FuzzClientAccept(f *testing.F) {
	good := `{"version":"v1","trustDomain":"cluster.local","workload":{"name":"w","namespace":"default","serviceAccount":"sa"},"inboundDefault":"STRICT"}`
	f.Add("v2", []byte(strings.Replace(good, "v1", "v2", 1)))
	f.Add("v2", []byte(`{"version":"v2","workload":{"name":"w","namespace":"n","serviceAccount":"s"},"inboundDefault":"DISABLE","inbound":[{"port":0,"mode":"STRICT"}],"outbound":[{"name":"a","namespace":"b","hosts":["a.b"],"ports":[{"port":80,"targetPort":8080,"tlsMode":"ISTIO_MUTUAL"}],"endpoints":[{"workload":"a-1","address":"10.0.0.1","ports":{"8080":15006}}]}],"rbac":{"policies":[{"role":"n/r","rules":[{"services":["*"]}],"subjects":[{"user":"*"}]}]}}`))
	f.Add("v3", []byte(`null`))
	f.Fuzz(func(t *testing.T, version string, js []byte) {
		c := NewClient(ClientConfig{Log: slog.New(slog.NewTextHandler(io.Discard, nil))})
		if err := c.accept(&pb.Snapshot{Version: "v1", SnapshotJson: []byte(good)}); err != nil {
			t.Fatal(err)
		}
		before := c.Current()
		err := c.accept(&pb.Snapshot{Version: version, SnapshotJson: js})
		if err != nil && c.Current() != before {
			t.Fatal("a rejected snapshot replaced the good one")
		}
		if err == nil && c.Current().Snapshot.Validate() != nil {
			t.Fatal("accepted a snapshot that does not validate")
		}
	})
}
