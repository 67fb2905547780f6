package engine

import (
	"fmt"
	"slices"
	"strings"

	"github.com/meshauth/meshauth/internal/policy"
	"github.com/meshauth/meshauth/internal/registry"
)

// Explanation is the answer to "what happens when this workload calls that
// service port, and why": both TLS modes with the objects that set them,
// whether they fit, the identities the client will accept, and the RBAC
// decision.
type Explanation struct {
	From string `json:"from"`
	To   string `json:"to"`
	// Call says what kind of request was asked about on an HTTP2/GRPC
	// port: a gRPC method or another HTTP/2 request (empty otherwise).
	Call string `json:"call,omitempty"`
	// Allow is the verdict: TLS modes fit and RBAC allows.
	Allow bool `json:"allow"`
	// Reason is one sentence saying what decided the verdict.
	Reason string `json:"reason"`

	Client       ModeDecision[policy.ClientTLSMode] `json:"client"`
	ClientProxy  bool                               `json:"clientSidecar"`
	Server       ModeDecision[policy.ServerMode]    `json:"server"`
	ServerProxy  bool                               `json:"serverSidecar"`
	TLSOK        bool                               `json:"tlsOk"`
	TLSProblem   string                             `json:"tlsProblem,omitempty"`
	SourceID     string                             `json:"sourceIdentity,omitempty"`
	ServerIDs    []string                           `json:"serverIdentities,omitempty"`
	TargetPort   uint32                             `json:"targetPort"`
	RBAC         policy.Decision                    `json:"rbac"`
	DecidingObjs []string                           `json:"decidedBy"`
	// OutOfScope names the Sidecar whose egress hosts leave the service
	// out of the client's outbound table (the call has no route).
	OutOfScope string   `json:"outOfScope,omitempty"`
	Notes      []string `json:"notes,omitempty"`
}

