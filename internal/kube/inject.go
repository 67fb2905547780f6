package kube

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"sort"
	"strconv"
	"strings"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/util/intstr"
	"sigs.k8s.io/yaml"
)

// Names and numbers a pod in the seed's world has. The sidecar container is
// called istio-proxy so that the seed's `kubectl exec ... -c istio-proxy`
// commands work unchanged.
const (
	SidecarName   = "istio-proxy"
	InitName      = "istio-init"
	CertVolume    = "istio-certs"
	TokenVolume   = "istio-token"
	RootCAVolume  = "istio-ca-root"
	CertMountPath = "/etc/certs"
	// TokenMountPath holds the projected ServiceAccount token (CSR mode).
	TokenMountPath = "/var/run/secrets/tokens"
	TokenFile      = TokenMountPath + "/istio-token"
	// RootCAMountPath holds root-cert.pem from the istio-ca-root-cert
	// ConfigMap (CSR mode): how the sidecar verifies the CA it calls.
	RootCAMountPath = "/var/run/secrets/istio"

	ProxyUID     = 1337
	InboundPort  = 15006
	OutboundPort = 15001
	AdminPort    = 15000
	HealthPort   = 15020
	PromPort     = 15090

	// TokenAudience is the audience of projected tokens; the CA's TokenReview
	// asks for exactly this audience, so a token minted for anything else
	// (the API server, another system) cannot be replayed to the CA.
	TokenAudience = "istio-ca"

	// AnnotationInject on a pod template opts out ("false") or in ("true").
	AnnotationInject = "sidecar.istio.io/inject"
	// AnnotationStatus marks an injected pod; injection is idempotent.
	AnnotationStatus = "sidecar.istio.io/status"
	// AnnotationAppProbers holds the original HTTP probes, JSON, so the
	// sidecar's health port can forward kubelet's probes to the app.
	AnnotationAppProbers = "sidecar.meshauth.io/app-probers"
	// EnvAppProbers carries the same JSON to the sidecar process.
	EnvAppProbers = "MESHAUTH_APP_PROBERS"
)

// Mode is how a workload gets its certificate.
type Mode string

const (
	// SecretMode mounts the Secret istio.<serviceaccount> that the CA
	// controller writes (the seed's way; the key is made by the CA).
	SecretMode Mode = "secret"
	// CSRMode mounts a projected, audience-bound ServiceAccount token; the
	// sidecar makes its own key and sends a CSR (the key never leaves the pod).
	CSRMode Mode = "csr"
)

// InjectConfig says what to inject. The zero value of each field means the
// default given in its comment; NewInjector fills them.
type InjectConfig struct {
	// Image is the proxy image (meshd built without -tags kube, see
	// install/docker/proxy.Dockerfile) for the init and sidecar containers.
	// Default "ghcr.io/meshauth/proxy:latest".
	Image string
	// ImagePullPolicy, default IfNotPresent.
	ImagePullPolicy corev1.PullPolicy
	// Mode is SecretMode (default) or CSRMode.
	Mode Mode
	// ControlAddr is the control plane's gRPC address.
	// Default "meshauth-control.istio-system.svc:15012".
	ControlAddr string
	// TrustDomain, default "cluster.local".
	TrustDomain string
	// TokenExpirationSeconds of the projected token (CSR mode), default 43200.
	TokenExpirationSeconds int64
}

// Injector adds the mesh to pod specs. It is safe for concurrent use.
type Injector struct {
	cfg InjectConfig
}

// NewInjector fills cfg's defaults.
func NewInjector(cfg InjectConfig) (*Injector, error) {
	if cfg.Image == "" {
		cfg.Image = "ghcr.io/meshauth/proxy:latest"
	}
	if cfg.ImagePullPolicy == "" {
		cfg.ImagePullPolicy = corev1.PullIfNotPresent
	}
	if cfg.Mode == "" {
		cfg.Mode = SecretMode
	}
	if cfg.Mode != SecretMode && cfg.Mode != CSRMode {
		return nil, fmt.Errorf("kube: injection mode %q: want %q or %q", cfg.Mode, SecretMode, CSRMode)
	}
	if cfg.ControlAddr == "" {
		cfg.ControlAddr = "meshauth-control.istio-system.svc:15012"
	}
	if cfg.TrustDomain == "" {
		cfg.TrustDomain = "cluster.local"
	}
	if cfg.TokenExpirationSeconds == 0 {
		cfg.TokenExpirationSeconds = 43200
	}
	return &Injector{cfg: cfg}, nil
}

