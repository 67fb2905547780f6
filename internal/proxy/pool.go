package proxy

import (
	"sync"
	"sync/atomic"
	"time"
)

// The client sidecar's pool of idle upstream HTTP connections, per
// endpoint and TLS settings; a connection verified under an older bundle
// or policy is verified again before it is reused.

// poolKey names the idle connections that may serve a request: the
// route's TLS settings (route.transportKey, or "plain") and the endpoint.
type poolKey struct{ transport, ep string }

// connPool keeps idle upstream connections per endpoint, newest first.
type connPool struct {
	mu      sync.Mutex
	idle    map[poolKey][]*upConn
	maxIdle int
	timeout time.Duration
	// gen is bumped whenever the bundle, certificate or policy changes; a
	// pooled connection verified under an older generation has its server
	// verified again (revoked serial, retired root) before it is reused.
	gen    atomic.Uint64
	verify func(*upConn) error // nil: no re-verification
	// stale is called for each connection dropped by that check.
	stale func(*upConn, error)
}

func newConnPool(timeout time.Duration) *connPool {
	return &connPool{idle: map[poolKey][]*upConn{}, maxIdle: 256, timeout: timeout}
}

func (p *connPool) get(key poolKey) *upConn {
	p.mu.Lock()
	defer p.mu.Unlock()
	l := p.idle[key]
	for len(l) > 0 {
		u := l[len(l)-1]
		l = l[:len(l)-1]
		if time.Since(u.idle) < p.timeout {
			if g := p.gen.Load(); u.gen != g && p.verify != nil {
				if err := p.verify(u); err != nil {
					if p.stale != nil {
						p.stale(u, err)
					}
					u.close()
					continue
				}
				u.gen = g
			}
			p.idle[key] = l
			u.reused = true
			return u
		}
		u.close()
	}
	delete(p.idle, key)
	return nil
}

func (p *connPool) put(key poolKey, u *upConn) {
	u.idle = time.Now()
	p.mu.Lock()
	if l := p.idle[key]; len(l) < p.maxIdle {
		p.idle[key] = append(l, u)
		p.mu.Unlock()
		return
	}
	p.mu.Unlock()
	u.close()
}

// reap closes the idle connections that sat longer than the pool's
// timeout or whose server closed them (or sent something unasked), so
// none lingers in CLOSE-WAIT until its endpoint is used again. It returns
// how many it closed.
func (p *connPool) reap() int {
	n := 0
	p.mu.Lock()
	defer p.mu.Unlock()
	for k, l := range p.idle {
		kept := l[:0]
		for _, u := range l {
			if time.Since(u.idle) >= p.timeout || peerGone(u.c) {
				u.close()
				n++
				continue
			}
			kept = append(kept, u)
		}
		clear(l[len(kept):])
		if len(kept) == 0 {
			delete(p.idle, k)
		} else {
			p.idle[k] = kept
		}
	}
	return n
}

// reapEvery is how often the pool is swept: a quarter of its timeout,
// between 50 ms and 1 s.
func (p *connPool) reapEvery() time.Duration {
	return min(max(p.timeout/4, 50*time.Millisecond), time.Second)
}

// closeIdle closes every idle connection (rotation tests, shutdown).
func (p *connPool) closeIdle() {
	p.mu.Lock()
	defer p.mu.Unlock()
	for k, l := range p.idle {
		for _, u := range l {
			u.close()
		}
		delete(p.idle, k)
	}
}
