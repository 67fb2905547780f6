// Package registry holds the mesh's services and workloads: which workloads
// (and so which service accounts) stand behind each service. It is the
// source of secure naming: a client accepts a server only if the server's
// identity is one of the service accounts the registry lists for the
// service it called.
//
// Entries come from config files (the local mesh's Service and Workload
// kinds), from sidecars that register when they connect, and from
// Kubernetes. The registry is indexed (labels -> workloads, selectors ->
// services, service -> endpoints) so that a sidecar's effective policy is
// computed without scanning the whole mesh; endpoint sets are maintained
// incrementally on every change.
package registry

import (
	"errors"
	"fmt"
	"maps"
	"slices"
	"sort"
	"strings"
	"sync"

	"github.com/meshauth/meshauth/internal/config"
)

// Sources of entries. Each source replaces only its own entries.
const (
	SourceConfig  = "config"
	SourceSidecar = "sidecar"
	SourceKube    = "kube"
)

// Service is one service. Treat it as immutable: the registry replaces a
// Service, never modifies it, so readers need no lock.
type Service struct {
	Name      string            `json:"name"`
	Namespace string            `json:"namespace"`
	Ports     []Port            `json:"ports"`
	Selector  map[string]string `json:"selector,omitempty"`
	Address   string            `json:"address,omitempty"`
	Source    string            `json:"source"`
	// ServiceAccounts are extra SPIFFE IDs allowed to serve the service
	// besides its declared workloads' (the Service's spec.serviceAccounts
	// and spec.subjectAltNames, and the seed's
	// alpha.istio.io/*-serviceaccounts annotations, also read by
	// internal/kube). They are also the identities whose sidecars may
	// register themselves as endpoints of the service (internal/policy/engine).
	ServiceAccounts []string `json:"serviceAccounts,omitempty"`
}

// Port is one service port.
type Port struct {
	Name       string `json:"name,omitempty"`
	Number     uint32 `json:"number"`
	Protocol   string `json:"protocol,omitempty"`
	TargetPort uint32 `json:"targetPort"`
}

// Key is namespace/name.
func (s *Service) Key() string { return s.Namespace + "/" + s.Name }

// FQDN is name.namespace.svc.cluster.local.
func (s *Service) FQDN() string { return s.Name + "." + s.Namespace + ".svc.cluster.local" }

// Port returns the service port with the given number.
func (s *Service) Port(n uint32) (Port, bool) {
	for _, p := range s.Ports {
		if p.Number == n {
			return p, true
		}
	}
	return Port{}, false
}

// Workload is one workload instance (a pod, a process). Immutable, like
// Service.
type Workload struct {
	Name           string            `json:"name"`
	Namespace      string            `json:"namespace"`
	ServiceAccount string            `json:"serviceAccount"`
	Labels         map[string]string `json:"labels,omitempty"`
	Address        string            `json:"address"`
	Ports          []WorkloadPort    `json:"ports,omitempty"`
	Sidecar        bool              `json:"sidecar"`
	Source         string            `json:"source"`
}

// WorkloadPort is one application port and, in explicit mode, the port the
// workload's sidecar serves it on.
type WorkloadPort struct {
	Name        string `json:"name,omitempty"`
	Number      uint32 `json:"number"`
	Protocol    string `json:"protocol,omitempty"`
	SidecarPort uint32 `json:"sidecarPort,omitempty"`
}

// Key is namespace/name.
func (w *Workload) Key() string { return w.Namespace + "/" + w.Name }

// Selects reports whether a selector matches the labels. An empty selector
// selects nothing, as in Kubernetes.
func Selects(selector, labels map[string]string) bool {
	if len(selector) == 0 {
		return false
	}
	for k, v := range selector {
		if lv, ok := labels[k]; !ok || lv != v {
			return false
		}
	}
	return true
}

