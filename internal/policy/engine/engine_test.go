package engine

import (
	"flag"
	"fmt"
	"os"
	"strings"
	"testing"

	"github.com/meshauth/meshauth/internal/config"
	"github.com/meshauth/meshauth/internal/policy"
	"github.com/meshauth/meshauth/internal/registry"
)

var update = flag.Bool("update", false, "rewrite golden files")

// load builds an engine from YAML files and inline documents.
func load(t testing.TB, paths []string, docs ...string) *Engine {
	t.Helper()
	files, err := config.ReadPaths(paths...)
	if err != nil {
		t.Fatal(err)
	}
	for i, d := range docs {
		files = append(files, config.File{Name: fmt.Sprintf("inline-%d.yaml", i), Content: []byte(d)})
	}
	cfg, err := config.Load(files)
	if err != nil {
		t.Fatalf("config: %v", err)
	}
	reg := registry.New()
	ss, ws := registry.FromConfig(cfg)
	reg.Sync(registry.SourceConfig, ss, ws)
	return New(cfg, reg)
}

func golden(t *testing.T, name, got string) {
	t.Helper()
	path := "testdata/" + name
	if *update {
		if err := os.WriteFile(path, []byte(got), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	want, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("read golden (run with -update to create it): %v", err)
	}
	if got != string(want) {
		t.Errorf("output differs from %s (run with -update if intended)\n got:\n%s\nwant:\n%s", path, got, want)
	}
}

// TestIstio08Matrix replays Istio 0.8's e2e authentication matrix:
// namespace-wide mTLS with mTLS disabled for c and for d port 80; sources a
// (sidecar) and t (no sidecar); destinations b, c, d on the default port
// (the first, 80), 80 and 8080. Only t->b and t->d:8080 fail.
func TestIstio08Matrix(t *testing.T) {
	e := load(t, []string{"testdata/matrix.yaml", "testdata/matrix-registry.yaml"})
	checkMatrix(t, e, "matrix.golden", true)
}

// TestIstio08MatrixLiteral runs the same matrix on Istio 0.8's own e2e
// files, byte for byte (testdata/istio-0.8, from istio/istio 0.8.0
// tests/e2e/tests/pilot/testdata/authn: authn-policy.yaml.tmpl and
// destination-rule.yaml.tmpl, which use no template variable): the
// namespace-wide Policy is named global-enable-mtls, as 0.8 allowed, so it
// loads with a warning that Istio 1.0 would want it named default.
func TestIstio08MatrixLiteral(t *testing.T) {
	e := load(t, []string{"testdata/istio-0.8", "testdata/matrix-registry.yaml"})
	ws := ConfigWarnings(e.Config())
	if len(ws) != 1 || ws[0].Object != "Policy/default/global-enable-mtls" || !strings.Contains(ws[0].Msg, "Istio 1.0 refuses it") {
		t.Errorf("warnings = %v, want the 0.8 naming warning for global-enable-mtls", ws)
	}
	// No rule names t here (the rewrite has a namespace-wide one), so
	// clients reach t in plaintext: no conflict anywhere.
	checkMatrix(t, e, "matrix-0.8-literal.golden", false)
}

func checkMatrix(t *testing.T, e *Engine, goldenName string, tConflict bool) {
	t.Helper()
	var table strings.Builder
	for _, src := range []string{"a", "t"} {
		from := e.Registry().Workload("default", src+"-1")
		for _, dst := range []string{"b", "c", "d"} {
			svc := e.Registry().Service("default", dst)
			for _, port := range []uint32{0, 80, 8080} {
				label := fmt.Sprint(port)
				if port == 0 {
					label, port = "default", svc.Ports[0].Number
				}
				name := fmt.Sprintf("%s->%s:%s", src, dst, label)
				x, err := e.Explain(from, svc, port, "GET", "/")
				if err != nil {
					t.Fatal(err)
				}
				wantFail := (src == "t" && dst == "b") || (src == "t" && dst == "d" && port == 8080)
				if x.Allow == wantFail {
					t.Errorf("%s: allow = %v, want %v (%s)", name, x.Allow, !wantFail, x.Reason)
				}
				verdict := "ok"
				if !x.Allow {
					verdict = "FAIL"
				}
				fmt.Fprintf(&table, "%-12s %-4s client %-12s (%s) server %-10s (%s)\n", name, verdict,
					x.Client.Mode, x.Client.DecidedBy, x.Server.Mode, x.Server.DecidedBy)
			}
		}
	}
	golden(t, goldenName, table.String())

	// tls-check flags the service whose endpoint has no sidecar when a
	// rule sends it ISTIO_MUTUAL: t takes plaintext only.
	for _, r := range e.TLSCheck(nil) {
		wantConflict := tConflict && strings.HasPrefix(r.Host, "t.")
		if (r.Status == "CONFLICT") != wantConflict {
			t.Errorf("tls-check %s:%d = %s (%s), want conflict %v", r.Host, r.Port, r.Status, r.Problem, wantConflict)
		}
	}
}

const meshMTLS = `apiVersion: meshauth.io/v1alpha1
kind: MeshConfig
metadata: {name: mesh}
spec: {authPolicy: MUTUAL_TLS}
`

const httpbin = `apiVersion: meshauth.io/v1alpha1
kind: Service
metadata: {name: httpbin}
spec:
  selector: {app: httpbin}
  ports: [{name: http, number: 8000, targetPort: 80, protocol: HTTP}, {name: grpc, number: 9000}]
---
apiVersion: meshauth.io/v1alpha1
kind: Workload
metadata: {name: httpbin-1, labels: {app: httpbin, version: v1}}
spec: {serviceAccount: httpbin, address: 10.0.0.2}
---
apiVersion: meshauth.io/v1alpha1
kind: Workload
metadata: {name: sleep-1, labels: {app: sleep}}
spec: {serviceAccount: sleep, address: 10.0.0.3}
---
apiVersion: meshauth.io/v1alpha1
kind: Workload
metadata: {name: sleep-1, namespace: legacy, labels: {app: sleep}}
spec: {address: 10.0.0.4, sidecar: false}
`

func policyYAML(mode string) string {
	return `apiVersion: authentication.istio.io/v1alpha1
kind: Policy
metadata: {name: httpbin}
spec:
  targets: [{name: httpbin}]
  peers: [{mtls: {mode: ` + mode + `}}]
`
}

func dr(mode string) string {
	return `apiVersion: networking.istio.io/v1alpha3
kind: DestinationRule
metadata: {name: httpbin}
spec:
  host: httpbin
  trafficPolicy: {tls: {mode: ` + mode + `}}
`
}

func TestTLSCheck(t *testing.T) {
	tests := []struct {
		name   string
		docs   []string
		port   uint32
		status string
		server policy.ServerMode
		client policy.ClientTLSMode
	}{
		{"strict policy, DR disable", []string{policyYAML("STRICT"), dr("DISABLE")}, 8000, "CONFLICT", policy.ServerStrict, policy.ClientDisable},
		{"strict policy, DR simple", []string{policyYAML("STRICT"), dr("SIMPLE")}, 8000, "CONFLICT", policy.ServerStrict, policy.ClientSimple},
		{"strict policy, DR istio mutual", []string{policyYAML("STRICT"), dr("ISTIO_MUTUAL")}, 8000, "OK", policy.ServerStrict, policy.ClientIstioMutual},
		{"permissive, DR disable", []string{policyYAML("PERMISSIVE"), dr("DISABLE")}, 8000, "OK", policy.ServerPermissive, policy.ClientDisable},
		{"permissive, DR istio mutual", []string{policyYAML("PERMISSIVE"), dr("ISTIO_MUTUAL")}, 8000, "OK", policy.ServerPermissive, policy.ClientIstioMutual},
		{"permissive, DR simple", []string{policyYAML("PERMISSIVE"), dr("SIMPLE")}, 8000, "OK", policy.ServerPermissive, policy.ClientSimple},
		{"permissive, no DR, mesh NONE", []string{policyYAML("PERMISSIVE")}, 8000, "OK", policy.ServerPermissive, policy.ClientDisable},
		{"no DR, mesh MUTUAL_TLS", []string{meshMTLS}, 8000, "OK", policy.ServerStrict, policy.ClientIstioMutual},
		{"nothing at all", nil, 8000, "OK", policy.ServerDisable, policy.ClientDisable},
		{"mesh MUTUAL_TLS, DR disable", []string{meshMTLS, dr("DISABLE")}, 8000, "CONFLICT", policy.ServerStrict, policy.ClientDisable},
		{"policy without peers, mesh MUTUAL_TLS", []string{meshMTLS, "apiVersion: authentication.istio.io/v1alpha1\nkind: Policy\nmetadata: {name: p}\nspec:\n  targets: [{name: httpbin}]\n"},
			8000, "CONFLICT", policy.ServerDisable, policy.ClientIstioMutual},
		{"excluded service", []string{`apiVersion: meshauth.io/v1alpha1
kind: MeshConfig
metadata: {name: mesh}
spec: {authPolicy: MUTUAL_TLS, mtlsExcludedServices: [httpbin.default.svc.cluster.local]}
`}, 8000, "CONFLICT", policy.ServerStrict, policy.ClientDisable},
		{"bare mtls is strict", []string{"apiVersion: authentication.istio.io/v1alpha1\nkind: Policy\nmetadata: {name: default}\nspec:\n  peers:\n  - mtls:\n"},
			8000, "CONFLICT", policy.ServerStrict, policy.ClientDisable},
		{"peerIsOptional is permissive", []string{"apiVersion: authentication.istio.io/v1alpha1\nkind: Policy\nmetadata: {name: default}\nspec:\n  peers: [{mtls: {}}]\n  peerIsOptional: true\n"},
			8000, "OK", policy.ServerPermissive, policy.ClientDisable},
		{"port-targeted policy beats service policy", []string{policyYAML("STRICT"),
			"apiVersion: authentication.istio.io/v1alpha1\nkind: Policy\nmetadata: {name: p9000}\nspec:\n  targets: [{name: httpbin, ports: [{number: 9000}]}]\n  peers: [{mtls: {mode: PERMISSIVE}}]\n"},
			9000, "OK", policy.ServerPermissive, policy.ClientDisable},
		{"port selected by name", []string{"apiVersion: authentication.istio.io/v1alpha1\nkind: Policy\nmetadata: {name: pgrpc}\nspec:\n  targets: [{name: httpbin, ports: [{name: grpc}]}]\n  peers: [{mtls: {}}]\n"},
			9000, "CONFLICT", policy.ServerStrict, policy.ClientDisable},
		{"port-level DR setting", []string{meshMTLS, `apiVersion: networking.istio.io/v1alpha3
kind: DestinationRule
metadata: {name: httpbin}
spec:
  host: httpbin.default.svc.cluster.local
  trafficPolicy:
    tls: {mode: DISABLE}
    portLevelSettings: [{port: {number: 8000}, tls: {mode: ISTIO_MUTUAL}}]
`}, 8000, "OK", policy.ServerStrict, policy.ClientIstioMutual},
		{"port-level DR setting by port name", []string{meshMTLS, `apiVersion: networking.istio.io/v1alpha3
kind: DestinationRule
metadata: {name: httpbin}
spec:
  host: httpbin
  trafficPolicy:
    tls: {mode: ISTIO_MUTUAL}
    portLevelSettings: [{port: {name: grpc}, tls: {mode: DISABLE}}]
`}, 9000, "CONFLICT", policy.ServerStrict, policy.ClientDisable},
		{"DR without tls keeps mesh default", []string{meshMTLS, `apiVersion: networking.istio.io/v1alpha3
kind: DestinationRule
metadata: {name: httpbin}
spec:
  host: httpbin
  subsets: [{name: v1, labels: {version: v1}}]
`}, 8000, "OK", policy.ServerStrict, policy.ClientIstioMutual},
		{"exact host beats wildcard", []string{meshMTLS, dr("ISTIO_MUTUAL"), `apiVersion: networking.istio.io/v1alpha3
kind: DestinationRule
metadata: {name: all}
spec:
  host: "*.local"
  trafficPolicy: {tls: {mode: DISABLE}}
`}, 8000, "OK", policy.ServerStrict, policy.ClientIstioMutual},
		{"MeshPolicy strict needs a DR", []string{"apiVersion: authentication.istio.io/v1alpha1\nkind: MeshPolicy\nmetadata: {name: default}\nspec:\n  peers: [{mtls: {}}]\n"},
			8000, "CONFLICT", policy.ServerStrict, policy.ClientDisable},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			e := load(t, nil, append([]string{httpbin}, tc.docs...)...)
			rows := e.TLSCheck([]*registry.Service{e.Registry().Service("default", "httpbin")})
			var row *TLSCheckRow
			for i := range rows {
				if rows[i].Port == tc.port {
					row = &rows[i]
				}
			}
			if row == nil {
				t.Fatalf("no row for port %d", tc.port)
			}
			if row.Status != tc.status || row.Server.Mode != tc.server || row.Client.Mode != tc.client {
				t.Errorf("got %s server %s client %s, want %s server %s client %s\n%s",
					row.Status, row.Server.Mode, row.Client.Mode, tc.status, tc.server, tc.client, TLSCheckTable(rows))
			}
			if row.Server.Mode == policy.ServerPermissive && row.Status == "CONFLICT" {
				t.Error("PERMISSIVE reported as CONFLICT")
			}
		})
	}
}