// AppProbe is one rewritten HTTP probe: kubelet now calls the sidecar's
// health port at the key's path, and the sidecar calls the app here,
// in plaintext on localhost, inside the pod.
type AppProbe struct {
	Port   int32             `json:"port"`
	Path   string            `json:"path,omitempty"`
	Scheme corev1.URIScheme  `json:"scheme,omitempty"`
	Host   string            `json:"host,omitempty"`
	Header map[string]string `json:"headers,omitempty"`
}

// Skip reports why a pod must not be injected, or "" if it should be.
func Skip(annotations map[string]string, spec *corev1.PodSpec) string {
	if v, ok := annotations[AnnotationInject]; ok {
		if b, err := strconv.ParseBool(v); err == nil && !b {
			return "annotation " + AnnotationInject + "=" + v
		}
	}
	if _, ok := annotations[AnnotationStatus]; ok {
		return "already injected (" + AnnotationStatus + ")"
	}
	for _, c := range spec.Containers {
		if c.Name == SidecarName {
			return "already has a " + SidecarName + " container"
		}
	}
	if spec.HostNetwork {
		// iptables in the host's namespace would capture the node's traffic.
		return "hostNetwork pod"
	}
	return ""
}

// InjectPod adds the init container, the sidecar, the certificate volume and
// rewrites HTTP probes. It changes spec and annotations in place and returns
// the new annotations map. The caller checks Skip first.
func (in *Injector) InjectPod(annotations map[string]string, spec *corev1.PodSpec) (map[string]string, error) {
	sa := spec.ServiceAccountName
	if sa == "" {
		sa = "default"
	}
	probers, err := rewriteProbes(spec)
	if err != nil {
		return nil, err
	}

	spec.InitContainers = append([]corev1.Container{in.initContainer(spec)}, spec.InitContainers...)
	spec.Containers = append(spec.Containers, in.sidecar(probers))
	spec.Volumes = append(spec.Volumes, in.volumes(sa)...)

	if annotations == nil {
		annotations = map[string]string{}
	}
	status, _ := json.Marshal(map[string]any{
		"mode":           in.cfg.Mode,
		"initContainers": []string{InitName},
		"containers":     []string{SidecarName},
		"volumes":        volumeNames(in.volumes(sa)),
	})
	annotations[AnnotationStatus] = string(status)
	if len(probers) > 0 {
		annotations[AnnotationAppProbers] = probers
	}
	return annotations, nil
}

func volumeNames(vs []corev1.Volume) []string {
	var out []string
	for _, v := range vs {
		out = append(out, v.Name)
	}
	return out
}

// initContainer installs the iptables redirect (meshd init-net). It runs as
// root with NET_ADMIN only for the life of the init container; the sidecar
// itself runs unprivileged as uid 1337, which the rules exclude so that the
// proxy's own connections are not captured again.
func (in *Injector) initContainer(spec *corev1.PodSpec) corev1.Container {
	f, t := false, true
	root := int64(0)
	return corev1.Container{
		Name:            InitName,
		Image:           in.cfg.Image,
		ImagePullPolicy: in.cfg.ImagePullPolicy,
		Command:         []string{"meshd", "init-net"},
		Args: []string{
			"--proxy-uid", strconv.Itoa(ProxyUID),
			"--inbound-port", strconv.Itoa(InboundPort),
			"--outbound-port", strconv.Itoa(OutboundPort),
			"--inbound-ports", inboundPorts(spec),
			// kubelet's probes come to the health port in plaintext; admin and
			// metrics ports are the sidecar's own.
			"--exclude-inbound-ports", fmt.Sprintf("%d,%d,%d", AdminPort, HealthPort, PromPort),
		},
		SecurityContext: &corev1.SecurityContext{
			RunAsUser:                &root,
			RunAsNonRoot:             &f,
			Privileged:               &f,
			AllowPrivilegeEscalation: &f,
			Capabilities: &corev1.Capabilities{
				Add:  []corev1.Capability{"NET_ADMIN", "NET_RAW"},
				Drop: []corev1.Capability{"ALL"},
			},
			ReadOnlyRootFilesystem: &t,
		},
	}
}

