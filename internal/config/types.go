// Package config holds meshauth's configuration kinds and their YAML
// decoding and validation.
//
// The kinds are the seed's own (Istio 0.8/1.0) API objects, field for field,
// so that existing manifests load unchanged: mesh config (authPolicy,
// trustDomain, mtlsExcludedServices), authentication Policy and MeshPolicy,
// DestinationRule, RbacConfig, ServiceRole and ServiceRoleBinding, plus two
// local-mesh kinds of our own, Service and Workload, that stand in for
// Kubernetes Services and Pods when the mesh runs without Kubernetes.
//
// Decoding walks yaml.v3 nodes rather than unmarshalling into structs so that
// every error carries file:line:column and the field path
// ("policy.yaml:7:15: spec.peers[0].mtls.mode: ..."). A batch of documents is
// accepted or rejected as a whole: Load returns either a valid *Config or a
// list of every error found.
package config

import (
	"encoding/json"

	"gopkg.in/yaml.v3"
)

// API groups/versions we accept. The 0.8 RBAC kinds lived in
// config.istio.io/v1alpha2; manifests of that era still use it.
const (
	AuthnV1alpha1  = "authentication.istio.io/v1alpha1"
	NetworkingV1a3 = "networking.istio.io/v1alpha3"
	RBACV1alpha1   = "rbac.istio.io/v1alpha1"
	ConfigV1alpha2 = "config.istio.io/v1alpha2"
	MeshV1alpha1   = "meshauth.io/v1alpha1"
)

// Kind names.
const (
	KindMeshConfig         = "MeshConfig"
	KindMeshPolicy         = "MeshPolicy"
	KindPolicy             = "Policy"
	KindDestinationRule    = "DestinationRule"
	KindRbacConfig         = "RbacConfig"
	KindClusterRbacConfig  = "ClusterRbacConfig"
	KindServiceRole        = "ServiceRole"
	KindServiceRoleBinding = "ServiceRoleBinding"
	KindSidecar            = "Sidecar"
	KindService            = "Service"
	KindWorkload           = "Workload"
	// KindAuthorization is Istio 0.8's Mixer `authorization` template
	// instance: it names the properties 0.8's RBAC keys stand for.
	KindAuthorization = "authorization"
)

// Pos is where an object or field was written.
type Pos struct {
	File   string `json:"file,omitempty" yaml:"-"`
	Line   int    `json:"line,omitempty" yaml:"-"`
	Column int    `json:"column,omitempty" yaml:"-"`
}

// String formats the position as file:line:column, the form editors jump to.
func (p Pos) String() string {
	if p.File == "" && p.Line == 0 {
		return "<unknown>"
	}
	return p.File + ":" + itoa(p.Line) + ":" + itoa(p.Column)
}

// Meta is the Kubernetes object metadata we use. Fields the API server sets
// (uid, resourceVersion, ...) are accepted so that `kubectl get -o yaml`
// output loads, and are otherwise ignored.
type Meta struct {
	Name        string            `json:"name" yaml:"name"`
	Namespace   string            `json:"namespace,omitempty" yaml:"namespace,omitempty"`
	Labels      map[string]string `json:"labels,omitempty" yaml:"labels,omitempty"`
	Annotations map[string]string `json:"annotations,omitempty" yaml:"annotations,omitempty"`

	// Server-set fields: accepted, ignored, not written back.
	UID               Raw `json:"-" yaml:"uid,omitempty"`
	ResourceVersion   Raw `json:"-" yaml:"resourceVersion,omitempty"`
	Generation        Raw `json:"-" yaml:"generation,omitempty"`
	CreationTimestamp Raw `json:"-" yaml:"creationTimestamp,omitempty"`
	SelfLink          Raw `json:"-" yaml:"selfLink,omitempty"`
	ManagedFields     Raw `json:"-" yaml:"managedFields,omitempty"`
	ClusterName       Raw `json:"-" yaml:"clusterName,omitempty"`
	OwnerReferences   Raw `json:"-" yaml:"ownerReferences,omitempty"`
	Finalizers        Raw `json:"-" yaml:"finalizers,omitempty"`
	GenerateName      Raw `json:"-" yaml:"generateName,omitempty"`
}

