package sidecarapi

import (
	"errors"
	"fmt"

	pb "github.com/meshauth/meshauth/api/meshauth/v1"
	"github.com/meshauth/meshauth/internal/policy"
)

var (
	serverModes = NewEnum("ServerMode", map[policy.ServerMode]pb.ServerMode{
		policy.ServerStrict:     pb.ServerMode_SERVER_MODE_STRICT,
		policy.ServerPermissive: pb.ServerMode_SERVER_MODE_PERMISSIVE,
		policy.ServerDisable:    pb.ServerMode_SERVER_MODE_DISABLE,
	})
	clientTLSModes = NewEnum("ClientTLSMode", map[policy.ClientTLSMode]pb.ClientTLSMode{
		policy.ClientDisable:     pb.ClientTLSMode_CLIENT_TLS_MODE_DISABLE,
		policy.ClientSimple:      pb.ClientTLSMode_CLIENT_TLS_MODE_SIMPLE,
		policy.ClientMutual:      pb.ClientTLSMode_CLIENT_TLS_MODE_MUTUAL,
		policy.ClientIstioMutual: pb.ClientTLSMode_CLIENT_TLS_MODE_ISTIO_MUTUAL,
	})
)

// SnapshotToProto converts a sidecar's snapshot for the Discovery stream.
// It fails only for a mode outside the policy package's constants.
func SnapshotToProto(s *policy.Snapshot) (*pb.PolicySnapshot, error) {
	def, err := serverModes.Wire(s.InboundDefault, "inboundDefault")
	if err != nil {
		return nil, err
	}
	out := &pb.PolicySnapshot{
		Version: s.Version, TrustDomain: s.TrustDomain, InboundDefault: def, OutboundScope: s.OutboundScope,
		InboundDefaultEndUser: endUserToProto(s.InboundDefaultEndUser),
		Workload: &pb.WorkloadRef{Name: s.Workload.Name, Namespace: s.Workload.Namespace,
			ServiceAccount: s.Workload.ServiceAccount, Labels: MapOrNil(s.Workload.Labels)},
	}
	for i, in := range s.Inbound {
		mode, err := serverModes.Wire(in.Mode, fmt.Sprintf("inbound[%d].mode", i))
		if err != nil {
			return nil, err
		}
		out.Inbound = append(out.Inbound, &pb.InboundPort{Port: in.Port, Mode: mode, Protocol: in.Protocol, Service: in.Service, DecidedBy: in.DecidedBy,
			EndUser: endUserToProto(in.EndUser)})
	}
	for i := range s.Outbound {
		o, err := outboundToProto(&s.Outbound[i], fmt.Sprintf("outbound[%d]", i))
		if err != nil {
			return nil, err
		}
		out.Outbound = append(out.Outbound, o)
	}
	if s.RBAC != nil {
		out.Rbac = rbacToProto(s.RBAC)
	}
	for _, r := range s.Refused {
		out.RegistrationRefused = append(out.RegistrationRefused, &pb.Refusal{Service: r.Service, Workload: r.Workload, SpiffeId: r.SPIFFEID, Reason: r.Reason})
	}
	return out, nil
}

func outboundToProto(o *policy.OutboundService, path string) (*pb.OutboundService, error) {
	out := &pb.OutboundService{Name: o.Name, Namespace: o.Namespace, Hosts: o.Hosts, Address: o.Address, ServerIdentities: o.ServerIdentities}
	for j, p := range o.Ports {
		mode, err := clientTLSModes.Wire(p.TLSMode, fmt.Sprintf("%s.ports[%d].tlsMode", path, j))
		if err != nil {
			return nil, err
		}
		out.Ports = append(out.Ports, &pb.OutboundPort{Name: p.Name, Port: p.Port, Protocol: p.Protocol, TargetPort: p.TargetPort,
			TlsMode: mode, Sni: p.SNI, SubjectAltNames: p.SubjectAltNames, DecidedBy: p.DecidedBy})
	}
	for _, e := range o.Endpoints {
		out.Endpoints = append(out.Endpoints, &pb.Endpoint{Workload: e.Workload, ServiceAccount: e.ServiceAccount,
			Address: e.Address, Ports: MapOrNil(e.Ports), Sidecar: e.Sidecar})
	}
	return out, nil
}

// endUserToProto converts a port's end-user authentication; nil stays
// unset.
func endUserToProto(e *policy.EndUserAuthn) *pb.EndUserAuthn {
	if e == nil {
		return nil
	}
	out := &pb.EndUserAuthn{Optional: e.Optional, UseOrigin: e.UseOrigin, DecidedBy: e.DecidedBy}
	for _, j := range e.JWT {
		out.Jwt = append(out.Jwt, &pb.JWT{Issuer: j.Issuer, Audiences: j.Audiences, JwksUri: j.JwksURI,
			JwtHeaders: j.JWTHeaders, JwtParams: j.JWTParams})
	}
	return out
}

func endUserFromProto(e *pb.EndUserAuthn) *policy.EndUserAuthn {
	if e == nil {
		return nil
	}
	out := &policy.EndUserAuthn{Optional: e.GetOptional(), UseOrigin: e.GetUseOrigin(), DecidedBy: e.GetDecidedBy()}
	for _, j := range e.GetJwt() {
		out.JWT = append(out.JWT, policy.JWTRule{Issuer: j.GetIssuer(), Audiences: NilIfEmpty(j.GetAudiences()), JwksURI: j.GetJwksUri(),
			JWTHeaders: NilIfEmpty(j.GetJwtHeaders()), JWTParams: NilIfEmpty(j.GetJwtParams())})
	}
	return out
}

