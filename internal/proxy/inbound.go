package proxy

import (
	"context"
	"errors"
	"log/slog"
	"net"
	"os"
	"strconv"
	"time"

	"github.com/meshauth/meshauth/internal/policy"
)

// handleInboundCaptured serves a connection redirected to the inbound
// capture port: its original destination port names the workload port.
func (p *Proxy) handleInboundCaptured(c net.Conn) {
	dst, err := p.cfg.OriginalDst(c)
	if err != nil {
		p.log.Warn("inbound: cannot recover the original destination; closing", "peer", c.RemoteAddr().String(), "error", err.Error())
		reset(c)
		return
	}
	if la, ok := c.LocalAddr().(*net.TCPAddr); ok && int(dst.Port()) == la.Port {
		// Not redirected: someone dialled the capture port itself.
		// Forwarding it to the app's "port 15006" would loop.
		p.log.Warn("inbound: direct connection to the capture port; closing", "peer", c.RemoteAddr().String())
		reset(c)
		return
	}
	app := net.JoinHostPort(p.cfg.InboundAppHost, strconv.Itoa(int(dst.Port())))
	p.handleInbound(c, uint32(dst.Port()), app)
}

// handleInbound applies the port's mode to one accepted connection.
func (p *Proxy) handleInbound(c net.Conn, port uint32, app string) {
	ip := inboundPort(p.policy.Current(), port)
	// The port's protocol decides how its traffic is handled, never what
	// the client offers (ALPN, CONNECT through its own sidecar).
	proto := policy.InboundProtocol(ip.Protocol, "")
	src := c.RemoteAddr().String()
	p.cached.inConns(ip.Mode).Inc()
	info := &connInfo{port: port, app: app, mode: string(ip.Mode), service: ip.Service, src: src}
	defer p.track(c, info)()

	// A plain TCP port in DISABLE mode is relayed as is, without waiting for
	// the client to speak first (server-first protocols).
	if ip.Mode == policy.ServerDisable && proto == "TCP" {
		p.trackPlain(info)
		p.inboundTCP(c, info)
		return
	}

	deadline := time.Now().Add(p.cfg.HandshakeTimeout)
	c.SetDeadline(deadline)
	kind, pre, err := sniff(c)
	if err != nil {
		if ip.Mode != policy.ServerStrict && len(pre) == 0 && errors.Is(err, os.ErrDeadlineExceeded) {
			// Plaintext allowed and the client is silent: a server-first
			// protocol, unless the port is HTTP, which stays HTTP (a client
			// that waits must not get a raw relay past the HTTP engine).
			c.SetDeadline(time.Time{})
			p.trackPlain(info)
			switch proto {
			case "HTTP", "HTTP2":
				p.serveInboundH1(c, info)
			case "":
				p.inboundTCP(&lateHTTPConn{Conn: c}, info)
			default:
				p.inboundTCP(c, info)
			}
			return
		}
		reason := reasonClosed
		switch {
		case errors.Is(err, os.ErrDeadlineExceeded):
			reason = reasonTimeout
		case len(pre) > 0 && pre[0] == 0x16:
			reason = reasonTruncatedHello
		case len(pre) > 0:
			reason = reasonNotTLS
		}
		p.refuseInbound(c, info, reason, err)
		return
	}
	pc := &peekedConn{Conn: c, buf: pre}
	switch {
	case kind == KindTLS && ip.Mode != policy.ServerDisable:
		p.inboundTLS(pc, info, proto, deadline)
	case ip.Mode == policy.ServerStrict:
		reason := reasonNotTLS
		if kind == KindHTTP {
			reason = reasonPlaintext
		}
		p.refuseInbound(pc, info, reason, nil)
	default:
		c.SetDeadline(time.Time{})
		p.cached.handshake("inbound", "plaintext").Inc()
		p.trackPlain(info)
		p.serveProtocol(pc, info, proto)
	}
}