// Object is what every kind has in common.
type Object struct {
	APIVersion string `json:"apiVersion" yaml:"apiVersion"`
	Kind       string `json:"kind" yaml:"kind"`
	Metadata   Meta   `json:"metadata" yaml:"metadata"`
	// Source is where the object was read from.
	Source Pos `json:"source" yaml:"-"`
	// Warnings are what decoding and validation accepted but flag: a
	// duplicate key (the last value is used, as Istio's YAML parser does),
	// an Istio 0.8 form that 1.0 refuses, a key that never matches. They
	// travel with the object; Config.Warnings lists them.
	Warnings []*Error `json:"-" yaml:"-"`
}

// Key returns kind/namespace/name, the form decisions cite.
func (o *Object) Key() string {
	if o.Metadata.Namespace == "" {
		return o.Kind + "/" + o.Metadata.Name
	}
	return o.Kind + "/" + o.Metadata.Namespace + "/" + o.Metadata.Name
}

// Ref returns namespace/name.
func (o *Object) Ref() string {
	if o.Metadata.Namespace == "" {
		return o.Metadata.Name
	}
	return o.Metadata.Namespace + "/" + o.Metadata.Name
}

// MeshConfig is the mesh-wide default, Istio's `istio` ConfigMap `mesh` key.
type MeshConfig struct {
	Object `json:",inline" yaml:",inline"`
	Spec   MeshConfigSpec `json:"spec" yaml:"spec"`
}

// AuthPolicy is the mesh-wide mTLS default.
type AuthPolicy string

const (
	AuthPolicyNone      AuthPolicy = "NONE"
	AuthPolicyMutualTLS AuthPolicy = "MUTUAL_TLS"
)

// MeshConfigSpec holds the mesh-wide settings.
type MeshConfigSpec struct {
	// AuthPolicy is NONE (default) or MUTUAL_TLS.
	AuthPolicy AuthPolicy `json:"authPolicy,omitempty" yaml:"authPolicy,omitempty"`
	// TrustDomain of every identity; empty means cluster.local.
	TrustDomain string `json:"trustDomain,omitempty" yaml:"trustDomain,omitempty"`
	// MTLSExcludedServices are FQDNs (name.ns.svc.cluster.local) that
	// clients reach in plaintext even when authPolicy is MUTUAL_TLS.
	MTLSExcludedServices []string `json:"mtlsExcludedServices,omitempty" yaml:"mtlsExcludedServices,omitempty"`
}

// Policy is authentication.istio.io/v1alpha1 Policy (and MeshPolicy, which
// has the same spec and applies to the whole mesh).
type Policy struct {
	Object `json:",inline" yaml:",inline"`
	Spec   PolicySpec `json:"spec" yaml:"spec"`
}

// PolicySpec is the authentication policy body.
type PolicySpec struct {
	Targets []TargetSelector `json:"targets,omitempty" yaml:"targets,omitempty"`
	Peers   []PeerMethod     `json:"peers,omitempty" yaml:"peers,omitempty"`
	// PeerIsOptional accepts requests without peer authentication, which
	// makes an mTLS peer method behave as PERMISSIVE.
	PeerIsOptional bool `json:"peerIsOptional,omitempty" yaml:"peerIsOptional,omitempty"`
	// Origins are the end-user (JWT) authentication methods: a request
	// must carry a token that one of them verifies, unless
	// OriginIsOptional.
	Origins          []OriginMethod `json:"origins,omitempty" yaml:"origins,omitempty"`
	OriginIsOptional bool           `json:"originIsOptional,omitempty" yaml:"originIsOptional,omitempty"`
	// PrincipalBinding is USE_PEER (default: the request principal is the
	// peer's identity) or USE_ORIGIN (the verified token's iss/sub).
	PrincipalBinding string `json:"principalBinding,omitempty" yaml:"principalBinding,omitempty"`
}

// OriginMethod is one end-user authentication method.
type OriginMethod struct {
	JWT *JWT `json:"jwt,omitempty" yaml:"jwt,omitempty"`
}

