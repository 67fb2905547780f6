package config

import (
	"fmt"
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
// meshauth reads a bare (undotted) key through that mapping. A bare key the
// instance does not define was absent at Mixer's check, so the constraint
// or property never matched (rbacStore.go checkConstraints/checkSubject):
// meshauth accepts it the same way, with a warning that it grants nothing.
// (Istio 1.0 instead dropped unknown keys, widening the rule: a hole that
// meshauth does not copy.) The caller's labels are refused: Mixer took them
// from the source address, a caller's certificate proves only its
// namespace and service account, and Istio 1.0 had no source.labels either.

// mixerActionProperties maps the default authorization instance's action
// properties (ServiceRole constraint keys) to attributes.
var mixerActionProperties = map[string]string{
	"app":     "destination.labels[app]",
	"version": "destination.labels[version]",
}

// mixerSubjectProperties maps its subject properties.
var mixerSubjectProperties = map[string]string{
	"namespace": "source.namespace",
	"app":       "source.labels[app]",
	"version":   "source.labels[version]",
}

// constraintKeys and subjectProperties are the dotted names meshauth
// evaluates, for messages.
var (
	constraintKeys    = []string{"destination.labels[<name>]", "destination.port", "destination.name", "destination.namespace", "destination.user"}
	subjectProperties = []string{"source.principal", "source.user", "source.namespace", "request.auth.principal", "request.auth.audiences", "request.auth.presenter", "request.auth.claims[<name>]"}
)

// RBACConstraintKey returns the attribute a ServiceRole constraint key
// names: itself when dotted, else the default authorization instance's
// mapping ("app" -> "destination.labels[app]"), else the key unchanged
// (an attribute no request has: the constraint never matches).
func RBACConstraintKey(key string) string {
	if a, ok := mixerActionProperties[key]; ok {
		return a
	}
	return key
}

// RBACSubjectProperty does the same for a ServiceRoleBinding property
// ("namespace" -> "source.namespace").
func RBACSubjectProperty(key string) string {
	if a, ok := mixerSubjectProperties[key]; ok {
		return a
	}
	return key
}

func isBare(key string) bool { return !strings.ContainsAny(key, ".[") }

// bracketed reports whether key is prefix[<non-empty name>].
func bracketed(key, prefix string) bool {
	return strings.HasPrefix(key, prefix+"[") && strings.HasSuffix(key, "]") && len(key) > len(prefix)+2
}

func checkConstraintKey(d *decoder, c Constraint, path string, rule, idx int) {
	key := RBACConstraintKey(c.Key)
	switch {
	case c.Key == "":
		d.fail(path+".key", "key cannot be empty for constraint %d in rule %d", idx, rule)
	case bracketed(key, "destination.labels"), key == "destination.name", key == "destination.namespace", key == "destination.user":
	case key == "destination.port":
		for k, v := range c.Values {
			if n, err := strconv.Atoi(v); err != nil || n < 1 || n > 65535 {
				d.fail(fmt.Sprintf("%s.values[%d]", path, k), "destination.port values are port numbers, got %q", v)
			}
		}
	case isBare(c.Key):
		d.warn(path+".key", "constraint key %q is not a property of Istio 0.8's authorization instance (app, version) nor an attribute: it never matches (as in 0.8's Mixer), so this rule grants nothing; attributes: %s", c.Key, strings.Join(constraintKeys, ", "))
	default:
		d.fail(path+".key", "constraint key %q is not supported (supported: %s, and Istio 0.8's app, version)", c.Key, strings.Join(constraintKeys, ", "))
	}
}

func checkSubjectProperty(d *decoder, k, path string) {
	attr := RBACSubjectProperty(k)
	switch {
	case attr == "source.principal", attr == "source.user", attr == "source.namespace",
		attr == "request.auth.principal", attr == "request.auth.audiences", attr == "request.auth.presenter",
		bracketed(attr, "request.auth.claims"):
	case bracketed(attr, "source.labels"):
		d.fail(path, "property %q is the caller's label %s in Istio 0.8's authorization instance; meshauth does not authorize by a caller's labels, which its certificate does not prove (Mixer took them from the source address; Istio 1.0 dropped them): bind the caller's service account instead, with user: \"cluster.local/ns/<namespace>/sa/<service-account>\"", k, attr)
	case isBare(k):
		d.warn(path, "property %q is not a property of Istio 0.8's authorization instance (namespace) nor an attribute: it never matches (as in 0.8's Mixer), so this subject grants nothing; attributes: %s", k, strings.Join(subjectProperties, ", "))
	default:
		d.fail(path, "property %q is not supported (supported: %s, and Istio 0.8's namespace)", k, strings.Join(subjectProperties, ", "))
	}
}
