package main

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
)

// variant is one way for the client to reach the backend. Every variant but
// "direct" is a pair of proxies with mutual TLS between them.
type variant struct {
	name  string // short key used in flags and tables
	label string // what the table shows
	// addr is where the client connects. For an explicit HTTP proxy, requests
	// carry absolute URIs naming target; otherwise target == addr.
	addr   string
	proxy  bool
	target string
	// serverTLS is the server side's mTLS port: the harness checks it refuses
	// a client without a certificate, so no variant is measured without the
	// security it claims.
	serverTLS string
	// procs are the two proxies whose CPU and memory are measured.
	procs []*proc
	// peer marks the other proxies (the "best peer" comparisons).
	peer bool
	// aux are other processes the variant needs (meshauth's control
	// plane), stopped with it but not measured.
	aux []*proc
	// netns is the pod (network namespace) the load tools run in, and
	// dial dials from there; serverDial reaches serverTLS (pods.go). ""
	// and nil: the host's loopback.
	netns            string
	dial, serverDial dialFunc
}

// url is the request URL for path on this variant.
func (v *variant) url(path string) string { return "http://" + v.target + path }

// env is what every variant's setup needs.
type env struct {
	dir     string
	pki     *pki
	backend string // host:port of the 1 KiB backend
	workers int    // worker processes/threads per peer proxy
	// grpc: the backend is the gRPC server (grpc.go) and the pairs carry
	// HTTP/2: meshauth's port is GRPC and the client app uses an
	// --upstream port with h2c.
	grpc bool
	// pods is the network-namespace cluster of the pod variants, built
	// by the first one (pods.go); closePods removes it.
	pods *podEnv
}

// peer describes a peer proxy pair and how to start it.
type peer struct {
	name, label string
	bins        []string // binaries that must be installed
	start       func(ctx context.Context, e *env) (*variant, error)
}

var peers = []peer{
	{name: "nginx", label: "nginx stream mTLS pair", bins: []string{"nginx"}, start: startNginx},
	{name: "haproxy", label: "haproxy L7 pair (pooled upstream mTLS)", bins: []string{"haproxy"}, start: startHAProxy},
	{name: "stunnel", label: "stunnel pair", bins: []string{"stunnel4"}, start: startStunnel},
}

// missing returns the first binary of p that is not on PATH, or "".
func (p peer) missing() string {
	for _, b := range p.bins {
		if _, err := exec.LookPath(b); err != nil {
			if b == "stunnel4" {
				if _, err := exec.LookPath("stunnel"); err == nil {
					continue
				}
			}
			return b
		}
	}
	if p.name == "nginx" {
		if _, err := os.Stat(nginxStreamModule); err != nil {
			return "libnginx-mod-stream (" + nginxStreamModule + ")"
		}
	}
	return ""
}

const nginxStreamModule = "/usr/lib/nginx/modules/ngx_stream_module.so"

// twoPorts allocates the client-side and server-side listen ports.
func twoPorts() (string, string, error) {
	a, err := freePort()
	if err != nil {
		return "", "", err
	}
	b, err := freePort()
	if err != nil {
		return "", "", err
	}
	return fmt.Sprintf("127.0.0.1:%d", a), fmt.Sprintf("127.0.0.1:%d", b), nil
}

// startPair writes two config files, starts both sides and waits for them.
func startPair(ctx context.Context, e *env, name, label, bin string, clientAddr, serverAddr string,
	confs [2]string, args func(conf string) []string) (*variant, error) {
	v := &variant{name: name, label: label, addr: clientAddr, target: clientAddr, serverTLS: serverAddr, peer: true}
	for i, side := range []string{"server", "client"} {
		conf := filepath.Join(e.dir, name+"-"+side+".conf")
		if err := os.WriteFile(conf, []byte(confs[i]), 0o600); err != nil {
			return nil, err
		}
		p, err := startProc(e.dir, name+"-"+side, bin, args(conf), nil)
		if err != nil {
			stopAll(v.procs)
			return nil, err
		}
		v.procs = append(v.procs, p)
		addr := serverAddr
		if side == "client" {
			addr = clientAddr
		}
		if err := waitTCP(ctx, addr, p); err != nil {
			stopAll(v.procs)
			return nil, err
		}
	}
	return v, nil
}

func stopAll(ps []*proc) {
	for _, p := range ps {
		p.stop()
	}
}