// JWT is Istio's Jwt: who issues the tokens, for which audiences, where
// their keys are, and where a request carries the token.
type JWT struct {
	Issuer    string   `json:"issuer" yaml:"issuer"`
	Audiences []string `json:"audiences,omitempty" yaml:"audiences,omitempty"`
	JwksURI   string   `json:"jwksUri,omitempty" yaml:"jwksUri,omitempty"`
	// JWTHeaders and JWTParams name the request headers and query
	// parameters that may carry the token; without both, the token is
	// read from "Authorization: Bearer <token>".
	JWTHeaders []string `json:"jwtHeaders,omitempty" yaml:"jwtHeaders,omitempty"`
	JWTParams  []string `json:"jwtParams,omitempty" yaml:"jwtParams,omitempty"`
	Pos        Pos      `json:"-" yaml:"-"`
}

// TargetSelector names a service (short name, in the policy's namespace)
// and optionally some of its ports.
type TargetSelector struct {
	Name  string         `json:"name" yaml:"name"`
	Ports []PortSelector `json:"ports,omitempty" yaml:"ports,omitempty"`
	Pos   Pos            `json:"-" yaml:"-"`
}

// PortSelector selects a port by number or by name.
type PortSelector struct {
	Number uint32 `json:"number,omitempty" yaml:"number,omitempty"`
	Name   string `json:"name,omitempty" yaml:"name,omitempty"`
}

// PeerMethod is one peer authentication method. Only mtls is supported;
// jwt peers are refused at validation.
type PeerMethod struct {
	// MTLS is non-nil when the key is present, including `mtls: {}` and a
	// bare `mtls:` (null), both of which mean STRICT.
	MTLS *MutualTLS `json:"mtls,omitempty" yaml:"mtls,omitempty"`
	// JWT peers are decoded (so Istio's checks run) and then refused.
	JWT *JWT `json:"-" yaml:"jwt,omitempty"`
}

// MTLSMode is the server side's mutual TLS mode in a Policy.
type MTLSMode string

const (
	MTLSStrict     MTLSMode = "STRICT"
	MTLSPermissive MTLSMode = "PERMISSIVE"
)

// MutualTLS is the mtls peer method.
type MutualTLS struct {
	// Mode is STRICT (default when empty) or PERMISSIVE.
	Mode MTLSMode `json:"mode,omitempty" yaml:"mode,omitempty"`
	// AllowTLS (0.8) accepted TLS without a client certificate; refused.
	AllowTLS bool `json:"allowTls,omitempty" yaml:"allowTls,omitempty"`
}

// DestinationRule is networking.istio.io/v1alpha3 DestinationRule.
type DestinationRule struct {
	Object `json:",inline" yaml:",inline"`
	Spec   DestinationRuleSpec `json:"spec" yaml:"spec"`
}

// DestinationRuleSpec is the client-side policy for a host.
type DestinationRuleSpec struct {
	Host          string         `json:"host" yaml:"host"`
	TrafficPolicy *TrafficPolicy `json:"trafficPolicy,omitempty" yaml:"trafficPolicy,omitempty"`
	Subsets       []Subset       `json:"subsets,omitempty" yaml:"subsets,omitempty"`
	ExportTo      []string       `json:"exportTo,omitempty" yaml:"exportTo,omitempty"`
}

// TrafficPolicy is the part of a DestinationRule we use: tls, per port. The
// load-balancing, connection-pool and outlier settings are accepted (so
// manifests load) and kept, but meshauth does not act on them.
type TrafficPolicy struct {
	LoadBalancer      *LoadBalancerSettings   `json:"loadBalancer,omitempty" yaml:"loadBalancer,omitempty"`
	ConnectionPool    *ConnectionPoolSettings `json:"connectionPool,omitempty" yaml:"connectionPool,omitempty"`
	OutlierDetection  *OutlierDetection       `json:"outlierDetection,omitempty" yaml:"outlierDetection,omitempty"`
	TLS               *TLSSettings            `json:"tls,omitempty" yaml:"tls,omitempty"`
	PortLevelSettings []PortTrafficPolicy     `json:"portLevelSettings,omitempty" yaml:"portLevelSettings,omitempty"`
}

// PortTrafficPolicy is a traffic policy for one port.
type PortTrafficPolicy struct {
	// Port is nil when the key is absent (Istio: "portTrafficPolicy must
	// have valid port").
	Port             *PortSelector           `json:"port,omitempty" yaml:"port,omitempty"`
	LoadBalancer     *LoadBalancerSettings   `json:"loadBalancer,omitempty" yaml:"loadBalancer,omitempty"`
	ConnectionPool   *ConnectionPoolSettings `json:"connectionPool,omitempty" yaml:"connectionPool,omitempty"`
	OutlierDetection *OutlierDetection       `json:"outlierDetection,omitempty" yaml:"outlierDetection,omitempty"`
	TLS              *TLSSettings            `json:"tls,omitempty" yaml:"tls,omitempty"`
}

