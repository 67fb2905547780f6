package meshapi

import (
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"reflect"
	"strings"
	"testing"
	"time"

	"google.golang.org/protobuf/proto"

	pb "github.com/meshauth/meshauth/api/meshauth/v1"
	"github.com/meshauth/meshauth/internal/ca/catest"
	"github.com/meshauth/meshauth/internal/careport"
	"github.com/meshauth/meshauth/internal/config"
	"github.com/meshauth/meshauth/internal/meshapi/sidecarapi"
	"github.com/meshauth/meshauth/internal/policy"
	"github.com/meshauth/meshauth/internal/policy/engine"
	"github.com/meshauth/meshauth/internal/registry"
)

// configSets are real config inputs of the repository: the config
// package's valid examples, the policy engine's Istio 0.8 matrix, and
// meshctl's RBAC example.
var configSets = map[string][]string{
	"istio":     {"../config/testdata/valid/istio.yaml"},
	"configmap": {"../config/testdata/valid/istio-configmap.yaml"},
	"mesh":      {"../config/testdata/valid/mesh.yaml"},
	"matrix":    {"../policy/engine/testdata/matrix.yaml", "../policy/engine/testdata/matrix-registry.yaml"},
	"rbac":      {"../policy/engine/testdata/matrix-registry.yaml", "../../cmd/meshctl/testdata/policycli/rbac.yaml"},
	"jwt":       {"../policy/engine/testdata/matrix-registry.yaml", "testdata/jwt.yaml"},
}

func loadSet(t testing.TB, paths []string) (*config.Config, *registry.Registry) {
	t.Helper()
	cfg, err := config.LoadPaths(paths...)
	if err != nil {
		t.Fatalf("load %v: %v", paths, err)
	}
	reg := registry.New()
	ss, ws := registry.FromConfig(cfg)
	reg.Sync(registry.SourceConfig, ss, ws)
	return cfg, reg
}

// wire sends m through protobuf's encoding, as gRPC does.
func wire[M proto.Message](t testing.TB, m M, into M) M {
	t.Helper()
	b, err := proto.Marshal(m)
	if err != nil {
		t.Fatal(err)
	}
	if err := proto.Unmarshal(b, into); err != nil {
		t.Fatal(err)
	}
	return into
}

// canon returns v with every empty slice and map made nil: the one
// difference a protobuf round trip may make (see the package doc); and
// every field the JSON form never carried either (tagged json:"-") zero.
func canon[T any](v T) T {
	rv := reflect.ValueOf(&v).Elem()
	canonValue(rv)
	return v
}

func canonValue(v reflect.Value) {
	switch v.Kind() {
	case reflect.Pointer, reflect.Interface:
		if !v.IsNil() {
			canonValue(v.Elem())
		}
	case reflect.Struct:
		for i := 0; i < v.NumField(); i++ {
			switch f := v.Type().Field(i); {
			case !f.IsExported():
			case f.Tag.Get("json") == "-":
				if v.Field(i).CanSet() {
					v.Field(i).SetZero()
				}
			default:
				canonValue(v.Field(i))
			}
		}
	case reflect.Slice:
		if v.Len() == 0 {
			if !v.IsNil() && v.CanSet() {
				v.SetZero()
			}
			return
		}
		for i := 0; i < v.Len(); i++ {
			canonValue(v.Index(i))
		}
	case reflect.Map:
		if v.Len() == 0 && !v.IsNil() && v.CanSet() {
			v.SetZero()
		}
	}
}