// Explain answers for a call from workload from to svc on service port
// port (HTTP method and path may be empty for TCP).
func (e *Engine) Explain(from *registry.Workload, svc *registry.Service, port uint32, method, path string) (*Explanation, error) {
	p, ok := svc.Port(port)
	if !ok {
		var ports []string
		for _, sp := range svc.Ports {
			ports = append(ports, fmt.Sprint(sp.Number))
		}
		return nil, fmt.Errorf("policy: service %s has no port %d (ports: %s)", svc.Key(), port, strings.Join(ports, ", "))
	}
	x := &Explanation{
		From:        from.Name + "." + from.Namespace,
		To:          fmt.Sprintf("%s:%d", svc.FQDN(), port),
		ClientProxy: from.Sidecar,
		TargetPort:  p.TargetPort,
		ServerIDs:   e.ServerIdentities(svc),
	}
	// Client side: without a sidecar the caller speaks plaintext whatever
	// the DestinationRule says.
	if from.Sidecar {
		c := e.ClientMode(svc, port, "")
		x.Client = c.ModeDecision
		if c.Settings != nil && len(c.Settings.SubjectAltNames) > 0 {
			x.ServerIDs = c.Settings.SubjectAltNames
			x.Notes = append(x.Notes, "subjectAltNames from "+c.DecidedBy+" replace the registry's service accounts")
		}
		if sc := e.SidecarFor(from); sc != nil && !EgressAllows(sc, svc) {
			x.OutOfScope = sc.Key()
		}
	} else {
		x.Client = ModeDecision[policy.ClientTLSMode]{Mode: policy.ClientDisable, DecidedBy: "Workload/" + from.Namespace + "/" + from.Name, Why: "no sidecar: the app's plaintext goes out as is"}
	}
	// Server side: the endpoints' sidecars apply the Policy; an endpoint
	// without a sidecar takes plaintext only.
	eps := e.Endpoints(svc)
	var withProxy, without []*registry.Workload
	for _, w := range eps {
		if w.Sidecar {
			withProxy = append(withProxy, w)
		} else {
			without = append(without, w)
		}
	}
	x.Server = e.ServerMode(svc, port)
	x.ServerProxy = len(withProxy) > 0
	switch {
	case len(eps) == 0:
		x.Notes = append(x.Notes, "service has no endpoints: the call fails whatever the policy")
	case len(withProxy) == 0:
		x.Server = ModeDecision[policy.ServerMode]{Mode: policy.ServerDisable, DecidedBy: "Workload/" + without[0].Namespace + "/" + without[0].Name, Why: "no sidecar on the endpoints: plaintext only"}
	case len(without) > 0:
		x.Notes = append(x.Notes, fmt.Sprintf("%d of %d endpoints run no sidecar and take plaintext only", len(without), len(eps)))
	}
	x.TLSOK, x.TLSProblem = Compatible(x.Server.Mode, x.Client.Mode)
	if x.Client.Mode == policy.ClientIstioMutual {
		x.SourceID = "spiffe://" + e.ix.cfg.TrustDomain() + "/ns/" + from.Namespace + "/sa/" + from.ServiceAccount
		if len(x.ServerIDs) == 0 {
			x.Notes = append(x.Notes, "no server identity is known for the service: secure naming will refuse every endpoint")
		}
	}
	if policy.InboundProtocol(p.Protocol, p.Name) == "HTTP2" && (method != "" || path != "") {
		// The server sidecar terminates HTTP/2 and authorizes each call.
		x.Call = "HTTP/2 " + method + " " + path
		if svcMethod, ok := policy.GRPCMethodOf(method, path); ok {
			x.Call = "gRPC method " + svcMethod + " (HTTP/2 POST " + path + ", authorized per call)"
		}
	}
	// RBAC runs on the server's sidecar, against a representative endpoint
	// (constraints on destination labels need one).
	target := &registry.Workload{Name: svc.Name, Namespace: svc.Namespace}
	if len(withProxy) > 0 {
		target = withProxy[0]
	}
	var snap *policy.Snapshot
	if x.ServerProxy {
		snap = e.inboundFor(target, svc)
	}
	req := policy.Request{Source: x.SourceID, Port: p.TargetPort, Service: svc.Name + "." + svc.Namespace, Method: method, Path: path}
	// End-user authentication runs before RBAC on the server's sidecar;
	// explain presents no token, so request.auth is the peer's principal
	// unless the Policy binds it to the origin.
	_, pol := e.serverPolicy(svc, port)
	eu := EndUser(pol)
	if eu == nil || !eu.UseOrigin {
		req.Auth = &policy.RequestAuth{Principal: strings.TrimPrefix(x.SourceID, "spiffe://")}
	}
	if eu != nil && len(eu.JWT) > 0 {
		var iss []string
		for _, j := range eu.JWT {
			iss = append(iss, j.Issuer)
		}
		need := "required: a request without one is answered 401"
		if eu.Optional {
			need = "optional (originIsOptional), but one that is present must verify"
		}
		x.Notes = append(x.Notes, fmt.Sprintf("%s requires end-user authentication on HTTP/1.x: a JWT from %s is %s; explain presents none (RBAC on request.auth.* sees no token)", eu.DecidedBy, strings.Join(iss, " or "), need))
	}
	if path == "" {
		x.RBAC = policy.Authorize(snap, req)
	} else if norm, err := policy.NormalizePath(strings.SplitN(path, "?", 2)[0]); err != nil {
		// The server sidecar answers 400 before authorization.
		x.RBAC = policy.Decision{Allow: false, Reason: "the server sidecar refuses the path (400): " + err.Error()}
	} else {
		// The server sidecar authorizes (and forwards) the normalised path.
		if norm != path {
			x.Notes = append(x.Notes, fmt.Sprintf("path %s is authorized as %s (normalised)", path, norm))
		}
		req.Path = norm
		x.RBAC = policy.AuthorizeHTTP(snap, req)
	}

	x.DecidingObjs = appendUnique(nil, x.Client.DecidedBy, x.Server.DecidedBy)
	x.DecidingObjs = appendUnique(x.DecidingObjs, x.RBAC.DecidedBy...)
	switch {
	case x.OutOfScope != "":
		x.DecidingObjs = appendUnique([]string{x.OutOfScope}, x.DecidingObjs...)
		x.Reason = fmt.Sprintf("%s does not list %s in its egress hosts: the client's sidecar has no route to it", x.OutOfScope, svc.FQDN())
	case len(eps) == 0:
		x.Reason = "service " + svc.Key() + " has no endpoints"
	case !x.TLSOK:
		x.Reason = x.TLSProblem
	case !x.RBAC.Allow:
		x.Reason = x.RBAC.Reason
	default:
		x.Allow = true
		x.Reason = fmt.Sprintf("client %s fits server %s; %s", x.Client.Mode, x.Server.Mode, x.RBAC.Reason)
	}
	return x, nil
}