// LoadBalancerSettings is Istio's load balancer choice (kept, not acted on).
type LoadBalancerSettings struct {
	Simple         string            `json:"simple,omitempty" yaml:"simple,omitempty"`
	ConsistentHash *ConsistentHashLB `json:"consistentHash,omitempty" yaml:"consistentHash,omitempty"`
}

// ConsistentHashLB is LoadBalancerSettings.consistentHash.
type ConsistentHashLB struct {
	HTTPHeaderName string `json:"httpHeaderName,omitempty" yaml:"httpHeaderName,omitempty"`
	// HTTPHeader is Istio 0.8's name of HTTPHeaderName.
	HTTPHeader      string      `json:"httpHeader,omitempty" yaml:"httpHeader,omitempty"`
	HTTPCookie      *HTTPCookie `json:"httpCookie,omitempty" yaml:"httpCookie,omitempty"`
	UseSourceIP     bool        `json:"useSourceIp,omitempty" yaml:"useSourceIp,omitempty"`
	MinimumRingSize uint64      `json:"minimumRingSize,omitempty" yaml:"minimumRingSize,omitempty"`
}

// HTTPCookie is a consistent-hash cookie.
type HTTPCookie struct {
	Name string `json:"name" yaml:"name"`
	Path string `json:"path,omitempty" yaml:"path,omitempty"`
	TTL  string `json:"ttl,omitempty" yaml:"ttl,omitempty"`
}

// ConnectionPoolSettings is Istio's connection pool (kept, not acted on).
type ConnectionPoolSettings struct {
	TCP  *TCPSettings  `json:"tcp,omitempty" yaml:"tcp,omitempty"`
	HTTP *HTTPSettings `json:"http,omitempty" yaml:"http,omitempty"`
}

// TCPSettings is connectionPool.tcp. Numbers are signed (int32 in Istio's
// API) so that a negative value reaches validation and gets Istio's error.
type TCPSettings struct {
	MaxConnections int32  `json:"maxConnections,omitempty" yaml:"maxConnections,omitempty"`
	ConnectTimeout string `json:"connectTimeout,omitempty" yaml:"connectTimeout,omitempty"`
}

// HTTPSettings is connectionPool.http.
type HTTPSettings struct {
	HTTP1MaxPendingRequests  int32 `json:"http1MaxPendingRequests,omitempty" yaml:"http1MaxPendingRequests,omitempty"`
	HTTP2MaxRequests         int32 `json:"http2MaxRequests,omitempty" yaml:"http2MaxRequests,omitempty"`
	MaxRequestsPerConnection int32 `json:"maxRequestsPerConnection,omitempty" yaml:"maxRequestsPerConnection,omitempty"`
	MaxRetries               int32 `json:"maxRetries,omitempty" yaml:"maxRetries,omitempty"`
}

// OutlierDetection is Istio's outlier detection (kept, not acted on): the
// 1.0 form, or 0.8's with the same fields under http.
type OutlierDetection struct {
	ConsecutiveErrors  int32             `json:"consecutiveErrors,omitempty" yaml:"consecutiveErrors,omitempty"`
	Interval           string            `json:"interval,omitempty" yaml:"interval,omitempty"`
	BaseEjectionTime   string            `json:"baseEjectionTime,omitempty" yaml:"baseEjectionTime,omitempty"`
	MaxEjectionPercent int32             `json:"maxEjectionPercent,omitempty" yaml:"maxEjectionPercent,omitempty"`
	HTTP               *OutlierDetection `json:"http,omitempty" yaml:"http,omitempty"`
}

// TLSMode is a DestinationRule's client TLS mode.
type TLSMode string

const (
	TLSDisable     TLSMode = "DISABLE"
	TLSSimple      TLSMode = "SIMPLE"
	TLSMutual      TLSMode = "MUTUAL"
	TLSIstioMutual TLSMode = "ISTIO_MUTUAL"
)

