package kube

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/client-go/discovery"
	"k8s.io/client-go/discovery/cached/memory"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/restmapper"
	"sigs.k8s.io/yaml"

	"github.com/meshauth/meshauth/internal/control"
	"github.com/meshauth/meshauth/internal/kube/kubetest"
)

// installFiles are the committed renderings of RenderInstall; regenerate
// with: go test ./internal/kube -run TestInstallManifests -update
var installFiles = map[string]InstallConfig{
	"../../install/kubernetes/meshauth.yaml":      {NoCRDs: true},
	"../../install/kubernetes/meshauth-auth.yaml": {NoCRDs: true, MTLS: true},
}

func TestInstallManifests(t *testing.T) {
	for path, cfg := range installFiles {
		t.Run(path[strings.LastIndex(path, "/")+1:], func(t *testing.T) {
			got, err := RenderInstall(cfg)
			if err != nil {
				t.Fatal(err)
			}
			got = append([]byte("# Rendered by `meshctl install"+map[bool]string{true: " --mtls", false: ""}[cfg.MTLS]+" --crds=false`;\n# regenerate with: go test ./internal/kube -run TestInstallManifests -update\n"), got...)
			if *update {
				if err := os.WriteFile(path, got, 0o644); err != nil {
					t.Fatal(err)
				}
				return
			}
			want, err := os.ReadFile(path)
			if err != nil {
				t.Fatalf("%v (run with -update)", err)
			}
			if !bytes.Equal(got, want) {
				t.Errorf("%s is stale: run go test ./internal/kube -run TestInstallManifests -update", path)
			}
		})
	}
	out, _ := RenderInstall(InstallConfig{MTLS: true})
	for _, want := range []string{"authPolicy: MUTUAL_TLS", "istio: citadel", "kind: CustomResourceDefinition", "istio-injection: enabled"} {
		if !bytes.Contains(out, []byte(want)) {
			t.Errorf("meshctl install --mtls output lacks %q", want)
		}
	}
	if _, err := RenderInstall(InstallConfig{InjectMode: "x"}); err == nil {
		t.Error("RenderInstall accepted inject mode x")
	}
}

