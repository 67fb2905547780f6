package kube

import (
	"bytes"
	"context"
	"crypto/x509"
	"encoding/pem"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"

	"github.com/meshauth/meshauth/internal/ca"
	"github.com/meshauth/meshauth/internal/ca/catest"
	"github.com/meshauth/meshauth/internal/identity"
	"github.com/meshauth/meshauth/internal/kube/kubetest"
	"github.com/meshauth/meshauth/internal/registry"
)

// TestPluggedRootFromCacerts: an operator's intermediate in Secret cacerts
// wins over istio-ca-secret, and workload certificates chain to the
// operator's root through it.
func TestPluggedRootFromCacerts(t *testing.T) {
	env := kubetest.Need(t)
	cs := env.Clientset(t)
	ctx := context.Background()
	ns := createNamespace(t, cs, "plugged", nil)
	op := catest.New(t, catest.WithIntermediate())
	der, err := x509.MarshalPKCS8PrivateKey(op.IntermediateKey)
	if err != nil {
		t.Fatal(err)
	}
	inter := kubetest.CAPEM(op.Intermediate)
	if _, err := cs.CoreV1().Secrets(ns).Create(ctx, &corev1.Secret{
		ObjectMeta: metav1.ObjectMeta{Name: PluggedCASecret},
		Data: map[string][]byte{
			CACertKey: inter, CertChainKey: inter, RootCertKey: op.RootPEM(),
			CAKeyKey: pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der}),
		},
	}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	backend, src, err := NewCABackend(ctx, cs, ns, "cluster.local", time.Now(), discardLog())
	if err != nil || src != RootPlugged {
		t.Fatalf("NewCABackend = %s, %v; want %s", src, err, RootPlugged)
	}
	authority, err := ca.New(ca.Config{Dir: dir, Backend: backend})
	if err != nil {
		t.Fatal(err)
	}
	defer authority.Close()
	id := identity.MustParse("spiffe://cluster.local/ns/" + ns + "/sa/web")
	iss, err := authority.Sign(ctx, ca.Caller{ID: id, Method: "self"}, csrFor(t, ""), time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	chain, err := identity.ParseCertsPEM([]byte(strings.Join(iss.ChainPEM, "")))
	if err != nil {
		t.Fatal(err)
	}
	if got, err := op.Bundle().Verify(chain, time.Now()); err != nil || got != id {
		t.Fatalf("chain to the operator's root: %s, %v", got, err)
	}
	if _, err := cs.CoreV1().Secrets(ns).Get(ctx, CASecret, metav1.GetOptions{}); err == nil {
		t.Error("istio-ca-secret was created although cacerts exists")
	}
	noKeyOnDisk(t, dir, der)

	t.Run("incomplete cacerts is refused", func(t *testing.T) {
		s, _ := cs.CoreV1().Secrets(ns).Get(ctx, PluggedCASecret, metav1.GetOptions{})
		delete(s.Data, CAKeyKey)
		if _, err := cs.CoreV1().Secrets(ns).Update(ctx, s, metav1.UpdateOptions{}); err != nil {
			t.Fatal(err)
		}
		_, _, err := NewCABackend(ctx, cs, ns, "cluster.local", time.Now(), discardLog())
		if err == nil || !strings.Contains(err.Error(), "has no ca-key.pem") {
			t.Fatalf("err = %v, want it to name the missing ca-key.pem", err)
		}
	})
}

