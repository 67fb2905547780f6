package policy

import (
	"fmt"
	"slices"
	"sort"
	"strconv"
	"strings"
)

// Request is one inbound request (or TCP connection) to authorize.
type Request struct {
	// Source is the caller's SPIFFE ID; empty for a plaintext peer.
	Source string
	// Port is the destination workload port.
	Port uint32
	// Service is the destination service (name.namespace) if known.
	Service string
	// Method and Path are set for HTTP; empty for TCP.
	Method string
	Path   string
	// Auth is the request's verified end-user credential (an origin JWT
	// the sidecar verified), nil without one.
	Auth *RequestAuth
}

// RequestAuth is what Istio calls request.auth: the principal the
// Policy's principalBinding chose, and the verified token's audiences,
// presenter and claims.
type RequestAuth struct {
	// Principal is request.auth.principal: the token's "iss/sub" with
	// principalBinding USE_ORIGIN, the peer's principal with USE_PEER.
	Principal string
	Audiences []string
	Presenter string
	// Claims are the token's claims as JSON decodes them.
	Claims map[string]any
}

// Decision is the outcome of Authorize, with the rule that decided.
type Decision struct {
	Allow bool `json:"allow"`
	// Reason is a human-readable explanation ("no ServiceRoleBinding grants
	// spiffe://... GET /admin").
	Reason string `json:"reason"`
	// DecidedBy names the objects (kind/namespace/name) that decided.
	DecidedBy []string `json:"decidedBy,omitempty"`
}

// DNSDomain is the cluster DNS suffix used to build a service's fully
// qualified name (httpbin.default.svc.cluster.local), as ServiceRole
// `services` entries are written in Istio.
const DNSDomain = "cluster.local"

// Authorize decides whether r is allowed by the snapshot's RBAC rules.
//
// The semantics are Istio's RBAC (rbac.istio.io/v1alpha1): with RBAC off
// (s.RBAC == nil) every request is allowed; with RBAC on, a request is
// allowed only if some ServiceRole rule matches it (services, methods, paths,
// constraints) AND some subject of a binding to that role matches the caller.
// Everything else is denied. Matching fails closed: a rule with HTTP-only
// fields (methods or paths other than "*") never matches a TCP connection, a
// constraint key we do not know never matches, and a subject with no fields
// matches nobody.
func Authorize(s *Snapshot, r Request) Decision {
	if s == nil || s.RBAC == nil {
		return Decision{Allow: true, Reason: "RBAC is off for this workload"}
	}
	if r.Service != "" && slices.Contains(s.RBAC.OffServices, r.Service) {
		d := Decision{Allow: true, Reason: "RBAC is off for service " + r.Service}
		if s.RBAC.DecidedBy != "" {
			d.DecidedBy = []string{s.RBAC.DecidedBy}
		}
		return d
	}
	for _, p := range s.RBAC.Policies {
		rule := -1
		for i := range p.Rules {
			if ruleMatches(&p.Rules[i], s, r) {
				rule = i
				break
			}
		}
		if rule < 0 {
			continue
		}
		for _, sub := range p.Subjects {
			if !subjectMatches(sub, r) {
				continue
			}
			binding := sub.Binding
			if binding == "" && len(p.Bindings) > 0 {
				binding = p.Bindings[0]
			}
			return Decision{
				Allow: true,
				Reason: fmt.Sprintf("ServiceRole %s rule %d grants %s, bound to %s by ServiceRoleBinding %s",
					p.Role, rule, describeRequest(r), describeSubject(sub), binding),
				DecidedBy: []string{"ServiceRole/" + p.Role, "ServiceRoleBinding/" + binding},
			}
		}
	}
	d := Decision{
		Allow:  false,
		Reason: fmt.Sprintf("RBAC is on and no ServiceRole bound to %s grants %s", describeSource(r.Source), describeRequest(r)),
	}
	if s.RBAC.DecidedBy != "" {
		d.DecidedBy = []string{s.RBAC.DecidedBy}
	}
	return d
}

func describeSource(src string) string {
	if src == "" {
		return "the unauthenticated (plaintext) caller"
	}
	return src
}