// Registry is the indexed, concurrency-safe set of services and workloads.
// The zero value is not usable; call New.
type Registry struct {
	mu        sync.RWMutex
	services  map[string]*Service
	workloads map[string]*Workload
	// byNS lists service keys per namespace, kept sorted lazily.
	byNS map[string]map[string]*Service
	// labelIdx: namespace -> "k=v" -> workload keys carrying that label.
	labelIdx map[string]map[string]map[string]struct{}
	// selIdx: namespace -> "k=v" -> service keys whose selector has it.
	selIdx map[string]map[string]map[string]struct{}
	// endpoints: service key -> workload key -> workload.
	endpoints map[string]map[string]*Workload
	// memberOf: workload key -> service keys selecting it.
	memberOf map[string]map[string]struct{}
	// gen counts changes per service (its spec or its endpoint set), so
	// that computed results per service can be cached and invalidated.
	gen     map[string]uint64
	version uint64
	// sorted caches Services() until a service changes (workload churn,
	// the common case, leaves it alone).
	sorted []*Service
	notify chan struct{}
}

// New returns an empty registry.
func New() *Registry {
	return &Registry{
		services:  map[string]*Service{},
		workloads: map[string]*Workload{},
		byNS:      map[string]map[string]*Service{},
		labelIdx:  map[string]map[string]map[string]struct{}{},
		selIdx:    map[string]map[string]map[string]struct{}{},
		endpoints: map[string]map[string]*Workload{},
		memberOf:  map[string]map[string]struct{}{},
		gen:       map[string]uint64{},
		notify:    make(chan struct{}),
	}
}

// Changed returns a channel that is closed at the next change. Get a new
// channel after each wake-up.
func (r *Registry) Changed() <-chan struct{} {
	r.mu.RLock()
	defer r.mu.RUnlock()
	return r.notify
}

// Version increases on every change.
func (r *Registry) Version() uint64 {
	r.mu.RLock()
	defer r.mu.RUnlock()
	return r.version
}

// changed must be called with r.mu held for writing.
func (r *Registry) changed() {
	r.version++
	close(r.notify)
	r.notify = make(chan struct{})
}

func addIdx(idx map[string]map[string]map[string]struct{}, ns, kv, key string) {
	m := idx[ns]
	if m == nil {
		m = map[string]map[string]struct{}{}
		idx[ns] = m
	}
	s := m[kv]
	if s == nil {
		s = map[string]struct{}{}
		m[kv] = s
	}
	s[key] = struct{}{}
}

func delIdx(idx map[string]map[string]map[string]struct{}, ns, kv, key string) {
	if s := idx[ns][kv]; s != nil {
		delete(s, key)
		if len(s) == 0 {
			delete(idx[ns], kv)
		}
	}
}

// PutService adds or replaces a service and recomputes its endpoints from
// the label index.
func (r *Registry) PutService(s *Service) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.putService(s)
	r.changed()
}

func (r *Registry) putService(s *Service) {
	key := s.Key()
	r.deleteService(key)
	r.sorted = nil
	r.services[key] = s
	if r.byNS[s.Namespace] == nil {
		r.byNS[s.Namespace] = map[string]*Service{}
	}
	r.byNS[s.Namespace][key] = s
	for k, v := range s.Selector {
		addIdx(r.selIdx, s.Namespace, k+"="+v, key)
	}
	eps := map[string]*Workload{}
	// Walk the smallest label set among the selector's pairs.
	var smallest map[string]struct{}
	first := true
	for k, v := range s.Selector {
		set := r.labelIdx[s.Namespace][k+"="+v]
		if first || len(set) < len(smallest) {
			smallest, first = set, false
		}
	}
	for wk := range smallest {
		w := r.workloads[wk]
		if Selects(s.Selector, w.Labels) {
			eps[wk] = w
			if r.memberOf[wk] == nil {
				r.memberOf[wk] = map[string]struct{}{}
			}
			r.memberOf[wk][key] = struct{}{}
		}
	}
	r.endpoints[key] = eps
	r.gen[key]++
}

// DeleteService removes a service.
func (r *Registry) DeleteService(namespace, name string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.deleteService(namespace + "/" + name) {
		r.changed()
	}
}

