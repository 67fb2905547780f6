package main

// meshctl validate: check config files offline, as the control plane would.

import (
	"errors"
	"fmt"

	"github.com/spf13/cobra"

	"github.com/meshauth/meshauth/internal/config"
	"github.com/meshauth/meshauth/internal/policy/engine"
	"github.com/meshauth/meshauth/internal/registry"
)

// newValidateCmd builds `meshctl validate`.
func newValidateCmd() *cobra.Command {
	var files []string
	cmd := &cobra.Command{
		Use:   "validate -f FILE|DIR ...",
		Short: "Validate policy YAML offline (file:line:column for every error)",
		Long: `validate decodes and checks config files exactly as meshd control does
(Policy, MeshPolicy, DestinationRule, RbacConfig, ServiceRole,
ServiceRoleBinding, MeshConfig, Service, Workload), as one batch: unknown
fields, bad enums, bad hosts, unsupported features and conflicts between
objects are reported with file:line:column and the field path. When the
files include Services, references to services or ports that do not exist
are reported as warnings (valid, but they apply to nothing). It needs no
control plane. Exit status 1 if anything is wrong.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if len(files) == 0 {
				return &exitError{2, errors.New("validate: give -f FILE or -f DIR")}
			}
			cfg, err := config.LoadPaths(files...)
			if err != nil {
				var list config.ErrorList
				if errors.As(err, &list) {
					fmt.Fprintln(cmd.OutOrStdout(), list.Error())
					return &exitError{1, fmt.Errorf("validate: %d error(s); nothing would be applied", len(list))}
				}
				return err
			}
			fmt.Fprintf(cmd.OutOrStdout(), "OK: %d objects valid\n", len(cfg.Objects()))
			// The config's own warnings, and with the mesh's services in the
			// batch, references to services and ports that do not exist
			// (valid, but no effect).
			lint := engine.ConfigWarnings(cfg)
			if len(cfg.Services) > 0 {
				ss, ws := registry.FromConfig(cfg)
				reg := registry.New()
				reg.Sync(registry.SourceConfig, ss, ws)
				lint = append(lint, engine.New(cfg, reg).LintReferences()...)
			}
			for _, w := range lint {
				fmt.Fprintln(cmd.OutOrStdout(), w.String())
			}
			return nil
		},
	}
	cmd.Flags().StringArrayVarP(&files, "filename", "f", nil, "file or directory of YAML (repeatable)")
	return cmd
}
