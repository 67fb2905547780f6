// Package kcluster runs a real single-node Kubernetes cluster for meshauth's
// tests and `make demo-k8s`: etcd, kube-apiserver, kube-controller-manager,
// kube-scheduler, kubelet with containerd and runc, the CNI bridge,
// kube-proxy in iptables mode and a small cluster DNS, with no registry and
// no internet. Images are OCI tars written by test/cluster/ociimage and
// imported with ctr.
//
// The whole node lives in one network namespace the harness creates
// (ma-cl-<pid>): the node address, the cni0 bridge, pod veths and every
// iptables rule of CNI, kubelet and kube-proxy are inside it, and deleting it
// takes them away. Down stops every process Up started (by PID), unmounts
// everything under the work directory, restores the kernel settings kubelet
// changes and removes what kubelet and containerd wrote outside the work
// directory, if Up found it absent. Leftovers reports anything left.
//
// Pitfalls this harness handles (found on this 2-core Debian 12 VM, cgroup
// v1): root has no CAP_SYS_RESOURCE, so containerd clamps OOM scores
// (restrict_oom_score_adj); `ip netns exec` remounts /sys and hides the
// cgroups, so components start under `nsenter --net`; the kernel has no
// dummy netdev, so the node address sits on a veth pair inside the netns;
// controller-manager and scheduler start after /readyz (RBAC bootstrap);
// kubelet rewrites global sysctls (saved and restored).
package kcluster

import (
	"bytes"
	"context"
	_ "embed"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"
)

// Fixed addresses: they are inside the cluster's own network namespace, so
// they cannot clash with the host or with another test's namespaces.
const (
	NodeIP      = "172.30.0.2"
	nodeGW      = "172.30.0.1"
	NodeName    = "meshauth-node"
	PodCIDR     = "10.244.0.0/24"
	podGW       = "10.244.0.1"
	ServiceCIDR = "10.96.0.0/16"
	apiSvcIP    = "10.96.0.1"
	DNSIP       = "10.96.0.10"
	apiPort     = "6443"
)

// Config says where the binaries are and where the cluster keeps its state.
type Config struct {
	// Repo is the meshauth checkout (images are built from it; bin/ holds
	// meshctl, kube-apiserver and kube-node/).
	Repo string
	// Work is the state directory (default /tmp/ma-cl-<pid>).
	Work string
	// Netns is the node's network namespace (default ma-cl-<pid>).
	Netns string
	// Log receives progress lines (default: discarded).
	Log io.Writer
}

// Cluster is a running cluster.
type Cluster struct {
	cfg   Config
	began time.Time
	// Kubeconfig is the admin (system:masters) kubeconfig; the API server
	// is reachable only inside the node's network namespace (see Cmd).
	Kubeconfig string
	// Bin holds kubectl and the other Kubernetes binaries.
	Bin string

	mu    sync.Mutex
	procs []*proc
	// What Up found absent and so must remove at Down.
	created []string
	sysctls map[string]string
	cgroups []string
}

type proc struct {
	name string
	cmd  *exec.Cmd
	done chan struct{}
}

//go:embed dns.yaml
var dnsAddon string

// sysctlKeys are the global kernel settings kubelet rewrites at start.
var sysctlKeys = []string{"vm.overcommit_memory", "vm.panic_on_oom", "kernel.panic", "kernel.panic_on_oops",
	"kernel.keys.root_maxkeys", "kernel.keys.root_maxbytes"}

