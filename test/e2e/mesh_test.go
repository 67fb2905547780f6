package e2e

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/meshauth/meshauth/internal/netns"
)

// ProxyUID is the sidecar's uid, which the capture rules exclude; the seed's
// "from the proxy container" commands run as it.
const ProxyUID = 1337

// needPieces fails the test, naming exactly what is missing, when a meshd or
// meshctl subcommand the walkthrough needs does not show its usage. It
// skipped once, while the pieces were being built; every piece exists now,
// and a skip here once hid every pod test from CI for a day (the usage
// line changed when meshd sidecar began to exec meshd-sidecar).
func needPieces(t *testing.T) {
	t.Helper()
	for _, p := range []struct {
		bin  string
		args []string
		what string
		flag string // a flag the usage must list
	}{
		{"meshd", []string{"control", "--help"}, "meshd control (issue 2)", "--config"},
		{"meshd", []string{"sidecar", "--help"}, "meshd sidecar (issue 3)", ""},
		{"meshd", []string{"init-net", "--help"}, "meshd init-net (issue 3)", ""},
		{"meshctl", []string{"token", "create", "--help"}, "meshctl token create (issue 2)", ""},
		{"meshctl", []string{"tls-check", "--help"}, "meshctl tls-check (issue 4)", ""},
		{"meshctl", []string{"explain", "--help"}, "meshctl explain (issue 4)", ""},
		{"meshctl", []string{"get", "--help"}, "meshctl get (issue 4)", ""},
	} {
		out, err := exec.Command(filepath.Join(bin, p.bin), p.args...).CombinedOutput()
		// cobra prints the parent's help for an unknown subcommand with
		// exit 0, so check the usage line names the subcommand.
		want := "Usage:\n  " + p.bin + " " + strings.Join(p.args[:len(p.args)-1], " ")
		// `meshd sidecar` execs meshd-sidecar when it sits beside meshd
		// (TestMain builds both), whose usage line names itself.
		exec := "Usage:\n  " + p.bin + "-" + strings.Join(p.args[:len(p.args)-1], "-") + " "
		if p.flag != "" && err == nil && !strings.Contains(string(out), p.flag) {
			t.Fatalf("%s has no %s flag (`%s %s`):\n%s", p.what, p.flag, p.bin, strings.Join(p.args, " "), out)
		}
		if err != nil || !strings.Contains(string(out), want) && !strings.Contains(string(out), exec) {
			t.Fatalf("this build has no %s: `%s %s` did not show its usage (%v):\n%s", p.what, p.bin, strings.Join(p.args, " "), err, out)
		}
	}
}

// mesh is a control plane in the node namespace plus pods.
type mesh struct {
	t         *testing.T
	c         *netns.Cluster
	dir       string // host directory for state, config, certs
	stateDir  string
	configDir string
	addr      string // control plane address, reachable from pods
	certs     map[string]string
	sidecars  map[string]*exec.Cmd
	// control is the running `meshd control`; sidecarArgs are extra flags
	// every sidecar gets (the chaos suite's --cert-ttl).
	control     *exec.Cmd
	sidecarArgs []string
	sidecarSA   map[string]string // pod -> service account
	quiet       bool              // meshctl logs only failures
	controlLog  lockedBuffer      // everything the control plane wrote
}

// lockedBuffer is a bytes.Buffer safe for a process's output goroutine and
// a reader.
type lockedBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *lockedBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *lockedBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

// meshOptions changes how newMeshWith builds the mesh; the zero value is
// newMesh's.
type meshOptions struct {
	// beforeStart runs after the state directory exists and before the
	// control plane starts (the chaos suite mounts a tmpfs there).
	beforeStart func(stateDir string)
	// sidecarArgs are added to every sidecar's flags.
	sidecarArgs []string
}

// newMesh starts `meshd control` in the node namespace with cfg as its
// config directory's files.
func newMesh(t *testing.T, c *netns.Cluster, cfg map[string]string) *mesh {
	t.Helper()
	return newMeshWith(t, c, cfg, meshOptions{})
}

// newMeshWith is newMesh with options.
func newMeshWith(t *testing.T, c *netns.Cluster, cfg map[string]string, o meshOptions) *mesh {
	t.Helper()
	// Not t.TempDir: its parent is private to root, and the sidecars run
	// as uid 1337 and must reach their certs directories and token files.
	dir, err := os.MkdirTemp("", "meshauth-e2e-")
	if err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	m := &mesh{t: t, c: c, dir: dir, stateDir: filepath.Join(dir, "control"), configDir: filepath.Join(dir, "config"),
		addr: c.NodeIP() + ":15012", certs: map[string]string{}, sidecars: map[string]*exec.Cmd{},
		sidecarArgs: o.sidecarArgs, sidecarSA: map[string]string{}}
	for _, d := range []string{m.stateDir, m.configDir} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	if o.beforeStart != nil {
		o.beforeStart(m.stateDir)
	}
	for name, body := range cfg {
		m.writeConfig(name, body)
	}
	m.startControl()
	return m
}

