// Package netns builds a small "cluster" out of Linux network namespaces for
// end-to-end tests: every pod is a network namespace with its own 10.x
// address on a bridge, services have virtual IPs that each pod DNATs to the
// endpoints (as kube-proxy does: service port 8000 -> container port 80 in the
// seed), and /etc/netns/<pod>/hosts resolves service names, so `ip netns exec
// <pod> curl httpbin:8000/headers` behaves as `kubectl exec` does in the seed.
//
// Nothing is added to the host's network namespace: the bridge lives in a
// namespace of its own (the "node"), and each pod is joined to it by a veth
// pair created there. Close removes every namespace, process and file the
// cluster created, and is safe to call after a failed step.
//
// The package needs root (CAP_NET_ADMIN, CAP_SYS_ADMIN for `ip netns`) and
// the iproute2 and iptables tools; Available reports why it cannot run.
package netns

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"syscall"
	"time"
)

// ServiceChain is the nat chain every pod gets for service virtual IPs. It is
// jumped to from OUTPUT, after any capture rules (see Pod.ServicesLast).
const ServiceChain = "MESH-SERVICES"

// Available reports whether network-namespace pods can be built here, and if
// not, exactly why (for t.Skip).
func Available() error {
	if os.Geteuid() != 0 {
		return errors.New("network-namespace pods need root (ip netns, iptables); run as root, as CI does with `make test`")
	}
	for _, tool := range []string{"ip", "iptables", "setpriv"} {
		if _, err := exec.LookPath(tool); err != nil {
			return fmt.Errorf("network-namespace pods need %q on PATH (Debian: apt-get install iproute2 iptables util-linux): %w", tool, err)
		}
	}
	return nil
}

// Config configures a Cluster. The zero value is usable.
type Config struct {
	// Prefix starts every namespace name; "" means "mesh-" plus 6 random hex
	// digits, so that parallel runs never collide.
	Prefix string
	// PodSubnet is the first three octets of pod addresses; "" means
	// "10.244.0" (pods get .2 onwards, the bridge .1).
	PodSubnet string
	// ServiceSubnet is the first three octets of service VIPs; "" means
	// "10.96.0" (services get .10 onwards).
	ServiceSubnet string
	// Log receives every command the cluster runs; nil discards.
	Log *slog.Logger
}

// Cluster is a set of pods on one bridge plus the services between them.
type Cluster struct {
	cfg    Config
	node   string // namespace that holds the bridge
	mu     sync.Mutex
	pods   []*Pod
	svcs   []*Service
	procs  []*exec.Cmd
	done   map[*exec.Cmd]chan struct{}
	closed bool
}

// Pod is one network namespace.
type Pod struct {
	c *Cluster
	// Name is the pod's name ("sleep"); Namespace its Kubernetes namespace
	// ("default"), which decides which short service names resolve.
	Name, Namespace string
	// NetNS is the `ip netns` name; IP the pod's address.
	NetNS, IP string
}

// Port maps a service port to the pods' target (container) port.
type Port struct {
	Name       string
	Port       int
	TargetPort int
}

// Service is a virtual IP in front of some pods.
type Service struct {
	Name, Namespace string
	VIP             string
	Ports           []Port
	Endpoints       []*Pod
}

// Hosts returns every name a pod in namespace ns can use for the service, as
// Kubernetes DNS would answer: the short name only from the same namespace.
func (s *Service) Hosts(ns string) []string {
	fq := []string{s.Name + "." + s.Namespace, s.Name + "." + s.Namespace + ".svc", s.Name + "." + s.Namespace + ".svc.cluster.local"}
	if ns == s.Namespace {
		return append([]string{s.Name}, fq...)
	}
	return fq
}

// New creates the node namespace with its bridge. Call Close when done, even
// if a later step fails.
func New(cfg Config) (*Cluster, error) {
	if err := Available(); err != nil {
		return nil, err
	}
	if cfg.Prefix == "" {
		b := make([]byte, 3)
		_, _ = rand.Read(b)
		cfg.Prefix = "mesh-" + hex.EncodeToString(b) + "-"
	}
	if cfg.PodSubnet == "" {
		cfg.PodSubnet = "10.244.0"
	}
	if cfg.ServiceSubnet == "" {
		cfg.ServiceSubnet = "10.96.0"
	}
	if cfg.Log == nil {
		cfg.Log = slog.New(slog.NewTextHandler(io.Discard, nil))
	}
	c := &Cluster{cfg: cfg, node: cfg.Prefix + "node"}
	steps := [][]string{
		{"ip", "netns", "add", c.node},
		{"ip", "-n", c.node, "link", "set", "lo", "up"},
		{"ip", "-n", c.node, "link", "add", "br0", "type", "bridge"},
		{"ip", "-n", c.node, "addr", "add", cfg.PodSubnet + ".1/24", "dev", "br0"},
		{"ip", "-n", c.node, "link", "set", "br0", "up"},
	}
	for _, s := range steps {
		if err := c.run(s...); err != nil {
			_ = c.Close()
			return nil, fmt.Errorf("netns: create node %s: %w", c.node, err)
		}
	}
	return c, nil
}

