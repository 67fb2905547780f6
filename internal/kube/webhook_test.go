package kube

import (
	"context"
	"crypto/tls"
	"io"
	"log/slog"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	admissionregistrationv1 "k8s.io/api/admissionregistration/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"

	"github.com/meshauth/meshauth/internal/kube/kubetest"
)

// startWebhook serves the injector over TLS on a loopback port and returns
// its URL and the CA the API server must trust.
func startWebhook(t *testing.T, in *Injector) (url string, caPEM []byte) {
	t.Helper()
	caKey, ca, err := kubetest.SelfSignedCA("webhook-ca")
	if err != nil {
		t.Fatal(err)
	}
	certPEM, keyPEM, err := kubetest.ServingCert(ca, caKey, "meshauth-webhook", net.ParseIP("127.0.0.1"))
	if err != nil {
		t.Fatal(err)
	}
	cert, err := tls.X509KeyPair(certPEM, keyPEM)
	if err != nil {
		t.Fatal(err)
	}
	l, err := tls.Listen("tcp", "127.0.0.1:0", &tls.Config{Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS12})
	if err != nil {
		t.Fatal(err)
	}
	mux := http.NewServeMux()
	mux.Handle(WebhookPath, &Webhook{Injector: in})
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second}
	go srv.Serve(l)
	t.Cleanup(func() { srv.Close() })
	return "https://" + l.Addr().String() + WebhookPath, kubetest.CAPEM(ca)
}

// TestWebhookInjectsPodsInLabelledNamespace registers the webhook with a
// real API server and creates Pods through the API: in a namespace labelled
// istio-injection=enabled they come back with the sidecar; elsewhere, or
// when annotated out, they come back untouched.
func TestWebhookInjectsPodsInLabelledNamespace(t *testing.T) {
	env := kubetest.Need(t)
	cs := env.Clientset(t)
	ctx := context.Background()
	url, caPEM := startWebhook(t, mustInjector(t, SecretMode))

	fail := admissionregistrationv1.Fail
	none := admissionregistrationv1.SideEffectClassNone
	whc := &admissionregistrationv1.MutatingWebhookConfiguration{
		ObjectMeta: metav1.ObjectMeta{Name: "meshauth-sidecar-injector-test"},
		Webhooks: []admissionregistrationv1.MutatingWebhook{{
			Name:                    "sidecar-injector.meshauth.io",
			ClientConfig:            admissionregistrationv1.WebhookClientConfig{URL: &url, CABundle: caPEM},
			Rules:                   []admissionregistrationv1.RuleWithOperations{podCreateRule()},
			NamespaceSelector:       &metav1.LabelSelector{MatchLabels: map[string]string{LabelInjection: "enabled"}},
			FailurePolicy:           &fail,
			SideEffects:             &none,
			AdmissionReviewVersions: []string{"v1"},
		}},
	}
	if _, err := cs.AdmissionregistrationV1().MutatingWebhookConfigurations().Create(ctx, whc, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		cs.AdmissionregistrationV1().MutatingWebhookConfigurations().Delete(ctx, whc.Name, metav1.DeleteOptions{})
	})
	labelled := createNamespace(t, cs, "inject-on", map[string]string{LabelInjection: "enabled"})
	plain := createNamespace(t, cs, "inject-off", nil)

	// The API server picks up new webhook configurations asynchronously;
	// dry-run creates (the webhook has no side effects) until it is live.
	kubetest.WaitFor(t, 30*time.Second, "webhook to be active", func() (bool, error) {
		p, err := cs.CoreV1().Pods(labelled).Create(ctx, testPod("probe", nil), metav1.CreateOptions{DryRun: []string{metav1.DryRunAll}})
		return err == nil && findContainer(p.Spec.Containers, SidecarName) != nil, err
	})

	for _, tc := range []struct {
		name, ns    string
		annotations map[string]string
		injected    bool
	}{
		{"labelled", labelled, nil, true},
		{"unlabelled", plain, nil, false},
		{"opted-out", labelled, map[string]string{AnnotationInject: "false"}, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			pod := testPod("web", tc.annotations)
			pod.Name = "web-" + tc.name
			got, err := cs.CoreV1().Pods(tc.ns).Create(ctx, pod, metav1.CreateOptions{})
			if err != nil {
				t.Fatal(err)
			}
			// Read it back from the API, as stored in etcd.
			got, err = cs.CoreV1().Pods(tc.ns).Get(ctx, got.Name, metav1.GetOptions{})
			if err != nil {
				t.Fatal(err)
			}
			side := findContainer(got.Spec.Containers, SidecarName)
			if (side != nil) != tc.injected {
				t.Fatalf("sidecar present = %v, want %v; containers %v", side != nil, tc.injected, containerNames(got.Spec.Containers))
			}
			if !tc.injected {
				return
			}
			if u := side.SecurityContext.RunAsUser; u == nil || *u != ProxyUID {
				t.Errorf("sidecar uid = %v, want %d", u, ProxyUID)
			}
			if findContainer(got.Spec.InitContainers, InitName) == nil {
				t.Errorf("no %s init container", InitName)
			}
			v := findVolume(got.Spec.Volumes, CertVolume)
			if v == nil || v.Secret == nil || v.Secret.SecretName != "istio.web" {
				t.Errorf("cert volume = %+v, want Secret istio.web", v)
			}
			app := findContainer(got.Spec.Containers, "web")
			if p := app.LivenessProbe.HTTPGet; p.Port.IntValue() != HealthPort || p.Path != "/app-health/web/livez" {
				t.Errorf("liveness probe = %+v, want the sidecar health port", p)
			}
			if !strings.Contains(got.Annotations[AnnotationAppProbers], `"port":8080`) {
				t.Errorf("app probers annotation = %q", got.Annotations[AnnotationAppProbers])
			}
		})
	}
}

func podCreateRule() admissionregistrationv1.RuleWithOperations {
	return admissionregistrationv1.RuleWithOperations{
		Operations: []admissionregistrationv1.OperationType{admissionregistrationv1.Create},
		Rule: admissionregistrationv1.Rule{
			APIGroups: []string{""}, APIVersions: []string{"v1"}, Resources: []string{"pods"},
		},
	}
}

func testPod(name string, annotations map[string]string) *corev1.Pod {
	return &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: name, Annotations: annotations, Labels: map[string]string{"app": name}},
		Spec: corev1.PodSpec{
			ServiceAccountName: name,
			Containers: []corev1.Container{{
				Name: name, Image: "nginx:1.27",
				Ports: []corev1.ContainerPort{{Name: "http", ContainerPort: 8080}},
				LivenessProbe: &corev1.Probe{ProbeHandler: corev1.ProbeHandler{HTTPGet: &corev1.HTTPGetAction{
					Path: "/healthz", Port: intOrName("http"),
				}}},
			}},
		},
	}
}

// createNamespace makes a namespace with a generated name, deleted at the
// end of the test.
func createNamespace(t testing.TB, cs kubernetes.Interface, prefix string, labels map[string]string) string {
	t.Helper()
	ns, err := cs.CoreV1().Namespaces().Create(context.Background(), &corev1.Namespace{
		ObjectMeta: metav1.ObjectMeta{GenerateName: prefix + "-", Labels: labels},
	}, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		cs.CoreV1().Namespaces().Delete(context.Background(), ns.Name, metav1.DeleteOptions{})
	})
	return ns.Name
}

func containerNames(cs []corev1.Container) []string {
	var out []string
	for _, c := range cs {
		out = append(out, c.Name)
	}
	return out
}

func discardLog() *slog.Logger { return slog.New(slog.NewTextHandler(io.Discard, nil)) }
