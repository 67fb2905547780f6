package e2e

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"runtime"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// The chaos suite's load generator. It runs inside this test process, but
// every connection it opens is made from inside a client pod's network
// namespace (nsDial), so the pod's iptables capture sends it through the
// pod's sidecar exactly as an app's connection would go. It sends at a
// fixed rate per pair (open loop: a stalled mesh does not slow the
// generator down, the requests pile up in flight and fail on their
// timeout) and counts every request by the 100 ms slot it started in, so a
// scenario's window is read off afterwards: sent, ok, failed with reason.

// nsDial returns a dial function whose sockets live in network namespace
// netnsName (`ip netns` name). The socket is created by a goroutine locked
// to an OS thread that has joined the namespace; that thread is never
// unlocked, so Go ends it with the goroutine instead of reusing a thread
// that sits in another namespace.
func nsDial(netnsName string) func(ctx context.Context, network, addr string) (net.Conn, error) {
	path := filepath.Join("/var/run/netns", netnsName)
	return func(ctx context.Context, network, addr string) (net.Conn, error) {
		type result struct {
			c   net.Conn
			err error
		}
		ch := make(chan result, 1)
		go func() {
			runtime.LockOSThread()
			fd, err := unix.Open(path, unix.O_RDONLY|unix.O_CLOEXEC, 0)
			if err != nil {
				ch <- result{nil, fmt.Errorf("open %s: %w", path, err)}
				return
			}
			err = unix.Setns(fd, unix.CLONE_NEWNET)
			unix.Close(fd)
			if err != nil {
				ch <- result{nil, fmt.Errorf("setns %s: %w", path, err)}
				return
			}
			var d net.Dialer
			c, err := d.DialContext(ctx, network, addr)
			ch <- result{c, err}
		}()
		r := <-ch
		return r.c, r.err
	}
}

// nsClient is an HTTP client whose connections start in a pod's namespace;
// maxIdle 0 keeps no connection open after a request.
func nsClient(netnsName string, timeout time.Duration, maxIdle int) *http.Client {
	return &http.Client{
		Timeout: timeout,
		Transport: &http.Transport{
			DialContext:         nsDial(netnsName),
			MaxIdleConns:        maxIdle,
			MaxIdleConnsPerHost: maxIdle,
			IdleConnTimeout:     30 * time.Second,
			DisableCompression:  true,
			DisableKeepAlives:   maxIdle <= 0,
		},
	}
}

// loadSlot is how finely results are kept.
const loadSlot = 100 * time.Millisecond

// pairLoad is the load on one client -> server pair.
type pairLoad struct {
	name   string
	url    string
	client *http.Client
	rate   int
	start  time.Time // the generator's start, slot 0

	mu sync.Mutex
	// started counts requests by their start slot when they start; sent
	// and ok when they have ended.
	started, sent, ok []int
	fails             []failure
	capped            []time.Time // ticks not sent: in-flight limit reached
	inflight          atomic.Int64
}

// failure is one failed request: when it started, when it ended, why.
type failure struct {
	start, end time.Time
	reason     string
}

// load drives every pair until Stop.
type load struct {
	start       time.Time
	pairs       []*pairLoad
	maxInflight int64
	cancel      context.CancelFunc
	wg          sync.WaitGroup
}

// startLoad sends rate requests per second to each pair's URL.
func startLoad(pairs []*pairLoad) *load {
	ctx, cancel := context.WithCancel(context.Background())
	l := &load{start: time.Now(), pairs: pairs, maxInflight: 10000, cancel: cancel}
	for _, p := range pairs {
		p.start = l.start
		l.wg.Add(1)
		go l.drive(ctx, p)
	}
	return l
}

func (l *load) slot(t time.Time) int { return int(t.Sub(l.start) / loadSlot) }

func (l *load) drive(ctx context.Context, p *pairLoad) {
	defer l.wg.Done()
	var reqs sync.WaitGroup
	defer reqs.Wait()
	tick := time.NewTicker(time.Second / time.Duration(p.rate))
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
		if p.inflight.Load() >= l.maxInflight {
			p.mu.Lock()
			p.capped = append(p.capped, time.Now())
			p.mu.Unlock()
			continue
		}
		p.inflight.Add(1)
		reqs.Add(1)
		start := time.Now()
		p.mu.Lock()
		p.grow(l.slot(start))
		p.started[l.slot(start)]++
		p.mu.Unlock()
		go func() {
			defer reqs.Done()
			defer p.inflight.Add(-1)
			l.one(p, start)
		}()
	}
}

