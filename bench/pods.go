package main

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"time"

	"golang.org/x/sys/unix"
	"google.golang.org/grpc"

	"github.com/meshauth/meshauth/internal/netns"
	"github.com/meshauth/meshauth/internal/policy"
)

// The pod variants put the pair in network-namespace pods on one bridge
// (internal/netns, as test/e2e builds them), so the transparent mode can be
// measured against the explicit mode and direct in the same run:
//
//	pod-direct       client pod -> veth/bridge -> server pod's app
//	pod-explicit     client pod: load tool -> its sidecar as HTTP proxy
//	                 (127.0.0.1:15001) -> mTLS over the bridge -> server
//	                 pod's sidecar (--inbound :15006) -> app; no iptables
//	pod-transparent  client pod: load tool -> plain HTTP to the service VIP,
//	                 REDIRECTed by `meshd init-net`'s rules to the sidecar
//	                 (SO_ORIGINAL_DST) -> mTLS to the server pod's IP, whose
//	                 inbound capture REDIRECTs to its sidecar (:15006) -> app
//
// The load tools run inside the client pod (`ip netns exec`); the sidecars
// run as uid 1337, which the capture rules exclude. Pods need root.
const (
	podAppPort     = 8080
	podInboundPort = 15006
	podOutbound    = "127.0.0.1:15001"
	podAdmin       = "127.0.0.1:15000"
	podControlPort = 15012
	podProxyUID    = 1337
)

// podEnv is the cluster the pod variants share: the node namespace with
// the control plane, and per mode a client and a server pod.
type podEnv struct {
	c       *netns.Cluster
	dir     string // readable by uid 1337: certs, snapshots, root cert
	control string // control plane address on the bridge
	cdir    string // its state directory
	roots   string // copy of its root-cert.pem the sidecars can read
	vip     *netns.Service
	pods    map[string]*netns.Pod
	procs   []*proc // apps and the control plane (the sidecars are the variants')
	err     error   // why building the cluster failed, for every pod variant
}

func isPodVariant(name string) bool { return strings.HasPrefix(name, "pod-") }

// closePods stops the shared processes and removes every namespace, veth
// and iptables rule of the pod cluster (they all live in the namespaces).
// It returns the namespaces it removed.
func (e *env) closePods() []string {
	if e.pods == nil {
		return nil
	}
	stopAll(e.pods.procs)
	names := []string{e.pods.c.NodeNetNS()}
	for _, p := range e.pods.c.Pods() {
		names = append(names, p.NetNS)
	}
	if err := e.pods.c.Close(); err != nil {
		fmt.Fprintln(os.Stderr, "bench: removing the pod namespaces:", err)
	}
	e.pods = nil
	return names
}

// startPodVariant starts pod-direct, pod-explicit or pod-transparent.
func startPodVariant(ctx context.Context, e *env, cfg *config, name string) (*variant, error) {
	if err := netns.Available(); err != nil {
		return nil, fmt.Errorf("%w: %s: %v", errSkipped, name, err)
	}
	mode := strings.TrimPrefix(name, "pod-")
	if mode != "direct" && mode != "explicit" && mode != "transparent" {
		return nil, fmt.Errorf("unknown variant %q (want pod-direct, pod-explicit or pod-transparent)", name)
	}
	meshd, err := cfg.meshdBinary(e.dir)
	if err != nil {
		return nil, fmt.Errorf("%w: %s: %v", errSkipped, name, err)
	}
	if err := e.podCluster(ctx, cfg); err != nil {
		return nil, err
	}
	pe := e.pods
	// direct and explicit share the pods without capture.
	podMode := "explicit"
	if mode == "transparent" {
		podMode = "transparent"
	}
	client, server := pe.pods[podMode+"-client"], pe.pods[podMode+"-server"]
	appAddr := net.JoinHostPort(server.IP, fmt.Sprint(podAppPort))
	v := &variant{name: name, netns: client.NetNS, dial: netnsDialer(client.NetNS), serverDial: netnsDialer(pe.c.NodeNetNS())}
	switch mode {
	case "direct":
		v.label, v.addr, v.target = "pod direct (no sidecar, over the bridge)", appAddr, appAddr
		return v, nil
	case "explicit":
		v.label, v.proxy = "pod explicit: client sidecar as HTTP proxy, no iptables", true
		v.addr, v.target = podOutbound, net.JoinHostPort(meshService+"."+meshNamespace, fmt.Sprint(meshServicePort))
		v.serverTLS = net.JoinHostPort(server.IP, fmt.Sprint(podInboundPort))
	case "transparent":
		v.label = "pod transparent: iptables capture both ways"
		v.addr = net.JoinHostPort(pe.vip.VIP, fmt.Sprint(meshServicePort))
		v.target = v.addr
		// Captured inbound on the app's port: a client without a
		// certificate must be refused there.
		v.serverTLS = appAddr
	}
	ok := false
	defer func() {
		if !ok {
			stopAll(v.procs)
		}
	}()
	for _, side := range []*netns.Pod{server, client} {
		p, err := pe.startSidecar(ctx, cfg, meshd, mode, side, server)
		if err != nil {
			return nil, err
		}
		v.procs = append(v.procs, p)
	}
	ok = true
	return v, nil
}