func TestConvert(t *testing.T) {
	httpProto := "http"
	pod := func(name, sa string, labels map[string]string, sidecar bool) *corev1.Pod {
		p := &corev1.Pod{
			ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: "default", Labels: labels},
			Spec: corev1.PodSpec{ServiceAccountName: sa, Containers: []corev1.Container{{
				Name: "app", Ports: []corev1.ContainerPort{{Name: "web", ContainerPort: 8080}},
			}}},
			Status: corev1.PodStatus{PodIP: "10.1.0." + name[len(name)-1:], Phase: corev1.PodRunning},
		}
		if sidecar {
			p.Spec.Containers = append(p.Spec.Containers, corev1.Container{Name: SidecarName, Ports: []corev1.ContainerPort{{ContainerPort: 15090}}})
		}
		return p
	}
	svcs := []*corev1.Service{
		{ObjectMeta: metav1.ObjectMeta{Name: "web", Namespace: "default",
			Annotations: map[string]string{AnnotationKubeServiceAccounts: "vm, legacy", AnnotationCanonicalServiceAccounts: "spiffe://cluster.local/ns/other/sa/x,not-an-id"}},
			Spec: corev1.ServiceSpec{ClusterIP: "10.96.0.10", Selector: map[string]string{"app": "web"}, Ports: []corev1.ServicePort{
				{Name: "http-main", Port: 80, TargetPort: intstr.FromString("web")},
				{Name: "metrics", Port: 9090, TargetPort: intstr.FromInt32(9091), AppProtocol: &httpProto},
				{Name: "dns", Port: 53, Protocol: corev1.ProtocolUDP},
			}}},
		{ObjectMeta: metav1.ObjectMeta{Name: "ext", Namespace: "default"}, Spec: corev1.ServiceSpec{Type: corev1.ServiceTypeExternalName, ExternalName: "example.com"}},
		{ObjectMeta: metav1.ObjectMeta{Name: "manual", Namespace: "default"}, Spec: corev1.ServiceSpec{ClusterIP: corev1.ClusterIPNone, Ports: []corev1.ServicePort{{Port: 5432}}}},
	}
	done := pod("job1", "batch", map[string]string{"app": "web"}, true)
	done.Status.Phase = corev1.PodSucceeded
	pods := []*corev1.Pod{pod("web1", "web", map[string]string{"app": "web"}, true), pod("db1", "", nil, false), done}
	slices := []*discoveryv1.EndpointSlice{{
		ObjectMeta: metav1.ObjectMeta{Name: "manual-abc", Namespace: "default", Labels: map[string]string{discoveryv1.LabelServiceName: "manual"}},
		Endpoints:  []discoveryv1.Endpoint{{Addresses: []string{"10.1.0.1"}, TargetRef: &corev1.ObjectReference{Kind: "Pod", Name: "db1"}}},
	}}
	ss, ws := Convert(svcs, pods, slices, "cluster.local")

	reg := registry.New()
	reg.Sync(registry.SourceKube, ss, ws)
	for _, tc := range []struct {
		name string
		got  any
		want any
	}{
		{"ExternalName skipped", len(ss), 2},
		{"finished pod skipped", len(ws), 2},
		{"cluster IP", reg.Service("default", "web").Address, "10.96.0.10"},
		{"headless has no address", reg.Service("default", "manual").Address, ""},
		{"UDP port skipped", len(reg.Service("default", "web").Ports), 2},
		{"named target port resolved", reg.Service("default", "web").Ports[0].TargetPort, uint32(8080)},
		{"protocol from port name", reg.Service("default", "web").Ports[0].Protocol, "HTTP"},
		{"protocol from appProtocol", reg.Service("default", "web").Ports[1].Protocol, "HTTP"},
		{"annotation identities (bad one dropped)", strings.Join(reg.Service("default", "web").ServiceAccounts, ","),
			"spiffe://cluster.local/ns/default/sa/vm,spiffe://cluster.local/ns/default/sa/legacy,spiffe://cluster.local/ns/other/sa/x"},
		{"selector endpoints", endpointNames(reg.Endpoints("default/web")), "web1"},
		{"EndpointSlice endpoints of a selector-less service", endpointNames(reg.Endpoints("default/manual")), "db1"},
		{"default service account", reg.Workload("default", "db1").ServiceAccount, "default"},
		{"sidecar detected", reg.Workload("default", "web1").Sidecar, true},
		{"no sidecar", reg.Workload("default", "db1").Sidecar, false},
		{"sidecar ports not app ports", len(reg.Workload("default", "web1").Ports), 1},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if tc.got != tc.want {
				t.Errorf("got %v, want %v", tc.got, tc.want)
			}
		})
	}
}