func describeRequest(r Request) string {
	var sb strings.Builder
	if r.Method != "" || r.Path != "" {
		sb.WriteString(r.Method)
		sb.WriteString(" ")
		sb.WriteString(r.Path)
		sb.WriteString(" on ")
	}
	if r.Service != "" {
		sb.WriteString(r.Service)
	} else {
		sb.WriteString("this workload")
	}
	sb.WriteString(" port ")
	sb.WriteString(strconv.FormatUint(uint64(r.Port), 10))
	return sb.String()
}

func describeSubject(sub RBACSubject) string {
	var parts []string
	if sub.User != "" {
		parts = append(parts, "user "+strconv.Quote(sub.User))
	}
	for _, k := range sortedKeys(sub.Properties) {
		parts = append(parts, k+"="+strconv.Quote(sub.Properties[k]))
	}
	return strings.Join(parts, ", ")
}

// ruleMatches reports whether one AccessRule covers the request.
func ruleMatches(rule *RBACRule, s *Snapshot, r Request) bool {
	if !ServiceMatches(rule.Services, r.Service) {
		return false
	}
	// Methods and paths only exist for HTTP; a TCP connection (no method)
	// matches only rules that do not restrict them. Istio does the same: a
	// rule with HTTP-only fields does not apply to TCP.
	if len(rule.Methods) > 0 && !anyMatch(rule.Methods, r.Method, r.Method != "") {
		return false
	}
	if len(rule.Paths) > 0 && !anyMatch(rule.Paths, r.Path, r.Method != "") {
		return false
	}
	for _, c := range rule.Constraints {
		if !constraintMatches(c, s, r) {
			return false
		}
	}
	return true
}

// anyMatch reports whether v matches one of the patterns. present=false means
// the request has no such attribute (TCP): then only "*" matches.
func anyMatch(patterns []string, v string, present bool) bool {
	for _, p := range patterns {
		if p == "*" {
			return true
		}
		if present && MatchValue(p, v) {
			return true
		}
	}
	return false
}

// MatchValue matches v against an Istio RBAC value: "*" matches anything,
// "prefix*" a prefix, "*suffix" a suffix, anything else exactly.
func MatchValue(pattern, v string) bool {
	switch {
	case pattern == "*":
		return true
	case strings.HasSuffix(pattern, "*"):
		return strings.HasPrefix(v, pattern[:len(pattern)-1])
	case strings.HasPrefix(pattern, "*"):
		return strings.HasSuffix(v, pattern[1:])
	default:
		return v == pattern
	}
}

// ServiceMatches matches ServiceRole `services` against "name.namespace".
// Users write services in any of the names a Kubernetes client can use
// ("httpbin", "httpbin.default", "httpbin.default.svc.cluster.local"), with
// prefix or suffix wildcards; we accept a match on any of those forms.
func ServiceMatches(patterns []string, svc string) bool {
	if len(patterns) == 0 {
		return false
	}
	var forms []string
	if svc != "" {
		name, ns, _ := strings.Cut(svc, ".")
		forms = []string{name, svc, svc + ".svc", svc + ".svc." + DNSDomain}
		if ns == "" {
			forms = forms[:1]
		}
	}
	for _, p := range patterns {
		if p == "*" {
			return true
		}
		for _, f := range forms {
			if MatchValue(p, f) {
				return true
			}
		}
	}
	return false
}

func constraintMatches(c RBACConstraint, s *Snapshot, r Request) bool {
	var v string
	switch {
	case c.Key == "destination.port":
		v = strconv.FormatUint(uint64(r.Port), 10)
	case strings.HasPrefix(c.Key, "destination.labels[") && strings.HasSuffix(c.Key, "]"):
		label := c.Key[len("destination.labels[") : len(c.Key)-1]
		lv, ok := s.Workload.Labels[label]
		if !ok {
			return false
		}
		v = lv
	case c.Key == "destination.namespace":
		v = s.Workload.Namespace
	case c.Key == "destination.name":
		name, _, _ := strings.Cut(r.Service, ".")
		if name == "" {
			return false
		}
		v = name
	case c.Key == "destination.user":
		v = s.Workload.ServiceAccount
	default:
		// Unknown keys are rejected by config validation; fail closed if one
		// slips through.
		return false
	}
	for _, want := range c.Values {
		if MatchValue(want, v) {
			return true
		}
	}
	return false
}