// startControlCmd starts `meshd control` in the node namespace and returns
// it without waiting.
// Its output goes to the test log, and to out as well when out is not nil.
func (m *mesh) startControlCmd(out io.Writer) *exec.Cmd {
	m.t.Helper()
	cmd := m.c.NodeCommand(context.Background(), filepath.Join(bin, "meshd"), "control",
		"--dir", m.stateDir, "--listen", m.addr, "--metrics-listen", m.c.NodeIP()+":15014", "--config", m.configDir)
	var w io.Writer = io.MultiWriter(prefixWriter(m.t, "control"), &m.controlLog)
	if out != nil {
		w = io.MultiWriter(w, out)
	}
	cmd.Stdout, cmd.Stderr = w, w
	if err := m.c.Start(cmd); err != nil {
		m.t.Fatal(err)
	}
	return cmd
}

// startControl starts `meshd control` (again, after a kill) and waits until
// it has written control.addr and accepts connections.
func (m *mesh) startControl() {
	m.t.Helper()
	_ = os.Remove(filepath.Join(m.stateDir, "control.addr"))
	cmd := m.startControlCmd(nil)
	m.control = cmd
	waitFor(m.t, "control plane", func() error {
		if err := m.c.Exited(cmd); err != nil {
			m.t.Fatal(err)
		}
		_, err := os.Stat(filepath.Join(m.stateDir, "control.addr"))
		return err
	})
}

func (m *mesh) writeConfig(name, body string) {
	m.t.Helper()
	p := filepath.Join(m.configDir, name)
	if err := os.WriteFile(p+".tmp", []byte(body), 0o644); err != nil {
		m.t.Fatal(err)
	}
	if err := os.Rename(p+".tmp", p); err != nil {
		m.t.Fatal(err)
	}
}

func (m *mesh) removeConfig(name string) {
	m.t.Helper()
	if err := os.Remove(filepath.Join(m.configDir, name)); err != nil {
		m.t.Fatal(err)
	}
}

// meshctl runs meshctl against the control plane (from the node namespace,
// where the control plane's address is reachable) and returns stdout and
// the exit status.
func (m *mesh) meshctl(args ...string) (string, int) {
	m.t.Helper()
	out, _, code := m.meshctlErr(args...)
	return out, code
}

// meshctlErr is meshctl that also returns what meshctl wrote to stderr.
func (m *mesh) meshctlErr(args ...string) (string, string, int) {
	m.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	cmd := m.c.NodeCommand(ctx, filepath.Join(bin, "meshctl"), append([]string{"--dir", m.stateDir}, args...)...)
	var stderr strings.Builder
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	code := 0
	if ee, ok := err.(*exec.ExitError); ok {
		code = ee.ExitCode()
	} else if err != nil {
		m.t.Fatalf("meshctl %v: %v", args, err)
	}
	if !m.quiet || code != 0 {
		m.t.Logf("$ meshctl %s (exit %d)\n%s%s", strings.Join(args, " "), code, out, stderr.String())
	}
	return string(out), stderr.String(), code
}

// meshctlQuiet is meshctlErr that logs only a failure, for polling.
func (m *mesh) meshctlQuiet(args ...string) (string, string, int) {
	m.t.Helper()
	m.quiet = true
	defer func() { m.quiet = false }()
	return m.meshctlErr(args...)
}

// token creates a join token for ns/sa.
func (m *mesh) token(ns, sa string) string {
	m.t.Helper()
	out, code := m.meshctl("token", "create", "--namespace", ns, "--service-account", sa)
	if code != 0 {
		m.t.Fatalf("meshctl token create for %s/%s: exit %d", ns, sa, code)
	}
	return strings.TrimSpace(lastNonEmpty(out))
}