// serveProtocol hands a connection whose transport is settled (mTLS with a
// verified peer, or plaintext the port's mode allows) to its port's
// protocol:
//
//   - HTTP: the HTTP/1.x engine, whatever the client offered; every
//     request is parsed, authorized and gets the verified XFCC (HTTP/2 is
//     answered 400).
//   - HTTP2 (HTTP2, GRPC): HTTP/2 with prior knowledge is terminated per
//     request (serveInboundH2: each request authorized, XFCC set, h2c to
//     the app); anything else goes to the HTTP/1.x engine.
//   - TCP: an opaque relay.
//   - undeclared: the first bytes decide, as Istio's protocol detection
//     does: HTTP/1.x to the engine, HTTP/2 per request, anything else
//     (or a client silent for sniffTimeout: a server-first protocol) is
//     relayed. Declare the port to rule the relay out.
func (p *Proxy) serveProtocol(c net.Conn, info *connInfo, proto string) {
	switch proto {
	case "TCP":
		p.inboundTCP(c, info)
		return
	case "HTTP":
		p.serveInboundH1(c, info)
		return
	}
	wait := sniffTimeout
	if proto == "HTTP2" {
		wait = p.cfg.HandshakeTimeout // an HTTP client speaks first
	}
	c.SetReadDeadline(time.Now().Add(wait))
	kind, pre, err := sniff(c)
	if err != nil && len(pre) > 0 && wait < p.cfg.HandshakeTimeout {
		// The client started to speak (a prefix of HTTP): it is not a
		// server-first protocol, so wait for enough to decide.
		c.SetReadDeadline(time.Now().Add(p.cfg.HandshakeTimeout))
		kind, pre, err = sniff(&peekedConn{Conn: c, buf: pre})
	}
	c.SetReadDeadline(time.Time{})
	pc := &peekedConn{Conn: c, buf: pre}
	switch {
	case kind == KindHTTP2:
		p.serveInboundH2(pc, info, proto)
	case proto == "HTTP2":
		if err != nil && len(pre) == 0 {
			c.Close()
			return
		}
		p.serveInboundH1(pc, info)
	case kind == KindHTTP:
		p.serveInboundH1(pc, info)
	case len(pre) == 0:
		// Silent: a server-first protocol. Relayed, but HTTP that comes
		// late is refused (lateHTTPConn).
		p.inboundTCP(&lateHTTPConn{Conn: pc}, info)
	default:
		p.inboundTCP(pc, info)
	}
}

// inboundTLS terminates mTLS. The peer's chain is verified in the TLS
// config's VerifyConnection; a failure resets the connection with its reason.
func (p *Proxy) inboundTLS(c *peekedConn, info *connInfo, proto string, deadline time.Time) {
	raw := newBatchConn(c)
	tc := tlsServer(raw, p.serverConf)
	ctx, cancel := context.WithDeadline(context.Background(), deadline)
	err := tc.HandshakeContext(ctx)
	cancel()
	if err != nil {
		p.refuseInbound(c, info, handshakeReason(err), err)
		return
	}
	c.SetDeadline(time.Time{})
	cs := tc.ConnectionState()
	info.tls = true
	info.peer = peerID(cs)
	p.trackTLS(info, cs.PeerCertificates)
	p.cached.handshake("inbound", "ok").Inc()
	// The ALPN the client negotiated (http/1.1, meshauth-tcp or none) is
	// not consulted: the port's protocol decides.
	p.serveProtocol(newBatchedTLS(tc, raw), info, proto)
}

// refuseInbound resets a connection and records why, once, in the log and
// the metrics.
func (p *Proxy) refuseInbound(c net.Conn, info *connInfo, reason string, err error) {
	attrs := []slog.Attr{
		slog.String("direction", "inbound"),
		slog.String("peer", info.src),
		slog.Int("port", int(info.port)),
		slog.String("tls_mode", info.mode),
		slog.String("decision", "deny"),
		slog.String("reason", reason),
	}
	if err != nil {
		attrs = append(attrs, slog.String("error", err.Error()))
	}
	p.access.LogAttrs(context.Background(), slog.LevelWarn, "connection refused", attrs...)
	// Counted after the log line is written, so whoever sees the count
	// also finds the line.
	p.m.Handshakes.WithLabelValues("inbound", "refused", reason).Inc()
	reset(c)
}

// inboundTCP authorizes a whole connection and relays it to the app.
func (p *Proxy) inboundTCP(c net.Conn, info *connInfo) {
	p.trackTCP(info)
	dec := policy.Authorize(p.policy.Current(), policy.Request{Source: info.peer, Port: info.port, Service: info.service})
	if !dec.Allow {
		p.cached.deny.Inc()
		p.logConn("inbound", info, info.app, "deny", dec.Reason, 0, 0)
		c.Close()
		return
	}
	p.cached.allow.Inc()
	up, err := net.DialTimeout("tcp", info.app, 5*time.Second)
	if err != nil {
		p.logConn("inbound", info, info.app, "error", "app unreachable: "+err.Error(), 0, 0)
		c.Close()
		return
	}
	p.cached.activeIn.Inc()
	sent, recv := relay(c, up, p.cfg.IdleTimeout)
	p.cached.activeIn.Dec()
	p.cached.bytesInUp.Add(float64(sent))
	p.cached.bytesInDown.Add(float64(recv))
	if l, ok := c.(*lateHTTPConn); ok && l.refused {
		p.cached.deny.Inc()
		p.logConn("inbound", info, info.app, "deny", errLateHTTP.Error(), sent, recv)
		return
	}
	p.logConn("inbound", info, info.app, "allow", dec.Reason, sent, recv)
}
