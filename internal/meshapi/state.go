package meshapi

import (
	"fmt"
	"time"

	"gopkg.in/yaml.v3"

	pb "github.com/meshauth/meshauth/api/meshauth/v1"
	"github.com/meshauth/meshauth/internal/config"
	"github.com/meshauth/meshauth/internal/meshapi/sidecarapi"
	"github.com/meshauth/meshauth/internal/policy/engine"
	"github.com/meshauth/meshauth/internal/registry"
)

// State is what Admin.GetState returns: the config in force, the registry
// and the sidecars on the Discovery stream. meshctl get, explain,
// tls-check and check compute from it with the same policy engine the
// control plane uses. Its JSON form is `meshctl get -o json`'s.
type State struct {
	ConfigVersion uint64          `json:"configVersion"`
	Config        *config.Config  `json:"config"`
	Registry      registry.State  `json:"registry"`
	Sidecars      []SidecarStatus `json:"sidecars"`
	// ConfigRejected is set while the config directory holds content that
	// was rejected: the config in force is the last good one.
	ConfigRejected *ConfigRejection `json:"configRejected,omitempty"`
}

// Engine rebuilds the policy engine the control plane uses.
func (st *State) Engine() *engine.Engine {
	return engine.New(st.Config, registry.FromState(st.Registry))
}

// SidecarStatus is what the control plane knows of one sidecar on the
// Discovery stream.
type SidecarStatus struct {
	Workload  string `json:"workload"` // namespace/name
	SPIFFEID  string `json:"spiffeId"`
	Sent      string `json:"sent"`
	Acked     string `json:"acked"`
	Nacked    string `json:"nacked,omitempty"`
	NackError string `json:"nackError,omitempty"`
}

// ConfigRejection says why the config source's current content is not in
// force.
type ConfigRejection struct {
	// Dir is the source's Name (the config directory).
	Dir string    `json:"dir"`
	At  time.Time `json:"at"`
	// Errors are file:line:column: object: field: message, one per problem.
	Errors []string `json:"errors"`
}

// StateToProto converts the control plane's state for Admin.GetState. The
// config travels as one YAML document per object, the format
// internal/config parses, with each object's source position beside it.
func StateToProto(st *State) (*pb.GetStateResponse, error) {
	out := &pb.GetStateResponse{ConfigVersion: st.ConfigVersion}
	if st.Config != nil {
		for _, o := range st.Config.Objects() {
			doc, err := yaml.Marshal(o)
			if err != nil {
				return nil, fmt.Errorf("state: encode %s: %w", config.ObjectOf(o).Key(), err)
			}
			src := config.ObjectOf(o).Source
			out.Config = append(out.Config, &pb.ConfigObject{Yaml: doc, SourceFile: src.File, SourceLine: int32(src.Line), SourceColumn: int32(src.Column)})
		}
	}
	for _, s := range st.Registry.Services {
		ps := &pb.RegistryService{Name: s.Name, Namespace: s.Namespace, Selector: sidecarapi.MapOrNil(s.Selector), Address: s.Address,
			Source: s.Source, ServiceAccounts: s.ServiceAccounts}
		for _, p := range s.Ports {
			ps.Ports = append(ps.Ports, &pb.ServicePort{Name: p.Name, Number: p.Number, Protocol: p.Protocol, TargetPort: p.TargetPort})
		}
		out.Services = append(out.Services, ps)
	}
	for _, w := range st.Registry.Workloads {
		pw := &pb.RegistryWorkload{Name: w.Name, Namespace: w.Namespace, ServiceAccount: w.ServiceAccount, Labels: sidecarapi.MapOrNil(w.Labels),
			Address: w.Address, Sidecar: w.Sidecar, Source: w.Source}
		for _, p := range w.Ports {
			pw.Ports = append(pw.Ports, &pb.WorkloadPort{Name: p.Name, Number: p.Number, Protocol: p.Protocol, SidecarPort: p.SidecarPort})
		}
		out.Workloads = append(out.Workloads, pw)
	}
	for _, s := range st.Sidecars {
		out.Sidecars = append(out.Sidecars, &pb.SidecarStatus{Workload: s.Workload, SpiffeId: s.SPIFFEID, Sent: s.Sent, Acked: s.Acked, Nacked: s.Nacked, NackError: s.NackError})
	}
	if r := st.ConfigRejected; r != nil {
		out.ConfigRejected = &pb.ConfigRejection{Dir: r.Dir, At: timeToProto(r.At), Errors: r.Errors}
	}
	return out, nil
}

