// Command meshctl is the meshauth CLI: it starts the local mesh, talks to the
// control plane, and proves that the setup works.
//
// Each subcommand lives in its own file as a constructor, newXxxCmd, that
// builds the command with its flags in a struct of its own; newRootCmd
// assembles the tree, so that it reads like the help output. Nothing keeps
// flag values in package variables: each tree is independent (the tests
// build a fresh one per run).
package main

import (
	"fmt"
	"os"

	"github.com/spf13/cobra"
)

// globalFlags are the flags every subcommand shares.
type globalFlags struct {
	// Dir is the control plane's state directory (admin.token, root-cert.pem,
	// control.addr). Default ./.meshauth, or $MESHAUTH_DIR.
	Dir string
	// Addr is the control plane's address; empty means read DIR/control.addr,
	// then 127.0.0.1:15012.
	Addr string
	// Kube selects a Kubernetes cluster as the source of tls-check, explain
	// and get.
	Kube kubeFlags
}

// newRootCmd builds the whole command tree.
func newRootCmd() *cobra.Command {
	g := &globalFlags{}
	root := &cobra.Command{
		Use:           "meshctl",
		Short:         "meshauth CLI: run the local mesh, manage identities and policy, verify mTLS",
		SilenceUsage:  true,
		SilenceErrors: true,
	}
	dir := os.Getenv("MESHAUTH_DIR")
	if dir == "" {
		dir = ".meshauth"
	}
	root.PersistentFlags().StringVar(&g.Dir, "dir", dir, "control plane state directory (env MESHAUTH_DIR)")
	root.PersistentFlags().StringVar(&g.Addr, "addr", "", "control plane address (default: DIR/control.addr, then 127.0.0.1:15012)")
	g.Kube.register(root)
	root.AddCommand(
		newApplyCmd(g), newCACmd(g), newCertCmd(g), newCheckCmd(g),
		newDemoCmd(), newSampleCmd(), newExplainCmd(g), newGetCmd(g),
		newInstallCmd(), newKubeInjectCmd(), newTLSCheckCmd(g), newTokenCmd(g),
		newUpCmd(g), newValidateCmd(),
	)
	return root
}

func main() {
	if err := newRootCmd().Execute(); err != nil {
		fmt.Fprintln(os.Stderr, "meshctl:", err)
		os.Exit(exitCode(err))
	}
}

// exitError lets a command choose its exit status (e.g. 1 for a failed check,
// 2 for bad usage) while still printing a message.
type exitError struct {
	code int
	err  error
}

func (e *exitError) Error() string { return e.err.Error() }
func (e *exitError) Unwrap() error { return e.err }

func exitCode(err error) int {
	if e, ok := err.(*exitError); ok {
		return e.code
	}
	return 1
}
