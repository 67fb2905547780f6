package config

import (
	"fmt"
	"net/netip"
	"regexp"
	"sort"
	"strconv"
	"strings"

	"github.com/meshauth/meshauth/internal/identity"
)

var (
	// dnsLabel is a DNS-1123 label: what namespaces and service names are.
	dnsLabel = regexp.MustCompile(`^[a-z0-9]([-a-z0-9]*[a-z0-9])?$`)
	// dnsSubdomain allows dots (service account and workload names).
	dnsSubdomain = regexp.MustCompile(`^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$`)
	httpMethod   = regexp.MustCompile(`^[A-Z]+$`)
	labelKey     = regexp.MustCompile(`^([a-z0-9]([-a-z0-9.]*[a-z0-9])?/)?[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?$`)
)

// protocols are the service port protocols Istio knows (case-insensitive).
var protocols = []string{"HTTP", "HTTP2", "GRPC", "HTTPS", "TCP", "TLS", "MONGO", "REDIS", "MYSQL"}

func isName(s string) bool      { return len(s) <= 63 && dnsLabel.MatchString(s) }
func isSubdomain(s string) bool { return len(s) <= 253 && dnsSubdomain.MatchString(s) }

// CheckHost validates a DestinationRule-style host: a DNS name, optionally
// with a leading "*." wildcard ("httpbin", "httpbin.default.svc.cluster.local",
// "*.default.svc.cluster.local", "*.local"). It returns a reason or "".
func CheckHost(h string) string {
	switch {
	case h == "":
		return "host is empty"
	case h == "*":
		return `a bare "*" is not a host; use "*.local" for every service in the mesh`
	case strings.ToLower(h) != h:
		return "hosts are lowercase DNS names"
	case len(h) > 253:
		return "host is longer than 253 characters"
	}
	rest := strings.TrimPrefix(h, "*.")
	if strings.Contains(rest, "*") {
		return `a wildcard is allowed only as the whole first label ("*.example.com")`
	}
	for _, l := range strings.Split(rest, ".") {
		if !isName(l) {
			return fmt.Sprintf("label %q is not a DNS label (lowercase letters, digits and '-', at most 63)", l)
		}
	}
	return ""
}

// clusterScoped kinds have no namespace.
func clusterScoped(kind string) bool {
	return kind == KindMeshConfig || kind == KindMeshPolicy || kind == KindClusterRbacConfig || kind == KindRbacConfig
}

func validateObject(d *decoder, obj any, path string) {
	p := func(s string) string { return joinPath(path, s) }
	o := objectOf(obj)
	switch {
	case o.Metadata.Name == "":
		d.fail(p("metadata.name"), "missing name")
	case !isSubdomain(o.Metadata.Name):
		d.fail(p("metadata.name"), "name %q is not a valid Kubernetes name (lowercase letters, digits, '-' and '.')", o.Metadata.Name)
	}
	if o.Metadata.Namespace == "" && !clusterScoped(o.Kind) {
		o.Metadata.Namespace = "default"
	}
	if o.Metadata.Namespace != "" && !isName(o.Metadata.Namespace) {
		d.fail(p("metadata.namespace"), "namespace %q is not a valid Kubernetes name (lowercase letters, digits and '-')", o.Metadata.Namespace)
	}
	for k := range o.Metadata.Labels {
		if !labelKey.MatchString(k) {
			d.fail(p("metadata.labels["+k+"]"), "label key %q is not valid", k)
		}
	}
	switch v := obj.(type) {
	case *MeshConfig:
		validateMesh(d, &v.Spec, p("spec"))
	case *Policy:
		validatePolicy(d, v, p("spec"))
	case *DestinationRule:
		validateDR(d, &v.Spec, p("spec"))
	case *RbacConfig:
		validateRbacConfig(d, v, p("spec"))
	case *ServiceRole:
		validateRole(d, &v.Spec, p("spec"))
	case *ServiceRoleBinding:
		validateBinding(d, &v.Spec, p("spec"))
	case *Sidecar:
		validateSidecar(d, &v.Spec, p("spec"))
	case *Service:
		validateService(d, v, p("spec"))
	case *Workload:
		validateWorkload(d, v, p("spec"))
	}
}