// Requirements lists what Up needs and is missing: root, Debian's
// containerd, runc, CNI plugins, etcd, iptables, nsenter, and the built
// Kubernetes binaries. Empty means Up can run.
func Requirements(repo string) []string {
	var missing []string
	if os.Geteuid() != 0 {
		missing = append(missing, "root")
	}
	for _, t := range []string{"containerd", "ctr", "runc", "etcd", "iptables", "nsenter", "ip", "ldd", "curl", "openssl"} {
		if _, err := exec.LookPath(t); err != nil {
			missing = append(missing, t)
		}
	}
	for _, p := range []string{"/usr/lib/cni/bridge", "/usr/lib/cni/host-local", "/usr/lib/cni/loopback", "/usr/lib/cni/portmap"} {
		if _, err := os.Stat(p); err != nil {
			missing = append(missing, p+" (containernetworking-plugins)")
		}
	}
	for _, b := range []string{"bin/kube-apiserver", "bin/meshctl", "bin/kube-node/kubelet", "bin/kube-node/kube-proxy",
		"bin/kube-node/kube-controller-manager", "bin/kube-node/kube-scheduler", "bin/kube-node/kubectl"} {
		if _, err := os.Stat(filepath.Join(repo, b)); err != nil {
			missing = append(missing, b+" (make build kube-apiserver kube-node)")
		}
	}
	return missing
}

func (c *Cluster) logf(format string, args ...any) {
	if c.cfg.Log != nil {
		fmt.Fprintf(c.cfg.Log, "[cluster %5.1fs] %s\n", time.Since(c.began).Seconds(), fmt.Sprintf(format, args...))
	}
}

func (c *Cluster) path(p ...string) string {
	return filepath.Join(append([]string{c.cfg.Work}, p...)...)
}

// NetnsPath is the node's network namespace file.
func (c *Cluster) NetnsPath() string { return "/run/netns/" + c.cfg.Netns }

// Up starts the cluster and waits until the node is Ready and the cluster
// DNS answers. On error it tears down what it started.
func Up(ctx context.Context, cfg Config) (c *Cluster, err error) {
	if m := Requirements(cfg.Repo); len(m) > 0 {
		return nil, fmt.Errorf("kcluster: cannot start a cluster, missing: %s", strings.Join(m, ", "))
	}
	pid := strconv.Itoa(os.Getpid())
	if cfg.Work == "" {
		cfg.Work = filepath.Join(os.TempDir(), "ma-cl-"+pid)
	}
	if cfg.Netns == "" {
		cfg.Netns = "ma-cl-" + pid
	}
	ReapStale(cfg.Log)
	c = &Cluster{cfg: cfg, began: time.Now(), Bin: filepath.Join(cfg.Repo, "bin", "kube-node"), sysctls: map[string]string{}}
	c.Kubeconfig = c.path("kubeconfigs", "admin.kubeconfig")
	defer func() {
		if err != nil {
			c.logf("up failed: %v; tearing down", err)
			c.Down()
		}
	}()
	for _, d := range []string{"logs", "pki", "kubeconfigs", "etcd", "containerd/root", "containerd/state", "run",
		"cni/net.d", "cni/ipam", "kubelet/root", "kubelet/manifests", "pod-logs", "images"} {
		if err := os.MkdirAll(c.path(d), 0o755); err != nil {
			return c, err
		}
	}
	if err := c.netns(); err != nil {
		return c, err
	}
	if err := c.writePKI(); err != nil {
		return c, err
	}
	images := make(chan error, 1)
	var tars []string
	go func() {
		var err error
		tars, err = BuildImages(cfg.Repo, c.path("images"))
		images <- err
	}()
	if err := c.startControlPlane(); err != nil {
		return c, err
	}
	if err := c.waitFor(ctx, "containerd", 30*time.Second, "ctr", "--address", c.path("run", "containerd.sock"), "version"); err != nil {
		return c, err
	}
	if err := <-images; err != nil {
		return c, err
	}
	c.logf("images written (%d); importing", len(tars))
	// The imports run at once: each is mostly unpacking one layer.
	if err := inParallel(len(tars), func(i int) error {
		if out, err := c.run("ctr", "--address", c.path("run", "containerd.sock"), "-n", "k8s.io", "images", "import", tars[i]); err != nil {
			return fmt.Errorf("kcluster: ctr import %s: %v: %s", tars[i], err, out)
		}
		return nil
	}); err != nil {
		return c, err
	}
	c.logf("images built and imported (%d)", len(tars))
	if err := c.startNode(); err != nil {
		return c, err
	}
	if err := c.waitFor(ctx, "kube-apiserver /readyz", 90*time.Second, c.kubectlArgs("get", "--raw", "/readyz")...); err != nil {
		return c, err
	}
	c.logf("kube-apiserver ready")
	if err := c.startControllers(); err != nil {
		return c, err
	}
	if err := c.Apply(strings.ReplaceAll(dnsAddon, "__DNS_IP__", DNSIP)); err != nil {
		return c, err
	}
	if err := c.waitFor(ctx, "node Ready", 120*time.Second, c.kubectlArgs("wait", "--for=condition=Ready", "node/"+NodeName, "--timeout=2s")...); err != nil {
		return c, err
	}
	c.logf("node %s Ready", NodeName)
	if err := c.waitFor(ctx, "default ServiceAccount", 60*time.Second, c.kubectlArgs("get", "serviceaccount", "default")...); err != nil {
		return c, err
	}
	if err := c.waitFor(ctx, "cluster DNS", 120*time.Second, c.kubectlArgs("-n", "kube-system", "wait", "--for=condition=Available", "deploy/cluster-dns", "--timeout=2s")...); err != nil {
		return c, err
	}
	c.logf("cluster up (DNS at %s)", DNSIP)
	return c, nil
}

