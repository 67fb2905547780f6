// Command meshd runs meshauth's daemons: `meshd control` (CA, config,
// registry, push), `meshd sidecar` (certificate agent + mTLS proxy) and
// `meshd init-net` (the iptables capture a pod's init container installs).
//
// Each subcommand lives in its own file and registers itself on root.
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
