// Package engine is the mesh's policy engine: from the config kinds (mesh
// config, authentication Policy, DestinationRule, RBAC) and the registry it
// derives each sidecar's policy.Snapshot, and it explains every decision
// with the objects that made it (Explain, TLSCheck, Lint). It does no I/O:
// every function is pure, so every decision can be tested and explained.
// It runs in the control plane and meshctl; the sidecar needs only
// internal/policy, so it does not link the config kinds or the registry.
package engine

import (
	"fmt"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync"

	"github.com/meshauth/meshauth/internal/config"
	"github.com/meshauth/meshauth/internal/policy"
	"github.com/meshauth/meshauth/internal/registry"
)

// MeshAuthPolicy is the DecidedBy value when the mesh-wide authPolicy
// decided (no Policy, no DestinationRule).
const MeshAuthPolicy = "mesh/authPolicy"

// Engine answers policy questions for one config over a registry. Build a
// new Engine when the config changes (the registry may change underneath:
// per-service results are cached by the registry's per-service generation).
// It does no I/O; every answer is a function of (config, registry).
type Engine struct {
	ix  *index
	reg *registry.Registry

	mu  sync.Mutex
	out map[string]outEntry
	// allow caches each service's allowed identities (registration).
	allow map[string]allowEntry

	// table is the whole outbound table at one registry version, shared by
	// every snapshot computed at that version (each copies it and adds the
	// short names of its own namespace). tableMu makes concurrent snapshots
	// wait for one rebuild instead of all rebuilding.
	tableMu sync.Mutex
	table   *outTable
}

type outTable struct {
	version uint64
	list    []policy.OutboundService
	// svcs are the services list was built from, index for index.
	svcs []*registry.Service
	// nsRange is the [lo, hi) slice of list holding each namespace's
	// services (list is sorted by namespace, then name).
	nsRange map[string][2]int
	// byNS caches, per client namespace, list with that namespace's short
	// names added. Snapshots share these slices (snapshots are immutable),
	// so a push to many sidecars of one namespace copies the table once.
	byNS map[string][]policy.OutboundService
}

type outEntry struct {
	gen uint64
	svc policy.OutboundService
}

type allowEntry struct {
	gen  uint64
	set  map[string]bool
	list []string // sorted
}

// New returns an engine over cfg (nil means an empty config) and reg.
func New(cfg *config.Config, reg *registry.Registry) *Engine {
	if reg == nil {
		reg = registry.New()
	}
	return &Engine{ix: compile(cfg), reg: reg, out: map[string]outEntry{}, allow: map[string]allowEntry{}}
}

// Config returns the engine's config.
func (e *Engine) Config() *config.Config { return e.ix.cfg }

// Registry returns the engine's registry.
func (e *Engine) Registry() *registry.Registry { return e.reg }

// ModeDecision is a TLS mode and the object that set it.
type ModeDecision[M ~string] struct {
	Mode M `json:"mode"`
	// DecidedBy is kind/namespace/name of the deciding object, or
	// "mesh/authPolicy".
	DecidedBy string `json:"decidedBy"`
	// Why says how the object applied ("port 80 targeted", "namespace
	// default", "port-level settings for 8080").
	Why string `json:"why,omitempty"`
}

// policyMode turns an authentication Policy into a server mode: no peers
// means no peer authentication (plaintext); an mtls peer means STRICT, or
// PERMISSIVE when mode says so or peerIsOptional is set.
func policyMode(p *config.Policy) policy.ServerMode {
	for _, peer := range p.Spec.Peers {
		if peer.MTLS == nil {
			continue
		}
		if peer.MTLS.Mode == config.MTLSPermissive || p.Spec.PeerIsOptional {
			return policy.ServerPermissive
		}
		return policy.ServerStrict
	}
	return policy.ServerDisable
}

// ServerMode returns how the sidecars of svc treat inbound connections on
// service port port: a Policy targeting that port wins over one targeting
// the service, over the namespace's "default" Policy, over the MeshPolicy,
// over the mesh config's authPolicy.
func (e *Engine) ServerMode(svc *registry.Service, port uint32) ModeDecision[policy.ServerMode] {
	m, _ := e.serverPolicy(svc, port)
	return m
}

