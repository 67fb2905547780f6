package kube

import (
	"context"
	"errors"
	"log/slog"
	"sort"
	"strings"
	"time"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes"
	corelisters "k8s.io/client-go/listers/core/v1"
	discoverylisters "k8s.io/client-go/listers/discovery/v1"
	"k8s.io/client-go/tools/cache"

	"github.com/meshauth/meshauth/internal/identity"
	"github.com/meshauth/meshauth/internal/registry"
)

// Service annotations of the seed's era (Istio 0.8) that add identities a
// service may be served by, beyond the service accounts of its pods: for
// workloads outside Kubernetes (VMs) or during a migration.
const (
	// AnnotationKubeServiceAccounts lists ServiceAccount names in the
	// service's namespace, comma-separated.
	AnnotationKubeServiceAccounts = "alpha.istio.io/kubernetes-serviceaccounts"
	// AnnotationCanonicalServiceAccounts lists full identities
	// (spiffe://... or the seed's "name@domain" form is not supported).
	AnnotationCanonicalServiceAccounts = "alpha.istio.io/canonical-serviceaccounts"
)

// endpointSliceLabel is a synthetic workload label that ties pods listed in
// an EndpointSlice to a selector-less Service, so the registry's selector
// index serves both kinds of Service.
const endpointSliceLabel = "meshauth.io/endpointslice-of"

// Registry is the part of *registry.Registry the source writes to.
type Registry interface {
	Sync(source string, services []*registry.Service, workloads []*registry.Workload)
}

// RegistrySourceConfig configures the registry source.
type RegistrySourceConfig struct {
	Client   kubernetes.Interface
	Registry Registry
	// TrustDomain for identities from annotations (default cluster.local).
	TrustDomain string
	// Debounce collects bursts of changes into one sync (default 100ms).
	Debounce time.Duration
	Log      *slog.Logger
}

// RegistrySource fills the registry from Services, EndpointSlices and Pods:
// service -> pods (by selector, or by EndpointSlice for services without
// one) -> service accounts. That mapping is secure naming: a client sidecar
// accepts only the identities listed for the service it called.
type RegistrySource struct {
	cfg     RegistrySourceConfig
	log     *slog.Logger
	factory informers.SharedInformerFactory
	svcs    corelisters.ServiceLister
	pods    corelisters.PodLister
	slices  discoverylisters.EndpointSliceLister
	synced  []cache.InformerSynced
	kick    chan struct{}
}

// NewRegistrySource fills cfg's defaults and sets up the informers.
func NewRegistrySource(cfg RegistrySourceConfig) (*RegistrySource, error) {
	if cfg.Client == nil || cfg.Registry == nil {
		return nil, errors.New("kube: registry source needs Client and Registry")
	}
	if cfg.TrustDomain == "" {
		cfg.TrustDomain = identity.DefaultTrustDomain
	}
	if cfg.Debounce == 0 {
		cfg.Debounce = 100 * time.Millisecond
	}
	if cfg.Log == nil {
		cfg.Log = slog.Default()
	}
	s := &RegistrySource{cfg: cfg, log: cfg.Log.With("component", "kube-registry"), kick: make(chan struct{}, 1)}
	s.factory = informers.NewSharedInformerFactory(cfg.Client, 10*time.Minute)
	h := cache.ResourceEventHandlerFuncs{
		AddFunc:    func(any) { s.changed() },
		UpdateFunc: func(any, any) { s.changed() },
		DeleteFunc: func(any) { s.changed() },
	}
	svc := s.factory.Core().V1().Services()
	pod := s.factory.Core().V1().Pods()
	es := s.factory.Discovery().V1().EndpointSlices()
	for _, inf := range []cache.SharedIndexInformer{svc.Informer(), pod.Informer(), es.Informer()} {
		_, _ = inf.AddEventHandler(h)
		s.synced = append(s.synced, inf.HasSynced)
	}
	s.svcs, s.pods, s.slices = svc.Lister(), pod.Lister(), es.Lister()
	return s, nil
}

