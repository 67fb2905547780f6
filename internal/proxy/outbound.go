package proxy

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"strconv"
	"strings"
	"time"

	"github.com/meshauth/meshauth/internal/policy"
)

var dialer = &net.Dialer{Timeout: 5 * time.Second, KeepAlive: 30 * time.Second}

// dialRoute opens a connection for a TCP tunnel to one of the route's
// endpoints, with the route's TLS mode.
func (p *Proxy) dialRoute(ctx context.Context, r *route, ep string) (net.Conn, error) {
	if r.mode == policy.ClientDisable {
		return dialer.DialContext(ctx, "tcp", ep)
	}
	return p.dialTLS(ctx, ep, p.upstreamFor(r).tcpTLS)
}

// handleOutbound serves a connection on the outbound port: redirected
// traffic in transparent mode, otherwise the explicit HTTP proxy.
func (p *Proxy) handleOutbound(c net.Conn) {
	if p.cfg.Transparent {
		if dst, err := p.cfg.OriginalDst(c); err == nil && !isLocal(dst, c.LocalAddr()) {
			p.outboundCaptured(c, dst)
			return
		}
	}
	if !p.localClientAllowed(c, "explicit proxy") {
		return
	}
	p.serveOutboundH1(c, &connInfo{src: c.RemoteAddr().String(), mode: "proxy"})
}

// localClientAllowed applies the rule of the ports that speak for this
// workload's identity (the explicit proxy and the --upstream ports): only
// the workload itself may use them — a loopback client, and with
// Config.OutboundUIDs a process of one of those uids — never another host
// that can reach the port (a listener bound to 0.0.0.0, a pod IP). A
// refusal is logged with its reason, counted and reset.
func (p *Proxy) localClientAllowed(c net.Conn, listener string) bool {
	if !loopbackClient(c.RemoteAddr()) {
		p.log.Warn("outbound: refusing a non-loopback client; this port speaks for the workload's identity and serves only local processes",
			"listener", listener, "local", c.LocalAddr().String(), "peer", c.RemoteAddr().String(), "reason", reasonNotLoopback)
		p.m.Closed.WithLabelValues("outbound", reasonNotLoopback).Inc()
		reset(c)
		return false
	}
	return p.outboundPeerAllowed(c)
}

// reasonNotLoopback: a client of the explicit proxy or an --upstream port
// that is not on this host's loopback.
const reasonNotLoopback = "non_loopback_client"

// loopbackClient reports whether a client address is on loopback
// (127.0.0.0/8, ::1, or IPv4 loopback mapped into IPv6). Anything that is
// not a TCP address with a loopback IP is refused.
func loopbackClient(a net.Addr) bool {
	ta, ok := a.(*net.TCPAddr)
	if !ok || ta == nil {
		return false
	}
	ip, ok := netip.AddrFromSlice(ta.IP)
	return ok && ip.Unmap().IsLoopback()
}

func isLocal(dst netip.AddrPort, local net.Addr) bool {
	la, ok := local.(*net.TCPAddr)
	return ok && la.AddrPort().Port() == dst.Port() && la.AddrPort().Addr().Unmap() == dst.Addr().Unmap()
}

// outboundCaptured routes a redirected connection by its original
// destination: a mesh service (HTTP through the pool, TCP through a tunnel)
// or, if unknown, straight through.
func (p *Proxy) outboundCaptured(c net.Conn, dst netip.AddrPort) {
	host := dst.Addr().Unmap().String()
	port := uint32(dst.Port())
	info := &connInfo{src: c.RemoteAddr().String(), origHost: host, origPort: port}
	p.outboundConn(c, info)
}

// handleUpstream serves an explicit per-upstream TCP port.
func (p *Proxy) handleUpstream(c net.Conn, host string, port uint32) {
	if !p.localClientAllowed(c, "upstream "+net.JoinHostPort(host, strconv.Itoa(int(port)))) {
		return
	}
	info := &connInfo{src: c.RemoteAddr().String(), origHost: host, origPort: port}
	p.outboundConn(c, info)
}

// outboundConn serves a captured connection or an --upstream port's
// connection by the outbound decision for its destination.
func (p *Proxy) outboundConn(c net.Conn, info *connInfo) {
	o := p.decide(info.origHost, info.origPort, true)
	switch o.verdict {
	case denyUnknown, passthrough:
		info.mode = "passthrough"
		p.m.Connections.WithLabelValues("outbound", "passthrough").Inc()
		if o.verdict == denyUnknown {
			p.logConn("outbound", info, o.target, "deny", "destination is not a mesh service", 0, 0)
			c.Close()
			return
		}
	default:
		r := o.route
		info.mode = string(r.mode)
		info.service = r.service
		p.m.Connections.WithLabelValues("outbound", info.mode).Inc()
		isHTTP := r.http
		if !isHTTP {
			// Protocol not declared as HTTP: sniff briefly so plain HTTP
			// still gets pooling and per-request routing; a server-first
			// protocol just waits sniffTimeout.
			c.SetReadDeadline(time.Now().Add(sniffTimeout))
			kind, pre, _ := sniff(c)
			c.SetReadDeadline(time.Time{})
			c = &peekedConn{Conn: c, buf: pre}
			isTCP := strings.EqualFold(r.protocol, "TCP")
			isHTTP = kind == KindHTTP && !isTCP
			if kind == KindHTTP2 && !isTCP {
				// HTTP/2 with prior knowledge (gRPC): per request, over
				// multiplexed h2 to the server sidecar.
				p.serveOutboundH2(c, info)
				return
			}
		}
		if isHTTP {
			// Each request is decided again (the snapshot may change
			// while the connection lives).
			p.serveOutboundH1(c, info)
			return
		}
		if o.verdict == noEndpoints {
			p.logConn("outbound", info, r.service, "error", "service has no endpoints", 0, 0)
			c.Close()
			return
		}
	}
	up, dest, gen, err := p.dialTunnel(context.Background(), o)
	if err != nil {
		reason := upstreamReason(err)
		if o.verdict == passthrough {
			reason = err.Error()
		}
		p.logConn("outbound", info, dest, "error", reason, 0, 0)
		c.Close()
		return
	}
	p.relayOut(c, up, info, dest, gen)
}

const sniffTimeout = 200 * time.Millisecond

// gen is the recheck generation read before up's handshake (see trackOut).
func (p *Proxy) relayOut(c, up net.Conn, info *connInfo, dest string, gen uint64) {
	defer p.trackOut(up, dest, gen)()
	p.cached.activeOut.Inc()
	sent, recv := relay(c, up, p.cfg.IdleTimeout)
	p.cached.activeOut.Dec()
	p.cached.bytesOutUp.Add(float64(sent))
	p.cached.bytesOutDown.Add(float64(recv))
	p.logConn("outbound", info, dest, "allow", "", sent, recv)
}

func parsePort(s string) (uint32, error) {
	n, err := strconv.ParseUint(s, 10, 16)
	if err != nil || n == 0 {
		return 0, fmt.Errorf("port %q is not in 1-65535", s)
	}
	return uint32(n), nil
}

// upstreamReason labels an outbound failure.
func upstreamReason(err error) string {
	var hs *handshakeError
	if errors.As(err, &hs) {
		return hs.reason
	}
	var op *net.OpError
	if errors.As(err, &op) && op.Op == "dial" {
		return "upstream_unreachable"
	}
	return "upstream_error"
}
