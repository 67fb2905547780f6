package config

import (
	"encoding/json"
	"flag"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

var update = flag.Bool("update", false, "rewrite golden files")

// TestInvalidGolden loads each file under testdata/invalid as one batch and
// compares the full error text (file:line:column, object, field path,
// message) with the .golden file next to it. Run with -update to rewrite.
func TestInvalidGolden(t *testing.T) {
	files, err := filepath.Glob("testdata/invalid/*.yaml")
	if err != nil || len(files) == 0 {
		t.Fatalf("no test files: %v", err)
	}
	for _, f := range files {
		t.Run(filepath.Base(f), func(t *testing.T) {
			c, err := LoadPaths(f)
			if err == nil {
				t.Fatalf("LoadPaths(%s) accepted an invalid batch: %+v", f, c)
			}
			if _, ok := err.(ErrorList); !ok {
				t.Fatalf("error is %T, want ErrorList: %v", err, err)
			}
			got := err.Error() + "\n"
			golden := strings.TrimSuffix(f, ".yaml") + ".golden"
			if *update {
				if err := os.WriteFile(golden, []byte(got), 0o644); err != nil {
					t.Fatal(err)
				}
			}
			want, err := os.ReadFile(golden)
			if err != nil {
				t.Fatalf("read golden (run with -update to create it): %v", err)
			}
			if got != string(want) {
				t.Errorf("errors differ from %s (run with -update if intended)\n got:\n%s\nwant:\n%s", golden, got, want)
			}
		})
	}
}

func TestLoadValid(t *testing.T) {
	c, err := LoadPaths("testdata/valid")
	if err != nil {
		t.Fatalf("LoadPaths: %v", err)
	}
	// Mesh-wide mTLS comes from Istio's own `istio` ConfigMap; the other
	// Istio mesh settings in it are accepted and ignored.
	if c.AuthPolicy() != AuthPolicyMutualTLS || c.Mesh.Metadata.Name != "istio" ||
		len(c.Mesh.Spec.MTLSExcludedServices) != 1 || c.Mesh.Source.String() != "testdata/valid/istio-configmap.yaml:2:1" {
		t.Errorf("mesh config from the istio ConfigMap = %+v", c.Mesh)
	}
	if len(c.Policies) != 2 || len(c.DestinationRules) != 1 || len(c.ServiceRoles) != 1 ||
		len(c.ServiceRoleBindings) != 1 || len(c.Services) != 1 || len(c.Workloads) != 3 || c.RbacConfig == nil {
		t.Fatalf("unexpected object counts: %d policies, %d rules, %d roles, %d bindings, %d services, %d workloads",
			len(c.Policies), len(c.DestinationRules), len(c.ServiceRoles), len(c.ServiceRoleBindings), len(c.Services), len(c.Workloads))
	}
	// The bare `mtls:` of the default policy must read as present (STRICT).
	def := c.Policies[0]
	if def.Metadata.Name != "default" || len(def.Spec.Peers) != 1 || def.Spec.Peers[0].MTLS == nil {
		t.Fatalf("bare mtls: not decoded as a present mtls peer: %+v", def.Spec)
	}
	if got := c.Policies[1].Spec.Targets[0].Pos.String(); got != "testdata/valid/istio.yaml:16:5" {
		t.Errorf("target position = %s", got)
	}
	if c.DestinationRules[0].Spec.TrafficPolicy.LoadBalancer.Node == nil {
		t.Error("loadBalancer not kept")
	}
	// The whole config must survive the JSON round trip GetState uses.
	b, err := json.Marshal(c)
	if err != nil {
		t.Fatal(err)
	}
	var back Config
	if err := json.Unmarshal(b, &back); err != nil {
		t.Fatalf("unmarshal state: %v", err)
	}
	b2, _ := json.Marshal(&back)
	if string(b) != string(b2) {
		t.Errorf("JSON round trip changed the config:\n%s\n%s", b, b2)
	}
}

func TestMTLSForms(t *testing.T) {
	for name, body := range map[string]string{
		"bare":  "  - mtls:\n",
		"empty": "  - mtls: {}\n",
		"null":  "  - mtls: null\n",
	} {
		t.Run(name, func(t *testing.T) {
			doc := "apiVersion: authentication.istio.io/v1alpha1\nkind: Policy\nmetadata: {name: default}\nspec:\n  peers:\n" + body
			c, err := Load([]File{{Name: "p.yaml", Content: []byte(doc)}})
			if err != nil {
				t.Fatal(err)
			}
			m := c.Policies[0].Spec.Peers[0].MTLS
			if m == nil || m.Mode != "" {
				t.Fatalf("mtls = %+v, want present with empty mode (STRICT)", m)
			}
		})
	}
}

func TestApplyKeepsOldOnError(t *testing.T) {
	c, err := LoadPaths("testdata/valid")
	if err != nil {
		t.Fatal(err)
	}
	bad, errs := Parse("b.yaml", []byte("apiVersion: rbac.istio.io/v1alpha1\nkind: ServiceRoleBinding\nmetadata: {name: x}\nspec:\n  subjects: [{user: \"*\"}]\n  roleRef: {kind: ServiceRole, name: nope}\n"))
	if len(errs) > 0 {
		t.Fatal(errs)
	}
	if _, err := c.Apply(bad, false); err == nil || !strings.Contains(err.Error(), `ServiceRole "nope" not found`) {
		t.Fatalf("Apply(bad) = %v, want roleRef error", err)
	}
	good, _ := Parse("g.yaml", []byte("apiVersion: meshauth.io/v1alpha1\nkind: Service\nmetadata: {name: ratings}\nspec:\n  ports: [{number: 9080}]\n"))
	n, err := c.Apply(good, false)
	if err != nil {
		t.Fatal(err)
	}
	if len(n.Services) != 2 || len(c.Services) != 1 {
		t.Errorf("Apply: new has %d services, old %d; want 2 and 1", len(n.Services), len(c.Services))
	}
	r, err := c.Apply(good, true)
	if err != nil {
		t.Fatal(err)
	}
	if len(r.Services) != 1 || r.Services[0].Metadata.Name != "ratings" || len(r.Workloads) != 3 {
		t.Errorf("replace: services %d workloads %d", len(r.Services), len(r.Workloads))
	}
}

func TestCheckHost(t *testing.T) {
	tests := []struct {
		host string
		ok   bool
	}{
		{"httpbin", true},
		{"httpbin.default", true},
		{"httpbin.default.svc.cluster.local", true},
		{"*.default.svc.cluster.local", true},
		{"*.local", true},
		{"*", false},
		{"", false},
		{"HTTPBIN", false},
		{"a.*.b", false},
		{"-a", false},
		{"a..b", false},
	}
	for _, tc := range tests {
		t.Run(tc.host, func(t *testing.T) {
			if got := CheckHost(tc.host) == ""; got != tc.ok {
				t.Errorf("CheckHost(%q) ok = %v, want %v (%s)", tc.host, got, tc.ok, CheckHost(tc.host))
			}
		})
	}
}

func TestResolveHost(t *testing.T) {
	for in, want := range map[string]string{
		"httpbin":                           "httpbin.ns.svc.cluster.local",
		"httpbin.default":                   "httpbin.default.svc.cluster.local",
		"httpbin.default.svc":               "httpbin.default.svc.cluster.local",
		"httpbin.default.svc.cluster.local": "httpbin.default.svc.cluster.local",
		"*.local":                           "*.local",
		"www.example.com":                   "www.example.com",
	} {
		if got := ResolveHost(in, "ns"); got != want {
			t.Errorf("ResolveHost(%q) = %q, want %q", in, got, want)
		}
	}
}

// FuzzParse feeds arbitrary bytes to the YAML decoder: it must never panic,
// and whatever it accepts must pass whole-batch validation or be rejected
// with positioned errors.
func FuzzParse(f *testing.F) {
	for _, dir := range []string{"testdata/valid", "testdata/invalid"} {
		files, _ := filepath.Glob(dir + "/*.yaml")
		for _, p := range files {
			b, _ := os.ReadFile(p)
			f.Add(b)
		}
	}
	f.Add([]byte("a: &a [*a, *a]\nb: *a\n"))
	f.Fuzz(func(t *testing.T, data []byte) {
		objs, errs := ParseFile("fuzz.yaml", data)
		for _, e := range errs {
			if e.File != "fuzz.yaml" || e.Msg == "" {
				t.Fatalf("error without position or message: %#v", e)
			}
		}
		if len(errs) == 0 && len(objs) == 0 {
			t.Fatal("ParseFile accepted a file with no object")
		}
		if len(errs) == 0 {
			if _, err := New(objs); err != nil {
				if _, ok := err.(ErrorList); !ok {
					t.Fatalf("New returned %T", err)
				}
			}
		}
	})
}

// TestKubectlForms loads what `kubectl get -o yaml` and `-o json` print: a
// List with items and server-set metadata, YAML anchors, and JSON.
func TestKubectlForms(t *testing.T) {
	list := `apiVersion: v1
kind: List
items:
- apiVersion: authentication.istio.io/v1alpha1
  kind: Policy
  metadata:
    name: default
    namespace: default
    uid: 6a3c1e2f-0000-0000-0000-000000000000
    resourceVersion: "1234"
    creationTimestamp: "2018-05-17T23:02:11Z"
    generation: 1
  spec:
    peers:
    - mtls: &strict {mode: STRICT}
- apiVersion: authentication.istio.io/v1alpha1
  kind: Policy
  metadata: {name: default, namespace: legacy}
  spec:
    peers:
    - mtls: *strict
`
	js := `{"apiVersion": "networking.istio.io/v1alpha3", "kind": "DestinationRule",
 "metadata": {"name": "httpbin", "namespace": "default"},
 "spec": {"host": "httpbin", "trafficPolicy": {"tls": {"mode": "ISTIO_MUTUAL"}}}}`
	c, err := Load([]File{{Name: "list.yaml", Content: []byte(list)}, {Name: "dr.json", Content: []byte(js)}})
	if err != nil {
		t.Fatal(err)
	}
	if len(c.Policies) != 2 || c.Policies[1].Metadata.Namespace != "legacy" || c.Policies[1].Spec.Peers[0].MTLS.Mode != MTLSStrict {
		t.Errorf("policies from a List with an alias: %+v", c.Policies)
	}
	if len(c.DestinationRules) != 1 || c.DestinationRules[0].Spec.TrafficPolicy.TLS.Mode != TLSIstioMutual {
		t.Errorf("DestinationRule from JSON: %+v", c.DestinationRules)
	}
	// An error inside a List item points into the item.
	_, err = Load([]File{{Name: "bad.yaml", Content: []byte(strings.Replace(list, "mode: STRICT", "mode: STRICTLY", 1))}})
	if err == nil || !strings.Contains(err.Error(), "bad.yaml:15:28: Policy/default/default: items[0].spec.peers[0].mtls.mode: unknown mode \"STRICTLY\"") {
		t.Errorf("error in a List item: %v", err)
	}
}