func validateMesh(d *decoder, s *MeshConfigSpec, path string) {
	switch s.AuthPolicy {
	case "", AuthPolicyNone, AuthPolicyMutualTLS:
	default:
		d.fail(path+".authPolicy", "unknown authPolicy %q (want NONE or MUTUAL_TLS)", s.AuthPolicy)
	}
	if s.TrustDomain != "" {
		if _, err := identity.New(s.TrustDomain, "ns", "sa"); err != nil {
			d.fail(path+".trustDomain", "trust domain %q is not valid (lowercase letters, digits, '.', '-', '_')", s.TrustDomain)
		}
	}
	for i, h := range s.MTLSExcludedServices {
		if r := CheckHost(h); r != "" {
			d.fail(fmt.Sprintf("%s.mtlsExcludedServices[%d]", path, i), "%s", r)
		}
	}
}

func validatePolicy(d *decoder, v *Policy, path string) {
	s := &v.Spec
	if v.Kind == KindMeshPolicy {
		if v.Metadata.Name != "default" {
			d.fail(joinPath(objPath(path), "metadata.name"), "a MeshPolicy must be named \"default\"")
		}
		if len(s.Targets) > 0 {
			d.fail(path+".targets", "a MeshPolicy applies to the whole mesh and takes no targets")
		}
	} else if len(s.Targets) == 0 && v.Metadata.Name != "default" {
		d.fail(path, "a Policy without targets applies to its whole namespace and must be named \"default\" (name it default, or add targets)")
	}
	for i, t := range s.Targets {
		tp := fmt.Sprintf("%s.targets[%d]", path, i)
		if !isName(t.Name) {
			d.fail(tp+".name", "target %q is not a service name (a DNS label in the policy's namespace)", t.Name)
		}
		for j, ps := range t.Ports {
			checkPortSelector(d, ps, fmt.Sprintf("%s.ports[%d]", tp, j))
		}
	}
	for i, peer := range s.Peers {
		pp := fmt.Sprintf("%s.peers[%d]", path, i)
		switch {
		case peer.JWT.Node != nil:
			d.fail(pp+".jwt", "jwt peer authentication is not supported by meshauth; use mtls")
		case peer.MTLS == nil:
			d.fail(pp, "a peer needs mtls (write `mtls: {}` for STRICT)")
		default:
			switch peer.MTLS.Mode {
			case "", MTLSStrict, MTLSPermissive:
			default:
				d.fail(pp+".mtls.mode", "unknown mode %q (want STRICT or PERMISSIVE)", peer.MTLS.Mode)
			}
			if peer.MTLS.AllowTLS {
				d.fail(pp+".mtls.allowTls", "allowTls (TLS without a client certificate) is not supported; use mode: PERMISSIVE")
			}
		}
	}
	if s.Origins.Node != nil {
		d.fail(path+".origins", "origins (end-user JWT authentication) are not supported by meshauth; remove spec.origins")
	}
	switch s.PrincipalBinding {
	case "", "USE_PEER":
	case "USE_ORIGIN":
		d.fail(path+".principalBinding", "USE_ORIGIN is not supported (origins are not supported); use USE_PEER")
	default:
		d.fail(path+".principalBinding", "unknown principalBinding %q (want USE_PEER)", s.PrincipalBinding)
	}
}

func checkPortSelector(d *decoder, ps PortSelector, path string) {
	switch {
	case ps.Number == 0 && ps.Name == "":
		d.fail(path, "a port needs number or name")
	case ps.Number != 0 && ps.Name != "":
		d.fail(path, "a port takes number or name, not both")
	case ps.Number > 65535:
		d.fail(path+".number", "port %d out of range 1-65535", ps.Number)
	}
}

