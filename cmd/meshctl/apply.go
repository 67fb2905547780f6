package main

// meshctl apply: send config to the control plane, all or nothing.

import (
	"errors"
	"fmt"
	"time"

	"github.com/spf13/cobra"

	pb "github.com/meshauth/meshauth/api/meshauth/v1"
	"github.com/meshauth/meshauth/internal/config"
)

// newApplyCmd builds `meshctl apply`.
func newApplyCmd(g *globalFlags) *cobra.Command {
	var (
		files   []string
		replace bool
	)
	cmd := &cobra.Command{
		Use:   "apply -f FILE|DIR ...",
		Short: "Apply policy YAML to the control plane (a bad batch changes nothing)",
		Long: `apply validates the files locally, then sends them to meshd control as one
batch (Admin.ApplyConfig). The control plane validates the batch together
with the config in force; if anything is wrong nothing changes and every
error is printed with file:line:column. Objects are created or replaced by
kind, namespace and name; with --replace, every applied object of the kinds
in the batch that the batch does not name is removed.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if len(files) == 0 {
				return &exitError{2, errors.New("apply: give -f FILE or -f DIR")}
			}
			read, err := config.ReadPaths(files...)
			if err != nil {
				return err
			}
			// Validate locally first: the same errors, without a round trip.
			if _, err := config.Load(read); err != nil {
				var list config.ErrorList
				if errors.As(err, &list) {
					fmt.Fprintln(cmd.OutOrStdout(), list.Error())
					return &exitError{1, fmt.Errorf("apply: %d error(s); nothing applied", len(list))}
				}
				return err
			}
			req := &pb.ApplyConfigRequest{Replace: replace}
			for _, f := range read {
				req.Files = append(req.Files, &pb.ConfigFile{Name: f.Name, Content: f.Content})
			}
			resp, err := adminCall(cmd.Context(), g, 30*time.Second, "apply", pb.AdminClient.ApplyConfig, req)
			if err != nil {
				return &exitError{1, err}
			}
			for _, k := range resp.Applied {
				fmt.Fprintf(cmd.OutOrStdout(), "%s applied\n", k)
			}
			fmt.Fprintf(cmd.OutOrStdout(), "config version %d\n", resp.ConfigVersion)
			return nil
		},
	}
	cmd.Flags().StringArrayVarP(&files, "filename", "f", nil, "file or directory of YAML (repeatable)")
	cmd.Flags().BoolVar(&replace, "replace", false, "remove applied objects of the batch's kinds that the batch does not name")
	return cmd
}