// podCluster builds the cluster once: node namespace with `meshd control`,
// four pods, the apps, and the capture rules in the transparent pair.
func (e *env) podCluster(ctx context.Context, cfg *config) error {
	if e.pods != nil {
		return e.pods.err
	}
	b := make([]byte, 3)
	_, _ = rand.Read(b)
	c, err := netns.New(netns.Config{Prefix: "bench-" + hex.EncodeToString(b) + "-"})
	if err != nil {
		return err
	}
	pe := &podEnv{c: c, dir: filepath.Join(e.dir, "pods"), pods: map[string]*netns.Pod{}}
	e.pods = pe // closePods removes whatever was built if a step fails
	pe.err = pe.build(ctx, e.dir, cfg)
	return pe.err
}

// build adds the pods, apps, capture rules and control plane.
func (pe *podEnv) build(ctx context.Context, dir string, cfg *config) error {
	c := pe.c
	var err error
	// The sidecars run as uid 1337: they must reach the binaries in dir
	// and their own files (dir holds nothing but this run's throwaway
	// keys and configs; the control plane's state stays 0700).
	if err := os.Chmod(dir, 0o755); err != nil {
		return err
	}
	if err := os.MkdirAll(pe.dir, 0o755); err != nil {
		return err
	}
	for _, name := range []string{"explicit-client", "explicit-server", "transparent-client", "transparent-server"} {
		p, err := c.AddPod(name, meshNamespace)
		if err != nil {
			return err
		}
		pe.pods[name] = p
	}
	pe.vip, err = c.AddService(meshService, meshNamespace,
		[]netns.Port{{Name: "http", Port: meshServicePort, TargetPort: podAppPort}}, pe.pods["transparent-server"])
	if err != nil {
		return err
	}
	exe, err := os.Executable()
	if err != nil {
		return err
	}
	for _, side := range []string{"explicit-server", "transparent-server"} {
		p, err := startProc(pe.dir, "app-"+side, "ip", []string{"netns", "exec", pe.pods[side].NetNS, exe},
			[]string{childEnv + "=backend", fmt.Sprintf("MESHAUTH_BENCH_LISTEN=0.0.0.0:%d", podAppPort)})
		if err != nil {
			return err
		}
		pe.procs = append(pe.procs, p)
		if err := waitDial(ctx, netnsDialer(pe.pods[side].NetNS), fmt.Sprintf("127.0.0.1:%d", podAppPort), p); err != nil {
			return err
		}
	}
	// Capture as the injector's init container installs it.
	initNet, err := cfg.controlBinary(dir)
	if err != nil {
		return err
	}
	for side, args := range map[string][]string{
		"transparent-client": {"init-net", "--proxy-uid", fmt.Sprint(podProxyUID)},
		"transparent-server": {"init-net", "--proxy-uid", fmt.Sprint(podProxyUID), "--inbound-ports", fmt.Sprint(podAppPort)},
	} {
		p := pe.pods[side]
		if out, err := p.Command(ctx, initNet, args...).CombinedOutput(); err != nil {
			return fmt.Errorf("meshd init-net in pod %s: %v\n%s", p.Name, err, out)
		}
		if err := p.ServicesLast(); err != nil {
			return err
		}
	}
	return pe.startControl(ctx, dir, initNet)
}