func validateDR(d *decoder, s *DestinationRuleSpec, path string) {
	if r := CheckHost(s.Host); r != "" {
		d.fail(path+".host", "bad host %q: %s", s.Host, r)
	}
	validateTrafficPolicy(d, s.TrafficPolicy, path+".trafficPolicy")
	seen := map[string]bool{}
	for i, ss := range s.Subsets {
		sp := fmt.Sprintf("%s.subsets[%d]", path, i)
		if !isName(ss.Name) {
			d.fail(sp+".name", "subset name %q is not a DNS label", ss.Name)
		}
		if seen[ss.Name] {
			d.fail(sp+".name", "duplicate subset %q", ss.Name)
		}
		seen[ss.Name] = true
		validateTrafficPolicy(d, ss.TrafficPolicy, sp+".trafficPolicy")
	}
	for i, e := range s.ExportTo {
		if e != "*" && e != "." {
			d.fail(fmt.Sprintf("%s.exportTo[%d]", path, i), "exportTo takes \"*\" or \".\", got %q", e)
		}
	}
}

func validateTrafficPolicy(d *decoder, tp *TrafficPolicy, path string) {
	if tp == nil {
		return
	}
	validateTLS(d, tp.TLS, path+".tls")
	ports := map[string]bool{}
	for i, pl := range tp.PortLevelSettings {
		pp := fmt.Sprintf("%s.portLevelSettings[%d]", path, i)
		checkPortSelector(d, pl.Port, pp+".port")
		key := pl.Port.Name + "/" + strconv.Itoa(int(pl.Port.Number))
		if ports[key] {
			d.fail(pp+".port", "port listed twice in portLevelSettings")
		}
		ports[key] = true
		validateTLS(d, pl.TLS, pp+".tls")
	}
}

func validateTLS(d *decoder, t *TLSSettings, path string) {
	if t == nil {
		return
	}
	switch t.Mode {
	case TLSDisable, TLSSimple, TLSIstioMutual:
	case TLSMutual:
		if t.ClientCertificate == "" || t.PrivateKey == "" {
			d.fail(path, "mode MUTUAL needs clientCertificate and privateKey (or use ISTIO_MUTUAL for mesh certificates)")
		}
	case "":
		d.fail(path+".mode", "missing mode (want DISABLE, SIMPLE, MUTUAL or ISTIO_MUTUAL)")
	default:
		d.fail(path+".mode", "unknown mode %q (want DISABLE, SIMPLE, MUTUAL or ISTIO_MUTUAL)", t.Mode)
	}
	if t.Mode == TLSIstioMutual && (t.ClientCertificate != "" || t.PrivateKey != "" || t.CACertificates != "") {
		d.fail(path, "mode ISTIO_MUTUAL uses the mesh's certificates; remove clientCertificate, privateKey and caCertificates")
	}
}

func validateRbacConfig(d *decoder, v *RbacConfig, path string) {
	s := &v.Spec
	if v.Metadata.Name != "default" {
		d.fail(joinPath(objPath(path), "metadata.name"), "%s is a singleton and must be named \"default\"", v.Kind)
	}
	switch s.Mode {
	case RbacOff, RbacOn:
	case RbacOnWithInclusion:
		if s.Inclusion == nil {
			d.fail(path+".inclusion", "mode ON_WITH_INCLUSION needs inclusion (services and/or namespaces)")
		}
	case RbacOnWithExclusion:
		if s.Exclusion == nil {
			d.fail(path+".exclusion", "mode ON_WITH_EXCLUSION needs exclusion (services and/or namespaces)")
		}
	case "":
		d.fail(path+".mode", "missing mode (want OFF, ON, ON_WITH_INCLUSION or ON_WITH_EXCLUSION)")
	default:
		d.fail(path+".mode", "unknown mode %q (want OFF, ON, ON_WITH_INCLUSION or ON_WITH_EXCLUSION)", s.Mode)
	}
	for name, t := range map[string]*RbacTarget{"inclusion": s.Inclusion, "exclusion": s.Exclusion} {
		if t == nil {
			continue
		}
		for i, h := range t.Services {
			if r := CheckHost(h); r != "" && h != "*" {
				d.fail(fmt.Sprintf("%s.%s.services[%d]", path, name, i), "bad service %q: %s", h, r)
			}
		}
		for i, ns := range t.Namespaces {
			if !isName(ns) {
				d.fail(fmt.Sprintf("%s.%s.namespaces[%d]", path, name, i), "namespace %q is not a valid Kubernetes name", ns)
			}
		}
	}
	switch s.EnforcementMode {
	case "", "ENFORCED":
	case "PERMISSIVE":
		d.fail(path+".enforcementMode", "enforcementMode PERMISSIVE (log but allow) is not supported; use ENFORCED")
	default:
		d.fail(path+".enforcementMode", "unknown enforcementMode %q (want ENFORCED)", s.EnforcementMode)
	}
}

