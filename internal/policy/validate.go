package policy

import (
	"errors"
	"fmt"
	"strings"
)

// Validate checks a snapshot received from the control plane before a
// sidecar swaps it in: a snapshot that fails is NACKed and the last good one
// stays in force. It checks shape, not policy: modes are known values, ports
// are in range, every outbound service has a name and hosts.
func (s *Snapshot) Validate() error {
	if s == nil {
		return errors.New("policy: snapshot is empty")
	}
	if s.Version == "" {
		return errors.New("policy: snapshot has no version")
	}
	if s.Workload.Name == "" || s.Workload.Namespace == "" || s.Workload.ServiceAccount == "" {
		return fmt.Errorf("policy: snapshot names no workload (%+v)", s.Workload)
	}
	if !validServer(s.InboundDefault) {
		return fmt.Errorf("policy: inboundDefault %q is not STRICT, PERMISSIVE or DISABLE", s.InboundDefault)
	}
	for i, in := range s.Inbound {
		if in.Port == 0 || in.Port > 65535 {
			return fmt.Errorf("policy: inbound[%d]: port %d out of range", i, in.Port)
		}
		if !validServer(in.Mode) {
			return fmt.Errorf("policy: inbound[%d] (port %d): mode %q is not STRICT, PERMISSIVE or DISABLE", i, in.Port, in.Mode)
		}
		if err := in.EndUser.validate(); err != nil {
			return fmt.Errorf("policy: inbound[%d] (port %d): %w", i, in.Port, err)
		}
	}
	if err := s.InboundDefaultEndUser.validate(); err != nil {
		return fmt.Errorf("policy: inboundDefaultEndUser: %w", err)
	}
	for i, o := range s.Outbound {
		if o.Name == "" || o.Namespace == "" || len(o.Hosts) == 0 {
			return fmt.Errorf("policy: outbound[%d]: service without name, namespace or hosts", i)
		}
		for j, p := range o.Ports {
			if p.Port == 0 || p.Port > 65535 || p.TargetPort > 65535 {
				return fmt.Errorf("policy: outbound %s.%s port[%d]: port %d/%d out of range", o.Name, o.Namespace, j, p.Port, p.TargetPort)
			}
			switch p.TLSMode {
			case ClientDisable, ClientSimple, ClientMutual, ClientIstioMutual:
			default:
				return fmt.Errorf("policy: outbound %s.%s port %d: tlsMode %q is not DISABLE, SIMPLE, MUTUAL or ISTIO_MUTUAL", o.Name, o.Namespace, p.Port, p.TLSMode)
			}
		}
	}
	return nil
}

func validServer(m ServerMode) bool {
	return m == ServerStrict || m == ServerPermissive || m == ServerDisable
}

// validate checks end-user rules: an issuer and an https JWKS URI each.
func (eu *EndUserAuthn) validate() error {
	if eu == nil {
		return nil
	}
	for i, r := range eu.JWT {
		if r.Issuer == "" || !strings.HasPrefix(r.JwksURI, "https://") {
			return fmt.Errorf("endUser.jwt[%d]: want an issuer and an https jwksUri, got %q %q", i, r.Issuer, r.JwksURI)
		}
	}
	return nil
}
