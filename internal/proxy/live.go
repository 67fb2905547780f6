package proxy

import (
	"context"
	"crypto/x509"
	"errors"
	"log/slog"
	"net"
	"sync"

	"github.com/meshauth/meshauth/internal/identity"
	"github.com/meshauth/meshauth/internal/policy"
)

// Established inbound connections are checked again whenever the trust
// bundle (roots, revoked serials), the sidecar's certificate or the policy
// changes: a connection that would be refused if it arrived now is closed,
// with its reason in the log and in meshauth_sidecar_connections_closed_total.
// Without this, a peer whose serial was just revoked, or a plaintext client
// whose port was just made STRICT, would keep a connection opened before the
// change for as long as it liked (a TCP relay has no later request at which
// to check again).
//
// What is checked:
//   - mTLS connections: the peer's chain against the current bundle (a
//     revoked serial, a retired root, an expired certificate);
//   - plaintext connections: the port's current mode (STRICT closes them);
//   - TCP relays: the authorization decision (HTTP connections are
//     authorized per request already).

const (
	reasonRecheckPlaintext = "plaintext_now_strict"
	reasonRecheckDenied    = "authz_now_denied"
)

type liveState uint8

const (
	livePending liveState = iota // accepted, mode not decided yet (sniffing, handshaking)
	liveTLS                      // mTLS with a verified peer
	livePlain                    // plaintext
)

// liveConn is one established inbound connection. Its fields are written by
// the connection's goroutine and read by recheck, under liveSet.mu.
type liveConn struct {
	c       net.Conn
	port    uint32
	src     string
	service string
	state   liveState
	peer    string
	chain   []*x509.Certificate
	tcp     bool   // relayed as TCP: authorized once, at its start
	gen     uint64 // liveSet.gen when the state was last set
	closed  bool
}

type liveSet struct {
	mu  sync.Mutex
	m   map[*connInfo]*liveConn
	out map[*liveOut]struct{} // outbound mTLS tunnels (CONNECT, captured TCP)
	gen uint64                // bumped by every recheck
}

// liveOut is an outbound mTLS tunnel: its server is checked again, like an
// inbound peer, when the bundle changes.
type liveOut struct {
	c      net.Conn
	dest   string
	chain  []*x509.Certificate
	closed bool
}

type liveVictim struct {
	l      *liveConn
	reason string
	err    error
}

// track records an accepted inbound connection until the returned func runs.
func (p *Proxy) track(c net.Conn, info *connInfo) func() {
	s := &p.live
	s.mu.Lock()
	if s.m == nil {
		s.m = make(map[*connInfo]*liveConn)
	}
	s.m[info] = &liveConn{c: c, port: info.port, src: info.src, service: info.service, gen: s.gen}
	s.mu.Unlock()
	return func() {
		s.mu.Lock()
		delete(s.m, info)
		s.mu.Unlock()
	}
}

// trackTLS records the verified peer of a tracked connection. If a recheck
// ran while the connection was still handshaking (it skips pending
// connections), the peer is checked against what is current now.
func (p *Proxy) trackTLS(info *connInfo, chain []*x509.Certificate) {
	p.setLive(info, func(l *liveConn) { l.state, l.peer, l.chain = liveTLS, info.peer, chain })
}

// trackPlain marks a tracked connection as plaintext.
func (p *Proxy) trackPlain(info *connInfo) {
	p.setLive(info, func(l *liveConn) { l.state = livePlain })
}

// trackTCP marks a tracked connection as a TCP relay; call it before the
// relay's authorization, so that a policy change after that decision is
// seen by the next recheck.
func (p *Proxy) trackTCP(info *connInfo) {
	p.setLive(info, func(l *liveConn) { l.tcp = true })
}

func (p *Proxy) setLive(info *connInfo, set func(*liveConn)) {
	var v liveVictim
	p.live.mu.Lock()
	if l := p.live.m[info]; l != nil && !l.closed {
		set(l)
		if l.gen != p.live.gen {
			l.gen = p.live.gen
			if v = p.liveCheck(l, p.policy.Current()); v.l != nil {
				l.closed = true
			}
		}
	}
	p.live.mu.Unlock()
	if v.l != nil {
		p.closeLive(v)
	}
}

// liveCheck says whether l would be refused now; the zero victim means no.
func (p *Proxy) liveCheck(l *liveConn, snap *policy.Snapshot) liveVictim {
	switch l.state {
	case liveTLS:
		if _, err := p.verifyPeer(l.chain); err != nil {
			return liveVictim{l, identity.Reason(err), err}
		}
	case livePlain:
		if inboundPort(snap, l.port).Mode == policy.ServerStrict {
			return liveVictim{l, reasonRecheckPlaintext, errors.New("port turned STRICT after this plaintext connection was accepted")}
		}
	}
	if l.tcp && l.state != livePending {
		if dec := policy.Authorize(snap, policy.Request{Source: l.peer, Port: l.port, Service: l.service}); !dec.Allow {
			return liveVictim{l, reasonRecheckDenied, errors.New(dec.Reason)}
		}
		if endUserNeedsHTTP(snap, l.port, "TCP") {
			return liveVictim{l, reasonJWT, errEndUserNotHTTP}
		}
	}
	return liveVictim{}
}

