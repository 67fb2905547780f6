package policy

import (
	"slices"
	"testing"
)

func TestAuthorize(t *testing.T) {
	const sleep = "spiffe://cluster.local/ns/default/sa/sleep"
	const legacy = "spiffe://cluster.local/ns/legacy/sa/sleep"
	snap := func(policies ...RBACPolicy) *Snapshot {
		return &Snapshot{
			TrustDomain: "cluster.local",
			Workload: WorkloadRef{Name: "httpbin-1", Namespace: "default", ServiceAccount: "httpbin",
				Labels: map[string]string{"app": "httpbin", "version": "v1"}},
			RBAC: &RBAC{Policies: policies, DecidedBy: "RbacConfig/default"},
		}
	}
	role := func(rules []RBACRule, subjects ...RBACSubject) RBACPolicy {
		for i := range subjects {
			subjects[i].Binding = "default/bind-" + string(rune('a'+i))
		}
		return RBACPolicy{Role: "default/viewer", Bindings: []string{"default/bind-a"}, Rules: rules, Subjects: subjects}
	}
	get := func(path string) Request {
		return Request{Source: sleep, Port: 80, Service: "httpbin.default", Method: "GET", Path: path}
	}
	users := func(u string) RBACSubject { return RBACSubject{User: u} }

	tests := []struct {
		name      string
		snap      *Snapshot
		req       Request
		allow     bool
		decidedBy []string
	}{
		{name: "rbac off", snap: &Snapshot{}, req: get("/"), allow: true},
		{name: "nil snapshot", snap: nil, req: get("/"), allow: true},
		{name: "rbac on, no policies", snap: snap(), req: get("/"), allow: false, decidedBy: []string{"RbacConfig/default"}},
		{name: "exact path match", snap: snap(role([]RBACRule{{Services: []string{"*"}, Paths: []string{"/headers"}}}, users(sleep[len("spiffe://"):]))),
			req: get("/headers"), allow: true, decidedBy: []string{"ServiceRole/default/viewer", "ServiceRoleBinding/default/bind-a"}},
		{name: "exact path mismatch", snap: snap(role([]RBACRule{{Services: []string{"*"}, Paths: []string{"/headers"}}}, users("*"))),
			req: get("/headers/x"), allow: false, decidedBy: []string{"RbacConfig/default"}},
		{name: "prefix path", snap: snap(role([]RBACRule{{Services: []string{"*"}, Paths: []string{"/status/*"}}}, users("*"))),
			req: get("/status/418"), allow: true},
		{name: "prefix path mismatch", snap: snap(role([]RBACRule{{Services: []string{"*"}, Paths: []string{"/status/*"}}}, users("*"))),
			req: get("/statusx"), allow: false},
		{name: "suffix path", snap: snap(role([]RBACRule{{Services: []string{"*"}, Paths: []string{"*.png"}}}, users("*"))),
			req: get("/img/a.png"), allow: true},
		{name: "suffix path mismatch", snap: snap(role([]RBACRule{{Services: []string{"*"}, Paths: []string{"*.png"}}}, users("*"))),
			req: get("/img/a.png.txt"), allow: false},
		{name: "method allowed", snap: snap(role([]RBACRule{{Services: []string{"*"}, Methods: []string{"GET", "HEAD"}}}, users("*"))),
			req: get("/x"), allow: true},
		{name: "method denied", snap: snap(role([]RBACRule{{Services: []string{"*"}, Methods: []string{"GET"}}}, users("*"))),
			req: Request{Source: sleep, Port: 80, Service: "httpbin.default", Method: "POST", Path: "/x"}, allow: false},
		{name: "method rule never matches tcp", snap: snap(role([]RBACRule{{Services: []string{"*"}, Methods: []string{"GET"}}}, users("*"))),
			req: Request{Source: sleep, Port: 80, Service: "httpbin.default"}, allow: false},
		{name: "method star matches tcp", snap: snap(role([]RBACRule{{Services: []string{"*"}, Methods: []string{"*"}}}, users("*"))),
			req: Request{Source: sleep, Port: 80, Service: "httpbin.default"}, allow: true},
		{name: "user star allows plaintext caller", snap: snap(role([]RBACRule{{Services: []string{"*"}}}, users("*"))),
			req: Request{Port: 80, Service: "httpbin.default", Method: "GET", Path: "/"}, allow: true},
		{name: "named user refuses plaintext caller", snap: snap(role([]RBACRule{{Services: []string{"*"}}}, users("cluster.local/ns/default/sa/sleep"))),
			req: Request{Port: 80, Service: "httpbin.default", Method: "GET", Path: "/"}, allow: false},
		{name: "named user other sa", snap: snap(role([]RBACRule{{Services: []string{"*"}}}, users("cluster.local/ns/default/sa/other"))),
			req: get("/"), allow: false},
		{name: "user in spiffe form", snap: snap(role([]RBACRule{{Services: []string{"*"}}}, users(sleep))),
			req: get("/"), allow: true},
		{name: "source.namespace match", snap: snap(role([]RBACRule{{Services: []string{"*"}}}, RBACSubject{Properties: map[string]string{"source.namespace": "default"}})),
			req: get("/"), allow: true},
		{name: "source.namespace mismatch", snap: snap(role([]RBACRule{{Services: []string{"*"}}}, RBACSubject{Properties: map[string]string{"source.namespace": "default"}})),
			req: Request{Source: legacy, Port: 80, Service: "httpbin.default", Method: "GET", Path: "/"}, allow: false},
		{name: "source.namespace never matches plaintext", snap: snap(role([]RBACRule{{Services: []string{"*"}}}, RBACSubject{Properties: map[string]string{"source.namespace": "*"}})),
			req: Request{Port: 80, Service: "httpbin.default", Method: "GET", Path: "/"}, allow: false},
		{name: "source.principal prefix", snap: snap(role([]RBACRule{{Services: []string{"*"}}}, RBACSubject{Properties: map[string]string{"source.principal": "cluster.local/ns/default/*"}})),
			req: get("/"), allow: true},
		{name: "second subject matches", snap: snap(role([]RBACRule{{Services: []string{"*"}}}, users("cluster.local/ns/x/sa/y"), users("cluster.local/ns/default/sa/sleep"))),
			req: get("/"), allow: true, decidedBy: []string{"ServiceRole/default/viewer", "ServiceRoleBinding/default/bind-b"}},
		{name: "empty subject matches nobody", snap: snap(role([]RBACRule{{Services: []string{"*"}}}, RBACSubject{})),
			req: get("/"), allow: false},
		{name: "service fqdn", snap: snap(role([]RBACRule{{Services: []string{"httpbin.default.svc.cluster.local"}}}, users("*"))),
			req: get("/"), allow: true},
		{name: "service short name", snap: snap(role([]RBACRule{{Services: []string{"httpbin"}}}, users("*"))),
			req: get("/"), allow: true},
		{name: "service suffix wildcard", snap: snap(role([]RBACRule{{Services: []string{"*.default.svc.cluster.local"}}}, users("*"))),
			req: get("/"), allow: true},
		{name: "other service", snap: snap(role([]RBACRule{{Services: []string{"ratings.default.svc.cluster.local"}}}, users("*"))),
			req: get("/"), allow: false},
		{name: "no services matches nothing", snap: snap(role([]RBACRule{{Paths: []string{"*"}}}, users("*"))),
			req: get("/"), allow: false},
		{name: "label constraint", snap: snap(role([]RBACRule{{Services: []string{"*"}, Constraints: []RBACConstraint{{Key: "destination.labels[version]", Values: []string{"v1", "v2"}}}}}, users("*"))),
			req: get("/"), allow: true},
		{name: "label constraint mismatch", snap: snap(role([]RBACRule{{Services: []string{"*"}, Constraints: []RBACConstraint{{Key: "destination.labels[version]", Values: []string{"v2"}}}}}, users("*"))),
			req: get("/"), allow: false},
		{name: "missing label", snap: snap(role([]RBACRule{{Services: []string{"*"}, Constraints: []RBACConstraint{{Key: "destination.labels[team]", Values: []string{"*"}}}}}, users("*"))),
			req: get("/"), allow: false},
		{name: "port constraint", snap: snap(role([]RBACRule{{Services: []string{"*"}, Constraints: []RBACConstraint{{Key: "destination.port", Values: []string{"80"}}}}}, users("*"))),
			req: get("/"), allow: true},
		{name: "port constraint mismatch", snap: snap(role([]RBACRule{{Services: []string{"*"}, Constraints: []RBACConstraint{{Key: "destination.port", Values: []string{"8080"}}}}}, users("*"))),
			req: get("/"), allow: false},
		{name: "unknown constraint fails closed", snap: snap(role([]RBACRule{{Services: []string{"*"}, Constraints: []RBACConstraint{{Key: "request.headers[x]", Values: []string{"*"}}}}}, users("*"))),
			req: get("/"), allow: false},
		{name: "second rule matches", snap: snap(role([]RBACRule{{Services: []string{"*"}, Paths: []string{"/a"}}, {Services: []string{"*"}, Paths: []string{"/b"}}}, users("*"))),
			req: get("/b"), allow: true},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			d := Authorize(tc.snap, tc.req)
			if d.Allow != tc.allow {
				t.Fatalf("Authorize() allow = %v, want %v (reason: %s)", d.Allow, tc.allow, d.Reason)
			}
			if d.Reason == "" {
				t.Error("decision has no reason")
			}
			if tc.decidedBy != nil && !slices.Equal(d.DecidedBy, tc.decidedBy) {
				t.Errorf("DecidedBy = %q, want %q", d.DecidedBy, tc.decidedBy)
			}
		})
	}
}

func TestMatchValue(t *testing.T) {
	tests := []struct {
		pattern, v string
		want       bool
	}{
		{"*", "", true},
		{"/a", "/a", true},
		{"/a", "/ab", false},
		{"/a*", "/ab", true},
		{"/a*", "/b", false},
		{"*b", "/ab", true},
		{"*b", "/ba", false},
		{"", "", true},
		{"", "x", false},
	}
	for _, tc := range tests {
		t.Run(tc.pattern+"_"+tc.v, func(t *testing.T) {
			if got := MatchValue(tc.pattern, tc.v); got != tc.want {
				t.Errorf("MatchValue(%q, %q) = %v, want %v", tc.pattern, tc.v, got, tc.want)
			}
		})
	}
}