// TestSnapshotRoundTripEngine: every snapshot the policy engine computes
// for the repository's configs survives Go -> proto -> wire -> Go.
func TestSnapshotRoundTripEngine(t *testing.T) {
	n, rbac, endUserDefault, endUserPort := 0, 0, 0, 0
	for name, paths := range configSets {
		cfg, reg := loadSet(t, paths)
		e := engine.New(cfg, reg)
		for _, w := range reg.Workloads() {
			snap := e.Snapshot(w)
			snap.Version = "v-" + name
			m, err := sidecarapi.SnapshotToProto(snap)
			if err != nil {
				t.Fatalf("%s %s: %v", name, w.Key(), err)
			}
			back, err := sidecarapi.SnapshotFromProto(wire(t, m, &pb.PolicySnapshot{}))
			if err != nil {
				t.Fatalf("%s %s: %v", name, w.Key(), err)
			}
			if want := canon(*snap); !reflect.DeepEqual(*back, want) {
				t.Errorf("%s %s: round trip changed the snapshot\n got: %s\nwant: %s", name, w.Key(), asJSON(back), asJSON(want))
			}
			if err := back.Validate(); err != nil {
				t.Errorf("%s %s: %v", name, w.Key(), err)
			}
			n++
			if snap.RBAC != nil && len(snap.RBAC.Policies) > 0 {
				rbac++
			}
			if snap.InboundDefaultEndUser != nil {
				endUserDefault++
			}
			for _, in := range snap.Inbound {
				if in.EndUser != nil && len(in.EndUser.JWT) > 1 && in.EndUser.Optional && in.EndUser.UseOrigin {
					endUserPort++
				}
			}
		}
	}
	if n == 0 || rbac == 0 || endUserDefault == 0 || endUserPort == 0 {
		t.Fatalf("%d snapshots, %d with RBAC policies, %d with a default end-user authentication, %d ports with one: the configs exercise too little",
			n, rbac, endUserDefault, endUserPort)
	}
}

// TestSnapshotEveryField fills every field of a policy.Snapshot, at every
// depth, by reflection (so a field added to any of its structs is filled
// too) and requires the round trip to give it all back: a field the
// conversion forgets comes back zero and fails here. Only fields the JSON
// form did not carry either (json:"-") are left out.
func TestSnapshotEveryField(t *testing.T) {
	var s policy.Snapshot
	n := 0
	fillAll(reflect.ValueOf(&s).Elem(), &n)
	if s.InboundDefaultEndUser == nil || len(s.Inbound) == 0 || s.Inbound[0].EndUser == nil || len(s.Inbound[0].EndUser.JWT) == 0 ||
		len(s.Inbound[0].EndUser.JWT[0].JWTParams) == 0 || s.RBAC == nil || len(s.RBAC.Policies[0].Rules[0].Constraints) == 0 {
		t.Fatalf("fillAll left fields empty: %s", asJSON(s))
	}
	m, err := sidecarapi.SnapshotToProto(&s)
	if err != nil {
		t.Fatal(err)
	}
	back, err := sidecarapi.SnapshotFromProto(wire(t, m, &pb.PolicySnapshot{}))
	if err != nil {
		t.Fatal(err)
	}
	if want := canon(s); !reflect.DeepEqual(*back, want) {
		t.Fatalf("the round trip lost fields\n got: %s\nwant: %s", asJSON(back), asJSON(want))
	}
}

// fillAll sets every exported field under v (but json:"-") to a value
// that is not zero, different per field (n counts); enums get a known
// mode, lists two elements, maps one entry.
func fillAll(v reflect.Value, n *int) {
	*n++
	switch v.Interface().(type) {
	case policy.ServerMode:
		v.Set(reflect.ValueOf([]policy.ServerMode{policy.ServerStrict, policy.ServerPermissive, policy.ServerDisable}[*n%3]))
		return
	case policy.ClientTLSMode:
		v.Set(reflect.ValueOf([]policy.ClientTLSMode{policy.ClientDisable, policy.ClientSimple, policy.ClientMutual, policy.ClientIstioMutual}[*n%4]))
		return
	}
	switch v.Kind() {
	case reflect.String:
		v.SetString(fmt.Sprintf("v%d", *n))
	case reflect.Bool:
		v.SetBool(true)
	case reflect.Uint32, reflect.Uint64, reflect.Int, reflect.Int32, reflect.Int64:
		if v.CanUint() {
			v.SetUint(uint64(*n))
		} else {
			v.SetInt(int64(*n))
		}
	case reflect.Pointer:
		v.Set(reflect.New(v.Type().Elem()))
		fillAll(v.Elem(), n)
	case reflect.Struct:
		for i := 0; i < v.NumField(); i++ {
			if f := v.Type().Field(i); f.IsExported() && f.Tag.Get("json") != "-" {
				fillAll(v.Field(i), n)
			}
		}
	case reflect.Slice:
		v.Set(reflect.MakeSlice(v.Type(), 2, 2))
		fillAll(v.Index(0), n)
		fillAll(v.Index(1), n)
	case reflect.Map:
		v.Set(reflect.MakeMap(v.Type()))
		k, e := reflect.New(v.Type().Key()).Elem(), reflect.New(v.Type().Elem()).Elem()
		fillAll(k, n)
		fillAll(e, n)
		v.SetMapIndex(k, e)
	default:
		panic(fmt.Sprintf("fillAll: no value for %s (kind %s): teach it", v.Type(), v.Kind()))
	}
}

