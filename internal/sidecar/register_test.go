package sidecar

import (
	"maps"
	"testing"

	"github.com/meshauth/meshauth/internal/proxy"
)

// TestInboundSidecarPorts: what a self-registering sidecar reports as
// app port -> sidecar port (Register.sidecar_ports) from its explicit inbound
// listeners (--inbound LISTEN=APP, as meshd sidecar parses them).
func TestInboundSidecarPorts(t *testing.T) {
	tests := []struct {
		name    string
		inbound []proxy.InboundListener
		want    map[uint32]uint32
	}{
		{"port only", []proxy.InboundListener{{Listen: ":18000", App: "127.0.0.1:8000"}}, map[uint32]uint32{8000: 18000}},
		{"host and port", []proxy.InboundListener{{Listen: "127.0.0.1:18000", App: "127.0.0.1:8000"}, {Listen: ":19090", App: "localhost:9090"}}, map[uint32]uint32{8000: 18000, 9090: 19090}},
		{"malformed ignored", []proxy.InboundListener{{Listen: ":x", App: "127.0.0.1:8000"}, {Listen: ":18000", App: "nowhere"}}, map[uint32]uint32{}},
		{"none", nil, map[uint32]uint32{}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			if got := inboundSidecarPorts(tc.inbound); !maps.Equal(got, tc.want) {
				t.Errorf("inboundSidecarPorts(%v) = %v, want %v", tc.inbound, got, tc.want)
			}
		})
	}
}
