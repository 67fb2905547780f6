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
			compareGolden(t, f, err.Error()+"\n")
		})
	}
}

// compareGolden compares got with the .golden file next to f (-update
// rewrites it).
func compareGolden(t *testing.T, f, got string) {
	t.Helper()
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
		t.Errorf("output differs from %s (run with -update if intended)\n got:\n%s\nwant:\n%s", golden, got, want)
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
	if c.DestinationRules[0].Spec.TrafficPolicy.LoadBalancer == nil {
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
	bad, errs := Parse("b.yaml", []byte("apiVersion: meshauth.io/v1alpha1\nkind: MeshConfig\nmetadata: {name: other}\nspec: {authPolicy: NONE}\n"))
	if len(errs) > 0 {
		t.Fatal(errs)
	}
	if _, err := c.Apply(bad, false); err == nil || !strings.Contains(err.Error(), `only one MeshConfig is allowed`) {
		t.Fatalf("Apply(bad) = %v, want a second-MeshConfig error", err)
	}
	// A binding whose role is missing grants nothing: valid, with a warning.
	orphan, _ := Parse("o.yaml", []byte("apiVersion: rbac.istio.io/v1alpha1\nkind: ServiceRoleBinding\nmetadata: {name: x}\nspec:\n  subjects: [{user: \"*\"}]\n  roleRef: {kind: ServiceRole, name: nope}\n"))
	if o, err := c.Apply(orphan, false); err != nil || !strings.Contains(o.Warnings().Error(), `o.yaml:1:1: ServiceRoleBinding/default/x: spec.roleRef.name: ServiceRole "nope" not found in namespace default: this binding grants nothing`) {
		t.Fatalf("Apply(orphan binding) = %v, warnings %v", err, o.Warnings())
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
		{"*", true},
		{"*foo", true},
		{"*foo.bar.com", true},
		{"*-foo.bar.com", true},
		{"1.1.1.1", true},
		{"foo*.bar.com", false},
		{"foo.*.com", false},
		{"**.com", false},
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
	for _, dir := range []string{"testdata/valid", "testdata/invalid", "testdata/warnings"} {
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
		for _, o := range objs {
			for _, w := range ObjectOf(o).Warnings {
				if w.File != "fuzz.yaml" || w.Line == 0 || w.Msg == "" {
					t.Fatalf("warning without position or message: %#v", w)
				}
			}
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

// TestWarningsGolden loads each file under testdata/warnings, which must be
// valid, and compares its warnings (accepted as Istio accepts them, but
// flagged) with the .golden file next to it.
func TestWarningsGolden(t *testing.T) {
	files, err := filepath.Glob("testdata/warnings/*.yaml")
	if err != nil || len(files) == 0 {
		t.Fatalf("no test files: %v", err)
	}
	for _, f := range files {
		t.Run(filepath.Base(f), func(t *testing.T) {
			c, err := LoadPaths(f)
			if err != nil {
				t.Fatalf("LoadPaths(%s): %v", f, err)
			}
			ws := c.Warnings()
			if len(ws) == 0 {
				t.Fatal("no warnings")
			}
			compareGolden(t, f, ws.Error()+"\n")
		})
	}
}

// TestIstioForms checks what the forms of testdata/warnings mean: proto
// field names set the same fields as JSON names, a duplicate key keeps its
// last value, a field under both names keeps the JSON name's value.
func TestIstioForms(t *testing.T) {
	c, err := LoadPaths("testdata/warnings/istio-forms.yaml")
	if err != nil {
		t.Fatal(err)
	}
	var fortio, global *Policy
	for _, p := range c.Policies {
		switch p.Metadata.Name {
		case "fortiotls":
			fortio = p
		case "global-enable-mtls":
			global = p
		}
	}
	if global == nil || len(global.Spec.Targets) != 0 || global.Spec.Peers[0].MTLS == nil {
		t.Errorf("0.8 target-less policy: %+v", global)
	}
	if fortio == nil || fortio.Spec.PeerIsOptional {
		t.Errorf("peerIsOptional written as both names: want the JSON name's false, got %+v", fortio)
	}
	dr := c.DestinationRules[0]
	tls := dr.Spec.TrafficPolicy.TLS
	if tls.ClientCertificate != "/etc/certs/cert-chain.pem" || tls.PrivateKey == "" || tls.CACertificates == "" || len(tls.SubjectAltNames) != 1 {
		t.Errorf("proto-named TLS fields not read: %+v", tls)
	}
	if v := dr.Spec.Subsets[1].Labels["version"]; v != "v3" {
		t.Errorf("duplicate label key: got %q, want the last value v3", v)
	}
	// The envelope is Kubernetes', not jsonpb's: no proto names there.
	_, err = Load([]File{{Name: "m.yaml", Content: []byte("apiVersion: authentication.istio.io/v1alpha1\nkind: Policy\nmeta_data: {name: default}\n")}})
	if err == nil || !strings.Contains(err.Error(), `unknown field "meta_data"`) {
		t.Errorf("proto name in the envelope: %v", err)
	}
	// Nor in meshauth's own kinds.
	_, err = Load([]File{{Name: "s.yaml", Content: []byte("apiVersion: meshauth.io/v1alpha1\nkind: Service\nmetadata: {name: s}\nspec:\n  ports: [{number: 80, target_port: 8080}]\n")}})
	if err == nil || !strings.Contains(err.Error(), `unknown field "target_port"`) {
		t.Errorf("proto name in a meshauth kind: %v", err)
	}
}
