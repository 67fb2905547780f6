package kube

import (
	"bytes"
	"fmt"
	"text/template"
)

// InstallConfig configures the rendered install manifests (`meshctl
// install`). Zero values get the defaults named.
type InstallConfig struct {
	// MTLS sets the mesh ConfigMap's authPolicy to MUTUAL_TLS (the seed's
	// istio-demo-auth.yaml); otherwise NONE.
	MTLS bool
	// Namespace of the control plane (default istio-system, as in the seed).
	Namespace string
	// Image of the control plane's meshd (default ghcr.io/meshauth/meshd:latest).
	Image string
	// ProxyImage is what the webhook injects: meshd built without -tags kube
	// (default ghcr.io/meshauth/proxy:latest).
	ProxyImage string
	// InjectMode is what the webhook injects: secret (default) or csr.
	InjectMode Mode
	// TrustDomain (default cluster.local).
	TrustDomain string
	// NoCRDs leaves the CustomResourceDefinitions out (install them once
	// with install/kubernetes/crds.yaml).
	NoCRDs bool
}

// RenderInstall returns the install manifests: the CRDs, then the
// namespace, RBAC, the control plane Deployment and Service, the mesh
// ConfigMap and the injection webhook.
func RenderInstall(cfg InstallConfig) ([]byte, error) {
	if cfg.Namespace == "" {
		cfg.Namespace = "istio-system"
	}
	if cfg.Image == "" {
		cfg.Image = "ghcr.io/meshauth/meshd:latest"
	}
	if cfg.ProxyImage == "" {
		cfg.ProxyImage = "ghcr.io/meshauth/proxy:latest"
	}
	if cfg.InjectMode == "" {
		cfg.InjectMode = SecretMode
	}
	if cfg.InjectMode != SecretMode && cfg.InjectMode != CSRMode {
		return nil, fmt.Errorf("kube: inject mode %q: want secret or csr", cfg.InjectMode)
	}
	if cfg.TrustDomain == "" {
		cfg.TrustDomain = "cluster.local"
	}
	var b bytes.Buffer
	if !cfg.NoCRDs {
		b.Write(CRDManifest())
	}
	authPolicy := "NONE"
	if cfg.MTLS {
		authPolicy = "MUTUAL_TLS"
	}
	err := installTmpl.Execute(&b, map[string]any{
		"NS": cfg.Namespace, "Image": cfg.Image, "ProxyImage": cfg.ProxyImage, "Mode": string(cfg.InjectMode),
		"TD": cfg.TrustDomain, "AuthPolicy": authPolicy,
		"ControlAddr": "meshauth-control." + cfg.Namespace + ".svc:15012",
	})
	return b.Bytes(), err
}