func TestClientModeSubset(t *testing.T) {
	e := load(t, nil, httpbin, `apiVersion: networking.istio.io/v1alpha3
kind: DestinationRule
metadata: {name: httpbin}
spec:
  host: httpbin
  trafficPolicy:
    tls: {mode: ISTIO_MUTUAL}
    portLevelSettings: [{port: {number: 9000}, tls: {mode: SIMPLE}}]
  subsets:
  - name: v1
    labels: {version: v1}
    trafficPolicy:
      tls: {mode: DISABLE}
      portLevelSettings: [{port: {number: 9000}, tls: {mode: MUTUAL, clientCertificate: /c.pem, privateKey: /k.pem}}]
  - name: v2
    labels: {version: v2}
`)
	svc := e.Registry().Service("default", "httpbin")
	tests := []struct {
		subset string
		port   uint32
		want   policy.ClientTLSMode
		why    string
	}{
		{"", 8000, policy.ClientIstioMutual, "rule-level tls"},
		{"", 9000, policy.ClientSimple, "port-level settings for 9000"},
		{"v1", 8000, policy.ClientDisable, "subset v1 tls"},
		{"v1", 9000, policy.ClientMutual, "subset v1 port-level settings for 9000"},
		{"v2", 8000, policy.ClientIstioMutual, "rule-level tls"},
		{"v2", 9000, policy.ClientSimple, "port-level settings for 9000"},
	}
	for _, tc := range tests {
		t.Run(fmt.Sprintf("%s_%d", tc.subset, tc.port), func(t *testing.T) {
			c := e.ClientMode(svc, tc.port, tc.subset)
			if c.Mode != tc.want || c.Why != tc.why || c.DecidedBy != "DestinationRule/default/httpbin" {
				t.Errorf("got %s (%s, %s), want %s (%s)", c.Mode, c.DecidedBy, c.Why, tc.want, tc.why)
			}
		})
	}
}