// netns creates the node's network namespace: loopback, the node address on
// a veth pair whose both ends stay inside, a default route to nowhere (so
// off-cluster traffic fails fast), forwarding and bridge netfilter.
func (c *Cluster) netns() error {
	ns := c.cfg.Netns
	steps := [][]string{
		{"ip", "netns", "add", ns},
		{"ip", "-n", ns, "link", "set", "lo", "up"},
		{"ip", "-n", ns, "link", "add", "node0", "type", "veth", "peer", "name", "node0peer"},
		{"ip", "-n", ns, "addr", "add", NodeIP + "/24", "dev", "node0"},
		{"ip", "-n", ns, "link", "set", "node0", "up"},
		{"ip", "-n", ns, "link", "set", "node0peer", "up"},
		{"ip", "-n", ns, "route", "add", "default", "via", nodeGW, "dev", "node0"},
		{"nsenter", "--net=" + c.NetnsPath(), "sysctl", "-qw", "net.ipv4.ip_forward=1",
			"net.bridge.bridge-nf-call-iptables=1", "net.ipv4.conf.all.route_localnet=1"},
	}
	for i, s := range steps {
		if out, err := c.run(s[0], s[1:]...); err != nil {
			if i == 0 {
				return fmt.Errorf("kcluster: %s: %v: %s", strings.Join(s, " "), err, out)
			}
			return fmt.Errorf("kcluster: %s: %v: %s", strings.Join(s, " "), err, out)
		}
	}
	c.logf("netns %s (%s)", ns, NodeIP)
	return nil
}

func (c *Cluster) writePKI() error {
	p, err := newPKI(c.path("pki"))
	if err != nil {
		return err
	}
	certs := []struct {
		name, cn, org string
		server        bool
		sans          []string
	}{
		{"apiserver", "kube-apiserver", "", true, []string{"kubernetes", "kubernetes.default", "kubernetes.default.svc",
			"kubernetes.default.svc.cluster.local", "localhost", "127.0.0.1", NodeIP, apiSvcIP}},
		{"apiserver-kubelet-client", "kube-apiserver-kubelet-client", "system:masters", false, nil},
		{"admin", "admin", "system:masters", false, nil},
		{"controller-manager", "system:kube-controller-manager", "", false, nil},
		{"scheduler", "system:kube-scheduler", "", false, nil},
		{"kube-proxy", "system:kube-proxy", "", false, nil},
		{"kubelet", "system:node:" + NodeName, "system:nodes", false, nil},
		{"kubelet-serving", NodeName, "", true, []string{NodeName, NodeIP, "127.0.0.1"}},
	}
	server := "https://" + NodeIP + ":" + apiPort
	for _, ct := range certs {
		if err := p.issue(ct.name, ct.cn, ct.org, ct.server, ct.sans...); err != nil {
			return err
		}
		if !ct.server {
			if err := p.kubeconfig(c.path("kubeconfigs", ct.name+".kubeconfig"), ct.name, server); err != nil {
				return err
			}
		}
	}
	return nil
}

