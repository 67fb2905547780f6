package engine

import (
	"strings"
	"testing"

	"github.com/meshauth/meshauth/internal/policy"
)

// TestMixerRBACKeys: Istio 0.8's RBAC names go through the default
// authorization instance: constraint "app" is the destination's app label,
// property "namespace" the caller's namespace (from its certificate). A
// name the instance does not define, and a group other than "*", never
// match (Mixer's behaviour), so they grant nothing.
func TestMixerRBACKeys(t *testing.T) {
	e := load(t, []string{"testdata/matrix-registry.yaml"}, `apiVersion: rbac.istio.io/v1alpha1
kind: RbacConfig
metadata: {name: default}
spec: {mode: "ON"}
---
apiVersion: config.istio.io/v1alpha2
kind: ServiceRole
metadata: {name: access-d}
spec:
  rules:
  - services: ["*"]
    methods: ["GET"]
    constraints: [{key: app, values: ["d"]}]
---
apiVersion: config.istio.io/v1alpha2
kind: ServiceRoleBinding
metadata: {name: bind-access-d}
spec:
  subjects: [{properties: {namespace: default}}]
  roleRef: {kind: ServiceRole, name: access-d}
---
apiVersion: config.istio.io/v1alpha2
kind: ServiceRole
metadata: {name: access-c}
spec:
  rules:
  - services: ["c.default.svc.cluster.local"]
    methods: ["*"]
    constraints: [{key: tier, values: ["*"]}]
  - services: ["b.default.svc.cluster.local"]
    methods: ["*"]
---
apiVersion: config.istio.io/v1alpha2
kind: ServiceRoleBinding
metadata: {name: bind-access-c}
spec:
  subjects: [{properties: {service: "*"}}, {group: admins}]
  roleRef: {kind: ServiceRole, name: access-c}
`)
	const a = "spiffe://cluster.local/ns/default/sa/default"
	const other = "spiffe://cluster.local/ns/other/sa/default"
	for _, tc := range []struct {
		svc, src string
		allow    bool
	}{
		{"d", a, true},      // app=d and namespace default
		{"d", other, false}, // namespace other
		{"b", a, false},     // b's app label is b; access-c's b rule has only never-matching subjects
		{"c", a, false},     // "tier" is no attribute: never matches
	} {
		svc := e.Registry().Service("default", tc.svc)
		w := e.Registry().Endpoints(svc.Key())[0]
		snap := e.Snapshot(w)
		d := policy.Authorize(snap, policy.Request{Source: tc.src, Port: svc.Ports[0].TargetPort, Service: tc.svc + ".default", Method: "GET", Path: "/"})
		if d.Allow != tc.allow {
			t.Errorf("%s -> %s: allow = %v, want %v (%s)", tc.src, tc.svc, d.Allow, tc.allow, d.Reason)
		}
	}
}

// TestRequestAuthProperties: request.auth.* properties match only a
// verified credential; a request without one matches none of them, not
// even "*".
func TestRequestAuthProperties(t *testing.T) {
	rules := []policy.RBACRule{{Services: []string{"*"}, Methods: []string{"*"}}}
	snap := func(props map[string]string) *policy.Snapshot {
		return &policy.Snapshot{Workload: policy.WorkloadRef{Name: "w", Namespace: "default", ServiceAccount: "httpbin"},
			RBAC: &policy.RBAC{Policies: []policy.RBACPolicy{{Role: "default/r", Bindings: []string{"default/b"}, Rules: rules,
				Subjects: []policy.RBACSubject{{Properties: props, Binding: "default/b"}}}}}}
	}
	auth := &policy.RequestAuth{Principal: "https://issuer.example/alice", Audiences: []string{"bookstore"}, Presenter: "web",
		Claims: map[string]any{"groups": []any{"dev", "admin"}, "email": "alice@example.com", "n": 3.0}}
	for _, tc := range []struct {
		name  string
		props map[string]string
		auth  *policy.RequestAuth
		allow bool
	}{
		{"principal", map[string]string{"request.auth.principal": "https://issuer.example/alice"}, auth, true},
		{"principal star without token", map[string]string{"request.auth.principal": "*"}, nil, false},
		{"principal other", map[string]string{"request.auth.principal": "https://issuer.example/bob"}, auth, false},
		{"claim in list", map[string]string{"request.auth.claims[groups]": "admin"}, auth, true},
		{"claim string suffix", map[string]string{"request.auth.claims[email]": "*@example.com"}, auth, true},
		{"claim number never", map[string]string{"request.auth.claims[n]": "3"}, auth, false},
		{"claim absent", map[string]string{"request.auth.claims[role]": "*"}, auth, false},
		{"audience", map[string]string{"request.auth.audiences": "bookstore"}, auth, true},
		{"presenter", map[string]string{"request.auth.presenter": "web", "source.namespace": "default"}, auth, true},
		{"and with peer", map[string]string{"request.auth.presenter": "web", "source.namespace": "other"}, auth, false},
	} {
		d := policy.Authorize(snap(tc.props), policy.Request{Source: "spiffe://cluster.local/ns/default/sa/sleep", Port: 80, Service: "httpbin.default",
			Method: "GET", Path: "/", Auth: tc.auth})
		if d.Allow != tc.allow {
			t.Errorf("%s: allow = %v, want %v (%s)", tc.name, d.Allow, tc.allow, d.Reason)
		}
	}
}

