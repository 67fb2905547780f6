package proxy

import (
	"github.com/prometheus/client_golang/prometheus"

	"github.com/meshauth/meshauth/internal/policy"
)

// Metrics are the proxy's Prometheus series. Label values are small constant
// sets (direction, mode, result, reason), so cardinality stays bounded.
type Metrics struct {
	Connections       *prometheus.CounterVec // direction, mode
	ActiveConnections *prometheus.GaugeVec   // direction
	Handshakes        *prometheus.CounterVec // direction, result, reason
	Authz             *prometheus.CounterVec // decision
	Requests          *prometheus.CounterVec // direction, class (2xx...)
	Bytes             *prometheus.CounterVec // direction (sent|received), side
	CertExpiry        prometheus.Gauge
	CertUpdates       *prometheus.CounterVec // what, result, reason
	ConfigUpdates     *prometheus.CounterVec // result
	Closed            *prometheus.CounterVec // direction, reason: established connections closed by a recheck
	Timeouts          *prometheus.CounterVec // direction, kind
	PoolReaped        prometheus.Counter
}

// NewMetrics registers the proxy's metrics on reg (which may be nil: then the
// metrics are kept but not exported).
func NewMetrics(reg prometheus.Registerer) *Metrics {
	m := &Metrics{
		Connections: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "meshauth_sidecar_connections_total",
			Help: "Connections accepted, by direction (inbound|outbound) and mode (STRICT, PERMISSIVE, DISABLE, ISTIO_MUTUAL, passthrough...).",
		}, []string{"direction", "mode"}),
		ActiveConnections: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "meshauth_sidecar_active_connections",
			Help: "Connections open now, by direction.",
		}, []string{"direction"}),
		Handshakes: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "meshauth_sidecar_tls_handshakes_total",
			Help: "mTLS handshakes by direction, result (ok|refused) and reason (no_client_cert, expired, revoked, secure_naming, plaintext, ...).",
		}, []string{"direction", "result", "reason"}),
		Authz: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "meshauth_sidecar_authz_decisions_total",
			Help: "Authorization decisions on inbound requests and TCP connections (allow|deny).",
		}, []string{"decision"}),
		Requests: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "meshauth_sidecar_http_requests_total",
			Help: "HTTP requests proxied, by direction and response status class.",
		}, []string{"direction", "class"}),
		Bytes: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "meshauth_sidecar_tcp_bytes_total",
			Help: "Bytes relayed on TCP (L4) connections, by direction and flow (upstream|downstream).",
		}, []string{"direction", "flow"}),
		CertExpiry: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "meshauth_sidecar_cert_expiry_timestamp_seconds",
			Help: "NotAfter of the workload certificate in use, as Unix seconds.",
		}),
		CertUpdates: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "meshauth_sidecar_cert_updates_total",
			Help: "Certificate and bundle updates offered to the proxy, by what (svid|bundle), result (applied|refused) and reason.",
		}, []string{"what", "result", "reason"}),
		ConfigUpdates: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "meshauth_sidecar_config_updates_total",
			Help: "Configuration snapshots offered to the sidecar, by result (applied|refused).",
		}, []string{"result"}),
		Closed: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "meshauth_sidecar_connections_closed_total",
			Help: "Connections closed by the sidecar: established ones because the bundle (revocation, retired root) or the policy (STRICT, authorization) changed after they were accepted, and outbound clients refused by the local-client rule (non_loopback_client, peer_uid_not_allowed), and new connections refused over --max-connections (max_connections).",
		}, []string{"direction", "reason"}),
		Timeouts: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "meshauth_sidecar_timeouts_total",
			Help: "Requests and connections the sidecar ended at a limit, by direction and kind (request_headers, response_headers, body_idle, request, idle).",
		}, []string{"direction", "kind"}),
		PoolReaped: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "meshauth_sidecar_pool_reaped_total",
			Help: "Idle pooled upstream connections closed by the reaper: idle too long, or closed by their server.",
		}),
	}
	if reg != nil {
		reg.MustRegister(m.Connections, m.ActiveConnections, m.Handshakes, m.Authz, m.Requests,
			m.Bytes, m.CertExpiry, m.CertUpdates, m.ConfigUpdates, m.Closed, m.Timeouts, m.PoolReaped)
	}
	return m
}

// cachedMetrics are label-bound series used on the hot path, so a request
// does not hash label values.
type cachedMetrics struct {
	m                        *Metrics
	allow, deny              prometheus.Counter
	activeIn, activeOut      prometheus.Gauge
	bytesInUp, bytesInDown   prometheus.Counter
	bytesOutUp, bytesOutDown prometheus.Counter
	inByMode                 map[policy.ServerMode]prometheus.Counter
	hsOK                     map[string]prometheus.Counter
	req                      [2][5]prometheus.Counter // [inbound|outbound][1xx..5xx]
}

func newCachedMetrics(m *Metrics) cachedMetrics {
	c := cachedMetrics{
		m:            m,
		allow:        m.Authz.WithLabelValues("allow"),
		deny:         m.Authz.WithLabelValues("deny"),
		activeIn:     m.ActiveConnections.WithLabelValues("inbound"),
		activeOut:    m.ActiveConnections.WithLabelValues("outbound"),
		bytesInUp:    m.Bytes.WithLabelValues("inbound", "upstream"),
		bytesInDown:  m.Bytes.WithLabelValues("inbound", "downstream"),
		bytesOutUp:   m.Bytes.WithLabelValues("outbound", "upstream"),
		bytesOutDown: m.Bytes.WithLabelValues("outbound", "downstream"),
		inByMode:     map[policy.ServerMode]prometheus.Counter{},
		hsOK:         map[string]prometheus.Counter{},
	}
	for _, mode := range []policy.ServerMode{policy.ServerStrict, policy.ServerPermissive, policy.ServerDisable} {
		c.inByMode[mode] = m.Connections.WithLabelValues("inbound", string(mode))
	}
	for di, d := range []string{"inbound", "outbound"} {
		c.hsOK[d+"ok"] = m.Handshakes.WithLabelValues(d, "ok", "mtls")
		c.hsOK[d+"plaintext"] = m.Handshakes.WithLabelValues(d, "ok", "plaintext")
		for i, cl := range []string{"1xx", "2xx", "3xx", "4xx", "5xx"} {
			c.req[di][i] = m.Requests.WithLabelValues(d, cl)
		}
	}
	return c
}

func (c cachedMetrics) inConns(mode policy.ServerMode) prometheus.Counter {
	if x, ok := c.inByMode[mode]; ok {
		return x
	}
	return c.m.Connections.WithLabelValues("inbound", string(mode))
}

// handshake returns the success counter; result is "ok" (mTLS) or
// "plaintext" (accepted without TLS, PERMISSIVE/DISABLE).
func (c cachedMetrics) handshake(dir, result string) prometheus.Counter {
	return c.hsOK[dir+result]
}

func (c cachedMetrics) requests(dir string, status int) prometheus.Counter {
	cl := 4 // 5xx
	if status >= 100 && status < 600 {
		cl = status/100 - 1
	}
	d := 0
	if dir == "outbound" {
		d = 1
	}
	return c.req[d][cl]
}