// inboundPorts lists the app's container ports, or "*" if it declares none
// (then every inbound port is captured, as Istio does).
func inboundPorts(spec *corev1.PodSpec) string {
	var ports []string
	seen := map[int32]bool{}
	for _, c := range spec.Containers {
		for _, p := range c.Ports {
			if p.Protocol != "" && p.Protocol != corev1.ProtocolTCP || seen[p.ContainerPort] {
				continue
			}
			seen[p.ContainerPort] = true
			ports = append(ports, strconv.Itoa(int(p.ContainerPort)))
		}
	}
	if len(ports) == 0 {
		return "*"
	}
	return strings.Join(ports, ",")
}

func (in *Injector) sidecar(probers string) corev1.Container {
	f, t := false, true
	uid := int64(ProxyUID)
	args := []string{
		"sidecar",
		"--control", in.cfg.ControlAddr,
		"--trust-domain", in.cfg.TrustDomain,
		"--cert-dir", CertMountPath,
		"--inbound-port", strconv.Itoa(InboundPort),
		"--outbound-port", strconv.Itoa(OutboundPort),
		"--admin-port", strconv.Itoa(AdminPort),
		"--health-port", strconv.Itoa(HealthPort),
		"--prometheus-port", strconv.Itoa(PromPort),
	}
	mounts := []corev1.VolumeMount{{Name: CertVolume, MountPath: CertMountPath, ReadOnly: in.cfg.Mode == SecretMode}}
	if in.cfg.Mode == CSRMode {
		args = append(args, "--token-file", TokenFile, "--ca-root", RootCAMountPath+"/root-cert.pem")
		mounts = append(mounts,
			corev1.VolumeMount{Name: TokenVolume, MountPath: TokenMountPath, ReadOnly: true},
			corev1.VolumeMount{Name: RootCAVolume, MountPath: RootCAMountPath, ReadOnly: true})
	} else {
		// Secret mode: the CA controller writes the files; the sidecar only
		// reads and reloads them.
		args = append(args, "--cert-source", "files")
	}
	env := []corev1.EnvVar{
		fieldEnv("POD_NAME", "metadata.name"),
		fieldEnv("POD_NAMESPACE", "metadata.namespace"),
		fieldEnv("SERVICE_ACCOUNT", "spec.serviceAccountName"),
		fieldEnv("INSTANCE_IP", "status.podIP"),
	}
	if probers != "" {
		env = append(env, corev1.EnvVar{Name: EnvAppProbers, Value: probers})
	}
	return corev1.Container{
		Name:            SidecarName,
		Image:           in.cfg.Image,
		ImagePullPolicy: in.cfg.ImagePullPolicy,
		Command:         []string{"meshd"},
		Args:            args,
		Env:             env,
		Ports: []corev1.ContainerPort{
			{Name: "http-envoy-prom", ContainerPort: PromPort, Protocol: corev1.ProtocolTCP},
			{Name: "health", ContainerPort: HealthPort, Protocol: corev1.ProtocolTCP},
		},
		ReadinessProbe: &corev1.Probe{
			ProbeHandler: corev1.ProbeHandler{HTTPGet: &corev1.HTTPGetAction{
				Path: "/healthz/ready", Port: intstr.FromInt32(HealthPort),
			}},
			PeriodSeconds:    2,
			FailureThreshold: 30,
		},
		SecurityContext: &corev1.SecurityContext{
			RunAsUser:                &uid,
			RunAsGroup:               &uid,
			RunAsNonRoot:             &t,
			Privileged:               &f,
			AllowPrivilegeEscalation: &f,
			ReadOnlyRootFilesystem:   &t,
			Capabilities:             &corev1.Capabilities{Drop: []corev1.Capability{"ALL"}},
		},
		VolumeMounts: mounts,
	}
}

func fieldEnv(name, path string) corev1.EnvVar {
	return corev1.EnvVar{Name: name, ValueFrom: &corev1.EnvVarSource{
		FieldRef: &corev1.ObjectFieldSelector{APIVersion: "v1", FieldPath: path},
	}}
}

