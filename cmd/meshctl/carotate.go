package main

import (
	"fmt"
	"io"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	pb "github.com/meshauth/meshauth/api/meshauth/v1"
	"github.com/meshauth/meshauth/internal/careport"
	"github.com/meshauth/meshauth/internal/meshapi"
)

// rotateFlags are meshctl ca rotate-root's flags.
type rotateFlags struct {
	overlap       time.Duration
	retire, force bool
	from          string
}

// newCARotateCmd builds `meshctl ca rotate-root`.
func newCARotateCmd(g *globalFlags) *cobra.Command {
	f := &rotateFlags{}
	rotate := &cobra.Command{
		Use:   "rotate-root",
		Short: "rotate the CA's root: trusted first, signing once every sidecar ACKed it, the old one retired last",
		Long: `rotate-root starts a root rotation, in three steps the control plane takes
by itself, each recorded in its store (a control plane killed between two
steps goes on where it was when it starts again):

  1. a new root is made and added to the trust bundle, not signing; every
     sidecar gets it on its bundle stream and ACKs it once the verifier its
     proxy uses has it;
  2. once every sidecar the control plane knows has ACKed a bundle with the
     new root (and --min-overlap has passed), the new root signs; workloads
     get certificates from it at their own renewal time;
  3. once no live certificate chains to the old root, it leaves the bundle.

'meshctl ca rotation status' shows the step, the sidecars the switch waits
for and why, and how many live certificates chain to each root.

With an operator's CA on Kubernetes (Secret cacerts), the new CA is the
operator's: put it in Secret cacerts-next (the same four keys) and run
'rotate-root --from cacerts-next'; the steps are the same, and retiring the
old root copies cacerts-next into cacerts and deletes cacerts-next. Locally
(meshd control --cacerts DIR), put the new CA's four files in a directory
beside DIR and run 'rotate-root --from /absolute/path/to/it': the control
plane copies them into its state dir (cacerts-next/), and retiring the old
root writes them into DIR.

--retire ends step 3 now: refused while a live certificate chains to the
old root (they are listed), unless --force, which retires it anyway and
prints every certificate that no longer verifies.`,
		Example: `  meshctl ca rotate-root
  meshctl ca rotation status
  meshctl ca rotate-root --retire --force
  kubectl -n istio-system create secret generic cacerts-next --from-file=ca-cert.pem \
    --from-file=ca-key.pem --from-file=cert-chain.pem --from-file=root-cert.pem
  meshctl ca rotate-root --from cacerts-next
  meshctl ca rotate-root --from /etc/meshauth/cacerts-new`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error { return runRotate(cmd, g, f) },
	}
	rotate.Flags().DurationVar(&f.overlap, "min-overlap", 0, "least time the new root is trusted before it signs, even once every sidecar has ACKed it (default: the server's --rotation-overlap)")
	rotate.Flags().DurationVar(&f.overlap, "overlap", 0, "the same as --min-overlap")
	rotate.Flags().BoolVar(&f.retire, "retire", false, "retire the old root now (step 3); refused while live certificates chain to it, unless --force")
	rotate.Flags().StringVar(&f.from, "from", "", "stage the operator's new CA instead of making a root (plugged-in CA: cacerts-next on Kubernetes; locally an absolute directory beside --cacerts)")
	rotate.Flags().BoolVar(&f.force, "force", false, "with --retire: retire even though live certificates chain to the old root (they stop verifying)")
	return rotate
}

func runRotate(cmd *cobra.Command, g *globalFlags, f *rotateFlags) error {
	w := cmd.OutOrStdout()
	if f.force && !f.retire {
		return &exitError{2, fmt.Errorf("rotate-root: --force goes with --retire")}
	}
	req := &pb.RotateRootRequest{OverlapSeconds: int64(f.overlap / time.Second), Retire: f.retire, Force: f.force, From: f.from}
	resp, err := adminCall(cmd.Context(), g, 30*time.Second, "rotate root", pb.AdminClient.RotateRoot, req)
	if err != nil {
		return err
	}
	if f.retire {
		if len(resp.Broken) == 0 {
			fmt.Fprintf(w, "old root retired; no live certificate chained to it (bundle version %d)\n", resp.BundleVersion)
			return nil
		}
		fmt.Fprintf(w, "old root retired by force (bundle version %d); %d live certificate(s) no longer verify:\n", resp.BundleVersion, len(resp.Broken))
		for _, b := range resp.Broken {
			fmt.Fprintf(w, "  %s\n", b)
		}
		return nil
	}
	fmt.Fprintf(w, "new root sha256:%s\nin the bundle now (version %d), not signing yet: signing switches once every sidecar has ACKed it", resp.NewRootFingerprint, resp.BundleVersion)
	if until := time.Unix(resp.MinOverlapUntil, 0).UTC(); f.overlap > 0 {
		fmt.Fprintf(w, ", not before %s", until.Format(time.RFC3339))
	}
	fmt.Fprintln(w, "\nfollow it with: meshctl ca rotation status")
	return nil
}

