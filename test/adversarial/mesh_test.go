// Package adversarial is the standing attack suite: every hole an attacker
// found in meshauth (issue #11) and every class of attack already refused,
// replayed end to end against real binaries on loopback with real clients
// (openssl s_client, curl, raw sockets, grpc-go). Each test asserts the
// refusal, the reason the component logged for it, and, where the attack is
// about resources, that file descriptors and goroutines return to baseline.
//
// The harness (this file) builds meshd and meshctl once, and starts a local
// mesh per test: `meshd control` with a config directory, and workloads whose
// sidecars are real `meshd sidecar` processes. The default server app is this
// test binary itself in "app" mode (see runApp): it echoes what it received,
// byte for byte where it matters (request target, header names), so a test
// sees exactly what an app behind the sidecar would see.
//
// docs/security.md maps each claim of the threat model to the test here that
// proves it.
package adversarial

import (
	"bufio"
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"golang.org/x/net/http2"
	"golang.org/x/net/http2/h2c"

	"github.com/meshauth/meshauth/internal/kube/kubetest"
	"github.com/meshauth/meshauth/internal/localmesh"
)

// bin holds the binaries TestMain built: meshd and meshctl.
var (
	bin      string
	buildErr error
)

func TestMain(m *testing.M) {
	// App mode: the test binary is the app behind a sidecar.
	if len(os.Args) > 2 && os.Args[1] == "adversarial-app" {
		runApp(os.Args[2])
		return
	}
	flag.Parse()
	code := func() int {
		if testing.Short() {
			return m.Run() // every mesh test skips in -short mode
		}
		bin, buildErr = localmesh.BuildTemp("meshauth-adversarial-bin-", "../../cmd/meshd", "../../cmd/meshd-sidecar", "../../cmd/meshctl")
		if bin != "" {
			defer os.RemoveAll(bin)
		}
		// A real etcd and kube-apiserver for the tests of the CA replicas
		// on Kubernetes (kubetest.Need skips them, or fails them with
		// MESHAUTH_REQUIRE_KUBE=1, when they cannot start).
		return kubetest.Main(m)
	}()
	os.Exit(code)
}

// needBinaries skips in -short mode and fails if the binaries did not build.
func needBinaries(t *testing.T) {
	t.Helper()
	if testing.Short() {
		t.Skip("skipping adversarial end-to-end test in -short mode")
	}
	if buildErr != nil {
		t.Fatal(buildErr)
	}
}

// needTool skips when a real client the attack uses is not installed
// (make deps installs them; CI has them).
func needTool(t *testing.T, name string) {
	t.Helper()
	if _, err := exec.LookPath(name); err != nil {
		t.Skipf("skipping: the attack uses %s (make deps installs it)", name)
	}
}

// meshOptions shapes one test's mesh. The zero value is the seed's: mesh-wide
// MUTUAL_TLS, httpbin (the echo app) serving service httpbin:8000, and sleep
// as a client.
type meshOptions struct {
	// AuthPolicy is MeshConfig's authPolicy; "" means MUTUAL_TLS.
	AuthPolicy string
	// Config holds extra config files (name -> YAML), written before the
	// control plane starts.
	Config map[string]string
	// App is httpbin's app command line ({{port}} is its port); nil means
	// this binary's echo app.
	App []string
	// HttpbinArgs and SleepArgs are extra `meshd sidecar` flags.
	HttpbinArgs, SleepArgs []string
	// NoSleep starts no sleep workload.
	NoSleep bool
}

// mesh is a running local mesh for one test.
type mesh struct {
	*localmesh.Mesh
	Dir            string
	Httpbin, Sleep *localmesh.Workload
}

// startMesh starts the control plane and the workloads, and stops them all
// when the test ends. It waits until sleep's sidecar routes to httpbin.
func startMesh(t *testing.T, o meshOptions) *mesh {
	t.Helper()
	needBinaries(t)
	dir := t.TempDir()
	lm, err := localmesh.New(localmesh.Config{
		Dir:   dir,
		Meshd: filepath.Join(bin, "meshd"), Meshctl: filepath.Join(bin, "meshctl"),
		StartTimeout: 30 * time.Second,
	})
	if err != nil {
		t.Fatal(err)
	}
	m := &mesh{Mesh: lm, Dir: dir}
	t.Cleanup(func() {
		lm.Close()
		if t.Failed() {
			m.dumpLogs(t)
		}
	})
	mode := o.AuthPolicy
	if mode == "" {
		mode = "MUTUAL_TLS"
	}
	if err := lm.WriteConfig("mesh.yaml", meshYAML(mode)); err != nil {
		t.Fatal(err)
	}
	for name, y := range o.Config {
		if err := lm.WriteConfig(name, y); err != nil {
			t.Fatal(err)
		}
	}
	ctx := context.Background()
	if err := lm.StartControl(ctx); err != nil {
		t.Fatal(err)
	}
	app := o.App
	if app == nil {
		self, err := os.Executable()
		if err != nil {
			t.Fatal(err)
		}
		app = []string{self, "adversarial-app", "127.0.0.1:{{port}}"}
	}
	m.Httpbin, err = lm.StartWorkload(ctx, localmesh.WorkloadSpec{
		Name: "httpbin", Namespace: "default", ServiceAccount: "httpbin",
		Service: "httpbin", ServicePort: 8000,
		App: app, SidecarArgs: o.HttpbinArgs,
	})
	if err != nil {
		t.Fatal(err)
	}
	if o.NoSleep {
		return m
	}
	m.Sleep, err = lm.StartWorkload(ctx, localmesh.WorkloadSpec{
		Name: "sleep", Namespace: "default", ServiceAccount: "sleep",
		SidecarArgs: o.SleepArgs,
	})
	if err != nil {
		t.Fatal(err)
	}
	if err := m.Sleep.WaitOutbound(ctx, "httpbin", "default", 30*time.Second); err != nil {
		t.Fatal(err)
	}
	return m
}