// startControl runs `meshd control` in the node namespace, reachable from
// every pod at the bridge address.
func (pe *podEnv) startControl(ctx context.Context, dir, meshd string) error {
	pe.cdir = filepath.Join(dir, "pods-control")
	pe.control = net.JoinHostPort(pe.c.NodeIP(), fmt.Sprint(podControlPort))
	if err := os.MkdirAll(pe.cdir, 0o700); err != nil {
		return err
	}
	p, err := startProc(pe.cdir, "meshd-control", "ip", []string{"netns", "exec", pe.c.NodeNetNS(), meshd,
		"control", "--dir", pe.cdir, "--listen", pe.control, "--metrics-listen", ""}, nil)
	if err != nil {
		return err
	}
	pe.procs = append(pe.procs, p)
	if err := waitDial(ctx, netnsDialer(pe.c.NodeNetNS()), pe.control, p); err != nil {
		return err
	}
	b, err := os.ReadFile(filepath.Join(pe.cdir, "root-cert.pem"))
	if err != nil {
		return err
	}
	pe.roots = filepath.Join(pe.dir, "root-cert.pem")
	return os.WriteFile(pe.roots, b, 0o644)
}

// startSidecar starts the sidecar of pod p as uid 1337, with a snapshot for
// mode, and waits until it has its certificate.
func (pe *podEnv) startSidecar(ctx context.Context, cfg *config, meshd, mode string, p, server *netns.Pod) (*proc, error) {
	sa := "client"
	if p == server {
		sa = "server"
	}
	tag := mode + "-" + sa
	token, err := joinTokenAt(ctx, pe.cdir, pe.control, netnsDialer(pe.c.NodeNetNS()), meshNamespace, sa)
	if err != nil {
		return nil, err
	}
	snap := podSnapshot(mode, sa, pe.vip.VIP, server.IP)
	snapPath := filepath.Join(pe.dir, tag+".json")
	bs, _ := json.MarshalIndent(snap, "", "  ")
	if err := os.WriteFile(snapPath, bs, 0o644); err != nil {
		return nil, err
	}
	certs := filepath.Join(pe.dir, "certs-"+tag)
	os.RemoveAll(certs)
	if err := os.MkdirAll(certs, 0o755); err != nil {
		return nil, err
	}
	if err := os.Chown(certs, podProxyUID, podProxyUID); err != nil {
		return nil, err
	}
	args := []string{"netns", "exec", p.NetNS, "setpriv", fmt.Sprintf("--reuid=%d", podProxyUID), fmt.Sprintf("--regid=%d", podProxyUID), "--clear-groups", "--",
		meshd, "sidecar",
		"--control", pe.control, "--ca-roots", pe.roots, "--token", token,
		"--namespace", meshNamespace, "--service-account", sa, "--workload", tag,
		"--certs-dir", certs, "--snapshot", snapPath,
		"--admin", podAdmin, "--workload-api", "off",
		"--access-log=false", "--log-level", "warn"}
	switch {
	case mode == "transparent":
		args = append(args, "--transparent")
	case sa == "server":
		args = append(args, "--inbound", fmt.Sprintf("0.0.0.0:%d=127.0.0.1:%d", podInboundPort, podAppPort), "--outbound-listen", "")
	default:
		args = append(args, "--outbound-listen", podOutbound)
	}
	if cfg.PprofDir != "" {
		d, _ := filepath.Abs(cfg.PprofDir)
		os.MkdirAll(d, 0o777)
		os.Chmod(d, 0o777) // written by uid 1337
		args = append(args, "--cpuprofile", filepath.Join(d, "pod-"+tag+".pprof"))
	}
	sp, err := startProc(pe.dir, "sidecar-"+tag, "ip", args, append(append([]string{}, cfg.MeshdEnv...), "HOME="+pe.dir))
	if err != nil {
		return nil, err
	}
	dial := netnsDialer(p.NetNS)
	if err := waitReadyVia(ctx, dial, podAdmin, sp); err != nil {
		sp.stop()
		return nil, err
	}
	return sp, nil
}

