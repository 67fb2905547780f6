// Package policy is what a sidecar enforces: the Snapshot the control plane
// computes for it (ports and their modes, outbound services, secure naming,
// RBAC), and the pure decisions made with it per connection and request
// (Authorize, AuthorizeHTTP, path normalisation). It imports neither the
// config kinds nor the registry, so the sidecar binary does not link them;
// the engine that derives each sidecar's Snapshot from them is
// internal/policy/engine.
package policy

import "strings"

// Snapshot is the effective configuration of one sidecar: everything it needs
// to serve inbound and outbound traffic. The control plane computes it, the
// push stream carries it as JSON, and the sidecar swaps it in atomically.
// A Snapshot is immutable once built.
type Snapshot struct {
	// Version identifies the snapshot; sidecars ACK or NACK by version.
	Version     string      `json:"version"`
	TrustDomain string      `json:"trustDomain"`
	Workload    WorkloadRef `json:"workload"`

	// InboundDefault is the server mode for ports not listed in Inbound.
	InboundDefault ServerMode    `json:"inboundDefault"`
	Inbound        []InboundPort `json:"inbound,omitempty"`
	// InboundDefaultEndUser is the end-user authentication of the ports
	// not listed in Inbound (the namespace's or mesh's Policy).
	InboundDefaultEndUser *EndUserAuthn `json:"inboundDefaultEndUser,omitempty"`

	// Outbound lists every service this sidecar may call.
	Outbound []OutboundService `json:"outbound,omitempty"`
	// OutboundScope names the Sidecar object (kind/namespace/name) that
	// limited Outbound to its egress hosts; empty means every service.
	OutboundScope string `json:"outboundScope,omitempty"`

	// RBAC holds the authorization rules that concern this workload as a
	// server. Nil means authorization is off (every authenticated peer, or
	// every peer in DISABLE/PERMISSIVE plaintext, is allowed).
	RBAC *RBAC `json:"rbac,omitempty"`

	// Refused lists the services whose selectors match this workload's
	// registration but that do not allow its identity: it is not their
	// endpoint (registration is closed by default). The sidecar logs them.
	Refused []Refusal `json:"registrationRefused,omitempty"`
}

// WorkloadRef names the workload a snapshot is for.
type WorkloadRef struct {
	Name           string            `json:"name"`
	Namespace      string            `json:"namespace"`
	ServiceAccount string            `json:"serviceAccount"`
	Labels         map[string]string `json:"labels,omitempty"`
}

// ServerMode is how a sidecar treats inbound connections on a port.
type ServerMode string

const (
	// ServerStrict requires mutual TLS with a verified mesh identity.
	ServerStrict ServerMode = "STRICT"
	// ServerPermissive accepts mutual TLS and plaintext on the same port.
	ServerPermissive ServerMode = "PERMISSIVE"
	// ServerDisable accepts plaintext only.
	ServerDisable ServerMode = "DISABLE"
)

// ClientTLSMode is how a client sidecar connects to a service port,
// DestinationRule's trafficPolicy.tls.mode.
type ClientTLSMode string

const (
	ClientDisable     ClientTLSMode = "DISABLE"
	ClientSimple      ClientTLSMode = "SIMPLE"
	ClientMutual      ClientTLSMode = "MUTUAL"
	ClientIstioMutual ClientTLSMode = "ISTIO_MUTUAL"
)

// InboundPort is the server side of one workload port (the container port).
type InboundPort struct {
	Port uint32     `json:"port"`
	Mode ServerMode `json:"mode"`
	// Protocol is "HTTP" (authorization per request, XFCC header) or "TCP".
	Protocol string `json:"protocol,omitempty"`
	// Service is the service (name.namespace) this port serves, for RBAC.
	Service string `json:"service,omitempty"`
	// DecidedBy names the object that set Mode (kind/namespace/name or
	// "mesh/authPolicy").
	DecidedBy string `json:"decidedBy,omitempty"`
	// EndUser is the port's end-user (origin JWT) authentication, from the
	// same Policy as Mode; nil when that Policy has no origins and does
	// not bind the principal to the origin.
	EndUser *EndUserAuthn `json:"endUser,omitempty"`
}

