package main

import (
	"fmt"
	"io"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	pb "github.com/meshauth/meshauth/api/meshauth/v1"
	"github.com/meshauth/meshauth/internal/careport"
	"github.com/meshauth/meshauth/internal/meshapi"
)

// caIssuedCmd is `meshctl ca issued`: the CA's issuance log, for audits.
func caIssuedCmd(g *globalFlags) *cobra.Command {
	var (
		id, output string
		valid      bool
		limit      int
	)
	cmd := &cobra.Command{
		Use:   "issued",
		Short: "list the certificates the CA issued: serial, identity, validity, who asked, revoked",
		Long: `issued prints the CA's issuance log, oldest first: every certificate's
serial, SPIFFE ID, validity, when it was issued, who asked and how they
proved the identity (join_token:<id>, mtls:<serial of the presented
certificate>, k8s_token:<ServiceAccount UID>, self), and whether it is
revoked. Revocations of expired certificates are pruned from the bundle, so
an expired certificate shows as not revoked.`,
		Example: `  meshctl ca issued
  meshctl ca issued --identity spiffe://cluster.local/ns/default/sa/sleep --valid
  meshctl ca issued --limit 20 -o json`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if output != "text" && output != "json" {
				return fmt.Errorf("ca issued: --output %q: want text or json", output)
			}
			resp, err := adminCall(cmd.Context(), g, 30*time.Second, "ca issued", pb.AdminClient.ListIssued, &pb.ListIssuedRequest{SpiffeId: id, OnlyValid: valid, Limit: int32(limit)})
			if err != nil {
				return err
			}
			entries := meshapi.IssuedFromProto(resp.Entries)
			if output == "json" {
				return printJSON(cmd.OutOrStdout(), entries)
			}
			printIssued(cmd.OutOrStdout(), entries, int(resp.Matched))
			return nil
		},
	}
	cmd.Flags().StringVar(&id, "identity", "", "only certificates for this SPIFFE ID")
	cmd.Flags().BoolVar(&valid, "valid", false, "only certificates not yet expired")
	cmd.Flags().IntVar(&limit, "limit", 0, "only the newest N (0: all)")
	cmd.Flags().StringVarP(&output, "output", "o", "text", "output format: text or json")
	return cmd
}

func printIssued(w io.Writer, entries []careport.IssuedEntry, matched int) {
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "SERIAL\tIDENTITY\tISSUED\tNOT AFTER\tREQUESTER\tREVOKED")
	for _, e := range entries {
		rev := "-"
		if e.Revoked {
			rev = "yes"
			if e.RevokedReason != "" {
				rev += " (" + e.RevokedReason + ")"
			}
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\n", e.Serial, e.SPIFFEID,
			time.Unix(e.IssuedAt, 0).UTC().Format(time.RFC3339), time.Unix(e.NotAfter, 0).UTC().Format(time.RFC3339), e.Requester, rev)
	}
	tw.Flush()
	if matched > len(entries) {
		fmt.Fprintf(w, "(%d of %d shown; --limit)\n", len(entries), matched)
	}
}