// TestInstallAppliesToAPIServer creates every object of `meshctl install
// --mtls` on the real API server (which validates each against its schema)
// and then checks, by impersonating the control plane's ServiceAccount,
// that the ClusterRole grants what the control plane does.
func TestInstallAppliesToAPIServer(t *testing.T) {
	env := kubetest.Need(t)
	ctx := context.Background()
	rc := env.RESTConfig()
	dyn, err := dynamic.NewForConfig(rc)
	if err != nil {
		t.Fatal(err)
	}
	dc, err := discovery.NewDiscoveryClientForConfig(rc)
	if err != nil {
		t.Fatal(err)
	}
	installCRDs(t, env) // the CRDs first, so their kinds can be mapped
	mapper := restmapper.NewDeferredDiscoveryRESTMapper(memory.NewMemCacheClient(dc))
	manifest, err := RenderInstall(InstallConfig{MTLS: true, Namespace: "meshauth-install-test", NoCRDs: true})
	if err != nil {
		t.Fatal(err)
	}
	for _, doc := range splitYAML(manifest) {
		var obj map[string]any
		if err := yaml.Unmarshal(doc, &obj); err != nil {
			t.Fatal(err)
		}
		if obj == nil {
			continue
		}
		u := &unstructured.Unstructured{Object: obj}
		gvk := u.GroupVersionKind()
		m, err := mapper.RESTMapping(schema.GroupKind{Group: gvk.Group, Kind: gvk.Kind}, gvk.Version)
		if err != nil {
			t.Fatalf("%s: %v", gvk, err)
		}
		var ri dynamic.ResourceInterface = dyn.Resource(m.Resource)
		if m.Scope.Name() == "namespace" {
			ri = dyn.Resource(m.Resource).Namespace(u.GetNamespace())
		}
		if _, err := ri.Create(ctx, u, metav1.CreateOptions{}); err != nil {
			t.Fatalf("create %s %s: %v", gvk.Kind, u.GetName(), err)
		}
	}
	t.Cleanup(func() {
		cs := env.Clientset(t)
		cs.CoreV1().Namespaces().Delete(ctx, "meshauth-install-test", metav1.DeleteOptions{})
		cs.AdmissionregistrationV1().MutatingWebhookConfigurations().Delete(ctx, "meshauth-sidecar-injector", metav1.DeleteOptions{})
		cs.RbacV1().ClusterRoleBindings().Delete(ctx, "meshauth-control", metav1.DeleteOptions{})
		cs.RbacV1().ClusterRoles().Delete(ctx, "meshauth-control", metav1.DeleteOptions{})
	})

	cs := env.Clientset(t)
	dep, err := cs.AppsV1().Deployments("meshauth-install-test").List(ctx, metav1.ListOptions{LabelSelector: "istio=citadel"})
	if err != nil || len(dep.Items) != 1 {
		t.Fatalf("kubectl get deploy -l istio=citadel: %v items, err %v", len(dep.Items), err)
	}
	cm, err := cs.CoreV1().ConfigMaps("meshauth-install-test").Get(ctx, "istio", metav1.GetOptions{})
	if err != nil || !strings.Contains(cm.Data["mesh"], "authPolicy: MUTUAL_TLS") {
		t.Fatalf("configmap istio: %v %q", err, cm.Data["mesh"])
	}

	t.Run("control plane runs with only its ClusterRole", func(t *testing.T) {
		// Impersonate the Deployment's ServiceAccount: every API call below
		// is authorized by the manifest's RBAC and nothing else.
		asSA := env.RESTConfig()
		asSA.Impersonate.UserName = "system:serviceaccount:meshauth-install-test:meshauth-control"
		asSA.Impersonate.Groups = []string{"system:serviceaccounts", "system:serviceaccounts:meshauth-install-test", "system:authenticated"}
		ctx, cancel := context.WithCancel(ctx)
		done := make(chan error, 1)
		ready := make(chan struct{})
		go func() {
			done <- RunControl(ctx, ControlConfig{
				REST: asSA, Namespace: "meshauth-install-test", Dir: t.TempDir(),
				Listen: "127.0.0.1:0", WebhookListen: "127.0.0.1:0",
				Ready: func(*control.Server) { close(ready) },
			})
		}()
		defer func() { cancel(); <-done }()
		select {
		case <-ready:
		case err := <-done:
			t.Fatalf("control plane failed under its own RBAC: %v", err)
		}
		ns := createNamespace(t, cs, "rbac", nil)
		if _, err := cs.CoreV1().ServiceAccounts(ns).Create(ctx, &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Name: "web"}}, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
		kubetest.WaitFor(t, 30*time.Second, "istio.web written under the control plane's RBAC", func() (bool, error) {
			_, err := cs.CoreV1().Secrets(ns).Get(ctx, "istio.web", metav1.GetOptions{})
			return err == nil, err
		})
		kubetest.WaitFor(t, 30*time.Second, "webhook caBundle set under the control plane's RBAC", func() (bool, error) {
			w, err := cs.AdmissionregistrationV1().MutatingWebhookConfigurations().Get(ctx, "meshauth-sidecar-injector", metav1.GetOptions{})
			return err == nil && len(w.Webhooks[0].ClientConfig.CABundle) > 0, err
		})
		if _, err := cs.CoreV1().Secrets("meshauth-install-test").Get(ctx, CASecret, metav1.GetOptions{}); err != nil {
			t.Errorf("istio-ca-secret: %v", err)
		}
	})
}

// TestInjectedManifestsAreValid sends every kube-inject golden output to the
// real API server (server-side dry run), which validates each injected pod
// template against the Kubernetes schema: a field the injector got wrong is
// refused here, not in a user's cluster.
func TestInjectedManifestsAreValid(t *testing.T) {
	env := kubetest.Need(t)
	ctx := context.Background()
	rc := env.RESTConfig()
	dyn, err := dynamic.NewForConfig(rc)
	if err != nil {
		t.Fatal(err)
	}
	dc, err := discovery.NewDiscoveryClientForConfig(rc)
	if err != nil {
		t.Fatal(err)
	}
	mapper := restmapper.NewDeferredDiscoveryRESTMapper(memory.NewMemCacheClient(dc))
	ns := createNamespace(t, env.Clientset(t), "inject-valid", nil)
	goldens, err := filepath.Glob("testdata/inject/*.golden")
	if err != nil || len(goldens) == 0 {
		t.Fatalf("no goldens: %v", err)
	}
	for _, g := range goldens {
		t.Run(filepath.Base(g), func(t *testing.T) {
			src, err := os.ReadFile(g)
			if err != nil {
				t.Fatal(err)
			}
			for _, doc := range splitYAML(src) {
				var obj map[string]any
				if err := yaml.Unmarshal(doc, &obj); err != nil {
					t.Fatal(err)
				}
				if obj == nil {
					continue
				}
				u := &unstructured.Unstructured{Object: obj}
				gvk := u.GroupVersionKind()
				m, err := mapper.RESTMapping(schema.GroupKind{Group: gvk.Group, Kind: gvk.Kind}, gvk.Version)
				if err != nil {
					t.Fatalf("%s: %v", gvk, err)
				}
				_, err = dyn.Resource(m.Resource).Namespace(ns).Create(ctx, u, metav1.CreateOptions{DryRun: []string{metav1.DryRunAll}})
				if err != nil {
					t.Errorf("%s %s refused by the API server: %v", gvk.Kind, u.GetName(), err)
				}
			}
		})
	}
}
