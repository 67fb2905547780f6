package kube

import (
	"context"
	"fmt"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"

	"github.com/meshauth/meshauth/internal/identity"
	"github.com/meshauth/meshauth/internal/meshapi"
	"github.com/meshauth/meshauth/internal/registry"
)

// ClusterState reads the cluster once, as `meshd kube-control` sees it, and
// returns the state meshctl's tls-check, explain and get work on: the valid
// config objects and the registry from Services, EndpointSlices and Pods.
// It needs only read access, so `meshctl --kubeconfig ... tls-check` works
// with a user's own credentials, without reaching the control plane.
func ClusterState(ctx context.Context, rc *rest.Config, meshNamespace string) (*meshapi.State, []Invalid, error) {
	cs, err := kubernetes.NewForConfig(rc)
	if err != nil {
		return nil, nil, err
	}
	dyn, err := dynamic.NewForConfig(rc)
	if err != nil {
		return nil, nil, err
	}
	objs := map[string][]*unstructured.Unstructured{}
	for _, k := range ConfigKinds {
		list, err := dyn.Resource(k.GVR()).List(ctx, metav1.ListOptions{})
		if apierrors.IsNotFound(err) {
			continue // CRD not installed: no objects of that kind
		}
		if err != nil {
			return nil, nil, fmt.Errorf("kube: list %s.%s: %w", k.Plural, k.Group, err)
		}
		for i := range list.Items {
			objs[k.Kind] = append(objs[k.Kind], &list.Items[i])
		}
	}
	mesh, err := cs.CoreV1().ConfigMaps(meshNamespace).Get(ctx, "istio", metav1.GetOptions{})
	if apierrors.IsNotFound(err) {
		mesh, err = nil, nil
	}
	if err != nil {
		return nil, nil, fmt.Errorf("kube: mesh ConfigMap %s/istio: %w", meshNamespace, err)
	}
	res := BuildConfig(objs, mesh)
	if res.Err != nil {
		return nil, res.Invalid, res.Err
	}

	svcs, err := cs.CoreV1().Services("").List(ctx, metav1.ListOptions{})
	if err != nil {
		return nil, nil, fmt.Errorf("kube: list services: %w", err)
	}
	pods, err := cs.CoreV1().Pods("").List(ctx, metav1.ListOptions{})
	if err != nil {
		return nil, nil, fmt.Errorf("kube: list pods: %w", err)
	}
	eps, err := cs.DiscoveryV1().EndpointSlices("").List(ctx, metav1.ListOptions{})
	if err != nil {
		return nil, nil, fmt.Errorf("kube: list endpointslices: %w", err)
	}
	td := res.Config.TrustDomain()
	if td == "" {
		td = identity.DefaultTrustDomain
	}
	ss, ws := Convert(ptrs(svcs.Items), ptrs(pods.Items), ptrs(eps.Items), td)
	reg := registry.New()
	reg.Sync(registry.SourceKube, ss, ws)
	return &meshapi.State{Config: res.Config, Registry: reg.State()}, res.Invalid, nil
}

func ptrs[T any](items []T) []*T {
	out := make([]*T, len(items))
	for i := range items {
		out[i] = &items[i]
	}
	return out
}
