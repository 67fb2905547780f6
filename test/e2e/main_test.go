// Package e2e replays the seed walkthrough (Istio 0.8 "Testing Mutual TLS")
// end to end: every pod is a network namespace (internal/netns), sidecar pods
// get `meshd init-net` and a sidecar running as uid 1337, and every check is
// the seed's own command — real curl via `ip netns exec`, real openssl.
//
// The tests need root; without it they skip and say so. CI runs them as root
// through `make test`.
package e2e

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/meshauth/meshauth/internal/localmesh"
	"github.com/meshauth/meshauth/internal/netns"
)

// bin holds the binaries TestMain built: meshd, meshctl, httpbin, sleep.
var (
	bin      string
	buildErr error
)

func TestMain(m *testing.M) {
	if len(os.Args) > 1 && os.Args[1] == grpcHelperArg {
		runGRPCHelper(os.Args[2:]) // the gRPC app or client in a pod
	}
	flag.Parse()
	code := func() int {
		if testing.Short() {
			return m.Run() // every test skips in -short mode
		}
		// The binaries under test, built from this tree.
		bin, buildErr = localmesh.BuildTemp("meshauth-e2e-bin-", "../../cmd/meshd", "../../cmd/meshd-sidecar", "../../cmd/meshctl", "../../samples/httpbin/cmd/httpbin", "../../samples/sleep")
		if bin != "" {
			defer os.RemoveAll(bin)
		}
		return m.Run()
	}()
	os.Exit(code)
}

// needBinaries skips in -short mode and fails if the binaries did not build.
func needBinaries(t *testing.T) {
	t.Helper()
	if testing.Short() {
		t.Skip("skipping end-to-end test in -short mode")
	}
	if buildErr != nil {
		t.Fatal(buildErr)
	}
}

// needPods skips without root and fails if the binaries did not build.
func needPods(t *testing.T) {
	t.Helper()
	if err := netns.Available(); err != nil {
		t.Skipf("skipping end-to-end pods: %v", err)
	}
	needBinaries(t)
	if _, err := exec.LookPath("curl"); err != nil {
		t.Skip("skipping: the seed's commands need curl (make deps installs it)")
	}
	if buildErr != nil {
		t.Fatal(buildErr)
	}
}

// newCluster builds a netns cluster that is torn down when the test ends,
// whatever happened.
func newCluster(t *testing.T) *netns.Cluster {
	t.Helper()
	log := slog.New(slog.NewTextHandler(testWriter{t}, &slog.HandlerOptions{Level: slog.LevelDebug}))
	c, err := netns.New(netns.Config{Log: log})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := c.Close(); err != nil {
			t.Errorf("teardown: %v", err)
		}
	})
	return c
}

type testWriter struct{ t *testing.T }

func (w testWriter) Write(p []byte) (int, error) {
	w.t.Helper()
	w.t.Log(strings.TrimRight(string(p), "\n"))
	return len(p), nil
}

// result is what one curl invocation printed and how it exited: the two
// things the seed shows ("000", "command terminated with exit code 56").
type result struct {
	Code   string // curl's -w '%{http_code}'
	Exit   int    // curl's exit status
	Stderr string
}

func (r result) String() string { return fmt.Sprintf("%s (exit %d)", r.Code, r.Exit) }

// curl runs the seed's curl in a pod (as uid if uid >= 0) and returns what it
// printed. Only a failure to run curl at all is a test error.
func curl(t *testing.T, p *netns.Pod, uid int, args ...string) result {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	var cmd *exec.Cmd
	if uid >= 0 {
		cmd = p.CommandAs(ctx, uid, "curl", args...)
	} else {
		cmd = p.Command(ctx, "curl", args...)
	}
	var stdout, stderr strings.Builder
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	err := cmd.Run()
	r := result{Code: strings.TrimSpace(stdout.String()), Stderr: strings.TrimSpace(stderr.String())}
	var ee *exec.ExitError
	switch {
	case err == nil:
	case errors.As(err, &ee) && ee.ExitCode() > 0:
		r.Exit = ee.ExitCode()
	default:
		t.Fatalf("run %v in pod %s: %v (stderr %q)", cmd.Args, p.Name, err, r.Stderr)
	}
	t.Logf("pod %s$ curl %s -> %s", p.Name, strings.Join(args, " "), r)
	return r
}

// seedCurl is the seed's curl command line for a URL.
func seedCurl(url string, extra ...string) []string {
	return append([]string{url, "-o", "/dev/null", "-s", "-w", `%{http_code}\n`}, extra...)
}

// startApp starts a binary from bin in a pod and waits until addr answers
// from inside that pod.
func startApp(t *testing.T, c *netns.Cluster, p *netns.Pod, probe string, name string, args ...string) *exec.Cmd {
	t.Helper()
	cmd := p.Command(context.Background(), filepath.Join(bin, name), args...)
	cmd.Stdout, cmd.Stderr = testWriter{t}, testWriter{t}
	if err := c.Start(cmd); err != nil {
		t.Fatal(err)
	}
	if probe != "" {
		waitFor(t, fmt.Sprintf("%s in pod %s", name, p.Name), func() error {
			if err := c.Exited(cmd); err != nil {
				t.Fatal(err)
			}
			out, err := p.Command(context.Background(), "curl", "-s", "-o", "/dev/null", "-w", "%{http_code}", "--max-time", "2", probe).Output()
			if err != nil {
				return fmt.Errorf("curl %s: %v", probe, err)
			}
			if string(out) == "000" {
				return fmt.Errorf("curl %s: no answer", probe)
			}
			return nil
		})
	}
	return cmd
}

// waitFor polls f until it succeeds or 20s pass. The deadline is not a
// timing assertion: it only bounds how long a broken setup hangs.
func waitFor(t *testing.T, what string, f func() error) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for {
		err := f()
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("waiting for %s: %v", what, err)
		}
		time.Sleep(100 * time.Millisecond)
	}
}
