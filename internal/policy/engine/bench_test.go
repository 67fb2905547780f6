package engine

import (
	"fmt"
	"runtime"
	"strings"
	"testing"

	"github.com/meshauth/meshauth/internal/config"
	"github.com/meshauth/meshauth/internal/registry"
)

// bigMesh builds a mesh of nsCount namespaces x svcPerNS services, each
// service selecting wlPerSvc workloads, plus per-namespace policies,
// DestinationRules and RBAC roles, and returns the engine and the
// registry's heap cost in bytes.
func bigMesh(tb testing.TB, nsCount, svcPerNS, wlPerSvc int, extra ...string) (*Engine, uint64) {
	tb.Helper()
	var docs strings.Builder
	for _, x := range extra {
		docs.WriteString(x + "\n---\n")
	}
	docs.WriteString("apiVersion: meshauth.io/v1alpha1\nkind: MeshConfig\nmetadata: {name: mesh}\nspec: {authPolicy: MUTUAL_TLS}\n")
	docs.WriteString("---\napiVersion: rbac.istio.io/v1alpha1\nkind: RbacConfig\nmetadata: {name: default}\nspec: {mode: ON_WITH_EXCLUSION, exclusion: {namespaces: [ns-0]}}\n")
	for n := 0; n < nsCount; n++ {
		ns := fmt.Sprintf("ns-%d", n)
		fmt.Fprintf(&docs, "---\napiVersion: authentication.istio.io/v1alpha1\nkind: Policy\nmetadata: {name: default, namespace: %s}\nspec: {peers: [{mtls: {}}]}\n", ns)
		fmt.Fprintf(&docs, "---\napiVersion: authentication.istio.io/v1alpha1\nkind: Policy\nmetadata: {name: svc-0-permissive, namespace: %s}\nspec: {targets: [{name: svc-0, ports: [{number: 8080}]}], peers: [{mtls: {mode: PERMISSIVE}}]}\n", ns)
		fmt.Fprintf(&docs, "---\napiVersion: networking.istio.io/v1alpha3\nkind: DestinationRule\nmetadata: {name: default, namespace: %s}\nspec: {host: '*.%s.svc.cluster.local', trafficPolicy: {tls: {mode: ISTIO_MUTUAL}}}\n", ns, ns)
		fmt.Fprintf(&docs, "---\napiVersion: rbac.istio.io/v1alpha1\nkind: ServiceRole\nmetadata: {name: viewer, namespace: %s}\nspec: {rules: [{services: ['*'], methods: [GET], paths: ['/api/*']}]}\n", ns)
		fmt.Fprintf(&docs, "---\napiVersion: rbac.istio.io/v1alpha1\nkind: ServiceRoleBinding\nmetadata: {name: viewers, namespace: %s}\nspec: {subjects: [{properties: {source.namespace: %s}}], roleRef: {kind: ServiceRole, name: viewer}}\n", ns, ns)
	}
	cfg, err := config.Load([]config.File{{Name: "big.yaml", Content: []byte(docs.String())}})
	if err != nil {
		tb.Fatal(err)
	}
	runtime.GC()
	var before runtime.MemStats
	runtime.ReadMemStats(&before)
	var ss []*registry.Service
	var ws []*registry.Workload
	for n := 0; n < nsCount; n++ {
		ns := fmt.Sprintf("ns-%d", n)
		for s := 0; s < svcPerNS; s++ {
			name := fmt.Sprintf("svc-%d", s)
			ss = append(ss, &registry.Service{Name: name, Namespace: ns, Selector: map[string]string{"app": name},
				Ports: []registry.Port{{Name: "http", Number: 80, TargetPort: 8080, Protocol: "HTTP"}, {Name: "grpc", Number: 9090, TargetPort: 9090, Protocol: "GRPC"}}})
			for w := 0; w < wlPerSvc; w++ {
				ws = append(ws, &registry.Workload{Name: fmt.Sprintf("%s-%d", name, w), Namespace: ns, ServiceAccount: name,
					Labels: map[string]string{"app": name, "version": "v1"}, Address: fmt.Sprintf("10.%d.%d.%d", n%250, s%250, w), Sidecar: true,
					Ports: []registry.WorkloadPort{{Number: 8080}, {Number: 9090}}})
			}
		}
	}
	reg := registry.New()
	reg.Sync(registry.SourceConfig, ss, ws)
	ss, ws = nil, nil
	runtime.GC()
	var after runtime.MemStats
	runtime.ReadMemStats(&after)
	runtime.KeepAlive(reg)
	return New(cfg, reg), after.HeapAlloc - before.HeapAlloc
}