// checkPattern validates an RBAC value: "*", exact, "prefix*" or "*suffix".
func checkPattern(v string) string {
	if v == "" {
		return "empty value"
	}
	if v == "*" {
		return ""
	}
	inner := strings.TrimSuffix(strings.TrimPrefix(v, "*"), "*")
	if strings.Contains(inner, "*") || (strings.HasPrefix(v, "*") && strings.HasSuffix(v, "*")) {
		return "a wildcard is allowed only at the start (\"*suffix\") or the end (\"prefix*\")"
	}
	return ""
}

// constraintKeys are the ServiceRole constraint keys we can evaluate.
var constraintKeys = []string{"destination.labels[<name>]", "destination.port", "destination.namespace", "destination.user"}

func validateRole(d *decoder, s *ServiceRoleSpec, path string) {
	if len(s.Rules) == 0 {
		d.fail(path+".rules", "a ServiceRole needs at least one rule")
	}
	for i, r := range s.Rules {
		rp := fmt.Sprintf("%s.rules[%d]", path, i)
		if len(r.Services) == 0 {
			d.fail(rp+".services", "a rule needs services (use [\"*\"] for all)")
		}
		for j, v := range r.Services {
			if e := checkPattern(v); e != "" {
				d.fail(fmt.Sprintf("%s.services[%d]", rp, j), "%s", e)
			}
		}
		for j, m := range r.Methods {
			if m != "*" && !httpMethod.MatchString(m) {
				d.fail(fmt.Sprintf("%s.methods[%d]", rp, j), "method %q is not an HTTP method (uppercase, e.g. GET) or \"*\"", m)
			}
		}
		for j, pth := range r.Paths {
			if e := checkPattern(pth); e != "" {
				d.fail(fmt.Sprintf("%s.paths[%d]", rp, j), "%s", e)
			}
		}
		for j, c := range r.Constraints {
			cp := fmt.Sprintf("%s.constraints[%d]", rp, j)
			label := strings.HasPrefix(c.Key, "destination.labels[") && strings.HasSuffix(c.Key, "]") && len(c.Key) > len("destination.labels[]")
			switch {
			case label, c.Key == "destination.namespace", c.Key == "destination.user":
			case c.Key == "destination.port":
				for k, v := range c.Values {
					if n, err := strconv.Atoi(v); err != nil || n < 1 || n > 65535 {
						d.fail(fmt.Sprintf("%s.values[%d]", cp, k), "destination.port values are port numbers, got %q", v)
					}
				}
			default:
				d.fail(cp+".key", "constraint key %q is not supported (supported: %s)", c.Key, strings.Join(constraintKeys, ", "))
			}
			if len(c.Values) == 0 {
				d.fail(cp+".values", "a constraint needs values")
			}
			for k, v := range c.Values {
				if e := checkPattern(v); e != "" {
					d.fail(fmt.Sprintf("%s.values[%d]", cp, k), "%s", e)
				}
			}
		}
	}
}

// subjectProperties are the ServiceRoleBinding properties we evaluate.
var subjectProperties = []string{"source.namespace", "source.principal"}

