// Command kube-apiserver is the upstream Kubernetes API server, built from
// k8s.io/kubernetes v1.34.4 in its own module so that the meshauth module never
// depends on k8s.io/kubernetes. The tests under internal/kube start it next to
// Debian's etcd on loopback ports: they exercise meshauth's controllers,
// TokenReview authentication and admission webhook against a real API server
// instead of a fake clientset.
//
// Build: make kube-apiserver (writes bin/kube-apiserver).
package main

import (
	"os"
	_ "time/tzdata" // for timeZone support in CronJob, as upstream's main does

	"k8s.io/component-base/cli"
	_ "k8s.io/component-base/logs/json/register"
	_ "k8s.io/component-base/metrics/prometheus/clientgo"
	_ "k8s.io/component-base/metrics/prometheus/version"
	"k8s.io/kubernetes/cmd/kube-apiserver/app"
)

func main() {
	os.Exit(cli.Run(app.NewAPIServerCommand()))
}
