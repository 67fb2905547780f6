package proxy

import (
	"github.com/meshauth/meshauth/internal/metrics"
	"github.com/meshauth/meshauth/internal/policy"
)

// Metrics are the proxy's Prometheus series (internal/metrics). Label values are small constant
// sets (direction, mode, result, reason), so cardinality stays bounded.
type Metrics struct {
	Connections       *metrics.CounterVec // direction, mode
	ActiveConnections *metrics.GaugeVec   // direction
	Handshakes        *metrics.CounterVec // direction, result, reason
	Authz             *metrics.CounterVec // decision
	Requests          *metrics.CounterVec // direction, class (2xx...)
	Bytes             *metrics.CounterVec // direction (sent|received), side
	CertExpiry        *metrics.Gauge
	CertUpdates       *metrics.CounterVec // what, result, reason
	ConfigUpdates     *metrics.CounterVec // result
	Closed            *metrics.CounterVec // direction, reason: established connections closed by a recheck
	Timeouts          *metrics.CounterVec // direction, kind
	PoolReaped        *metrics.Counter
}

// NewMetrics registers the proxy's metrics on reg (which may be nil: then the
// metrics are kept but not exported).
func NewMetrics(reg *metrics.Registry) *Metrics {
	m := &Metrics{
		Connections: reg.CounterVec("meshauth_sidecar_connections_total",
			"Connections accepted, by direction (inbound|outbound) and mode (STRICT, PERMISSIVE, DISABLE, ISTIO_MUTUAL, passthrough...).",
			"direction", "mode"),
		ActiveConnections: reg.GaugeVec("meshauth_sidecar_active_connections",
			"Connections open now, by direction.",
			"direction"),
		Handshakes: reg.CounterVec("meshauth_sidecar_tls_handshakes_total",
			"mTLS handshakes by direction, result (ok|refused) and reason (no_client_cert, expired, revoked, secure_naming, plaintext, ...).",
			"direction", "result", "reason"),
		Authz: reg.CounterVec("meshauth_sidecar_authz_decisions_total",
			"Authorization decisions on inbound requests and TCP connections (allow|deny).",
			"decision"),
		Requests: reg.CounterVec("meshauth_sidecar_http_requests_total",
			"HTTP requests proxied, by direction and response status class.",
			"direction", "class"),
		Bytes: reg.CounterVec("meshauth_sidecar_tcp_bytes_total",
			"Bytes relayed on TCP (L4) connections, by direction and flow (upstream|downstream).",
			"direction", "flow"),
		CertExpiry: reg.Gauge("meshauth_sidecar_cert_expiry_timestamp_seconds",
			"NotAfter of the workload certificate in use, as Unix seconds."),
		CertUpdates: reg.CounterVec("meshauth_sidecar_cert_updates_total",
			"Certificate and bundle updates offered to the proxy, by what (svid|bundle), result (applied|refused) and reason.",
			"what", "result", "reason"),
		ConfigUpdates: reg.CounterVec("meshauth_sidecar_config_updates_total",
			"Configuration snapshots offered to the sidecar, by result (applied|refused).",
			"result"),
		Closed: reg.CounterVec("meshauth_sidecar_connections_closed_total",
			"Connections closed by the sidecar: established ones because the bundle (revocation, retired root) or the policy (STRICT, authorization) changed after they were accepted, and outbound clients refused by the local-client rule (non_loopback_client, peer_uid_not_allowed), and new connections refused over --max-connections (max_connections).",
			"direction", "reason"),
		Timeouts: reg.CounterVec("meshauth_sidecar_timeouts_total",
			"Requests and connections the sidecar ended at a limit, by direction and kind (request_headers, response_headers, body_idle, request, idle).",
			"direction", "kind"),
		PoolReaped: reg.Counter("meshauth_sidecar_pool_reaped_total",
			"Idle pooled upstream connections closed by the reaper: idle too long, or closed by their server."),
	}
	return m
}

// cachedMetrics are label-bound series used on the hot path, so a request
// does not hash label values.
type cachedMetrics struct {
	m                        *Metrics
	allow, deny              *metrics.Counter
	activeIn, activeOut      *metrics.Gauge
	bytesInUp, bytesInDown   *metrics.Counter
	bytesOutUp, bytesOutDown *metrics.Counter
	inByMode                 map[policy.ServerMode]*metrics.Counter
	hsOK                     map[string]*metrics.Counter
	req                      [2][5]*metrics.Counter // [inbound|outbound][1xx..5xx]
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
		inByMode:     map[policy.ServerMode]*metrics.Counter{},
		hsOK:         map[string]*metrics.Counter{},
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

func (c cachedMetrics) inConns(mode policy.ServerMode) *metrics.Counter {
	if x, ok := c.inByMode[mode]; ok {
		return x
	}
	return c.m.Connections.WithLabelValues("inbound", string(mode))
}

// handshake returns the success counter; result is "ok" (mTLS) or
// "plaintext" (accepted without TLS, PERMISSIVE/DISABLE).
func (c cachedMetrics) handshake(dir, result string) *metrics.Counter {
	return c.hsOK[dir+result]
}

func (c cachedMetrics) requests(dir string, status int) *metrics.Counter {
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
