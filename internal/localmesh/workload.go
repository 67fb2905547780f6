package localmesh

import (
	"encoding/json"

	"context"
	"fmt"
	"github.com/meshauth/meshauth/internal/policy"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"time"
)

// WorkloadSpec describes one workload: an app and its sidecar.
type WorkloadSpec struct {
	Name, Namespace, ServiceAccount string
	// Service, if set, is the service the workload serves and ServicePort
	// its port (the seed's httpbin: 8000 in front of the app's port).
	Service     string
	ServicePort int
	// App is the app's command line; "{{port}}" in it is replaced with the
	// app's port (a free loopback port) when the workload serves a service.
	App []string
	// SelfRegister writes no Workload object: the sidecar registers itself
	// over its push stream (label app=<Name>, address, ports), as a VM or
	// a plain process would, and the Service (if any) admits it by listing
	// its service account in spec.serviceAccounts. Without it the workload
	// is declared in the config directory, as a Kubernetes Pod would be.
	SelfRegister bool
	// SidecarArgs are extra `meshd sidecar` flags, added after the ones
	// StartWorkload sets (tests use them for small timeouts and limits).
	SidecarArgs []string
}

// Workload is a running app + sidecar.
type Workload struct {
	Spec WorkloadSpec
	// CertsDir is where the sidecar's agent writes cert-chain.pem, key.pem
	// and root-cert.pem (the seed's /etc/certs).
	CertsDir string
	// AppAddr is where the app listens (loopback; only its sidecar should
	// call it). Empty for a client-only workload.
	AppAddr string
	// InboundAddr is the sidecar's inbound listener for the app's port:
	// where mesh traffic (and anything addressed to the service) arrives.
	InboundAddr string
	// OutboundProxy is the sidecar's HTTP proxy URL, the app's http_proxy.
	OutboundProxy string
	// AdminAddr is the sidecar's admin endpoint.
	AdminAddr string
	// Args is the sidecar's command line, for documentation.
	Args []string
	Proc *Proc
}

// Summary is a one-line description for progress output.
func (w *Workload) Summary() string {
	var parts []string
	if w.InboundAddr != "" {
		parts = append(parts, "inbound "+w.InboundAddr)
	}
	if w.OutboundProxy != "" {
		parts = append(parts, "http_proxy "+w.OutboundProxy)
	}
	return strings.Join(parts, ", ")
}

// Token asks the control plane for a join token bound to ns/sa, with the
// same command a user runs: meshctl token create.
func (m *Mesh) Token(ctx context.Context, ns, sa string) (string, error) {
	cmd := exec.CommandContext(ctx, m.cfg.Meshctl, "--dir", m.StateDir, "token", "create", "--namespace", ns, "--service-account", sa)
	var stderr strings.Builder
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		return "", fmt.Errorf("localmesh: meshctl token create -n %s -s %s: %w: %s", ns, sa, err, strings.TrimSpace(stderr.String()))
	}
	tok := strings.TrimSpace(string(out))
	if tok == "" || strings.ContainsAny(tok, " \n") {
		return "", fmt.Errorf("localmesh: meshctl token create printed %q, want one token", out)
	}
	return tok, nil
}

