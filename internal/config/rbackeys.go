package config

import (
	"fmt"
	"maps"
	"regexp"
	"slices"
	"strconv"
	"strings"
)

// RBAC attribute names.
//
// Istio 1.0's RBAC (Envoy's filter, configured by Pilot) reads dotted
// attribute names: constraint keys destination.labels[<name>],
// destination.port, destination.name, destination.namespace,
// destination.user; subject properties source.principal (source.user),
// source.namespace and request.auth.{principal, audiences, presenter,
// claims[<name>]}.
//
// Istio 0.8's RBAC ran in Mixer: a constraint key or subject property was
// the name of a property of the `authorization` template instance, whose
// expressions mapped it to an attribute. Istio's samples and e2e tests use
// one instance (samples/bookinfo/kube/istio-rbac-enable.yaml and
// tests/e2e/tests/pilot/testdata/v1alpha2/istio-rbac-enable.yaml.tmpl):
//
//	subject.properties: app: source.labels["app"], version: source.labels["version"], namespace: source.namespace
//	action.properties:  app: destination.labels["app"], version: destination.labels["version"]
//
// meshauth reads a bare (undotted) key through the config's own instance
// (kind authorization) if it has one, else that mapping. A bare key the
// instance does not define was absent at Mixer's check, so the constraint
// or property never matched (rbacStore.go checkConstraints/checkSubject):
// meshauth accepts it the same way, with a warning that it grants nothing.
// (Istio 1.0 instead dropped unknown keys, widening the rule: a hole that
// meshauth does not copy.) The caller's labels are refused: Mixer took them
// from the source address, a caller's certificate proves only its
// namespace and service account, and Istio 1.0 had no source.labels either.

// RBACNames is what Istio 0.8's bare RBAC names stand for: the action
// (constraint key) and subject (binding property) properties of the
// authorization instance, as attributes.
type RBACNames struct {
	Action, Subject map[string]string
	// From names the instance ("the samples' authorization instance" or
	// authorization/<namespace>/<name>).
	From string
}

// defaultRBACNames is the authorization instance of Istio's samples and
// e2e tests.
var defaultRBACNames = RBACNames{
	Action:  map[string]string{"app": "destination.labels[app]", "version": "destination.labels[version]"},
	Subject: map[string]string{"namespace": "source.namespace", "app": "source.labels[app]", "version": "source.labels[version]"},
	From:    "the samples' authorization instance",
}

// RBACNames returns the names of the config's authorization instance, or
// the samples' when it has none.
func (c *Config) RBACNames() RBACNames {
	if c == nil || c.Authorization == nil {
		return defaultRBACNames
	}
	a := c.Authorization
	n := RBACNames{Action: map[string]string{}, Subject: map[string]string{}, From: a.Key()}
	for k, e := range a.Spec.Action.Properties {
		n.Action[k], _ = authzAttr(e)
	}
	for k, e := range a.Spec.Subject.Properties {
		n.Subject[k], _ = authzAttr(e)
	}
	return n
}

// ConstraintKey returns the attribute a ServiceRole constraint key names:
// itself when dotted, else the instance's mapping ("app" ->
// "destination.labels[app]"), else the key unchanged (an attribute no
// request has: the constraint never matches).
func (n RBACNames) ConstraintKey(key string) string {
	if a, ok := n.Action[key]; ok && isBare(key) {
		return a
	}
	return key
}

// SubjectProperty does the same for a ServiceRoleBinding property
// ("namespace" -> "source.namespace").
func (n RBACNames) SubjectProperty(key string) string {
	if a, ok := n.Subject[key]; ok && isBare(key) {
		return a
	}
	return key
}

// constraintKeys and subjectProperties are the dotted names meshauth
// evaluates, for messages.
var (
	constraintKeys    = []string{"destination.labels[<name>]", "destination.port", "destination.name", "destination.namespace", "destination.user"}
	subjectProperties = []string{"source.principal", "source.user", "source.namespace", "request.auth.principal", "request.auth.audiences", "request.auth.presenter", "request.auth.claims[<name>]"}
)

func isBare(key string) bool { return !strings.ContainsAny(key, ".[") }

// bracketed reports whether key is prefix[<non-empty name>].
func bracketed(key, prefix string) bool {
	return strings.HasPrefix(key, prefix+"[") && strings.HasSuffix(key, "]") && len(key) > len(prefix)+2
}

func constraintAttr(a string) bool {
	return bracketed(a, "destination.labels") || a == "destination.port" || a == "destination.name" || a == "destination.namespace" || a == "destination.user"
}

func subjectAttr(a string) bool {
	return a == "source.principal" || a == "source.user" || a == "source.namespace" || a == "request.auth.principal" ||
		a == "request.auth.audiences" || a == "request.auth.presenter" || bracketed(a, "request.auth.claims")
}

// checkConstraintKey checks a dotted constraint key (bare ones are checked
// against the authorization instance by New).
func checkConstraintKey(d *decoder, c Constraint, path string, rule, idx int) {
	switch {
	case c.Key == "":
		d.fail(path+".key", "key cannot be empty for constraint %d in rule %d", idx, rule)
	case isBare(c.Key):
	case c.Key == "destination.port":
		for k, v := range c.Values {
			if n, err := strconv.Atoi(v); err != nil || n < 1 || n > 65535 {
				d.fail(fmt.Sprintf("%s.values[%d]", path, k), "destination.port values are port numbers, got %q", v)
			}
		}
	case constraintAttr(c.Key):
	default:
		d.fail(path+".key", "constraint key %q is not supported (supported: %s, and the names of Istio 0.8's authorization instance, e.g. app, version)", c.Key, strings.Join(constraintKeys, ", "))
	}
}