func meshYAML(authPolicy string) string {
	return `apiVersion: meshauth.io/v1alpha1
kind: MeshConfig
metadata:
  name: mesh
spec:
  authPolicy: ` + authPolicy + "\n"
}

// Log returns what the named process (control, httpbin, sleep, ...) has
// logged so far.
func (m *mesh) Log(name string) string {
	b, _ := os.ReadFile(filepath.Join(m.LogDir(), name+".log"))
	return string(b)
}

// WaitLog waits until the named process has logged a line containing every
// one of the substrings, and returns that line. It fails the test with the
// log's tail if none appears within the timeout.
func (m *mesh) WaitLog(t *testing.T, name string, timeout time.Duration, subs ...string) string {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		for _, ln := range strings.Split(m.Log(name), "\n") {
			all := true
			for _, s := range subs {
				if !strings.Contains(ln, s) {
					all = false
					break
				}
			}
			if all && ln != "" {
				return ln
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s never logged a line with %q within %s; its log ends:\n%s", name, subs, timeout, localmesh.Tail(filepath.Join(m.LogDir(), name+".log"), 20))
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// Ctl runs meshctl against this mesh's control plane and returns its
// standard output, standard error and exit code.
func (m *mesh) Ctl(t *testing.T, args ...string) (stdout, stderr string, code int) {
	t.Helper()
	cmd := exec.Command(m.Meshctl(), append([]string{"--dir", m.StateDir}, args...)...)
	var o, e strings.Builder
	cmd.Stdout, cmd.Stderr = &o, &e
	if err := cmd.Run(); err != nil {
		ee, ok := err.(*exec.ExitError)
		if !ok {
			t.Fatalf("meshctl %v: %v", args, err)
		}
		code = ee.ExitCode()
	}
	return o.String(), e.String(), code
}

func (m *mesh) dumpLogs(t *testing.T) {
	entries, _ := os.ReadDir(m.LogDir())
	for _, e := range entries {
		t.Logf("--- %s (tail)\n%s", e.Name(), localmesh.Tail(filepath.Join(m.LogDir(), e.Name()), 30))
	}
}

// openssl runs `openssl s_client` against addr with the given workload's
// key, certificate and root (certsDir "" presents no client certificate),
// offering alpn ("" offers none), writes request, and returns what the
// server sent back until it closed the connection (bounded by 15 s).
func openssl(t *testing.T, addr, certsDir, alpn, request string) string {
	t.Helper()
	needTool(t, "openssl")
	args := []string{"s_client", "-connect", addr, "-quiet", "-verify_quiet"}
	if certsDir != "" {
		args = append(args,
			"-cert", filepath.Join(certsDir, "cert-chain.pem"),
			"-key", filepath.Join(certsDir, "key.pem"),
			"-CAfile", filepath.Join(certsDir, "root-cert.pem"))
	}
	if alpn != "" {
		args = append(args, "-alpn", alpn)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, "openssl", args...)
	cmd.Stdin = strings.NewReader(request)
	out, _ := cmd.CombinedOutput() // a refusal is an outcome, not an error
	return string(out)
}

// curl runs curl with args (and -sS, bounded by 15 s) and returns stdout,
// stderr and the exit code.
func curl(t *testing.T, args ...string) (stdout, stderr string, code int) {
	t.Helper()
	needTool(t, "curl")
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, "curl", append([]string{"-sS", "--max-time", "10"}, args...)...)
	var o, e strings.Builder
	cmd.Stdout, cmd.Stderr = &o, &e
	err := cmd.Run()
	if ee, ok := err.(*exec.ExitError); ok {
		code = ee.ExitCode()
	} else if err != nil {
		t.Fatalf("curl %v: %v", args, err)
	}
	return o.String(), e.String(), code
}

// appSaw is what the echo app received: the request line's target as sent,
// and every header under the name the sidecar sent it (Go canonicalises
// hyphenated names; underscores survive as written).
type appSaw struct {
	Method  string              `json:"method"`
	Target  string              `json:"target"`
	Proto   string              `json:"proto"`
	Headers map[string][]string `json:"headers"`
}

// header returns every value of every header whose name, compared
// case-insensitively, equals name.
func (a appSaw) header(name string) []string {
	var out []string
	for k, v := range a.Headers {
		if strings.EqualFold(k, name) {
			out = append(out, v...)
		}
	}
	return out
}

// parseAppSaw finds the echo app's JSON body in a raw HTTP response.
func parseAppSaw(t *testing.T, raw string) appSaw {
	t.Helper()
	i := strings.Index(raw, `{"method"`)
	if i < 0 {
		t.Fatalf("no answer from the echo app in:\n%s", raw)
	}
	var a appSaw
	if err := json.NewDecoder(strings.NewReader(raw[i:])).Decode(&a); err != nil {
		t.Fatalf("echo app answer: %v in:\n%s", err, raw)
	}
	return a
}

// statusOf returns the status code of the first HTTP response in raw, or 0.
func statusOf(raw string) int {
	br := bufio.NewReader(strings.NewReader(raw))
	for {
		ln, err := br.ReadString('\n')
		if strings.HasPrefix(ln, "HTTP/1.") {
			f := strings.Fields(ln)
			if len(f) >= 2 {
				n, _ := strconv.Atoi(f[1])
				return n
			}
		}
		if err != nil {
			return 0
		}
	}
}

// fds counts the open file descriptors of a process.
func fds(t *testing.T, pid int) int {
	t.Helper()
	ents, err := os.ReadDir(fmt.Sprintf("/proc/%d/fd", pid))
	if err != nil {
		t.Fatalf("fds of pid %d: %v", pid, err)
	}
	return len(ents)
}

// goroutines reads go_goroutines from a sidecar's admin /metrics.
func goroutines(t *testing.T, admin string) int {
	t.Helper()
	c := http.Client{Timeout: 5 * time.Second}
	resp, err := c.Get("http://" + admin + "/metrics")
	if err != nil {
		t.Fatalf("metrics of %s: %v", admin, err)
	}
	defer resp.Body.Close()
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		if v, ok := strings.CutPrefix(sc.Text(), "go_goroutines "); ok {
			n, err := strconv.ParseFloat(v, 64)
			if err != nil {
				t.Fatalf("go_goroutines %q: %v", v, err)
			}
			return int(n)
		}
	}
	t.Fatalf("no go_goroutines in %s/metrics", admin)
	return 0
}

// usage is a sidecar's fds and goroutines at one moment.
type usage struct{ FDs, Goroutines int }

func (m *mesh) usage(t *testing.T, w *localmesh.Workload) usage {
	return usage{fds(t, w.Proc.Cmd.Process.Pid), goroutines(t, w.AdminAddr)}
}

// waitBaseline waits until the sidecar's fds and goroutines are back within
// slack of base, and fails with both readings if they are not within the
// timeout. The slack covers the admin connection that measures and the
// control plane stream's own churn.
func (m *mesh) waitBaseline(t *testing.T, w *localmesh.Workload, base usage, slack int, timeout time.Duration) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		u := m.usage(t, w)
		if u.FDs <= base.FDs+slack && u.Goroutines <= base.Goroutines+slack {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s did not return to baseline within %s: now %d fds, %d goroutines; baseline %d fds, %d goroutines", w.Spec.Name, timeout, u.FDs, u.Goroutines, base.FDs, base.Goroutines)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// runApp is the echo app: GET/POST anything answers with what it received
// (appSaw as JSON); /hang never answers while the client stays;
// /upgrade-early answers 101 before reading the body and echoes; /slow-body
// sends headers, then one byte, then nothing. It speaks HTTP/1.1 and h2c
// (prior knowledge), for ports declared GRPC or HTTP2.
func runApp(addr string) {
	h := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch r.URL.Path {
		case "/hang":
			<-r.Context().Done()
			return
		case "/upgrade-early":
			// Switches protocols before reading the request body, then
			// echoes every byte that follows the head (the body, then
			// the tunnel's bytes).
			conn, brw, err := w.(http.Hijacker).Hijack()
			if err != nil {
				return
			}
			defer conn.Close()
			brw.WriteString("HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: echo\r\n\r\n")
			brw.Flush()
			buf := make([]byte, 4096)
			for {
				n, err := brw.Read(buf)
				if n > 0 {
					conn.Write(buf[:n])
				}
				if err != nil {
					return
				}
			}
		case "/slow-body":
			w.Header().Set("Content-Length", "100")
			w.WriteHeader(200)
			w.Write([]byte("x"))
			w.(http.Flusher).Flush()
			<-r.Context().Done()
			return
		}
		io.Copy(io.Discard, r.Body)
		w.Header().Set("Content-Type", "application/json")
		json.NewEncoder(w).Encode(appSaw{Method: r.Method, Target: r.RequestURI, Proto: r.Proto, Headers: r.Header})
	})
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		fmt.Fprintln(os.Stderr, "adversarial-app:", err)
		os.Exit(1)
	}
	srv := &http.Server{Handler: h2c.NewHandler(h, &http2.Server{}), ReadHeaderTimeout: 10 * time.Second}
	fmt.Fprintln(os.Stderr, "adversarial-app: listening on", addr)
	if err := srv.Serve(ln); err != nil {
		fmt.Fprintln(os.Stderr, "adversarial-app:", err)
		os.Exit(1)
	}
}
