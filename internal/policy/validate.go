package policy

import (
	"errors"
	"fmt"
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