const rbac = `apiVersion: rbac.istio.io/v1alpha1
kind: RbacConfig
metadata: {name: default}
spec:
  mode: ON_WITH_INCLUSION
  inclusion: {services: [httpbin.default.svc.cluster.local]}
---
apiVersion: rbac.istio.io/v1alpha1
kind: ServiceRole
metadata: {name: viewer}
spec:
  rules:
  - services: ["httpbin.default.svc.cluster.local"]
    methods: ["GET"]
    paths: ["/headers", "/status/*"]
---
apiVersion: rbac.istio.io/v1alpha1
kind: ServiceRoleBinding
metadata: {name: sleep-views}
spec:
  subjects: [{user: "cluster.local/ns/default/sa/sleep"}]
  roleRef: {kind: ServiceRole, name: viewer}
`

func TestExplain(t *testing.T) {
	e := load(t, nil, meshMTLS, httpbin, rbac, `apiVersion: meshauth.io/v1alpha1
kind: Service
metadata: {name: sleep}
spec:
  selector: {app: sleep}
  ports: [{number: 80}]
`)
	httpbinSvc := e.Registry().Service("default", "httpbin")
	sleepSvc := e.Registry().Service("default", "sleep")
	sleep := e.Registry().Workload("default", "sleep-1")
	legacy := e.Registry().Workload("legacy", "sleep-1")
	tests := []struct {
		name         string
		from         *registry.Workload
		svc          *registry.Service
		method, path string
		allow        bool
		golden       string
	}{
		{"sleep GET /headers", sleep, httpbinSvc, "GET", "/headers", true, "explain-allow.golden"},
		{"sleep POST /headers", sleep, httpbinSvc, "POST", "/headers", false, "explain-rbac-deny.golden"},
		{"sleep GET /status/418", sleep, httpbinSvc, "GET", "/status/418", true, ""},
		{"legacy without sidecar", legacy, httpbinSvc, "GET", "/headers", false, "explain-plaintext.golden"},
		{"httpbin calls sleep (rbac off there)", e.Registry().Workload("default", "httpbin-1"), sleepSvc, "POST", "/", true, ""},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			port := tc.svc.Ports[0].Number
			x, err := e.Explain(tc.from, tc.svc, port, tc.method, tc.path)
			if err != nil {
				t.Fatal(err)
			}
			if x.Allow != tc.allow {
				t.Fatalf("allow = %v, want %v\n%s", x.Allow, tc.allow, x.Text())
			}
			if tc.golden != "" {
				golden(t, tc.golden, x.Text())
			}
		})
	}
	if _, err := e.Explain(sleep, httpbinSvc, 1234, "", ""); err == nil || !strings.Contains(err.Error(), "no port 1234") {
		t.Errorf("explain to a missing port: %v", err)
	}
}

