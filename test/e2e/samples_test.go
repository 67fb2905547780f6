package e2e

import (
	"bytes"
	"errors"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"testing"

	"gopkg.in/yaml.v3"
)

// TestSampleManifests checks that samples/httpbin/httpbin.yaml and
// samples/sleep/sleep.yaml have the seed's shape (ServiceAccount, Service,
// Deployment running as that ServiceAccount; httpbin's Service port 8000 in
// front of container port 80) and that meshctl kube-inject accepts them.
func TestSampleManifests(t *testing.T) {
	needBinaries(t)
	type port struct {
		Name          string `yaml:"name"`
		Port          int    `yaml:"port"`
		TargetPort    int    `yaml:"targetPort"`
		ContainerPort int    `yaml:"containerPort"`
	}
	type obj struct {
		Kind     string `yaml:"kind"`
		Metadata struct {
			Name string `yaml:"name"`
		} `yaml:"metadata"`
		Spec struct {
			Ports    []port         `yaml:"ports"`
			Selector map[string]any `yaml:"selector"`
			Template struct {
				Metadata struct {
					Labels map[string]string `yaml:"labels"`
				} `yaml:"metadata"`
				Spec struct {
					ServiceAccountName string `yaml:"serviceAccountName"`
					Containers         []struct {
						Ports []port `yaml:"ports"`
					} `yaml:"containers"`
				} `yaml:"spec"`
			} `yaml:"template"`
		} `yaml:"spec"`
	}
	for _, tc := range []struct {
		file, name   string
		svcPort, tgt int
	}{
		{"../../samples/httpbin/httpbin.yaml", "httpbin", 8000, 80},
		{"../../samples/sleep/sleep.yaml", "sleep", 80, 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			data, err := os.ReadFile(tc.file)
			if err != nil {
				t.Fatal(err)
			}
			kinds := map[string]obj{}
			dec := yaml.NewDecoder(bytes.NewReader(data))
			for {
				var o obj
				if err := dec.Decode(&o); errors.Is(err, io.EOF) {
					break
				} else if err != nil {
					t.Fatalf("%s: %v", tc.file, err)
				}
				kinds[o.Kind] = o
			}
			sa, svc, dep := kinds["ServiceAccount"], kinds["Service"], kinds["Deployment"]
			if sa.Metadata.Name != tc.name || svc.Metadata.Name != tc.name || dep.Metadata.Name != tc.name {
				t.Fatalf("want ServiceAccount, Service and Deployment named %s, got %+v", tc.name, kinds)
			}
			if dep.Spec.Template.Spec.ServiceAccountName != tc.name {
				t.Errorf("Deployment runs as %q, want service account %s (its identity)", dep.Spec.Template.Spec.ServiceAccountName, tc.name)
			}
			if svc.Spec.Selector["app"] != tc.name || dep.Spec.Template.Metadata.Labels["app"] != tc.name {
				t.Errorf("Service selector %v does not select the pods' labels %v", svc.Spec.Selector, dep.Spec.Template.Metadata.Labels)
			}
			if len(svc.Spec.Ports) != 1 || svc.Spec.Ports[0].Port != tc.svcPort || svc.Spec.Ports[0].TargetPort != tc.tgt {
				t.Errorf("Service ports %+v, want %d -> %d", svc.Spec.Ports, tc.svcPort, tc.tgt)
			}
			if tc.tgt != 0 && (len(dep.Spec.Template.Spec.Containers) == 0 || len(dep.Spec.Template.Spec.Containers[0].Ports) == 0 ||
				dep.Spec.Template.Spec.Containers[0].Ports[0].ContainerPort != tc.tgt) {
				t.Errorf("container port is not %d", tc.tgt)
			}
			out, err := exec.Command(filepath.Join(bin, "meshctl"), "kube-inject", "-f", tc.file).CombinedOutput()
			if err != nil {
				t.Errorf("meshctl kube-inject -f %s: %v\n%s", tc.file, err, out)
			} else if !bytes.Contains(out, []byte("sidecar")) {
				t.Errorf("kube-inject output has no sidecar:\n%s", out)
			}
		})
	}
}