func rbacToProto(r *policy.RBAC) *pb.RBAC {
	out := &pb.RBAC{DecidedBy: r.DecidedBy, OffServices: r.OffServices}
	for _, p := range r.Policies {
		pp := &pb.RBACPolicy{Role: p.Role, Bindings: p.Bindings}
		for _, rule := range p.Rules {
			pr := &pb.RBACRule{Services: rule.Services, Methods: rule.Methods, Paths: rule.Paths, Extra: MapOrNil(rule.Extra)}
			for _, c := range rule.Constraints {
				pr.Constraints = append(pr.Constraints, &pb.RBACConstraint{Key: c.Key, Values: c.Values})
			}
			pp.Rules = append(pp.Rules, pr)
		}
		for _, sub := range p.Subjects {
			pp.Subjects = append(pp.Subjects, &pb.RBACSubject{User: sub.User, Properties: MapOrNil(sub.Properties), Binding: sub.Binding})
		}
		out.Policies = append(out.Policies, pp)
	}
	return out
}

// SnapshotFromProto converts a pushed snapshot back. An enum value this
// build does not know is an error naming the field (the sidecar NACKs the
// snapshot and keeps its last good one); the shape checks are
// policy.Snapshot.Validate's.
func SnapshotFromProto(m *pb.PolicySnapshot) (*policy.Snapshot, error) {
	if m == nil {
		return nil, errors.New("snapshot has no policy")
	}
	def, err := serverModes.FromProto(m.InboundDefault, "inboundDefault")
	if err != nil {
		return nil, err
	}
	s := &policy.Snapshot{Version: m.Version, TrustDomain: m.TrustDomain, InboundDefault: def, OutboundScope: m.OutboundScope,
		InboundDefaultEndUser: endUserFromProto(m.InboundDefaultEndUser)}
	if w := m.Workload; w != nil {
		s.Workload = policy.WorkloadRef{Name: w.Name, Namespace: w.Namespace, ServiceAccount: w.ServiceAccount, Labels: MapOrNil(w.Labels)}
	}
	for i, in := range m.Inbound {
		mode, err := serverModes.FromProto(in.GetMode(), fmt.Sprintf("inbound[%d].mode", i))
		if err != nil {
			return nil, err
		}
		s.Inbound = append(s.Inbound, policy.InboundPort{Port: in.GetPort(), Mode: mode, Protocol: in.GetProtocol(), Service: in.GetService(), DecidedBy: in.GetDecidedBy(),
			EndUser: endUserFromProto(in.GetEndUser())})
	}
	for i, o := range m.Outbound {
		g, err := outboundFromProto(o, fmt.Sprintf("outbound[%d]", i))
		if err != nil {
			return nil, err
		}
		s.Outbound = append(s.Outbound, g)
	}
	if m.Rbac != nil {
		s.RBAC = rbacFromProto(m.Rbac)
	}
	for _, r := range m.RegistrationRefused {
		s.Refused = append(s.Refused, policy.Refusal{Service: r.GetService(), Workload: r.GetWorkload(), SPIFFEID: r.GetSpiffeId(), Reason: r.GetReason()})
	}
	return s, nil
}

func outboundFromProto(o *pb.OutboundService, path string) (policy.OutboundService, error) {
	g := policy.OutboundService{Name: o.GetName(), Namespace: o.GetNamespace(), Hosts: NilIfEmpty(o.GetHosts()),
		Address: o.GetAddress(), ServerIdentities: NilIfEmpty(o.GetServerIdentities())}
	for j, p := range o.GetPorts() {
		mode, err := clientTLSModes.FromProto(p.GetTlsMode(), fmt.Sprintf("%s.ports[%d].tlsMode", path, j))
		if err != nil {
			return g, err
		}
		g.Ports = append(g.Ports, policy.OutboundPort{Name: p.GetName(), Port: p.GetPort(), Protocol: p.GetProtocol(), TargetPort: p.GetTargetPort(),
			TLSMode: mode, SNI: p.GetSni(), SubjectAltNames: NilIfEmpty(p.GetSubjectAltNames()), DecidedBy: p.GetDecidedBy()})
	}
	for _, e := range o.GetEndpoints() {
		g.Endpoints = append(g.Endpoints, policy.Endpoint{Workload: e.GetWorkload(), ServiceAccount: e.GetServiceAccount(),
			Address: e.GetAddress(), Ports: MapOrNil(e.GetPorts()), Sidecar: e.GetSidecar()})
	}
	return g, nil
}

func rbacFromProto(r *pb.RBAC) *policy.RBAC {
	out := &policy.RBAC{DecidedBy: r.DecidedBy, OffServices: NilIfEmpty(r.OffServices)}
	for _, p := range r.Policies {
		gp := policy.RBACPolicy{Role: p.GetRole(), Bindings: NilIfEmpty(p.GetBindings())}
		for _, rule := range p.GetRules() {
			gr := policy.RBACRule{Services: NilIfEmpty(rule.GetServices()), Methods: NilIfEmpty(rule.GetMethods()),
				Paths: NilIfEmpty(rule.GetPaths()), Extra: MapOrNil(rule.GetExtra())}
			for _, c := range rule.GetConstraints() {
				gr.Constraints = append(gr.Constraints, policy.RBACConstraint{Key: c.GetKey(), Values: NilIfEmpty(c.GetValues())})
			}
			gp.Rules = append(gp.Rules, gr)
		}
		for _, sub := range p.GetSubjects() {
			gp.Subjects = append(gp.Subjects, policy.RBACSubject{User: sub.GetUser(), Properties: MapOrNil(sub.GetProperties()), Binding: sub.GetBinding()})
		}
		out.Policies = append(out.Policies, gp)
	}
	return out
}