func validateBinding(d *decoder, s *ServiceRoleBindingSpec, path string) {
	if len(s.Subjects) == 0 {
		d.fail(path+".subjects", "a ServiceRoleBinding needs at least one subject")
	}
	for i, sub := range s.Subjects {
		sp := fmt.Sprintf("%s.subjects[%d]", path, i)
		if sub.Group != "" {
			d.fail(sp+".group", "group subjects are not supported; name users or use properties")
		}
		if sub.User == "" && len(sub.Properties) == 0 && sub.Group == "" {
			d.fail(sp, "a subject needs user (a principal like cluster.local/ns/default/sa/sleep, or \"*\") or properties")
		}
		if sub.User != "" {
			if e := checkPattern(sub.User); e != "" {
				d.fail(sp+".user", "%s", e)
			}
		}
		keys := make([]string, 0, len(sub.Properties))
		for k := range sub.Properties {
			keys = append(keys, k)
		}
		sort.Strings(keys)
		for _, k := range keys {
			ok := false
			for _, a := range subjectProperties {
				ok = ok || a == k
			}
			if !ok {
				d.fail(sp+".properties["+k+"]", "property %q is not supported (supported: %s)", k, strings.Join(subjectProperties, ", "))
			} else if e := checkPattern(sub.Properties[k]); e != "" {
				d.fail(sp+".properties["+k+"]", "%s", e)
			}
		}
	}
	if s.RoleRef.Kind != KindServiceRole {
		d.fail(path+".roleRef.kind", "roleRef.kind must be ServiceRole, got %q", s.RoleRef.Kind)
	}
	if s.RoleRef.Name == "" {
		d.fail(path+".roleRef.name", "roleRef needs the name of a ServiceRole in the binding's namespace")
	}
}

func validateSidecar(d *decoder, s *SidecarSpec, path string) {
	if s.Ingress.Node != nil {
		d.fail(path+".ingress", "Sidecar ingress listeners are not supported; meshauth configures inbound from Services and Policies")
	}
	if s.OutboundTrafficPolicy.Node != nil {
		d.fail(path+".outboundTrafficPolicy", "outboundTrafficPolicy is not supported")
	}
	if s.WorkloadSelector != nil && len(s.WorkloadSelector.Labels) == 0 {
		d.fail(path+".workloadSelector.labels", "a workloadSelector needs labels (or remove it to apply to the whole namespace)")
	}
	if len(s.Egress) == 0 {
		d.fail(path+".egress", "a Sidecar needs egress hosts (e.g. [\"./*\", \"istio-system/*\"])")
	}
	for i, e := range s.Egress {
		ep := fmt.Sprintf("%s.egress[%d]", path, i)
		if e.Port.Node != nil || e.Bind != "" || e.CaptureMode != "" {
			d.fail(ep, "egress port, bind and captureMode are not supported; list hosts only")
		}
		if len(e.Hosts) == 0 {
			d.fail(ep+".hosts", "an egress listener needs hosts")
		}
		for j, h := range e.Hosts {
			if r := CheckEgressHost(h); r != "" {
				d.fail(fmt.Sprintf("%s.hosts[%d]", ep, j), "bad egress host %q: %s", h, r)
			}
		}
	}
}

// CheckEgressHost validates a Sidecar egress host "namespace/dnsName".
func CheckEgressHost(h string) string {
	ns, host, ok := strings.Cut(h, "/")
	if !ok {
		return `want "namespace/host", e.g. "./*" or "istio-system/*"`
	}
	if ns != "*" && ns != "." && !isName(ns) {
		return fmt.Sprintf("namespace %q is not \"*\", \".\" or a namespace name", ns)
	}
	if host == "*" {
		return ""
	}
	return CheckHost(host)
}

