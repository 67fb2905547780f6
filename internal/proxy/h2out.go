package proxy

import (
	"context"
	"log/slog"
	"net"
	"net/http"
	"strings"
	"sync"
	"time"

	"github.com/meshauth/meshauth/internal/identity"
	"github.com/meshauth/meshauth/internal/policy"
)

// The client sidecar's HTTP/2: HTTP/2 with prior knowledge from the app
// (a captured or --upstream connection to an HTTP2/GRPC/HTTP port, a
// CONNECT tunnel to one, or the explicit proxy) is terminated, and each
// request is routed by the outbound decision (decide.go) like an HTTP/1.x
// request. To a server sidecar it goes over mTLS with ALPN h2,
// multiplexed: many requests, from any number of app connections, share
// one connection per endpoint (h2Pool), as Linkerd's proxies do.

// outboundH2 serves the requests of one outbound HTTP/2 connection.
type outboundH2 struct {
	p    *Proxy
	info *connInfo
}

// serveOutboundH2 serves HTTP/2 from the app on c (its next bytes are the
// client preface).
func (p *Proxy) serveOutboundH2(c net.Conn, info *connInfo) {
	p.cached.activeOut.Inc()
	defer p.cached.activeOut.Dec()
	p.serveH2(p.h2.out, c, &outboundH2{p: p, info: info})
}

func (h *outboundH2) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	p := h.p
	info := *h.info // per request: the mode is the route's
	l := reqLog{dir: "outbound", method: r.Method, host: r.Host, path: r.RequestURI,
		start: time.Now(), proto: "HTTP/2", decision: "allow"}
	host, port := info.origHost, info.origPort
	if host == "" {
		// The explicit proxy: the request's authority names the
		// destination (http, port 80 by default).
		var err error
		if host, port, err = absoluteTarget("http://" + r.Host + "/"); err != nil {
			p.localH2(w, r, &info, &l, http.StatusBadRequest, "bad_proxy_request", err.Error())
			return
		}
	}
	path, query, msg := h2Target(r)
	if msg != "" {
		p.localH2(w, r, &info, &l, http.StatusBadRequest, reasonBadPath, msg)
		return
	}
	o := p.decide(host, port, info.origHost != "")
	hop := h2Hop{info: &info}
	switch o.verdict {
	case denyUnknown:
		p.localH2(w, r, &info, &l, http.StatusBadGateway, "unknown_destination", o.target+" is not a mesh service and outbound passthrough is off")
		return
	case noEndpoints:
		info.mode = string(o.route.mode)
		p.localH2(w, r, &info, &l, http.StatusServiceUnavailable, "no_endpoints", "service "+o.route.service+" has no endpoints")
		return
	case passthrough:
		info.mode = "passthrough"
		hop.addr = o.target
		hop.tr = p.h2.pool.transport("h2c|"+hop.addr, plainDial)
	default:
		rt := o.route
		info.mode = string(rt.mode)
		hop.addr = o.endpoint()
		switch {
		case rt.mode == policy.ClientDisable && rt.http:
			// A plaintext HTTP/1.x server may not speak HTTP/2.
			hop.tr = p.h2.toAppH1
		case rt.mode == policy.ClientDisable:
			hop.tr = p.h2.pool.transport("h2c|"+hop.addr, plainDial)
		default:
			cfg := p.upstreamFor(rt).h2TLS
			hop.tr = p.h2.pool.transport(rt.transportKey+"|h2|"+hop.addr, func(ctx context.Context, addr string) (net.Conn, error) {
				return p.dialTLS(ctx, addr, cfg)
			})
		}
	}
	l.dest = hop.addr
	p.forwardH2(w, r, &l, hop, path, query)
}

// h2Pool keeps HTTP/2 connections to upstreams (server sidecars over
// mTLS, h2c servers), several requests at once on each. A connection
// verified under an older bundle or policy generation has its server
// verified again (as connPool does) before it takes another request.
type h2Pool struct {
	p *Proxy
	// t holds the settings of the connections and makes each
	// (NewClientConn) over the connection its h2Dialing dials; it pools
	// none itself.
	t     *http.Transport
	mu    sync.Mutex
	conns map[string][]*h2Conn
	// dialing holds, per key, the dial in progress: requests that find no
	// connection with room wait for it instead of each dialling their own,
	// and share its error if it fails.
	dialing map[string]*h2Dial
}

type h2Dial struct {
	done chan struct{} // closed when the connection is pooled or failed
	err  error
}

type h2Conn struct {
	cc  *http.ClientConn
	c   net.Conn
	gen uint64
}

// h2Dialing is how h2Pool.t dials a connection (in the context of
// NewClientConn) and where it leaves the connection for verifyConn.
type h2Dialing struct {
	dial func(context.Context, string) (net.Conn, error)
	c    net.Conn
}

type h2DialKey struct{}

func newH2Pool(p *Proxy) *h2Pool {
	return &h2Pool{p: p, conns: map[string][]*h2Conn{}, dialing: map[string]*h2Dial{}, t: &http.Transport{
		// HTTP/2 with prior knowledge over what dial returns: plaintext
		// (h2c) or mTLS the proxy already negotiated (ALPN h2).
		Protocols: h2Only(),
		DialContext: func(ctx context.Context, _, addr string) (net.Conn, error) {
			d := ctx.Value(h2DialKey{}).(*h2Dialing)
			c, err := d.dial(ctx, addr)
			d.c = c
			return c, err
		},
		DisableCompression:     true,
		MaxResponseHeaderBytes: h2MaxHeaderBytes,
		IdleConnTimeout:        p.cfg.IdleTimeout / 2,
		HTTP2: &http.HTTP2Config{
			SendPingTimeout:  p.cfg.IdleTimeout / 2,
			WriteByteTimeout: p.cfg.BodyIdleTimeout,
		},
		Proxy: nil,
	}}
}

