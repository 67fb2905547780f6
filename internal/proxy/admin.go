package proxy

import (
	"encoding/json"
	"net/http"
	"time"

	"github.com/meshauth/meshauth/internal/identity"
	"github.com/meshauth/meshauth/internal/metrics"
)

// CertsInfo is the /certs document, shaped like Envoy's: the workload
// certificate in use and the roots it trusts.
type CertsInfo struct {
	Identity         string    `json:"identity"`
	Serial           string    `json:"serial"`
	NotBefore        time.Time `json:"not_before"`
	NotAfter         time.Time `json:"not_after"`
	SecondsToExpiry  int64     `json:"seconds_until_expiration"`
	ChainLength      int       `json:"chain_length"`
	TrustDomain      string    `json:"trust_domain"`
	BundleVersion    uint64    `json:"bundle_version"`
	RootFingerprints []string  `json:"root_sha256_fingerprints"`
	RevokedSerials   int       `json:"revoked_serials"`
}

// Certs describes the certificate and bundle in use.
func (p *Proxy) Certs() CertsInfo {
	var ci CertsInfo
	if s := p.certs.SVID(); s != nil {
		l := s.Leaf()
		ci.Identity = s.URI
		ci.Serial = s.Serial()
		ci.NotBefore = l.NotBefore.UTC()
		ci.NotAfter = l.NotAfter.UTC()
		ci.SecondsToExpiry = int64(l.NotAfter.Sub(p.now()).Seconds())
		ci.ChainLength = len(s.Chain)
	}
	if b := p.certs.Bundle(); b != nil {
		ci.TrustDomain = b.TrustDomain
		ci.BundleVersion = b.Version
		ci.RevokedSerials = len(b.Revoked)
		for _, r := range b.Roots {
			ci.RootFingerprints = append(ci.RootFingerprints, identity.Fingerprint(r))
		}
	}
	return ci
}

// AdminHandler serves the admin endpoints: /healthz/ready, /certs,
// /config_dump and /metrics (reg's metrics in Prometheus format).
// extra, if non-nil, is merged into /config_dump (the agent's view, CLI
// flags).
func (p *Proxy) AdminHandler(reg *metrics.Registry, extra func() map[string]any) http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /healthz/ready", func(w http.ResponseWriter, r *http.Request) {
		if err := p.Ready(); err != nil {
			http.Error(w, "not ready: "+err.Error(), http.StatusServiceUnavailable)
			return
		}
		w.Write([]byte("LIVE\n"))
	})
	mux.HandleFunc("GET /certs", func(w http.ResponseWriter, r *http.Request) {
		writeJSON(w, map[string]any{"certificates": []CertsInfo{p.Certs()}})
	})
	mux.HandleFunc("GET /config_dump", func(w http.ResponseWriter, r *http.Request) {
		doc := map[string]any{
			"snapshot": p.policy.Current(),
			"listeners": map[string]any{
				"inbound":     p.cfg.Inbound,
				"capture":     p.cfg.InboundCapture,
				"outbound":    p.cfg.Outbound,
				"transparent": p.cfg.Transparent,
				"upstreams":   p.cfg.Upstreams,
			},
			"certs": p.Certs(),
		}
		if extra != nil {
			for k, v := range extra() {
				doc[k] = v
			}
		}
		writeJSON(w, doc)
	})
	if reg != nil {
		mux.Handle("GET /metrics", reg.Handler())
	}
	return mux
}

func writeJSON(w http.ResponseWriter, v any) {
	w.Header().Set("Content-Type", "application/json")
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	enc.Encode(v)
}
