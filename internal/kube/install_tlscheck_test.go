package kube

import (
	"bytes"
	"testing"

	corev1 "k8s.io/api/core/v1"
	"sigs.k8s.io/yaml"

	"github.com/meshauth/meshauth/internal/policy/engine"
	"github.com/meshauth/meshauth/internal/registry"
)

// TestInstallMeshConfigExcludesSidecarlessServices: under `meshctl install
// --mtls` (mesh-wide MUTUAL_TLS), the two services no sidecar fronts — the
// control plane itself and the API server — are called without the mesh's
// mTLS, so `meshctl tls-check`/`check` on a fresh install show no CONFLICT
// for them (on the test cluster they did: meshauth-control's three ports
// were CONFLICT), while a meshed service stays ISTIO_MUTUAL and OK. The
// mesh config is read from the rendered ConfigMap as the control plane
// reads it on a cluster (BuildConfig).
func TestInstallMeshConfigExcludesSidecarlessServices(t *testing.T) {
	out, err := RenderInstall(InstallConfig{MTLS: true, NoCRDs: true})
	if err != nil {
		t.Fatal(err)
	}
	var cm *corev1.ConfigMap
	for _, doc := range bytes.Split(out, []byte("\n---\n")) {
		var c corev1.ConfigMap
		if yaml.Unmarshal(doc, &c) == nil && c.Kind == "ConfigMap" && c.Name == "istio" {
			cm = &c
		}
	}
	if cm == nil {
		t.Fatal("meshctl install --mtls renders no ConfigMap istio")
	}
	res := BuildConfig(nil, cm)
	if res.Err != nil || len(res.Invalid) > 0 {
		t.Fatalf("the rendered mesh config is refused: %v %+v", res.Err, res.Invalid)
	}
	reg := registry.New()
	reg.Sync(registry.SourceConfig, []*registry.Service{
		{Name: "meshauth-control", Namespace: "istio-system", Selector: map[string]string{"app": "meshauth-control"},
			Ports: []registry.Port{{Name: "grpc-ca", Number: 15012, TargetPort: 15012}, {Name: "https-webhook", Number: 443, TargetPort: 15017}, {Name: "http-metrics", Number: 15014, TargetPort: 15014}}},
		{Name: "kubernetes", Namespace: "default", Ports: []registry.Port{{Name: "https", Number: 443, TargetPort: 6443}}},
		{Name: "httpbin", Namespace: "default", Selector: map[string]string{"app": "httpbin"},
			Ports: []registry.Port{{Name: "http", Number: 8000, TargetPort: 80}}},
	}, []*registry.Workload{
		{Name: "meshauth-control-0", Namespace: "istio-system", ServiceAccount: "meshauth-control", Labels: map[string]string{"app": "meshauth-control"}, Address: "10.0.0.2"},
		{Name: "httpbin-0", Namespace: "default", ServiceAccount: "httpbin", Labels: map[string]string{"app": "httpbin"}, Address: "10.0.0.3", Sidecar: true},
	})
	rows := engine.New(res.Config, reg).TLSCheck(nil)
	seen := map[string]bool{}
	for _, r := range rows {
		seen[r.Host] = true
		t.Logf("%s:%d %s server %s client %s (%s)", r.Host, r.Port, r.Status, r.Server.Mode, r.Client.Mode, r.Client.DecidedBy)
		switch r.Host {
		case "meshauth-control.istio-system.svc.cluster.local", "kubernetes.default.svc.cluster.local":
			if r.Status != "OK" || r.Client.Mode != "DISABLE" {
				t.Errorf("%s:%d: %s, client %s; want OK with client DISABLE (mtlsExcludedServices)", r.Host, r.Port, r.Status, r.Client.Mode)
			}
		case "httpbin.default.svc.cluster.local":
			if r.Status != "OK" || r.Client.Mode != "ISTIO_MUTUAL" {
				t.Errorf("httpbin: %s, client %s; want OK with ISTIO_MUTUAL", r.Status, r.Client.Mode)
			}
		}
	}
	for _, h := range []string{"meshauth-control.istio-system.svc.cluster.local", "kubernetes.default.svc.cluster.local", "httpbin.default.svc.cluster.local"} {
		if !seen[h] {
			t.Errorf("tls-check has no row for %s", h)
		}
	}
}