func asJSON(v any) string {
	b, _ := json.Marshal(v)
	return string(b)
}

// randSnapshot builds a snapshot from a seed: every field set or not,
// modes from the known ones or empty, lists and maps empty or not (nil when
// empty: canon form).
func randSnapshot(r *rand.Rand) *policy.Snapshot {
	str := func() string {
		chars := []rune("abcXYZ09-./:_ \u00e9\x00\u4e16") // proto3 strings are UTF-8
		var b strings.Builder
		for range r.IntN(6) {
			b.WriteRune(chars[r.IntN(len(chars))])
		}
		return b.String()
	}
	strs := func() []string {
		var out []string
		for range r.IntN(3) {
			out = append(out, str())
		}
		return out
	}
	strMap := func() map[string]string {
		if r.IntN(2) == 0 {
			return nil
		}
		m := map[string]string{}
		for range 1 + r.IntN(3) {
			m[str()] = str()
		}
		return m
	}
	servers := []policy.ServerMode{"", policy.ServerStrict, policy.ServerPermissive, policy.ServerDisable}
	clients := []policy.ClientTLSMode{"", policy.ClientDisable, policy.ClientSimple, policy.ClientMutual, policy.ClientIstioMutual}
	s := &policy.Snapshot{Version: str(), TrustDomain: str(), OutboundScope: str(), InboundDefault: servers[r.IntN(len(servers))],
		Workload: policy.WorkloadRef{Name: str(), Namespace: str(), ServiceAccount: str(), Labels: strMap()}}
	endUser := func() *policy.EndUserAuthn {
		if r.IntN(2) == 0 {
			return nil
		}
		e := &policy.EndUserAuthn{Optional: r.IntN(2) == 0, UseOrigin: r.IntN(2) == 0, DecidedBy: str()}
		for range r.IntN(3) {
			e.JWT = append(e.JWT, policy.JWTRule{Issuer: str(), Audiences: strs(), JwksURI: str(), JWTHeaders: strs(), JWTParams: strs()})
		}
		return e
	}
	s.InboundDefaultEndUser = endUser()
	for range r.IntN(3) {
		s.Inbound = append(s.Inbound, policy.InboundPort{Port: r.Uint32(), Mode: servers[r.IntN(len(servers))], Protocol: str(), Service: str(), DecidedBy: str(),
			EndUser: endUser()})
	}
	for range r.IntN(3) {
		o := policy.OutboundService{Name: str(), Namespace: str(), Hosts: strs(), Address: str(), ServerIdentities: strs()}
		for range r.IntN(3) {
			o.Ports = append(o.Ports, policy.OutboundPort{Name: str(), Port: r.Uint32(), Protocol: str(), TargetPort: r.Uint32(),
				TLSMode: clients[r.IntN(len(clients))], SNI: str(), SubjectAltNames: strs(), DecidedBy: str()})
		}
		for range r.IntN(3) {
			ep := policy.Endpoint{Workload: str(), ServiceAccount: str(), Address: str(), Sidecar: r.IntN(2) == 0}
			if r.IntN(2) == 0 {
				ep.Ports = map[uint32]uint32{r.Uint32(): r.Uint32()}
			}
			o.Endpoints = append(o.Endpoints, ep)
		}
		s.Outbound = append(s.Outbound, o)
	}
	if r.IntN(2) == 0 {
		s.RBAC = &policy.RBAC{DecidedBy: str(), OffServices: strs()}
		for range r.IntN(3) {
			p := policy.RBACPolicy{Role: str(), Bindings: strs()}
			for range r.IntN(3) {
				rule := policy.RBACRule{Services: strs(), Methods: strs(), Paths: strs(), Extra: strMap()}
				for range r.IntN(2) {
					rule.Constraints = append(rule.Constraints, policy.RBACConstraint{Key: str(), Values: strs()})
				}
				p.Rules = append(p.Rules, rule)
			}
			for range r.IntN(3) {
				p.Subjects = append(p.Subjects, policy.RBACSubject{User: str(), Properties: strMap(), Binding: str()})
			}
			s.RBAC.Policies = append(s.RBAC.Policies, p)
		}
	}
	for range r.IntN(2) {
		s.Refused = append(s.Refused, policy.Refusal{Service: str(), Workload: str(), SPIFFEID: str(), Reason: str()})
	}
	return s
}

