// Command demo-k8s is `make demo-k8s`: it brings up the test cluster
// (test/cluster/kcluster), replays the seed walkthrough on it command by
// command, then deploys the same samples through the webhook in a labelled
// namespace (test/cluster/seedreplay), printing what each command OBSERVED
// next to what the seed shows, and tears the cluster down. It exits 1 if a
// check failed or the teardown left anything behind.
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"

	"github.com/meshauth/meshauth/internal/walkthrough"
	"github.com/meshauth/meshauth/test/cluster/kcluster"
	"github.com/meshauth/meshauth/test/cluster/seedreplay"
)

func main() {
	repo := flag.String("repo", ".", "meshauth checkout with bin/ built (make build kube-apiserver kube-node)")
	flag.Parse()
	root, err := filepath.Abs(*repo)
	if err != nil {
		fmt.Fprintln(os.Stderr, "demo-k8s:", err)
		os.Exit(1)
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	fmt.Fprintln(os.Stderr, "bringing up a single-node cluster (kubelet, containerd, kube-proxy) in a network namespace ...")
	c, err := kcluster.Up(ctx, kcluster.Config{Repo: root, Log: os.Stderr})
	if err != nil {
		fmt.Fprintln(os.Stderr, "demo-k8s:", err)
		os.Exit(1)
	}
	r := walkthrough.NewReporter(os.Stdout)
	p := &seedreplay.Replayer{C: c, R: r}
	p.Seed(ctx)
	p.Webhook(ctx)
	left := c.Down()
	fails := r.Failures()
	fmt.Printf("\n%d checks passed, %d failed", r.Passes(), len(fails))
	if len(fails) > 0 {
		fmt.Printf(": %s", strings.Join(fails, "; "))
	}
	fmt.Println()
	if len(left) > 0 {
		fmt.Fprintln(os.Stderr, "demo-k8s: teardown left:", strings.Join(left, "; "))
	}
	if len(fails) > 0 || len(left) > 0 {
		os.Exit(1)
	}
}
