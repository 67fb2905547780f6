package config

import (
	"fmt"
	"maps"
	"slices"
	"sort"
	"strconv"
	"strings"
)

// New validates a set of already-decoded objects against each other and
// returns them as a Config: names unique per kind and namespace, at most one
// mesh config, MeshPolicy and RbacConfig, no two Policies for the same
// service port, no two DestinationRules for the same host, and every
// ServiceRoleBinding's role present. Any problem rejects the whole set.
func New(objs []any) (*Config, error) {
	c := &Config{}
	var errs ErrorList
	fail := func(o *Object, path, format string, args ...any) {
		errs = append(errs, &Error{Pos: o.Source, Object: o.Key(), Path: path, Msg: fmt.Sprintf(format, args...)})
	}
	seen := map[string]*Object{}
	for _, v := range objs {
		o := objectOf(v)
		if o == nil {
			continue
		}
		key := canonicalKind(o.Kind) + "/" + o.Ref()
		if first, ok := seen[key]; ok {
			fail(o, "metadata.name", "%s is defined twice; first at %s", o.Key(), first.Source)
			continue
		}
		seen[key] = o
		switch x := v.(type) {
		case *MeshConfig:
			if c.Mesh != nil {
				fail(o, "", "only one MeshConfig is allowed; another is at %s", c.Mesh.Source)
				continue
			}
			c.Mesh = x
		case *Policy:
			if x.Kind == KindMeshPolicy {
				c.MeshPolicy = x
			} else {
				c.Policies = append(c.Policies, x)
			}
		case *DestinationRule:
			c.DestinationRules = append(c.DestinationRules, x)
		case *RbacConfig:
			if c.RbacConfig != nil {
				fail(o, "", "only one RbacConfig or ClusterRbacConfig is allowed; another is at %s", c.RbacConfig.Source)
				continue
			}
			c.RbacConfig = x
		case *ServiceRole:
			c.ServiceRoles = append(c.ServiceRoles, x)
		case *ServiceRoleBinding:
			c.ServiceRoleBindings = append(c.ServiceRoleBindings, x)
		case *Sidecar:
			c.Sidecars = append(c.Sidecars, x)
		case *Service:
			c.Services = append(c.Services, x)
		case *Workload:
			c.Workloads = append(c.Workloads, x)
		case *Authorization:
			if c.Authorization != nil {
				fail(o, "", "only one authorization instance is read (it gives Istio 0.8's RBAC names their meaning); another is at %s", c.Authorization.Source)
				continue
			}
			c.Authorization = x
		}
	}
	c.sort()

	// Two policies for the same service port would make the server mode
	// depend on load order (Istio picked the oldest); refuse instead.
	targets := map[string]*Policy{}
	for _, p := range c.Policies {
		for i, t := range p.Spec.Targets {
			keys := []string{p.Metadata.Namespace + "/" + t.Name}
			if len(t.Ports) > 0 {
				keys = keys[:0]
				for _, ps := range t.Ports {
					keys = append(keys, p.Metadata.Namespace+"/"+t.Name+":"+ps.String())
				}
			}
			for _, k := range keys {
				if first, ok := targets[k]; ok && first != p {
					errs = append(errs, &Error{Pos: t.Pos, Object: p.Key(), Path: fmt.Sprintf("spec.targets[%d]", i),
						Msg: fmt.Sprintf("service %s is already targeted by %s at %s; merge the two policies", strings.TrimPrefix(k, p.Metadata.Namespace+"/"), first.Key(), first.Source)})
					continue
				}
				targets[k] = p
			}
		}
	}
	// Two target-less Policies in one namespace (Istio 0.8 allowed any
	// name) would make the namespace's mode depend on load order.
	nsPolicy := map[string]*Policy{}
	for _, p := range c.Policies {
		if len(p.Spec.Targets) > 0 {
			continue
		}
		if first, ok := nsPolicy[p.Metadata.Namespace]; ok {
			fail(&p.Object, "spec", "namespace %s already has a Policy without targets (%s at %s); a namespace has one namespace-wide policy: merge them", p.Metadata.Namespace, first.Key(), first.Source)
			continue
		}
		nsPolicy[p.Metadata.Namespace] = p
	}
	// Two rules for one host in one namespace would make the client mode
	// depend on load order; refuse. Across namespaces it is allowed (and
	// common in Kubernetes); the engine picks one deterministically.
	hosts := map[string]*DestinationRule{}
	for _, dr := range c.DestinationRules {
		h := dr.Metadata.Namespace + "/" + dr.FQDN()
		if first, ok := hosts[h]; ok {
			fail(&dr.Object, "spec.host", "host %s is already configured by %s at %s in the same namespace; merge the two rules", dr.FQDN(), first.Key(), first.Source)
			continue
		}
		hosts[h] = dr
	}
	// One namespace-wide Sidecar per namespace, as in Istio.
	nsSidecar := map[string]*Sidecar{}
	for _, sc := range c.Sidecars {
		if sc.Spec.WorkloadSelector != nil {
			continue
		}
		if first, ok := nsSidecar[sc.Metadata.Namespace]; ok {
			fail(&sc.Object, "spec", "namespace %s already has a Sidecar without workloadSelector (%s at %s); give one a workloadSelector or merge them", sc.Metadata.Namespace, first.Key(), first.Source)
			continue
		}
		nsSidecar[sc.Metadata.Namespace] = sc
	}
	roles := map[string]bool{}
	for _, r := range c.ServiceRoles {
		roles[r.Metadata.Namespace+"/"+r.Metadata.Name] = true
	}
	// A binding may come before its role (Kubernetes takes them in any
	// order, and Istio's validation checks each object alone): until the
	// role exists the binding grants nothing, so it is a warning.
	for _, b := range c.ServiceRoleBindings {
		if !roles[b.Metadata.Namespace+"/"+b.Spec.RoleRef.Name] {
			c.warnings = append(c.warnings, &Error{Pos: b.Source, Object: b.Key(), Path: "spec.roleRef.name",
				Msg: fmt.Sprintf("ServiceRole %q not found in namespace %s: this binding grants nothing until it exists", b.Spec.RoleRef.Name, b.Metadata.Namespace)})
		}
	}
	names := c.RBACNames()
	// Istio 0.8's bare RBAC names mean what the authorization instance
	// (or the samples') says.
	for _, r := range c.ServiceRoles {
		for i, rule := range r.Spec.Rules {
			for j, cn := range rule.Constraints {
				msg, isErr := names.checkConstraint(cn.Key)
				c.note(&errs, isErr, &r.Object, cn.Pos, fmt.Sprintf("spec.rules[%d].constraints[%d].key", i, j), msg)
			}
		}
	}
	for _, b := range c.ServiceRoleBindings {
		for i, sub := range b.Spec.Subjects {
			for _, k := range slices.Sorted(maps.Keys(sub.Properties)) {
				msg, isErr := names.checkProperty(k)
				c.note(&errs, isErr, &b.Object, sub.Pos, fmt.Sprintf("spec.subjects[%d].properties[%s]", i, k), msg)
			}
		}
	}
	if len(errs) > 0 {
		errs.Sort()
		return nil, errs
	}
	return c, nil
}

