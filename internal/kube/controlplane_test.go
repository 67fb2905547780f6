package kube

import (
	"bytes"
	"context"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/client-go/dynamic"
	"sigs.k8s.io/yaml"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	pb "github.com/meshauth/meshauth/api/meshauth/v1"
	"github.com/meshauth/meshauth/internal/client"
	"github.com/meshauth/meshauth/internal/control"
	"github.com/meshauth/meshauth/internal/kube/kubetest"
	"github.com/meshauth/meshauth/internal/meshapi"
	"github.com/meshauth/meshauth/internal/policy"
	"github.com/meshauth/meshauth/internal/registry"
)

var crdGVR = schema.GroupVersionResource{Group: "apiextensions.k8s.io", Version: "v1", Resource: "customresourcedefinitions"}

var installCRDsOnce sync.Once

// installCRDs applies install/kubernetes/crds.yaml (CRDManifest) and waits
// until the API server serves every kind.
func installCRDs(t *testing.T, env *kubetest.Env) {
	t.Helper()
	dyn, err := dynamic.NewForConfig(env.RESTConfig())
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	installCRDsOnce.Do(func() {
		for _, doc := range splitYAML(CRDManifest()) {
			var obj map[string]any
			if err := yaml.Unmarshal(doc, &obj); err != nil {
				t.Fatal(err)
			}
			if obj == nil {
				continue
			}
			u := &unstructured.Unstructured{Object: obj}
			if _, err := dyn.Resource(crdGVR).Create(ctx, u, metav1.CreateOptions{}); err != nil && !apierrors.IsAlreadyExists(err) {
				t.Fatalf("create CRD %s: %v", u.GetName(), err)
			}
		}
	})
	for _, k := range ConfigKinds {
		kubetest.WaitFor(t, 30*time.Second, "CRD "+k.Plural+" to be served", func() (bool, error) {
			_, err := dyn.Resource(k.GVR()).List(ctx, metav1.ListOptions{Limit: 1})
			return err == nil, err
		})
	}
}

// applyYAML creates the objects of a YAML stream with the dynamic client.
func applyYAML(t *testing.T, dyn dynamic.Interface, ns, src string) {
	t.Helper()
	for _, doc := range splitYAML([]byte(src)) {
		var obj map[string]any
		if err := yaml.Unmarshal(doc, &obj); err != nil {
			t.Fatal(err)
		}
		if obj == nil {
			continue
		}
		u := &unstructured.Unstructured{Object: obj}
		var gvr schema.GroupVersionResource
		namespaced := true
		for _, k := range ConfigKinds {
			if k.Kind == u.GetKind() {
				gvr, namespaced = k.GVR(), k.Namespaced
			}
		}
		if gvr.Resource == "" {
			t.Fatalf("unknown kind %s", u.GetKind())
		}
		var err error
		if namespaced {
			_, err = dyn.Resource(gvr).Namespace(ns).Create(context.Background(), u, metav1.CreateOptions{})
		} else {
			_, err = dyn.Resource(gvr).Create(context.Background(), u, metav1.CreateOptions{})
		}
		if err != nil {
			t.Fatalf("create %s/%s: %v", u.GetKind(), u.GetName(), err)
		}
	}
}