// one sends one request and records it under its start slot.
func (l *load) one(p *pairLoad, start time.Time) {
	reason := ""
	resp, err := p.client.Get(p.url)
	if err != nil {
		reason = classify(err)
	} else {
		_, err = io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		switch {
		case resp.StatusCode != http.StatusOK:
			reason = fmt.Sprintf("HTTP %d %s", resp.StatusCode, resp.Header.Get("X-Meshauth-Reason"))
		case err != nil:
			reason = "body: " + classify(err)
		}
	}
	s := l.slot(start)
	p.mu.Lock()
	defer p.mu.Unlock()
	p.sent[s]++
	if reason == "" {
		p.ok[s]++
		return
	}
	p.fails = append(p.fails, failure{start: start, end: time.Now(), reason: strings.TrimSpace(reason)})
}

// grow makes room for slot s; p.mu is held.
func (p *pairLoad) grow(s int) {
	for len(p.started) <= s {
		p.started = append(p.started, 0)
		p.sent = append(p.sent, 0)
		p.ok = append(p.ok, 0)
	}
}

// classify names a client error by its cause, not its addresses.
func classify(err error) string {
	var ne net.Error
	switch {
	case errors.Is(err, syscall.ECONNREFUSED):
		return "connection refused"
	case errors.Is(err, syscall.ECONNRESET):
		return "connection reset"
	case errors.Is(err, syscall.EPIPE):
		return "broken pipe"
	case errors.Is(err, io.EOF), errors.Is(err, io.ErrUnexpectedEOF):
		return "connection closed (EOF)"
	case errors.Is(err, os.ErrDeadlineExceeded), errors.As(err, &ne) && ne.Timeout():
		return "timeout"
	}
	return err.Error()
}

// stop ends the load and waits for every request in flight.
func (l *load) stop() {
	l.cancel()
	l.wg.Wait()
}

// window is what the load saw between two instants, by start time.
type window struct {
	Sent, OK, Failed int
	// ByPair and Reasons count failures.
	ByPair  map[string]int
	Reasons map[string]int
	Capped  int
}

// settled waits until every request that started in [from, to) has
// ended (they time out after the client's Timeout at the latest).
func (l *load) settled(from, to time.Time) {
	a, b := max(l.slot(from), 0), l.slot(to)
	for {
		pending := 0
		for _, p := range l.pairs {
			p.mu.Lock()
			for s := a; s < b && s < len(p.started); s++ {
				pending += p.started[s] - p.sent[s]
			}
			p.mu.Unlock()
		}
		if pending == 0 {
			return
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// window counts the requests that started in [from, to). Call it once the
// requests of the window have ended (settled).
func (l *load) window(from, to time.Time) window {
	w := window{ByPair: map[string]int{}, Reasons: map[string]int{}}
	a, b := l.slot(from), l.slot(to)
	for _, p := range l.pairs {
		p.mu.Lock()
		for s := max(a, 0); s < b && s < len(p.sent); s++ {
			w.Sent += p.sent[s]
			w.OK += p.ok[s]
		}
		w.Capped += p.cappedIn(a, b)
		for _, f := range p.fails {
			if s := l.slot(f.start); s >= a && s < b {
				w.Failed++
				w.ByPair[p.name]++
				w.Reasons[p.name+": "+f.reason]++
			}
		}
		p.mu.Unlock()
	}
	return w
}

// reasons is the failure reasons, most frequent first, for the report.
func (w window) reasons() string {
	type kv struct {
		k string
		n int
	}
	var all []kv
	for k, n := range w.Reasons {
		all = append(all, kv{k, n})
	}
	sort.Slice(all, func(i, j int) bool { return all[i].n > all[j].n || all[i].n == all[j].n && all[i].k < all[j].k })
	var parts []string
	for _, e := range all {
		parts = append(parts, fmt.Sprintf("%d x %s", e.n, e.k))
	}
	return strings.Join(parts, "; ")
}

// firstOK is when pair name first had a request that started after t and
// succeeded (zero if none yet), to the 100 ms slot.
func (l *load) firstOK(name string, t time.Time) time.Time {
	for _, p := range l.pairs {
		if p.name != name {
			continue
		}
		p.mu.Lock()
		defer p.mu.Unlock()
		// From the next slot: every request in it started after t.
		for s := max(l.slot(t)+1, 0); s < len(p.ok); s++ {
			if p.ok[s] > 0 {
				return l.start.Add(time.Duration(s) * loadSlot)
			}
		}
	}
	return time.Time{}
}

// cappedIn counts the ticks of slots [a, b) not sent; p.mu is held.
func (p *pairLoad) cappedIn(a, b int) int {
	n := 0
	for _, t := range p.capped {
		if s := int(t.Sub(p.start) / loadSlot); s >= a && s < b {
			n++
		}
	}
	return n
}

// lastFailStart is the start of pair name's last failed request that
// started at or after t (zero if none).
func (l *load) lastFailStart(name string, t time.Time) time.Time {
	var last time.Time
	for _, p := range l.pairs {
		if p.name != name {
			continue
		}
		p.mu.Lock()
		for _, f := range p.fails {
			if !f.start.Before(t) && f.start.After(last) {
				last = f.start
			}
		}
		p.mu.Unlock()
	}
	return last
}
