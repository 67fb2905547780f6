//go:build tools

// Package tools pins, in this module's go.mod, the dependencies of the
// upstream Kubernetes node and control-plane commands that test/cluster runs:
// kubelet, kube-proxy, kube-controller-manager, kube-scheduler and kubectl,
// all at k8s.io/kubernetes v1.34.4 (the version of tools/kube-apiserver).
// The Makefile builds them straight from the module cache with
// `go build k8s.io/kubernetes/cmd/<name>`: no Kubernetes source is copied,
// and the meshauth module itself never depends on k8s.io/kubernetes.
//
// Build: make kube-node (writes bin/kube-node/<name>).
package tools

import (
	_ "k8s.io/client-go/plugin/pkg/client/auth"
	_ "k8s.io/component-base/cli"
	_ "k8s.io/component-base/logs/json/register"
	_ "k8s.io/component-base/metrics/prometheus/clientgo"
	_ "k8s.io/component-base/metrics/prometheus/version"
	_ "k8s.io/kubectl/pkg/cmd"
	_ "k8s.io/kubectl/pkg/cmd/util"
	_ "k8s.io/kubernetes/cmd/kube-controller-manager/app"
	_ "k8s.io/kubernetes/cmd/kube-proxy/app"
	_ "k8s.io/kubernetes/cmd/kube-scheduler/app"
	_ "k8s.io/kubernetes/cmd/kubelet/app"
)