func (in *Injector) volumes(sa string) []corev1.Volume {
	if in.cfg.Mode == SecretMode {
		opt := true
		return []corev1.Volume{{
			Name: CertVolume,
			VolumeSource: corev1.VolumeSource{Secret: &corev1.SecretVolumeSource{
				SecretName: SecretName(sa),
				// Optional, as in Istio 0.8: the pod starts before the CA has
				// written the Secret, and the sidecar waits for the files.
				Optional: &opt,
			}},
		}}
	}
	exp := in.cfg.TokenExpirationSeconds
	opt := true
	return []corev1.Volume{
		// The sidecar writes its own key and certificate here.
		{Name: CertVolume, VolumeSource: corev1.VolumeSource{EmptyDir: &corev1.EmptyDirVolumeSource{Medium: corev1.StorageMediumMemory}}},
		{Name: TokenVolume, VolumeSource: corev1.VolumeSource{Projected: &corev1.ProjectedVolumeSource{
			Sources: []corev1.VolumeProjection{{ServiceAccountToken: &corev1.ServiceAccountTokenProjection{
				Audience: TokenAudience, ExpirationSeconds: &exp, Path: "istio-token",
			}}},
		}}},
		{Name: RootCAVolume, VolumeSource: corev1.VolumeSource{ConfigMap: &corev1.ConfigMapVolumeSource{
			LocalObjectReference: corev1.LocalObjectReference{Name: RootCertConfigMap},
			Optional:             &opt,
		}}},
	}
}

// rewriteProbes points every HTTP liveness/readiness/startup probe of the app
// containers at the sidecar's health port (/app-health/<container>/<kind>)
// and returns the originals as JSON keyed by the new path. Under STRICT mTLS
// kubelet has no client certificate, so a probe to the app port would fail
// and kill a healthy pod (Istio #4429); the health port is excluded from
// capture and the sidecar forwards the probe to the app over localhost.
// TCP and exec probes are left alone: exec runs inside the container, and a
// TCP probe only needs the sidecar's listener to accept.
func rewriteProbes(spec *corev1.PodSpec) (string, error) {
	probers := map[string]AppProbe{}
	for i := range spec.Containers {
		c := &spec.Containers[i]
		for _, p := range []struct {
			kind  string
			probe *corev1.Probe
		}{{"livez", c.LivenessProbe}, {"readyz", c.ReadinessProbe}, {"startupz", c.StartupProbe}} {
			if p.probe == nil || p.probe.HTTPGet == nil {
				continue
			}
			h := p.probe.HTTPGet
			port, err := resolvePort(c, h.Port)
			if err != nil {
				return "", fmt.Errorf("kube: container %q %s probe: %w", c.Name, p.kind, err)
			}
			ap := AppProbe{Port: port, Path: h.Path, Scheme: h.Scheme, Host: h.Host}
			for _, hh := range h.HTTPHeaders {
				if ap.Header == nil {
					ap.Header = map[string]string{}
				}
				ap.Header[hh.Name] = hh.Value
			}
			path := "/app-health/" + c.Name + "/" + p.kind
			probers[path] = ap
			p.probe.HTTPGet = &corev1.HTTPGetAction{Path: path, Port: intstr.FromInt32(HealthPort), Scheme: corev1.URISchemeHTTP}
		}
	}
	if len(probers) == 0 {
		return "", nil
	}
	// encoding/json sorts map keys, so the annotation is deterministic.
	b, err := json.Marshal(probers)
	return string(b), err
}

func resolvePort(c *corev1.Container, p intstr.IntOrString) (int32, error) {
	if p.Type == intstr.Int {
		return p.IntVal, nil
	}
	for _, cp := range c.Ports {
		if cp.Name == p.StrVal {
			return cp.ContainerPort, nil
		}
	}
	return 0, fmt.Errorf("named port %q is not a port of the container", p.StrVal)
}

// ErrNotYAML is returned by InjectYAML for a document that is not a
// Kubernetes object.
var ErrNotYAML = errors.New("kube: document is not a Kubernetes object (no kind)")

// podSpecPaths says where each injectable kind keeps its pod template.
var podSpecPaths = map[string][]string{
	"Pod":                   {},
	"Deployment":            {"spec", "template"},
	"StatefulSet":           {"spec", "template"},
	"DaemonSet":             {"spec", "template"},
	"ReplicaSet":            {"spec", "template"},
	"ReplicationController": {"spec", "template"},
	"Job":                   {"spec", "template"},
	"CronJob":               {"spec", "jobTemplate", "spec", "template"},
}