// PodGone reports whether the pod a sidecar named itself after (its
// instance, in the namespace of its SPIFFE ID) no longer exists, for
// ca.CA.SetSidecarGone: a rotation does not wait for a sidecar whose pod
// was deleted. False until the informers have synced, or when unsure.
func (s *RegistrySource) PodGone(spiffeID, instance string) bool {
	id, err := identity.Parse(spiffeID)
	if err != nil || instance == "" {
		return false
	}
	for _, ok := range s.synced {
		if !ok() {
			return false
		}
	}
	_, err = s.pods.Pods(id.Namespace).Get(instance)
	return apierrors.IsNotFound(err)
}

func (s *RegistrySource) changed() {
	select {
	case s.kick <- struct{}{}:
	default:
	}
}

// Run syncs the registry until ctx is done.
func (s *RegistrySource) Run(ctx context.Context) error {
	s.factory.Start(ctx.Done())
	if !cache.WaitForCacheSync(ctx.Done(), s.synced...) {
		return ctx.Err()
	}
	s.sync()
	for {
		select {
		case <-ctx.Done():
			s.factory.Shutdown()
			return nil
		case <-s.kick:
			select {
			case <-ctx.Done():
				continue
			case <-time.After(s.cfg.Debounce):
			}
			s.sync()
		}
	}
}

func (s *RegistrySource) sync() {
	svcs, err := s.svcs.List(labels.Everything())
	if err != nil {
		s.log.Error("list services", "error", err)
		return
	}
	pods, err := s.pods.List(labels.Everything())
	if err != nil {
		s.log.Error("list pods", "error", err)
		return
	}
	slices, err := s.slices.List(labels.Everything())
	if err != nil {
		s.log.Error("list endpointslices", "error", err)
		return
	}
	services, workloads := Convert(svcs, pods, slices, s.cfg.TrustDomain)
	s.cfg.Registry.Sync(registry.SourceKube, services, workloads)
}

// Convert maps Kubernetes objects to registry entries. It is pure, so the
// mapping is unit-tested apart from the informers.
func Convert(svcs []*corev1.Service, pods []*corev1.Pod, slices []*discoveryv1.EndpointSlice, trustDomain string) ([]*registry.Service, []*registry.Workload) {
	// Pods named by an EndpointSlice of a selector-less Service get a
	// synthetic label that the Service selects.
	selectorless := map[string]bool{}
	for _, svc := range svcs {
		if len(svc.Spec.Selector) == 0 {
			selectorless[svc.Namespace+"/"+svc.Name] = true
		}
	}
	extra := map[string][]string{} // pod key -> service names
	for _, es := range slices {
		svcName := es.Labels[discoveryv1.LabelServiceName]
		if !selectorless[es.Namespace+"/"+svcName] {
			continue
		}
		for _, ep := range es.Endpoints {
			if ep.TargetRef != nil && ep.TargetRef.Kind == "Pod" {
				k := es.Namespace + "/" + ep.TargetRef.Name
				extra[k] = append(extra[k], svcName)
			}
		}
	}

	var ws []*registry.Workload
	podsByNS := map[string][]*corev1.Pod{}
	for _, p := range pods {
		if p.Status.Phase == corev1.PodSucceeded || p.Status.Phase == corev1.PodFailed || p.DeletionTimestamp != nil {
			continue
		}
		podsByNS[p.Namespace] = append(podsByNS[p.Namespace], p)
		sa := p.Spec.ServiceAccountName
		if sa == "" {
			sa = "default"
		}
		lbl := map[string]string{}
		for k, v := range p.Labels {
			lbl[k] = v
		}
		for _, name := range extra[p.Namespace+"/"+p.Name] {
			// One synthetic label per service; the value carries the name.
			lbl[endpointSliceLabel+"."+name] = "true"
		}
		w := &registry.Workload{
			Name: p.Name, Namespace: p.Namespace, ServiceAccount: sa, Labels: lbl,
			Address: p.Status.PodIP, Sidecar: hasSidecar(p),
		}
		for _, c := range p.Spec.Containers {
			if c.Name == SidecarName {
				continue
			}
			for _, cp := range c.Ports {
				if cp.Protocol != "" && cp.Protocol != corev1.ProtocolTCP {
					continue
				}
				w.Ports = append(w.Ports, registry.WorkloadPort{Name: cp.Name, Number: uint32(cp.ContainerPort), Protocol: protocolOf(cp.Name, nil)})
			}
		}
		ws = append(ws, w)
	}

	var ss []*registry.Service
	for _, svc := range svcs {
		if svc.Spec.Type == corev1.ServiceTypeExternalName {
			continue
		}
		r := &registry.Service{Name: svc.Name, Namespace: svc.Namespace, Selector: svc.Spec.Selector}
		if len(r.Selector) == 0 {
			r.Selector = map[string]string{endpointSliceLabel + "." + svc.Name: "true"}
		}
		if ip := svc.Spec.ClusterIP; ip != "" && ip != corev1.ClusterIPNone {
			r.Address = ip
		}
		for _, p := range svc.Spec.Ports {
			if p.Protocol != "" && p.Protocol != corev1.ProtocolTCP {
				continue
			}
			r.Ports = append(r.Ports, registry.Port{
				Name: p.Name, Number: uint32(p.Port), Protocol: protocolOf(p.Name, p.AppProtocol),
				TargetPort: targetPort(p, podsByNS[svc.Namespace], svc.Spec.Selector),
			})
		}
		r.ServiceAccounts = annotatedIdentities(svc, trustDomain)
		ss = append(ss, r)
	}
	sort.Slice(ss, func(i, j int) bool { return ss[i].Key() < ss[j].Key() })
	sort.Slice(ws, func(i, j int) bool { return ws[i].Key() < ws[j].Key() })
	return ss, ws
}