// newCARotationCmd builds `meshctl ca rotation` (status, forget).
func newCARotationCmd(g *globalFlags) *cobra.Command {
	rot := &cobra.Command{Use: "rotation", Short: "follow a root rotation: its step and the sidecars it waits for"}
	status := reportCmd(g, "status", "the rotation's step, every sidecar's last ACKed bundle, who holds the switch back and why, live certificates per root",
		"rotation status", pb.AdminClient.RotationStatus, &pb.RotationStatusRequest{},
		func(m *pb.RotationStatusResponse) (*careport.Rotation, error) {
			return meshapi.RotationFromProto(m), nil
		}, printRotation)
	forget := &cobra.Command{
		Use:   "forget SIDECAR...",
		Short: "stop waiting for disconnected sidecars that are gone for good (by key, SPIFFE ID or instance)",
		Long: `forget drops disconnected sidecars from the fleet a rotation waits for. Use it
for a sidecar that will not come back (its workload was deleted) while its
certificate is still valid; one whose certificate has expired is not waited
for anyway. A sidecar that connects again is known again.`,
		Args: cobra.MinimumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			resp, err := adminCall(cmd.Context(), g, 10*time.Second, "rotation forget", pb.AdminClient.RotateRoot, &pb.RotateRootRequest{Forget: args})
			if err != nil {
				return err
			}
			if len(resp.Forgotten) == 0 {
				return fmt.Errorf("rotation forget: no disconnected sidecar matches %s", strings.Join(args, ", "))
			}
			for _, k := range resp.Forgotten {
				fmt.Fprintf(cmd.OutOrStdout(), "forgot %s\n", k)
			}
			return nil
		},
	}
	rot.AddCommand(status, forget)
	return rot
}

func printRotation(w io.Writer, st *careport.Rotation) {
	ts := func(t time.Time) string {
		if t.IsZero() {
			return "-"
		}
		return t.UTC().Format(time.RFC3339)
	}
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintf(tw, "Phase:\t%s\n", orDash(st.Phase))
	if st.Phase != "" {
		fmt.Fprintf(tw, "New root:\tsha256:%s (in the bundle since version %d)\n", short(st.NewRoot), st.BundleVersion)
		fmt.Fprintf(tw, "Old roots:\t%s\n", shortList(st.OldRoots))
		overlap := "no minimum overlap"
		if st.MinOverlapUntil.After(st.StartedAt) {
			overlap = "signs no earlier than " + ts(st.MinOverlapUntil)
		}
		fmt.Fprintf(tw, "Started:\t%s   (%s)\n", ts(st.StartedAt), overlap)
		fmt.Fprintf(tw, "Switched:\t%s\n", ts(st.SwitchedAt))
		fmt.Fprintf(tw, "Retired:\t%s\n", ts(st.RetiredAt))
	}
	fmt.Fprintf(tw, "Next:\t%s\n", st.Next)
	tw.Flush()
	if len(st.Forced) > 0 {
		fmt.Fprintf(w, "Retired by force while %d live certificate(s) chained to it:\n", len(st.Forced))
		for _, f := range st.Forced {
			fmt.Fprintf(w, "  %s\n", f)
		}
	}
	fmt.Fprintln(w, "Live certificates per root:")
	tw = tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "  ROOT\tSTATE\tLIVE\tSOME OF THEM")
	for _, l := range st.Live {
		fmt.Fprintf(tw, "  %s\t%s\t%d\t%s\n", short(l.Root), l.State, l.Live, orDash(strings.Join(l.Sample[:min(3, len(l.Sample))], ", ")))
	}
	tw.Flush()
	fmt.Fprintf(w, "Sidecars: %d known, %d holding the switch back\n", len(st.Sidecars), st.Waiting)
	tw = tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "  WAIT\tINSTANCE\tIDENTITY\tACKED\tNEW ROOT\tWHY")
	for _, s := range st.Sidecars {
		wait, hasNew := "-", "no"
		if s.Blocking {
			wait = "WAIT"
		}
		switch {
		case st.Phase == "":
			hasNew = "-"
		case s.HasNewRoot:
			hasNew = "yes"
		}
		fmt.Fprintf(tw, "  %s\t%s\t%s\tv%d\t%s\t%s\n", wait, orDash(s.Instance), s.SPIFFEID, s.AckedVersion, hasNew, s.Why)
	}
	tw.Flush()
}

func shortList(fps []string) string {
	out := make([]string, len(fps))
	for i, f := range fps {
		out[i] = "sha256:" + short(f)
	}
	return orDash(strings.Join(out, " "))
}