func (r *Registry) deleteService(key string) bool {
	old, ok := r.services[key]
	if !ok {
		return false
	}
	for k, v := range old.Selector {
		delIdx(r.selIdx, old.Namespace, k+"="+v, key)
	}
	for wk := range r.endpoints[key] {
		delete(r.memberOf[wk], key)
	}
	delete(r.endpoints, key)
	delete(r.services, key)
	r.sorted = nil
	delete(r.byNS[old.Namespace], key)
	r.gen[key]++
	return true
}

// ErrIdentityMismatch is returned when a registration claims a workload
// that the registry knows under another service account.
var ErrIdentityMismatch = errors.New("registry: workload is registered under another service account")

// PutWorkload adds or replaces a workload and updates the endpoint sets of
// the services that select it (old and new).
func (r *Registry) PutWorkload(w *Workload) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.putWorkload(w)
	r.changed()
}

func (r *Registry) putWorkload(w *Workload) {
	key := w.Key()
	r.deleteWorkload(key)
	r.workloads[key] = w
	cands := map[string]struct{}{}
	for k, v := range w.Labels {
		kv := k + "=" + v
		addIdx(r.labelIdx, w.Namespace, kv, key)
		for sk := range r.selIdx[w.Namespace][kv] {
			cands[sk] = struct{}{}
		}
	}
	for sk := range cands {
		s := r.services[sk]
		if Selects(s.Selector, w.Labels) {
			r.endpoints[sk][key] = w
			if r.memberOf[key] == nil {
				r.memberOf[key] = map[string]struct{}{}
			}
			r.memberOf[key][sk] = struct{}{}
			r.gen[sk]++
		}
	}
}

// DeleteWorkload removes a workload.
func (r *Registry) DeleteWorkload(namespace, name string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.deleteWorkload(namespace + "/" + name) {
		r.changed()
	}
}

func (r *Registry) deleteWorkload(key string) bool {
	old, ok := r.workloads[key]
	if !ok {
		return false
	}
	for k, v := range old.Labels {
		delIdx(r.labelIdx, old.Namespace, k+"="+v, key)
	}
	for sk := range r.memberOf[key] {
		delete(r.endpoints[sk], key)
		r.gen[sk]++
	}
	delete(r.memberOf, key)
	delete(r.workloads, key)
	return true
}

// Register records a sidecar that connected as namespace/serviceAccount
// (from its certificate) and calls itself name. A workload the config
// already declares must have the same service account; the config's entry
// is kept and only marked as having a live sidecar, so that a sidecar cannot
// rewrite what an operator declared.
func (r *Registry) Register(w *Workload) (*Workload, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	key := w.Key()
	if old, ok := r.workloads[key]; ok {
		if old.ServiceAccount != w.ServiceAccount {
			return nil, fmt.Errorf("%w: %s is declared with service account %q, the sidecar's certificate says %q",
				ErrIdentityMismatch, key, old.ServiceAccount, w.ServiceAccount)
		}
		if old.Source != SourceSidecar {
			return old, nil
		}
	}
	w.Source = SourceSidecar
	w.Sidecar = true
	r.putWorkload(w)
	r.changed()
	return w, nil
}

// Unregister removes a workload a sidecar registered (not a declared one).
func (r *Registry) Unregister(namespace, name string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if w, ok := r.workloads[namespace+"/"+name]; ok && w.Source == SourceSidecar {
		r.deleteWorkload(w.Key())
		r.changed()
	}
}

// UnregisterIf removes w only if it is still the registered entry: when a
// sidecar reconnects before its old stream is torn down, the old stream's
// cleanup must not remove the new registration.
func (r *Registry) UnregisterIf(w *Workload) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if cur, ok := r.workloads[w.Key()]; ok && cur == w && cur.Source == SourceSidecar {
		r.deleteWorkload(w.Key())
		r.changed()
	}
}

