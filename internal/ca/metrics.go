package ca

import (
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/meshauth/meshauth/internal/careport"
)

// metrics are the CA's Prometheus collectors. Expiry gauges are computed at
// scrape time from the current state, so they can never go stale.
type metrics struct {
	issuances  *prometheus.CounterVec
	latency    prometheus.Histogram
	rootExpiry prometheus.Collector
	signExpiry prometheus.Collector
	version    prometheus.Collector
	waiting    prometheus.Collector
	acks       *prometheus.CounterVec
}

func newMetrics(c *CA) *metrics {
	return &metrics{
		issuances: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: "meshauth", Subsystem: "ca", Name: "issuances_total",
			Help: "Certificate signing requests by result (issued, refused, error) and reason.",
		}, []string{"result", "reason"}),
		latency: prometheus.NewHistogram(prometheus.HistogramOpts{
			Namespace: "meshauth", Subsystem: "ca", Name: "signing_seconds",
			Help:    "Time to check, sign and durably log one certificate.",
			Buckets: prometheus.ExponentialBuckets(0.0001, 2, 16),
		}),
		rootExpiry: prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Namespace: "meshauth", Subsystem: "ca", Name: "root_expiry_timestamp_seconds",
			Help: "NotAfter of the root that anchors the signing certificate, in Unix seconds.",
		}, func() float64 {
			s := c.state.Load()
			return float64(pickSigner(s.authorities, c.cfg.Clock()).root.NotAfter.Unix())
		}),
		signExpiry: prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Namespace: "meshauth", Subsystem: "ca", Name: "signing_cert_expiry_timestamp_seconds",
			Help: "NotAfter of the certificate that signs workloads, in Unix seconds.",
		}, func() float64 {
			s := c.state.Load()
			return float64(pickSigner(s.authorities, c.cfg.Clock()).cert.NotAfter.Unix())
		}),
		version: prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Namespace: "meshauth", Subsystem: "ca", Name: "bundle_version",
			Help: "Version of the current trust bundle.",
		}, func() float64 { return float64(c.state.Load().bundle.Version) }),
		waiting: prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Namespace: "meshauth", Subsystem: "ca", Name: "rotation_waiting_sidecars",
			Help: "Sidecars a root rotation waits for before signing switches to the new root (0 when none is waiting).",
		}, func() float64 {
			r, err := c.store.Rotation()
			if err != nil || r == nil || r.Phase != careport.PhaseDistributing {
				return 0
			}
			_, n := c.fleetReport(r.NewRoot, true, c.cfg.Clock())
			return float64(n)
		}),
		acks: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: "meshauth", Subsystem: "ca", Name: "bundle_acks_total",
			Help: "Bundle acknowledgements from sidecars by result: ack, nack (the sidecar could not install it), refused (a version the stream was not sent, or other roots).",
		}, []string{"result"}),
	}
}

func (m *metrics) collectors() []prometheus.Collector {
	return []prometheus.Collector{m.issuances, m.latency, m.rootExpiry, m.signExpiry, m.version, m.waiting, m.acks}
}

func (m *metrics) register(r prometheus.Registerer) error {
	for _, c := range m.collectors() {
		if err := r.Register(c); err != nil {
			return err
		}
	}
	return nil
}

func (m *metrics) unregister(r prometheus.Registerer) {
	for _, c := range m.collectors() {
		r.Unregister(c)
	}
}

func (m *metrics) observe(err error, d time.Duration) {
	switch {
	case err == nil:
		m.issuances.WithLabelValues("issued", "ok").Inc()
		m.latency.Observe(d.Seconds())
	default:
		reason := ReasonOf(err)
		result := "refused"
		if reason == ReasonInternal {
			result = "error"
		}
		m.issuances.WithLabelValues(result, reason).Inc()
	}
}
