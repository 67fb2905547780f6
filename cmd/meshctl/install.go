package main

import (
	"fmt"

	"github.com/spf13/cobra"

	"github.com/meshauth/meshauth/internal/kube"
)

// newInstallCmd builds `meshctl install`.
func newInstallCmd() *cobra.Command {
	var (
		cfg  kube.InstallConfig
		mode string
		crds bool
	)
	cmd := &cobra.Command{
		Use:   "install [--mtls]",
		Short: "Print the Kubernetes manifests that install meshauth (pipe to kubectl apply -f -)",
		Long: `install renders the manifests that run meshauth on Kubernetes: the config
CRDs (Policy, MeshPolicy, DestinationRule, RbacConfig, ServiceRole,
ServiceRoleBinding), the control plane namespace, its RBAC, the meshd
kube-control Deployment (labelled istio=citadel) and Service, the mesh
ConfigMap "istio" with authPolicy, and the injection webhook for namespaces
labelled istio-injection=enabled.

  meshctl install --mtls | kubectl apply -f -

--mtls sets authPolicy: MUTUAL_TLS (the seed's istio-demo-auth.yaml).`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			cfg.InjectMode = kube.Mode(mode)
			cfg.NoCRDs = !crds
			out, err := kube.RenderInstall(cfg)
			if err != nil {
				return &exitError{2, fmt.Errorf("install: %w", err)}
			}
			_, err = cmd.OutOrStdout().Write(out)
			return err
		},
	}
	f := cmd.Flags()
	f.BoolVar(&cfg.MTLS, "mtls", false, "mesh-wide mutual TLS (authPolicy: MUTUAL_TLS)")
	f.StringVar(&cfg.Namespace, "namespace", "istio-system", "control plane namespace")
	f.StringVar(&cfg.Image, "image", "", "control plane image (default ghcr.io/meshauth/meshd:latest)")
	f.StringVar(&cfg.ProxyImage, "proxy-image", "", "sidecar/init image injected into pods (default ghcr.io/meshauth/proxy:latest)")
	f.StringVar(&mode, "inject-mode", string(kube.SecretMode), "what the webhook injects: secret (Secret istio.<sa>) or csr (projected token, key stays in the pod)")
	f.StringVar(&cfg.TrustDomain, "trust-domain", "", "trust domain (default cluster.local)")
	f.BoolVar(&crds, "crds", true, "include the CustomResourceDefinitions")
	return cmd
}