// TestControlPlaneOnKubernetes runs `meshd kube-control` (RunControl) against
// the real API server and checks what the seed's verification looks at: CRD
// objects reach the policy engine (meshctl tls-check reports them), an
// invalid object is reported with an event and not applied, the registry
// knows the service's identities (pods and annotation), Secrets appear.
func TestControlPlaneOnKubernetes(t *testing.T) {
	env := kubetest.Need(t)
	cs := env.Clientset(t)
	dyn, err := dynamic.NewForConfig(env.RESTConfig())
	if err != nil {
		t.Fatal(err)
	}
	installCRDs(t, env)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()

	system := createNamespace(t, cs, "istio-system", nil)
	if _, err := cs.CoreV1().ConfigMaps(system).Create(ctx, &corev1.ConfigMap{
		ObjectMeta: metav1.ObjectMeta{Name: "istio"},
		// Istio's mesh config carries many other keys; they are ignored.
		Data: map[string]string{"mesh": "authPolicy: MUTUAL_TLS\nmixerCheckServer: istio-policy:9091\n"},
	}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	ns := createNamespace(t, cs, "app", nil)

	dir := t.TempDir()
	ready := make(chan *control.Server, 1)
	done := make(chan error, 1)
	go func() {
		done <- RunControl(ctx, ControlConfig{
			REST: env.RESTConfig(), Namespace: system, Dir: dir,
			Listen: "127.0.0.1:0", WebhookListen: "127.0.0.1:0", Namespaces: []string{ns},
			Ready: func(s *control.Server) { ready <- s },
		})
	}()
	var srv *control.Server
	select {
	case srv = <-ready:
	case err := <-done:
		t.Fatalf("RunControl: %v", err)
	case <-time.After(60 * time.Second):
		t.Fatal("control plane did not start")
	}
	defer func() { cancel(); <-done }()

	// The workload: Service httpbin:8000 -> 80, a pod with a sidecar, and
	// the seed's annotation adding a VM's service account.
	if _, err := cs.CoreV1().ServiceAccounts(ns).Create(ctx, &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Name: "httpbin"}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	svc := &corev1.Service{
		ObjectMeta: metav1.ObjectMeta{Name: "httpbin", Annotations: map[string]string{AnnotationKubeServiceAccounts: "httpbin-vm"}},
		Spec: corev1.ServiceSpec{Selector: map[string]string{"app": "httpbin"},
			Ports: []corev1.ServicePort{{Name: "http", Port: 8000, TargetPort: intOrName("http")}}},
	}
	if _, err := cs.CoreV1().Services(ns).Create(ctx, svc, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	pod := testPod("httpbin", nil)
	pod.Spec.Containers[0].Ports[0].ContainerPort = 80
	pod.Spec.Containers = append(pod.Spec.Containers, corev1.Container{Name: SidecarName, Image: "meshd"})
	if _, err := cs.CoreV1().Pods(ns).Create(ctx, pod, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}

	applyYAML(t, dyn, ns, `
apiVersion: authentication.istio.io/v1alpha1
kind: Policy
metadata:
  name: default
spec:
  peers:
  - mtls: {}
---
apiVersion: networking.istio.io/v1alpha3
kind: DestinationRule
metadata:
  name: default
spec:
  host: "*.`+ns+`.svc.cluster.local"
  trafficPolicy:
    tls:
      mode: ISTIO_MUTUAL
---
apiVersion: authentication.istio.io/v1alpha1
kind: Policy
metadata:
  name: bad
spec:
  targets:
  - name: httpbin
  peers:
  - mtls:
      mode: STRICTEST
`)

	plane := srv.Plane()
	state := func() *meshapi.State {
		resp, err := plane.GetState(ctx, &pb.GetStateRequest{})
		if err != nil {
			t.Fatal(err)
		}
		st, err := meshapi.StateFromProto(resp)
		if err != nil {
			t.Fatal(err)
		}
		return st
	}
	kubetest.WaitFor(t, 30*time.Second, "policy, destination rule and service to reach the control plane", func() (bool, error) {
		st := state()
		e := st.Engine()
		svc := e.LookupService("httpbin."+ns, ns)
		return svc != nil && len(st.Config.Policies) > 0 && len(st.Config.DestinationRules) > 0 &&
			len(e.ServerIdentities(svc)) == 2, nil
	})

	t.Run("policy engine sees the CRD objects", func(t *testing.T) {
		e := state().Engine()
		svc := e.LookupService("httpbin."+ns, ns)
		rows := e.TLSCheck([]*registry.Service{svc})
		if len(rows) != 1 {
			t.Fatalf("rows = %+v", rows)
		}
		r := rows[0]
		if r.Status != "OK" || r.Server.Mode != policy.ServerStrict || r.Client.Mode != policy.ClientIstioMutual {
			t.Errorf("tls-check row = %+v, want OK STRICT ISTIO_MUTUAL", r)
		}
		if want := "Policy/" + ns + "/default"; r.Server.DecidedBy != want {
			t.Errorf("server mode decided by %q, want %q", r.Server.DecidedBy, want)
		}
	})

	t.Run("secure naming from pods and annotation", func(t *testing.T) {
		e := state().Engine()
		got := e.ServerIdentities(e.LookupService("httpbin."+ns, ns))
		want := []string{"spiffe://cluster.local/ns/" + ns + "/sa/httpbin", "spiffe://cluster.local/ns/" + ns + "/sa/httpbin-vm"}
		if strings.Join(got, ",") != strings.Join(want, ",") {
			t.Errorf("server identities = %v, want %v", got, want)
		}
		if p, ok := e.LookupService("httpbin."+ns, ns).Port(8000); !ok || p.TargetPort != 80 || p.Protocol != "HTTP" {
			t.Errorf("port 8000 = %+v, want target 80 (named port resolved), HTTP", p)
		}
	})

	t.Run("invalid object reported and not applied", func(t *testing.T) {
		for _, p := range state().Config.Policies {
			if p.Metadata.Name == "bad" {
				t.Fatal("invalid Policy bad was applied")
			}
		}
		kubetest.WaitFor(t, 20*time.Second, "InvalidConfig event on Policy bad", func() (bool, error) {
			evs, err := cs.CoreV1().Events(ns).List(ctx, metav1.ListOptions{FieldSelector: "reason=" + ReasonInvalidConfig})
			if err != nil {
				return false, err
			}
			for _, ev := range evs.Items {
				if ev.InvolvedObject.Name == "bad" && ev.Type == corev1.EventTypeWarning && strings.Contains(ev.Message, "STRICTEST") {
					t.Logf("event: %s", ev.Message)
					return true, nil
				}
			}
			return false, nil
		})
	})

	meshctl := buildMeshctl(t)
	t.Run("meshctl tls-check against the cluster", func(t *testing.T) {
		out, err := exec.Command(meshctl, "--dir", dir, "tls-check", "httpbin."+ns).CombinedOutput()
		t.Logf("meshctl tls-check httpbin.%s:\n%s", ns, out)
		if err != nil {
			t.Fatalf("meshctl tls-check: %v", err)
		}
		for _, want := range []string{"httpbin." + ns + ".svc.cluster.local:8000", "OK", "STRICT", "ISTIO_MUTUAL", "Policy/" + ns + "/default", "DestinationRule/" + ns + "/default"} {
			if !bytes.Contains(out, []byte(want)) {
				t.Errorf("output lacks %q", want)
			}
		}
	})

	t.Run("meshctl --kubeconfig tls-check reads the cluster directly", func(t *testing.T) {
		cmd := exec.Command(meshctl, "--kubeconfig", env.Kubeconfig(t), "--mesh-namespace", system, "tls-check", "httpbin."+ns)
		var stdout, stderr bytes.Buffer
		cmd.Stdout, cmd.Stderr = &stdout, &stderr
		err := cmd.Run()
		t.Logf("stdout:\n%s\nstderr:\n%s", stdout.String(), stderr.String())
		if err != nil {
			t.Fatalf("meshctl --kubeconfig tls-check: %v", err)
		}
		for _, want := range []string{"OK", "STRICT", "ISTIO_MUTUAL", "Policy/" + ns + "/default"} {
			if !bytes.Contains(stdout.Bytes(), []byte(want)) {
				t.Errorf("stdout lacks %q", want)
			}
		}
		if !strings.Contains(stderr.String(), "not applied: Policy/"+ns+"/bad") {
			t.Errorf("stderr does not report the invalid Policy bad")
		}
	})

	t.Run("CSR over gRPC with a ServiceAccount token", func(t *testing.T) {
		// What an injected CSR-mode sidecar does: CreateCertificate with its
		// projected token as the bearer credential.
		call := func(token, csrURI string) (*pb.CreateCertificateResponse, error) {
			conn, err := client.Dial(ctx, client.Options{Dir: dir, Token: token})
			if err != nil {
				t.Fatal(err)
			}
			defer conn.Close()
			return pb.NewCertificateAuthorityClient(conn).CreateCertificate(ctx, &pb.CreateCertificateRequest{Csr: csrFor(t, csrURI), TtlSeconds: 3600})
		}
		tok := requestToken(t, cs, ns, "httpbin", TokenAudience)
		resp, err := call(tok, "")
		if err != nil {
			t.Fatalf("own account refused: %v", err)
		}
		if want := "spiffe://cluster.local/ns/" + ns + "/sa/httpbin"; resp.SpiffeId != want {
			t.Errorf("signed %s, want %s", resp.SpiffeId, want)
		}
		if _, err := call(tok, "spiffe://cluster.local/ns/"+ns+"/sa/sleep"); status.Code(err) != codes.PermissionDenied {
			t.Errorf("another account: err = %v, want PermissionDenied", err)
		}
		if _, err := call(requestToken(t, cs, ns, "httpbin", "https://kubernetes.default.svc"), ""); status.Code(err) != codes.Unauthenticated {
			t.Errorf("wrong audience: err = %v, want Unauthenticated", err)
		}
	})

	t.Run("secret and root ConfigMap", func(t *testing.T) {
		kubetest.WaitFor(t, 20*time.Second, "istio.httpbin", func() (bool, error) {
			_, err := cs.CoreV1().Secrets(ns).Get(ctx, "istio.httpbin", metav1.GetOptions{})
			return err == nil, err
		})
		// A namespace made after start-up gets it too, on creation (the
		// periodic re-check is every 30s, longer than this wait).
		late := createNamespace(t, cs, "late", nil)
		for _, n := range []string{ns, late} {
			kubetest.WaitFor(t, 15*time.Second, "istio-ca-root-cert in "+n, func() (bool, error) {
				cm, err := cs.CoreV1().ConfigMaps(n).Get(ctx, RootCertConfigMap, metav1.GetOptions{})
				return err == nil && cm.Data[RootCertKey] == strings.Join(srv.CA().Bundle().RootsPEM, ""), err
			})
		}
	})
}

// buildMeshctl builds cmd/meshctl and returns its path. It uses the same
// environment as `make build`, so Go's build cache makes this a relink.
func buildMeshctl(t *testing.T) string {
	t.Helper()
	out := filepath.Join(t.TempDir(), "meshctl")
	cmd := exec.Command("go", "build", "-o", out, "github.com/meshauth/meshauth/cmd/meshctl")
	if b, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("go build meshctl: %v\n%s", err, b)
	}
	return out
}

// TestControlPlaneReplicas runs two replicas: one leads and writes Secrets;
// when it stops, the other takes over. Both use one webhook CA.
func TestControlPlaneReplicas(t *testing.T) {
	env := kubetest.Need(t)
	cs := env.Clientset(t)
	ctx := context.Background()
	system := createNamespace(t, cs, "istio-system", nil)
	ns := createNamespace(t, cs, "replicas", nil)
	installCRDs(t, env)

	start := func(id string) *testReplica {
		return startReplica(t, ControlConfig{
			REST: env.RESTConfig(), Namespace: system, Dir: t.TempDir(), Identity: id,
			Listen: "127.0.0.1:0", WebhookListen: "127.0.0.1:0", Namespaces: []string{ns},
			LeaseDuration: 2 * time.Second,
		})
	}
	a := start("a")
	select {
	case <-a.leading:
	case <-time.After(30 * time.Second):
		t.Fatal("replica a never led")
	}
	b := start("b")

	newSA := func(name string) {
		if _, err := cs.CoreV1().ServiceAccounts(ns).Create(ctx, &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Name: name}}, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
		kubetest.WaitFor(t, 30*time.Second, "istio."+name, func() (bool, error) {
			_, err := cs.CoreV1().Secrets(ns).Get(ctx, "istio."+name, metav1.GetOptions{})
			return err == nil, err
		})
	}
	newSA("first")
	select {
	case <-b.leading:
		t.Fatal("replica b leads while a holds the lease")
	default:
	}

	// Both replicas serve the webhook with certificates from one CA.
	caSecret, err := cs.CoreV1().Secrets(system).Get(ctx, WebhookCASecret, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if len(caSecret.Data[corev1.TLSCertKey]) == 0 {
		t.Fatal("webhook CA secret is empty")
	}

	a.stop() // releases the lease (ReleaseOnCancel)
	select {
	case <-b.leading:
	case <-time.After(30 * time.Second):
		t.Fatal("replica b did not take over")
	}
	newSA("second")
}

// testReplica is one control plane replica (RunControl) in a test.
type testReplica struct {
	srv     *control.Server
	leading chan struct{} // gets a value each time it starts leading
	cancel  context.CancelFunc
	done    chan error
	once    sync.Once
}

// startReplica runs RunControl with cfg (its Ready and Leading are set
// here) until it is ready; it stops with stop or at the end of the test.
func startReplica(t *testing.T, cfg ControlConfig) *testReplica {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	r := &testReplica{cancel: cancel, done: make(chan error, 1), leading: make(chan struct{}, 1)}
	ready := make(chan *control.Server, 1)
	cfg.Ready = func(s *control.Server) { ready <- s }
	cfg.Leading = func() {
		select {
		case r.leading <- struct{}{}:
		default:
		}
	}
	go func() { r.done <- RunControl(ctx, cfg) }()
	select {
	case r.srv = <-ready:
	case err := <-r.done:
		cancel()
		t.Fatalf("replica %s: %v", cfg.Identity, err)
	}
	t.Cleanup(r.stop)
	return r
}

// stop cancels the replica and waits for RunControl to return (once).
func (r *testReplica) stop() {
	r.once.Do(func() { r.cancel(); <-r.done })
}
