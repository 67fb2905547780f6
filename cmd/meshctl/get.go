package main

// meshctl get: list config objects and registry entries.

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"sort"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"
	"gopkg.in/yaml.v3"

	pb "github.com/meshauth/meshauth/api/meshauth/v1"
	"github.com/meshauth/meshauth/internal/config"
	"github.com/meshauth/meshauth/internal/meshapi"
	"github.com/meshauth/meshauth/internal/registry"
)

// policyState loads what tls-check, explain and get work on: from files
// (offline, no control plane) when any are given, else from the running
// control plane's Admin.GetState.
func policyState(ctx context.Context, g *globalFlags, files []string) (*meshapi.State, error) {
	if len(files) > 0 {
		cfg, err := config.LoadPaths(files...)
		if err != nil {
			return nil, err
		}
		ss, ws := registry.FromConfig(cfg)
		reg := registry.New()
		reg.Sync(registry.SourceConfig, ss, ws)
		return &meshapi.State{Config: cfg, Registry: reg.State()}, nil
	}
	// --kubeconfig: read the cluster directly (kubestate.go).
	if st, ok, err := g.Kube.clusterState(ctx); ok {
		return st, err
	}
	resp, err := adminCall(ctx, g, 30*time.Second, "get state", pb.AdminClient.GetState, &pb.GetStateRequest{})
	if err != nil {
		return nil, err
	}
	st, err := meshapi.StateFromProto(resp)
	if err != nil {
		return nil, fmt.Errorf("get state: decode: %w", err)
	}
	return st, nil
}

// kindAliases maps what people type to a kind.
var kindAliases = map[string]string{
	"policies": config.KindPolicy, "policy": config.KindPolicy,
	"meshpolicies": config.KindMeshPolicy, "meshpolicy": config.KindMeshPolicy,
	"destinationrules": config.KindDestinationRule, "destinationrule": config.KindDestinationRule, "dr": config.KindDestinationRule,
	"rbacconfigs": config.KindRbacConfig, "rbacconfig": config.KindRbacConfig,
	"serviceroles": config.KindServiceRole, "servicerole": config.KindServiceRole,
	"servicerolebindings": config.KindServiceRoleBinding, "servicerolebinding": config.KindServiceRoleBinding,
	"meshconfig": config.KindMeshConfig,
	"services":   config.KindService, "service": config.KindService, "svc": config.KindService,
	"workloads": config.KindWorkload, "workload": config.KindWorkload,
	// "sidecars" are the connected sidecars (what operators ask most);
	// the Sidecar config kind is "sidecarconfigs".
	"sidecars": "Connected", "sidecar": "Connected",
	"sidecarconfigs": config.KindSidecar, "sidecarconfig": config.KindSidecar,
}

// newGetCmd builds `meshctl get`.
func newGetCmd(g *globalFlags) *cobra.Command {
	var (
		files     []string
		output    string
		namespace string
	)
	cmd := &cobra.Command{
		Use:   "get policies|destinationrules|serviceroles|servicerolebindings|rbacconfig|meshconfig|sidecarconfigs|services|workloads|sidecars",
		Short: "List config objects, registry entries or connected sidecars",
		Long: `get lists what the control plane holds. services and workloads come from the
registry (declared in config, or registered by sidecars, or from Kubernetes);
sidecars lists connected sidecars with the snapshot version they ACKed.
With -f it reads files instead of asking the control plane.`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			kind, ok := kindAliases[strings.ToLower(args[0])]
			if !ok {
				return &exitError{2, fmt.Errorf("get: unknown kind %q (policies, destinationrules, serviceroles, servicerolebindings, rbacconfig, meshconfig, sidecarconfigs, services, workloads, sidecars)", args[0])}
			}
			st, err := policyState(cmd.Context(), g, files)
			if err != nil {
				return err
			}
			return printGet(cmd.OutOrStdout(), st, kind, namespace, output)
		},
	}
	cmd.Flags().StringArrayVarP(&files, "filename", "f", nil, "read config from files instead of the control plane")
	cmd.Flags().StringVarP(&output, "output", "o", "table", "output format: table, yaml or json")
	cmd.Flags().StringVarP(&namespace, "namespace", "n", "", "only this namespace (default: all)")
	return cmd
}

func printGet(w io.Writer, st *meshapi.State, kind, ns, output string) error {
	var items []any
	inNS := func(n string) bool { return ns == "" || n == ns }
	switch kind {
	case config.KindService:
		for _, s := range st.Registry.Services {
			if inNS(s.Namespace) {
				items = append(items, s)
			}
		}
	case config.KindWorkload:
		for _, wl := range st.Registry.Workloads {
			if inNS(wl.Namespace) {
				items = append(items, wl)
			}
		}
	case "Connected":
		for _, s := range st.Sidecars {
			if n, _, _ := strings.Cut(s.Workload, "/"); inNS(n) {
				items = append(items, s)
			}
		}
	default:
		for _, o := range st.Config.Objects() {
			obj := config.ObjectOf(o)
			if obj.Kind == kind || (kind == config.KindRbacConfig && obj.Kind == config.KindClusterRbacConfig) {
				if inNS(obj.Metadata.Namespace) {
					items = append(items, o)
				}
			}
		}
	}
	switch output {
	case "json":
		enc := json.NewEncoder(w)
		enc.SetIndent("", "  ")
		if items == nil {
			items = []any{}
		}
		return enc.Encode(items)
	case "yaml":
		for i, it := range items {
			if i > 0 {
				fmt.Fprintln(w, "---")
			}
			enc := yaml.NewEncoder(w)
			enc.SetIndent(2)
			if err := enc.Encode(it); err != nil {
				return err
			}
			enc.Close()
		}
		return nil
	case "table", "":
		return printTable(w, kind, items)
	}
	return &exitError{2, fmt.Errorf("get: unknown output %q (table, yaml, json)", output)}
}