func TestSnapshot(t *testing.T) {
	e := load(t, nil, meshMTLS, httpbin, rbac, policyYAML("PERMISSIVE"))
	s := e.Snapshot(e.Registry().Workload("default", "httpbin-1"))
	if s.InboundDefault != policy.ServerStrict || len(s.Inbound) != 2 {
		t.Fatalf("inbound: default %s, ports %+v", s.InboundDefault, s.Inbound)
	}
	if in := s.Inbound[0]; in.Port != 80 || in.Mode != policy.ServerPermissive || in.Service != "httpbin.default" || in.Protocol != "HTTP" || in.DecidedBy != "Policy/default/httpbin" {
		t.Errorf("inbound[0] = %+v", in)
	}
	if s.RBAC == nil || len(s.RBAC.Policies) != 1 || s.RBAC.Policies[0].Subjects[0].Binding != "default/sleep-views" {
		t.Fatalf("rbac = %+v", s.RBAC)
	}
	if len(s.Outbound) != 1 {
		t.Fatalf("outbound = %+v", s.Outbound)
	}
	o := s.Outbound[0]
	if o.Hosts[0] != "httpbin" || o.ServerIdentities[0] != "spiffe://cluster.local/ns/default/sa/httpbin" || o.Ports[0].TLSMode != policy.ClientIstioMutual || o.Ports[0].TargetPort != 80 {
		t.Errorf("outbound = %+v", o)
	}
	// From another namespace the short name must not resolve.
	ls := e.Snapshot(e.Registry().Workload("legacy", "sleep-1"))
	if ls.Outbound[0].Hosts[0] != "httpbin.default" {
		t.Errorf("legacy hosts = %v", ls.Outbound[0].Hosts)
	}
	// Authorize on the computed snapshot, as the sidecar will.
	if d := policy.Authorize(s, policy.Request{Source: "spiffe://cluster.local/ns/default/sa/sleep", Port: 80, Service: "httpbin.default", Method: "GET", Path: "/headers"}); !d.Allow {
		t.Errorf("sleep GET /headers denied: %s", d.Reason)
	}
	if d := policy.Authorize(s, policy.Request{Source: "spiffe://cluster.local/ns/legacy/sa/sleep", Port: 80, Service: "httpbin.default", Method: "GET", Path: "/headers"}); d.Allow {
		t.Errorf("legacy sleep allowed: %s", d.Reason)
	}
	// A new endpoint invalidates the cached outbound entry.
	e.Registry().PutWorkload(&registry.Workload{Name: "httpbin-2", Namespace: "default", ServiceAccount: "httpbin-v2", Labels: map[string]string{"app": "httpbin"}, Address: "10.0.0.9", Sidecar: true})
	s2 := e.Snapshot(e.Registry().Workload("default", "sleep-1"))
	if got := len(s2.Outbound[0].ServerIdentities); got != 2 {
		t.Errorf("after adding an endpoint: %d server identities, want 2", got)
	}
}