// TLSSettings is trafficPolicy.tls.
type TLSSettings struct {
	Mode              TLSMode  `json:"mode" yaml:"mode"`
	ClientCertificate string   `json:"clientCertificate,omitempty" yaml:"clientCertificate,omitempty"`
	PrivateKey        string   `json:"privateKey,omitempty" yaml:"privateKey,omitempty"`
	CACertificates    string   `json:"caCertificates,omitempty" yaml:"caCertificates,omitempty"`
	SubjectAltNames   []string `json:"subjectAltNames,omitempty" yaml:"subjectAltNames,omitempty"`
	SNI               string   `json:"sni,omitempty" yaml:"sni,omitempty"`
}

// Subset is a named group of a service's endpoints, selected by labels.
type Subset struct {
	Name          string            `json:"name" yaml:"name"`
	Labels        map[string]string `json:"labels,omitempty" yaml:"labels,omitempty"`
	TrafficPolicy *TrafficPolicy    `json:"trafficPolicy,omitempty" yaml:"trafficPolicy,omitempty"`
}

// Sidecar is networking.istio.io/v1alpha3 Sidecar (Istio 1.1), reduced to
// what scales a large mesh: which services a workload's sidecar is told
// about (egress hosts). Without one, a sidecar knows every service.
type Sidecar struct {
	Object `json:",inline" yaml:",inline"`
	Spec   SidecarSpec `json:"spec" yaml:"spec"`
}

// SidecarSpec is the Sidecar body.
type SidecarSpec struct {
	// WorkloadSelector picks the workloads of the namespace it applies to;
	// nil means every workload of the namespace without a more specific one.
	WorkloadSelector *WorkloadSelector `json:"workloadSelector,omitempty" yaml:"workloadSelector,omitempty"`
	Egress           []EgressListener  `json:"egress" yaml:"egress"`
	// Ingress and OutboundTrafficPolicy are refused as not supported.
	Ingress               Raw `json:"-" yaml:"ingress,omitempty"`
	OutboundTrafficPolicy Raw `json:"-" yaml:"outboundTrafficPolicy,omitempty"`
}

// WorkloadSelector selects workloads by labels.
type WorkloadSelector struct {
	Labels map[string]string `json:"labels" yaml:"labels"`
}

// EgressListener lists the services a sidecar may reach, as
// "namespace/dnsName": namespace "*" (any), "." (the Sidecar's own) or a
// name; dnsName "*", an FQDN, or "*.suffix".
type EgressListener struct {
	Hosts []string `json:"hosts" yaml:"hosts"`
	// Port, Bind and CaptureMode are refused as not supported.
	Port        Raw    `json:"-" yaml:"port,omitempty"`
	Bind        string `json:"bind,omitempty" yaml:"bind,omitempty"`
	CaptureMode string `json:"captureMode,omitempty" yaml:"captureMode,omitempty"`
}

// RbacConfig is rbac.istio.io/v1alpha1 RbacConfig (a singleton named
// "default"); ClusterRbacConfig has the same spec.
type RbacConfig struct {
	Object `json:",inline" yaml:",inline"`
	Spec   RbacConfigSpec `json:"spec" yaml:"spec"`
}

// RbacMode turns authorization on for some or all services.
type RbacMode string

const (
	RbacOff             RbacMode = "OFF"
	RbacOn              RbacMode = "ON"
	RbacOnWithInclusion RbacMode = "ON_WITH_INCLUSION"
	RbacOnWithExclusion RbacMode = "ON_WITH_EXCLUSION"
)

// RbacConfigSpec is the RbacConfig body.
type RbacConfigSpec struct {
	Mode      RbacMode    `json:"mode" yaml:"mode"`
	Inclusion *RbacTarget `json:"inclusion,omitempty" yaml:"inclusion,omitempty"`
	Exclusion *RbacTarget `json:"exclusion,omitempty" yaml:"exclusion,omitempty"`
	// EnforcementMode is ENFORCED (default); PERMISSIVE is refused because
	// a dry-run authorizer that allows everything would be a silent hole.
	EnforcementMode string `json:"enforcementMode,omitempty" yaml:"enforcementMode,omitempty"`
}

