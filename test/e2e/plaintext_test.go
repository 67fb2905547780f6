package e2e

import (
	"testing"

	"github.com/meshauth/meshauth/internal/netns"
)

// TestPodsWithoutMesh proves the pod harness itself, before any mesh piece
// runs: a legacy pod reaches httpbin through the service VIP (8000 -> 80) in
// plaintext, names resolve the way Kubernetes DNS answers them, and a port
// the service does not expose is refused. If this fails, every mesh result
// below would be meaningless.
func TestPodsWithoutMesh(t *testing.T) {
	needPods(t)
	c := newCluster(t)
	httpbin, err := c.AddPod("httpbin", "default")
	if err != nil {
		t.Fatal(err)
	}
	legacy, err := c.AddPod("legacy", "legacy")
	if err != nil {
		t.Fatal(err)
	}
	sleep, err := c.AddPod("sleep", "default")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := c.AddService("httpbin", "default", []netns.Port{{Name: "http", Port: 8000, TargetPort: 80}}, httpbin); err != nil {
		t.Fatal(err)
	}
	startApp(t, c, httpbin, "http://127.0.0.1:80/status/200", "httpbin", "--listen", ":80")

	tests := []struct {
		name     string
		pod      *netns.Pod
		url      string
		wantCode string
		wantExit int
	}{
		// The seed's legacy command, which must succeed with no mesh.
		{"legacy to httpbin.default", legacy, "httpbin.default:8000/headers", "200", 0},
		{"legacy to FQDN", legacy, "httpbin.default.svc.cluster.local:8000/headers", "200", 0},
		{"sleep to short name", sleep, "httpbin:8000/headers", "200", 0},
		{"sleep to pod IP and container port", sleep, "http://" + httpbin.IP + ":80/ip", "200", 0},
		// Kubernetes DNS gives the short name only inside the namespace:
		// curl cannot resolve it (exit 6).
		{"legacy to short name does not resolve", legacy, "httpbin:8000/headers", "000", 6},
		// The VIP exposes 8000 only: nothing is DNATed for 80, and the VIP
		// itself has no listener (the node namespace refuses: exit 7).
		{"VIP on container port", sleep, "httpbin:80/headers", "000", 7},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := curl(t, tt.pod, -1, seedCurl(tt.url, "--max-time", "5")...)
			if got.Code != tt.wantCode || got.Exit != tt.wantExit {
				t.Errorf("curl %s from %s = %s, want %s (exit %d); stderr %q", tt.url, tt.pod.Name, got, tt.wantCode, tt.wantExit, got.Stderr)
			}
		})
	}
}