// run executes a host-side setup command and returns its output in the
// error, so a failure says what the kernel or tool said.
func (c *Cluster) run(args ...string) error {
	c.cfg.Log.Debug("netns run", "cmd", strings.Join(args, " "))
	out, err := exec.Command(args[0], args[1:]...).CombinedOutput()
	if err != nil {
		return fmt.Errorf("%s: %w: %s", strings.Join(args, " "), err, bytes.TrimSpace(out))
	}
	return nil
}

// AddPod creates a pod namespace with eth0 on the bridge and the service
// chain in its nat table.
func (c *Cluster) AddPod(name, namespace string) (*Pod, error) {
	c.mu.Lock()
	idx := len(c.pods)
	c.mu.Unlock()
	p := &Pod{
		c: c, Name: name, Namespace: namespace,
		NetNS: c.cfg.Prefix + name,
		IP:    fmt.Sprintf("%s.%d", c.cfg.PodSubnet, idx+2),
	}
	host := fmt.Sprintf("veth%d", idx) // lives in the node namespace only
	steps := [][]string{
		{"ip", "netns", "add", p.NetNS},
	}
	// Register before the first step so Close removes a half-built pod.
	c.mu.Lock()
	c.pods = append(c.pods, p)
	c.mu.Unlock()
	steps = append(steps,
		[]string{"ip", "-n", p.NetNS, "link", "set", "lo", "up"},
		[]string{"ip", "-n", c.node, "link", "add", host, "type", "veth", "peer", "name", "eth0", "netns", p.NetNS},
		[]string{"ip", "-n", c.node, "link", "set", host, "master", "br0", "up"},
		[]string{"ip", "-n", p.NetNS, "addr", "add", p.IP + "/24", "dev", "eth0"},
		[]string{"ip", "-n", p.NetNS, "link", "set", "eth0", "up"},
		// The default route covers the service VIPs, which are not on-link;
		// the DNAT in OUTPUT rewrites them to pod addresses before they leave.
		[]string{"ip", "-n", p.NetNS, "route", "add", "default", "via", c.cfg.PodSubnet + ".1"},
		[]string{"ip", "netns", "exec", p.NetNS, "iptables", "-w", "-t", "nat", "-N", ServiceChain},
		[]string{"ip", "netns", "exec", p.NetNS, "iptables", "-w", "-t", "nat", "-A", "OUTPUT", "-j", ServiceChain},
		// A VIP port that no DNAT rule rewrote (or captured) is refused at
		// once, as kube-proxy REJECTs a service port without endpoints,
		// instead of vanishing into the node namespace until a timeout.
		[]string{"ip", "netns", "exec", p.NetNS, "iptables", "-w", "-A", "OUTPUT", "-d", c.cfg.ServiceSubnet + ".0/24",
			"-p", "tcp", "-j", "REJECT", "--reject-with", "tcp-reset"},
	)
	for _, s := range steps {
		if err := c.run(s...); err != nil {
			return nil, fmt.Errorf("netns: add pod %s: %w", name, err)
		}
	}
	c.mu.Lock()
	svcs := append([]*Service(nil), c.svcs...)
	c.mu.Unlock()
	for _, s := range svcs {
		if err := p.addServiceRules(s); err != nil {
			return nil, err
		}
	}
	if err := c.writeHosts(); err != nil {
		return nil, err
	}
	return p, nil
}

// AddService gives name.namespace a VIP, DNATs it in every pod (present and
// future) to the endpoints' target ports, and adds its names to every pod's
// hosts file.
func (c *Cluster) AddService(name, namespace string, ports []Port, endpoints ...*Pod) (*Service, error) {
	if len(endpoints) == 0 {
		return nil, fmt.Errorf("netns: service %s.%s has no endpoints", name, namespace)
	}
	c.mu.Lock()
	s := &Service{Name: name, Namespace: namespace, Ports: ports, Endpoints: endpoints,
		VIP: fmt.Sprintf("%s.%d", c.cfg.ServiceSubnet, len(c.svcs)+10)}
	c.svcs = append(c.svcs, s)
	pods := append([]*Pod(nil), c.pods...)
	c.mu.Unlock()
	for _, p := range pods {
		if err := p.addServiceRules(s); err != nil {
			return nil, err
		}
	}
	return s, c.writeHosts()
}

