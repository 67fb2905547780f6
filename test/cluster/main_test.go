// Package cluster runs meshauth on a real single-node Kubernetes cluster
// (test/cluster/kcluster): kubelet, containerd and runc run the images the
// Makefile's image builder writes, and the seed's kubectl commands run as
// written. TestMain brings the cluster up once and takes it down at the
// end; it fails if anything (process, mount, netns, kernel setting) is left.
//
// Without root, containerd, runc, the CNI plugins or the Kubernetes binaries
// the tests skip and say what is missing; with MESHAUTH_REQUIRE_KUBE=1 (make
// test) they fail instead.
package cluster

import (
	"context"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/meshauth/meshauth/test/cluster/kcluster"
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
