package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"
	"google.golang.org/grpc"
	"google.golang.org/grpc/status"

	pb "github.com/meshauth/meshauth/api/meshauth/v1"
	"github.com/meshauth/meshauth/internal/careport"
	"github.com/meshauth/meshauth/internal/client"
	"github.com/meshauth/meshauth/internal/meshapi"
)

// dialControl connects to the control plane found through --dir/--addr,
// with the admin token when admin is set, else with token (may be empty).
func (g *globalFlags) dialControl(ctx context.Context, admin bool, token string) (*grpc.ClientConn, error) {
	return client.Dial(ctx, client.Options{Dir: g.Dir, Addr: g.Addr, AdminToken: admin, Token: token})
}

// adminCall is one Admin RPC: dial the control plane with the admin token,
// call method with req under timeout, and turn a failed call into the
// server's message prefixed with what (rpcError). A dial error is returned
// as it is.
func adminCall[Req, Resp any](ctx context.Context, g *globalFlags, timeout time.Duration, what string,
	method func(pb.AdminClient, context.Context, Req, ...grpc.CallOption) (Resp, error), req Req) (Resp, error) {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	conn, err := g.dialControl(ctx, true, "")
	if err != nil {
		var zero Resp
		return zero, err
	}
	defer conn.Close()
	resp, err := method(pb.NewAdminClient(conn), ctx, req)
	if err != nil {
		var zero Resp
		return zero, rpcError(what, err)
	}
	return resp, nil
}

// rpcError turns a gRPC status into the server's message, which already
// says what was wrong and what to do.
func rpcError(what string, err error) error {
	if st, ok := status.FromError(err); ok {
		return fmt.Errorf("%s: %s (%s)", what, st.Message(), st.Code())
	}
	return fmt.Errorf("%s: %w", what, err)
}

// newCACmd builds `meshctl ca` and its subcommands.
func newCACmd(g *globalFlags) *cobra.Command {
	caCmd := &cobra.Command{Use: "ca", Short: "inspect and operate the certificate authority"}
	caCmd.AddCommand(newCAStatusCmd(g), newCARotateCmd(g), newCARotationCmd(g), newCARevokeCmd(g), caIssuedCmd(g))
	return caCmd
}

// newCAStatusCmd builds `meshctl ca status`.
func newCAStatusCmd(g *globalFlags) *cobra.Command {
	return reportCmd(g, "status", "show roots, the signing certificate and counts", "ca status",
		pb.AdminClient.CAStatus, &pb.CAStatusRequest{}, meshapi.StatusFromProto, printStatus)
}

// reportCmd builds a command that calls one Admin method, decodes its
// answer and prints it as text, or as JSON with -o json.
func reportCmd[Req, Resp, R any](g *globalFlags, use, short, what string,
	method func(pb.AdminClient, context.Context, Req, ...grpc.CallOption) (Resp, error), req Req,
	decode func(Resp) (R, error), print func(io.Writer, R)) *cobra.Command {
	var output string
	c := &cobra.Command{
		Use: use, Short: short, Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			resp, err := adminCall(cmd.Context(), g, 10*time.Second, what, method, req)
			if err != nil {
				return err
			}
			r, err := decode(resp)
			if err != nil {
				return fmt.Errorf("%s: decode: %w", what, err)
			}
			if output == "json" {
				return printJSON(cmd.OutOrStdout(), r)
			}
			print(cmd.OutOrStdout(), r)
			return nil
		},
	}
	c.Flags().StringVarP(&output, "output", "o", "text", "output format: text or json")
	return c
}

// revokeFlags are meshctl ca revoke's flags.
type revokeFlags struct{ serial, id, reason string }

