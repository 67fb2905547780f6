package main

import (
	"encoding/json"
	"fmt"
	"time"

	"github.com/spf13/cobra"

	pb "github.com/meshauth/meshauth/api/meshauth/v1"
)

// newTokenCmd builds `meshctl token`.
func newTokenCmd(g *globalFlags) *cobra.Command {
	tokenCmd := &cobra.Command{Use: "token", Short: "manage join tokens (bootstrap credentials for one identity)"}
	var (
		ns, sa, output string
		ttl            time.Duration
		uses           int
	)
	create := &cobra.Command{
		Use:   "create",
		Short: "create a join token that proves one service account's identity",
		Long: `create prints a join token bound to spiffe://<td>/ns/N/sa/S. A workload
presents it once (or --uses times) before --ttl passes, to get its first
certificate (meshctl cert issue --token, or meshd sidecar). The CA stores
only its hash.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if ns == "" || sa == "" {
				return &exitError{2, fmt.Errorf("token create: --namespace and --service-account are required")}
			}
			resp, err := adminCall(cmd.Context(), g, 10*time.Second, "token create", pb.AdminClient.CreateJoinToken, &pb.CreateJoinTokenRequest{
				Namespace: ns, ServiceAccount: sa, TtlSeconds: int64(ttl / time.Second), Uses: int32(uses),
			})
			if err != nil {
				return err
			}
			if output == "json" {
				enc := json.NewEncoder(cmd.OutOrStdout())
				enc.SetIndent("", "  ")
				return enc.Encode(map[string]any{
					"token": resp.Token, "spiffeID": resp.SpiffeId,
					"expiresAt": time.Unix(resp.ExpiresAt, 0).UTC(), "uses": resp.Uses,
				})
			}
			// The token alone on stdout, so T=$(meshctl token create ...) works.
			fmt.Fprintln(cmd.OutOrStdout(), resp.Token)
			fmt.Fprintf(cmd.ErrOrStderr(), "join token for %s, %d use(s), expires %s\n",
				resp.SpiffeId, resp.Uses, time.Unix(resp.ExpiresAt, 0).UTC().Format(time.RFC3339))
			return nil
		},
	}
	f := create.Flags()
	f.StringVarP(&ns, "namespace", "n", "", "namespace of the identity")
	f.StringVarP(&sa, "service-account", "s", "", "service account of the identity")
	f.DurationVar(&ttl, "ttl", time.Hour, "how long the token is valid")
	f.IntVar(&uses, "uses", 1, "how many certificates it may obtain")
	f.StringVarP(&output, "output", "o", "text", "output format: text (token only) or json")
	tokenCmd.AddCommand(create)
	return tokenCmd
}