// transport is a RoundTripper over the pool's connections for key,
// dialled with dial.
func (hp *h2Pool) transport(key string, dial func(context.Context, string) (net.Conn, error)) http.RoundTripper {
	return h2PoolRT{hp: hp, key: key, dial: dial}
}

type h2PoolRT struct {
	hp   *h2Pool
	key  string
	dial func(context.Context, string) (net.Conn, error)
}

func (rt h2PoolRT) RoundTrip(req *http.Request) (*http.Response, error) {
	for attempt := 0; ; attempt++ {
		cc, err := rt.hp.get(req.Context(), rt.key, req.URL.Host, rt.dial)
		if err != nil {
			return nil, err
		}
		resp, err := cc.RoundTrip(req)
		if err != nil && attempt == 0 && (req.Body == nil || req.Body == http.NoBody) && retryableH2(err) {
			continue // the connection was going away before the request went out
		}
		return resp, err
	}
}

// retryableH2 reports an error of a connection that closed or got GOAWAY
// before it took the request (net/http's HTTP/2 exports no error types:
// "http2: client conn not usable", "... is closed", "server sent GOAWAY",
// "received Server's graceful shutdown GOAWAY").
func retryableH2(err error) bool {
	s := err.Error()
	return strings.Contains(s, "client conn not usable") || strings.Contains(s, "client conn is closed") || strings.Contains(s, "GOAWAY")
}

// get returns a connection for key with a stream reserved, dialling one
// when none can take another request.
func (hp *h2Pool) get(ctx context.Context, key, addr string, dial func(context.Context, string) (net.Conn, error)) (*http.ClientConn, error) {
	for {
		cc, wait := hp.pick(key)
		if cc != nil {
			return cc, nil
		}
		if wait == nil {
			return hp.dial(ctx, key, addr, dial)
		}
		select {
		case <-wait.done:
			if wait.err != nil {
				return nil, wait.err
			}
			// A connection is up: look again.
		case <-ctx.Done():
			return nil, ctx.Err()
		}
	}
}

// pick reserves a stream on a pooled connection for key. With none that
// has room it returns the channel of a dial in progress to wait for, or
// nil, nil after registering the caller as the one to dial.
func (hp *h2Pool) pick(key string) (*http.ClientConn, *h2Dial) {
	gen := hp.p.pool.gen.Load()
	hp.mu.Lock()
	defer hp.mu.Unlock()
	l := hp.conns[key]
	kept := l[:0]
	var pick *h2Conn
	for _, x := range l {
		if x.cc.Err() != nil {
			continue
		}
		if x.gen != gen {
			if err := hp.p.verifyConn(x.c); err != nil {
				hp.p.logClosed("outbound", identity.Reason(err), err, slog.String("peer", x.c.RemoteAddr().String()))
				x.cc.Close()
				continue
			}
			x.gen = gen
		}
		kept = append(kept, x)
		if pick == nil && x.cc.Reserve() == nil {
			pick = x
		}
	}
	clear(l[len(kept):])
	hp.conns[key] = kept
	if pick != nil {
		return pick.cc, nil
	}
	if d := hp.dialing[key]; d != nil {
		return nil, d
	}
	hp.dialing[key] = &h2Dial{done: make(chan struct{})}
	return nil, nil
}

// dial opens a connection for key (the caller pick chose), reserves a
// stream on it, pools it and wakes the requests waiting for it.
func (hp *h2Pool) dial(ctx context.Context, key, addr string, dial func(context.Context, string) (net.Conn, error)) (*http.ClientConn, error) {
	gen := hp.p.pool.gen.Load() // before the handshake that verifies the server
	d := &h2Dialing{dial: dial}
	cc, err := hp.t.NewClientConn(context.WithValue(ctx, h2DialKey{}, d), "http", addr)
	if err == nil {
		if err = cc.Reserve(); err != nil {
			cc.Close()
			cc = nil
		}
	}
	hp.mu.Lock()
	if cc != nil {
		hp.conns[key] = append(hp.conns[key], &h2Conn{cc: cc, c: d.c, gen: gen})
	}
	w := hp.dialing[key]
	w.err = err
	close(w.done)
	delete(hp.dialing, key)
	hp.mu.Unlock()
	return cc, err
}

// closeIdle closes the pooled connections with no request in flight or
// reserved (Proxy.Close: the others finish their streams).
func (hp *h2Pool) closeIdle() {
	hp.mu.Lock()
	defer hp.mu.Unlock()
	for k, l := range hp.conns {
		kept := l[:0]
		for _, x := range l {
			if x.cc.InFlight() == 0 {
				x.cc.Close()
				continue
			}
			kept = append(kept, x)
		}
		clear(l[len(kept):])
		hp.conns[k] = kept
	}
}

// closeAll closes every pooled connection (Proxy.Close).
func (hp *h2Pool) closeAll() {
	hp.mu.Lock()
	defer hp.mu.Unlock()
	for k, l := range hp.conns {
		for _, x := range l {
			x.cc.Close()
		}
		delete(hp.conns, k)
	}
}

// verifyConn checks the server of an upstream mTLS connection against the
// current bundle; plaintext (DISABLE or passthrough): nothing to verify.
func (p *Proxy) verifyConn(c net.Conn) error {
	tc := tlsOf(c)
	if tc == nil {
		return nil
	}
	_, err := p.verifyPeer(tc.ConnectionState().PeerCertificates)
	return err
}