// RbacTarget lists services (FQDN) and namespaces.
type RbacTarget struct {
	Services   []string `json:"services,omitempty" yaml:"services,omitempty"`
	Namespaces []string `json:"namespaces,omitempty" yaml:"namespaces,omitempty"`
}

// ServiceRole is a set of access rules in one namespace.
type ServiceRole struct {
	Object `json:",inline" yaml:",inline"`
	Spec   ServiceRoleSpec `json:"spec" yaml:"spec"`
}

// ServiceRoleSpec is the ServiceRole body.
type ServiceRoleSpec struct {
	Rules []AccessRule `json:"rules" yaml:"rules"`
}

// AccessRule is one permission.
type AccessRule struct {
	Services    []string     `json:"services" yaml:"services"`
	Methods     []string     `json:"methods,omitempty" yaml:"methods,omitempty"`
	Paths       []string     `json:"paths,omitempty" yaml:"paths,omitempty"`
	Constraints []Constraint `json:"constraints,omitempty" yaml:"constraints,omitempty"`
}

// Constraint restricts a rule by a destination attribute.
type Constraint struct {
	Key    string   `json:"key" yaml:"key"`
	Values []string `json:"values" yaml:"values"`
	Pos    Pos      `json:"-" yaml:"-"`
}

// ServiceRoleBinding binds subjects to a ServiceRole.
type ServiceRoleBinding struct {
	Object `json:",inline" yaml:",inline"`
	Spec   ServiceRoleBindingSpec `json:"spec" yaml:"spec"`
}

// ServiceRoleBindingSpec is the binding body.
type ServiceRoleBindingSpec struct {
	Subjects []Subject `json:"subjects" yaml:"subjects"`
	RoleRef  RoleRef   `json:"roleRef" yaml:"roleRef"`
}

// Subject is who is granted the role.
type Subject struct {
	User       string            `json:"user,omitempty" yaml:"user,omitempty"`
	Group      string            `json:"group,omitempty" yaml:"group,omitempty"`
	Properties map[string]string `json:"properties,omitempty" yaml:"properties,omitempty"`
	Pos        Pos               `json:"-" yaml:"-"`
}

// Authorization is Istio 0.8's Mixer `authorization` template instance
// (config.istio.io/v1alpha2), read only for what 0.8's RBAC names meant:
// each property of subject and action maps a name that ServiceRole
// constraint keys and ServiceRoleBinding properties use to an attribute
// expression. See RBACNames.
type Authorization struct {
	Object `json:",inline" yaml:",inline"`
	Spec   AuthorizationSpec `json:"spec" yaml:"spec"`
}

// AuthorizationSpec is the instance body.
type AuthorizationSpec struct {
	Subject AuthorizationSubject `json:"subject" yaml:"subject"`
	Action  AuthorizationAction  `json:"action" yaml:"action"`
}

// AuthorizationSubject is the instance's subject: who calls.
type AuthorizationSubject struct {
	User       string            `json:"user,omitempty" yaml:"user,omitempty"`
	Groups     string            `json:"groups,omitempty" yaml:"groups,omitempty"`
	Properties map[string]string `json:"properties,omitempty" yaml:"properties,omitempty"`
}

// AuthorizationAction is the instance's action: what is called.
type AuthorizationAction struct {
	Namespace  string            `json:"namespace,omitempty" yaml:"namespace,omitempty"`
	Service    string            `json:"service,omitempty" yaml:"service,omitempty"`
	Method     string            `json:"method,omitempty" yaml:"method,omitempty"`
	Path       string            `json:"path,omitempty" yaml:"path,omitempty"`
	Properties map[string]string `json:"properties,omitempty" yaml:"properties,omitempty"`
}

// RoleRef names the ServiceRole (in the binding's namespace).
type RoleRef struct {
	Kind string `json:"kind" yaml:"kind"`
	Name string `json:"name" yaml:"name"`
}

// Service is a local-mesh service: a name, ports and the workloads it
// selects. It plays the part of a Kubernetes Service.
type Service struct {
	Object `json:",inline" yaml:",inline"`
	Spec   ServiceSpec `json:"spec" yaml:"spec"`
}