// StateFromProto converts Admin.GetState's answer back. Each config
// document is parsed and validated again, as a file would be: the control
// plane is trusted to serve valid config, but a document that does not
// parse is an error naming it, not a silently smaller config.
func StateFromProto(m *pb.GetStateResponse) (*State, error) {
	cfg, err := configFromProto(m.Config)
	if err != nil {
		return nil, err
	}
	cfg.Version = m.ConfigVersion
	st := &State{ConfigVersion: m.ConfigVersion, Config: cfg, Registry: registry.State{Services: []*registry.Service{}, Workloads: []*registry.Workload{}}}
	for _, s := range m.Services {
		rs := &registry.Service{Name: s.GetName(), Namespace: s.GetNamespace(), Selector: sidecarapi.MapOrNil(s.GetSelector()), Address: s.GetAddress(),
			Source: s.GetSource(), ServiceAccounts: sidecarapi.NilIfEmpty(s.GetServiceAccounts())}
		for _, p := range s.GetPorts() {
			rs.Ports = append(rs.Ports, registry.Port{Name: p.GetName(), Number: p.GetNumber(), Protocol: p.GetProtocol(), TargetPort: p.GetTargetPort()})
		}
		st.Registry.Services = append(st.Registry.Services, rs)
	}
	for _, w := range m.Workloads {
		rw := &registry.Workload{Name: w.GetName(), Namespace: w.GetNamespace(), ServiceAccount: w.GetServiceAccount(), Labels: sidecarapi.MapOrNil(w.GetLabels()),
			Address: w.GetAddress(), Sidecar: w.GetSidecar(), Source: w.GetSource()}
		for _, p := range w.GetPorts() {
			rw.Ports = append(rw.Ports, registry.WorkloadPort{Name: p.GetName(), Number: p.GetNumber(), Protocol: p.GetProtocol(), SidecarPort: p.GetSidecarPort()})
		}
		st.Registry.Workloads = append(st.Registry.Workloads, rw)
	}
	st.Sidecars = make([]SidecarStatus, 0, len(m.Sidecars))
	for _, s := range m.Sidecars {
		st.Sidecars = append(st.Sidecars, SidecarStatus{Workload: s.GetWorkload(), SPIFFEID: s.GetSpiffeId(), Sent: s.GetSent(),
			Acked: s.GetAcked(), Nacked: s.GetNacked(), NackError: s.GetNackError()})
	}
	if r := m.ConfigRejected; r != nil {
		st.ConfigRejected = &ConfigRejection{Dir: r.Dir, At: timeFromProto(r.At), Errors: sidecarapi.NilIfEmpty(r.Errors)}
	}
	return st, nil
}

func configFromProto(docs []*pb.ConfigObject) (*config.Config, error) {
	var objs []any
	for i, d := range docs {
		name := d.GetSourceFile()
		if name == "" {
			name = fmt.Sprintf("config[%d]", i)
		}
		parsed, errs := config.Parse(name, d.GetYaml())
		if len(errs) > 0 {
			return nil, fmt.Errorf("state: config[%d]: %w", i, errs)
		}
		if len(parsed) != 1 {
			return nil, fmt.Errorf("state: config[%d]: %d objects in one document, want 1", i, len(parsed))
		}
		config.ObjectOf(parsed[0]).Source = config.Pos{File: d.GetSourceFile(), Line: int(d.GetSourceLine()), Column: int(d.GetSourceColumn())}
		objs = append(objs, parsed[0])
	}
	cfg, err := config.New(objs)
	if err != nil {
		return nil, fmt.Errorf("state: config: %w", err)
	}
	return cfg, nil
}