// BenchmarkSnapshot10kServices computes one sidecar's effective policy in a
// mesh of 10,000 services and 100,000 workloads (100 namespaces x 100
// services x 10 workloads). The first iteration builds the shared outbound
// table; every later one is what a config push to one more sidecar costs.
func BenchmarkSnapshot10kServices(b *testing.B) {
	e, regBytes := bigMesh(b, 100, 100, 10)
	w := e.Registry().Workload("ns-42", "svc-7-3")
	if s := e.Snapshot(w); len(s.Outbound) != 10000 || len(s.Inbound) != 2 || s.RBAC == nil {
		b.Fatalf("unexpected snapshot: %d outbound, %d inbound", len(s.Outbound), len(s.Inbound))
	}
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		_ = e.Snapshot(w)
	}
	b.StopTimer()
	// After ResetTimer, which drops earlier metrics.
	b.ReportMetric(float64(regBytes)/(1<<20), "registry-MiB")
}

// BenchmarkSnapshotScoped10kServices is the same mesh with a Sidecar in the
// client's namespace limiting its outbound table to its own namespace and
// ns-0 (200 of the 10,000 services): the snapshot a sidecar receives is 50
// times smaller.
func BenchmarkSnapshotScoped10kServices(b *testing.B) {
	e, _ := bigMesh(b, 100, 100, 10, "apiVersion: networking.istio.io/v1alpha3\nkind: Sidecar\nmetadata: {name: default, namespace: ns-42}\nspec: {egress: [{hosts: ['./*', 'ns-0/*']}]}")
	w := e.Registry().Workload("ns-42", "svc-7-3")
	if s := e.Snapshot(w); len(s.Outbound) != 200 || s.OutboundScope != "Sidecar/ns-42/default" {
		b.Fatalf("unexpected snapshot: %d outbound, scope %q", len(s.Outbound), s.OutboundScope)
	}
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		_ = e.Snapshot(w)
	}
}

// BenchmarkSnapshotAfterEndpointChange is the cost when the registry moved
// since the last snapshot (one workload added): the table is rebuilt, only
// the changed service's entry is recomputed.
func BenchmarkSnapshotAfterEndpointChange(b *testing.B) {
	e, _ := bigMesh(b, 100, 100, 10)
	w := e.Registry().Workload("ns-42", "svc-7-3")
	e.Snapshot(w)
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		e.Registry().PutWorkload(&registry.Workload{Name: "extra", Namespace: "ns-1", ServiceAccount: "svc-1",
			Labels: map[string]string{"app": "svc-1"}, Address: fmt.Sprintf("10.99.%d.%d", i/250%250, i%250), Sidecar: true})
		_ = e.Snapshot(w)
	}
}

// BenchmarkExplain10kServices is one `meshctl explain` at the same scale.
func BenchmarkExplain10kServices(b *testing.B) {
	e, _ := bigMesh(b, 100, 100, 10)
	from := e.Registry().Workload("ns-42", "svc-7-3")
	to := e.Registry().Service("ns-42", "svc-9")
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		x, err := e.Explain(from, to, 80, "GET", "/api/x")
		if err != nil || !x.Allow {
			b.Fatalf("%v %+v", err, x)
		}
	}
}

// BenchmarkWarmAllNamespaces computes one snapshot in each of the 100
// namespaces (every per-namespace view of the outbound table gets built)
// and reports the heap held by the registry plus the engine's caches.
func BenchmarkWarmAllNamespaces(b *testing.B) {
	for i := 0; i < b.N; i++ {
		runtime.GC()
		var before runtime.MemStats
		runtime.ReadMemStats(&before)
		e, _ := bigMesh(b, 100, 100, 10)
		for n := 0; n < 100; n++ {
			_ = e.Snapshot(e.Registry().Workload(fmt.Sprintf("ns-%d", n), "svc-0-0"))
		}
		runtime.GC()
		var after runtime.MemStats
		runtime.ReadMemStats(&after)
		runtime.KeepAlive(e)
		b.ReportMetric(float64(after.HeapAlloc-before.HeapAlloc)/(1<<20), "registry+engine-MiB")
	}
}
