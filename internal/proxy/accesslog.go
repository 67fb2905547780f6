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

// logH1 writes the access-log line of one HTTP/1.x request.
func (p *Proxy) logH1(dir string, d *dconn, dest string, status int, decision, reason string, start time.Time) {
	if !p.access.Enabled(context.Background(), slog.LevelInfo) {
		return
	}
	host := ""
	if d.req.HasHost {
		host = d.req.Str(d.req.Host)
	}
	p.logRequest(d.info, reqLog{dir: dir, dest: dest, method: d.req.Str(d.req.Method), host: host, path: d.req.Path(),
		status: status, decision: decision, reason: reason, start: start, dropped: d.dropped})
}

// reqLog is what the access-log line of one request says.
type reqLog struct {
	dir, dest, method, host, path string
	status                        int
	decision, reason              string
	start                         time.Time
	dropped                       []string // request fields the sidecar dropped
	// HTTP/2 only: the protocol ("HTTP/2") and a gRPC call's grpc-status.
	proto, grpcStatus string
}

// logRequest writes the access-log line ("http") of one request.
func (p *Proxy) logRequest(info *connInfo, l reqLog) {
	attrs := []slog.Attr{
		slog.String("direction", l.dir),
		slog.String("source", sourceName(info)),
		slog.String("destination", l.dest),
		slog.String("tls_mode", info.mode),
		slog.String("method", l.method),
		slog.String("host", l.host),
		slog.String("path", l.path),
		slog.Int("status", l.status),
		slog.String("decision", l.decision),
		slog.String("reason", l.reason),
		slog.Duration("duration", time.Since(l.start)),
	}
	if l.proto != "" {
		attrs = append(attrs, slog.String("protocol", l.proto))
	}
	if l.grpcStatus != "" {
		attrs = append(attrs, slog.String("grpc_status", l.grpcStatus))
	}
	if len(l.dropped) > 0 {
		attrs = append(attrs, slog.Any("dropped_headers", l.dropped))
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
