package main

import (
	"context"
	"crypto/sha256"
	"encoding/json"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	pb "github.com/meshauth/meshauth/api/meshauth/v1"
	"github.com/meshauth/meshauth/internal/client"
	"github.com/meshauth/meshauth/internal/policy"
)

// meshService is the name the client app uses for the backend through its
// sidecar. It must not be a loopback name: Go's HTTP_PROXY handling (which
// fortio's client uses) never proxies requests to loopback hosts.
const (
	meshService     = "backend"
	meshNamespace   = "bench"
	meshServicePort = 8080
)

// startMeshauth starts meshauth's pair: the client app talks to its
// sidecar as an explicit HTTP proxy, the client sidecar opens (and pools)
// mTLS connections to the server sidecar, which checks the client's
// identity and forwards to the backend. Certificates come from our CA
// (`meshd control`): each sidecar's agent gets its own with a join token.
//
// spec is "meshauth", or "meshauth@/path/to/meshd" and/or "+KEY=VALUE"
// suffixes for an A/B pair in the same run (another build, another
// environment), e.g. "meshauth@/tmp/meshd-before" or "meshauth+GOMAXPROCS=2".
func startMeshauth(ctx context.Context, e *env, cfg *config, spec string) (*variant, error) {
	rest := strings.TrimPrefix(spec, "meshauth")
	parts := strings.Split(rest, "+")
	bin, extraEnv := strings.TrimPrefix(parts[0], "@"), parts[1:]
	meshd := bin
	if meshd == "" {
		var err error
		if meshd, err = cfg.meshdBinary(e.dir); err != nil {
			return nil, fmt.Errorf("%w: meshauth: %v", errSkipped, err)
		}
	}
	env := append(append([]string{}, cfg.MeshdEnv...), extraEnv...)
	label := "meshauth sidecar pair"
	if spec != "meshauth" {
		label += " (" + strings.TrimPrefix(rest, "+") + ")"
	}
	// Files and directories of this pair, apart from any other pair's.
	tag := "meshauth"
	if spec != "meshauth" {
		tag = fmt.Sprintf("meshauth-%x", sha256.Sum256([]byte(spec)))[:17]
	}
	if out, err := exec.Command(meshd, "sidecar", "--help").CombinedOutput(); err != nil {
		return nil, fmt.Errorf("%w: meshauth: %s has no working sidecar command yet (%v: %s)", errSkipped, meshd, err, firstLine(out))
	}
	v := &variant{name: spec, label: label, proxy: true,
		target: net.JoinHostPort(meshService+"."+meshNamespace, strconv.Itoa(meshServicePort))}
	ok := false
	defer func() {
		if !ok {
			stopAll(v.procs)
			stopAll(v.aux)
		}
	}()

	// The control plane keeps running (the agents watch its trust bundle)
	// but is not counted: it is idle while requests flow.
	cdir := filepath.Join(e.dir, tag+"-control")
	controlBin, err := cfg.controlBinary(e.dir)
	if err != nil {
		return nil, fmt.Errorf("%w: meshauth: %v", errSkipped, err)
	}
	control, err := startControlPlane(ctx, controlBin, cdir)
	if err != nil {
		return nil, err
	}
	v.aux = append(v.aux, control)
	tokens := map[string]string{}
	for _, sa := range []string{"client", "server"} {
		if tokens[sa], err = joinToken(ctx, cdir, meshNamespace, sa); err != nil {
			return nil, err
		}
	}

	_, backendPortS, _ := net.SplitHostPort(e.backend)
	backendPort, _ := strconv.Atoi(backendPortS)
	inPort, err := freePort()
	if err != nil {
		return nil, err
	}
	outPort, err := freePort()
	if err != nil {
		return nil, err
	}
	v.serverTLS = fmt.Sprintf("127.0.0.1:%d", inPort)
	v.addr = fmt.Sprintf("127.0.0.1:%d", outPort)
	serverID := "spiffe://cluster.local/ns/" + meshNamespace + "/sa/server"

	proto, clientArgs := "HTTP", []string{"--outbound-listen", v.addr}
	if e.grpc {
		// gRPC (h2c) from the app to an --upstream port of the GRPC
		// service; HTTP/2 between the sidecars.
		proto, clientArgs = "GRPC", []string{"--outbound-listen", "", "--upstream", v.addr + "=" + v.target}
		v.proxy, v.target = false, v.addr
	}
	serverSnap := policy.Snapshot{
		TrustDomain: "cluster.local", InboundDefault: policy.ServerStrict,
		Inbound: []policy.InboundPort{{Port: uint32(backendPort), Mode: policy.ServerStrict, Protocol: proto, Service: meshService + "." + meshNamespace}},
	}
	clientSnap := policy.Snapshot{
		TrustDomain: "cluster.local",
		Outbound: []policy.OutboundService{{
			Name: meshService, Namespace: meshNamespace, Hosts: []string{meshService + "." + meshNamespace},
			Ports: []policy.OutboundPort{{Name: strings.ToLower(proto), Port: meshServicePort, TargetPort: uint32(backendPort), Protocol: proto, TLSMode: policy.ClientIstioMutual}},
			Endpoints: []policy.Endpoint{{Workload: "server-1", ServiceAccount: "server", Address: "127.0.0.1",
				Ports: map[uint32]uint32{uint32(backendPort): uint32(inPort)}, Sidecar: true}},
			ServerIdentities: []string{serverID},
		}},
	}
	for _, side := range []struct {
		sa   string
		snap policy.Snapshot
		args []string
		addr string
	}{
		{"server", serverSnap, []string{"--inbound", v.serverTLS + "=" + e.backend, "--outbound-listen", ""}, v.serverTLS},
		{"client", clientSnap, clientArgs, v.addr},
	} {
		snapPath := filepath.Join(e.dir, tag+"-"+side.sa+".json")
		b, _ := json.MarshalIndent(side.snap, "", "  ")
		if err := os.WriteFile(snapPath, b, 0o644); err != nil {
			return nil, err
		}
		certs := filepath.Join(e.dir, tag+"-certs-"+side.sa)
		os.RemoveAll(certs) // certificates of an earlier run's CA would not verify
		adminPort, err := freePort()
		if err != nil {
			return nil, err
		}
		admin := fmt.Sprintf("127.0.0.1:%d", adminPort)
		args := append([]string{"sidecar",
			"--control-dir", cdir, "--token", tokens[side.sa],
			"--namespace", meshNamespace, "--service-account", side.sa, "--workload", side.sa + "-1",
			"--certs-dir", certs, "--snapshot", snapPath,
			"--admin", admin, "--workload-api", "off",
			// The peers log nothing per connection; neither does this.
			"--access-log=false", "--log-level", "warn",
		}, side.args...)
		if cfg.PprofDir != "" {
			dir, _ := filepath.Abs(cfg.PprofDir)
			os.MkdirAll(dir, 0o755)
			args = append(args, "--cpuprofile", filepath.Join(dir, tag+"-"+side.sa+".pprof"))
		}
		p, err := startProc(e.dir, tag+"-"+side.sa, meshd, args, env)
		if err != nil {
			return nil, err
		}
		v.procs = append(v.procs, p)
		if err := waitReady(ctx, admin, p); err != nil {
			return nil, err
		}
		if err := waitTCP(ctx, side.addr, p); err != nil {
			return nil, err
		}
	}
	ok = true
	return v, nil
}

