// Command meshctl is the meshauth CLI: it starts the local mesh, talks to the
// control plane, and proves that the setup works.
//
// Each subcommand lives in its own file and registers itself on root in an
// init function, so that the command tree reads like the help output.
package main

import (
	"fmt"
	"os"

	"github.com/spf13/cobra"
)

// globals are the flags every subcommand shares.
var globals struct {
	// Dir is the control plane's state directory (admin.token, root-cert.pem,
	// control.addr). Default ./.meshauth, or $MESHAUTH_DIR.
	Dir string
	// Addr is the control plane's address; empty means read DIR/control.addr,
	// then 127.0.0.1:15012.
	Addr string
}

var root = &cobra.Command{
	Use:           "meshctl",
	Short:         "meshauth CLI: run the local mesh, manage identities and policy, verify mTLS",
	SilenceUsage:  true,
	SilenceErrors: true,
}

func init() {
	dir := os.Getenv("MESHAUTH_DIR")
	if dir == "" {
		dir = ".meshauth"
	}
	root.PersistentFlags().StringVar(&globals.Dir, "dir", dir, "control plane state directory (env MESHAUTH_DIR)")
	root.PersistentFlags().StringVar(&globals.Addr, "addr", "", "control plane address (default: DIR/control.addr, then 127.0.0.1:15012)")
}

func main() {
	if err := root.Execute(); err != nil {
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