// podSnapshot is the policy of one sidecar: the server's port STRICT; the
// client's one service, with the VIP that capture recovers
// (SO_ORIGINAL_DST) and the server pod as its endpoint (its captured app
// port, or the explicit inbound port).
func podSnapshot(mode, sa, vip, serverIP string) policy.Snapshot {
	if sa == "server" {
		return policy.Snapshot{
			TrustDomain: "cluster.local", InboundDefault: policy.ServerStrict,
			Inbound: []policy.InboundPort{{Port: podAppPort, Mode: policy.ServerStrict, Protocol: "HTTP", Service: meshService + "." + meshNamespace}},
		}
	}
	epPort := uint32(podAppPort)
	if mode != "transparent" {
		epPort = podInboundPort
	}
	return policy.Snapshot{
		TrustDomain: "cluster.local",
		Outbound: []policy.OutboundService{{
			Name: meshService, Namespace: meshNamespace, Hosts: []string{meshService + "." + meshNamespace}, Address: vip,
			Ports: []policy.OutboundPort{{Name: "http", Port: meshServicePort, TargetPort: podAppPort, Protocol: "HTTP", TLSMode: policy.ClientIstioMutual}},
			Endpoints: []policy.Endpoint{{Workload: "server", ServiceAccount: "server", Address: serverIP,
				Ports: map[uint32]uint32{podAppPort: epPort}, Sidecar: true}},
			ServerIdentities: []string{"spiffe://cluster.local/ns/" + meshNamespace + "/sa/server"},
		}},
	}
}

// dialFunc dials like net.Dialer.DialContext.
type dialFunc func(ctx context.Context, network, addr string) (net.Conn, error)

// netnsDialer dials from inside the network namespace /run/netns/<name>.
// One goroutine per namespace, locked to its OS thread, joins it and
// creates every socket there (a socket stays in the namespace it was
// created in). It never returns: the runtime would end its thread, and
// the kernel would then SIGKILL every child the harness ever forked from
// that thread (Pdeathsig follows the forking thread, not the process).
func netnsDialer(name string) dialFunc {
	nsDialers.Lock()
	ch := nsDialers.m[name]
	if ch == nil {
		ch = make(chan nsDial)
		nsDialers.m[name] = ch
		go serveNetnsDials(name, ch)
	}
	nsDialers.Unlock()
	return func(ctx context.Context, network, addr string) (net.Conn, error) {
		reply := make(chan nsDialed, 1)
		select {
		case ch <- nsDial{ctx, network, addr, reply}:
		case <-ctx.Done():
			return nil, ctx.Err()
		}
		r := <-reply
		return r.c, r.err
	}
}

type nsDial struct {
	ctx           context.Context
	network, addr string
	reply         chan nsDialed
}

type nsDialed struct {
	c   net.Conn
	err error
}

var nsDialers = struct {
	sync.Mutex
	m map[string]chan nsDial
}{m: map[string]chan nsDial{}}

func serveNetnsDials(name string, ch chan nsDial) {
	runtime.LockOSThread()
	f, err := os.Open(filepath.Join("/run/netns", name))
	if err == nil {
		err = unix.Setns(int(f.Fd()), unix.CLONE_NEWNET)
		f.Close()
	}
	if err != nil {
		err = fmt.Errorf("join network namespace %s: %w", name, err)
	}
	for d := range ch {
		if err != nil {
			d.reply <- nsDialed{nil, err}
			continue
		}
		c, derr := (&net.Dialer{}).DialContext(d.ctx, d.network, d.addr)
		d.reply <- nsDialed{c, derr}
	}
}

