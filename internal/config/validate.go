package config

import (
	"fmt"
	"maps"
	"net/netip"
	"net/url"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"time"

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

// wildcardLabel is Istio's first label of a host: "*", or a DNS label with
// an optional "*" or "*-" in front ("*foo", "*-foo").
var wildcardLabel = regexp.MustCompile(`^(\*|(\*|\*-)?[a-z0-9]([-a-z0-9]*[a-z0-9])?)$`)

// CheckHost validates a DestinationRule-style host as Istio 1.0's
// ValidateWildcardDomain does: a DNS name whose first label may be "*" or
// start with "*" ("httpbin", "httpbin.default.svc.cluster.local",
// "*.default.svc.cluster.local", "*.local", "*", "*foo.bar.com"), at most
// 255 characters. A wildcard matches every host that ends with what
// follows it. Unlike Istio, hosts must be lowercase. It returns a reason or
// "".
func CheckHost(h string) string {
	switch {
	case h == "":
		return "empty domain name not allowed"
	case len(h) > 255:
		return "domain name too long (max 255)"
	case strings.ToLower(h) != h:
		return "hosts are lowercase DNS names"
	}
	first, rest, more := strings.Cut(h, ".")
	if !strings.Contains(first, "*") && !isName(first) {
		return fmt.Sprintf("label %q is not a DNS label (lowercase letters, digits and '-', at most 63)", first)
	}
	if len(first) > 63 || !wildcardLabel.MatchString(first) {
		return fmt.Sprintf("label %q invalid: a wildcard is allowed only at the start of the first label (\"*\", \"*.example.com\", \"*foo.example.com\")", first)
	}
	if !more {
		return ""
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
	case *Authorization:
		validateAuthorization(d, &v.Spec, p("spec"))
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
	} else {
		// Istio's naming rule changed: 0.8 applied a target-less Policy of
		// any name to its namespace; 1.0 requires the name "default" for
		// it and refuses "default" with targets. We take both forms a
		// release accepted, except the one that would be read two ways.
		if len(s.Targets) == 0 && v.Metadata.Name != "default" {
			d.warn(path, "a Policy without targets applies to its whole namespace, as in Istio 0.8; Istio 1.0 refuses it (authentication policy with no target rules must be named \"default\", found %q): rename it to default", v.Metadata.Name)
		}
		if len(s.Targets) > 0 && v.Metadata.Name == "default" {
			d.fail(path+".targets", "authentication policy with name \"default\" must not have any target rules (Istio 1.0: \"default\" is the namespace-wide policy); rename this Policy or remove its targets")
		}
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
	issuers := map[string]bool{}
	for i, peer := range s.Peers {
		pp := fmt.Sprintf("%s.peers[%d]", path, i)
		switch {
		case peer.JWT != nil:
			validateJWT(d, peer.JWT, pp+".jwt", issuers)
			d.fail(pp+".jwt", "jwt peer authentication is not supported by meshauth (a peer is authenticated by its mesh certificate); use mtls here and put the JWT in origins")
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
	for i, o := range s.Origins {
		op := fmt.Sprintf("%s.origins[%d]", path, i)
		if o.JWT == nil {
			d.fail(op, "an origin needs jwt (issuer, jwksUri)")
			continue
		}
		validateJWT(d, o.JWT, op+".jwt", issuers)
	}
	switch s.PrincipalBinding {
	case "", "USE_PEER":
	case "USE_ORIGIN":
		if len(s.Origins) == 0 {
			d.warn(path+".principalBinding", "USE_ORIGIN without origins: requests get no request.auth.principal, so RBAC rules on it never match")
		}
	default:
		d.fail(path+".principalBinding", "unknown principalBinding %q (want USE_PEER or USE_ORIGIN)", s.PrincipalBinding)
	}
	if s.OriginIsOptional && len(s.Origins) == 0 {
		d.warn(path+".originIsOptional", "originIsOptional without origins has no effect")
	}
}

// validateJWT runs Istio's checks of a Jwt (issuer set and not already
// used in the policy, non-empty audiences and token locations) and
// meshauth's: the keys come from an https jwksUri (fetched through the
// sidecar's TLS profile), since keys fetched over plain http could be
// replaced by anyone on the path, and meshauth does no OpenID discovery.
func validateJWT(d *decoder, j *JWT, path string, issuers map[string]bool) {
	switch {
	case j.Issuer == "":
		d.fail(path+".issuer", "issuer must be set")
	case issuers[j.Issuer]:
		d.fail(path+".issuer", "jwt with issuer %q already defined", j.Issuer)
	}
	issuers[j.Issuer] = true
	for i, a := range j.Audiences {
		if a == "" {
			d.fail(fmt.Sprintf("%s.audiences[%d]", path, i), "audience must be non-empty string")
		}
	}
	if r := CheckJwksURI(j.JwksURI); r != "" {
		d.fail(path+".jwksUri", "%s", r)
	}
	for i, h := range j.JWTHeaders {
		if h == "" || !httpToken.MatchString(h) {
			d.fail(fmt.Sprintf("%s.jwtHeaders[%d]", path, i), "location header must be non-empty string (an HTTP header name), got %q", h)
		}
	}
	for i, q := range j.JWTParams {
		if q == "" {
			d.fail(fmt.Sprintf("%s.jwtParams[%d]", path, i), "location query must be non-empty string")
		}
	}
}

// httpToken is an HTTP header name (RFC 9110 token).
var httpToken = regexp.MustCompile("^[!#$%&'*+.^_`|~0-9A-Za-z-]+$")

// CheckJwksURI checks a jwksUri as Istio's ParseJwksURI does (a URL with a
// numeric port if any), and that it is https with a host. It returns a
// reason or "".
func CheckJwksURI(s string) string {
	if s == "" {
		return "jwksUri must be set: meshauth fetches the issuer's keys from it (no OpenID discovery)"
	}
	u, err := url.Parse(s)
	if err != nil {
		return fmt.Sprintf("jwksUri %q is not a URL: %v", s, err)
	}
	switch u.Scheme {
	case "https":
	case "http":
		return fmt.Sprintf("jwksUri %q: URI scheme \"http\" is refused: keys fetched without TLS could be replaced by anyone on the path; use https", s)
	default:
		return fmt.Sprintf("jwksUri %q: URI scheme %q is not supported (want https)", s, u.Scheme)
	}
	if u.Hostname() == "" {
		return fmt.Sprintf("jwksUri %q has no host", s)
	}
	if p := u.Port(); p != "" {
		if n, err := strconv.Atoi(p); err != nil || n < 1 || n > 65535 {
			return fmt.Sprintf("jwksUri %q: port %q is not a number in 1-65535", s, p)
		}
	}
	return ""
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
		for _, k := range slices.Sorted(maps.Keys(ss.Labels)) {
			if !istioTag.MatchString(k) {
				d.fail(sp+".labels["+k+"]", "invalid tag key: %q (letters, digits, '-', '_', '.', '/')", k)
			}
			if v := ss.Labels[k]; !istioTag.MatchString(v) {
				d.fail(sp+".labels["+k+"]", "invalid tag value: %q (letters, digits, '-', '_', '.', '/')", v)
			}
		}
		validateTrafficPolicy(d, ss.TrafficPolicy, sp+".trafficPolicy")
	}
	for i, e := range s.ExportTo {
		if e != "*" && e != "." {
			d.fail(fmt.Sprintf("%s.exportTo[%d]", path, i), "exportTo takes \"*\" or \".\", got %q", e)
		}
	}
}

// istioTag is Istio's label key and value syntax (Labels.Validate).
var istioTag = regexp.MustCompile(`^[-A-Za-z0-9_./]*$`)

// validateTrafficPolicy runs Istio 1.0's checks of a traffic policy (and
// 0.8's of outlier detection): no empty policy, pool or outlier block, no
// negative limit, durations of at least 1ms in whole milliseconds, a
// percentage in 0..100, a port on every port-level policy.
func validateTrafficPolicy(d *decoder, tp *TrafficPolicy, path string) {
	if tp == nil {
		return
	}
	if tp.LoadBalancer == nil && tp.ConnectionPool == nil && tp.OutlierDetection == nil && tp.TLS == nil && len(tp.PortLevelSettings) == 0 {
		d.fail(path, "traffic policy must have at least one field")
	}
	validateLoadBalancer(d, tp.LoadBalancer, path+".loadBalancer")
	validateConnectionPool(d, tp.ConnectionPool, path+".connectionPool")
	validateOutlierDetection(d, tp.OutlierDetection, path+".outlierDetection")
	validateTLS(d, tp.TLS, path+".tls")
	ports := map[string]bool{}
	for i, pl := range tp.PortLevelSettings {
		pp := fmt.Sprintf("%s.portLevelSettings[%d]", path, i)
		if pl.Port == nil {
			d.fail(pp+".port", "portTrafficPolicy must have valid port")
		} else {
			checkPortSelector(d, *pl.Port, pp+".port")
			key := pl.Port.Name + "/" + strconv.Itoa(int(pl.Port.Number))
			if ports[key] {
				d.fail(pp+".port", "port listed twice in portLevelSettings")
			}
			ports[key] = true
		}
		if pl.LoadBalancer == nil && pl.ConnectionPool == nil && pl.OutlierDetection == nil && pl.TLS == nil {
			d.fail(pp, "port traffic policy must have at least one field")
		}
		validateLoadBalancer(d, pl.LoadBalancer, pp+".loadBalancer")
		validateConnectionPool(d, pl.ConnectionPool, pp+".connectionPool")
		validateOutlierDetection(d, pl.OutlierDetection, pp+".outlierDetection")
		validateTLS(d, pl.TLS, pp+".tls")
	}
}

func validateLoadBalancer(d *decoder, lb *LoadBalancerSettings, path string) {
	if lb == nil {
		return
	}
	switch lb.Simple {
	case "", "ROUND_ROBIN", "LEAST_CONN", "RANDOM", "PASSTHROUGH":
	default:
		d.fail(path+".simple", "unknown load balancer %q (want ROUND_ROBIN, LEAST_CONN, RANDOM or PASSTHROUGH)", lb.Simple)
	}
	if lb.Simple != "" && lb.ConsistentHash != nil {
		d.fail(path, "simple and consistentHash are alternatives; set one")
	}
	if ch := lb.ConsistentHash; ch != nil && ch.HTTPHeader != "" && ch.HTTPHeaderName != "" {
		d.fail(path+".consistentHash", "httpHeader (Istio 0.8) and httpHeaderName (1.0) are the same setting; set one")
	}
	if ch := lb.ConsistentHash; ch != nil && ch.HTTPCookie != nil && ch.HTTPCookie.TTL != "" {
		if _, err := parseDuration(ch.HTTPCookie.TTL); err != nil {
			d.fail(path+".consistentHash.httpCookie.ttl", "%v", err)
		}
	}
}

func validateConnectionPool(d *decoder, cp *ConnectionPoolSettings, path string) {
	if cp == nil {
		return
	}
	if cp.HTTP == nil && cp.TCP == nil {
		d.fail(path, "connection pool must have at least one field")
	}
	if h := cp.HTTP; h != nil {
		for _, c := range []struct {
			v    int32
			name string
			msg  string
		}{
			{h.HTTP1MaxPendingRequests, "http1MaxPendingRequests", "http1 max pending requests must be non-negative"},
			{h.HTTP2MaxRequests, "http2MaxRequests", "http2 max requests must be non-negative"},
			{h.MaxRequestsPerConnection, "maxRequestsPerConnection", "max requests per connection must be non-negative"},
			{h.MaxRetries, "maxRetries", "max retries must be non-negative"},
		} {
			if c.v < 0 {
				d.fail(path+".http."+c.name, "%s", c.msg)
			}
		}
	}
	if t := cp.TCP; t != nil {
		if t.MaxConnections < 0 {
			d.fail(path+".tcp.maxConnections", "max connections must be non-negative")
		}
		checkDuration(d, t.ConnectTimeout, path+".tcp.connectTimeout")
	}
}

func validateOutlierDetection(d *decoder, od *OutlierDetection, path string) {
	if od == nil {
		return
	}
	flat := od.ConsecutiveErrors != 0 || od.Interval != "" || od.BaseEjectionTime != "" || od.MaxEjectionPercent != 0
	switch {
	case !flat && od.HTTP == nil:
		d.fail(path, "outlier detection must have at least one field (Istio 0.8 refuses an empty one)")
	case flat && od.HTTP != nil:
		d.fail(path, "write the outlier detection fields at this level (Istio 1.0) or under http (0.8), not both")
	}
	for _, o := range []struct {
		od   *OutlierDetection
		path string
	}{{od, path}, {od.HTTP, path + ".http"}} {
		if o.od == nil {
			continue
		}
		if o.od.HTTP != nil && o.od != od {
			d.fail(o.path+".http", "http is not nested")
		}
		if o.od.ConsecutiveErrors < 0 {
			d.fail(o.path+".consecutiveErrors", "outlier detection consecutive errors cannot be negative")
		}
		checkDuration(d, o.od.Interval, o.path+".interval")
		checkDuration(d, o.od.BaseEjectionTime, o.path+".baseEjectionTime")
		if p := o.od.MaxEjectionPercent; p < 0 || p > 100 {
			d.fail(o.path+".maxEjectionPercent", "percentage %d is not in range 0..100", p)
		}
	}
}

// checkDuration applies Istio's ValidateDuration to a set duration: at
// least 1ms, in whole milliseconds.
func checkDuration(d *decoder, s, path string) {
	if s == "" {
		return
	}
	dur, err := parseDuration(s)
	switch {
	case err != nil:
		d.fail(path, "%v", err)
	case dur < time.Millisecond:
		d.fail(path, "duration must be greater than 1ms, got %s", s)
	case dur%time.Millisecond != 0:
		d.fail(path, "only durations to ms precision are supported, got %s", s)
	}
}

// parseDuration reads a protobuf JSON duration ("2s", "0.5s") or a Go
// duration ("1m30s"), which Istio's jsonpb also took.
func parseDuration(s string) (time.Duration, error) {
	dur, err := time.ParseDuration(s)
	if err != nil || dur < 0 {
		return 0, fmt.Errorf("bad duration %q (want e.g. \"2s\", \"100ms\")", s)
	}
	return dur, nil
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
		if len(r.Methods) == 0 {
			d.fail(rp+".methods", "at least 1 method must be specified for rule %d (use [\"*\"] for all)", i)
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
			checkConstraintKey(d, c, cp, i, j)
			if len(c.Values) == 0 {
				d.fail(cp+".values", "at least 1 value must be specified for constraint %d in rule %d", j, i)
			}
			for k, v := range c.Values {
				if e := checkPattern(v); e != "" {
					d.fail(fmt.Sprintf("%s.values[%d]", cp, k), "%s", e)
				}
			}
		}
	}
}

func validateBinding(d *decoder, s *ServiceRoleBindingSpec, path string) {
	if len(s.Subjects) == 0 {
		d.fail(path+".subjects", "a ServiceRoleBinding needs at least one subject")
	}
	for i, sub := range s.Subjects {
		sp := fmt.Sprintf("%s.subjects[%d]", path, i)
		if sub.Group != "" && sub.Group != "*" {
			d.warn(sp+".group", "group %q never matches: meshauth knows no groups (Istio 0.8's authorization instance set none, so its Mixer matched only \"*\"; Istio 1.0 ignored groups); this subject grants nothing", sub.Group)
		}
		if sub.User == "" && len(sub.Properties) == 0 && sub.Group == "" {
			d.fail(sp, "at least 1 of user, group or properties must be specified for subject %d (user: a principal like cluster.local/ns/default/sa/sleep, or \"*\")", i)
		}
		if sub.User != "" {
			if e := checkPattern(sub.User); e != "" {
				d.fail(sp+".user", "%s", e)
			}
		}
		for _, k := range slices.Sorted(maps.Keys(sub.Properties)) {
			pp := sp + ".properties[" + k + "]"
			checkSubjectProperty(d, k, pp)
			if e := checkPattern(sub.Properties[k]); e != "" {
				d.fail(pp, "%s", e)
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
	if strings.HasPrefix(host, "*") && !strings.HasPrefix(host, "*.") {
		return `an egress wildcard is "*" or "*.suffix"`
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
