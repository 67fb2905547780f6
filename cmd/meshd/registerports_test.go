package main

import (
	"maps"
	"testing"
)

// TestInboundSidecarPorts: what a self-registering sidecar reports as
// app port -> sidecar port (Register.sidecar_ports) from its --inbound flags.
func TestInboundSidecarPorts(t *testing.T) {
	tests := []struct {
		name    string
		inbound []string
		want    map[uint32]uint32
	}{
		{"port only", []string{"18000=127.0.0.1:8000"}, map[uint32]uint32{8000: 18000}},
		{"host and port", []string{"127.0.0.1:18000=127.0.0.1:8000", ":19090=localhost:9090"}, map[uint32]uint32{8000: 18000, 9090: 19090}},
		{"malformed ignored", []string{"x=127.0.0.1:8000", "18000=nowhere"}, map[uint32]uint32{}},
		{"none", nil, map[uint32]uint32{}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			if got := inboundSidecarPorts(tc.inbound); !maps.Equal(got, tc.want) {
				t.Errorf("inboundSidecarPorts(%q) = %v, want %v", tc.inbound, got, tc.want)
			}
		})
	}
}
