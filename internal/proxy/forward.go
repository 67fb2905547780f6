package proxy

import (
	"crypto/tls"
	"errors"
	"net"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/meshauth/meshauth/internal/policy"
)

// reasonHeader tells a caller why the sidecar, not the app, answered.
const reasonHeader = "X-Meshauth-Reason"

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

// handshakeError is an outbound TLS handshake failure with its reason label.
type handshakeError struct {
	addr   string
	reason string
	err    error
}

func (e *handshakeError) Error() string {
	return "mTLS handshake with " + e.addr + " failed (" + e.reason + "): " + e.err.Error()
}
func (e *handshakeError) Unwrap() error { return e.err }

// tlsServer wraps c in a server-side TLS connection.
func tlsServer(c net.Conn, cfg *tls.Config) *tls.Conn { return tls.Server(c, cfg) }

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