// newCARevokeCmd builds `meshctl ca revoke`.
func newCARevokeCmd(g *globalFlags) *cobra.Command {
	f := &revokeFlags{}
	revoke := &cobra.Command{
		Use:   "revoke",
		Short: "revoke a certificate and its renewals by --serial, or every certificate of --identity",
		Long: `revoke adds certificates to the trust bundle's revocation list. Every
sidecar gets the list within one push and closes the connections that use
them; the CA refuses them for renewal; clients refuse a revoked control
plane certificate (and the control plane issues itself a new one).

Which one to use after a compromise:

  --serial S     one certificate's private key was stolen (a copied key.pem,
                 a leaked backup). Revokes S and every certificate renewed
                 from it, transitively: whoever holds the key may have
                 renewed it already (a renewal is authenticated by the
                 certificate it replaces; ` + "`meshctl ca issued`" + ` shows it
                 as requester mtls:<serial>). A renewal racing with the
                 revocation is refused. The identity's other lineages stay
                 valid. The workload whose key it was cannot renew either:
                 write a fresh join token into its sidecar's --token-file
                 (re-read every 5s and on SIGHUP; no restart needed):
                   meshctl token create -n NS -s SA > TOKEN_FILE
  --identity ID  the workload itself is compromised or retired (its host, its
                 join token). Revokes every unexpired certificate issued to
                 ID until now, whatever its lineage; certificates issued
                 afterwards are valid. Re-issue the workload from a clean
                 state with a fresh join token:
                   meshctl token create --namespace NS --service-account SA
                 Join tokens created before stay usable until they are spent
                 or expire (one use and 1h by default).

A renewal never gets a longer lifetime than the first certificate of its
lineage was allowed (the CA's default TTL, or the longer TTL that first
issuance asked for), so a stolen certificate cannot outlive its lineage's
lifetime by renewing itself.`,
		Example: `  meshctl ca revoke --serial 5bba212914ce85151eedd64934f3fb97 --reason "key.pem copied"
  meshctl ca revoke --serial "$(openssl x509 -in certs/cert-chain.pem -noout -serial | cut -d= -f2)"
  meshctl ca revoke --identity spiffe://cluster.local/ns/default/sa/sleep --reason "host compromised"`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error { return runRevoke(cmd, g, f) },
	}
	revoke.Flags().StringVar(&f.serial, "serial", "", "serial number (hex, as meshctl cert inspect or openssl -serial prints it)")
	revoke.Flags().StringVar(&f.id, "identity", "", "SPIFFE ID: revoke every unexpired certificate issued to it")
	revoke.Flags().StringVar(&f.reason, "reason", "", "reason recorded with the revocation")
	return revoke
}

// runRevoke revokes by serial or identity and prints what was revoked,
// with the reasons from the public bundle.
func runRevoke(cmd *cobra.Command, g *globalFlags, f *revokeFlags) error {
	serial, id := f.serial, f.id
	if (serial == "") == (id == "") {
		return &exitError{2, fmt.Errorf("ca revoke: give exactly one of --serial or --identity")}
	}
	ctx, cancel := context.WithTimeout(cmd.Context(), 10*time.Second)
	defer cancel()
	conn, err := g.dialControl(ctx, true, "")
	if err != nil {
		return err
	}
	defer conn.Close()
	resp, err := pb.NewAdminClient(conn).Revoke(ctx, &pb.RevokeRequest{Serial: serial, SpiffeId: id, Reason: f.reason})
	if err != nil {
		return rpcError("revoke", err)
	}
	w := cmd.OutOrStdout()
	if len(resp.Serials) == 0 {
		fmt.Fprintf(w, "nothing new to revoke (already revoked or expired); bundle version %d\n", resp.BundleVersion)
		return nil
	}
	n := len(resp.Serials)
	switch named := normalSerial(serial); {
	case id != "":
		fmt.Fprintf(w, "revoked %d certificate(s) of %s (every unexpired one issued until now)\n", n, id)
	case resp.Serials[0] == named && n == 1:
		fmt.Fprintf(w, "revoked 1 certificate(s): %s (no certificate was renewed from it)\n", named)
	case resp.Serials[0] == named:
		fmt.Fprintf(w, "revoked %d certificate(s): %s and %d renewed from it\n", n, named, n-1)
	default:
		fmt.Fprintf(w, "revoked %d certificate(s) renewed from %s (which was already revoked)\n", n, named)
	}
	// The reasons (which name the certificate each was renewed
	// from) are in the public bundle.
	reasons := map[string]*pb.Revocation{}
	if b, err := pb.NewCertificateAuthorityClient(conn).GetTrustBundle(ctx, &pb.GetTrustBundleRequest{}); err == nil {
		for _, r := range b.Revocations {
			reasons[r.Serial] = r
		}
	}
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "  SERIAL\tIDENTITY\tREASON")
	for _, s := range resp.Serials {
		r := reasons[s] // nil-safe getters: "-" when the bundle did not say
		fmt.Fprintf(tw, "  %s\t%s\t%s\n", s, orDash(r.GetSpiffeId()), orDash(r.GetReason()))
	}
	tw.Flush()
	fmt.Fprintf(w, "bundle version %d (pushed to sidecars)\n", resp.BundleVersion)
	return nil
}

