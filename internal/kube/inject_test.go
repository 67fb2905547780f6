package kube

import (
	"bytes"
	"flag"
	"os"
	"path/filepath"
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	"sigs.k8s.io/yaml"
)

var update = flag.Bool("update", false, "rewrite golden files under testdata/")

func mustInjector(t testing.TB, mode Mode) *Injector {
	t.Helper()
	in, err := NewInjector(InjectConfig{Mode: mode})
	if err != nil {
		t.Fatal(err)
	}
	return in
}

// TestInjectGolden compares kube-inject output with testdata/inject/*.golden.
// Regenerate with: go test ./internal/kube -run TestInjectGolden -update
func TestInjectGolden(t *testing.T) {
	inputs, err := filepath.Glob("testdata/inject/*.yaml")
	if err != nil || len(inputs) == 0 {
		t.Fatalf("no inputs: %v", err)
	}
	for _, input := range inputs {
		for _, mode := range []Mode{SecretMode, CSRMode} {
			name := strings.TrimSuffix(filepath.Base(input), ".yaml") + "." + string(mode)
			t.Run(name, func(t *testing.T) {
				src, err := os.ReadFile(input)
				if err != nil {
					t.Fatal(err)
				}
				got, err := mustInjector(t, mode).InjectYAML(src)
				if err != nil {
					t.Fatal(err)
				}
				golden := filepath.Join("testdata/inject", name+".golden")
				if *update {
					if err := os.WriteFile(golden, got, 0o644); err != nil {
						t.Fatal(err)
					}
					return
				}
				want, err := os.ReadFile(golden)
				if err != nil {
					t.Fatalf("%v (run with -update to create it)", err)
				}
				if !bytes.Equal(got, want) {
					t.Errorf("output differs from %s (run with -update if the change is intended)\n--- got ---\n%s", golden, got)
				}
			})
		}
	}
}

// TestInjectProperties checks what the goldens only show: the sidecar's uid,
// the mode's volume, probes moved to the health port, idempotency, and that
// other kinds come back byte for byte.
func TestInjectProperties(t *testing.T) {
	src, err := os.ReadFile("testdata/inject/kinds.yaml")
	if err != nil {
		t.Fatal(err)
	}
	for _, mode := range []Mode{SecretMode, CSRMode} {
		t.Run(string(mode), func(t *testing.T) {
			in := mustInjector(t, mode)
			out, err := in.InjectYAML(src)
			if err != nil {
				t.Fatal(err)
			}
			docsIn, docsOut := splitYAML(src), splitYAML(out)
			if len(docsIn) != len(docsOut) {
				t.Fatalf("documents: got %d, want %d", len(docsOut), len(docsIn))
			}
			// ConfigMap, opted-out Deployment and Service are untouched.
			for _, i := range []int{0, 6, 7} {
				if !bytes.Equal(docsIn[i], docsOut[i]) {
					t.Errorf("document %d changed:\n%s", i+1, docsOut[i])
				}
			}
			var pod corev1.Pod
			if err := yaml.Unmarshal(docsOut[1], &pod); err != nil {
				t.Fatal(err)
			}
			side := findContainer(pod.Spec.Containers, SidecarName)
			if side == nil {
				t.Fatal("no sidecar container")
			}
			if u := side.SecurityContext.RunAsUser; u == nil || *u != ProxyUID {
				t.Errorf("sidecar runAsUser = %v, want %d", u, ProxyUID)
			}
			if findContainer(pod.Spec.InitContainers, InitName) == nil {
				t.Error("no init container")
			}
			vol := findVolume(pod.Spec.Volumes, CertVolume)
			switch mode {
			case SecretMode:
				if vol == nil || vol.Secret == nil || vol.Secret.SecretName != "istio.web" {
					t.Errorf("cert volume = %+v, want Secret istio.web", vol)
				}
			case CSRMode:
				tok := findVolume(pod.Spec.Volumes, TokenVolume)
				if tok == nil || tok.Projected == nil || tok.Projected.Sources[0].ServiceAccountToken.Audience != TokenAudience {
					t.Errorf("token volume = %+v, want projected token for %q", tok, TokenAudience)
				}
			}
			web := findContainer(pod.Spec.Containers, "web")
			for name, p := range map[string]*corev1.Probe{"liveness": web.LivenessProbe, "readiness": web.ReadinessProbe} {
				if p.HTTPGet == nil || p.HTTPGet.Port.IntValue() != HealthPort {
					t.Errorf("%s probe not moved to the health port: %+v", name, p.HTTPGet)
				}
			}
			if web.StartupProbe.TCPSocket == nil || web.StartupProbe.TCPSocket.Port.IntValue() != 8080 {
				t.Errorf("TCP startup probe changed: %+v", web.StartupProbe)
			}
			probers := pod.Annotations[AnnotationAppProbers]
			for _, want := range []string{`"/app-health/web/livez":{"port":8080,"path":"/healthz"}`, `"X-Probe":"kubelet"`} {
				if !strings.Contains(probers, want) {
					t.Errorf("app probers %s: missing %s", probers, want)
				}
			}
			again, err := in.InjectYAML(out)
			if err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(again, out) {
				t.Error("injecting twice changed the output; injection must be idempotent")
			}
		})
	}
}

func TestInjectErrors(t *testing.T) {
	in := mustInjector(t, SecretMode)
	for _, tc := range []struct{ name, src, want string }{
		{"no kind", "apiVersion: v1\nmetadata: {name: x}\n", "no kind"},
		{"bad yaml", "kind: Pod\n  spec: [\n", "parse YAML"},
		{"deployment without template", "kind: Deployment\nspec: {}\n", "no spec.template"},
		{"unknown named probe port", `kind: Pod
spec:
  containers:
  - name: a
    livenessProbe: {httpGet: {port: nope}}
`, `named port "nope"`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := in.InjectYAML([]byte(tc.src))
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("err = %v, want it to contain %q", err, tc.want)
			}
		})
	}
	if _, err := NewInjector(InjectConfig{Mode: "magic"}); err == nil {
		t.Error("NewInjector accepted mode magic")
	}
}

func FuzzInjectYAML(f *testing.F) {
	for _, p := range []string{"testdata/inject/kinds.yaml", "testdata/inject/httpbin.yaml"} {
		b, err := os.ReadFile(p)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(b)
	}
	f.Add([]byte("kind: Pod\nspec: {containers: [{name: a}]}\n"))
	in := mustInjector(f, CSRMode)
	f.Fuzz(func(t *testing.T, src []byte) {
		out, err := in.InjectYAML(src)
		if err != nil {
			return
		}
		// Whatever was accepted once is accepted again and not changed.
		again, err := in.InjectYAML(out)
		if err != nil {
			t.Fatalf("re-inject of accepted output failed: %v\ninput:\n%s\noutput:\n%s", err, src, out)
		}
		if !bytes.Equal(again, out) {
			t.Fatalf("not idempotent:\n%s\n---- vs ----\n%s", out, again)
		}
	})
}

func findContainer(cs []corev1.Container, name string) *corev1.Container {
	for i := range cs {
		if cs[i].Name == name {
			return &cs[i]
		}
	}
	return nil
}

func findVolume(vs []corev1.Volume, name string) *corev1.Volume {
	for i := range vs {
		if vs[i].Name == name {
			return &vs[i]
		}
	}
	return nil
}

func intOrName(s string) intstr.IntOrString { return intstr.FromString(s) }