// Sync makes the registry's entries of one source exactly the given ones:
// entries of that source not listed are removed; others are left alone.
// One notification covers the whole batch.
func (r *Registry) Sync(source string, services []*Service, workloads []*Workload) {
	r.mu.Lock()
	defer r.mu.Unlock()
	keepS := map[string]bool{}
	for _, s := range services {
		s.Source = source
		keepS[s.Key()] = true
		if old := r.services[s.Key()]; old == nil || !sameService(old, s) {
			r.putService(s)
		}
	}
	for k, s := range r.services {
		if s.Source == source && !keepS[k] {
			r.deleteService(k)
		}
	}
	keepW := map[string]bool{}
	for _, w := range workloads {
		w.Source = source
		keepW[w.Key()] = true
		if old := r.workloads[w.Key()]; old == nil || !sameWorkload(old, w) {
			r.putWorkload(w)
		}
	}
	for k, w := range r.workloads {
		if w.Source == source && !keepW[k] {
			r.deleteWorkload(k)
		}
	}
	r.changed()
}

func sameService(a, b *Service) bool {
	return a.Name == b.Name && a.Namespace == b.Namespace && a.Address == b.Address && a.Source == b.Source &&
		slices.Equal(a.Ports, b.Ports) && maps.Equal(a.Selector, b.Selector) &&
		slices.Equal(a.ServiceAccounts, b.ServiceAccounts)
}

func sameWorkload(a, b *Workload) bool {
	return a.Name == b.Name && a.Namespace == b.Namespace && a.ServiceAccount == b.ServiceAccount &&
		a.Address == b.Address && a.Sidecar == b.Sidecar && a.Source == b.Source &&
		slices.Equal(a.Ports, b.Ports) && maps.Equal(a.Labels, b.Labels)
}

// FromConfig converts the config's Service and Workload objects.
func FromConfig(c *config.Config) ([]*Service, []*Workload) {
	var ss []*Service
	var ws []*Workload
	if c == nil {
		return nil, nil
	}
	for _, s := range c.Services {
		svc := &Service{Name: s.Metadata.Name, Namespace: s.Metadata.Namespace, Selector: s.Spec.Selector, Address: s.Spec.Address,
			ServiceAccounts: annotatedIdentities(s, c.TrustDomain())}
		for _, p := range s.Spec.Ports {
			tp := p.TargetPort
			if tp == 0 {
				tp = p.Number
			}
			svc.Ports = append(svc.Ports, Port{Name: p.Name, Number: p.Number, Protocol: strings.ToUpper(p.Protocol), TargetPort: tp})
		}
		ss = append(ss, svc)
	}
	for _, w := range c.Workloads {
		sa := w.Spec.ServiceAccount
		if sa == "" {
			sa = "default"
		}
		wl := &Workload{Name: w.Metadata.Name, Namespace: w.Metadata.Namespace, ServiceAccount: sa,
			Labels: w.Metadata.Labels, Address: w.Spec.Address, Sidecar: w.Spec.HasSidecar()}
		for _, p := range w.Spec.Ports {
			wl.Ports = append(wl.Ports, WorkloadPort{Name: p.Name, Number: p.Number, Protocol: strings.ToUpper(p.Protocol), SidecarPort: p.SidecarPort})
		}
		ws = append(ws, wl)
	}
	return ss, ws
}

// Annotations on a Service that add server identities (secure naming), as
// in Istio: service account names of the service's namespace, and full
// SPIFFE IDs (VMs, workloads the registry cannot see).
const (
	AnnotationServiceAccounts   = "alpha.istio.io/kubernetes-serviceaccounts"
	AnnotationCanonicalAccounts = "alpha.istio.io/canonical-serviceaccounts"
)

// annotatedIdentities returns the SPIFFE IDs a config Service allows
// besides its declared workloads': spec.serviceAccounts (names in its
// namespace), spec.subjectAltNames, and the Istio annotations; sorted,
// without duplicates.
func annotatedIdentities(s *config.Service, td string) []string {
	var out []string
	sas := append(slices.Clone(s.Spec.ServiceAccounts), splitList(s.Metadata.Annotations[AnnotationServiceAccounts])...)
	for _, sa := range sas {
		out = append(out, "spiffe://"+td+"/ns/"+s.Metadata.Namespace+"/sa/"+sa)
	}
	out = append(out, s.Spec.SubjectAltNames...)
	out = append(out, splitList(s.Metadata.Annotations[AnnotationCanonicalAccounts])...)
	if len(out) == 0 {
		return nil
	}
	slices.Sort(out)
	return slices.Compact(out)
}

