package sidecar

import (
	"fmt"
	"net"
	"net/http"
	"time"

	"github.com/meshauth/meshauth/internal/proxy"
)

// startServers starts the sidecar's own HTTP servers: admin, health (with
// the app probes) and Prometheus-only. The returned func closes those
// started, also when err is set.
func (s *sidecar) startServers(p *proxy.Proxy) (func(), error) {
	var srvs []*http.Server
	closeAll := func() {
		for _, srv := range srvs {
			srv.Close()
		}
	}
	serve := func(flag, addr string, h http.Handler) error {
		l, err := net.Listen("tcp", addr)
		if err != nil {
			return fmt.Errorf("--%s: %w", flag, err)
		}
		srv := sideServer(h, s.cfg.IdleTimeout)
		go srv.Serve(l)
		srvs = append(srvs, srv)
		return nil
	}
	if s.cfg.Admin != "" {
		extra := func() map[string]any {
			m := map[string]any{"snapshot_file": s.cfg.Snapshot}
			if s.ag != nil {
				m["agent"] = s.ag.Status()
			}
			return m
		}
		if err := serve("admin", s.cfg.Admin, p.AdminHandler(s.reg, extra)); err != nil {
			return closeAll, err
		}
	}
	if s.cfg.Health != "" {
		probers, err := proxy.ParseAppProbers(s.cfg.AppProbers)
		if err != nil {
			return closeAll, err
		}
		if err := serve("health", s.cfg.Health, p.HealthHandler(probers)); err != nil {
			return closeAll, err
		}
	}
	if s.cfg.Prometheus != "" {
		mux := http.NewServeMux()
		h := s.reg.Handler()
		mux.Handle("GET /metrics", h)
		mux.Handle("GET /stats/prometheus", h) // the path Istio's scrape config uses
		if err := serve("prometheus", s.cfg.Prometheus, mux); err != nil {
			return closeAll, err
		}
	}
	return closeAll, nil
}

// sideServer is the HTTP server of the sidecar's own endpoints (admin,
// health, Prometheus: the last two listen on every address in a pod). A
// client that opens connections and goes quiet holds none of them longer
// than the request-head limit or, between requests, the sidecar's
// --idle-timeout, as on the proxy's own listeners.
func sideServer(h http.Handler, idle time.Duration) *http.Server {
	return &http.Server{Handler: h, ReadHeaderTimeout: 10 * time.Second, IdleTimeout: idle, MaxHeaderBytes: 64 << 10}
}