// addServiceRules installs kube-proxy's DNAT for one service in this pod.
// With several endpoints each gets an equal share, as kube-proxy's
// statistic rules do.
func (p *Pod) addServiceRules(s *Service) error {
	for _, port := range s.Ports {
		for i, ep := range s.Endpoints {
			args := []string{"ip", "netns", "exec", p.NetNS, "iptables", "-w", "-t", "nat", "-A", ServiceChain,
				"-d", s.VIP + "/32", "-p", "tcp", "--dport", fmt.Sprint(port.Port)}
			if left := len(s.Endpoints) - i; left > 1 {
				args = append(args, "-m", "statistic", "--mode", "random", "--probability", fmt.Sprintf("%.5f", 1/float64(left)))
			}
			args = append(args, "-m", "comment", "--comment", s.Name+"."+s.Namespace+":"+port.Name,
				"-j", "DNAT", "--to-destination", fmt.Sprintf("%s:%d", ep.IP, port.TargetPort))
			if err := p.c.run(args...); err != nil {
				return fmt.Errorf("netns: service %s.%s in pod %s: %w", s.Name, s.Namespace, p.Name, err)
			}
		}
	}
	return nil
}

// ServicesLast moves the pod's jump to the service chain to the end of nat
// OUTPUT. Call it after installing a sidecar's capture rules (meshd init-net):
// in a cluster the VIP is rewritten on the node, after the packet has left
// the pod, so the pod's own capture must see the VIP first.
func (p *Pod) ServicesLast() error {
	for _, op := range []string{"-D", "-A"} {
		if err := p.c.run("ip", "netns", "exec", p.NetNS, "iptables", "-w", "-t", "nat", op, "OUTPUT", "-j", ServiceChain); err != nil {
			return fmt.Errorf("netns: pod %s: reorder service chain: %w", p.Name, err)
		}
	}
	return nil
}

// writeHosts rewrites /etc/netns/<pod>/hosts for every pod; `ip netns exec`
// bind-mounts it over /etc/hosts, so curl resolves service names.
func (c *Cluster) writeHosts() error {
	c.mu.Lock()
	pods := append([]*Pod(nil), c.pods...)
	svcs := append([]*Service(nil), c.svcs...)
	c.mu.Unlock()
	for _, p := range pods {
		var b strings.Builder
		fmt.Fprintf(&b, "# written by meshauth internal/netns for pod %s.%s\n127.0.0.1\tlocalhost\n%s\t%s\n", p.Name, p.Namespace, p.IP, p.Name)
		for _, s := range svcs {
			fmt.Fprintf(&b, "%s\t%s\n", s.VIP, strings.Join(s.Hosts(p.Namespace), " "))
		}
		dir := filepath.Join("/etc/netns", p.NetNS)
		if err := os.MkdirAll(dir, 0o755); err != nil {
			return fmt.Errorf("netns: hosts for %s: %w", p.Name, err)
		}
		if err := os.WriteFile(filepath.Join(dir, "hosts"), []byte(b.String()), 0o644); err != nil {
			return fmt.Errorf("netns: hosts for %s: %w", p.Name, err)
		}
		// An empty resolv.conf: names come from hosts only, and a lookup
		// that misses fails at once instead of waiting for a DNS server the
		// pod cannot reach.
		if err := os.WriteFile(filepath.Join(dir, "resolv.conf"), []byte("# no DNS in netns pods; see hosts\noptions timeout:1 attempts:1\n"), 0o644); err != nil {
			return fmt.Errorf("netns: resolv.conf for %s: %w", p.Name, err)
		}
	}
	return nil
}

// Command returns `ip netns exec <pod> name args...`, the equivalent of
// `kubectl exec <pod> -- name args...`.
func (p *Pod) Command(ctx context.Context, name string, args ...string) *exec.Cmd {
	return exec.CommandContext(ctx, "ip", append([]string{"netns", "exec", p.NetNS, name}, args...)...)
}

// CommandAs runs the command in the pod as uid:gid, with no supplementary
// groups, the way a second container with another user runs; uid 1337 is the
// sidecar's ("the proxy container"), which the capture rules exclude.
func (p *Pod) CommandAs(ctx context.Context, uid int, name string, args ...string) *exec.Cmd {
	pre := []string{"netns", "exec", p.NetNS, "setpriv", fmt.Sprintf("--reuid=%d", uid), fmt.Sprintf("--regid=%d", uid), "--clear-groups", "--", name}
	return exec.CommandContext(ctx, "ip", append(pre, args...)...)
}