// recheck closes every established inbound connection that the current
// bundle and policy would refuse. It returns how many it closed.
func (p *Proxy) recheck() int {
	// Pooled upstream connections are verified again lazily, when next
	// taken from the pool (verifyPooled).
	p.pool.gen.Add(1)
	snap := p.policy.Current()
	// Copy under the lock, check outside it (chain verification is the
	// slow part): a connection whose state changes after the copy sees the
	// bumped generation in setLive and is checked there.
	p.live.mu.Lock()
	p.live.gen++
	conns := make([]liveConn, 0, len(p.live.m))
	ptrs := make([]*liveConn, 0, len(p.live.m))
	for _, l := range p.live.m {
		if !l.closed && l.state != livePending {
			conns = append(conns, *l)
			ptrs = append(ptrs, l)
		}
	}
	outs := make([]*liveOut, 0, len(p.live.out))
	for o := range p.live.out {
		if !o.closed {
			outs = append(outs, o) // chain, c and dest never change
		}
	}
	p.live.mu.Unlock()
	for _, o := range outs {
		if _, err := p.verifyPeer(o.chain); err != nil && p.live.claim(&o.closed) {
			p.closeOut(o, err)
		}
	}
	var victims []liveVictim
	for i := range conns {
		if v := p.liveCheck(&conns[i], snap); v.l != nil {
			v.l = ptrs[i]
			victims = append(victims, v)
		}
	}
	n := 0
	for _, v := range victims {
		if p.live.claim(&v.l.closed) {
			p.closeLive(v)
			n++
		}
	}
	return n
}

// claim marks a connection closed and reports whether this caller is the
// first to close it, so that one refusal is logged and counted once whoever
// (a recheck, the connection's own goroutine) gets there first.
func (s *liveSet) claim(closed *bool) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	first := !*closed
	*closed = true
	return first
}

// logClosed records a connection closed by a check made after it was
// accepted: one access-log line and meshauth_sidecar_connections_closed_total.
func (p *Proxy) logClosed(direction, reason string, err error, attrs ...slog.Attr) {
	attrs = append(attrs, slog.String("direction", direction), slog.String("decision", "deny"),
		slog.String("reason", reason), slog.String("error", err.Error()))
	p.access.LogAttrs(context.Background(), slog.LevelWarn, "established connection closed", attrs...)
	p.m.Closed.WithLabelValues(direction, reason).Inc()
}

func (p *Proxy) closeLive(v liveVictim) {
	p.logClosed("inbound", v.reason, v.err, slog.String("peer", v.l.src), slog.String("source", v.l.peer), slog.Int("port", int(v.l.port)))
	reset(v.l.c)
}

// claimClose claims the close of a tracked connection (see liveSet.claim).
func (p *Proxy) claimClose(info *connInfo) bool {
	p.live.mu.Lock()
	l := p.live.m[info]
	p.live.mu.Unlock()
	return l == nil || p.live.claim(&l.closed)
}

// verifyPooled checks a pooled upstream mTLS connection's server against the
// current bundle before it carries another request. The server identity was
// matched against the route's allowed identities at the handshake, and the
// pool key holds that list, so only the chain needs checking again.
func (p *Proxy) verifyPooled(u *upConn) error { return p.verifyConn(u.c) }

func (p *Proxy) poolStale(u *upConn, err error) {
	p.logClosed("outbound", identity.Reason(err), err, slog.String("peer", u.c.RemoteAddr().String()))
}

// trackOut records an outbound mTLS tunnel until the returned func runs.
// gen is the pool generation read before its handshake: if a recheck ran
// since (it could not see this tunnel yet), the server is checked now.
func (p *Proxy) trackOut(up net.Conn, dest string, gen uint64) func() {
	tc := tlsOf(up)
	if tc == nil {
		return func() {} // plaintext (DISABLE, passthrough): nothing to verify
	}
	o := &liveOut{c: up, dest: dest, chain: tc.ConnectionState().PeerCertificates}
	p.live.mu.Lock()
	if p.live.out == nil {
		p.live.out = make(map[*liveOut]struct{})
	}
	p.live.out[o] = struct{}{}
	p.live.mu.Unlock()
	if p.pool.gen.Load() != gen {
		if _, err := p.verifyPeer(o.chain); err != nil && p.live.claim(&o.closed) {
			p.closeOut(o, err)
		}
	}
	return func() {
		p.live.mu.Lock()
		delete(p.live.out, o)
		p.live.mu.Unlock()
	}
}

func (p *Proxy) closeOut(o *liveOut, err error) {
	p.logClosed("outbound", identity.Reason(err), err, slog.String("destination", o.dest))
	o.c.Close()
}