func TestRbacConfigModes(t *testing.T) {
	rc := func(spec string) string {
		return "apiVersion: rbac.istio.io/v1alpha1\nkind: RbacConfig\nmetadata: {name: default}\nspec: " + spec + "\n"
	}
	tests := []struct {
		name string
		doc  string
		on   bool
	}{
		{"off", rc("{mode: 'OFF'}"), false},
		{"on", rc("{mode: 'ON'}"), true},
		{"included by service", rc("{mode: ON_WITH_INCLUSION, inclusion: {services: [httpbin.default.svc.cluster.local]}}"), true},
		{"included by namespace", rc("{mode: ON_WITH_INCLUSION, inclusion: {namespaces: [default]}}"), true},
		{"not included", rc("{mode: ON_WITH_INCLUSION, inclusion: {namespaces: [other], services: [ratings.default.svc.cluster.local]}}"), false},
		{"excluded by service", rc("{mode: ON_WITH_EXCLUSION, exclusion: {services: [httpbin.default.svc.cluster.local]}}"), false},
		{"excluded by namespace", rc("{mode: ON_WITH_EXCLUSION, exclusion: {namespaces: [default]}}"), false},
		{"not excluded", rc("{mode: ON_WITH_EXCLUSION, exclusion: {namespaces: [kube-system]}}"), true},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			e := load(t, nil, httpbin, tc.doc)
			on, by := e.RBACFor(e.Registry().Service("default", "httpbin"))
			if on != tc.on || by != "RbacConfig/default" {
				t.Errorf("RBACFor = %v, %q; want %v", on, by, tc.on)
			}
			s := e.Snapshot(e.Registry().Workload("default", "httpbin-1"))
			d := policy.Authorize(s, policy.Request{Source: "spiffe://cluster.local/ns/default/sa/sleep", Port: 80, Service: "httpbin.default", Method: "GET", Path: "/"})
			// No role grants anything, so the request passes only when RBAC is off.
			if d.Allow == tc.on {
				t.Errorf("Authorize allow = %v with rbac on = %v: %s", d.Allow, tc.on, d.Reason)
			}
		})
	}
}