// serverPolicy is ServerMode with the Policy that decided (nil for the
// mesh authPolicy).
func (e *Engine) serverPolicy(svc *registry.Service, port uint32) (ModeDecision[policy.ServerMode], *config.Policy) {
	ix := e.ix
	key := svc.Key()
	if p, ok := svc.Port(port); ok {
		for _, sel := range []string{strconv.FormatUint(uint64(p.Number), 10), p.Name} {
			if sel == "" {
				continue
			}
			if pol := ix.portPolicy[key+":"+sel]; pol != nil {
				return ModeDecision[policy.ServerMode]{Mode: policyMode(pol), DecidedBy: pol.Key(), Why: "targets " + svc.Name + " port " + sel}, pol
			}
		}
	}
	if pol := ix.svcPolicy[key]; pol != nil {
		return ModeDecision[policy.ServerMode]{Mode: policyMode(pol), DecidedBy: pol.Key(), Why: "targets " + svc.Name}, pol
	}
	return e.namespacePolicy(svc.Namespace)
}

// EndUser converts a Policy's origins to the snapshot form; nil when it
// has none and does not bind the principal to the origin.
func EndUser(p *config.Policy) *policy.EndUserAuthn {
	if p == nil || (len(p.Spec.Origins) == 0 && p.Spec.PrincipalBinding != "USE_ORIGIN") {
		return nil
	}
	eu := &policy.EndUserAuthn{Optional: p.Spec.OriginIsOptional, UseOrigin: p.Spec.PrincipalBinding == "USE_ORIGIN", DecidedBy: p.Key()}
	if len(p.Spec.Origins) == 0 {
		eu.Optional = true // nothing to verify: only the binding applies
	}
	for _, o := range p.Spec.Origins {
		if o.JWT != nil {
			j := o.JWT
			eu.JWT = append(eu.JWT, policy.JWTRule{Issuer: j.Issuer, Audiences: j.Audiences, JwksURI: j.JwksURI,
				JWTHeaders: j.JWTHeaders, JWTParams: j.JWTParams})
		}
	}
	return eu
}

// namespaceMode is the server mode for a namespace's ports no Policy targets.
func (e *Engine) namespaceMode(ns string) ModeDecision[policy.ServerMode] {
	m, _ := e.namespacePolicy(ns)
	return m
}

func (e *Engine) namespacePolicy(ns string) (ModeDecision[policy.ServerMode], *config.Policy) {
	ix := e.ix
	if pol := ix.nsDefault[ns]; pol != nil {
		return ModeDecision[policy.ServerMode]{Mode: policyMode(pol), DecidedBy: pol.Key(), Why: "namespace-wide policy"}, pol
	}
	if mp := ix.cfg.MeshPolicy; mp != nil {
		return ModeDecision[policy.ServerMode]{Mode: policyMode(mp), DecidedBy: mp.Key(), Why: "mesh-wide policy"}, mp
	}
	if ix.cfg.AuthPolicy() == config.AuthPolicyMutualTLS {
		return ModeDecision[policy.ServerMode]{Mode: policy.ServerStrict, DecidedBy: MeshAuthPolicy, Why: "authPolicy: MUTUAL_TLS"}, nil
	}
	return ModeDecision[policy.ServerMode]{Mode: policy.ServerDisable, DecidedBy: MeshAuthPolicy, Why: "authPolicy: NONE"}, nil
}

// ClientTLS is the client side's decision for one service port.
type ClientTLS struct {
	ModeDecision[policy.ClientTLSMode]
	// Settings are the TLS settings that applied, if a DestinationRule set them.
	Settings *config.TLSSettings `json:"settings,omitempty"`
}