// inboundFor is the server half of target's snapshot; when target is not a
// registered workload (no endpoints), RBAC is computed for svc alone.
func (e *Engine) inboundFor(target *registry.Workload, svc *registry.Service) *policy.Snapshot {
	if e.reg.Workload(target.Namespace, target.Name) != nil {
		return e.inbound(target)
	}
	s := &policy.Snapshot{Workload: policy.WorkloadRef{Name: target.Name, Namespace: target.Namespace}}
	if on, by := e.RBACFor(svc); on {
		s.RBAC = &policy.RBAC{DecidedBy: by, Policies: e.rbacPolicies(svc.Namespace, []string{svc.Name + "." + svc.Namespace})}
	}
	return s
}

func appendUnique(s []string, vs ...string) []string {
	for _, v := range vs {
		if v != "" && !slices.Contains(s, v) {
			s = append(s, v)
		}
	}
	return s
}

// Text renders the explanation for people (meshctl explain).
func (x *Explanation) Text() string {
	var b strings.Builder
	verdict := "DENY"
	if x.Allow {
		verdict = "ALLOW"
	}
	fmt.Fprintf(&b, "%s  %s -> %s\n", verdict, x.From, x.To)
	if x.Call != "" {
		fmt.Fprintf(&b, "  call:             %s\n", x.Call)
	}
	fmt.Fprintf(&b, "  reason:           %s\n", x.Reason)
	fmt.Fprintf(&b, "  client TLS mode:  %-13s set by %s (%s)\n", x.Client.Mode, x.Client.DecidedBy, x.Client.Why)
	fmt.Fprintf(&b, "  server mTLS mode: %-13s set by %s (%s)\n", x.Server.Mode, x.Server.DecidedBy, x.Server.Why)
	tls := "OK"
	if !x.TLSOK {
		tls = "CONFLICT: " + x.TLSProblem
	}
	fmt.Fprintf(&b, "  TLS:              %s\n", tls)
	if x.SourceID != "" {
		fmt.Fprintf(&b, "  client identity:  %s\n", x.SourceID)
	} else {
		fmt.Fprintf(&b, "  client identity:  none (plaintext)\n")
	}
	if len(x.ServerIDs) > 0 {
		fmt.Fprintf(&b, "  server identities (secure naming): %s\n", strings.Join(x.ServerIDs, ", "))
	} else {
		fmt.Fprintf(&b, "  server identities (secure naming): none known\n")
	}
	rb := "ALLOW"
	if !x.RBAC.Allow {
		rb = "DENY"
	}
	fmt.Fprintf(&b, "  RBAC:             %s: %s\n", rb, x.RBAC.Reason)
	fmt.Fprintf(&b, "  decided by:       %s\n", strings.Join(x.DecidingObjs, ", "))
	for _, n := range x.Notes {
		fmt.Fprintf(&b, "  note:             %s\n", n)
	}
	return b.String()
}