func TestSidecarEgressScope(t *testing.T) {
	e := load(t, nil, meshMTLS, httpbin, `apiVersion: meshauth.io/v1alpha1
kind: Service
metadata: {name: ratings, namespace: other}
spec: {selector: {app: ratings}, ports: [{number: 9080}]}
---
apiVersion: meshauth.io/v1alpha1
kind: Service
metadata: {name: reviews, namespace: other}
spec: {selector: {app: reviews}, ports: [{number: 9080}]}
---
apiVersion: meshauth.io/v1alpha1
kind: Workload
metadata: {name: ratings-1, namespace: other, labels: {app: ratings}}
spec: {serviceAccount: ratings, address: 10.0.1.1}
---
apiVersion: networking.istio.io/v1alpha3
kind: Sidecar
metadata: {name: default, namespace: default}
spec:
  egress:
  - hosts: ["./*", "other/ratings.other.svc.cluster.local"]
---
apiVersion: networking.istio.io/v1alpha3
kind: Sidecar
metadata: {name: sleep-only-local, namespace: default}
spec:
  workloadSelector: {labels: {app: sleep}}
  egress:
  - hosts: ["./*"]
`)
	hosts := func(s *policy.Snapshot) []string {
		var out []string
		for _, o := range s.Outbound {
			out = append(out, o.Hosts[0])
		}
		return out
	}
	tests := []struct {
		name, ns, workload string
		scope              string
		want               []string
	}{
		{"namespace default Sidecar", "default", "httpbin-1", "Sidecar/default/default", []string{"httpbin", "ratings.other"}},
		{"workload selector wins", "default", "sleep-1", "Sidecar/default/sleep-only-local", []string{"httpbin"}},
		{"no Sidecar: every service", "other", "ratings-1", "", []string{"httpbin.default", "ratings", "reviews"}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			s := e.Snapshot(e.Registry().Workload(tc.ns, tc.workload))
			if got := hosts(s); strings.Join(got, " ") != strings.Join(tc.want, " ") || s.OutboundScope != tc.scope {
				t.Errorf("outbound %v scope %q, want %v scope %q", got, s.OutboundScope, tc.want, tc.scope)
			}
		})
	}
	x, err := e.Explain(e.Registry().Workload("default", "sleep-1"), e.Registry().Service("other", "ratings"), 9080, "", "")
	if err != nil {
		t.Fatal(err)
	}
	if x.Allow || x.OutOfScope != "Sidecar/default/sleep-only-local" {
		t.Errorf("explain out of scope: %s", x.Text())
	}
}

// TestSelfRegisteredEndpointsNeedAnAdmittedServiceAccount: a sidecar that
// registers with a declared service's labels but another service account
// must not become an endpoint or a server identity of that service.
func TestSelfRegisteredEndpointsNeedAnAdmittedServiceAccount(t *testing.T) {
	e := load(t, nil, httpbin, `apiVersion: meshauth.io/v1alpha1
kind: Service
metadata: {name: open}
spec: {selector: {app: open}, ports: [{number: 80}]}
`)
	reg := e.Registry()
	names := selfRegister(t, e,
		&registry.Workload{Name: "evil", Namespace: "default", ServiceAccount: "sleep", Labels: map[string]string{"app": "httpbin"}, Address: "10.6.6.6"},
		&registry.Workload{Name: "httpbin-2", Namespace: "default", ServiceAccount: "httpbin", Labels: map[string]string{"app": "httpbin"}, Address: "10.0.0.9"},
		&registry.Workload{Name: "open-1", Namespace: "default", ServiceAccount: "whoever", Labels: map[string]string{"app": "open"}, Address: "10.0.0.10"},
	)
	if got := names("httpbin"); got != "httpbin-1 httpbin-2" {
		t.Errorf("httpbin endpoints = %q; the sleep-account registration must be left out", got)
	}
	if got := e.ServerIdentities(reg.Service("default", "httpbin")); len(got) != 1 || got[0] != "spiffe://cluster.local/ns/default/sa/httpbin" {
		t.Errorf("httpbin server identities = %v", got)
	}
	s := e.Snapshot(reg.Workload("default", "sleep-1"))
	for _, o := range s.Outbound {
		for _, ep := range o.Endpoints {
			if ep.Workload == "evil" {
				t.Errorf("snapshot routes %s to the unadmitted registration", o.Name)
			}
		}
	}
}

