package proxy

import (
	"context"
	"net"
	"syscall"
)

// listenLocal binds a port whose clients are processes of this workload:
// the outbound port (the explicit proxy, and in transparent mode the
// redirect target of the pod's own traffic) and the --upstream ports.
// Anyone else is reset on accept (localClientAllowed; a redirected
// connection comes from the pod itself). Two things a network listener
// needs and these do not, each a cost per connection:
//
//   - no TCP keep-alive on accepted connections (four setsockopt calls
//     per connection: SO_KEEPALIVE and its idle, interval and count):
//     when a local client dies, the kernel closes its end, so probes find
//     nothing the FIN or RST has not already said. The idle limits
//     (timeouts.go) bound a connection that stays open and silent, as
//     before;
//   - with clientFirst, TCP_DEFER_ACCEPT: the kernel hands a connection to
//     accept only once its first bytes are in, so the goroutine serving it
//     finds the request head on its first read instead of reading nothing
//     (EAGAIN), parking on the netpoller and being woken again when the
//     client writes. Only where the client always speaks first: the
//     explicit proxy (an HTTP request or CONNECT), not transparent capture
//     (server-first protocols such as MySQL or SMTP would wait for the
//     deferral) and not the --upstream ports (plain TCP services). A
//     client that connects and sends nothing is accepted after about a
//     second anyway (the kernel's SYN-ACK retransmission at the end of the
//     deferral), then served under the usual limits; until then it holds
//     no descriptor or goroutine of the sidecar, only a request socket in
//     the kernel's listen queue.
func listenLocal(addr string, clientFirst bool) (net.Listener, error) {
	lc := net.ListenConfig{KeepAlive: -1}
	if clientFirst {
		lc.Control = deferAccept
	}
	return lc.Listen(context.Background(), "tcp", addr)
}

// deferAccept sets TCP_DEFER_ACCEPT (one second: the kernel counts it in
// SYN-ACK retransmissions, the first of which is due after a second) on a
// listening socket before it binds.
func deferAccept(_, _ string, c syscall.RawConn) error {
	var serr error
	if err := c.Control(func(fd uintptr) {
		serr = syscall.SetsockoptInt(int(fd), syscall.IPPROTO_TCP, syscall.TCP_DEFER_ACCEPT, 1)
	}); err != nil {
		return err
	}
	return serr
}