// waitDial waits until addr accepts a connection made through dial.
func waitDial(ctx context.Context, dial dialFunc, addr string, p *proc) error {
	deadline := time.Now().Add(20 * time.Second)
	for {
		dctx, cancel := context.WithTimeout(ctx, 300*time.Millisecond)
		c, err := dial(dctx, "tcp", addr)
		cancel()
		if err == nil {
			c.Close()
			return nil
		}
		if p != nil && p.exited() {
			return fmt.Errorf("%s exited before listening on %s: %v\n%s", p.name, addr, p.err, p.tail())
		}
		if time.Now().After(deadline) || ctx.Err() != nil {
			return fmt.Errorf("nothing listening on %s: %v", addr, err)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// waitReadyVia is waitReady through dial (nil: from here), e.g. inside a pod.
func waitReadyVia(ctx context.Context, dial dialFunc, admin string, p *proc) error {
	if dial == nil {
		dial = (&net.Dialer{}).DialContext
	}
	c := &http.Client{Transport: &http.Transport{DialContext: dial}, Timeout: 2 * time.Second}
	defer c.CloseIdleConnections()
	deadline := time.Now().Add(30 * time.Second)
	for {
		resp, err := c.Get("http://" + admin + "/healthz/ready")
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return nil
			}
		}
		if p.exited() {
			return fmt.Errorf("%s exited: %v\n%s", p.name, p.err, p.tail())
		}
		if time.Now().After(deadline) || ctx.Err() != nil {
			return fmt.Errorf("%s not ready at http://%s/healthz/ready: %v\n%s", p.name, admin, err, p.tail())
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// command runs a load tool where v's client is: in its pod, if it has one.
func (v *variant) command(ctx context.Context, name string, args ...string) *exec.Cmd {
	if v.netns == "" {
		return exec.CommandContext(ctx, name, args...)
	}
	return exec.CommandContext(ctx, "ip", append([]string{"netns", "exec", v.netns, name}, args...)...)
}

// grpcDialer is the gRPC dial option that dials through d.
func grpcDialer(d dialFunc) grpc.DialOption {
	return grpc.WithContextDialer(func(ctx context.Context, addr string) (net.Conn, error) { return d(ctx, "tcp", addr) })
}

// transparentOverhead writes what the transparent mode costs over the
// explicit mode, both measured in the same pods' run (pods.go).
func (rep *report) transparentOverhead(b *strings.Builder) {
	ex, tr := rep.find("pod-explicit"), rep.find("pod-transparent")
	if ex == nil || tr == nil {
		return
	}
	w := func(format string, args ...any) { fmt.Fprintf(b, format, args...) }
	w("Pods: each variant's client runs in a network-namespace pod (`ip netns exec`) and its server in another, on one bridge through veth pairs (internal/netns, as test/e2e builds them); ratios and added p50 of the pod rows are to pod direct. ")
	w("pod explicit: the client sidecar is the app's HTTP proxy on 127.0.0.1:15001 and the server sidecar listens on the pod's port %d (`--inbound`), no iptables; ", podInboundPort)
	w("pod transparent: `meshd init-net` in both pods, the app sends plain HTTP to the service VIP, REDIRECTed to the client sidecar (`--transparent`, SO_ORIGINAL_DST), which opens mTLS to the server pod's app port, REDIRECTed there to the server sidecar's capture port; the sidecars run as uid 1337, which the rules exclude; certificates from `meshd control` in the node namespace.\n\n")
	w("Transparent over explicit (same run, medians): keep-alive %s, one request per connection %s, p50 %s ms, p99 %s ms, CPU of both sidecars per 1k req/s %s, upload %s.\n\n",
		ratio(tr.med(mKA), ex.med(mKA)), ratio(tr.med(mClose), ex.med(mClose)),
		signed(tr.med(mP50)-ex.med(mP50)), signed(tr.med(mP99)-ex.med(mP99)),
		ratio(tr.med(mCPU1k), ex.med(mCPU1k)), ratio(tr.med(mUpload), ex.med(mUpload)))
}