func printStatus(w io.Writer, st *careport.Status) {
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintf(tw, "Trust domain:\t%s\n", st.TrustDomain)
	fmt.Fprintf(tw, "Mode:\t%s\n", st.Mode)
	fmt.Fprintf(tw, "Bundle version:\t%d\n", st.BundleVersion)
	fmt.Fprintf(tw, "Signing cert:\t%s  sha256:%s\n", st.Signing.Subject, short(st.Signing.Fingerprint))
	fmt.Fprintf(tw, "  expires:\t%s (%s)\n", st.Signing.NotAfter.Format(time.RFC3339), left(st.Signing.NotAfter, st.Now))
	fmt.Fprintf(tw, "Issued:\t%d   Revoked (unexpired): %d   Join tokens: %d\n", st.Issued, st.Revoked, st.JoinTokens)
	fmt.Fprintf(tw, "Workload TTL:\tdefault %s, max %s\n", st.DefaultTTL, st.MaxTTL)
	tw.Flush()
	fmt.Fprintln(w, "Roots in the bundle:")
	tw = tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "  STATE\tSHA256\tSUBJECT\tNOT AFTER\tNOTE")
	for _, r := range st.Roots {
		note := ""
		switch r.State {
		case careport.RootPending:
			note = "signs once every sidecar has ACKed it (meshctl ca rotation status)"
			if !r.ActivateAt.IsZero() {
				note = "signs from " + r.ActivateAt.Format(time.RFC3339)
			}
		case careport.RootRetiring:
			note = "leaves when no live certificate chains to it (meshctl ca rotation status)"
		}
		fmt.Fprintf(tw, "  %s\t%s\t%s\t%s\t%s\n", r.State, short(r.Fingerprint), r.Subject, r.NotAfter.Format("2006-01-02"), note)
	}
	tw.Flush()
}

// normalSerial writes a serial as the CA does: lowercase hex, no 0x, no
// colons, no leading zeros.
func normalSerial(s string) string {
	s = strings.ToLower(strings.TrimPrefix(strings.TrimSpace(s), "0x"))
	return strings.TrimLeft(strings.ReplaceAll(s, ":", ""), "0")
}

func short(fp string) string {
	if len(fp) > 16 {
		return fp[:16]
	}
	return fp
}

func left(t, now time.Time) string {
	d := t.Sub(now)
	if d <= 0 {
		return "expired " + (-d).Round(time.Second).String() + " ago"
	}
	if d > 72*time.Hour {
		return fmt.Sprintf("%dd left", int(d.Hours()/24))
	}
	return d.Round(time.Second).String() + " left"
}

// printJSON writes v as one line of JSON, as the control plane's JSON
// answers were printed before the API was typed.
func printJSON(w io.Writer, v any) error {
	js, err := json.Marshal(v)
	if err != nil {
		return err
	}
	_, err = w.Write(append(js, '\n'))
	return err
}