// ClientMode returns how a client sidecar connects to svc:port (subset ""
// for the service as a whole), as Istio looks it up: the DestinationRule for
// the service's host (exact host, else the most specific wildcard); within
// it, port-level settings of the subset, the subset's tls, port-level
// settings of the rule, the rule's tls. With no rule, or a rule that sets no
// tls at all, ISTIO_MUTUAL if the mesh authPolicy is MUTUAL_TLS and the
// service is not in mtlsExcludedServices, else DISABLE.
//
// The last case departs from Istio 0.8 on purpose: there, a rule that only
// declared subsets silently switched its clients to plaintext, the cause of
// the 503s in istio/istio#6279.
func (e *Engine) ClientMode(svc *registry.Service, port uint32, subset string) ClientTLS {
	fqdn := svc.FQDN()
	p, _ := svc.Port(port)
	var dr *config.DestinationRule
	if dr = e.ix.destinationRule(fqdn, svc.Namespace); dr != nil {
		type level struct {
			tp   *config.TrafficPolicy
			name string
		}
		var levels []level
		if subset != "" {
			for i := range dr.Spec.Subsets {
				if ss := &dr.Spec.Subsets[i]; ss.Name == subset && ss.TrafficPolicy != nil {
					levels = append(levels, level{ss.TrafficPolicy, "subset " + subset})
				}
			}
		}
		if dr.Spec.TrafficPolicy != nil {
			levels = append(levels, level{dr.Spec.TrafficPolicy, ""})
		}
		for _, l := range levels {
			for _, pl := range l.tp.PortLevelSettings {
				if pl.TLS != nil && (pl.Port.Number != 0 && pl.Port.Number == port || pl.Port.Name != "" && pl.Port.Name == p.Name) {
					return ClientTLS{ModeDecision[policy.ClientTLSMode]{Mode: policy.ClientTLSMode(pl.TLS.Mode), DecidedBy: dr.Key(),
						Why: strings.TrimSpace(l.name + " port-level settings for " + pl.Port.String())}, pl.TLS}
				}
			}
			if l.tp.TLS != nil {
				why := "rule-level tls"
				if l.name != "" {
					why = l.name + " tls"
				}
				return ClientTLS{ModeDecision[policy.ClientTLSMode]{Mode: policy.ClientTLSMode(l.tp.TLS.Mode), DecidedBy: dr.Key(), Why: why}, l.tp.TLS}
			}
		}
	}
	var d ClientTLS
	switch {
	case e.ix.excluded[fqdn]:
		d.Mode, d.Why = policy.ClientDisable, "service is in mtlsExcludedServices"
	case e.ix.cfg.AuthPolicy() == config.AuthPolicyMutualTLS:
		d.Mode, d.Why = policy.ClientIstioMutual, "authPolicy: MUTUAL_TLS"
	default:
		d.Mode, d.Why = policy.ClientDisable, "authPolicy: NONE"
	}
	d.DecidedBy = MeshAuthPolicy
	if dr != nil {
		d.Why = dr.Key() + " sets no tls; " + d.Why
	}
	return d
}

// Endpoints returns the workloads trusted to serve svc: every endpoint the
// config or Kubernetes declares, and the self-registered sidecars whose
// identity the service allows (AllowedIdentities). A sidecar proves only
// its identity (namespace and service account, from its certificate); the
// labels and ports it registers are its own claim. So registration is
// closed by default: a self-registered sidecar whose identity the service
// does not allow is left out, of routing and of secure naming, whatever
// labels it claims; a service that allows no identity admits no
// self-registered sidecar at all.
func (e *Engine) Endpoints(svc *registry.Service) []*registry.Workload {
	all := e.reg.Endpoints(svc.Key())
	dynamic := false
	for _, w := range all {
		dynamic = dynamic || w.Source == registry.SourceSidecar
	}
	if !dynamic {
		return all
	}
	allowed := e.allowed(svc).set
	out := all[:0:0]
	for _, w := range all {
		if w.Source != registry.SourceSidecar || allowed[e.spiffeID(w)] {
			out = append(out, w)
		}
	}
	return out
}

func (e *Engine) spiffeID(w *registry.Workload) string {
	return "spiffe://" + e.ix.cfg.TrustDomain() + "/ns/" + w.Namespace + "/sa/" + w.ServiceAccount
}

