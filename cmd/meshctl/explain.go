package main

// meshctl explain: what happens when WORKLOAD calls SERVICE:PORT, and why.

import (
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"strings"

	"github.com/spf13/cobra"

	"github.com/meshauth/meshauth/internal/policy"
	"github.com/meshauth/meshauth/internal/registry"
)

// newExplainCmd builds `meshctl explain`.
func newExplainCmd(g *globalFlags) *cobra.Command {
	var (
		files                  []string
		from, to, method, path string
		grpcMethod             string
		output                 string
	)
	cmd := &cobra.Command{
		Use:   "explain --from WORKLOAD --to SERVICE[:PORT] [--method M --path P | --grpc PKG.SERVICE/METHOD]",
		Short: "Explain a call: ALLOW or DENY, both TLS modes, expected server identities, the deciding objects",
		Long: `explain computes, with the control plane's own engine, what happens when
WORKLOAD (name.namespace, namespace/name or name in default) calls SERVICE
(name, name.namespace or FQDN) on PORT (a service port; optional when the
service has one): the client TLS mode and the object that set it, the server
mode and the object that set it, whether they fit, the client identity the
server will see, the server identities the client accepts (secure naming),
and the RBAC decision for --method and --path, or for the gRPC call --grpc
(authorized as POST /PKG.SERVICE/METHOD). Exit status 1 for DENY.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if from == "" || to == "" {
				return &exitError{2, errors.New("explain: --from and --to are required")}
			}
			method, path, err := explainRequest(method, path, grpcMethod)
			if err != nil {
				return &exitError{2, err}
			}
			st, err := policyState(cmd.Context(), g, files)
			if err != nil {
				return err
			}
			e := st.Engine()
			w := lookupWorkload(e.Registry(), from)
			if w == nil {
				return &exitError{2, fmt.Errorf("explain: no workload %q (meshctl get workloads)", from)}
			}
			host, portStr, hasPort := strings.Cut(to, ":")
			svc := e.LookupService(host, w.Namespace)
			if svc == nil {
				return &exitError{2, fmt.Errorf("explain: no service %q seen from namespace %s (meshctl get services)", host, w.Namespace)}
			}
			port, err := explainPort(svc, host, portStr, hasPort)
			if err != nil {
				return &exitError{2, err}
			}
			x, err := e.Explain(w, svc, port, method, path)
			if err != nil {
				return &exitError{2, err}
			}
			if output == "json" {
				enc := json.NewEncoder(cmd.OutOrStdout())
				enc.SetIndent("", "  ")
				if err := enc.Encode(x); err != nil {
					return err
				}
			} else {
				fmt.Fprint(cmd.OutOrStdout(), x.Text())
			}
			if !x.Allow {
				return &exitError{1, fmt.Errorf("explain: DENY: %s", x.Reason)}
			}
			return nil
		},
	}
	f := cmd.Flags()
	f.StringArrayVarP(&files, "filename", "f", nil, "compute from files instead of the control plane")
	f.StringVar(&from, "from", "", "calling workload: name.namespace, namespace/name, or name (namespace default)")
	f.StringVar(&to, "to", "", "called service and port: SERVICE[.NAMESPACE][:PORT]")
	f.StringVar(&method, "method", "", "HTTP method, for RBAC (empty: a TCP connection)")
	f.StringVar(&path, "path", "", "HTTP path, for RBAC")
	f.StringVar(&grpcMethod, "grpc", "", "gRPC method (package.Service/Method), for RBAC: the call POST /package.Service/Method")
	f.StringVarP(&output, "output", "o", "text", "output format: text or json")
	return cmd
}

// explainPort is the service port explain asks about: the one given, or
// the service's only port.
func explainPort(svc *registry.Service, host, portStr string, hasPort bool) (uint32, error) {
	switch {
	case hasPort:
		p, err := strconv.ParseUint(portStr, 10, 16)
		if err != nil {
			return 0, fmt.Errorf("explain: port %q is not a number", portStr)
		}
		return uint32(p), nil
	case len(svc.Ports) == 1:
		return svc.Ports[0].Number, nil
	}
	return 0, fmt.Errorf("explain: service %s has several ports; give --to %s:PORT", svc.Key(), host)
}

// explainRequest is the request explain authorizes: --method and --path,
// or the gRPC call --grpc names (POST /package.Service/Method).
func explainRequest(method, path, grpcMethod string) (string, string, error) {
	if grpcMethod == "" {
		return method, path, nil
	}
	if method != "" || path != "" {
		return "", "", errors.New("explain: --grpc replaces --method and --path")
	}
	m, p, err := policy.GRPCRequest(grpcMethod)
	if err != nil {
		return "", "", fmt.Errorf("explain: --grpc: %w", err)
	}
	return m, p, nil
}

// lookupWorkload accepts "ns/name", "name.ns" and "name" (in default).
func lookupWorkload(r *registry.Registry, s string) *registry.Workload {
	if ns, name, ok := strings.Cut(s, "/"); ok {
		return r.Workload(ns, name)
	}
	if w := r.Workload("default", s); w != nil {
		return w
	}
	if i := strings.LastIndex(s, "."); i > 0 {
		return r.Workload(s[i+1:], s[:i])
	}
	return nil
}