// The control plane is labelled istio=citadel so that the seed's
// `kubectl get deploy -l istio=citadel -n istio-system` finds it.
var installTmpl = template.Must(template.New("install").Parse(`---
apiVersion: v1
kind: Namespace
metadata:
  name: {{.NS}}
  labels:
    app.kubernetes.io/part-of: meshauth
---
# The mesh config, read the way the seed checks it:
#   kubectl get configmap istio -o yaml -n {{.NS}} | grep authPolicy
apiVersion: v1
kind: ConfigMap
metadata:
  name: istio
  namespace: {{.NS}}
  labels:
    app.kubernetes.io/part-of: meshauth
data:
  mesh: |
    # MUTUAL_TLS: every sidecar serves and calls with mutual TLS unless a
    # Policy or DestinationRule says otherwise. NONE: plaintext by default.
    authPolicy: {{.AuthPolicy}}
    trustDomain: {{.TD}}
    # Services that sidecars call without their mTLS whatever authPolicy
    # says: the API server (Istio 0.8's default) and this control plane,
    # which no sidecar fronts (its callers, the agents and the API server,
    # bring their own TLS).
    mtlsExcludedServices:
    - kubernetes.default.svc.cluster.local
    - meshauth-control.{{.NS}}.svc.cluster.local
---
apiVersion: v1
kind: ServiceAccount
metadata:
  name: meshauth-control
  namespace: {{.NS}}
  labels:
    app.kubernetes.io/part-of: meshauth
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRole
metadata:
  name: meshauth-control
  labels:
    app.kubernetes.io/part-of: meshauth
rules:
# The secret controller: istio.<sa> Secrets for every ServiceAccount; the
# root in istio-ca-secret (or cacerts).
- apiGroups: [""]
  resources: [secrets]
  verbs: [get, list, watch, create, update, delete]
- apiGroups: [""]
  resources: [serviceaccounts, services, pods, namespaces]
  verbs: [get, list, watch]
- apiGroups: [discovery.k8s.io]
  resources: [endpointslices]
  verbs: [get, list, watch]
# istio-ca-root-cert in every namespace (CSR-mode sidecars verify the CA).
- apiGroups: [""]
  resources: [configmaps]
  verbs: [get, list, watch, create, update]
# InvalidConfig events on config objects that are not applied.
- apiGroups: ["", events.k8s.io]
  resources: [events]
  verbs: [create, patch]
- apiGroups: [authentication.istio.io, networking.istio.io, rbac.istio.io]
  resources: ["*"]
  verbs: [get, list, watch]
# CSR mode: ServiceAccount tokens are checked with TokenReview.
- apiGroups: [authentication.k8s.io]
  resources: [tokenreviews]
  verbs: [create]
# Leader election among replicas: only the leader writes Secrets.
- apiGroups: [coordination.k8s.io]
  resources: [leases]
  verbs: [get, create, update]
# The webhook's caBundle is set at start-up to the CA of its certificate.
- apiGroups: [admissionregistration.k8s.io]
  resources: [mutatingwebhookconfigurations]
  resourceNames: [meshauth-sidecar-injector]
  verbs: [get, update]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRoleBinding
metadata:
  name: meshauth-control
  labels:
    app.kubernetes.io/part-of: meshauth
roleRef:
  apiGroup: rbac.authorization.k8s.io
  kind: ClusterRole
  name: meshauth-control
subjects:
- kind: ServiceAccount
  name: meshauth-control
  namespace: {{.NS}}
---
apiVersion: apps/v1
kind: Deployment
metadata:
  name: meshauth-control
  namespace: {{.NS}}
  labels:
    app: meshauth-control
    istio: citadel
    app.kubernetes.io/part-of: meshauth
spec:
  replicas: 1
  selector:
    matchLabels:
      app: meshauth-control
  template:
    metadata:
      labels:
        app: meshauth-control
        istio: citadel
      annotations:
        sidecar.istio.io/inject: "false"
    spec:
      serviceAccountName: meshauth-control
      containers:
      - name: control
        image: {{.Image}}
        imagePullPolicy: IfNotPresent
        command: [meshd, kube-control]
        args:
        - --dir=/var/lib/meshauth
        - --trust-domain={{.TD}}
        - --inject-mode={{.Mode}}
        - --inject-image={{.ProxyImage}}
        - --inject-control-addr={{.ControlAddr}}
        env:
        - name: POD_NAMESPACE
          valueFrom:
            fieldRef: {fieldPath: metadata.namespace}
        - name: POD_NAME
          valueFrom:
            fieldRef: {fieldPath: metadata.name}
        ports:
        - {name: grpc-ca, containerPort: 15012}
        - {name: https-webhook, containerPort: 15017}
        - {name: http-metrics, containerPort: 15014}
        readinessProbe:
          tcpSocket: {port: 15012}
          periodSeconds: 5
        securityContext:
          runAsNonRoot: true
          runAsUser: 1337
          allowPrivilegeEscalation: false
          readOnlyRootFilesystem: true
          capabilities: {drop: [ALL]}
        volumeMounts:
        - {name: state, mountPath: /var/lib/meshauth}
      volumes:
      # The CA store and admin token live here; the root is in the
      # istio-ca-secret Secret, so a restarted pod keeps the mesh's root.
      - name: state
        emptyDir: {}
---
apiVersion: v1
kind: Service
metadata:
  name: meshauth-control
  namespace: {{.NS}}
  labels:
    app: meshauth-control
    app.kubernetes.io/part-of: meshauth
spec:
  selector:
    app: meshauth-control
  ports:
  - {name: grpc-ca, port: 15012}
  - {name: https-webhook, port: 443, targetPort: 15017}
  - {name: http-metrics, port: 15014}
---
# Pods created in namespaces labelled istio-injection=enabled get the
# sidecar. The control plane fills in caBundle when it starts.
apiVersion: admissionregistration.k8s.io/v1
kind: MutatingWebhookConfiguration
metadata:
  name: meshauth-sidecar-injector
  labels:
    app.kubernetes.io/part-of: meshauth
webhooks:
- name: sidecar-injector.meshauth.io
  clientConfig:
    service:
      name: meshauth-control
      namespace: {{.NS}}
      path: /inject
      port: 443
  rules:
  - operations: [CREATE]
    apiGroups: [""]
    apiVersions: [v1]
    resources: [pods]
  namespaceSelector:
    matchLabels:
      istio-injection: enabled
  # Ignore: while the control plane is down, pods still start (without a
  # sidecar) rather than every deployment in labelled namespaces stalling.
  failurePolicy: Ignore
  sideEffects: None
  admissionReviewVersions: [v1]
  timeoutSeconds: 10
`))
