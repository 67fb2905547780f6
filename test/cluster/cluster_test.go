// Package cluster runs meshauth on a real single-node Kubernetes cluster
// (test/cluster/kcluster): kubelet, containerd and runc run the images the
// Makefile's image builder writes, and the seed's kubectl commands run as
// written. TestPodRuns and TestSeed (this file) run first, on the fresh
// cluster; the other tests use their own namespaces. TestMain brings the cluster up once and takes it down at the
// end; it fails if anything (process, mount, netns, kernel setting) is left.
//
// Without root, containerd, runc, the CNI plugins or the Kubernetes binaries
// the tests skip and say what is missing; with MESHAUTH_REQUIRE_KUBE=1 (make
// test) they fail instead.
package cluster

import (
	"bytes"
	"context"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/meshauth/meshauth/internal/walkthrough"
	"github.com/meshauth/meshauth/test/cluster/kcluster"
	"github.com/meshauth/meshauth/test/cluster/seedreplay"
)

var (
	cl       *kcluster.Cluster
	skipWhy  string
	repoRoot string
)

func TestMain(m *testing.M) {
	flag.Parse()
	repoRoot, _ = filepath.Abs("../..")
	if testing.Short() {
		skipWhy = "-short: no cluster"
		os.Exit(m.Run())
	}
	if missing := kcluster.Requirements(repoRoot); len(missing) > 0 {
		skipWhy = "cannot run a cluster here, missing: " + strings.Join(missing, ", ")
		if os.Getenv("MESHAUTH_REQUIRE_KUBE") == "1" {
			fmt.Fprintln(os.Stderr, "FAIL: MESHAUTH_REQUIRE_KUBE=1 and "+skipWhy)
			os.Exit(1)
		}
		os.Exit(m.Run())
	}
	ctx, cancel := context.WithTimeout(context.Background(), 8*time.Minute)
	var err error
	cl, err = kcluster.Up(ctx, kcluster.Config{Repo: repoRoot, Log: os.Stderr})
	cancel()
	if err != nil {
		fmt.Fprintln(os.Stderr, "FAIL: cluster up:", err)
		os.Exit(1)
	}
	code := m.Run()
	if left := cl.Down(); len(left) > 0 {
		fmt.Fprintln(os.Stderr, "FAIL: cluster down left behind:", strings.Join(left, "; "))
		code = 1
	}
	os.Exit(code)
}

// cluster returns the running cluster or skips the test.
func cluster(t *testing.T) *kcluster.Cluster {
	t.Helper()
	if cl == nil {
		t.Skip(skipWhy)
	}
	return cl
}

// TestPodRuns is the smoke test: a pod from the locally built sleep image
// is scheduled, started by kubelet through containerd and runc, and
// `kubectl exec` runs Debian's curl in it.
func TestPodRuns(t *testing.T) {
	c := cluster(t)
	if err := c.Apply(`apiVersion: v1
kind: Pod
metadata: {name: smoke, namespace: default}
spec:
  terminationGracePeriodSeconds: 1
  containers:
  - {name: sleep, image: ghcr.io/meshauth/sleep:latest, imagePullPolicy: Never}
`); err != nil {
		t.Fatal(err)
	}
	defer c.Kubectl("delete", "pod", "smoke", "--wait=false")
	if out, err := c.Kubectl("wait", "--for=condition=Ready", "pod/smoke", "--timeout=120s"); err != nil {
		t.Fatalf("pod not Ready: %v\n%s", err, out)
	}
	out, err := c.Kubectl("exec", "smoke", "--", "curl", "--version")
	if err != nil {
		t.Fatal(err)
	}
	if !strings.HasPrefix(out, "curl ") {
		t.Errorf("curl --version in the pod printed %q", out)
	}
}

// replayer returns a Replayer on the shared cluster printing into buf, and
// a function that fails t with the transcript if any check failed.
func replayer(t *testing.T) (*seedreplay.Replayer, func()) {
	t.Helper()
	var buf bytes.Buffer
	p := &seedreplay.Replayer{C: cluster(t), R: walkthrough.NewReporter(&buf)}
	return p, func() {
		t.Helper()
		t.Logf("transcript:\n%s", buf.String())
		if f := p.R.Failures(); len(f) > 0 {
			t.Errorf("%d of %d checks failed: %s", len(f), len(f)+p.R.Passes(), strings.Join(f, "; "))
		}
	}
}

// TestSeed replays the seed literally on the cluster in Secret mode (the
// seed's istio.<sa> Secrets mounted at /etc/certs): install, kube-inject,
// every verification command and every curl, legacy namespace included.
func TestSeed(t *testing.T) {
	p, done := replayer(t)
	defer done()
	ctx, cancel := context.WithTimeout(context.Background(), 12*time.Minute)
	defer cancel()
	p.Seed(ctx)
}
