package engine

import (
	"fmt"
	"strings"
	"testing"

	"github.com/meshauth/meshauth/internal/policy"
)

// A gRPC service (port 9090, GRPC) whose RBAC names methods: sleep may
// call helloworld.Greeter/SayHello and anything of grpc.health.v1.Health;
// admin may call every method. The server sidecar authorizes each call as
// POST /package.Service/Method (issue #14).
const greeter = `apiVersion: meshauth.io/v1alpha1
kind: Service
metadata: {name: greeter}
spec:
  selector: {app: greeter}
  ports: [{name: grpc, number: 9090, protocol: GRPC}]
---
apiVersion: meshauth.io/v1alpha1
kind: Workload
metadata: {name: greeter-1, labels: {app: greeter}}
spec: {serviceAccount: greeter, address: 10.0.0.5}
---
apiVersion: meshauth.io/v1alpha1
kind: Workload
metadata: {name: admin-1, labels: {app: admin}}
spec: {serviceAccount: admin, address: 10.0.0.6}
---
apiVersion: rbac.istio.io/v1alpha1
kind: RbacConfig
metadata: {name: default}
spec:
  mode: ON_WITH_INCLUSION
  inclusion: {services: [greeter.default.svc.cluster.local]}
---
apiVersion: rbac.istio.io/v1alpha1
kind: ServiceRole
metadata: {name: greeter-caller}
spec:
  rules:
  - services: ["greeter.default.svc.cluster.local"]
    methods: ["POST"]
    paths: ["/helloworld.Greeter/SayHello", "/grpc.health.v1.Health/*"]
---
apiVersion: rbac.istio.io/v1alpha1
kind: ServiceRoleBinding
metadata: {name: sleep-greets}
spec:
  subjects: [{user: "cluster.local/ns/default/sa/sleep"}]
  roleRef: {kind: ServiceRole, name: greeter-caller}
---
apiVersion: rbac.istio.io/v1alpha1
kind: ServiceRole
metadata: {name: greeter-admin}
spec:
  rules:
  - services: ["greeter.default.svc.cluster.local"]
    methods: ["*"]
    paths: ["/helloworld.Greeter/*"]
---
apiVersion: rbac.istio.io/v1alpha1
kind: ServiceRoleBinding
metadata: {name: admin-greets}
spec:
  subjects: [{user: "cluster.local/ns/default/sa/admin"}]
  roleRef: {kind: ServiceRole, name: greeter-admin}
`

// TestGRPCMethodRBAC: RBAC by gRPC method, each decision with the rule
// and binding that made it (golden).
func TestGRPCMethodRBAC(t *testing.T) {
	e := load(t, nil, meshMTLS, httpbin, greeter)
	svc := e.Registry().Service("default", "greeter")
	var table strings.Builder
	for _, tc := range []struct {
		from, method string
		allow        bool
	}{
		{"sleep-1", "helloworld.Greeter/SayHello", true},
		{"sleep-1", "helloworld.Greeter/SayGoodbye", false},
		{"sleep-1", "grpc.health.v1.Health/Check", true},
		{"sleep-1", "grpc.health.v1.Health/Watch", true},
		{"sleep-1", "grpc.health.v1.HealthX/Check", false},
		{"admin-1", "helloworld.Greeter/SayGoodbye", true},
		{"admin-1", "grpc.health.v1.Health/Check", false},
	} {
		method, path, err := policy.GRPCRequest(tc.method)
		if err != nil {
			t.Fatal(err)
		}
		x, err := e.Explain(e.Registry().Workload("default", tc.from), svc, 9090, method, path)
		if err != nil {
			t.Fatal(err)
		}
		if x.Allow != tc.allow {
			t.Errorf("%s -> %s: allow = %v, want %v (%s)", tc.from, tc.method, x.Allow, tc.allow, x.Reason)
		}
		verdict := "DENY "
		if x.Allow {
			verdict = "ALLOW"
		}
		fmt.Fprintf(&table, "%s %-8s %-30s %s\n", verdict, tc.from, tc.method, x.RBAC.Reason)
	}
	golden(t, "grpc-rbac.golden", table.String())
	// Not a gRPC call: GET of the same path never matches a POST rule.
	x, _ := e.Explain(e.Registry().Workload("default", "sleep-1"), svc, 9090, "GET", "/helloworld.Greeter/SayHello")
	if x.Allow || !strings.HasPrefix(x.Call, "HTTP/2 GET") {
		t.Errorf("GET /helloworld.Greeter/SayHello: allow %v, call %q", x.Allow, x.Call)
	}
}

// TestExplainGRPC: meshctl explain of a gRPC call names the method and the
// deciding rule.
func TestExplainGRPC(t *testing.T) {
	e := load(t, nil, meshMTLS, httpbin, greeter)
	svc := e.Registry().Service("default", "greeter")
	sleep := e.Registry().Workload("default", "sleep-1")
	for name, m := range map[string]string{"explain-grpc-allow.golden": "helloworld.Greeter/SayHello", "explain-grpc-deny.golden": "/helloworld.Greeter/SayGoodbye"} {
		method, path, err := policy.GRPCRequest(m)
		if err != nil {
			t.Fatal(err)
		}
		x, err := e.Explain(sleep, svc, 9090, method, path)
		if err != nil {
			t.Fatal(err)
		}
		if !strings.Contains(x.Call, "gRPC method "+strings.TrimPrefix(m, "/")) {
			t.Errorf("call %q does not name the method %s", x.Call, m)
		}
		golden(t, name, x.Text())
	}
}

func TestGRPCRequest(t *testing.T) {
	for in, want := range map[string]string{
		"pkg.Svc/Method": "/pkg.Svc/Method", "/pkg.Svc/Method": "/pkg.Svc/Method",
		"pkg.Svc": "", "/pkg.Svc/": "", "a/b/c": "", "/": "", "pkg.Svc/M?x=1": "",
	} {
		_, got, err := policy.GRPCRequest(in)
		if got != want || (err == nil) != (want != "") {
			t.Errorf("GRPCRequest(%q) = %q, %v; want %q", in, got, err, want)
		}
	}
}

// FuzzGRPCRequest: whatever meshctl explain --grpc is given, an accepted
// method is one POST /service/method request that GRPCMethodOf reads back.
func FuzzGRPCRequest(f *testing.F) {
	for _, s := range []string{"pkg.Svc/M", "/pkg.Svc/M", "a/b/c", "", "/", "x/", "/x/y?z"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, in string) {
		method, path, err := policy.GRPCRequest(in)
		if err != nil {
			return
		}
		sm, ok := policy.GRPCMethodOf(method, path)
		if method != "POST" || !ok || "/"+sm != path || strings.Count(path, "/") != 2 {
			t.Fatalf("GRPCRequest(%q) = %s %q (%q, %v)", in, method, path, sm, ok)
		}
	})
}