// checkSubjectProperty checks a dotted binding property.
func checkSubjectProperty(d *decoder, k, path string) {
	if !isBare(k) && !subjectAttr(k) {
		d.fail(path, "property %q is not supported (supported: %s, and the names of Istio 0.8's authorization instance, e.g. namespace)", k, strings.Join(subjectProperties, ", "))
	}
}

// checkConstraint says what a bare constraint key means under n: "" when
// it maps to an attribute meshauth evaluates, a warning when it maps to
// nothing (it never matches, as in 0.8's Mixer), an error when it maps to
// an attribute meshauth cannot evaluate.
func (n RBACNames) checkConstraint(key string) (msg string, isErr bool) {
	if !isBare(key) || key == "" {
		return "", false
	}
	a, ok := n.Action[key]
	switch {
	case !ok:
		return fmt.Sprintf("constraint key %q is not a property of %s (%s) nor an attribute: it never matches (as in 0.8's Mixer), so this rule grants nothing; attributes: %s",
			key, n.From, strings.Join(slices.Sorted(maps.Keys(n.Action)), ", "), strings.Join(constraintKeys, ", ")), false
	case !constraintAttr(a):
		return fmt.Sprintf("constraint key %q is %s in %s, which meshauth cannot evaluate on a destination (supported: %s)", key, a, n.From, strings.Join(constraintKeys, ", ")), true
	}
	return "", false
}

// checkProperty is checkConstraint for a binding property. A property
// that stands for the caller's labels is refused: Mixer took them from the
// source address, a caller's certificate proves only its namespace and
// service account, and Istio 1.0 had no source.labels either.
func (n RBACNames) checkProperty(key string) (msg string, isErr bool) {
	if !isBare(key) {
		return "", false
	}
	a, ok := n.Subject[key]
	switch {
	case !ok:
		return fmt.Sprintf("property %q is not a property of %s (%s) nor an attribute: it never matches (as in 0.8's Mixer), so this subject grants nothing; attributes: %s",
			key, n.From, strings.Join(slices.Sorted(maps.Keys(n.Subject)), ", "), strings.Join(subjectProperties, ", ")), false
	case bracketed(a, "source.labels"):
		return fmt.Sprintf("property %q is the caller's label %s in %s; meshauth does not authorize by a caller's labels, which its certificate does not prove (Mixer took them from the source address; Istio 1.0 dropped them): bind the caller's service account instead, with user: \"cluster.local/ns/<namespace>/sa/<service-account>\"", key, a, n.From), true
	case !subjectAttr(a):
		return fmt.Sprintf("property %q is %s in %s, which meshauth cannot evaluate on a caller (supported: %s)", key, a, n.From, strings.Join(subjectProperties, ", ")), true
	}
	return "", false
}

// authzExpr is an instance expression: an attribute, optionally with the
// default `| ""`.
var (
	authzExpr  = regexp.MustCompile(`^\s*([a-z.]+(\["[^"]+"\])?)\s*(\|\s*""\s*)?$`)
	authzLabel = regexp.MustCompile(`^(source\.labels|destination\.labels|request\.auth\.claims)\["([^"]+)"\]$`)
)

// authzAttr turns an instance expression into the attribute meshauth
// names it with (source.user -> source.principal, destination.labels["x"]
// -> destination.labels[x]); ok is false for an expression it does not
// understand.
func authzAttr(expr string) (string, bool) {
	m := authzExpr.FindStringSubmatch(expr)
	if m == nil {
		return "", false
	}
	a := m[1]
	if l := authzLabel.FindStringSubmatch(a); l != nil {
		return l[1] + "[" + l[2] + "]", true
	}
	switch a {
	case "source.user", "source.principal":
		return "source.principal", true
	case "source.namespace", "destination.namespace", "destination.port", "destination.user", "destination.service",
		"request.method", "request.path", "request.auth.principal", "request.auth.audiences", "request.auth.presenter":
		return a, true
	}
	return "", false
}

// validateAuthorization checks an authorization instance: every property
// an expression meshauth understands, and the fixed parts what meshauth's
// RBAC evaluates (the caller's principal, no groups, the destination
// service, the request's method and path).
func validateAuthorization(d *decoder, s *AuthorizationSpec, path string) {
	for _, side := range []struct {
		name  string
		props map[string]string
	}{{"subject", s.Subject.Properties}, {"action", s.Action.Properties}} {
		for _, k := range slices.Sorted(maps.Keys(side.props)) {
			if _, ok := authzAttr(side.props[k]); !ok {
				d.fail(fmt.Sprintf("%s.%s.properties[%s]", path, side.name, k), "expression %q is not one meshauth reads (an attribute such as destination.labels[\"app\"] or source.namespace, optionally | \"\")", side.props[k])
			}
		}
	}
	fixed := []struct{ field, expr, want string }{
		{"subject.user", s.Subject.User, "source.principal"},
		{"action.namespace", s.Action.Namespace, "destination.namespace"},
		{"action.service", s.Action.Service, "destination.service"},
		{"action.method", s.Action.Method, "request.method"},
		{"action.path", s.Action.Path, "request.path"},
	}
	for _, f := range fixed {
		if a, _ := authzAttr(f.expr); f.expr != "" && a != f.want {
			d.fail(path+"."+f.field, "%s is %q; meshauth's RBAC always reads %s there", f.field, f.expr, f.want)
		}
	}
	if g := strings.TrimSpace(s.Subject.Groups); g != "" && g != `""` {
		d.fail(path+".subject.groups", "groups %q are not read: meshauth knows no groups (write groups: '\"\"')", g)
	}
}