// start runs a component in the node's network namespace (nsenter execs it,
// so the PID is the component's), in its own session, logging to logs/.
func (c *Cluster) start(name, bin string, args ...string) error {
	logf, err := os.Create(c.path("logs", name+".log"))
	if err != nil {
		return err
	}
	cmd := exec.Command("nsenter", append([]string{"--net=" + c.NetnsPath(), bin}, args...)...)
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	if err := cmd.Start(); err != nil {
		logf.Close()
		return fmt.Errorf("kcluster: start %s: %w", name, err)
	}
	p := &proc{name: name, cmd: cmd, done: make(chan struct{})}
	go func() { cmd.Wait(); logf.Close(); close(p.done) }()
	c.mu.Lock()
	c.procs = append(c.procs, p)
	c.mu.Unlock()
	// "<pid> <binary>": ReapStale kills the PID only if it still runs that binary.
	exe := bin
	if p, err := exec.LookPath(bin); err == nil {
		exe = p
	}
	if p, err := filepath.EvalSymlinks(exe); err == nil {
		exe = p
	}
	return os.WriteFile(c.path("run", name+".pid"), []byte(fmt.Sprintf("%d %s\n", cmd.Process.Pid, exe)), 0o644)
}

func (c *Cluster) startControlPlane() error {
	w := c.path
	if err := c.start("etcd", "etcd", "--name", "node", "--data-dir", w("etcd"),
		"--listen-client-urls", "http://127.0.0.1:2379", "--advertise-client-urls", "http://127.0.0.1:2379",
		"--listen-peer-urls", "http://127.0.0.1:2380", "--initial-advertise-peer-urls", "http://127.0.0.1:2380",
		"--initial-cluster", "node=http://127.0.0.1:2380", "--unsafe-no-fsync"); err != nil {
		return err
	}
	if err := c.writeContainerdConfig(); err != nil {
		return err
	}
	if err := c.markAbsent("/run/containerd"); err != nil {
		return err
	}
	if err := c.start("containerd", "containerd", "--config", w("containerd.toml")); err != nil {
		return err
	}
	p := c.path("pki")
	return c.start("kube-apiserver", filepath.Join(c.cfg.Repo, "bin", "kube-apiserver"),
		"--etcd-servers=http://127.0.0.1:2379", "--bind-address=0.0.0.0", "--advertise-address="+NodeIP,
		"--secure-port="+apiPort, "--tls-cert-file="+p+"/apiserver.crt", "--tls-private-key-file="+p+"/apiserver.key",
		"--client-ca-file="+p+"/ca.crt",
		"--kubelet-client-certificate="+p+"/apiserver-kubelet-client.crt", "--kubelet-client-key="+p+"/apiserver-kubelet-client.key",
		"--kubelet-preferred-address-types=InternalIP,Hostname",
		"--service-account-issuer=https://kubernetes.default.svc.cluster.local",
		"--service-account-key-file="+p+"/sa.key", "--service-account-signing-key-file="+p+"/sa.key",
		"--service-cluster-ip-range="+ServiceCIDR, "--authorization-mode=Node,RBAC",
		"--enable-admission-plugins=NodeRestriction", "--allow-privileged=true", "--profiling=false", "--v=1")
}

