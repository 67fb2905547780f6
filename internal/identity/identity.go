// Package identity holds meshauth's notion of who a workload is: a SPIFFE ID
// of the form spiffe://<trust-domain>/ns/<namespace>/sa/<service-account>,
// the trust bundle (one or more roots plus revoked serials) that peers are
// verified against, and the verification of a peer's certificate chain.
//
// Parsing and chain checks are delegated to go-spiffe; this package adds the
// mesh's stricter shape (namespace + service account) and revocation.
package identity

import (
	"errors"
	"fmt"
	"regexp"
	"strings"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
)

// DefaultTrustDomain is the trust domain used when none is configured, as in
// the seed's Istio installation.
const DefaultTrustDomain = "cluster.local"

// ErrNotWorkloadID is returned for a SPIFFE ID whose path is not
// /ns/<namespace>/sa/<service-account>.
var ErrNotWorkloadID = errors.New("identity: not a workload identity (want spiffe://<trust-domain>/ns/<namespace>/sa/<service-account>)")

// k8sName matches a Kubernetes DNS-1123 label, which is what namespaces and
// service account names are. Service accounts may also be DNS-1123
// subdomains (dots); we accept those too.
var k8sName = regexp.MustCompile(`^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$`)

// ID is a validated workload identity. The zero value is not valid; obtain
// one from New, Parse or FromSPIFFE.
type ID struct {
	TrustDomain    string
	Namespace      string
	ServiceAccount string
}

// New builds the identity of a service account, validating every part.
func New(trustDomain, namespace, serviceAccount string) (ID, error) {
	if trustDomain == "" {
		trustDomain = DefaultTrustDomain
	}
	if _, err := spiffeid.TrustDomainFromString(trustDomain); err != nil {
		return ID{}, fmt.Errorf("identity: trust domain %q: %w", trustDomain, err)
	}
	if len(namespace) > 63 || !k8sName.MatchString(namespace) || strings.Contains(namespace, ".") {
		return ID{}, fmt.Errorf("identity: namespace %q is not a valid Kubernetes name (lowercase letters, digits and '-', at most 63)", namespace)
	}
	if len(serviceAccount) > 253 || !k8sName.MatchString(serviceAccount) {
		return ID{}, fmt.Errorf("identity: service account %q is not a valid Kubernetes name (lowercase letters, digits, '-' and '.')", serviceAccount)
	}
	return ID{TrustDomain: trustDomain, Namespace: namespace, ServiceAccount: serviceAccount}, nil
}

// Parse parses "spiffe://td/ns/N/sa/S".
func Parse(s string) (ID, error) {
	sid, err := spiffeid.FromString(s)
	if err != nil {
		return ID{}, fmt.Errorf("identity: parse %q: %w", s, err)
	}
	return FromSPIFFE(sid)
}

// MustParse is Parse for tests and constants; it panics on error.
func MustParse(s string) ID {
	id, err := Parse(s)
	if err != nil {
		panic(err)
	}
	return id
}

// FromSPIFFE converts a go-spiffe ID, checking the workload path shape.
func FromSPIFFE(sid spiffeid.ID) (ID, error) {
	parts := strings.Split(strings.TrimPrefix(sid.Path(), "/"), "/")
	if len(parts) != 4 || parts[0] != "ns" || parts[2] != "sa" {
		return ID{}, fmt.Errorf("%w: got %q", ErrNotWorkloadID, sid.String())
	}
	return New(sid.TrustDomain().Name(), parts[1], parts[3])
}

// ParsePrincipal parses the RBAC principal form "td/ns/N/sa/S" (no scheme),
// as Istio's ServiceRoleBinding `user` uses it.
func ParsePrincipal(p string) (ID, error) {
	return Parse("spiffe://" + p)
}

// String returns the URI form.
func (id ID) String() string {
	return "spiffe://" + id.TrustDomain + "/ns/" + id.Namespace + "/sa/" + id.ServiceAccount
}

// Principal returns the RBAC principal form, without the scheme.
func (id ID) Principal() string {
	return strings.TrimPrefix(id.String(), "spiffe://")
}

// IsZero reports whether id is the zero value.
func (id ID) IsZero() bool { return id == ID{} }

// SPIFFE returns the go-spiffe form of id.
func (id ID) SPIFFE() spiffeid.ID {
	// id was validated at construction, so this cannot fail.
	return spiffeid.RequireFromString(id.String())
}