func splitList(v string) []string {
	var out []string
	for _, f := range strings.Split(v, ",") {
		if f = strings.TrimSpace(f); f != "" {
			out = append(out, f)
		}
	}
	return out
}

// Service returns one service, or nil.
func (r *Registry) Service(namespace, name string) *Service {
	r.mu.RLock()
	defer r.mu.RUnlock()
	return r.services[namespace+"/"+name]
}

// Workload returns one workload, or nil.
func (r *Registry) Workload(namespace, name string) *Workload {
	r.mu.RLock()
	defer r.mu.RUnlock()
	return r.workloads[namespace+"/"+name]
}

// ServiceGen returns the change counter of a service (spec or endpoints).
func (r *Registry) ServiceGen(key string) uint64 {
	r.mu.RLock()
	defer r.mu.RUnlock()
	return r.gen[key]
}

// Endpoints returns the workloads behind a service, sorted by key.
func (r *Registry) Endpoints(key string) []*Workload {
	r.mu.RLock()
	defer r.mu.RUnlock()
	eps := r.endpoints[key]
	out := make([]*Workload, 0, len(eps))
	for _, w := range eps {
		out = append(out, w)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	return out
}

// ServicesOf returns the services that select a workload, sorted by key.
func (r *Registry) ServicesOf(namespace, name string) []*Service {
	r.mu.RLock()
	defer r.mu.RUnlock()
	m := r.memberOf[namespace+"/"+name]
	out := make([]*Service, 0, len(m))
	for sk := range m {
		out = append(out, r.services[sk])
	}
	sort.Slice(out, func(i, j int) bool { return lessNS(out[i].Namespace, out[i].Name, out[j].Namespace, out[j].Name) })
	return out
}

// Services returns every service, sorted by namespace then name.
func (r *Registry) Services() []*Service {
	r.mu.RLock()
	cached := r.sorted
	r.mu.RUnlock()
	if cached == nil {
		r.mu.Lock()
		if r.sorted == nil {
			l := make([]*Service, 0, len(r.services))
			for _, s := range r.services {
				l = append(l, s)
			}
			sort.Slice(l, func(i, j int) bool { return lessNS(l[i].Namespace, l[i].Name, l[j].Namespace, l[j].Name) })
			r.sorted = l
		}
		cached = r.sorted
		r.mu.Unlock()
	}
	return slices.Clone(cached)
}

// lessNS orders by namespace, then name, without building "ns/name" keys.
func lessNS(ns1, n1, ns2, n2 string) bool {
	if ns1 != ns2 {
		return ns1 < ns2
	}
	return n1 < n2
}

// ServicesIn returns the services of one namespace, sorted by name.
func (r *Registry) ServicesIn(namespace string) []*Service {
	r.mu.RLock()
	defer r.mu.RUnlock()
	out := make([]*Service, 0, len(r.byNS[namespace]))
	for _, s := range r.byNS[namespace] {
		out = append(out, s)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	return out
}

// Workloads returns every workload, sorted by namespace then name.
func (r *Registry) Workloads() []*Workload {
	r.mu.RLock()
	defer r.mu.RUnlock()
	out := make([]*Workload, 0, len(r.workloads))
	for _, w := range r.workloads {
		out = append(out, w)
	}
	sort.Slice(out, func(i, j int) bool { return lessNS(out[i].Namespace, out[i].Name, out[j].Namespace, out[j].Name) })
	return out
}

// State is the registry's content as JSON (Admin.GetState).
type State struct {
	Services  []*Service  `json:"services"`
	Workloads []*Workload `json:"workloads"`
}

// State returns a copy of every entry.
func (r *Registry) State() State {
	return State{Services: r.Services(), Workloads: r.Workloads()}
}

// FromState builds a registry from a State (meshctl rebuilds the control
// plane's registry locally to compute tls-check and explain).
func FromState(st State) *Registry {
	r := New()
	r.mu.Lock()
	defer r.mu.Unlock()
	for _, s := range st.Services {
		r.putService(s)
	}
	for _, w := range st.Workloads {
		r.putWorkload(w)
	}
	r.changed()
	return r
}
