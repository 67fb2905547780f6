package engine

import (
	"sort"
	"strings"

	"github.com/meshauth/meshauth/internal/config"
)

// index is a config compiled for lookups: every question the engine asks
// of the config is a map access, never a scan of all objects.
type index struct {
	cfg *config.Config
	// nsDefault: namespace -> its "default" Policy without targets.
	nsDefault map[string]*config.Policy
	// svcPolicy: "ns/service" -> Policy targeting the whole service.
	svcPolicy map[string]*config.Policy
	// portPolicy: "ns/service:port" -> Policy, port by number or name.
	portPolicy map[string]*config.Policy
	// drExact: FQDN -> rules (by namespace/name); drWild: wildcard rules,
	// longest suffix first.
	drExact map[string][]*config.DestinationRule
	drWild  []*config.DestinationRule
	// excluded: FQDNs in mtlsExcludedServices.
	excluded map[string]bool
	// roles: namespace -> roles with their bindings' subjects.
	roles map[string][]*compiledRole
	// sidecars: namespace -> Sidecars with a workloadSelector (by name);
	// nsSidecar: namespace -> its Sidecar without one.
	sidecars  map[string][]*config.Sidecar
	nsSidecar map[string]*config.Sidecar
	// rbacNames are what Istio 0.8's bare RBAC names stand for.
	rbacNames config.RBACNames
}

type compiledRole struct {
	role     *config.ServiceRole
	bindings []*config.ServiceRoleBinding
}

func compile(c *config.Config) *index {
	if c == nil {
		c = &config.Config{}
	}
	ix := &index{
		cfg:        c,
		nsDefault:  map[string]*config.Policy{},
		svcPolicy:  map[string]*config.Policy{},
		portPolicy: map[string]*config.Policy{},
		drExact:    map[string][]*config.DestinationRule{},
		excluded:   map[string]bool{},
		roles:      map[string][]*compiledRole{},
		sidecars:   map[string][]*config.Sidecar{},
		nsSidecar:  map[string]*config.Sidecar{},
		rbacNames:  c.RBACNames(),
	}
	for _, sc := range c.Sidecars {
		if sc.Spec.WorkloadSelector == nil {
			ix.nsSidecar[sc.Metadata.Namespace] = sc
		} else {
			ix.sidecars[sc.Metadata.Namespace] = append(ix.sidecars[sc.Metadata.Namespace], sc)
		}
	}
	for _, p := range c.Policies {
		ns := p.Metadata.Namespace
		if len(p.Spec.Targets) == 0 {
			ix.nsDefault[ns] = p
			continue
		}
		for _, t := range p.Spec.Targets {
			if len(t.Ports) == 0 {
				ix.svcPolicy[ns+"/"+t.Name] = p
			}
			for _, ps := range t.Ports {
				ix.portPolicy[ns+"/"+t.Name+":"+ps.String()] = p
			}
		}
	}
	for _, dr := range c.DestinationRules {
		h := dr.FQDN()
		if strings.HasPrefix(h, "*") {
			ix.drWild = append(ix.drWild, dr)
		} else {
			ix.drExact[h] = append(ix.drExact[h], dr)
		}
	}
	// Istio picks the most specific wildcard: the longest host wins.
	sort.SliceStable(ix.drWild, func(i, j int) bool { return len(ix.drWild[i].Spec.Host) > len(ix.drWild[j].Spec.Host) })
	if c.Mesh != nil {
		for _, h := range c.Mesh.Spec.MTLSExcludedServices {
			ix.excluded[h] = true
		}
	}
	byRole := map[string]*compiledRole{}
	for _, r := range c.ServiceRoles {
		cr := &compiledRole{role: r}
		byRole[r.Metadata.Namespace+"/"+r.Metadata.Name] = cr
		ix.roles[r.Metadata.Namespace] = append(ix.roles[r.Metadata.Namespace], cr)
	}
	for _, b := range c.ServiceRoleBindings {
		if cr := byRole[b.Metadata.Namespace+"/"+b.Spec.RoleRef.Name]; cr != nil {
			cr.bindings = append(cr.bindings, b)
		}
	}
	return ix
}

// destinationRule finds the rule for a service FQDN in namespace svcNS: an
// exact host first, then the most specific wildcard ("*.ns.svc.cluster.local"
// before "*.local"). Among rules for the same host in several namespaces,
// the one in the service's own namespace wins, else the first by
// namespace: one answer for every client, so that a service's client mode
// is a property of the service (tls-check can state it). Istio 1.1+ would
// prefer the client's namespace; Lint names the rules that lose.
func (ix *index) destinationRule(fqdn, svcNS string) *config.DestinationRule {
	if drs := ix.drExact[fqdn]; len(drs) > 0 {
		return preferNamespace(drs, svcNS)
	}
	var best []*config.DestinationRule
	for _, dr := range ix.drWild {
		if !strings.HasSuffix(fqdn, dr.Spec.Host[1:]) {
			continue
		}
		if len(best) > 0 && len(dr.Spec.Host) < len(best[0].Spec.Host) {
			break
		}
		best = append(best, dr)
	}
	if len(best) > 0 {
		return preferNamespace(best, svcNS)
	}
	return nil
}

// preferNamespace picks the rule in ns, else the first (rules are sorted
// by namespace/name in the config).
func preferNamespace(drs []*config.DestinationRule, ns string) *config.DestinationRule {
	for _, dr := range drs {
		if dr.Metadata.Namespace == ns {
			return dr
		}
	}
	return drs[0]
}
