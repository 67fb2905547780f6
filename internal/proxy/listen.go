package proxy

import (
	"context"
	"net"
)

// listenLocal binds a port whose clients are processes of this workload:
// the outbound port (the explicit proxy, and in transparent mode the
// redirect target of the pod's own traffic) and the --upstream ports.
// Anyone else is reset on accept (localClientAllowed; a redirected
// connection comes from the pod itself). The connections it accepts get
// no TCP keep-alive, which would cost four setsockopt calls per
// connection (SO_KEEPALIVE and its idle, interval and count): when a
// local client dies, the kernel closes its end, so probes find nothing
// the FIN or RST has not already said. The idle limits (timeouts.go)
// bound a connection that stays open and silent, as before.
//
// Not TCP_DEFER_ACCEPT (accept once the first bytes are in), although it
// saves the explicit proxy the read that finds nothing before a request
// (about 0.3 read calls per request): a connection that sends nothing
// would then wait in the kernel for the deferral before it counts
// against --max-connections (test/adversarial TestLimitsConnectionBound).
func listenLocal(addr string) (net.Listener, error) {
	lc := net.ListenConfig{KeepAlive: -1}
	return lc.Listen(context.Background(), "tcp", addr)
}
