package main

// meshctl tls-check: does each service port's client TLS mode fit its
// server mode?

import (
	"encoding/json"
	"fmt"
	"strings"

	"github.com/spf13/cobra"

	"github.com/meshauth/meshauth/internal/policy/engine"
	"github.com/meshauth/meshauth/internal/registry"
)

// newTLSCheckCmd builds `meshctl tls-check`.
func newTLSCheckCmd(g *globalFlags) *cobra.Command {
	var (
		files  []string
		output string
	)
	cmd := &cobra.Command{
		Use:   "tls-check [SERVICE[.NAMESPACE]]",
		Short: "Compare each service port's server mTLS mode with the client TLS mode (OK/CONFLICT)",
		Long: `tls-check lists, for each port of each service (or of one service), the
server mode its sidecars enforce (from Policy, MeshPolicy or the mesh
authPolicy) and the TLS mode client sidecars use to call it (from the
DestinationRule or the mesh default), with the objects that set them.

CONFLICT means no sidecar client can talk to that port: a STRICT server
called without ISTIO_MUTUAL, or a plaintext server called with it. A
PERMISSIVE server accepts both and is never a CONFLICT. Computed locally with
the control plane's engine from its state (or from files with -f).
Exit status 1 if any port is in CONFLICT.`,
		Args: cobra.MaximumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			st, err := policyState(cmd.Context(), g, files)
			if err != nil {
				return err
			}
			e := st.Engine()
			var svcs []*registry.Service
			if len(args) == 1 {
				svc := e.LookupService(args[0], "default")
				if svc == nil {
					return &exitError{2, fmt.Errorf("tls-check: no service %q (give NAME or NAME.NAMESPACE; meshctl get services)", args[0])}
				}
				svcs = []*registry.Service{svc}
			}
			rows := e.TLSCheck(svcs)
			if output == "json" {
				enc := json.NewEncoder(cmd.OutOrStdout())
				enc.SetIndent("", "  ")
				if rows == nil {
					rows = []engine.TLSCheckRow{}
				}
				if err := enc.Encode(rows); err != nil {
					return err
				}
			} else {
				fmt.Fprint(cmd.OutOrStdout(), engine.TLSCheckTable(rows))
			}
			var conflicts []string
			for _, r := range rows {
				if r.Status == "CONFLICT" {
					conflicts = append(conflicts, fmt.Sprintf("%s:%d: %s", r.Host, r.Port, r.Problem))
				}
			}
			if len(conflicts) > 0 {
				return &exitError{1, fmt.Errorf("tls-check: %d conflict(s):\n  %s", len(conflicts), strings.Join(conflicts, "\n  "))}
			}
			return nil
		},
	}
	cmd.Flags().StringArrayVarP(&files, "filename", "f", nil, "compute from files instead of the control plane")
	cmd.Flags().StringVarP(&output, "output", "o", "table", "output format: table or json")
	return cmd
}
