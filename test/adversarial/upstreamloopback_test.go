package adversarial

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/meshauth/meshauth/internal/netns"
)

// Issue #11 finding 8: an --upstream port speaks with the workload's
// identity, so, like the explicit proxy, it serves only loopback clients
// whatever address it is bound to. A real sidecar runs in a network
// namespace "pod" (internal/netns) with its --upstream port and its proxy
// on 0.0.0.0; curl from the node namespace — another host as far as the
// pod can tell — is reset, with the reason logged, while curl inside the
// pod on 127.0.0.1 is served. Needs root; skipped otherwise.
func TestUpstreamPortLoopbackOnly(t *testing.T) {
	needBinaries(t)
	needTool(t, "curl")
	if err := netns.Available(); err != nil {
		t.Skip(err)
	}
	// A mesh only for sleep's certificate: the pod's sidecar uses it as
	// static certificates (no control plane reachable from the pod).
	m := startMesh(t, meshOptions{})
	cl, err := netns.New(netns.Config{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cl.Close() })
	pod, err := cl.AddPod("sleep", "default")
	if err != nil {
		t.Fatal(err)
	}
	logPath := filepath.Join(t.TempDir(), "pod-sidecar.log")
	logf, err := os.Create(logPath)
	if err != nil {
		t.Fatal(err)
	}
	defer logf.Close()
	// The upstream port leads to the sidecar's own admin port (not a mesh
	// service: passed through), so a served client gets an HTTP answer.
	sc := pod.Command(context.Background(), filepath.Join(bin, "meshd"), "sidecar",
		"--static-certs", "--certs-dir", m.Sleep.CertsDir, "--namespace", "default", "--service-account", "sleep",
		"--admin", "127.0.0.1:15000", "--outbound-listen", "0.0.0.0:15001",
		"--upstream", "0.0.0.0:15300=127.0.0.1:15000")
	sc.Stdout, sc.Stderr = logf, logf
	if err := cl.Start(sc); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	code := func(cmd *exec.Cmd) string {
		out, _ := cmd.Output() // a reset is curl exit 56 and code 000
		return string(out)
	}
	curlArgs := []string{"-s", "-o", "/dev/null", "-w", "%{http_code}", "--max-time", "5"}
	// The workload itself: served.
	deadline := time.Now().Add(15 * time.Second)
	for {
		if got := code(pod.Command(ctx, "curl", append(curlArgs, "http://127.0.0.1:15300/healthz/ready")...)); got != "000" {
			break
		}
		if time.Now().After(deadline) {
			b, _ := os.ReadFile(logPath)
			t.Fatalf("the pod's own curl on 127.0.0.1 was never served; sidecar log:\n%s", b)
		}
		time.Sleep(200 * time.Millisecond)
	}
	// Another host: reset, for the upstream port and the explicit proxy.
	if got := code(cl.NodeCommand(ctx, "curl", append(curlArgs, "http://"+pod.IP+":15300/healthz/ready")...)); got != "000" {
		t.Errorf("curl from the node to the upstream port %s:15300: HTTP %s, want a reset", pod.IP, got)
	}
	if got := code(cl.NodeCommand(ctx, "curl", append(curlArgs, "-x", "http://"+pod.IP+":15001", "http://127.0.0.1:15000/healthz/ready")...)); got != "000" {
		t.Errorf("curl from the node through the explicit proxy %s:15001: HTTP %s, want a reset", pod.IP, got)
	}
	deadline = time.Now().Add(5 * time.Second)
	for {
		b, _ := os.ReadFile(logPath)
		log := string(b)
		up := strings.Contains(log, `"reason":"non_loopback_client"`) && strings.Contains(log, `"listener":"upstream 127.0.0.1:15000","local":"`+pod.IP+`:15300","peer":"`+cl.NodeIP()+`:`)
		px := strings.Contains(log, `"listener":"explicit proxy","local":"`+pod.IP+`:15001","peer":"`+cl.NodeIP()+`:`)
		if up && px {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("refusals not logged with reason non_loopback_client (upstream %v, proxy %v):\n%s", up, px, log)
		}
		time.Sleep(100 * time.Millisecond)
	}
}
