package proxy

import (
	"context"
	"crypto/tls"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/meshauth/meshauth/internal/tlsprofile"
)

// AppProbe is one of the app's HTTP probes that the injector moved to the
// sidecar's health port: kubelet has no mesh certificate, so under STRICT a
// probe to the app's port would fail and kill a healthy pod (Istio #4429).
// The JSON shape is the injector's (MESHAUTH_APP_PROBERS, keyed by path).
type AppProbe struct {
	Port   int32             `json:"port"`
	Path   string            `json:"path,omitempty"`
	Scheme string            `json:"scheme,omitempty"`
	Host   string            `json:"host,omitempty"`
	Header map[string]string `json:"headers,omitempty"`
}

// ParseAppProbers decodes MESHAUTH_APP_PROBERS: {"/app-health/c/readyz": {...}}.
func ParseAppProbers(s string) (map[string]AppProbe, error) {
	if strings.TrimSpace(s) == "" {
		return nil, nil
	}
	var m map[string]AppProbe
	if err := json.Unmarshal([]byte(s), &m); err != nil {
		return nil, fmt.Errorf("proxy: app probers JSON: %w", err)
	}
	for path, p := range m {
		if !strings.HasPrefix(path, "/app-health/") || p.Port <= 0 || p.Port > 65535 {
			return nil, fmt.Errorf("proxy: app prober %q: want a /app-health/ path and a port in 1-65535", path)
		}
	}
	return m, nil
}

// HealthHandler serves the health port (15020): /healthz/ready for the
// sidecar itself, and each app probe, forwarded to the app on localhost in
// plaintext.
func (p *Proxy) HealthHandler(probers map[string]AppProbe) http.Handler {
	client := &http.Client{
		Timeout: 10 * time.Second,
		Transport: &http.Transport{
			Proxy:             nil,
			DisableKeepAlives: true,
			// An app probe with scheme HTTPS is the app's own TLS, which
			// kubelet never verified either.
			TLSClientConfig: insecureProbeTLS(),
			DialContext:     (&net.Dialer{Timeout: 5 * time.Second}).DialContext,
		},
		CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
	}
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/healthz/ready" {
			if err := p.Ready(); err != nil {
				http.Error(w, "not ready: "+err.Error(), http.StatusServiceUnavailable)
				return
			}
			io.WriteString(w, "LIVE\n")
			return
		}
		ap, ok := probers[r.URL.Path]
		if !ok {
			http.NotFound(w, r)
			return
		}
		scheme := "http"
		if strings.EqualFold(ap.Scheme, "HTTPS") {
			scheme = "https"
		}
		path := ap.Path
		if path == "" || path[0] != '/' {
			path = "/" + path
		}
		url := scheme + "://" + net.JoinHostPort("127.0.0.1", strconv.Itoa(int(ap.Port))) + path
		ctx, cancel := context.WithTimeout(r.Context(), 10*time.Second)
		defer cancel()
		req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
		if err != nil {
			http.Error(w, err.Error(), http.StatusInternalServerError)
			return
		}
		for k, v := range ap.Header {
			req.Header.Set(k, v)
		}
		if ap.Host != "" {
			req.Host = ap.Host
		}
		resp, err := client.Do(req)
		if err != nil {
			http.Error(w, "app probe failed: "+err.Error(), http.StatusServiceUnavailable)
			return
		}
		defer resp.Body.Close()
		// kubelet only looks at the status: 200-399 is healthy.
		w.WriteHeader(resp.StatusCode)
		io.Copy(w, io.LimitReader(resp.Body, 4096))
	})
}

// insecureProbeTLS is the TLS config of app probes with scheme HTTPS: the
// app's own certificate, which kubelet never verified either, with the
// mesh's TLS profile.
func insecureProbeTLS() *tls.Config {
	c := tlsprofile.New()
	c.InsecureSkipVerify = true
	return c
}
