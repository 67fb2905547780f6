package meshapi

import (
	"encoding/json"
	"fmt"
	"testing"

	"google.golang.org/protobuf/proto"

	pb "github.com/meshauth/meshauth/api/meshauth/v1"
	"github.com/meshauth/meshauth/internal/meshapi/sidecarapi"
	"github.com/meshauth/meshauth/internal/policy"
)

// benchSnapshot is a client's snapshot in a mesh of n services, each with
// two ports and three endpoints, and an RBAC policy: the shape the engine
// computes (internal/policy), built directly.
func benchSnapshot(n int) *policy.Snapshot {
	s := &policy.Snapshot{Version: "0123456789abcdef", TrustDomain: "cluster.local", InboundDefault: policy.ServerStrict,
		Workload: policy.WorkloadRef{Name: "sleep-1", Namespace: "default", ServiceAccount: "sleep", Labels: map[string]string{"app": "sleep", "version": "v1"}},
		Inbound:  []policy.InboundPort{{Port: 8080, Mode: policy.ServerStrict, Protocol: "HTTP", Service: "sleep.default", DecidedBy: "Policy/default/default"}},
		RBAC: &policy.RBAC{DecidedBy: "RbacConfig/default", Policies: []policy.RBACPolicy{{Role: "default/viewer", Bindings: []string{"default/bind"},
			Rules:    []policy.RBACRule{{Services: []string{"*"}, Methods: []string{"GET"}, Paths: []string{"/status/*"}}},
			Subjects: []policy.RBACSubject{{User: "cluster.local/ns/default/sa/sleep", Binding: "default/bind"}}}}}}
	for i := range n {
		name, ns := fmt.Sprintf("svc-%d", i), fmt.Sprintf("ns-%d", i%100)
		o := policy.OutboundService{Name: name, Namespace: ns, Address: fmt.Sprintf("10.96.%d.%d", i/250, i%250),
			Hosts:            []string{name + "." + ns, name + "." + ns + ".svc", name + "." + ns + ".svc.cluster.local"},
			ServerIdentities: []string{"spiffe://cluster.local/ns/" + ns + "/sa/" + name},
			Ports: []policy.OutboundPort{
				{Name: "http", Port: 80, Protocol: "HTTP", TargetPort: 8080, TLSMode: policy.ClientIstioMutual, DecidedBy: "mesh/authPolicy"},
				{Name: "grpc", Port: 9090, Protocol: "GRPC", TargetPort: 9090, TLSMode: policy.ClientIstioMutual, DecidedBy: "mesh/authPolicy"}}}
		for j := range 3 {
			o.Endpoints = append(o.Endpoints, policy.Endpoint{Workload: fmt.Sprintf("%s-%d", name, j), ServiceAccount: name,
				Address: fmt.Sprintf("10.%d.%d.%d", j, i/250, i%250), Sidecar: true})
		}
		s.Outbound = append(s.Outbound, o)
	}
	return s
}

// BenchmarkSnapshotWire compares what one push costs on each side: the
// control plane's encoding and the sidecar's decoding of a 200-service
// snapshot, as the JSON blob the API carried before (json.Marshal /
// json.Unmarshal) and as the typed message now (SnapshotToProto +
// proto.Marshal / proto.Unmarshal + SnapshotFromProto). wire-B is the
// encoded size.
func BenchmarkSnapshotWire(b *testing.B) {
	s := benchSnapshot(200)
	b.Run("json", func(b *testing.B) {
		var size int
		for b.Loop() {
			js, err := json.Marshal(s)
			if err != nil {
				b.Fatal(err)
			}
			var back policy.Snapshot
			if err := json.Unmarshal(js, &back); err != nil {
				b.Fatal(err)
			}
			size = len(js)
		}
		b.ReportMetric(float64(size), "wire-B")
	})
	b.Run("proto", func(b *testing.B) {
		var size int
		for b.Loop() {
			m, err := sidecarapi.SnapshotToProto(s)
			if err != nil {
				b.Fatal(err)
			}
			data, err := proto.MarshalOptions{Deterministic: true}.Marshal(m)
			if err != nil {
				b.Fatal(err)
			}
			var back pb.PolicySnapshot
			if err := proto.Unmarshal(data, &back); err != nil {
				b.Fatal(err)
			}
			if _, err := sidecarapi.SnapshotFromProto(&back); err != nil {
				b.Fatal(err)
			}
			size = len(data)
		}
		b.ReportMetric(float64(size), "wire-B")
	})
}