// allowed returns svc's allowed identities (AllowedIdentities), cached
// by the registry's generation of the service (its spec and endpoints), so
// that a push to many sidecars computes them once per change.
func (e *Engine) allowed(svc *registry.Service) allowEntry {
	key := svc.Key()
	gen := e.reg.ServiceGen(key)
	e.mu.Lock()
	ent, ok := e.allow[key]
	e.mu.Unlock()
	if ok && ent.gen == gen {
		return ent
	}
	set := map[string]bool{}
	for _, id := range svc.ServiceAccounts {
		set[id] = true
	}
	for _, w := range e.reg.Endpoints(key) {
		if w.Source != registry.SourceSidecar {
			set[e.spiffeID(w)] = true
		}
	}
	list := make([]string, 0, len(set))
	for id := range set {
		list = append(list, id)
	}
	sort.Strings(list)
	ent = allowEntry{gen: gen, set: set, list: list}
	e.mu.Lock()
	e.allow[key] = ent
	e.mu.Unlock()
	return ent
}

// AllowedIdentities returns the SPIFFE IDs whose sidecars may register
// themselves as endpoints of svc, sorted: the Service's serviceAccounts and
// subjectAltNames (and Istio's service-account annotations), and the
// service accounts of the workloads the config or Kubernetes declares
// behind it.
func (e *Engine) AllowedIdentities(svc *registry.Service) []string {
	return slices.Clone(e.allowed(svc).list)
}

// RefusalsFor returns the services that w's registration claims (their
// selectors match its labels) but that refuse it. Only self-registered
// sidecars are ever refused.
func (e *Engine) RefusalsFor(w *registry.Workload) []policy.Refusal {
	if w == nil || w.Source != registry.SourceSidecar {
		return nil
	}
	var out []policy.Refusal
	id := e.spiffeID(w)
	for _, svc := range e.reg.ServicesOf(w.Namespace, w.Name) {
		a := e.allowed(svc)
		if a.set[id] {
			continue
		}
		allowed := a.list
		r := policy.Refusal{Service: svc.Name + "." + svc.Namespace, Workload: w.Key(), SPIFFEID: id}
		if len(allowed) == 0 {
			r.Reason = "registration is closed: the Service allows no identity (no spec.serviceAccounts, no declared Workload); add the service account to spec.serviceAccounts to admit it"
		} else {
			r.Reason = "identity not allowed for the Service (allowed: " + strings.Join(allowed, ", ") + ")"
		}
		out = append(out, r)
	}
	return out
}

// Refusals returns every refused self-registration in the mesh, by
// workload then service.
func (e *Engine) Refusals() []policy.Refusal {
	var out []policy.Refusal
	for _, w := range e.reg.Workloads() {
		out = append(out, e.RefusalsFor(w)...)
	}
	return out
}

// admits reports whether svc counts w among its endpoints.
func (e *Engine) admits(svc *registry.Service, w *registry.Workload) bool {
	if w.Source != registry.SourceSidecar {
		return true
	}
	return e.allowed(svc).set[e.spiffeID(w)]
}

// ServerIdentities returns the SPIFFE IDs allowed to serve svc (secure
// naming): the service accounts of its endpoints that run a sidecar, plus
// those the service's annotations add.
func (e *Engine) ServerIdentities(svc *registry.Service) []string {
	td := e.ix.cfg.TrustDomain()
	seen := map[string]bool{}
	var out []string
	add := func(id string) {
		if !seen[id] {
			seen[id] = true
			out = append(out, id)
		}
	}
	for _, w := range e.Endpoints(svc) {
		if w.Sidecar {
			add("spiffe://" + td + "/ns/" + w.Namespace + "/sa/" + w.ServiceAccount)
		}
	}
	// Identities the service declares on top of its workloads' (Service
	// annotations): a VM or a workload being migrated.
	for _, id := range svc.ServiceAccounts {
		add(id)
	}
	sort.Strings(out)
	return out
}