// note records msg (if any) about object o at pos as an error or a
// warning.
func (c *Config) note(errs *ErrorList, isErr bool, o *Object, pos Pos, path, msg string) {
	if msg == "" {
		return
	}
	if pos.File == "" {
		pos = o.Source
	}
	e := &Error{Pos: pos, Object: o.Key(), Path: path, Msg: msg}
	if isErr {
		*errs = append(*errs, e)
	} else {
		c.warnings = append(c.warnings, e)
	}
}

// Warnings returns what decoding and validation accepted but flagged, for
// every object, in file order.
func (c *Config) Warnings() ErrorList {
	var out ErrorList
	if c == nil {
		return nil
	}
	for _, v := range c.Objects() {
		out = append(out, objectOf(v).Warnings...)
	}
	out = append(out, c.warnings...)
	out.Sort()
	return out
}

// canonicalKind folds kinds that share one namespace of names.
func canonicalKind(k string) string {
	if k == KindClusterRbacConfig {
		return KindRbacConfig
	}
	return k
}

// String formats a port selector as its number or name.
func (p PortSelector) String() string {
	if p.Name != "" {
		return p.Name
	}
	return strconv.FormatUint(uint64(p.Number), 10)
}

// FQDN resolves the rule's host the way Istio does for short names: "httpbin"
// in namespace ns means httpbin.ns.svc.cluster.local. We also expand
// "name.ns" and "name.ns.svc", which Istio would take literally (and so
// silently match nothing).
func (dr *DestinationRule) FQDN() string {
	return ResolveHost(dr.Spec.Host, dr.Metadata.Namespace)
}

// ResolveHost expands a short host written in namespace ns to its FQDN.
func ResolveHost(h, ns string) string {
	if strings.HasPrefix(h, "*") {
		return h
	}
	switch strings.Count(h, ".") {
	case 0:
		return h + "." + ns + ".svc.cluster.local"
	case 1:
		return h + ".svc.cluster.local"
	}
	if strings.HasSuffix(h, ".svc") {
		return h + ".cluster.local"
	}
	return h
}

func (c *Config) sort() {
	sortObjs(c.Policies)
	sortObjs(c.DestinationRules)
	sortObjs(c.ServiceRoles)
	sortObjs(c.ServiceRoleBindings)
	sortObjs(c.Sidecars)
	sortObjs(c.Services)
	sortObjs(c.Workloads)
}

type keyed interface{ key() string }

func (o *Object) key() string { return o.Metadata.Namespace + "/" + o.Metadata.Name }

func sortObjs[T keyed](s []T) {
	sort.SliceStable(s, func(i, j int) bool { return s[i].key() < s[j].key() })
}

// Apply returns a new Config with objs merged in: an object replaces the
// one of the same kind, namespace and name. With replace set, every existing
// object of a kind present in objs is dropped first (the batch is the whole
// truth for its kinds). The result is validated as a whole; on error c is
// unchanged and still in force.
func (c *Config) Apply(objs []any, replace bool) (*Config, error) {
	batch := map[string]bool{}
	kindsIn := map[string]bool{}
	for _, v := range objs {
		o := objectOf(v)
		batch[canonicalKind(o.Kind)+"/"+o.Ref()] = true
		kindsIn[canonicalKind(o.Kind)] = true
	}
	var all []any
	if c != nil {
		for _, v := range c.Objects() {
			o := objectOf(v)
			if batch[canonicalKind(o.Kind)+"/"+o.Ref()] || (replace && kindsIn[canonicalKind(o.Kind)]) {
				continue
			}
			all = append(all, v)
		}
	}
	all = append(all, objs...)
	n, err := New(all)
	if err != nil {
		return nil, err
	}
	if c != nil {
		n.Version = c.Version
	}
	return n, nil
}
