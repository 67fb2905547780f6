package policy

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

// Authorize decides whether r is allowed by the snapshot's RBAC rules.
//
// NOTE: placeholder with the final signature so the sidecar can call it; the
// control-plane work (issue 4) replaces the body with the ServiceRole /
// ServiceRoleBinding matcher. With RBAC off (nil) every request is allowed.
func Authorize(s *Snapshot, r Request) Decision {
	if s == nil || s.RBAC == nil {
		return Decision{Allow: true, Reason: "RBAC is off for this workload"}
	}
	return Decision{Allow: false, Reason: "RBAC matcher not implemented yet"}
}