// RBACFor reports whether authorization is on for svc, and which object
// decided.
func (e *Engine) RBACFor(svc *registry.Service) (bool, string) {
	rc := e.ix.cfg.RbacConfig
	if rc == nil {
		return false, ""
	}
	in := func(t *config.RbacTarget) bool {
		if t == nil {
			return false
		}
		if slices.Contains(t.Namespaces, svc.Namespace) {
			return true
		}
		for _, s := range t.Services {
			if policy.ServiceMatches([]string{s}, svc.Name+"."+svc.Namespace) {
				return true
			}
		}
		return false
	}
	switch rc.Spec.Mode {
	case config.RbacOn:
		return true, rc.Key()
	case config.RbacOnWithInclusion:
		return in(rc.Spec.Inclusion), rc.Key()
	case config.RbacOnWithExclusion:
		return !in(rc.Spec.Exclusion), rc.Key()
	}
	return false, rc.Key()
}

// rbacPolicies converts the roles of ns that can apply to one of services
// (name.namespace) into the snapshot form, with their bound subjects.
func (e *Engine) rbacPolicies(ns string, services []string) []policy.RBACPolicy {
	var out []policy.RBACPolicy
	names := e.ix.rbacNames
	for _, cr := range e.ix.roles[ns] {
		relevant := false
		var rules []policy.RBACRule
		for _, r := range cr.role.Spec.Rules {
			for _, s := range services {
				relevant = relevant || policy.ServiceMatches(r.Services, s)
			}
			rr := policy.RBACRule{Services: r.Services, Methods: r.Methods, Paths: r.Paths}
			for _, c := range r.Constraints {
				// Istio 0.8's bare names become the attributes they stand
				// for ("app" -> destination.labels[app]); a bare name with
				// no mapping stays as is and never matches.
				rr.Constraints = append(rr.Constraints, policy.RBACConstraint{Key: names.ConstraintKey(c.Key), Values: c.Values})
			}
			rules = append(rules, rr)
		}
		if !relevant || len(cr.bindings) == 0 {
			continue
		}
		p := policy.RBACPolicy{Role: cr.role.Metadata.Namespace + "/" + cr.role.Metadata.Name, Rules: rules}
		for _, b := range cr.bindings {
			ref := b.Metadata.Namespace + "/" + b.Metadata.Name
			p.Bindings = append(p.Bindings, ref)
			for _, s := range b.Spec.Subjects {
				p.Subjects = append(p.Subjects, snapshotSubject(names, s, ref))
			}
		}
		out = append(out, p)
	}
	return out
}

// snapshotSubject converts a binding subject: Istio 0.8's bare property
// names become attributes ("namespace" -> source.namespace); a group other
// than "*" (Istio 0.8's Mixer matched only "*", its instance set no groups)
// becomes a property no request has, so the subject never matches.
func snapshotSubject(names config.RBACNames, s config.Subject, binding string) policy.RBACSubject {
	out := policy.RBACSubject{User: s.User, Binding: binding}
	if s.Group == "*" && s.User == "" {
		out.User = "*"
	}
	if len(s.Properties) > 0 || (s.Group != "" && s.Group != "*") {
		out.Properties = map[string]string{}
	}
	for k, v := range s.Properties {
		out.Properties[names.SubjectProperty(k)] = v
	}
	if s.Group != "" && s.Group != "*" {
		out.Properties["group"] = s.Group
	}
	return out
}

// outbound returns the cached outbound entry of a service, recomputing it
// when the service or its endpoints changed.
func (e *Engine) outbound(svc *registry.Service) policy.OutboundService {
	key := svc.Key()
	gen := e.reg.ServiceGen(key)
	e.mu.Lock()
	ent, ok := e.out[key]
	e.mu.Unlock()
	if ok && ent.gen == gen {
		return ent.svc
	}
	o := policy.OutboundService{
		Name:      svc.Name,
		Namespace: svc.Namespace,
		Hosts:     []string{svc.Name + "." + svc.Namespace, svc.Name + "." + svc.Namespace + ".svc", svc.FQDN()},
		Address:   svc.Address,
	}
	for _, p := range svc.Ports {
		c := e.ClientMode(svc, p.Number, "")
		op := policy.OutboundPort{Name: p.Name, Port: p.Number, Protocol: p.Protocol, TargetPort: p.TargetPort, TLSMode: c.Mode, DecidedBy: c.DecidedBy}
		if c.Settings != nil {
			op.SNI = c.Settings.SNI
			op.SubjectAltNames = c.Settings.SubjectAltNames
		}
		o.Ports = append(o.Ports, op)
	}
	for _, w := range e.Endpoints(svc) {
		ep := policy.Endpoint{Workload: w.Name, ServiceAccount: w.ServiceAccount, Address: w.Address, Sidecar: w.Sidecar}
		for _, wp := range w.Ports {
			if wp.SidecarPort != 0 {
				if ep.Ports == nil {
					ep.Ports = map[uint32]uint32{}
				}
				ep.Ports[wp.Number] = wp.SidecarPort
			}
		}
		o.Endpoints = append(o.Endpoints, ep)
	}
	o.ServerIdentities = e.ServerIdentities(svc)
	e.mu.Lock()
	e.out[key] = outEntry{gen: gen, svc: o}
	e.mu.Unlock()
	return o
}