// subjectMatches reports whether a binding subject covers the request's
// caller: its SPIFFE ID r.Source ("" for a plaintext caller) and its
// verified end-user credential r.Auth. Every field set on the subject must
// match; a property meshauth does not know never matches.
func subjectMatches(sub RBACSubject, r Request) bool {
	src := r.Source
	if sub.User == "" && len(sub.Properties) == 0 {
		return false
	}
	principal := strings.TrimPrefix(src, "spiffe://")
	if sub.User != "" && sub.User != "*" {
		if src == "" || !MatchValue(strings.TrimPrefix(sub.User, "spiffe://"), principal) {
			return false
		}
	}
	for k, want := range sub.Properties {
		switch {
		case k == "source.principal", k == "source.user":
			if want == "*" {
				continue
			}
			if src == "" || !MatchValue(strings.TrimPrefix(want, "spiffe://"), principal) {
				return false
			}
		case k == "source.namespace":
			ns := principalNamespace(principal)
			if ns == "" || !MatchValue(want, ns) {
				return false
			}
		case strings.HasPrefix(k, "request.auth."):
			if !requestAuthMatches(k, want, r.Auth) {
				return false
			}
		default:
			return false
		}
	}
	return true
}

// requestAuthMatches matches a request.auth.* property against the
// verified credential; without one, nothing matches (not even "*").
func requestAuthMatches(key, want string, a *RequestAuth) bool {
	if a == nil {
		return false
	}
	switch {
	case key == "request.auth.principal":
		return a.Principal != "" && MatchValue(want, a.Principal)
	case key == "request.auth.presenter":
		return a.Presenter != "" && MatchValue(want, a.Presenter)
	case key == "request.auth.audiences":
		for _, aud := range a.Audiences {
			if MatchValue(want, aud) {
				return true
			}
		}
		return false
	case strings.HasPrefix(key, "request.auth.claims[") && strings.HasSuffix(key, "]"):
		claim := key[len("request.auth.claims[") : len(key)-1]
		return claimMatches(a.Claims[claim], want)
	}
	return false
}

// claimMatches matches a claim that is a string, or a list holding a
// string, that matches want. Other claim types (numbers, objects) never
// match.
func claimMatches(v any, want string) bool {
	switch c := v.(type) {
	case string:
		return MatchValue(want, c)
	case []any:
		for _, e := range c {
			if s, ok := e.(string); ok && MatchValue(want, s) {
				return true
			}
		}
	}
	return false
}

// principalNamespace extracts N from "td/ns/N/sa/S".
func principalNamespace(p string) string {
	parts := strings.Split(p, "/")
	if len(parts) == 5 && parts[1] == "ns" && parts[3] == "sa" {
		return parts[2]
	}
	return ""
}

func sortedKeys(m map[string]string) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	return keys
}

// GRPCRequest returns the HTTP/2 request a gRPC call is made and
// authorized as: POST /package.Service/Method. fullMethod is
// "package.Service/Method", with or without the leading '/'.
func GRPCRequest(fullMethod string) (method, path string, err error) {
	p := "/" + strings.TrimPrefix(fullMethod, "/")
	if _, ok := GRPCMethodOf("POST", p); !ok {
		return "", "", fmt.Errorf("gRPC method %q: want package.Service/Method", fullMethod)
	}
	return "POST", p, nil
}

// GRPCMethodOf reports whether an HTTP/2 request is shaped as a gRPC call
// (POST /service/method, one service and one method segment, no query)
// and returns "service/method".
func GRPCMethodOf(method, path string) (string, bool) {
	if method != "POST" || len(path) < 4 || path[0] != '/' || strings.ContainsAny(path, "?#") {
		return "", false
	}
	svc, m, ok := strings.Cut(path[1:], "/")
	if !ok || svc == "" || m == "" || strings.Contains(m, "/") {
		return "", false
	}
	return path[1:], true
}