func endpointNames(ws []*registry.Workload) string {
	var n []string
	for _, w := range ws {
		n = append(n, w.Name)
	}
	return strings.Join(n, ",")
}

// FuzzWebhook feeds arbitrary bodies to the admission webhook: it must
// answer every one with 400 or a well-formed AdmissionReview, never panic.
func FuzzWebhook(f *testing.F) {
	f.Add([]byte(`{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview","request":{"uid":"1","kind":{"kind":"Pod"},"operation":"CREATE","object":{"metadata":{"name":"p"},"spec":{"containers":[{"name":"a","livenessProbe":{"httpGet":{"port":"x"}}}]}}}}`))
	f.Add([]byte(`{"request":{"uid":"2","kind":{"kind":"Pod"},"operation":"CREATE","object":{"spec":{"containers":[{"name":"a","ports":[{"containerPort":80}]}]}}}}`))
	f.Add([]byte(`{"request":{"kind":{"kind":"Service"}}}`))
	f.Add([]byte(`not json`))
	wh := &Webhook{Injector: mustInjector(f, SecretMode), Log: discardLog()}
	f.Fuzz(func(t *testing.T, body []byte) {
		rec := httptest.NewRecorder()
		wh.ServeHTTP(rec, httptest.NewRequest(http.MethodPost, WebhookPath, bytes.NewReader(body)))
		if rec.Code != 200 && rec.Code != 400 {
			t.Fatalf("status %d", rec.Code)
		}
		if rec.Code == 200 && !bytes.Contains(rec.Body.Bytes(), []byte(`"response"`)) {
			t.Fatalf("200 without a response: %s", rec.Body)
		}
	})
}

// FuzzMeshConfigMap feeds arbitrary "mesh" data (Istio's MeshConfig YAML,
// which users edit by hand) through BuildConfig: it must never panic, and
// whatever it accepts has a valid authPolicy.
func FuzzMeshConfigMap(f *testing.F) {
	for _, s := range []string{"authPolicy: MUTUAL_TLS\n", "authPolicy: NONE\nmixerCheckServer: x:9091\n", "authPolicy: [", "trustDomain: example.org\n", ""} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, mesh string) {
		cm := &corev1.ConfigMap{ObjectMeta: metav1.ObjectMeta{Name: "istio", Namespace: "istio-system"}, Data: map[string]string{"mesh": mesh}}
		res := BuildConfig(nil, cm)
		if res.Err != nil || len(res.Invalid) > 0 {
			return
		}
		if p := res.Config.AuthPolicy(); p != "NONE" && p != "MUTUAL_TLS" {
			t.Fatalf("accepted authPolicy %q from %q", p, mesh)
		}
	})
}

func TestMeshConfigMap(t *testing.T) {
	for _, tc := range []struct {
		name, mesh, want string
		invalid          bool
	}{
		{"mutual TLS", "authPolicy: MUTUAL_TLS\n", "MUTUAL_TLS", false},
		{"istio keys ignored", "authPolicy: MUTUAL_TLS\nmixerCheckServer: istio-policy:9091\n", "MUTUAL_TLS", false},
		{"unset means NONE", "mixerCheckServer: x\n", "NONE", false},
		{"bad value", "authPolicy: MUTUAL\n", "", true},
		{"bad YAML", "authPolicy: [\n", "", true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			res := BuildConfig(nil, &corev1.ConfigMap{Data: map[string]string{"mesh": tc.mesh}})
			if tc.invalid {
				if len(res.Invalid) != 1 || res.Invalid[0].Key != "MeshConfig/mesh" {
					t.Fatalf("invalid = %+v, want the mesh ConfigMap reported", res.Invalid)
				}
				if res.Config.Mesh != nil {
					t.Fatal("invalid mesh config applied")
				}
				return
			}
			if len(res.Invalid) > 0 {
				t.Fatalf("rejected: %+v", res.Invalid)
			}
			if got := string(res.Config.AuthPolicy()); got != tc.want {
				t.Errorf("authPolicy = %s, want %s", got, tc.want)
			}
		})
	}
}