// InjectYAML injects every workload in a multi-document YAML stream (the
// input of `meshctl kube-inject -f`). Documents of other kinds, and
// workloads that opt out, are written back unchanged, byte for byte.
func (in *Injector) InjectYAML(src []byte) ([]byte, error) {
	var out bytes.Buffer
	for i, doc := range splitYAML(src) {
		if i > 0 {
			out.WriteString("---\n")
		}
		res, err := in.injectDoc(doc)
		if err != nil {
			return nil, fmt.Errorf("document %d: %w", i+1, err)
		}
		out.Write(res)
	}
	return out.Bytes(), nil
}

func (in *Injector) injectDoc(doc []byte) ([]byte, error) {
	if len(bytes.TrimSpace(stripComments(doc))) == 0 {
		return doc, nil
	}
	var obj map[string]any
	if err := yaml.Unmarshal(doc, &obj); err != nil {
		return nil, fmt.Errorf("kube: parse YAML: %w", err)
	}
	kind, _ := obj["kind"].(string)
	if kind == "" {
		return nil, ErrNotYAML
	}
	if kind == "List" {
		items, _ := obj["items"].([]any)
		for i, it := range items {
			m, ok := it.(map[string]any)
			if !ok {
				continue
			}
			if _, err := in.injectObject(m); err != nil {
				return nil, fmt.Errorf("item %d: %w", i, err)
			}
		}
		return yaml.Marshal(obj)
	}
	changed, err := in.injectObject(obj)
	if err != nil {
		return nil, err
	}
	if !changed {
		return doc, nil
	}
	return yaml.Marshal(obj)
}

// injectObject injects one decoded object in place; it reports whether it
// changed anything.
func (in *Injector) injectObject(obj map[string]any) (bool, error) {
	kind, _ := obj["kind"].(string)
	path, ok := podSpecPaths[kind]
	if !ok {
		return false, nil
	}
	tmpl := obj
	for _, k := range path {
		next, ok := tmpl[k].(map[string]any)
		if !ok {
			return false, fmt.Errorf("kube: %s has no %s", kind, strings.Join(path, "."))
		}
		tmpl = next
	}
	meta, _ := tmpl["metadata"].(map[string]any)
	if meta == nil {
		meta = map[string]any{}
	}
	ann := map[string]string{}
	if a, ok := meta["annotations"].(map[string]any); ok {
		for k, v := range a {
			s, _ := v.(string)
			ann[k] = s
		}
	}
	specMap, _ := tmpl["spec"].(map[string]any)
	var spec corev1.PodSpec
	if err := runtime.DefaultUnstructuredConverter.FromUnstructured(specMap, &spec); err != nil {
		return false, fmt.Errorf("kube: %s pod spec: %w", kind, err)
	}
	if Skip(ann, &spec) != "" {
		return false, nil
	}
	ann, err := in.InjectPod(ann, &spec)
	if err != nil {
		return false, err
	}
	newSpec, err := runtime.DefaultUnstructuredConverter.ToUnstructured(&spec)
	if err != nil {
		return false, err
	}
	tmpl["spec"] = newSpec
	a := map[string]any{}
	for k, v := range ann {
		a[k] = v
	}
	meta["annotations"] = a
	tmpl["metadata"] = meta
	return true, nil
}

// splitYAML splits a stream on "---" document separators, keeping each
// document's bytes as they were.
func splitYAML(src []byte) [][]byte {
	var docs [][]byte
	var cur bytes.Buffer
	for _, line := range bytes.SplitAfter(src, []byte("\n")) {
		trimmed := bytes.TrimRight(line, " \t\r\n")
		if bytes.Equal(trimmed, []byte("---")) || bytes.HasPrefix(trimmed, []byte("--- ")) {
			docs = append(docs, append([]byte(nil), cur.Bytes()...))
			cur.Reset()
			continue
		}
		cur.Write(line)
	}
	if cur.Len() > 0 || len(docs) == 0 {
		docs = append(docs, append([]byte(nil), cur.Bytes()...))
	}
	// A leading "---" makes an empty first document; drop it.
	if len(docs) > 1 && len(bytes.TrimSpace(docs[0])) == 0 {
		docs = docs[1:]
	}
	return docs
}

func stripComments(doc []byte) []byte {
	var out bytes.Buffer
	for _, line := range bytes.Split(doc, []byte("\n")) {
		if t := bytes.TrimSpace(line); len(t) > 0 && t[0] != '#' {
			out.Write(line)
			out.WriteByte('\n')
		}
	}
	return out.Bytes()
}

// sortedKeys is used where map order would make output unstable.
func sortedKeys[V any](m map[string]V) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	return keys
}