func (c *Cluster) writeContainerdConfig() error {
	w := c.path
	runc, err := exec.LookPath("runc")
	if err != nil {
		return err
	}
	cfg := fmt.Sprintf(`version = 2
root = %q
state = %q
disabled_plugins = ["io.containerd.snapshotter.v1.btrfs", "io.containerd.snapshotter.v1.zfs", "io.containerd.snapshotter.v1.devmapper", "io.containerd.snapshotter.v1.aufs", "io.containerd.tracing.processor.v1.otlp", "io.containerd.internal.v1.tracing"]
[grpc]
  address = %q
[ttrpc]
  address = %q
[plugins."io.containerd.internal.v1.opt"]
  path = %q
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = %q
  stream_server_address = "127.0.0.1"
  stream_server_port = "0"
  netns_mounts_under_state_dir = true
  # root here lacks CAP_SYS_RESOURCE: runc cannot set the sandbox's
  # oom_score_adj -998 ("can't get final child's PID from pipe: EOF").
  restrict_oom_score_adj = true
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        SystemdCgroup = false
        BinaryName = %q
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "/usr/lib/cni"
    conf_dir = %q
    max_conf_num = 1
`, w("containerd", "root"), w("containerd", "state"), w("run", "containerd.sock"), w("run", "containerd.sock.ttrpc"),
		w("containerd", "opt"), PauseImage, runc, w("cni", "net.d"))
	if err := os.WriteFile(w("containerd.toml"), []byte(cfg), 0o644); err != nil {
		return err
	}
	cni := fmt.Sprintf(`{
  "cniVersion": "1.0.0",
  "name": "meshauth-pods",
  "plugins": [
    {"type": "bridge", "bridge": "cni0", "isGateway": true, "ipMasq": false, "hairpinMode": true,
     "ipam": {"type": "host-local", "dataDir": %q, "ranges": [[{"subnet": %q, "gateway": %q}]], "routes": [{"dst": "0.0.0.0/0"}]}},
    {"type": "portmap", "capabilities": {"portMappings": true}}
  ]
}
`, w("cni", "ipam"), PodCIDR, podGW)
	return os.WriteFile(w("cni", "net.d", "10-bridge.conflist"), []byte(cni), 0o644)
}

