// Package httpbin is meshauth's sample server, a small Go version of
// httpbin.org with the endpoints the seed walkthrough and our tests use:
//
//	/headers       the request headers as JSON, so X-Forwarded-Client-Cert
//	               (set by the server's sidecar) shows the caller's identity
//	/status/{code} an empty response with that status code
//	/ip            the address the request came from (the sidecar, in a mesh)
//	/get           method, args, headers, origin and URL of the request
//	/delay/{s}     /get after s seconds (at most 10), for timeout tests
//
// The JSON shapes follow httpbin.org's so existing scripts keep working.
package httpbin

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"sort"
	"strconv"
	"strings"
	"time"
)

// MaxDelay bounds /delay/{s}, as httpbin.org does, so a caller cannot tie up
// a handler for long.
const MaxDelay = 10 * time.Second

// Handler returns the httpbin routes.
func Handler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /headers", func(w http.ResponseWriter, r *http.Request) {
		writeJSON(w, http.StatusOK, map[string]any{"headers": headers(r)})
	})
	mux.HandleFunc("GET /ip", func(w http.ResponseWriter, r *http.Request) {
		writeJSON(w, http.StatusOK, map[string]any{"origin": origin(r)})
	})
	mux.HandleFunc("GET /get", func(w http.ResponseWriter, r *http.Request) {
		writeJSON(w, http.StatusOK, get(r))
	})
	// httpbin.org answers /status/{code} for any method; so do we.
	mux.HandleFunc("/status/{code}", func(w http.ResponseWriter, r *http.Request) {
		code, err := strconv.Atoi(r.PathValue("code"))
		if err != nil || code < 100 || code > 599 {
			http.Error(w, fmt.Sprintf("invalid status code %q: want a number from 100 to 599", r.PathValue("code")), http.StatusBadRequest)
			return
		}
		w.WriteHeader(code)
	})
	mux.HandleFunc("GET /delay/{s}", func(w http.ResponseWriter, r *http.Request) {
		s, err := strconv.ParseFloat(r.PathValue("s"), 64)
		if err != nil || s < 0 {
			http.Error(w, fmt.Sprintf("invalid delay %q: want a number of seconds", r.PathValue("s")), http.StatusBadRequest)
			return
		}
		d := min(time.Duration(s*float64(time.Second)), MaxDelay)
		t := time.NewTimer(d)
		defer t.Stop()
		select {
		case <-t.C:
		case <-r.Context().Done():
			return // the client left; nobody is there to answer
		}
		writeJSON(w, http.StatusOK, get(r))
	})
	mux.HandleFunc("GET /{$}", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		fmt.Fprintln(w, "meshauth httpbin: /headers /ip /get /status/{code} /delay/{s}")
	})
	return mux
}

// headers flattens the request headers the way httpbin.org does: one string
// per header, repeated values joined with a comma, and Host included (Go moves
// it out of r.Header).
func headers(r *http.Request) map[string]string {
	h := make(map[string]string, len(r.Header)+1)
	for k, v := range r.Header {
		h[k] = strings.Join(v, ",")
	}
	if r.Host != "" {
		h["Host"] = r.Host
	}
	return h
}

func origin(r *http.Request) string {
	host, _, err := net.SplitHostPort(r.RemoteAddr)
	if err != nil {
		return r.RemoteAddr
	}
	return host
}

func get(r *http.Request) map[string]any {
	args := map[string]string{}
	q := r.URL.Query()
	keys := make([]string, 0, len(q))
	for k := range q {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		args[k] = strings.Join(q[k], ",")
	}
	scheme := "http"
	if r.TLS != nil {
		scheme = "https"
	}
	return map[string]any{
		"args":    args,
		"headers": headers(r),
		"origin":  origin(r),
		"url":     scheme + "://" + r.Host + r.URL.RequestURI(),
	}
}

func writeJSON(w http.ResponseWriter, code int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(code)
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	_ = enc.Encode(v) // the client may have gone; nothing useful to do
}

// Serve runs the httpbin handler on addr until ctx is done, then shuts down
// gracefully. It logs the bound address, which matters when addr ends in :0.
func Serve(ctx context.Context, addr string, log *slog.Logger) error {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return fmt.Errorf("httpbin: listen on %s: %w", addr, err)
	}
	srv := &http.Server{Handler: Handler(), ReadHeaderTimeout: 10 * time.Second}
	log.Info("httpbin listening", "addr", ln.Addr().String())
	errc := make(chan error, 1)
	go func() { errc <- srv.Serve(ln) }()
	select {
	case err := <-errc:
		return fmt.Errorf("httpbin: serve: %w", err)
	case <-ctx.Done():
	}
	shutdown, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := srv.Shutdown(shutdown); err != nil && !errors.Is(err, http.ErrServerClosed) {
		return fmt.Errorf("httpbin: shutdown: %w", err)
	}
	return nil
}