// FuzzSnapshotRoundTrip is the property test of the Snapshot conversion:
// for any snapshot (built from the fuzzer's seed), Go -> proto -> wire ->
// Go gives it back.
func FuzzSnapshotRoundTrip(f *testing.F) {
	for i := range uint64(20) {
		f.Add(i, i*7919)
	}
	f.Fuzz(func(t *testing.T, a, b uint64) {
		s := randSnapshot(rand.New(rand.NewPCG(a, b)))
		m, err := sidecarapi.SnapshotToProto(s)
		if err != nil {
			t.Fatal(err)
		}
		back, err := sidecarapi.SnapshotFromProto(wire(t, m, &pb.PolicySnapshot{}))
		if err != nil {
			t.Fatal(err)
		}
		if want := canon(*s); !reflect.DeepEqual(*back, want) {
			t.Fatalf("round trip changed the snapshot\n got: %+v\nwant: %+v", *back, want)
		}
	})
}

// FuzzSnapshotFromWire: whatever bytes arrive, the conversion does not
// panic, and what it accepts converts back to the same message (nothing
// read is lost or invented).
func FuzzSnapshotFromWire(f *testing.F) {
	for i := range uint64(5) {
		m, err := sidecarapi.SnapshotToProto(randSnapshot(rand.New(rand.NewPCG(i, i+1))))
		if err != nil {
			f.Fatal(err)
		}
		b, _ := proto.Marshal(m)
		f.Add(b)
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		var m pb.PolicySnapshot
		if proto.Unmarshal(data, &m) != nil {
			return
		}
		s, err := sidecarapi.SnapshotFromProto(&m)
		if err != nil {
			return
		}
		again, err := sidecarapi.SnapshotToProto(s)
		if err != nil {
			t.Fatalf("a snapshot read from the wire does not convert back: %v", err)
		}
		s2, err := sidecarapi.SnapshotFromProto(again)
		if err != nil || !reflect.DeepEqual(s, s2) {
			t.Fatalf("wire -> Go -> wire -> Go changed it: %v\n%+v\n%+v", err, s, s2)
		}
	})
}

// TestUnknownEnums: a value outside the known ones is refused in both
// directions, naming the field; the zero value is "" both ways.
func TestUnknownEnums(t *testing.T) {
	good := &pb.PolicySnapshot{Version: "v", Workload: &pb.WorkloadRef{Name: "w", Namespace: "n", ServiceAccount: "s"}}
	for _, tc := range []struct {
		name, want string
		edit       func(*pb.PolicySnapshot)
	}{
		{"inboundDefault", "inboundDefault: unknown ServerMode 5", func(m *pb.PolicySnapshot) { m.InboundDefault = 5 }},
		{"inbound", "inbound[1].mode: unknown ServerMode -1", func(m *pb.PolicySnapshot) {
			m.Inbound = []*pb.InboundPort{{Port: 1}, {Port: 2, Mode: -1}}
		}},
		{"tlsMode", "outbound[0].ports[0].tlsMode: unknown ClientTLSMode 99", func(m *pb.PolicySnapshot) {
			m.Outbound = []*pb.OutboundService{{Ports: []*pb.OutboundPort{{TlsMode: 99}}}}
		}},
	} {
		m := proto.Clone(good).(*pb.PolicySnapshot)
		tc.edit(m)
		if _, err := sidecarapi.SnapshotFromProto(m); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: err = %v, want %q", tc.name, err, tc.want)
		}
	}
	if s, err := sidecarapi.SnapshotFromProto(good); err != nil || s.InboundDefault != "" {
		t.Errorf("UNSPECIFIED: %q, %v; want \"\" (refused later by Validate)", s.InboundDefault, err)
	}
	if _, err := sidecarapi.SnapshotToProto(&policy.Snapshot{InboundDefault: "MAYBE"}); err == nil || !strings.Contains(err.Error(), `inboundDefault: ServerMode "MAYBE" has no protobuf value`) {
		t.Errorf("Go -> proto of an unknown mode: %v", err)
	}
	if _, err := StatusFromProto(&pb.CAStatusResponse{Roots: []*pb.RootStatus{{State: 9}}}); err == nil || !strings.Contains(err.Error(), "roots[0].state: unknown RootState 9") {
		t.Errorf("unknown root state: %v", err)
	}
}