// Snapshot computes the effective configuration of one workload's sidecar:
// the server mode of each port it serves, the RBAC rules that concern it,
// and the outbound table of every service in the mesh with endpoints,
// client TLS mode and allowed server identities. Version is left empty; the
// push server stamps it.
func (e *Engine) Snapshot(w *registry.Workload) *policy.Snapshot {
	s := e.inbound(w)
	s.Refused = e.RefusalsFor(w)
	sc := e.SidecarFor(w)
	s.Outbound = e.outboundFor(w.Namespace, sc)
	if sc != nil {
		s.OutboundScope = sc.Key()
	}
	return s
}

// SidecarFor returns the Sidecar object that scopes w's outbound table: the
// first (by name) whose workloadSelector matches w, else its namespace's
// Sidecar without selector; nil when none applies (w sees every service).
func (e *Engine) SidecarFor(w *registry.Workload) *config.Sidecar {
	for _, sc := range e.ix.sidecars[w.Namespace] {
		if registry.Selects(sc.Spec.WorkloadSelector.Labels, w.Labels) {
			return sc
		}
	}
	return e.ix.nsSidecar[w.Namespace]
}

// EgressAllows reports whether a Sidecar's egress hosts include svc.
func EgressAllows(sc *config.Sidecar, svc *registry.Service) bool {
	fqdn := svc.FQDN()
	for _, eg := range sc.Spec.Egress {
		for _, h := range eg.Hosts {
			ns, host, _ := strings.Cut(h, "/")
			switch {
			case ns == "*":
			case ns == ".":
				if svc.Namespace != sc.Metadata.Namespace {
					continue
				}
			case ns != svc.Namespace:
				continue
			}
			if host == "*" || (strings.HasPrefix(host, "*.") && strings.HasSuffix(fqdn, host[1:])) {
				return true
			}
			in := ns
			if ns == "." || ns == "*" {
				in = sc.Metadata.Namespace
			}
			if config.ResolveHost(host, in) == fqdn {
				return true
			}
		}
	}
	return false
}

// outboundFor returns the outbound table as seen from namespace ns, scoped
// by sc when not nil: the short name of a service resolves only inside its
// own namespace. Results are shared by every snapshot with the same view.
func (e *Engine) outboundFor(ns string, sc *config.Sidecar) []policy.OutboundService {
	t := e.outboundTable()
	e.tableMu.Lock()
	defer e.tableMu.Unlock()
	if _, ok := t.nsRange[ns]; !ok && sc == nil {
		return t.list
	}
	key := ns
	if sc != nil {
		key = "sidecar:" + sc.Key()
	}
	if l, ok := t.byNS[key]; ok {
		return l
	}
	var l []policy.OutboundService
	if sc == nil {
		l = make([]policy.OutboundService, len(t.list))
		copy(l, t.list)
	} else {
		for i, svc := range t.svcs {
			if EgressAllows(sc, svc) {
				l = append(l, t.list[i])
			}
		}
	}
	for i := range l {
		if o := &l[i]; o.Namespace == ns {
			o.Hosts = append([]string{o.Name}, o.Hosts...)
		}
	}
	t.byNS[key] = l
	return l
}