// ServiceSpec is the Service body.
type ServiceSpec struct {
	Ports    []ServicePort     `json:"ports" yaml:"ports"`
	Selector map[string]string `json:"selector,omitempty" yaml:"selector,omitempty"`
	// Address is an optional virtual IP for transparent mode: callers that
	// connect to Address:Port are captured and sent to the endpoints.
	Address string `json:"address,omitempty" yaml:"address,omitempty"`
	// ServiceAccounts are the service accounts, in the Service's namespace,
	// whose sidecars may register themselves as endpoints of the Service
	// (and that secure naming then trusts to serve it), as Istio's
	// alpha.istio.io/kubernetes-serviceaccounts annotation. Registration is
	// closed by default: a self-registered sidecar joins only a Service
	// that allows its identity here, in subjectAltNames, in those
	// annotations, or as the service account of a declared Workload.
	ServiceAccounts []string `json:"serviceAccounts,omitempty" yaml:"serviceAccounts,omitempty"`
	// SubjectAltNames are full workload SPIFFE IDs allowed the same way
	// (another namespace), as Istio's ServiceEntry.subjectAltNames.
	SubjectAltNames []string `json:"subjectAltNames,omitempty" yaml:"subjectAltNames,omitempty"`
}

// ServicePort is one service port.
type ServicePort struct {
	Name     string `json:"name,omitempty" yaml:"name,omitempty"`
	Number   uint32 `json:"number" yaml:"number"`
	Protocol string `json:"protocol,omitempty" yaml:"protocol,omitempty"`
	// TargetPort is the workload port; 0 means the same as Number.
	TargetPort uint32 `json:"targetPort,omitempty" yaml:"targetPort,omitempty"`
}

// Workload is a local-mesh workload instance: a process with a service
// account, labels (metadata.labels, which Service selectors match), an
// address and ports. It plays the part of a Kubernetes Pod.
type Workload struct {
	Object `json:",inline" yaml:",inline"`
	Spec   WorkloadSpec `json:"spec" yaml:"spec"`
}

// WorkloadSpec is the Workload body.
type WorkloadSpec struct {
	// ServiceAccount the workload runs as; empty means "default".
	ServiceAccount string `json:"serviceAccount,omitempty" yaml:"serviceAccount,omitempty"`
	Address        string `json:"address" yaml:"address"`
	// Ports the application listens on.
	Ports []WorkloadPort `json:"ports,omitempty" yaml:"ports,omitempty"`
	// Sidecar says whether the workload runs a sidecar; nil means true.
	Sidecar *bool `json:"sidecar,omitempty" yaml:"sidecar,omitempty"`
}

// HasSidecar reports whether the workload runs a sidecar (default true).
func (w *WorkloadSpec) HasSidecar() bool { return w.Sidecar == nil || *w.Sidecar }

// WorkloadPort is one port of a workload.
type WorkloadPort struct {
	Name     string `json:"name,omitempty" yaml:"name,omitempty"`
	Number   uint32 `json:"number" yaml:"number"`
	Protocol string `json:"protocol,omitempty" yaml:"protocol,omitempty"`
	// SidecarPort is where the workload's sidecar listens for mesh traffic
	// to Number, in explicit (non-iptables) mode; 0 in transparent mode.
	SidecarPort uint32 `json:"sidecarPort,omitempty" yaml:"sidecarPort,omitempty"`
}

// Raw holds a YAML subtree that meshauth accepts but does not interpret.
type Raw struct {
	Node *yaml.Node
}

// IsZero reports whether the field was absent (for omitempty).
func (r Raw) IsZero() bool { return r.Node == nil }

// MarshalYAML writes the subtree back unchanged.
func (r Raw) MarshalYAML() (any, error) { return r.Node, nil }

// MarshalJSON converts the subtree to JSON.
func (r Raw) MarshalJSON() ([]byte, error) {
	if r.Node == nil {
		return []byte("null"), nil
	}
	var v any
	if err := r.Node.Decode(&v); err != nil {
		return nil, err
	}
	return json.Marshal(v)
}

// UnmarshalJSON reads JSON (a subset of YAML) back into a node.
func (r *Raw) UnmarshalJSON(b []byte) error {
	if string(b) == "null" {
		r.Node = nil
		return nil
	}
	var n yaml.Node
	if err := yaml.Unmarshal(b, &n); err != nil {
		return err
	}
	if n.Kind == yaml.DocumentNode && len(n.Content) == 1 {
		r.Node = n.Content[0]
	} else {
		r.Node = &n
	}
	return nil
}