// TestCAReportRoundTrip: the CA's status and issuance log survive the
// wire, and their JSON (`meshctl ca status -o json`, `ca issued -o json`)
// is byte for byte what it was.
func TestCAReportRoundTrip(t *testing.T) {
	at := func(s string) time.Time {
		tm, err := time.Parse(time.RFC3339Nano, s)
		if err != nil {
			t.Fatal(err)
		}
		return tm.UTC()
	}
	st := &careport.Status{TrustDomain: "cluster.local", Mode: "self-signed", BundleVersion: 7, Issued: 12, Revoked: 1, JoinTokens: 3,
		DefaultTTL: (24 * time.Hour).String(), MaxTTL: (90*time.Minute + 500*time.Millisecond).String(), Now: at("2026-12-03T10:00:00.123456789Z"),
		Signing: careport.CertStatus{Subject: "O=meshauth,CN=root", Fingerprint: "ab01", NotBefore: at("2026-01-01T00:00:00Z"), NotAfter: at("2036-01-01T00:00:00Z")},
		Roots: []careport.RootStatus{
			{CertStatus: careport.CertStatus{Subject: "a", Fingerprint: "ab01", NotBefore: at("2026-01-01T00:00:00Z"), NotAfter: at("2036-01-01T00:00:00Z")},
				State: careport.RootSigning, ActivateAt: at("2026-01-01T00:00:00Z")},
			{CertStatus: careport.CertStatus{Subject: "b", Fingerprint: "cd02"}, State: careport.RootRetiring, LastIssuedNotAfter: at("2026-12-04T10:00:00Z")},
			{State: careport.RootPending, ActivateAt: at("2026-12-05T00:00:00Z")},
		}}
	m, err := StatusToProto(st)
	if err != nil {
		t.Fatal(err)
	}
	back, err := StatusFromProto(wire(t, m, &pb.CAStatusResponse{}))
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(back, st) {
		t.Errorf("status round trip:\n got: %+v\nwant: %+v", back, st)
	}
	sameJSON(t, "status", back, st)

	entries := []careport.IssuedEntry{
		{IssuanceRecord: careport.IssuanceRecord{Serial: "1a", SPIFFEID: "spiffe://cluster.local/ns/default/sa/sleep", NotBefore: 1, NotAfter: 2, IssuedAt: 1,
			Requester: "join_token:ab", Authority: 1, GrantedTTL: 86400}},
		{IssuanceRecord: careport.IssuanceRecord{Serial: "1b", SPIFFEID: "spiffe://cluster.local/ns/default/sa/sleep", Requester: "mtls:1a"},
			Revoked: true, RevokedReason: "key compromise"},
	}
	gotEntries := IssuedFromProto(wire(t, &pb.ListIssuedResponse{Entries: IssuedToProto(entries)}, &pb.ListIssuedResponse{}).Entries)
	if !reflect.DeepEqual(gotEntries, entries) {
		t.Errorf("issued round trip:\n got: %+v\nwant: %+v", gotEntries, entries)
	}
	sameJSON(t, "issued", gotEntries, entries)
	if js, _ := json.Marshal(IssuedFromProto(nil)); string(js) != "[]" {
		t.Errorf("no entries print as %s, want []", js)
	}
}

func sameJSON(t *testing.T, what string, got, want any) {
	t.Helper()
	g, err := json.Marshal(got)
	if err != nil {
		t.Fatal(err)
	}
	w, err := json.Marshal(want)
	if err != nil {
		t.Fatal(err)
	}
	if string(g) != string(w) {
		t.Errorf("%s: JSON changed\n got: %s\nwant: %s", what, g, w)
	}
}