// startControlPlane runs `meshd control` on a free port with its state in dir.
func startControlPlane(ctx context.Context, meshd, dir string) (*proc, error) {
	// A fresh state dir: a stale control.addr from an earlier run in the
	// same -work dir would point at a dead port.
	os.RemoveAll(dir)
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, err
	}
	p, err := startProc(dir, "meshd-control", meshd, []string{"control", "--dir", dir, "--listen", "127.0.0.1:0", "--metrics-listen", ""}, nil)
	if err != nil {
		return nil, err
	}
	addrFile := filepath.Join(dir, "control.addr")
	deadline := time.Now().Add(20 * time.Second)
	for {
		if b, err := os.ReadFile(addrFile); err == nil && len(trimNL(b)) > 0 {
			if err := waitTCP(ctx, string(trimNL(b)), p); err != nil {
				p.stop()
				return nil, err
			}
			return p, nil
		}
		if p.exited() || time.Now().After(deadline) || ctx.Err() != nil {
			p.stop()
			return nil, fmt.Errorf("meshd control did not write %s: %v\n%s", addrFile, p.err, p.tail())
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// joinToken asks the control plane in dir for a join token for ns/sa.
func joinToken(ctx context.Context, dir, ns, sa string) (string, error) {
	return joinTokenAt(ctx, dir, "", nil, ns, sa)
}

// joinTokenAt is joinToken for a control plane at addr ("": DIR/control.addr)
// reached through dial (nil: from here).
func joinTokenAt(ctx context.Context, dir, addr string, dial dialFunc, ns, sa string) (string, error) {
	o := client.Options{Dir: dir, Addr: addr, AdminToken: true}
	if dial != nil {
		o.DialOptions = append(o.DialOptions, grpcDialer(dial))
	}
	conn, err := client.Dial(ctx, o)
	if err != nil {
		return "", err
	}
	defer conn.Close()
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	resp, err := pb.NewAdminClient(conn).CreateJoinToken(ctx, &pb.CreateJoinTokenRequest{
		Namespace: ns, ServiceAccount: sa, TtlSeconds: 3600, Uses: 1,
	})
	if err != nil {
		return "", fmt.Errorf("create join token for %s/%s: %w", ns, sa, err)
	}
	return resp.Token, nil
}

// waitReady polls the sidecar's /healthz/ready until it has its
// certificate and config.
func waitReady(ctx context.Context, admin string, p *proc) error {
	return waitReadyVia(ctx, nil, admin, p)
}

func firstLine(b []byte) string {
	s := strings.TrimSpace(string(b))
	if i := strings.IndexByte(s, '\n'); i >= 0 {
		s = s[:i]
	}
	return s
}