// TestRegistrationClosedByDefault: issue 11 finding 7. A Service that
// declares no workloads and no serviceAccounts used to admit any sidecar
// that registered with its labels, and secure naming then trusted that
// sidecar's identity. Registration is now closed: such a Service admits no
// self-registered sidecar, and one that lists serviceAccounts admits those
// identities only. (Failed on the old engine: "open" had endpoint evil-1
// and server identity .../sa/attacker.)
func TestRegistrationClosedByDefault(t *testing.T) {
	e := load(t, nil, `apiVersion: meshauth.io/v1alpha1
kind: Service
metadata: {name: open}
spec: {selector: {app: open}, ports: [{number: 80, protocol: HTTP}]}
---
apiVersion: meshauth.io/v1alpha1
kind: Service
metadata: {name: vm}
spec:
  selector: {app: vm}
  ports: [{number: 80, protocol: HTTP}]
  serviceAccounts: [vm]
  subjectAltNames: [spiffe://cluster.local/ns/other/sa/vm-other]
`)
	reg := e.Registry()
	names := selfRegister(t, e,
		&registry.Workload{Name: "evil-1", Namespace: "default", ServiceAccount: "attacker", Labels: map[string]string{"app": "open"}, Address: "10.6.6.6", Ports: []registry.WorkloadPort{{Number: 80}}},
		&registry.Workload{Name: "evil-2", Namespace: "default", ServiceAccount: "attacker", Labels: map[string]string{"app": "vm"}, Address: "10.6.6.7", Ports: []registry.WorkloadPort{{Number: 80}}},
		&registry.Workload{Name: "vm-1", Namespace: "default", ServiceAccount: "vm", Labels: map[string]string{"app": "vm"}, Address: "10.0.0.11", Ports: []registry.WorkloadPort{{Number: 80}}},
		&registry.Workload{Name: "vm-2", Namespace: "other", ServiceAccount: "vm-other", Labels: map[string]string{"app": "vm"}, Address: "10.0.0.12"},
	)
	if got := names("open"); got != "" {
		t.Errorf("open endpoints = %q; a Service that allows no identity must admit no self-registered sidecar", got)
	}
	if got := e.ServerIdentities(reg.Service("default", "open")); len(got) != 0 {
		t.Errorf("open server identities = %v; want none", got)
	}
	if got := names("vm"); got != "vm-1" {
		t.Errorf("vm endpoints = %q; want vm-1 only (vm-2 is in another namespace: the selector does not reach it)", got)
	}
	if got := strings.Join(e.ServerIdentities(reg.Service("default", "vm")), " "); got != "spiffe://cluster.local/ns/default/sa/vm spiffe://cluster.local/ns/other/sa/vm-other" {
		t.Errorf("vm server identities = %s", got)
	}
	// The refused sidecar's own snapshot does not serve the service's port
	// with the service's settings, and the refusals say why.
	if s := e.Snapshot(reg.Workload("default", "evil-1")); len(s.Inbound) != 0 {
		t.Errorf("refused registration got the service's inbound ports: %+v", s.Inbound)
	}
	rs := e.Refusals()
	if len(rs) != 2 || rs[0].Workload != "default/evil-1" || rs[0].Service != "open.default" || !strings.Contains(rs[0].Reason, "registration is closed") ||
		rs[1].Workload != "default/evil-2" || rs[1].SPIFFEID != "spiffe://cluster.local/ns/default/sa/attacker" || !strings.Contains(rs[1].Reason, "spiffe://cluster.local/ns/default/sa/vm") {
		t.Errorf("refusals = %+v", rs)
	}
	for _, o := range e.Snapshot(reg.Workload("default", "vm-1")).Outbound {
		for _, ep := range o.Endpoints {
			if strings.HasPrefix(ep.Workload, "evil") {
				t.Errorf("snapshot routes %s to the refused registration %s", o.Name, ep.Workload)
			}
		}
	}
}