// EndUserAuthn is a Policy's origins: which JWTs a request must carry
// (Istio's origins, originIsOptional, principalBinding).
type EndUserAuthn struct {
	JWT []JWTRule `json:"jwt,omitempty"`
	// Optional lets a request without a token through (originIsOptional);
	// a token that is present must still verify.
	Optional bool `json:"optional,omitempty"`
	// UseOrigin makes request.auth.principal the token's iss/sub
	// (principalBinding USE_ORIGIN) instead of the peer's principal.
	UseOrigin bool `json:"useOrigin,omitempty"`
	// DecidedBy names the Policy.
	DecidedBy string `json:"decidedBy,omitempty"`
}

// JWTRule is one origin of a Policy: the issuer whose tokens are accepted,
// the audiences one of which a token must name, where the issuer's keys
// are (JWKS over https) and where a request may carry the token. It is the
// config's JWT without source positions, so that the sidecar links no
// config kinds.
type JWTRule struct {
	Issuer    string   `json:"issuer"`
	Audiences []string `json:"audiences,omitempty"`
	JwksURI   string   `json:"jwksUri,omitempty"`
	// JWTHeaders and JWTParams name the request headers and query
	// parameters that may carry the token; without both, the token is
	// read from "Authorization: Bearer <token>".
	JWTHeaders []string `json:"jwtHeaders,omitempty"`
	JWTParams  []string `json:"jwtParams,omitempty"`
}

// OutboundService is one destination service as seen by a client sidecar.
type OutboundService struct {
	Name      string `json:"name"`
	Namespace string `json:"namespace"`
	// Hosts are every name a caller may use: "httpbin" (same namespace only),
	// "httpbin.default", "httpbin.default.svc", "httpbin.default.svc.cluster.local".
	Hosts []string `json:"hosts"`
	// Address is the service's virtual IP, if any (transparent capture
	// recovers it with SO_ORIGINAL_DST).
	Address string         `json:"address,omitempty"`
	Ports   []OutboundPort `json:"ports"`
	// Endpoints are the workloads behind the service.
	Endpoints []Endpoint `json:"endpoints,omitempty"`
	// ServerIdentities are the SPIFFE IDs allowed to serve this service
	// (secure naming): the service accounts of its workloads plus any added
	// by annotation.
	ServerIdentities []string `json:"serverIdentities,omitempty"`
}

// OutboundPort is one service port and the client-side TLS settings for it.
type OutboundPort struct {
	Name     string `json:"name,omitempty"`
	Port     uint32 `json:"port"`
	Protocol string `json:"protocol,omitempty"`
	// TargetPort is the workload (container) port behind Port.
	TargetPort uint32        `json:"targetPort"`
	TLSMode    ClientTLSMode `json:"tlsMode"`
	// SNI to send, if the DestinationRule sets one.
	SNI string `json:"sni,omitempty"`
	// SubjectAltNames, if set by the DestinationRule, replace ServerIdentities.
	SubjectAltNames []string `json:"subjectAltNames,omitempty"`
	// DecidedBy names the object that set TLSMode.
	DecidedBy string `json:"decidedBy,omitempty"`
}

// Endpoint is one workload instance behind a service.
type Endpoint struct {
	Workload       string `json:"workload"`
	ServiceAccount string `json:"serviceAccount"`
	// Address is the IP (or host) of the workload. Mesh traffic for service
	// port P goes to Address:TargetPort, unless Ports overrides it.
	Address string `json:"address"`
	// Ports maps a target port to the port the workload's sidecar actually
	// listens on for it (local mesh, explicit mode, where sidecars cannot
	// capture the app's port). Empty in transparent mode.
	Ports map[uint32]uint32 `json:"ports,omitempty"`
	// Sidecar reports whether the workload has a sidecar.
	Sidecar bool `json:"sidecar"`
}

