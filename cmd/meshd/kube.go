//go:build kube && !sidecaronly

package main

import (
	"log/slog"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/spf13/cobra"
	"k8s.io/client-go/tools/clientcmd"

	"github.com/meshauth/meshauth/internal/kube"
)

// meshd kube-control is `meshd control` on Kubernetes. Everything that
// links client-go hangs off this one file, and it is opt-in: only `go build
// -tags kube ./cmd/meshd` has it (the control-plane image,
// install/docker/meshd.Dockerfile, and `make build`'s bin/meshd-kube). The
// plain build, which `meshctl up`, `meshctl demo` and every local sidecar
// run, links no k8s.io package (cmd/meshd/deps_test.go,
// internal/kube/deps_test.go).
func init() {
	var (
		cfg        kube.ControlConfig
		kubeconfig string
		mode       string
	)
	cmd := &cobra.Command{
		Use:   "kube-control",
		Short: "run the control plane on Kubernetes: CA with istio.<sa> Secrets and TokenReview, registry and config from the API, injection webhook",
		Long: `meshd kube-control runs the control plane inside (or against) a Kubernetes
cluster. The CA signs with the root in Secret istio-ca-secret (created on
first start) or an operator's Secret cacerts, in the control plane's
namespace. It writes one Secret istio.<serviceaccount> per ServiceAccount
(secret mode) and signs CSRs of sidecars that present a projected
ServiceAccount token for audience istio-ca (CSR mode, checked by
TokenReview). Services, EndpointSlices and Pods fill the registry; the
config CRDs and the mesh ConfigMap (istio, key mesh) are the policy, and an
invalid object gets a Warning event and is not applied. The injection
webhook serves on --webhook-listen.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			cfg.Log = slog.New(slog.NewTextHandler(os.Stderr, nil))
			cfg.Inject.Mode = kube.Mode(mode)
			if kubeconfig != "" {
				rc, err := clientcmd.BuildConfigFromFlags("", kubeconfig)
				if err != nil {
					return err
				}
				cfg.REST = rc
			}
			ctx, stop := signal.NotifyContext(cmd.Context(), os.Interrupt, syscall.SIGTERM)
			defer stop()
			tuneGC(ctx) // unless GOGC/GOMEMLIMIT are set; see gctune.go
			return kube.RunControl(ctx, cfg)
		},
	}
	f := cmd.Flags()
	f.StringVar(&kubeconfig, "kubeconfig", os.Getenv("KUBECONFIG"), "kubeconfig file (default: in-cluster config)")
	f.StringVar(&cfg.Namespace, "namespace", "", "control plane namespace: root Secret and mesh ConfigMap (default $POD_NAMESPACE, then istio-system)")
	f.StringVar(&cfg.Dir, "dir", "/var/lib/meshauth", "state directory")
	f.StringVar(&cfg.Listen, "listen", ":15012", "gRPC/TLS listen address")
	f.StringVar(&cfg.MetricsListen, "metrics-listen", ":15014", "Prometheus /metrics address (empty: off)")
	f.StringVar(&cfg.TrustDomain, "trust-domain", "cluster.local", "trust domain")
	f.BoolVar(&cfg.DisableSecrets, "no-secrets", false, "do not write istio.<sa> Secrets (every sidecar uses CSR mode)")
	f.StringSliceVar(&cfg.Namespaces, "secret-namespaces", nil, "namespaces the secret controller serves (default all)")
	f.DurationVar(&cfg.CertTTL, "cert-ttl", 90*24*time.Hour, "TTL of certificates in istio.<sa> Secrets")
	f.StringVar(&cfg.WebhookListen, "webhook-listen", ":15017", "injection webhook TLS address (- to disable)")
	f.StringVar(&cfg.WebhookConfig, "webhook-config", "meshauth-sidecar-injector", "MutatingWebhookConfiguration whose caBundle to set")
	f.StringVar(&mode, "inject-mode", string(kube.SecretMode), "what the webhook injects: secret or csr")
	f.StringVar(&cfg.Inject.Image, "inject-image", "", "meshd image for injected containers")
	f.StringVar(&cfg.Inject.ControlAddr, "inject-control-addr", "", "control plane address injected sidecars use (default meshauth-control.istio-system.svc:15012)")
	root.AddCommand(cmd)
}
