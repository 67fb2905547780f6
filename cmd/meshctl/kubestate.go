package main

import (
	"context"
	"fmt"
	"os"
	"time"

	"k8s.io/client-go/tools/clientcmd"

	"github.com/meshauth/meshauth/internal/kube"
	"github.com/meshauth/meshauth/internal/meshapi"
	"github.com/spf13/cobra"
)

// kubeFlags select a Kubernetes cluster as the source of tls-check, explain
// and get, instead of the control plane's Admin API.
type kubeFlags struct {
	kubeconfig    string
	meshNamespace string
}

// register adds --kubeconfig and --mesh-namespace to root, for every
// subcommand.
func (k *kubeFlags) register(root *cobra.Command) {
	root.PersistentFlags().StringVar(&k.kubeconfig, "kubeconfig", "", "read config and registry from this Kubernetes cluster (tls-check, explain, get) instead of the control plane")
	root.PersistentFlags().StringVar(&k.meshNamespace, "mesh-namespace", "istio-system", "with --kubeconfig: namespace of the mesh ConfigMap istio")
}

// clusterState, when --kubeconfig is given, reads the config CRDs, the mesh
// ConfigMap and the registry (Services, EndpointSlices, Pods) straight from
// the cluster with the user's credentials, validated exactly as meshd
// kube-control validates them. ok is false without --kubeconfig.
func (k *kubeFlags) clusterState(ctx context.Context) (st *meshapi.State, ok bool, err error) {
	if k.kubeconfig == "" {
		return nil, false, nil
	}
	rc, err := clientcmd.BuildConfigFromFlags("", k.kubeconfig)
	if err != nil {
		return nil, true, fmt.Errorf("--kubeconfig: %w", err)
	}
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	st, invalid, err := kube.ClusterState(ctx, rc, k.meshNamespace)
	for _, i := range invalid {
		// The control plane leaves these out too; say so, as its events do.
		fmt.Fprintf(os.Stderr, "meshctl: not applied: %s: %s\n", i.Key, i.Message)
	}
	return st, true, err
}
