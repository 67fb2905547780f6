// Command meshd runs meshauth's daemons: `meshd control` (CA, config,
// registry, push), `meshd sidecar` (certificate agent + mTLS proxy) and
// `meshd init-net` (the iptables capture a pod's init container installs).
//
// Each subcommand lives in its own file and registers itself on root.
//
// Build tags: the plain build has no Kubernetes client code (no k8s.io
// package): it is what `meshctl up`, `meshctl demo` and local sidecars run.
// -tags kube adds `meshd kube-control` (client-go), for the control-plane
// image and `make build`'s bin/meshd-kube. -tags sidecaronly leaves out
// `meshd control` (CA, its bbolt store, the config loader), which is how
// the sidecar image builds meshd, with gRPC's own grpcnotrace (no
// golang.org/x/net/trace, html/template):
//
//	CGO_ENABLED=0 go build -tags sidecaronly,grpcnotrace -trimpath -ldflags=-s ./cmd/meshd
//
// `meshd sidecar` execs meshd-sidecar (cmd/meshd-sidecar, the sidecar
// alone, about 12.7 MB) when it sits beside meshd, as `make build` and the proxy
// image put it, so every sidecar maps the small binary (BENCHMARKS.md,
// "Idle sidecar memory"); otherwise it runs the same code itself. Its flags
// are internal/sidecar/cli's, the sidecar itself is internal/sidecar.
package main

import (
	"fmt"
	"os"

	"github.com/spf13/cobra"
)

var root = &cobra.Command{
	Use:           "meshd",
	Short:         "meshauth daemons: control plane, sidecar, network capture",
	SilenceUsage:  true,
	SilenceErrors: true,
}

func main() {
	if err := root.Execute(); err != nil {
		fmt.Fprintln(os.Stderr, "meshd:", err)
		os.Exit(1)
	}
}