func TestLint(t *testing.T) {
	e := load(t, nil, httpbin, `apiVersion: authentication.istio.io/v1alpha1
kind: Policy
metadata: {name: typo}
spec:
  targets: [{name: htpbin}, {name: httpbin, ports: [{number: 8080}]}]
---
apiVersion: networking.istio.io/v1alpha3
kind: DestinationRule
metadata: {name: typo}
spec:
  host: htpbin
---
apiVersion: networking.istio.io/v1alpha3
kind: DestinationRule
metadata: {name: ok}
spec:
  host: httpbin
  trafficPolicy: {portLevelSettings: [{port: {number: 8000}, tls: {mode: DISABLE}}, {port: {name: metrics}, tls: {mode: DISABLE}}]}
---
apiVersion: networking.istio.io/v1alpha3
kind: DestinationRule
metadata: {name: all}
spec:
  host: "*.local"
`)
	var got []string
	for _, w := range e.Lint() {
		got = append(got, w.String())
	}
	want := []string{
		`inline-1.yaml:5:13: Policy/default/typo: warning: target "htpbin" is not a service in namespace default: this part of the policy applies to nothing`,
		`inline-1.yaml:5:29: Policy/default/typo: warning: service default/httpbin has no port 8080: the port target applies to nothing`,
		`inline-1.yaml:13:1: DestinationRule/default/ok: warning: service default/httpbin has no port metrics: those port-level settings apply to nothing`,
		`inline-1.yaml:7:1: DestinationRule/default/typo: warning: host htpbin.default.svc.cluster.local is not a service in the mesh: the rule applies to nothing (an external host needs no rule here)`,
	}
	if strings.Join(got, "\n") != strings.Join(want, "\n") {
		t.Errorf("Lint:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
}

// TestDestinationRulesAcrossNamespaces: rules for one host in several
// namespaces are allowed; the service's own namespace wins for every
// client, and Lint names the rule that has no effect.
func TestDestinationRulesAcrossNamespaces(t *testing.T) {
	e := load(t, nil, httpbin, `apiVersion: networking.istio.io/v1alpha3
kind: DestinationRule
metadata: {name: from-client-ns, namespace: aaa}
spec:
  host: httpbin.default.svc.cluster.local
  trafficPolicy: {tls: {mode: DISABLE}}
---
apiVersion: networking.istio.io/v1alpha3
kind: DestinationRule
metadata: {name: owner, namespace: default}
spec:
  host: httpbin
  trafficPolicy: {tls: {mode: ISTIO_MUTUAL}}
`)
	c := e.ClientMode(e.Registry().Service("default", "httpbin"), 8000, "")
	if c.Mode != policy.ClientIstioMutual || c.DecidedBy != "DestinationRule/default/owner" {
		t.Errorf("client mode = %s by %s, want ISTIO_MUTUAL by the service namespace's rule", c.Mode, c.DecidedBy)
	}
	ws := e.Lint()
	if len(ws) != 1 || ws[0].Object != "DestinationRule/aaa/from-client-ns" || !strings.Contains(ws[0].Msg, "no effect") {
		t.Errorf("Lint = %v", ws)
	}
}

// TestTLSCheckExcludedWithoutEndpoints: a service in mtlsExcludedServices
// with no endpoint the registry knows (the API server: its endpoints are
// not pods) is served without a sidecar, so tls-check shows it OK with both
// sides DISABLE; an excluded service whose endpoints do run sidecars keeps
// its Policy's mode, so the real CONFLICT (client DISABLE to a STRICT
// sidecar) is still shown.
func TestTLSCheckExcludedWithoutEndpoints(t *testing.T) {
	e := load(t, nil, `apiVersion: meshauth.io/v1alpha1
kind: MeshConfig
metadata: {name: mesh}
spec:
  authPolicy: MUTUAL_TLS
  mtlsExcludedServices: [api.default.svc.cluster.local, meshed.default.svc.cluster.local]
---
apiVersion: meshauth.io/v1alpha1
kind: Service
metadata: {name: api}
spec:
  ports: [{name: https, number: 443}]
---
apiVersion: meshauth.io/v1alpha1
kind: Service
metadata: {name: meshed}
spec:
  selector: {app: meshed}
  ports: [{name: http, number: 80}]
---
apiVersion: meshauth.io/v1alpha1
kind: Workload
metadata: {name: meshed-1, labels: {app: meshed}}
spec:
  serviceAccount: meshed
  address: 10.0.0.20
  ports: [{number: 80}]
  sidecar: true
`)
	got := map[string]string{}
	for _, r := range e.TLSCheck(nil) {
		got[r.Host] = fmt.Sprintf("%s %s %s", r.Status, r.Server.Mode, r.Client.Mode)
	}
	for host, want := range map[string]string{
		"api.default.svc.cluster.local":    "OK DISABLE DISABLE",
		"meshed.default.svc.cluster.local": "CONFLICT STRICT DISABLE",
	} {
		if got[host] != want {
			t.Errorf("%s: %q, want %q", host, got[host], want)
		}
	}
}

// selfRegister registers ws as self-registered sidecars and returns the
// endpoint names of a service in namespace default, space-separated.
func selfRegister(t *testing.T, e *Engine, ws ...*registry.Workload) func(svc string) string {
	t.Helper()
	reg := e.Registry()
	for _, w := range ws {
		if _, err := reg.Register(w); err != nil {
			t.Fatal(err)
		}
	}
	return func(svc string) string {
		var out []string
		for _, w := range e.Endpoints(reg.Service("default", svc)) {
			out = append(out, w.Name)
		}
		return strings.Join(out, " ")
	}
}
