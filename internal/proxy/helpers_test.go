package proxy

import (
	"bytes"
	"encoding/json"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/meshauth/meshauth/internal/agent"
	"github.com/meshauth/meshauth/internal/ca/catest"
	"github.com/meshauth/meshauth/internal/identity"
	"github.com/meshauth/meshauth/internal/metrics"
	"github.com/meshauth/meshauth/internal/policy"
)

// logBuf is a goroutine-safe buffer for a JSON slog handler.
type logBuf struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *logBuf) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *logBuf) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

// lines returns the decoded JSON log records.
func (l *logBuf) lines(t testing.TB) []map[string]any {
	var out []map[string]any
	for _, ln := range strings.Split(strings.TrimSpace(l.String()), "\n") {
		if ln == "" {
			continue
		}
		var m map[string]any
		if err := json.Unmarshal([]byte(ln), &m); err != nil {
			t.Fatalf("log line %q: %v", ln, err)
		}
		out = append(out, m)
	}
	return out
}

func counterValue(t testing.TB, c *metrics.Counter) float64 {
	t.Helper()
	return c.Value()
}

const (
	sleepID   = "spiffe://cluster.local/ns/default/sa/sleep"
	httpbinID = "spiffe://cluster.local/ns/default/sa/httpbin"
)

// sidecar is one proxy with its stores, log and metrics, on loopback.
type sidecar struct {
	*Proxy
	store  *agent.Store
	config *ConfigStore
	log    *logBuf
	reg    *metrics.Registry
}

type sidecarOpts struct {
	snap             *policy.Snapshot
	bundle           *identity.Bundle
	inbound          []InboundListener
	handshakeTimeout time.Duration
	outbound         bool
	upstreams        []Upstream
	outboundUIDs     []int
	// outboundListen replaces the explicit proxy's 127.0.0.1:0.
	outboundListen string
	// noStart: the caller calls Start (e.g. inside a network namespace).
	noStart bool
	// config, if set, changes the Config before New (limits, timeouts).
	config func(*Config)
}

func mustSVID(t testing.TB, c *catest.Cert) *agent.SVID {
	t.Helper()
	s, err := agent.NewSVID(c.ChainPEM, c.KeyPEM)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func startSidecar(t testing.TB, ca *catest.CA, id string, o sidecarOpts) *sidecar {
	t.Helper()
	store := agent.NewStore(agent.StoreConfig{})
	b := o.bundle
	if b == nil {
		b = ca.Bundle()
	}
	if err := store.Set(mustSVID(t, ca.Issue(t, id)), b); err != nil {
		t.Fatal(err)
	}
	if o.snap == nil {
		o.snap = &policy.Snapshot{TrustDomain: "cluster.local", InboundDefault: policy.ServerStrict}
	}
	cs := NewConfigStore(nil)
	if err := cs.Set(o.snap); err != nil {
		t.Fatal(err)
	}
	lb := &logBuf{}
	reg := metrics.NewRegistry()
	cfg := Config{
		Certs:            store,
		Policy:           cs,
		Log:              slog.New(slog.NewJSONHandler(lb, &slog.HandlerOptions{Level: slog.LevelInfo})),
		Metrics:          NewMetrics(reg),
		HandshakeTimeout: o.handshakeTimeout,
		Inbound:          o.inbound,
		Upstreams:        o.upstreams,
		OutboundUIDs:     o.outboundUIDs,
	}
	if o.outbound {
		cfg.Outbound = "127.0.0.1:0"
		if o.outboundListen != "" {
			cfg.Outbound = o.outboundListen
		}
	}
	if o.config != nil {
		o.config(&cfg)
	}
	p, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	if !o.noStart {
		if err := p.Start(); err != nil {
			t.Fatal(err)
		}
	}
	t.Cleanup(func() { p.Close() })
	return &sidecar{Proxy: p, store: store, config: cs, log: lb, reg: reg}
}

// headersApp is httpbin's /headers: it echoes the request headers as JSON.
func headersApp(t testing.TB) *httptest.Server {
	s := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		io.Copy(io.Discard, r.Body)
		h := map[string]string{"Host": r.Host}
		for k, v := range r.Header {
			h[k] = strings.Join(v, ",")
		}
		w.Header().Set("Content-Type", "application/json")
		json.NewEncoder(w).Encode(map[string]any{"headers": h})
	}))
	t.Cleanup(s.Close)
	return s
}

func portOf(t testing.TB, addr string) uint32 {
	t.Helper()
	_, ps, err := net.SplitHostPort(addr)
	if err != nil {
		t.Fatal(err)
	}
	n, err := strconv.Atoi(ps)
	if err != nil {
		t.Fatal(err)
	}
	return uint32(n)
}

// httpbinService is the outbound entry a client sidecar needs to reach a
// server sidecar listening on addr: service port 8000 -> target port 80,
// served by identities.
func httpbinService(t testing.TB, addr string, mode policy.ClientTLSMode, identities ...string) policy.OutboundService {
	host, _, _ := net.SplitHostPort(addr)
	return policy.OutboundService{
		Name: "httpbin", Namespace: "default",
		Hosts: []string{"httpbin", "httpbin.default", "httpbin.default.svc.cluster.local"},
		Ports: []policy.OutboundPort{{Name: "http", Port: 8000, TargetPort: 80, Protocol: "HTTP", TLSMode: mode}},
		Endpoints: []policy.Endpoint{{
			Workload: "httpbin-1", ServiceAccount: "httpbin", Address: host, Sidecar: true,
			Ports: map[uint32]uint32{80: portOf(t, addr)},
		}},
		ServerIdentities: identities,
	}
}

// proxyClient is an HTTP client using the sidecar as its http_proxy.
func proxyClient(s *sidecar, keepAlive bool) *http.Client {
	u := "http://" + s.OutboundAddr.String()
	tr := &http.Transport{
		Proxy:               func(*http.Request) (*url.URL, error) { return url.Parse(u) },
		DisableKeepAlives:   !keepAlive,
		MaxIdleConnsPerHost: 64,
	}
	return &http.Client{Transport: tr, Timeout: 10 * time.Second}
}

func discardLogger() *slog.Logger { return slog.New(slog.DiscardHandler) }

func mustParseURL(t testing.TB, s string) *url.URL {
	u, err := url.Parse(s)
	if err != nil {
		t.Fatal(err)
	}
	return u
}