// addSidecar makes p a sidecar pod, as the injector does: `meshd init-net`
// (the init container), then the sidecar as uid 1337 with its certs
// directory, then the app's ports served behind it.
func (m *mesh) addSidecar(p *netns.Pod, sa string, appPorts ...int) {
	m.t.Helper()
	ctx := context.Background()
	ports := make([]string, len(appPorts))
	for i, port := range appPorts {
		ports[i] = fmt.Sprint(port)
	}
	initArgs := []string{"init-net", "--proxy-uid", fmt.Sprint(ProxyUID)}
	if len(ports) > 0 {
		initArgs = append(initArgs, "--inbound-ports", strings.Join(ports, ","))
	}
	if out, err := p.Command(ctx, filepath.Join(bin, "meshd"), initArgs...).CombinedOutput(); err != nil {
		m.t.Fatalf("meshd init-net in pod %s: %v\n%s", p.Name, err, out)
	}
	// In a cluster the VIP is rewritten on the node, after the pod's own
	// capture saw it; keep that order in the pod's nat OUTPUT.
	if err := p.ServicesLast(); err != nil {
		m.t.Fatal(err)
	}
	certs := filepath.Join(m.dir, "certs-"+p.Name)
	if err := os.MkdirAll(certs, 0o755); err != nil {
		m.t.Fatal(err)
	}
	if err := os.Chown(certs, ProxyUID, ProxyUID); err != nil {
		m.t.Fatal(err)
	}
	m.certs[p.Name] = certs
	// The registry entry a cluster has from the Pod: service account,
	// labels (the Service selects app=<name>), address, container ports.
	m.writeConfig("workload-"+p.Name+".yaml", workloadConfig(p, sa, appPorts))
	tokenFile := filepath.Join(m.dir, "token-"+p.Name)
	if err := os.WriteFile(tokenFile, []byte(m.token(p.Namespace, sa)+"\n"), 0o600); err != nil {
		m.t.Fatal(err)
	}
	if err := os.Chown(tokenFile, ProxyUID, ProxyUID); err != nil {
		m.t.Fatal(err)
	}
	m.sidecarSA[p.Name] = sa
	m.startSidecar(p, tokenFile)
}

// startSidecar starts (or restarts) pod p's sidecar as uid 1337 and waits
// for its certificates; a restart reuses the certificate in its directory.
func (m *mesh) startSidecar(p *netns.Pod, tokenFile string) {
	m.t.Helper()
	certs, sa := m.certs[p.Name], m.sidecarSA[p.Name]
	args := []string{
		"sidecar", "--transparent",
		"--control", m.addr, "--control-dir", m.stateDir,
		"--token-file", tokenFile,
		"--workload", p.Name, "--namespace", p.Namespace, "--service-account", sa,
		"--certs-dir", certs,
		// The Workload API socket lives beside the certs directory, which
		// holds exactly the seed's three files.
		"--workload-api", filepath.Join(m.dir, "agent-"+p.Name+".sock"),
	}
	args = append(args, m.sidecarArgs...)
	cmd := p.CommandAs(context.Background(), ProxyUID, filepath.Join(bin, "meshd"), args...)
	cmd.Stdout, cmd.Stderr = prefixWriter(m.t, p.Name+"-sidecar"), prefixWriter(m.t, p.Name+"-sidecar")
	if err := m.c.Start(cmd); err != nil {
		m.t.Fatal(err)
	}
	m.sidecars[p.Name] = cmd
	waitFor(m.t, "certificates in "+certs, func() error {
		if err := m.c.Exited(cmd); err != nil {
			m.t.Fatal(err)
		}
		for _, f := range []string{"cert-chain.pem", "key.pem", "root-cert.pem"} {
			if _, err := os.Stat(filepath.Join(certs, f)); err != nil {
				return err
			}
		}
		return nil
	})
}

func lastNonEmpty(s string) string {
	lines := strings.Split(strings.TrimSpace(s), "\n")
	return lines[len(lines)-1]
}

// prefixWriter logs a process's output line by line with a prefix. exec
// copies into it from a goroutine that the cluster's Stop waits for, so no
// line is logged after the test ends.
func prefixWriter(t *testing.T, prefix string) io.Writer {
	return &linePrefixer{t: t, prefix: prefix}
}

type linePrefixer struct {
	t      *testing.T
	prefix string
	buf    []byte
}

func (w *linePrefixer) Write(p []byte) (int, error) {
	w.buf = append(w.buf, p...)
	for {
		i := bytes.IndexByte(w.buf, '\n')
		if i < 0 {
			break
		}
		w.t.Logf("[%s] %s", w.prefix, w.buf[:i])
		w.buf = w.buf[i+1:]
	}
	return len(p), nil
}

// workloadConfig is a pod's registry entry.
func workloadConfig(p *netns.Pod, sa string, ports []int) string {
	var b strings.Builder
	fmt.Fprintf(&b, `apiVersion: meshauth.io/v1alpha1
kind: Workload
metadata:
  name: %s
  namespace: %s
  labels:
    app: %s
spec:
  serviceAccount: %s
  address: %s
`, p.Name, p.Namespace, p.Name, sa, p.IP)
	if len(ports) > 0 {
		b.WriteString("  ports:\n")
		for _, port := range ports {
			fmt.Fprintf(&b, "  - number: %d\n    protocol: HTTP\n", port)
		}
	}
	return b.String()
}