// TestStateRoundTrip: GetState's config (as YAML documents), registry and
// sidecars survive the wire: the JSON meshctl get -o json prints from it
// (source positions included) is unchanged, and the policy engine rebuilt
// from it decides the same.
func TestStateRoundTrip(t *testing.T) {
	for name, paths := range configSets {
		t.Run(name, func(t *testing.T) {
			cfg, reg := loadSet(t, paths)
			cfg.Version = 4
			st := &State{ConfigVersion: 4, Config: cfg, Registry: reg.State(),
				Sidecars:       []SidecarStatus{{Workload: "default/a-1", SPIFFEID: "spiffe://cluster.local/ns/default/sa/a", Sent: "s", Acked: "a", Nacked: "n", NackError: "port in use"}},
				ConfigRejected: &ConfigRejection{Dir: "/etc/meshauth", At: time.Date(2026, 12, 3, 10, 0, 0, 5, time.UTC), Errors: []string{"x.yaml:1:1: bad"}}}
			m, err := StateToProto(st)
			if err != nil {
				t.Fatal(err)
			}
			back, err := StateFromProto(wire(t, m, &pb.GetStateResponse{}))
			if err != nil {
				t.Fatal(err)
			}
			sameJSON(t, "state", back, st)
			if len(back.Config.Objects()) != len(cfg.Objects()) || len(cfg.Objects()) == 0 {
				t.Fatalf("%d objects back, %d sent", len(back.Config.Objects()), len(cfg.Objects()))
			}
			if got, want := back.Engine().TLSCheck(nil), st.Engine().TLSCheck(nil); !reflect.DeepEqual(got, want) {
				t.Errorf("tls-check differs after the round trip:\n got: %+v\nwant: %+v", got, want)
			}
		})
	}
}

// TestStateRefusesBadConfig: a config document that does not parse is an
// error naming it, not a smaller config.
func TestStateRefusesBadConfig(t *testing.T) {
	_, err := StateFromProto(&pb.GetStateResponse{Config: []*pb.ConfigObject{{Yaml: []byte("kind: Nope\n"), SourceFile: "x.yaml"}}})
	if err == nil || !strings.Contains(err.Error(), "config[0]") || !strings.Contains(err.Error(), "Nope") {
		t.Errorf("err = %v", err)
	}
}

// TestBundleFromProto: revocations are keyed by lowercase serial, as
// certificates' serials are compared (identity.SerialHex), and a bundle
// without roots is refused.
func TestBundleFromProto(t *testing.T) {
	ca := catest.New(t)
	b, err := sidecarapi.BundleFromProto(&pb.TrustBundle{Version: 3, TrustDomain: "cluster.local", Roots: []string{string(ca.RootPEM())},
		Revocations: []*pb.Revocation{{Serial: "0A1B", SpiffeId: "spiffe://cluster.local/ns/default/sa/sleep"}}})
	if err != nil {
		t.Fatal(err)
	}
	if b.Version != 3 || len(b.Roots) != 1 || !b.IsRevoked("0a1b") || b.Revoked["0a1b"] != "spiffe://cluster.local/ns/default/sa/sleep" {
		t.Errorf("bundle = %+v", b)
	}
	if _, err := sidecarapi.BundleFromProto(&pb.TrustBundle{TrustDomain: "cluster.local"}); err == nil {
		t.Error("a bundle without roots was accepted")
	}
}

// FuzzAdminFromWire: whatever a control plane (or something posing as one
// to meshctl) sends as GetState, CAStatus or ListIssued, the conversions do
// not panic; a state that converts is a config that validated.
func FuzzAdminFromWire(f *testing.F) {
	cfg, reg := loadSet(f, configSets["rbac"])
	st, err := StateToProto(&State{Config: cfg, Registry: reg.State(), Sidecars: []SidecarStatus{{Workload: "default/a"}}})
	if err != nil {
		f.Fatal(err)
	}
	b, _ := proto.Marshal(st)
	f.Add(b)
	cs, _ := proto.Marshal(&pb.CAStatusResponse{TrustDomain: "cluster.local", Roots: []*pb.RootStatus{{State: pb.RootState_ROOT_STATE_SIGNING}}})
	f.Add(cs)
	f.Fuzz(func(t *testing.T, data []byte) {
		var sm pb.GetStateResponse
		if proto.Unmarshal(data, &sm) == nil {
			if st, err := StateFromProto(&sm); err == nil && st.Config == nil {
				t.Fatal("state without a config")
			}
		}
		var cm pb.CAStatusResponse
		if proto.Unmarshal(data, &cm) == nil {
			StatusFromProto(&cm)
		}
		var im pb.ListIssuedResponse
		if proto.Unmarshal(data, &im) == nil {
			IssuedFromProto(im.Entries)
		}
	})
}
