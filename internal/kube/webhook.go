package kube

import (
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net/http"

	admissionv1 "k8s.io/api/admission/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// WebhookPath is where Webhook serves admission reviews.
const WebhookPath = "/inject"

// maxReviewBytes bounds a request body: the API server sends one Pod, and a
// Pod is limited to about 1.5 MiB in etcd.
const maxReviewBytes = 4 << 20

// Webhook is the mutating admission webhook: the API server sends it every
// Pod created in a namespace labelled istio-injection=enabled (the
// MutatingWebhookConfiguration's namespaceSelector does the filtering) and it
// answers with a JSON patch that injects the sidecar, exactly as
// `meshctl kube-inject` would.
type Webhook struct {
	Injector *Injector
	// Log, default slog.Default().
	Log *slog.Logger
}

// ServeHTTP implements the admission.k8s.io/v1 AdmissionReview protocol.
func (w *Webhook) ServeHTTP(rw http.ResponseWriter, r *http.Request) {
	log := w.Log
	if log == nil {
		log = slog.Default()
	}
	if r.Method != http.MethodPost {
		http.Error(rw, "admission webhook: POST an AdmissionReview", http.StatusMethodNotAllowed)
		return
	}
	body, err := io.ReadAll(io.LimitReader(r.Body, maxReviewBytes+1))
	if err != nil || len(body) > maxReviewBytes {
		http.Error(rw, "admission webhook: request body unreadable or over 4 MiB", http.StatusBadRequest)
		return
	}
	var review admissionv1.AdmissionReview
	if err := json.Unmarshal(body, &review); err != nil || review.Request == nil {
		http.Error(rw, fmt.Sprintf("admission webhook: body is not an AdmissionReview with a request: %v", err), http.StatusBadRequest)
		return
	}
	resp := w.review(review.Request)
	resp.UID = review.Request.UID
	out := admissionv1.AdmissionReview{TypeMeta: review.TypeMeta, Response: resp}
	if out.APIVersion == "" {
		out.APIVersion, out.Kind = "admission.k8s.io/v1", "AdmissionReview"
	}
	b, err := json.Marshal(out)
	if err != nil {
		http.Error(rw, err.Error(), http.StatusInternalServerError)
		return
	}
	rw.Header().Set("Content-Type", "application/json")
	_, _ = rw.Write(b)
	log.Info("admission review", "namespace", review.Request.Namespace, "name", podName(review.Request),
		"allowed", resp.Allowed, "patched", resp.Patch != nil)
}

func podName(req *admissionv1.AdmissionRequest) string {
	if req.Name != "" {
		return req.Name
	}
	var meta struct {
		Metadata metav1.ObjectMeta `json:"metadata"`
	}
	_ = json.Unmarshal(req.Object.Raw, &meta)
	if meta.Metadata.GenerateName != "" {
		return meta.Metadata.GenerateName + "*"
	}
	return meta.Metadata.Name
}

// review decides one request. A Pod it cannot decode is refused (the
// configuration's failurePolicy decides what the API server does with
// errors it sees itself, such as a timeout).
func (w *Webhook) review(req *admissionv1.AdmissionRequest) *admissionv1.AdmissionResponse {
	if req.Kind.Kind != "Pod" || req.Operation != admissionv1.Create {
		return &admissionv1.AdmissionResponse{Allowed: true}
	}
	var pod corev1.Pod
	if err := json.Unmarshal(req.Object.Raw, &pod); err != nil {
		return deny(fmt.Errorf("meshauth injector: decode pod: %w", err))
	}
	if reason := Skip(pod.Annotations, &pod.Spec); reason != "" {
		return &admissionv1.AdmissionResponse{Allowed: true}
	}
	ann, err := w.Injector.InjectPod(copyMap(pod.Annotations), &pod.Spec)
	if err != nil {
		return deny(fmt.Errorf("meshauth injector: %w", err))
	}
	// JSON Patch "add" on an existing member replaces it, so these four
	// operations work whether or not the pod had volumes or annotations.
	patch := []map[string]any{
		{"op": "add", "path": "/metadata/annotations", "value": ann},
		{"op": "add", "path": "/spec/initContainers", "value": pod.Spec.InitContainers},
		{"op": "add", "path": "/spec/containers", "value": pod.Spec.Containers},
		{"op": "add", "path": "/spec/volumes", "value": pod.Spec.Volumes},
	}
	b, err := json.Marshal(patch)
	if err != nil {
		return deny(err)
	}
	pt := admissionv1.PatchTypeJSONPatch
	return &admissionv1.AdmissionResponse{Allowed: true, Patch: b, PatchType: &pt}
}

func deny(err error) *admissionv1.AdmissionResponse {
	return &admissionv1.AdmissionResponse{Allowed: false, Result: &metav1.Status{
		Status: metav1.StatusFailure, Message: err.Error(), Code: http.StatusBadRequest,
	}}
}

func copyMap(m map[string]string) map[string]string {
	out := make(map[string]string, len(m))
	for k, v := range m {
		out[k] = v
	}
	return out
}