// TestAuthorizationInstance: with the cluster's own authorization
// instance, 0.8's names mean what it says ("tier" is the destination's
// tier label, "ns" the caller's namespace), and a name it does not define
// ("app") stays a key no request has.
func TestAuthorizationInstance(t *testing.T) {
	e := load(t, []string{"../../config/testdata/warnings/authorization-instance.yaml", "testdata/matrix-registry.yaml"}, `apiVersion: rbac.istio.io/v1alpha1
kind: RbacConfig
metadata: {name: default}
spec: {mode: "ON"}
`)
	svc := e.Registry().Service("default", "b")
	snap := e.Snapshot(e.Registry().Endpoints(svc.Key())[0])
	if snap.RBAC == nil || len(snap.RBAC.Policies) != 1 {
		t.Fatalf("rbac = %+v", snap.RBAC)
	}
	p := snap.RBAC.Policies[0]
	if k := p.Rules[0].Constraints[0].Key; k != "destination.labels[tier]" {
		t.Errorf("constraint tier -> %q, want destination.labels[tier]", k)
	}
	if k := p.Rules[1].Constraints[0].Key; k != "app" {
		t.Errorf("constraint app (not in the instance) -> %q, want app (never matches)", k)
	}
	if v, ok := p.Subjects[0].Properties["source.namespace"]; !ok || v != "default" {
		t.Errorf("property ns -> %v, want source.namespace=default", p.Subjects[0].Properties)
	}
	// b's workload has no tier label and "app" is no attribute: denied.
	d := policy.Authorize(snap, policy.Request{Source: "spiffe://cluster.local/ns/default/sa/default", Port: svc.Ports[0].TargetPort, Service: "b.default", Method: "GET", Path: "/"})
	if d.Allow {
		t.Errorf("allowed: %s", d.Reason)
	}
}

// TestExplainEndUser: explain names the Policy that requires a JWT, and
// with principalBinding USE_PEER request.auth.principal is the peer's.
func TestExplainEndUser(t *testing.T) {
	e := load(t, []string{"testdata/matrix-registry.yaml"}, `apiVersion: authentication.istio.io/v1alpha1
kind: Policy
metadata: {name: b-jwt}
spec:
  targets: [{name: b}]
  peers: [{mtls: {}}]
  origins: [{jwt: {issuer: "https://issuer.example", jwksUri: "https://issuer.example/jwks"}}]
---
apiVersion: rbac.istio.io/v1alpha1
kind: RbacConfig
metadata: {name: default}
spec: {mode: "ON"}
---
apiVersion: rbac.istio.io/v1alpha1
kind: ServiceRole
metadata: {name: r}
spec:
  rules: [{services: ["*"], methods: ["*"]}]
---
apiVersion: rbac.istio.io/v1alpha1
kind: ServiceRoleBinding
metadata: {name: r}
spec:
  subjects: [{properties: {"request.auth.principal": "cluster.local/ns/default/sa/a"}}]
  roleRef: {kind: ServiceRole, name: r}
`, `apiVersion: networking.istio.io/v1alpha3
kind: DestinationRule
metadata: {name: all}
spec:
  host: "*.local"
  trafficPolicy: {tls: {mode: ISTIO_MUTUAL}}
`)
	from := e.Registry().Workload("default", "a-1")
	x, err := e.Explain(from, e.Registry().Service("default", "b"), 80, "GET", "/")
	if err != nil {
		t.Fatal(err)
	}
	if !x.Allow || !strings.Contains(strings.Join(x.Notes, "\n"), "Policy/default/b-jwt requires end-user authentication") {
		t.Errorf("explain = %s", x.Text())
	}
}
