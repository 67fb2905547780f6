package main

import (
	"fmt"
	"os"
	"path/filepath"
	"syscall"

	"github.com/spf13/cobra"

	"github.com/meshauth/meshauth/internal/sidecar/cli"
)

// smallSidecar is the sidecar-only binary (cmd/meshd-sidecar) that
// `meshd sidecar` runs when it sits beside meshd.
const smallSidecar = "meshd-sidecar"

func init() {
	root.AddCommand(&cobra.Command{
		Use:     "sidecar [flags] [-- app command...]",
		Short:   cli.Short,
		Long:    cli.Long + "\n\nRun `meshd sidecar --help` for the flags.",
		Example: cli.Example,
		// The flags are internal/sidecar/cli's, parsed there (or by
		// meshd-sidecar), so that both binaries take the same command line.
		DisableFlagParsing: true,
		RunE: func(cmd *cobra.Command, args []string) error {
			if err := execSmall(args); err != nil {
				return err
			}
			return cli.Main("meshd sidecar", args, cmd.OutOrStdout())
		},
	})
}

// execSmall replaces this process with meshd-sidecar from meshd's own
// directory, with the same arguments, when it is there (`make build`'s bin/,
// the proxy image): the sidecar then runs in a binary without the control
// plane, its CA store, the config loader and cobra, which every sidecar maps
// (BENCHMARKS.md, "Idle sidecar memory"). The PID stays the same. Without
// it (a lone `go install ./cmd/meshd`) it returns nil and the sidecar runs
// in this process.
func execSmall(args []string) error {
	exe, err := os.Executable()
	if err != nil {
		return nil
	}
	small := filepath.Join(filepath.Dir(exe), smallSidecar)
	if st, err := os.Stat(small); err != nil || st.IsDir() || st.Mode()&0o111 == 0 {
		return nil
	}
	err = syscall.Exec(small, append([]string{small}, args...), os.Environ())
	return fmt.Errorf("exec %s: %w", small, err)
}