func printTable(w io.Writer, kind string, items []any) error {
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	defer tw.Flush()
	if len(items) == 0 {
		fmt.Fprintf(tw, "no %s found\n", kind)
		return nil
	}
	switch kind {
	case config.KindService:
		fmt.Fprintln(tw, "NAMESPACE\tNAME\tPORTS\tSELECTOR\tADDRESS\tSOURCE")
		for _, it := range items {
			s := it.(*registry.Service)
			var ports []string
			for _, p := range s.Ports {
				ports = append(ports, fmt.Sprintf("%d->%d/%s", p.Number, p.TargetPort, orDash(p.Protocol)))
			}
			fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\n", s.Namespace, s.Name, strings.Join(ports, ","), labels(s.Selector), orDash(s.Address), s.Source)
		}
	case config.KindWorkload:
		fmt.Fprintln(tw, "NAMESPACE\tNAME\tSERVICE ACCOUNT\tADDRESS\tSIDECAR\tLABELS\tSOURCE")
		for _, it := range items {
			wl := it.(*registry.Workload)
			fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%v\t%s\t%s\n", wl.Namespace, wl.Name, wl.ServiceAccount, wl.Address, wl.Sidecar, labels(wl.Labels), wl.Source)
		}
	case "Connected":
		fmt.Fprintln(tw, "WORKLOAD\tIDENTITY\tSENT\tACKED\tNACK")
		for _, it := range items {
			s := it.(meshapi.SidecarStatus)
			fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\n", s.Workload, s.SPIFFEID, s.Sent, orDash(s.Acked), orDash(s.NackError))
		}
	default:
		fmt.Fprintln(tw, "KIND\tNAMESPACE\tNAME\tSUMMARY\tSOURCE")
		for _, it := range items {
			o := config.ObjectOf(it)
			fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\n", o.Kind, orDash(o.Metadata.Namespace), o.Metadata.Name, summary(it), sourceOf(o))
		}
	}
	return nil
}

func sourceOf(o *config.Object) string {
	if o.Source.File == "" {
		return "-"
	}
	return fmt.Sprintf("%s:%d", o.Source.File, o.Source.Line)
}

func orDash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

func labels(m map[string]string) string {
	if len(m) == 0 {
		return "-"
	}
	var kv []string
	for k, v := range m {
		kv = append(kv, k+"="+v)
	}
	sort.Strings(kv)
	return strings.Join(kv, ",")
}

// summary is one line saying what an object does.
func summary(v any) string {
	switch o := v.(type) {
	case *config.Policy:
		var t []string
		for _, tg := range o.Spec.Targets {
			s := tg.Name
			for _, p := range tg.Ports {
				s += ":" + p.String()
			}
			t = append(t, s)
		}
		target := "namespace"
		if o.Kind == config.KindMeshPolicy {
			target = "mesh"
		}
		if len(t) > 0 {
			target = strings.Join(t, ",")
		}
		mode := "no peer auth (plaintext)"
		for _, p := range o.Spec.Peers {
			if p.MTLS != nil {
				mode = "mTLS " + string(orStrict(p.MTLS.Mode))
				if o.Spec.PeerIsOptional {
					mode += " (peer optional)"
				}
			}
		}
		return target + ": " + mode
	case *config.DestinationRule:
		mode := "no tls"
		if o.Spec.TrafficPolicy != nil && o.Spec.TrafficPolicy.TLS != nil {
			mode = string(o.Spec.TrafficPolicy.TLS.Mode)
		}
		if o.Spec.TrafficPolicy != nil && len(o.Spec.TrafficPolicy.PortLevelSettings) > 0 {
			mode += fmt.Sprintf(" (+%d port settings)", len(o.Spec.TrafficPolicy.PortLevelSettings))
		}
		return o.Spec.Host + ": " + mode
	case *config.RbacConfig:
		return string(o.Spec.Mode)
	case *config.ServiceRole:
		return fmt.Sprintf("%d rule(s)", len(o.Spec.Rules))
	case *config.ServiceRoleBinding:
		return fmt.Sprintf("%d subject(s) -> %s", len(o.Spec.Subjects), o.Spec.RoleRef.Name)
	case *config.Sidecar:
		var hosts []string
		for _, e := range o.Spec.Egress {
			hosts = append(hosts, e.Hosts...)
		}
		sel := "namespace"
		if o.Spec.WorkloadSelector != nil {
			sel = labels(o.Spec.WorkloadSelector.Labels)
		}
		return sel + ": egress " + strings.Join(hosts, ",")
	case *config.MeshConfig:
		ap := o.Spec.AuthPolicy
		if ap == "" {
			ap = config.AuthPolicyNone
		}
		return "authPolicy " + string(ap)
	}
	return ""
}

func orStrict(m config.MTLSMode) config.MTLSMode {
	if m == "" {
		return config.MTLSStrict
	}
	return m
}