// startNode starts kubelet and kube-proxy (they retry until the API server
// answers), after saving the kernel settings kubelet rewrites.
func (c *Cluster) startNode() error {
	for _, k := range sysctlKeys {
		v, err := os.ReadFile("/proc/sys/" + strings.ReplaceAll(k, ".", "/"))
		if err != nil {
			continue
		}
		c.sysctls[k] = strings.TrimSpace(string(v))
	}
	saved := ""
	for k, v := range c.sysctls {
		saved += k + "=" + v + "\n"
	}
	if err := os.WriteFile(c.path("run", "sysctl.saved"), []byte(saved), 0o644); err != nil {
		return err
	}
	for _, d := range []string{"/var/lib/kubelet", "/var/log/containers"} {
		if err := c.markAbsent(d); err != nil {
			return err
		}
	}
	// Pods go under a cgroup of this cluster's own (kubelet's cgroupRoot),
	// made here in every hierarchy (v1; or the unified one, v2): two
	// clusters never share kubepods/, and Down can find, kill and remove
	// everything under it.
	var hier []string
	if _, err := os.Stat("/sys/fs/cgroup/cgroup.procs"); err == nil {
		hier = []string{"/sys/fs/cgroup"}
	} else {
		hier, _ = filepath.Glob("/sys/fs/cgroup/*")
	}
	seen := map[string]bool{}
	for _, h := range hier {
		real, err := filepath.EvalSymlinks(h)
		if _, perr := os.Stat(filepath.Join(real, "cgroup.procs")); err != nil || perr != nil || seen[real] {
			continue
		}
		seen[real] = true
		d := filepath.Join(real, c.cfg.Netns)
		if err := os.Mkdir(d, 0o755); err != nil {
			return fmt.Errorf("kcluster: cgroup root: %w", err)
		}
		c.cgroups = append(c.cgroups, d)
		if err := c.record("cgroups", d); err != nil {
			return err
		}
	}
	w, p := c.path, c.path("pki")
	resolv := fmt.Sprintf("nameserver %s\nsearch default.svc.cluster.local svc.cluster.local cluster.local\n", DNSIP)
	if err := os.WriteFile(w("kubelet", "resolv.conf"), []byte(resolv), 0o644); err != nil {
		return err
	}
	kubelet := fmt.Sprintf(`apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
authentication:
  anonymous: {enabled: false}
  webhook: {enabled: true}
  x509: {clientCAFile: %[1]s/ca.crt}
authorization: {mode: Webhook}
tlsCertFile: %[1]s/kubelet-serving.crt
tlsPrivateKeyFile: %[1]s/kubelet-serving.key
cgroupDriver: cgroupfs
cgroupRoot: /%[8]s
failCgroupV1: false
failSwapOn: false
containerRuntimeEndpoint: unix://%[2]s
clusterDomain: cluster.local
clusterDNS: [%[3]s]
resolvConf: %[4]s
podLogsDir: %[5]s
readOnlyPort: 0
healthzBindAddress: 127.0.0.1
healthzPort: 10248
address: %[6]s
registerNode: true
rotateCertificates: false
serverTLSBootstrap: false
imageGCHighThresholdPercent: 100
evictionHard: {memory.available: "100Mi", nodefs.available: "1%%", imagefs.available: "1%%"}
evictionPressureTransitionPeriod: 10s
nodeStatusReportFrequency: 10s
syncFrequency: 10s
fileCheckFrequency: 10s
staticPodPath: %[7]s
`, p, w("run", "containerd.sock"), DNSIP, w("kubelet", "resolv.conf"), w("pod-logs"), NodeIP, w("kubelet", "manifests"), c.cfg.Netns)
	if err := os.WriteFile(w("kubelet", "config.yaml"), []byte(kubelet), 0o644); err != nil {
		return err
	}
	if err := c.start("kubelet", filepath.Join(c.Bin, "kubelet"), "--config="+w("kubelet", "config.yaml"),
		"--kubeconfig="+w("kubeconfigs", "kubelet.kubeconfig"), "--root-dir="+w("kubelet", "root"),
		"--hostname-override="+NodeName, "--node-ip="+NodeIP, "--v=1"); err != nil {
		return err
	}
	proxy := fmt.Sprintf(`apiVersion: kubeproxy.config.k8s.io/v1alpha1
kind: KubeProxyConfiguration
clientConnection: {kubeconfig: %s}
hostnameOverride: %s
mode: iptables
clusterCIDR: %s
bindAddress: %s
healthzBindAddress: 127.0.0.1:10256
metricsBindAddress: 127.0.0.1:10249
# No global conntrack sysctl changes.
conntrack: {maxPerCore: 0, min: 0, tcpEstablishedTimeout: 0s, tcpCloseWaitTimeout: 0s}
iptables: {syncPeriod: 30s, minSyncPeriod: 0s}
`, w("kubeconfigs", "kube-proxy.kubeconfig"), NodeName, PodCIDR, NodeIP)
	if err := os.WriteFile(w("kube-proxy.yaml"), []byte(proxy), 0o644); err != nil {
		return err
	}
	return c.start("kube-proxy", filepath.Join(c.Bin, "kube-proxy"), "--config="+w("kube-proxy.yaml"), "--v=1")
}

// startControllers starts controller-manager and scheduler; started before
// /readyz they exit on "extension-apiserver-authentication is forbidden".
func (c *Cluster) startControllers() error {
	w, p := c.path, c.path("pki")
	kc := w("kubeconfigs", "controller-manager.kubeconfig")
	if err := c.start("kube-controller-manager", filepath.Join(c.Bin, "kube-controller-manager"),
		"--kubeconfig="+kc, "--authentication-kubeconfig="+kc, "--authorization-kubeconfig="+kc,
		"--bind-address=127.0.0.1", "--leader-elect=false", "--use-service-account-credentials=true",
		"--service-account-private-key-file="+p+"/sa.key", "--root-ca-file="+p+"/ca.crt",
		"--cluster-signing-cert-file="+p+"/ca.crt", "--cluster-signing-key-file="+p+"/ca.key",
		"--allocate-node-cidrs=true", "--cluster-cidr="+PodCIDR, "--node-cidr-mask-size=24",
		"--service-cluster-ip-range="+ServiceCIDR, "--controllers=*,-cloud-node-lifecycle", "--profiling=false", "--v=1"); err != nil {
		return err
	}
	ks := w("kubeconfigs", "scheduler.kubeconfig")
	return c.start("kube-scheduler", filepath.Join(c.Bin, "kube-scheduler"),
		"--kubeconfig="+ks, "--authentication-kubeconfig="+ks, "--authorization-kubeconfig="+ks,
		"--bind-address=127.0.0.1", "--leader-elect=false", "--profiling=false", "--v=1")
}

