package sidecar

import (
	"net"
	"strconv"
	"strings"

	"github.com/meshauth/meshauth/internal/proxy"
)

// inboundPorts returns the app ports of the explicit inbound listeners.
func inboundPorts(inbound []proxy.InboundListener) []uint32 {
	var out []uint32
	for _, in := range inbound {
		if _, ps, err := net.SplitHostPort(in.App); err == nil {
			if n, err := strconv.ParseUint(ps, 10, 16); err == nil {
				out = append(out, uint32(n))
			}
		}
	}
	return out
}

// inboundSidecarPorts maps each app port of the explicit inbound listeners
// to the port the sidecar listens on for it, so that callers are sent to
// the sidecar (explicit mode) and not around it.
func inboundSidecarPorts(inbound []proxy.InboundListener) map[uint32]uint32 {
	out := map[uint32]uint32{}
	for _, in := range inbound {
		l := in.Listen
		if i := strings.LastIndex(l, ":"); i >= 0 {
			l = l[i+1:]
		}
		lp, err1 := strconv.ParseUint(l, 10, 16)
		_, ap, err2 := net.SplitHostPort(in.App)
		a, err3 := strconv.ParseUint(ap, 10, 16)
		if err1 == nil && err2 == nil && err3 == nil && lp != 0 {
			out[uint32(a)] = uint32(lp)
		}
	}
	return out
}