func validateService(d *decoder, v *Service, path string) {
	s := &v.Spec
	if !isName(v.Metadata.Name) {
		d.fail(joinPath(objPath(path), "metadata.name"), "service name %q is not a DNS label (lowercase letters, digits and '-', at most 63)", v.Metadata.Name)
	}
	if len(s.Ports) == 0 {
		d.fail(path+".ports", "a Service needs at least one port")
	}
	names, numbers := map[string]bool{}, map[uint32]bool{}
	for i, pt := range s.Ports {
		pp := fmt.Sprintf("%s.ports[%d]", path, i)
		if pt.Number == 0 || pt.Number > 65535 {
			d.fail(pp+".number", "port %d out of range 1-65535", pt.Number)
		}
		if pt.TargetPort > 65535 {
			d.fail(pp+".targetPort", "targetPort %d out of range 1-65535", pt.TargetPort)
		}
		if numbers[pt.Number] {
			d.fail(pp+".number", "port %d listed twice", pt.Number)
		}
		numbers[pt.Number] = true
		if pt.Name != "" {
			if !isName(pt.Name) {
				d.fail(pp+".name", "port name %q is not a DNS label", pt.Name)
			}
			if names[pt.Name] {
				d.fail(pp+".name", "port name %q used twice", pt.Name)
			}
			names[pt.Name] = true
		}
		checkProtocol(d, pt.Protocol, pp+".protocol")
	}
	if s.Address != "" {
		if _, err := netip.ParseAddr(s.Address); err != nil {
			d.fail(path+".address", "address %q is not an IP address", s.Address)
		}
	}
	// Secure-naming annotations must name valid identities: a typo here
	// would make clients refuse (or accept) the wrong servers.
	meta := joinPath(objPath(path), "metadata.annotations")
	for _, sa := range splitList(v.Metadata.Annotations["alpha.istio.io/kubernetes-serviceaccounts"]) {
		if !isSubdomain(sa) {
			d.fail(meta+"[alpha.istio.io/kubernetes-serviceaccounts]", "service account %q is not a valid Kubernetes name", sa)
		}
	}
	for _, id := range splitList(v.Metadata.Annotations["alpha.istio.io/canonical-serviceaccounts"]) {
		if _, err := identity.Parse(id); err != nil {
			d.fail(meta+"[alpha.istio.io/canonical-serviceaccounts]", "%q is not a workload SPIFFE ID (spiffe://<trust-domain>/ns/<namespace>/sa/<service-account>)", id)
		}
	}
	// The identities allowed to register as endpoints (and so trusted by
	// secure naming): a typo would admit nobody, or the wrong workload.
	seen := map[string]bool{}
	for i, sa := range s.ServiceAccounts {
		p := fmt.Sprintf("%s.serviceAccounts[%d]", path, i)
		switch {
		case !isSubdomain(sa):
			d.fail(p, "service account %q is not a valid Kubernetes name (a name in the Service's namespace; full SPIFFE IDs go in subjectAltNames)", sa)
		case seen[sa]:
			d.fail(p, "service account %q listed twice", sa)
		}
		seen[sa] = true
	}
	for i, id := range s.SubjectAltNames {
		p := fmt.Sprintf("%s.subjectAltNames[%d]", path, i)
		switch _, err := identity.Parse(id); {
		case err != nil:
			d.fail(p, "%q is not a workload SPIFFE ID (spiffe://<trust-domain>/ns/<namespace>/sa/<service-account>)", id)
		case seen[id]:
			d.fail(p, "%q listed twice", id)
		}
		seen[id] = true
	}
}

// objPath turns the path of an object's spec into the object's own path
// ("spec" -> "", "items[2].spec" -> "items[2]").
func objPath(specPath string) string {
	return strings.TrimSuffix(strings.TrimSuffix(specPath, "spec"), ".")
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

func checkProtocol(d *decoder, proto, path string) {
	if proto == "" {
		return
	}
	for _, p := range protocols {
		if strings.EqualFold(p, proto) {
			return
		}
	}
	d.fail(path, "unknown protocol %q (want one of %s)", proto, strings.Join(protocols, ", "))
}

func validateWorkload(d *decoder, v *Workload, path string) {
	s := &v.Spec
	if s.ServiceAccount != "" && !isSubdomain(s.ServiceAccount) {
		d.fail(path+".serviceAccount", "service account %q is not a valid Kubernetes name", s.ServiceAccount)
	}
	if s.Address == "" {
		d.fail(path+".address", "a Workload needs an address (IP or host name)")
	} else if _, err := netip.ParseAddr(s.Address); err != nil && !isSubdomain(s.Address) {
		d.fail(path+".address", "address %q is neither an IP address nor a host name", s.Address)
	}
	seen := map[uint32]bool{}
	for i, pt := range s.Ports {
		pp := fmt.Sprintf("%s.ports[%d]", path, i)
		if pt.Number == 0 || pt.Number > 65535 {
			d.fail(pp+".number", "port %d out of range 1-65535", pt.Number)
		}
		if pt.SidecarPort > 65535 {
			d.fail(pp+".sidecarPort", "port %d out of range 1-65535", pt.SidecarPort)
		}
		if seen[pt.Number] {
			d.fail(pp+".number", "port %d listed twice", pt.Number)
		}
		seen[pt.Number] = true
		checkProtocol(d, pt.Protocol, pp+".protocol")
	}
}