// outboundTable returns the outbound table for the registry's current
// version, rebuilding it (from per-service cache entries) when it moved.
func (e *Engine) outboundTable() *outTable {
	e.tableMu.Lock()
	defer e.tableMu.Unlock()
	v := e.reg.Version()
	if e.table != nil && e.table.version == v {
		return e.table
	}
	svcs := e.reg.Services()
	t := &outTable{version: v, svcs: svcs, list: make([]policy.OutboundService, 0, len(svcs)), nsRange: map[string][2]int{}, byNS: map[string][]policy.OutboundService{}}
	for i, svc := range svcs {
		r, ok := t.nsRange[svc.Namespace]
		if !ok {
			r[0] = i
		}
		r[1] = i + 1
		t.nsRange[svc.Namespace] = r
		t.list = append(t.list, e.outbound(svc))
	}
	e.table = t
	return t
}

// inbound computes the server half of a snapshot (no outbound table).
func (e *Engine) inbound(w *registry.Workload) *policy.Snapshot {
	s := &policy.Snapshot{
		TrustDomain: e.ix.cfg.TrustDomain(),
		Workload:    policy.WorkloadRef{Name: w.Name, Namespace: w.Namespace, ServiceAccount: w.ServiceAccount, Labels: w.Labels},
	}
	nsMode, nsPol := e.namespacePolicy(w.Namespace)
	s.InboundDefault = nsMode.Mode
	s.InboundDefaultEndUser = EndUser(nsPol)
	mine := e.reg.ServicesOf(w.Namespace, w.Name)
	seen := map[uint32]bool{}
	var rbacOn, rbacOff []string
	rbacBy := ""
	for _, svc := range mine {
		if !e.admits(svc, w) {
			// A refused registration serves nothing of the service; its
			// ports keep the namespace default.
			continue
		}
		for _, p := range svc.Ports {
			if seen[p.TargetPort] {
				continue // first service (by name) wins a shared target port
			}
			seen[p.TargetPort] = true
			m, pol := e.serverPolicy(svc, p.Number)
			s.Inbound = append(s.Inbound, policy.InboundPort{Port: p.TargetPort, Mode: m.Mode, Protocol: policy.InboundProtocol(p.Protocol, p.Name),
				Service: svc.Name + "." + svc.Namespace, DecidedBy: m.DecidedBy, EndUser: EndUser(pol)})
		}
		on, by := e.RBACFor(svc)
		rbacBy = by
		if on {
			rbacOn = append(rbacOn, svc.Name+"."+svc.Namespace)
		} else {
			rbacOff = append(rbacOff, svc.Name+"."+svc.Namespace)
		}
	}
	sort.Slice(s.Inbound, func(i, j int) bool { return s.Inbound[i].Port < s.Inbound[j].Port })
	if len(rbacOn) > 0 {
		s.RBAC = &policy.RBAC{DecidedBy: rbacBy, OffServices: rbacOff, Policies: e.rbacPolicies(w.Namespace, rbacOn)}
	}
	return s
}

// Compatible reports whether a client in mode c can talk to a server in
// mode s, with the reason when it cannot. It is Istio's tls-check rule: a
// STRICT server needs ISTIO_MUTUAL; a plaintext server must not receive
// ISTIO_MUTUAL; PERMISSIVE accepts anything and is never a conflict.
func Compatible(s policy.ServerMode, c policy.ClientTLSMode) (bool, string) {
	switch s {
	case policy.ServerPermissive:
		return true, ""
	case policy.ServerStrict:
		if c != policy.ClientIstioMutual {
			return false, fmt.Sprintf("server requires mesh mTLS (STRICT) but the client uses %s", c)
		}
	case policy.ServerDisable:
		if c == policy.ClientIstioMutual {
			return false, "client sends mesh mTLS (ISTIO_MUTUAL) but the server expects plaintext (DISABLE)"
		}
	}
	return true, ""
}

// LookupService finds a service by "name", "name.namespace" or an FQDN;
// a bare name is looked up in defaultNS.
func (e *Engine) LookupService(host, defaultNS string) *registry.Service {
	host = strings.TrimSuffix(host, ".svc.cluster.local")
	host = strings.TrimSuffix(host, ".svc")
	name, ns, ok := strings.Cut(host, ".")
	if !ok {
		ns = defaultNS
	}
	return e.reg.Service(ns, name)
}