// startNginx: client -> nginx (stream, plain in, mTLS out) -> nginx (stream,
// mTLS in, plain out) -> backend. L4: every client connection is a new
// upstream TLS connection (with session resumption, nginx's default).
func startNginx(ctx context.Context, e *env) (*variant, error) {
	ca, sa, err := twoPorts()
	if err != nil {
		return nil, err
	}
	head := func(side string) string {
		return fmt.Sprintf(`load_module %s;
daemon off;
master_process on;
worker_processes %d;
worker_rlimit_nofile 65536;
pid %s;
error_log %s warn;
events { worker_connections 16384; }
`, nginxStreamModule, e.workers, filepath.Join(e.dir, "nginx-"+side+".pid"), filepath.Join(e.dir, "nginx-"+side+".err"))
	}
	server := head("server") + fmt.Sprintf(`stream {
  server {
    listen %s ssl;
    ssl_certificate %s;
    ssl_certificate_key %s;
    ssl_protocols TLSv1.3;
    ssl_client_certificate %s;
    ssl_verify_client on;
    ssl_verify_depth 2;
    proxy_pass %s;
  }
}
`, sa, e.pki.Server.CertFile, e.pki.Server.KeyFile, e.pki.RootFile, e.backend)
	client := head("client") + fmt.Sprintf(`stream {
  server {
    listen %s;
    proxy_pass %s;
    proxy_ssl on;
    proxy_ssl_protocols TLSv1.3;
    proxy_ssl_certificate %s;
    proxy_ssl_certificate_key %s;
    proxy_ssl_trusted_certificate %s;
    proxy_ssl_verify on;
    proxy_ssl_verify_depth 2;
    proxy_ssl_name %s;
    proxy_ssl_session_reuse on;
  }
}
`, ca, sa, e.pki.Client.CertFile, e.pki.Client.KeyFile, e.pki.RootFile, serverName)
	return startPair(ctx, e, "nginx", "nginx stream mTLS pair", "nginx", ca, sa, [2]string{server, client},
		func(conf string) []string { return []string{"-e", "stderr", "-p", e.dir, "-c", conf} })
}

// startHAProxy: client -> haproxy (HTTP, plain in, pooled mTLS out) ->
// haproxy (HTTP, mTLS in, pooled plain out) -> backend. "http-reuse always"
// lets a new client connection use an idle upstream TLS connection.
func startHAProxy(ctx context.Context, e *env) (*variant, error) {
	ca, sa, err := twoPorts()
	if err != nil {
		return nil, err
	}
	head := haproxyHead(e.workers)
	server := head + fmt.Sprintf(`frontend fe
  bind %s ssl crt %s ca-file %s verify required ssl-min-ver TLSv1.3
  default_backend app
backend app
  server app %s
`, sa, e.pki.Server.Combined, e.pki.RootFile, e.backend)
	client := head + fmt.Sprintf(`frontend fe
  bind %s
  default_backend mesh
backend mesh
  server peer %s ssl crt %s ca-file %s verify required verifyhost %s ssl-min-ver TLSv1.3
`, ca, sa, e.pki.Client.Combined, e.pki.RootFile, serverName)
	return startPair(ctx, e, "haproxy", "haproxy L7 pair (pooled upstream mTLS)", "haproxy", ca, sa, [2]string{server, client},
		func(conf string) []string { return []string{"-db", "-f", conf} })
}

// startStunnel: client -> stunnel (client mode) -> stunnel (server mode,
// client certificate required) -> backend. L4, one thread per connection.
func startStunnel(ctx context.Context, e *env) (*variant, error) {
	ca, sa, err := twoPorts()
	if err != nil {
		return nil, err
	}
	head := func(side string) string {
		return fmt.Sprintf(`foreground = yes
pid =
syslog = no
debug = warning
output = %s
`, filepath.Join(e.dir, "stunnel-"+side+".out"))
	}
	server := head("server") + fmt.Sprintf(`[mesh-in]
accept = %s
connect = %s
cert = %s
key = %s
CAfile = %s
verifyChain = yes
requireCert = yes
sslVersionMin = TLSv1.3
`, sa, e.backend, e.pki.Server.CertFile, e.pki.Server.KeyFile, e.pki.RootFile)
	client := head("client") + fmt.Sprintf(`[mesh-out]
client = yes
accept = %s
connect = %s
cert = %s
key = %s
CAfile = %s
verifyChain = yes
checkHost = %s
sslVersionMin = TLSv1.3
`, ca, sa, e.pki.Client.CertFile, e.pki.Client.KeyFile, e.pki.RootFile, serverName)
	bin := "stunnel4"
	if _, err := exec.LookPath(bin); err != nil {
		bin = "stunnel"
	}
	return startPair(ctx, e, "stunnel", "stunnel pair", bin, ca, sa, [2]string{server, client},
		func(conf string) []string { return []string{conf} })
}

// haproxyHead is the global and defaults sections of both sides of a
// haproxy pair: HTTP mode, upstream connections reused.
func haproxyHead(workers int) string {
	return fmt.Sprintf(`global
  nbthread %d
  maxconn 8000
  ssl-server-verify required
defaults
  mode http
  timeout connect 5s
  timeout client 60s
  timeout server 60s
  timeout http-keep-alive 60s
  http-reuse always
`, workers)
}
