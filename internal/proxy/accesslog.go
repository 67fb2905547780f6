package proxy

import (
	"context"
	"log/slog"
	"time"
)

// The access log (Config.AccessLog): one line per relayed TCP connection
// (logConn, "tcp") and per HTTP request (logH1, "http"), inbound and
// outbound, with the decision and its reason. Refusals before a
// connection is served are logged where they happen (refuseInbound,
// serveH1's bad requests).

// logH1 writes the access-log line of one request.
func (p *Proxy) logH1(dir string, d *dconn, dest string, status int, decision, reason string, start time.Time) {
	if !p.access.Enabled(context.Background(), slog.LevelInfo) {
		return
	}
	info := d.info
	host := ""
	if d.req.HasHost {
		host = d.req.Str(d.req.Host)
	}
	attrs := []slog.Attr{
		slog.String("direction", dir),
		slog.String("source", sourceName(info)),
		slog.String("destination", dest),
		slog.String("tls_mode", info.mode),
		slog.String("method", d.req.Str(d.req.Method)),
		slog.String("host", host),
		slog.String("path", d.req.Path()),
		slog.Int("status", status),
		slog.String("decision", decision),
		slog.String("reason", reason),
		slog.Duration("duration", time.Since(start)),
	}
	if len(d.dropped) > 0 {
		attrs = append(attrs, slog.Any("dropped_headers", d.dropped))
	}
	p.access.LogAttrs(context.Background(), slog.LevelInfo, "http", attrs...)
}

func (p *Proxy) logConn(dir string, info *connInfo, dest, decision, reason string, sent, recv int64) {
	if !p.access.Enabled(context.Background(), slog.LevelInfo) {
		return
	}
	p.access.LogAttrs(context.Background(), slog.LevelInfo, "tcp",
		slog.String("direction", dir),
		slog.String("source", sourceName(info)),
		slog.String("destination", dest),
		slog.String("tls_mode", info.mode),
		slog.String("decision", decision),
		slog.String("reason", reason),
		slog.Int64("bytes_sent", sent),
		slog.Int64("bytes_received", recv),
	)
}

func sourceName(info *connInfo) string {
	if info.peer != "" {
		return info.peer
	}
	return info.src
}