// RBAC is the authorization policy for one workload as a server.
type RBAC struct {
	// Rules are the ServiceRole rules bound to subjects; a request is allowed
	// if any binding matches it.
	Policies []RBACPolicy `json:"policies"`
	// DecidedBy names the RbacConfig that turned authorization on.
	DecidedBy string `json:"decidedBy,omitempty"`
	// OffServices lists services (name.namespace) this workload serves for
	// which the RbacConfig leaves authorization off (ON_WITH_INCLUSION /
	// ON_WITH_EXCLUSION); requests to them are allowed.
	OffServices []string `json:"offServices,omitempty"`
}

// RBACPolicy is one ServiceRole with the subjects bound to it.
type RBACPolicy struct {
	Role     string        `json:"role"`     // namespace/name of the ServiceRole
	Bindings []string      `json:"bindings"` // namespace/name of the bindings
	Rules    []RBACRule    `json:"rules"`
	Subjects []RBACSubject `json:"subjects"`
}

// RBACRule is one AccessRule of a ServiceRole.
type RBACRule struct {
	Services    []string          `json:"services,omitempty"`
	Methods     []string          `json:"methods,omitempty"`
	Paths       []string          `json:"paths,omitempty"`
	Constraints []RBACConstraint  `json:"constraints,omitempty"`
	Extra       map[string]string `json:"extra,omitempty"`
}

// RBACConstraint is a ServiceRole constraint (destination.labels[..], destination.port).
type RBACConstraint struct {
	Key    string   `json:"key"`
	Values []string `json:"values"`
}

// RBACSubject is one subject of a ServiceRoleBinding.
type RBACSubject struct {
	User       string            `json:"user,omitempty"`
	Properties map[string]string `json:"properties,omitempty"`
	// Binding is the namespace/name of the ServiceRoleBinding this subject
	// comes from, so a decision names the exact binding that allowed it.
	Binding string `json:"binding,omitempty"`
}

// Refusal is a self-registered sidecar that a service's selector matches
// but that is not one of its endpoints, because the service does not allow
// its identity.
type Refusal struct {
	Service  string `json:"service"`  // name.namespace
	Workload string `json:"workload"` // namespace/name
	SPIFFEID string `json:"spiffeId"`
	Reason   string `json:"reason"`
}

// InboundProtocol is the protocol a server sidecar applies to a port, from
// the port's declared protocol or, when none is declared, Istio's port
// naming convention ("http", "http-web", "http2-x", "grpc", "grpc-x",
// "tcp-db"):
//
//   - "HTTP": HTTP/1.x. Every request is parsed, authorized, and gets the
//     verified X-Forwarded-Client-Cert; HTTP/2 with prior knowledge is
//     terminated per request the same way and reaches the app as HTTP/1.1.
//   - "HTTP2": HTTP2 and GRPC ports. HTTP/2 (prior knowledge) is
//     terminated per request (authorized, XFCC) and reaches the app over
//     h2c; HTTP/1.x is served as on "HTTP".
//   - "TCP": every other declared protocol; an opaque relay.
//   - "": nothing declared; the sidecar detects the protocol.
//
// The port's protocol decides, never what a client offers (ALPN, CONNECT).
func InboundProtocol(proto, name string) string {
	p := strings.ToUpper(proto)
	if p == "" {
		prefix, _, _ := strings.Cut(strings.ToLower(name), "-")
		switch prefix {
		case "http", "http2", "grpc", "https", "tls", "tcp", "mongo", "redis", "mysql":
			p = strings.ToUpper(prefix)
		}
	}
	switch p {
	case "HTTP", "HTTP1":
		return "HTTP"
	case "HTTP2", "GRPC", "GRPC-WEB":
		return "HTTP2"
	case "":
		return ""
	}
	return "TCP"
}
