package proxy

import (
	"context"
	"net"
	"strconv"
)

// The outbound decision: where traffic that leaves this workload for
// host:port goes. Every outbound path asks decide and acts on the answer
// in its own medium:
//
//   - a captured connection and an --upstream port (outboundConn): relay,
//     tunnel or close;
//   - each request of the forward proxy, of captured HTTP and of a CONNECT
//     tunnel to an HTTP service port (serveOutboundH1): pooled exchange or
//     a local 502/503;
//   - CONNECT host:port (connectH1): a tunnel or a local 502/503.

// outboundVerdict is what decide concluded.
type outboundVerdict uint8

const (
	// toMesh: a mesh service port; go to an endpoint (outbound.endpoint)
	// with the route's TLS mode and secure naming.
	toMesh outboundVerdict = iota + 1
	// noEndpoints: a mesh service port the snapshot lists without an
	// endpoint, and no original destination to fall back to.
	noEndpoints
	// passthrough: not a mesh service; straight to host:port, plaintext.
	passthrough
	// denyUnknown: not a mesh service and Config.DenyUnknown is set.
	denyUnknown
)

func (v outboundVerdict) String() string {
	switch v {
	case toMesh:
		return "mesh"
	case noEndpoints:
		return "no_endpoints"
	case passthrough:
		return "passthrough"
	case denyUnknown:
		return "deny_unknown"
	}
	return "invalid"
}

// outbound is one outbound decision.
type outbound struct {
	verdict outboundVerdict
	route   *route // toMesh and noEndpoints: the service port
	target  string // host:port as asked for
	// origDst: target is the connection's original destination, the
	// fallback endpoint of a service listed without endpoints.
	origDst bool
}

// decide routes host:port by the current snapshot. origDst says that
// host:port is where the connection was going (a captured connection, an
// --upstream port, a CONNECT tunnel to an HTTP service port): a mesh
// service listed without endpoints is then reached there, as Istio's
// ORIGINAL_DST cluster does, with the service's TLS mode and secure naming.
func (p *Proxy) decide(host string, port uint32, origDst bool) outbound {
	return decideOutbound(p.routeTable(), p.cfg.DenyUnknown, host, port, origDst)
}

// decideOutbound is decide over a given route table and passthrough rule.
func decideOutbound(t *routeTable, denyUnknownDest bool, host string, port uint32, origDst bool) outbound {
	o := outbound{origDst: origDst && host != "" && port != 0}
	o.route, o.target = t.lookup(host, port)
	if o.target == "" {
		o.target = net.JoinHostPort(host, strconv.Itoa(int(port)))
	}
	switch {
	case o.route == nil && denyUnknownDest:
		o.verdict = denyUnknown
	case o.route == nil:
		o.verdict = passthrough
	case len(o.route.endpoints) == 0 && !o.origDst:
		o.verdict = noEndpoints
	default:
		o.verdict = toMesh
	}
	return o
}

// endpoint picks the endpoint of a toMesh decision: the route's next one
// (round-robin), or the original destination if the service has none.
// It is picked only when a connection is about to be made, so the
// round-robin advances once per upstream connection or request.
func (o outbound) endpoint() string {
	if ep := o.route.next(); ep != "" {
		return ep
	}
	if o.origDst {
		return o.target
	}
	return ""
}

// dialTunnel opens the upstream of a TCP tunnel (a relayed connection or
// CONNECT) for a passthrough or toMesh decision. dest is where it dialled
// (the target or the chosen endpoint), also on error; gen is the pool
// generation read before the handshake that verifies the server (see
// trackOut).
func (p *Proxy) dialTunnel(ctx context.Context, o outbound) (up net.Conn, dest string, gen uint64, err error) {
	gen = p.pool.gen.Load()
	if o.verdict == passthrough {
		up, err = dialer.DialContext(ctx, "tcp", o.target)
		return up, o.target, gen, err
	}
	dest = o.endpoint()
	up, err = p.dialRoute(ctx, o.route, dest)
	return up, dest, gen, err
}