// annotatedIdentities reads the seed's service-account annotations.
func annotatedIdentities(svc *corev1.Service, td string) []string {
	var out []string
	for _, sa := range splitList(svc.Annotations[AnnotationKubeServiceAccounts]) {
		if id, err := identity.New(td, svc.Namespace, sa); err == nil {
			out = append(out, id.String())
		}
	}
	for _, v := range splitList(svc.Annotations[AnnotationCanonicalServiceAccounts]) {
		if id, err := identity.Parse(v); err == nil {
			out = append(out, id.String())
		}
	}
	return out
}

func splitList(s string) []string {
	var out []string
	for _, f := range strings.Split(s, ",") {
		if f = strings.TrimSpace(f); f != "" {
			out = append(out, f)
		}
	}
	return out
}

func hasSidecar(p *corev1.Pod) bool {
	for _, c := range p.Spec.Containers {
		if c.Name == SidecarName {
			return true
		}
	}
	return false
}

// protocolOf follows Istio's port naming convention ("http", "http-web",
// "grpc", "tcp-db") and appProtocol; unnamed ports are TCP.
func protocolOf(name string, appProtocol *string) string {
	if appProtocol != nil && *appProtocol != "" {
		return strings.ToUpper(*appProtocol)
	}
	prefix, _, _ := strings.Cut(strings.ToLower(name), "-")
	switch prefix {
	case "http", "http2", "grpc", "https", "tls", "tcp", "mongo", "redis", "mysql":
		return strings.ToUpper(prefix)
	}
	return "TCP"
}

// targetPort resolves a service port's targetPort to a number; a named
// target port is looked up in the first selected pod that declares it.
func targetPort(p corev1.ServicePort, pods []*corev1.Pod, selector map[string]string) uint32 {
	switch {
	case p.TargetPort.IntValue() > 0:
		return uint32(p.TargetPort.IntValue())
	case p.TargetPort.StrVal == "":
		return uint32(p.Port)
	}
	for _, pod := range pods {
		if !registry.Selects(selector, pod.Labels) {
			continue
		}
		for _, c := range pod.Spec.Containers {
			for _, cp := range c.Ports {
				if cp.Name == p.TargetPort.StrVal {
					return uint32(cp.ContainerPort)
				}
			}
		}
	}
	return uint32(p.Port)
}
