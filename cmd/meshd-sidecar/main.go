// Command meshd-sidecar is the sidecar alone: the certificate agent and the
// mTLS proxy for one workload, with exactly the command line of `meshd
// sidecar` (internal/sidecar/cli). It is what every sidecar runs: `meshd
// sidecar` execs it when it sits beside meshd (`make build`, the proxy
// image), and `meshctl up`/`meshctl demo` start their sidecars that way.
//
// It links no control plane, CA store, config loader, Kubernetes client,
// cobra or Prometheus client library, because every sidecar maps its
// binary: the smaller it is, the less memory each pod pays
// (BENCHMARKS.md, "Idle sidecar memory"; main_test.go keeps it that way).
// Build it as `make build` does:
//
//	CGO_ENABLED=0 go build -tags grpcnotrace -trimpath -ldflags=-s -o bin/ ./cmd/meshd-sidecar
//
// (grpcnotrace: gRPC without golang.org/x/net/trace and html/template;
// CGO_ENABLED=0: no libc mapped beside it.)
package main

import (
	"fmt"
	"os"
	"path/filepath"

	"github.com/meshauth/meshauth/internal/sidecar/cli"
)

func main() {
	name := filepath.Base(os.Args[0])
	if err := cli.Main(name, os.Args[1:], os.Stdout); err != nil {
		fmt.Fprintln(os.Stderr, name+":", err)
		os.Exit(1)
	}
}