// Start starts a long-running process (an app or a sidecar) and registers it
// so Close stops it. The process gets its own process group so that
// everything it spawns stops with it.
func (c *Cluster) Start(cmd *exec.Cmd) error {
	if cmd.SysProcAttr == nil {
		cmd.SysProcAttr = &syscall.SysProcAttr{}
	}
	cmd.SysProcAttr.Setpgid = true
	c.cfg.Log.Debug("netns start", "cmd", strings.Join(cmd.Args, " "))
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("netns: start %s: %w", strings.Join(cmd.Args, " "), err)
	}
	done := make(chan struct{})
	c.mu.Lock()
	c.procs = append(c.procs, cmd)
	if c.done == nil {
		c.done = map[*exec.Cmd]chan struct{}{}
	}
	c.done[cmd] = done
	c.mu.Unlock()
	go func() { _ = cmd.Wait(); close(done) }()
	return nil
}

// Exited returns a non-nil error describing the exit if a process started
// with Start has exited, so callers waiting for it to come up can stop at
// once instead of timing out.
func (c *Cluster) Exited(cmd *exec.Cmd) error {
	c.mu.Lock()
	done := c.done[cmd]
	c.mu.Unlock()
	if done == nil {
		return nil
	}
	select {
	case <-done:
		return fmt.Errorf("%s exited: %v", strings.Join(cmd.Args, " "), cmd.ProcessState)
	default:
		return nil
	}
}

// Stop stops one process started with Start: SIGTERM to its group, then
// SIGKILL after grace.
func (c *Cluster) Stop(cmd *exec.Cmd, grace time.Duration) {
	if cmd.Process == nil {
		return
	}
	pgid := cmd.Process.Pid
	_ = syscall.Kill(-pgid, syscall.SIGTERM)
	c.mu.Lock()
	done := c.done[cmd]
	c.mu.Unlock()
	if done == nil {
		return
	}
	select {
	case <-done:
	case <-time.After(grace):
		_ = syscall.Kill(-pgid, syscall.SIGKILL)
		<-done
	}
	c.mu.Lock()
	for i, p := range c.procs {
		if p == cmd {
			c.procs = append(c.procs[:i], c.procs[i+1:]...)
			break
		}
	}
	c.mu.Unlock()
}

// Pods returns the pods, in creation order.
func (c *Cluster) Pods() []*Pod {
	c.mu.Lock()
	defer c.mu.Unlock()
	return append([]*Pod(nil), c.pods...)
}

// Services returns the services, in creation order.
func (c *Cluster) Services() []*Service {
	c.mu.Lock()
	defer c.mu.Unlock()
	return append([]*Service(nil), c.svcs...)
}

// Close stops every process, deletes every pod namespace, the node namespace
// and the /etc/netns files. It carries on past errors and returns them all,
// so one stuck piece does not leave the rest behind.
func (c *Cluster) Close() error {
	c.mu.Lock()
	if c.closed {
		c.mu.Unlock()
		return nil
	}
	c.closed = true
	procs := append([]*exec.Cmd(nil), c.procs...)
	pods := append([]*Pod(nil), c.pods...)
	c.mu.Unlock()

	var errs []error
	for i := len(procs) - 1; i >= 0; i-- {
		c.Stop(procs[i], 3*time.Second)
	}
	names := []string{}
	for _, p := range pods {
		names = append(names, p.NetNS)
	}
	sort.Strings(names)
	names = append(names, c.node)
	for _, n := range names {
		if err := c.run("ip", "netns", "del", n); err != nil && !strings.Contains(err.Error(), "No such file") {
			errs = append(errs, err)
		}
		if err := os.RemoveAll(filepath.Join("/etc/netns", n)); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// NodeIP is the node namespace's address on the bridge: where pods reach
// things that run "on the node", like the control plane.
func (c *Cluster) NodeIP() string { return c.cfg.PodSubnet + ".1" }

// NodeNetNS is the node namespace's `ip netns` name.
func (c *Cluster) NodeNetNS() string { return c.node }

// NodeCommand returns a command that runs in the node namespace (the
// control plane runs there, reachable from every pod at NodeIP).
func (c *Cluster) NodeCommand(ctx context.Context, name string, args ...string) *exec.Cmd {
	return exec.CommandContext(ctx, "ip", append([]string{"netns", "exec", c.node, name}, args...)...)
}