// markAbsent records that path does not exist yet, so Down removes it (and
// only then).
func (c *Cluster) markAbsent(path string) error {
	if _, err := os.Stat(path); errors.Is(err, os.ErrNotExist) {
		c.created = append(c.created, path)
		return c.record("created", path)
	}
	return nil
}

// inParallel runs f(0) .. f(n-1) at once and joins their errors.
func inParallel(n int, f func(i int) error) error {
	errs := make(chan error, n)
	for i := 0; i < n; i++ {
		go func() { errs <- f(i) }()
	}
	var all error
	for i := 0; i < n; i++ {
		all = errors.Join(all, <-errs)
	}
	return all
}

// record appends line to run/<file>, so ReapStale can undo it if this
// process dies before Down.
func (c *Cluster) record(file, line string) error {
	f, err := os.OpenFile(c.path("run", file), os.O_APPEND|os.O_CREATE|os.O_WRONLY, 0o644)
	if err != nil {
		return err
	}
	if _, err := fmt.Fprintln(f, line); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}

func (c *Cluster) run(name string, args ...string) ([]byte, error) {
	return exec.Command(name, args...).CombinedOutput()
}

// kubectlArgs is the argv of kubectl (admin) inside the node's netns.
func (c *Cluster) kubectlArgs(args ...string) []string {
	return append([]string{"nsenter", "--net=" + c.NetnsPath(), filepath.Join(c.Bin, "kubectl"), "--kubeconfig", c.Kubeconfig}, args...)
}

// Kubectl runs kubectl as the cluster admin and returns its combined output.
func (c *Cluster) Kubectl(args ...string) (string, error) {
	a := c.kubectlArgs(args...)
	out, err := exec.Command(a[0], a[1:]...).CombinedOutput()
	if err != nil {
		return string(out), fmt.Errorf("kubectl %s: %v: %s", strings.Join(args, " "), err, out)
	}
	return string(out), nil
}

// Apply is `kubectl apply -f -` of manifest.
func (c *Cluster) Apply(manifest string) error {
	a := c.kubectlArgs("apply", "-f", "-")
	cmd := exec.Command(a[0], a[1:]...)
	cmd.Stdin = strings.NewReader(manifest)
	if out, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("kubectl apply: %v: %s", err, out)
	}
	return nil
}

// Shell returns a bash running line in the node's network namespace, with
// kubectl, meshctl and meshd on PATH, KUBECONFIG set and KUBELET_ROOT the
// kubelet's --root-dir (pod volumes, as a node admin sees them): the seed's
// command lines (process substitution, pipes, $(...)) run exactly as written.
func (c *Cluster) Shell(ctx context.Context, line string) *exec.Cmd {
	cmd := exec.CommandContext(ctx, "nsenter", "--net="+c.NetnsPath(), "bash", "-o", "pipefail", "-c", line)
	cmd.Dir = c.cfg.Repo
	cmd.Env = append(os.Environ(), "KUBECONFIG="+c.Kubeconfig, "KUBELET_ROOT="+c.path("kubelet", "root"),
		"PATH="+c.Bin+":"+filepath.Join(c.cfg.Repo, "bin")+":"+os.Getenv("PATH"))
	return cmd
}

func (c *Cluster) waitFor(ctx context.Context, what string, timeout time.Duration, argv ...string) error {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	var last []byte
	for {
		out, err := exec.CommandContext(ctx, argv[0], argv[1:]...).CombinedOutput()
		if err == nil {
			return nil
		}
		last = out
		select {
		case <-ctx.Done():
			return fmt.Errorf("kcluster: timed out waiting for %s (logs in %s): %s", what, c.path("logs"), bytes.TrimSpace(last))
		case <-time.After(200 * time.Millisecond):
		}
	}
}
