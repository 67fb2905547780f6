package main

// meshctl demo: the seed walkthrough ("Testing Mutual TLS", Istio 0.8) on a
// fresh local mesh, with real curl and openssl, printing what was OBSERVED.

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"regexp"
	"strings"
	"syscall"
	"time"

	"github.com/spf13/cobra"

	"github.com/meshauth/meshauth/internal/localmesh"
	"github.com/meshauth/meshauth/internal/walkthrough"
	"github.com/meshauth/meshauth/samples/httpbin"
)

// newDemoCmd builds `meshctl demo`.
func newDemoCmd() *cobra.Command {
	var keep bool
	cmd := &cobra.Command{
		Use:   "demo",
		Short: "Replay the seed's mutual TLS walkthrough on a fresh local mesh (no root needed)",
		Long: `demo starts a fresh local mesh in a temporary directory (control plane with
mesh-wide MUTUAL_TLS; httpbin with a sidecar, service account httpbin; sleep
with a sidecar, service account sleep; a legacy client with no sidecar), then
replays "Testing Mutual TLS" command for command with real curl and openssl.
Every printed result is what the command did; each is compared with what the
seed shows, and demo exits 1 if any differs. Everything it started is stopped
and its directory removed when it ends, also on Ctrl-C.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			ctx, stop := signal.NotifyContext(cmd.Context(), os.Interrupt, syscall.SIGTERM)
			defer stop()
			return runDemo(ctx, cmd.OutOrStdout(), keep)
		},
	}
	cmd.Flags().BoolVar(&keep, "keep", false, "keep the temporary directory (logs, certificates) for inspection")
	return cmd
}

// newSampleCmd builds `meshctl sample`, which runs the sample apps from the meshctl binary itself, so `make
// demo` needs nothing but bin/meshctl and bin/meshd. The standalone binaries
// are samples/httpbin/cmd/httpbin and samples/sleep.
func newSampleCmd() *cobra.Command {
	var listen string
	cmd := &cobra.Command{
		Use:   "sample httpbin|sleep",
		Short: "Run a sample app: httpbin (--listen ADDR) or sleep (used by demo and docs/walkthrough.md)",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			ctx, stop := signal.NotifyContext(cmd.Context(), os.Interrupt, syscall.SIGTERM)
			defer stop()
			switch args[0] {
			case "httpbin":
				return httpbin.Serve(ctx, listen, demoLogger())
			case "sleep":
				<-ctx.Done()
				return nil
			}
			return fmt.Errorf("unknown sample %q: want httpbin or sleep", args[0])
		},
	}
	cmd.Flags().StringVar(&listen, "listen", "127.0.0.1:8080", "address for the httpbin sample")
	return cmd
}

// Seed expectations, one per command of "Testing the authentication setup".
var (
	wantOK        = walkthrough.SeedOK
	wantReset     = walkthrough.SeedReset
	wantTLSFailed = walkthrough.SeedTLSFailed
)

// demo holds the running mesh and what the walkthrough needs to know about it.
type demo struct {
	r    *walkthrough.Reporter
	m    *localmesh.Mesh
	dir  string
	self string // this meshctl binary

	httpbin, sleep *localmesh.Workload
	legacy         *localmesh.Proc
}

func runDemo(ctx context.Context, out io.Writer, keep bool) (err error) {
	start := time.Now()
	// The seed's commands are real curl and openssl; without them nothing
	// could be observed.
	for _, tool := range []string{"curl", "openssl"} {
		if _, err := exec.LookPath(tool); err != nil {
			return &exitError{code: 1, err: fmt.Errorf("demo: %s is not installed; the walkthrough runs the seed's real commands (Debian: apt-get install curl openssl, or make deps)", tool)}
		}
	}
	r := walkthrough.NewReporter(out)
	dir, err := os.MkdirTemp("", "meshauth-demo-")
	if err != nil {
		return fmt.Errorf("demo: temporary directory: %w", err)
	}
	r.Printf("meshctl demo: replaying \"Testing Mutual TLS\" (Istio 0.8) on a fresh local mesh in %s\n", dir)
	self, _ := os.Executable()
	m, err := localmesh.New(localmesh.Config{Dir: dir, Meshctl: self, Log: demoLogger()})
	if err != nil {
		os.RemoveAll(dir)
		return err
	}
	d := &demo{r: r, m: m, dir: dir, self: self}
	defer func() {
		n := len(m.Running())
		m.Close()
		if keep {
			r.Printf("\nstopped %d processes; kept %s (logs in %s)\n", n, dir, m.LogDir())
			return
		}
		if rmErr := os.RemoveAll(dir); rmErr != nil {
			r.Printf("\nstopped %d processes; could not remove %s: %v\n", n, dir, rmErr)
			return
		}
		r.Printf("\nstopped %d processes and removed %s\n", n, dir)
	}()

	if err := d.startMesh(ctx); err != nil {
		if ctx.Err() != nil {
			r.Printf("\ninterrupted; stopping everything the demo started\n")
			return &exitError{code: 130, err: errors.New("demo: interrupted")}
		}
		r.Printf("\nthe mesh did not start, so nothing could be observed (rerun with --keep to read the logs in %s)\n", m.LogDir())
		return &exitError{code: 1, err: errors.New("demo: the local mesh did not start (see above)")}
	}
	d.verify(ctx)
	d.testAuth(ctx)
	d.checkMesh(ctx)
	if ctx.Err() != nil {
		r.Printf("\ninterrupted; the observations above are incomplete\n")
		return &exitError{code: 130, err: errors.New("demo: interrupted")}
	}

	fails := r.Failures()
	r.Printf("\n%d observations as expected, %d differ (%s)\n", r.Passes(), len(fails), time.Since(start).Round(100*time.Millisecond))
	if len(fails) > 0 {
		for _, f := range fails {
			r.Printf("  differs: %s\n", f)
		}
		return &exitError{code: 1, err: fmt.Errorf("demo: %d observations differ from what the seed shows", len(fails))}
	}
	return nil
}

// startMesh is the seed's "Before you begin": install with global mutual TLS,
// deploy httpbin and sleep with sidecars, and a sleep without one (legacy).
func (d *demo) startMesh(ctx context.Context) error {
	r := d.r
	r.Section("Before you begin: a local mesh with global mutual TLS")
	done := r.Progress("[1/4] control plane (CA, config, registry, push)")
	if err := d.m.WriteConfig("mesh.yaml", demoMeshConfig); err != nil {
		done("", err)
		return err
	}
	// The legacy pod is registered up front, like a Pod the API server
	// knows, so explain and check know it has no sidecar.
	if err := d.m.WriteConfig("workload-legacy-sleep.yaml", demoLegacyWorkload); err != nil {
		done("", err)
		return err
	}
	if err := d.m.StartControl(ctx); err != nil {
		done("", err)
		return err
	}
	done("listening on "+d.m.ControlAddr, nil)

	var err error
	done = r.Progress("[2/4] httpbin with a sidecar (service account httpbin)")
	d.httpbin, err = d.m.StartWorkload(ctx, localmesh.WorkloadSpec{
		Name: "httpbin", Namespace: "default", ServiceAccount: "httpbin",
		Service: "httpbin", ServicePort: 8000,
		App: []string{d.self, "sample", "httpbin", "--listen", "127.0.0.1:{{port}}"},
	})
	if err != nil {
		done("", err)
		return err
	}
	done(d.httpbin.Summary(), nil)

	done = r.Progress("[3/4] sleep with a sidecar (service account sleep)")
	d.sleep, err = d.m.StartWorkload(ctx, localmesh.WorkloadSpec{
		Name: "sleep", Namespace: "default", ServiceAccount: "sleep",
		App: []string{d.self, "sample", "sleep"},
	})
	if err != nil {
		done("", err)
		return err
	}
	done(d.sleep.Summary(), nil)

	// The control plane reads new config files on its next poll and pushes
	// them; sleep's first call must not race that.
	done = r.Progress("      sleep's sidecar gets httpbin's route from the control plane")
	if err := d.sleep.WaitOutbound(ctx, "httpbin", "default", 20*time.Second); err != nil {
		done("", err)
		return err
	}
	done("", nil)

	done = r.Progress("[4/4] legacy sleep with no sidecar (namespace legacy)")
	d.legacy, err = d.m.Start("legacy-sleep", []string{d.self, "sample", "sleep"}, nil)
	if err != nil {
		done("", err)
		return err
	}
	done(fmt.Sprintf("pid %d", d.legacy.Cmd.Process.Pid), nil)
	return nil
}

// demoMeshConfig is the seed's istio-demo-auth.yaml in one line: mutual TLS
// for the whole mesh.
const demoMeshConfig = `# The seed installs Istio with istio-demo-auth.yaml: global mutual TLS.
apiVersion: meshauth.io/v1alpha1
kind: MeshConfig
metadata:
  name: mesh
spec:
  authPolicy: MUTUAL_TLS
`

const demoLegacyWorkload = `# The seed's legacy pod: sleep in namespace legacy, without a sidecar.
apiVersion: meshauth.io/v1alpha1
kind: Workload
metadata:
  name: sleep
  namespace: legacy
  labels:
    app: sleep
spec:
  serviceAccount: sleep
  address: 127.0.0.1
  sidecar: false
`

// shell runs a pipeline the way the seed writes it, printing the line, and
// returns what it observed. A pipeline keeps the seed's own grep so the
// output is the seed's.
func (d *demo) shell(ctx context.Context, line string) (walkthrough.Observation, error) {
	d.r.Command(line)
	cmd := exec.CommandContext(ctx, "sh", "-c", line)
	// "meshctl" in the line is this binary, wherever it was built.
	cmd.Env = append(os.Environ(), "MESHAUTH_DIR="+d.m.StateDir, "PATH="+filepath.Dir(d.self)+string(os.PathListSeparator)+os.Getenv("PATH"))
	o, err := walkthrough.Run(cmd)
	if err != nil {
		return o, err
	}
	d.r.Output(o)
	return o, nil
}

// meshctl is how the demo shows a meshctl command: as the user types it,
// with the state directory in the environment.
func (d *demo) meshctlLine(args ...string) string {
	return walkthrough.Quote(append([]string{"meshctl"}, args...))
}

// verify is the seed's "Verifying Istio's mutual TLS authentication setup".
func (d *demo) verify(ctx context.Context) {
	r := d.r
	r.Section("Verifying the CA (the seed's Citadel)")
	r.Note("export MESHAUTH_DIR=%s   # where meshctl finds the control plane", d.m.StateDir)
	if o, err := d.run(ctx, "ca", "status"); err != nil {
		r.Fail("CA is up", err)
	} else {
		signing := regexp.MustCompile(`(?m)^Signing cert:\s*(.*)$`).FindStringSubmatch(o.Stdout)
		got := fmt.Sprintf("exit %d, no signing certificate", o.Exit)
		if signing != nil {
			got = fmt.Sprintf("exit %d, signing with %s", o.Exit, strings.TrimSpace(signing[1]))
		}
		r.Check("control plane and CA are up", o.Exit == 0 && signing != nil, got, "exit 0 and a signing certificate")
	}

	r.Section("Verifying service configuration")
	r.Note("the installation mode (the seed greps authPolicy from the istio configmap)")
	if o, err := d.shell(ctx, d.meshctlLine("get", "meshconfig", "-o", "yaml")+" | grep authPolicy | head -1"); err != nil {
		r.Fail("mesh mode", err)
	} else {
		r.Check("mesh-wide authPolicy", strings.Contains(o.Stdout, "MUTUAL_TLS"), strings.TrimSpace(o.Stdout), "authPolicy: MUTUAL_TLS")
	}
	r.Note("authentication policies (the seed: kubectl get policies.authentication.istio.io -n default -o yaml)")
	if o, err := d.run(ctx, "get", "policies", "-n", "default", "-o", "yaml"); err != nil {
		r.Fail("policies", err)
	} else {
		r.Check("meshctl get policies answers", o.Exit == 0, fmt.Sprintf("exit %d", o.Exit), "exit 0")
	}
	r.Note("destination rules, in every namespace (the seed: kubectl get destinationrules.networking.istio.io --all-namespaces -o yaml)")
	if o, err := d.run(ctx, "get", "destinationrules", "-o", "yaml"); err != nil {
		r.Fail("destination rules", err)
	} else {
		r.Check("meshctl get destinationrules answers", o.Exit == 0, fmt.Sprintf("exit %d", o.Exit), "exit 0")
	}
	r.Note("and whether servers and clients agree, the quick way the seed wished for (tls-check)")
	if o, err := d.run(ctx, "tls-check"); err != nil {
		r.Fail("tls-check", err)
	} else {
		ok := o.Exit == 0 && strings.Contains(o.Stdout, "httpbin") && !strings.Contains(o.Stdout, "CONFLICT")
		got := fmt.Sprintf("exit %d, httpbin listed: %v, CONFLICT: %v", o.Exit, strings.Contains(o.Stdout, "httpbin"), strings.Contains(o.Stdout, "CONFLICT"))
		r.Check("tls-check shows httpbin with no CONFLICT", ok, got, "exit 0, httpbin listed: true, CONFLICT: false")
	}

	r.Section("Verifying keys and certificates installation")
	certs := d.httpbin.CertsDir
	if o, err := d.shell(ctx, "ls "+certs); err != nil {
		r.Fail("certificate files", err)
	} else {
		ok := o.Exit == 0
		for _, f := range []string{"cert-chain.pem", "key.pem", "root-cert.pem"} {
			ok = ok && regexp.MustCompile(`(?m)^`+regexp.QuoteMeta(f)+`$`).MatchString(o.Stdout)
		}
		r.Check("httpbin's sidecar has the three files", ok, strings.Join(strings.Fields(o.Stdout), " "), "cert-chain.pem key.pem root-cert.pem")
	}
	chain := filepath.Join(certs, "cert-chain.pem")
	if o, err := d.shell(ctx, "cat "+chain+" | openssl x509 -text -noout | grep Validity -A 2"); err != nil {
		r.Fail("certificate validity", err)
	} else {
		nb, na, perr := parseValidity(o.Stdout)
		now := time.Now()
		if perr != nil {
			r.Fail("certificate is valid now", perr)
		} else {
			r.Check("certificate is valid now", !now.Before(nb) && now.Before(na),
				fmt.Sprintf("now %s between Not Before and Not After", now.UTC().Format(opensslTime)), "current time between Not Before and Not After")
		}
	}
	if o, err := d.shell(ctx, "cat "+chain+" | openssl x509 -text -noout | grep 'Subject Alternative Name' -A 1"); err != nil {
		r.Fail("certificate identity", err)
	} else {
		want := "URI:spiffe://cluster.local/ns/default/sa/httpbin"
		r.Check("httpbin's identity (SAN)", strings.Contains(o.Stdout, want), lastLine(o.Stdout), want)
	}
}

// run runs this meshctl with args against the demo's control plane.
func (d *demo) run(ctx context.Context, args ...string) (walkthrough.Observation, error) {
	d.r.Command(d.meshctlLine(args...))
	cmd := exec.CommandContext(ctx, d.self, args...)
	cmd.Env = append(os.Environ(), "MESHAUTH_DIR="+d.m.StateDir)
	o, err := walkthrough.Run(cmd)
	if err != nil {
		return o, err
	}
	d.r.Output(o)
	return o, nil
}

// testAuth is the seed's "Testing the authentication setup".
func (d *demo) testAuth(ctx context.Context) {
	r := d.r
	r.Section("Testing the authentication setup")
	seedW := `%{http_code}\n`

	r.Note("Request from the sleep app to the httpbin service should succeed (200).")
	r.Note("The app reaches the mesh through its sidecar: http_proxy=%s", d.sleep.OutboundProxy)
	proxyEnv := append(os.Environ(), "http_proxy="+d.sleep.OutboundProxy, "HTTP_PROXY=", "no_proxy=", "NO_PROXY=")
	args := []string{"curl", "httpbin:8000/headers", "-o", "/dev/null", "-s", "-w", seedW}
	cmd := exec.CommandContext(ctx, args[0], args[1:]...)
	cmd.Env = proxyEnv
	r.Curl("sleep -> httpbin:8000 through its sidecar", "http_proxy="+d.sleep.OutboundProxy+" "+walkthrough.Quote(args), cmd, wantOK)

	r.Note("httpbin's /headers shows who called: its sidecar sets X-Forwarded-Client-Cert from the verified peer")
	args = []string{"curl", "-s", "httpbin:8000/headers"}
	cmd = exec.CommandContext(ctx, args[0], args[1:]...)
	cmd.Env = proxyEnv
	r.Command("http_proxy=" + d.sleep.OutboundProxy + " " + walkthrough.Quote(args))
	wantID := "spiffe://cluster.local/ns/default/sa/sleep"
	if o, err := walkthrough.Run(cmd); err != nil {
		r.Fail("X-Forwarded-Client-Cert", err)
	} else {
		r.Output(o)
		xfcc := regexp.MustCompile(`"X-Forwarded-Client-Cert":\s*"([^"]*)"`).FindStringSubmatch(o.Stdout)
		got := "no X-Forwarded-Client-Cert header"
		if xfcc != nil {
			got = xfcc[1]
		}
		r.Check("httpbin saw sleep's identity in X-Forwarded-Client-Cert", xfcc != nil && strings.Contains(xfcc[1], "URI="+wantID), got, "URI="+wantID)
	}

	// The "proxy container" calls go straight to httpbin's inbound listener
	// (what the service address reaches when nothing captures it), with the
	// sidecar's certificate files at hand but not used.
	inbound := d.httpbin.InboundAddr
	connectTo := "httpbin:8000:" + inbound
	r.Note("Requests from sleep's proxy (its identity, its files, no sidecar in the path) to httpbin's inbound")
	r.Note("  %s (--connect-to sends httpbin:8000 there, as the service address does in a cluster)", inbound)
	certs := d.sleep.CertsDir
	for _, c := range []struct {
		what  string
		extra []string
		url   string
		want  walkthrough.Expect
	}{
		{"plain http to httpbin's inbound fails (no TLS, no client certificate)", nil, "http://httpbin:8000/headers", wantReset},
		{"https without a client certificate fails", nil, "https://httpbin:8000/headers", wantTLSFailed},
		{"https with the sidecar's key, certificate and root succeeds",
			[]string{"--key", filepath.Join(certs, "key.pem"), "--cert", filepath.Join(certs, "cert-chain.pem"), "--cacert", filepath.Join(certs, "root-cert.pem"), "-k"},
			"https://httpbin:8000/headers", wantOK},
	} {
		args := append([]string{"curl", "--connect-to", connectTo, c.url, "-o", "/dev/null", "-s", "-w", seedW}, c.extra...)
		r.Curl(c.what, walkthrough.Quote(args), exec.CommandContext(ctx, args[0], args[1:]...), c.want)
	}

	r.Note("Request from a pod without a sidecar (legacy) fails: it cannot start the TLS the server requires.")
	args = []string{"curl", "--connect-to", "httpbin.default:8000:" + inbound, "httpbin.default:8000/headers", "-o", "/dev/null", "-s", "-w", seedW}
	r.Curl("legacy -> httpbin.default:8000 fails", walkthrough.Quote(args), exec.CommandContext(ctx, args[0], args[1:]...), wantReset)

	r.Note("Why: meshctl explain predicts it from the policy alone")
	if o, err := d.run(ctx, "explain", "--from", "sleep.legacy", "--to", "httpbin.default:8000"); err != nil {
		r.Fail("explain legacy -> httpbin", err)
	} else {
		r.Check("explain predicts the legacy call fails", o.Exit == 1 && strings.HasPrefix(o.Stdout, "DENY"), fmt.Sprintf("exit %d, %s", o.Exit, firstLine(o.Stdout)), "exit 1, DENY")
	}
}

func firstLine(s string) string {
	line, _, _ := strings.Cut(strings.TrimSpace(s), "\n")
	return line
}

// opensslTime is how `openssl x509 -text` prints dates.
const opensslTime = "Jan _2 15:04:05 2006 MST"

// parseValidity reads the Not Before / Not After lines of `openssl x509
// -text`.
func parseValidity(out string) (notBefore, notAfter time.Time, err error) {
	re := regexp.MustCompile(`Not (Before|After)\s*:\s*(.+)`)
	for _, m := range re.FindAllStringSubmatch(out, -1) {
		t, perr := time.Parse(opensslTime, strings.TrimSpace(m[2]))
		if perr != nil {
			return notBefore, notAfter, fmt.Errorf("parse openssl date %q: %w", m[2], perr)
		}
		if m[1] == "Before" {
			notBefore = t
		} else {
			notAfter = t
		}
	}
	if notBefore.IsZero() || notAfter.IsZero() {
		return notBefore, notAfter, fmt.Errorf("no Not Before/Not After lines in %q", out)
	}
	return notBefore, notAfter, nil
}

func lastLine(s string) string {
	lines := strings.Split(strings.TrimSpace(s), "\n")
	return strings.TrimSpace(lines[len(lines)-1])
}

// demoLogger is the log for demo's own helpers and the samples it runs: warnings
// and errors only, on stderr, so stdout stays the walkthrough.
func demoLogger() *slog.Logger {
	return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))
}

// checkMesh runs meshctl check on the demo mesh: every check it makes, plus
// live reachability compared with meshctl explain.
func (d *demo) checkMesh(ctx context.Context) {
	r := d.r
	r.Section("Checking the whole mesh (meshctl check)")
	if o, err := d.run(ctx, "check", "--reachability"); err != nil {
		r.Fail("meshctl check", err)
	} else {
		fails := strings.Count(o.Stdout, "\nFAIL ") + boolInt(strings.HasPrefix(o.Stdout, "FAIL "))
		r.Check("meshctl check --reachability", o.Exit == 0 && fails == 0, fmt.Sprintf("exit %d, %d FAIL lines", o.Exit, fails), "exit 0, 0 FAIL lines")
	}
}

func boolInt(b bool) int {
	if b {
		return 1
	}
	return 0
}
