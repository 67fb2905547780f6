package proxy

import (
	"crypto/tls"
	"errors"
	"io"
	"net"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/meshauth/meshauth/internal/policy"
)

// reasonHeader tells a caller why the sidecar, not the app, answered.
const reasonHeader = "X-Meshauth-Reason"

// hopHeaders are per-connection headers a proxy must not forward (RFC 9110
// 7.6.1). Proxy-* are the explicit proxy's own.
var hopHeaders = []string{
	"Connection", "Proxy-Connection", "Keep-Alive", "Proxy-Authenticate",
	"Proxy-Authorization", "Te", "Trailer", "Transfer-Encoding", "Upgrade",
}

func removeHopHeaders(h http.Header) {
	if c := h["Connection"]; len(c) > 0 {
		for _, v := range c {
			for _, f := range strings.Split(v, ",") {
				if f = strings.TrimSpace(f); f != "" {
					h.Del(f)
				}
			}
		}
	}
	for _, k := range hopHeaders {
		if _, ok := h[k]; ok {
			delete(h, k)
		}
	}
}

// newPlainTransport is the pooled plaintext transport (to the local app, and
// for DISABLE / passthrough destinations). Compression is off (a proxy must
// not change bodies) and no environment proxy is used.
func newPlainTransport(idle time.Duration) *http.Transport {
	return &http.Transport{
		Proxy:                 nil,
		DialContext:           (&net.Dialer{Timeout: 5 * time.Second, KeepAlive: 30 * time.Second}).DialContext,
		MaxIdleConns:          0,
		MaxIdleConnsPerHost:   1024,
		IdleConnTimeout:       idle,
		DisableCompression:    true,
		ResponseHeaderTimeout: 0,
		ExpectContinueTimeout: time.Second,
		ForceAttemptHTTP2:     false,
	}
}

// forward sends r to host over rt and copies the response to w. It returns
// the status written and, for a sidecar-made error, its reason.
func (p *Proxy) forward(w http.ResponseWriter, r *http.Request, rt http.RoundTripper, host string) (int, string) {
	r.URL.Scheme = "http"
	r.URL.Host = host
	r.RequestURI = ""
	// The client may close after this request; the pooled upstream
	// connection stays open for the next one.
	r.Close = false
	removeHopHeaders(r.Header)
	if r.ContentLength == 0 {
		r.Body = nil
	}
	resp, err := rt.RoundTrip(r)
	if err != nil {
		reason := upstreamReason(err)
		status := http.StatusBadGateway
		if reason == reasonSecureNaming || reason == "upstream_unreachable" {
			status = http.StatusServiceUnavailable
		}
		if r.Context().Err() != nil {
			// The client went away; nothing to answer.
			return 499, "client_closed"
		}
		httpError(w, status, reason, "meshauth sidecar: upstream "+host+": "+err.Error())
		return status, reason
	}
	defer resp.Body.Close()
	h := w.Header()
	for k, v := range resp.Header {
		h[k] = v
	}
	removeHopHeaders(h)
	w.WriteHeader(resp.StatusCode)
	copyBody(w, resp.Body, resp.ContentLength < 0)
	return resp.StatusCode, ""
}

// copyBody streams a response body through a pooled buffer, flushing after
// each read when the length is unknown (server-sent events, chunked streams).
func copyBody(w http.ResponseWriter, body io.Reader, flush bool) {
	bp := bufPool.Get().(*[]byte)
	defer bufPool.Put(bp)
	buf := *bp
	f, _ := w.(http.Flusher)
	for {
		n, err := body.Read(buf)
		if n > 0 {
			if _, werr := w.Write(buf[:n]); werr != nil {
				return
			}
			if flush && f != nil {
				f.Flush()
			}
		}
		if err != nil {
			return
		}
	}
}

func httpError(w http.ResponseWriter, status int, reason, msg string) {
	h := w.Header()
	h.Set("Content-Type", "text/plain; charset=utf-8")
	h.Set(reasonHeader, reason)
	w.WriteHeader(status)
	io.WriteString(w, msg+"\n")
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
	req                      map[string]prometheus.Counter
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
		req:          map[string]prometheus.Counter{},
	}
	for _, mode := range []policy.ServerMode{policy.ServerStrict, policy.ServerPermissive, policy.ServerDisable} {
		c.inByMode[mode] = m.Connections.WithLabelValues("inbound", string(mode))
	}
	for _, d := range []string{"inbound", "outbound"} {
		c.hsOK[d+"ok"] = m.Handshakes.WithLabelValues(d, "ok", "mtls")
		c.hsOK[d+"plaintext"] = m.Handshakes.WithLabelValues(d, "ok", "plaintext")
		for _, cl := range []string{"1xx", "2xx", "3xx", "4xx", "5xx"} {
			c.req[d+cl] = m.Requests.WithLabelValues(d, cl)
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
	cl := "5xx"
	if status >= 100 && status < 600 {
		cl = strconv.Itoa(status/100) + "xx"
	}
	return c.req[dir+cl]
}