// StartWorkload creates a join token for the workload's identity, registers
// the workload (and its service) in the config directory, then starts its
// sidecar with the app as the sidecar's child, and waits until the
// certificates are written and the listeners accept connections.
func (m *Mesh) StartWorkload(ctx context.Context, spec WorkloadSpec) (*Workload, error) {
	w := &Workload{Spec: spec}
	wdir := filepath.Join(m.cfg.Dir, "workloads", spec.Name)
	w.CertsDir = filepath.Join(wdir, "certs")
	if err := os.MkdirAll(w.CertsDir, 0o700); err != nil {
		return nil, fmt.Errorf("localmesh: %w", err)
	}
	tok, err := m.Token(ctx, spec.Namespace, spec.ServiceAccount)
	if err != nil {
		return nil, err
	}
	tokenFile := filepath.Join(wdir, "join.token")
	if err := os.WriteFile(tokenFile, []byte(tok+"\n"), 0o600); err != nil {
		return nil, fmt.Errorf("localmesh: %w", err)
	}

	ports, err := freePorts(4)
	if err != nil {
		return nil, err
	}
	appPort, inPort, outPort, adminPort := ports[0], ports[1], ports[2], ports[3]
	w.OutboundProxy = fmt.Sprintf("http://127.0.0.1:%d", outPort)
	w.AdminAddr = fmt.Sprintf("127.0.0.1:%d", adminPort)
	args := []string{m.cfg.Meshd, "sidecar",
		"--control-dir", m.StateDir,
		"--token-file", tokenFile,
		"--namespace", spec.Namespace, "--service-account", spec.ServiceAccount, "--workload", spec.Name,
		"--certs-dir", w.CertsDir,
		// The Workload API socket lives beside, not in, the certs
		// directory, which holds exactly the seed's three files.
		"--workload-api", filepath.Join(wdir, "agent.sock"),
		"--outbound-listen", fmt.Sprintf("127.0.0.1:%d", outPort),
		// Only this user's processes may speak with the workload's
		// identity through its proxy: the mesh runs on a shared host.
		"--outbound-uid", strconv.Itoa(os.Getuid()),
		"--admin", w.AdminAddr,
	}
	if spec.SelfRegister {
		args = append(args, "--label", "app="+spec.Name)
	}
	if spec.Service != "" {
		w.AppAddr = fmt.Sprintf("127.0.0.1:%d", appPort)
		w.InboundAddr = fmt.Sprintf("127.0.0.1:%d", inPort)
		args = append(args, "--inbound", w.InboundAddr+"="+w.AppAddr)
		if err := m.WriteConfig("workload-"+spec.Name+".yaml", workloadYAML(spec, w.OutboundProxy, appPort, inPort)); err != nil {
			return nil, err
		}
	} else if !spec.SelfRegister { // a client that registers itself needs no config
		if err := m.WriteConfig("workload-"+spec.Name+".yaml", workloadYAML(spec, w.OutboundProxy, 0, 0)); err != nil {
			return nil, err
		}
	}
	args = append(args, spec.SidecarArgs...)
	if len(spec.App) > 0 {
		args = append(args, "--")
		for _, a := range spec.App {
			args = append(args, strings.ReplaceAll(a, "{{port}}", strconv.Itoa(appPort)))
		}
	}
	w.Args = args
	p, err := m.procs.Start(spec.Name, args, nil)
	if err != nil {
		return nil, err
	}
	w.Proc = p

	ctx, cancel := context.WithTimeout(ctx, m.cfg.StartTimeout)
	defer cancel()
	err = waitFor(ctx, func() error {
		if err := p.Exited(); err != nil {
			return permanent{err}
		}
		for _, f := range []string{"cert-chain.pem", "key.pem", "root-cert.pem"} {
			if _, err := os.Stat(filepath.Join(w.CertsDir, f)); err != nil {
				return fmt.Errorf("no %s in %s yet", f, w.CertsDir)
			}
		}
		if err := ready(w.AdminAddr); err != nil {
			return err
		}
		for _, a := range []string{w.InboundAddr, w.AppAddr} {
			if a == "" {
				continue
			}
			if err := Listening(a); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("localmesh: start %s: %w (log: %s)", spec.Name, err, p.LogPath)
	}
	return w, nil
}

// ready asks the sidecar's admin endpoint whether it is ready to serve.
func ready(admin string) error {
	c := http.Client{Timeout: time.Second}
	resp, err := c.Get("http://" + admin + "/healthz/ready")
	if err != nil {
		return fmt.Errorf("sidecar admin %s: %w", admin, err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("sidecar admin %s: /healthz/ready says %s", admin, resp.Status)
	}
	return nil
}

// workloadYAML registers a workload as a Kubernetes Pod would be: its
// service account, labels (which the Service selects), address, and for a
// server the app's port and the sidecar port that fronts it.
func workloadYAML(spec WorkloadSpec, proxyURL string, appPort, inPort int) string {
	var b strings.Builder
	if spec.SelfRegister {
		// Only the Service: the sidecar registers the workload itself, and
		// registration is closed by default, so the Service says which
		// identity may serve it.
		fmt.Fprintf(&b, `apiVersion: meshauth.io/v1alpha1
kind: Service
metadata:
  name: %s
  namespace: %s
spec:
  selector:
    app: %s
  serviceAccounts: [%s]
  ports:
  - name: http
    number: %d
    targetPort: %d
    protocol: HTTP
`, spec.Service, spec.Namespace, spec.Name, spec.ServiceAccount, spec.ServicePort, appPort)
		return b.String()
	}
	fmt.Fprintf(&b, `apiVersion: meshauth.io/v1alpha1
kind: Workload
metadata:
  name: %s
  namespace: %s
  labels:
    app: %s
  annotations:
    # Where this workload's sidecar proxies outbound calls, so that
    # meshctl check --reachability can call from it.
    meshauth.io/outbound-proxy: %s
spec:
  serviceAccount: %s
  address: 127.0.0.1
`, spec.Name, spec.Namespace, spec.Name, proxyURL, spec.ServiceAccount)
	if appPort != 0 {
		fmt.Fprintf(&b, `  ports:
  - name: http
    number: %d
    protocol: HTTP
    sidecarPort: %d
---
apiVersion: meshauth.io/v1alpha1
kind: Service
metadata:
  name: %s
  namespace: %s
spec:
  selector:
    app: %s
  ports:
  - name: http
    number: %d
    targetPort: %d
    protocol: HTTP
`, appPort, inPort, spec.Service, spec.Namespace, spec.Name, spec.ServicePort, appPort)
	}
	return b.String()
}

// freePorts returns n distinct free loopback ports.
func freePorts(n int) ([]int, error) {
	seen := map[int]bool{}
	var ports []int
	for len(ports) < n {
		p, err := FreePort()
		if err != nil {
			return nil, err
		}
		if !seen[p] {
			seen[p] = true
			ports = append(ports, p)
		}
	}
	return ports, nil
}

// WaitOutbound waits until the workload's sidecar has received, from the
// control plane's push stream, a snapshot that routes to service
// name.namespace (its admin /config_dump shows the snapshot in force). The
// control plane picks up config files on its next poll, so a workload that
// starts right after a config change needs this before it calls out.
func (w *Workload) WaitOutbound(ctx context.Context, name, namespace string, timeout time.Duration) error {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	c := http.Client{Timeout: time.Second}
	err := waitFor(ctx, func() error {
		if err := w.Proc.Exited(); err != nil {
			return permanent{err}
		}
		resp, err := c.Get("http://" + w.AdminAddr + "/config_dump")
		if err != nil {
			return err
		}
		defer resp.Body.Close()
		var dump struct {
			Snapshot *policy.Snapshot `json:"snapshot"`
		}
		if err := json.NewDecoder(resp.Body).Decode(&dump); err != nil {
			return fmt.Errorf("config_dump: %w", err)
		}
		if dump.Snapshot != nil {
			for _, s := range dump.Snapshot.Outbound {
				if s.Name == name && s.Namespace == namespace && len(s.Endpoints) > 0 {
					return nil
				}
			}
		}
		return fmt.Errorf("the sidecar's config has no route with endpoints to %s.%s yet", name, namespace)
	})
	if err != nil {
		return fmt.Errorf("localmesh: %s: %w", w.Spec.Name, err)
	}
	return nil
}
