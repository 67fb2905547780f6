package push

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/peer"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	pb "github.com/meshauth/meshauth/api/meshauth/v1"
	"github.com/meshauth/meshauth/internal/ca/catest"
	"github.com/meshauth/meshauth/internal/config"
	"github.com/meshauth/meshauth/internal/identity"
	"github.com/meshauth/meshauth/internal/policy"
	"github.com/meshauth/meshauth/internal/registry"
)

const meshYAML = `apiVersion: meshauth.io/v1alpha1
kind: MeshConfig
metadata: {name: mesh}
spec: {authPolicy: MUTUAL_TLS}
---
apiVersion: meshauth.io/v1alpha1
kind: Service
metadata: {name: httpbin}
spec:
  selector: {app: httpbin}
  ports: [{name: http, number: 8000, targetPort: 80}]
---
apiVersion: meshauth.io/v1alpha1
kind: Workload
metadata: {name: httpbin-1, labels: {app: httpbin}}
spec: {serviceAccount: httpbin, address: 127.0.0.2}
`

// env is a real control-plane push server on loopback with mTLS, using an
// in-memory test CA for the certificates.
type env struct {
	t      testing.TB
	ca     *catest.CA
	reg    *registry.Registry
	server *Server
	addr   string
	grpc   *grpc.Server
	cancel context.CancelFunc
	logs   *lockedBuffer
	// debounce for the server (tests use a short one).
	debounce time.Duration
	// bundle verifies peers; tests swap it to revoke.
	bundle atomic.Pointer[identity.Bundle]
	// stopping is the server's Config.Stopping.
	stopping chan struct{}
	// grace is the server's RegistrationGrace (0: the default).
	grace time.Duration
}

// lockedBuffer is a log sink shared by the server's and clients' handlers.
type lockedBuffer struct {
	mu sync.Mutex
	b  strings.Builder
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

func engineFor(t testing.TB, reg *registry.Registry, docs ...string) *policy.Engine {
	t.Helper()
	var files []config.File
	for i, d := range docs {
		files = append(files, config.File{Name: fmt.Sprintf("doc%d.yaml", i), Content: []byte(d)})
	}
	cfg, err := config.Load(files)
	if err != nil {
		t.Fatal(err)
	}
	ss, ws := registry.FromConfig(cfg)
	reg.Sync(registry.SourceConfig, ss, ws)
	return policy.New(cfg, reg)
}

func newEnv(t testing.TB) *env { return newEnvDebounce(t, 5*time.Millisecond) }

func newEnvDebounce(t testing.TB, debounce time.Duration) *env {
	e := &env{t: t, ca: catest.New(t), reg: registry.New(), logs: &lockedBuffer{}, debounce: debounce}
	e.start("127.0.0.1:0", engineFor(t, e.reg, meshYAML))
	return e
}

// start serves on addr (":0" for a new port, or the old address to
// simulate a control-plane restart).
func (e *env) start(addr string, eng *policy.Engine) {
	t := e.t
	if e.bundle.Load() == nil {
		e.bundle.Store(e.ca.Bundle())
	}
	srvCert := e.ca.Issue(t, "spiffe://cluster.local/ns/meshauth-system/sa/meshd")
	tlsCfg := &tls.Config{
		Certificates: []tls.Certificate{srvCert.TLS},
		ClientAuth:   tls.RequestClientCert,
		MinVersion:   tls.VersionTLS12,
	}
	e.stopping = make(chan struct{})
	e.server = NewServer(Config{
		Stopping:          e.stopping,
		Debounce:          e.debounce,
		RegistrationGrace: e.grace,
		Log:               slog.New(slog.NewTextHandler(e.logs, nil)),
		Identity: func(ctx context.Context) (identity.ID, error) {
			p, _ := peer.FromContext(ctx)
			ti, _ := p.AuthInfo.(credentials.TLSInfo)
			return e.bundle.Load().Verify(ti.State.PeerCertificates, time.Now())
		},
	}, eng)
	e.server.BundleChanged(1)
	lis, err := net.Listen("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	e.addr = lis.Addr().String()
	e.grpc = grpc.NewServer(grpc.Creds(credentials.NewTLS(tlsCfg)))
	pb.RegisterDiscoveryServer(e.grpc, e.server)
	ctx, cancel := context.WithCancel(context.Background())
	e.cancel = cancel
	go e.server.Run(ctx)
	go e.grpc.Serve(lis)
	t.Cleanup(e.stop)
}

func (e *env) stop() {
	e.cancel()
	e.grpc.Stop()
}

// dial connects as spiffeID (no certificate when empty), verifying the
// server against the test CA's root and the control plane's SPIFFE ID.
func (e *env) dial(spiffeID string) *grpc.ClientConn {
	var cert *catest.Cert
	if spiffeID != "" {
		cert = e.ca.Issue(e.t, spiffeID)
	}
	return e.dialCert(cert)
}

// dialCert connects presenting cert (none when nil).
func (e *env) dialCert(cert *catest.Cert) *grpc.ClientConn {
	bundle := e.ca.Bundle()
	cfg := &tls.Config{
		MinVersion:         tls.VersionTLS12,
		InsecureSkipVerify: true, // no DNS SANs on mesh certs: verified below by SPIFFE ID
		VerifyPeerCertificate: func(raw [][]byte, _ [][]*x509.Certificate) error {
			var chain []*x509.Certificate
			for _, r := range raw {
				c, err := x509.ParseCertificate(r)
				if err != nil {
					return err
				}
				chain = append(chain, c)
			}
			id, err := bundle.Verify(chain, time.Now())
			if err != nil {
				return err
			}
			if id.ServiceAccount != "meshd" {
				return fmt.Errorf("server is %s, not the control plane", id)
			}
			return nil
		},
	}
	if cert != nil {
		cfg.Certificates = []tls.Certificate{cert.TLS}
	}
	cc, err := grpc.NewClient(e.addr, grpc.WithTransportCredentials(credentials.NewTLS(cfg)))
	if err != nil {
		e.t.Fatal(err)
	}
	e.t.Cleanup(func() { cc.Close() })
	return cc
}

func (e *env) client(spiffeID, workload string, validate func(*Update) error) *Client {
	c := NewClient(ClientConfig{
		Conn: e.dial(spiffeID),
		Register: func() *pb.Register {
			return &pb.Register{Workload: workload, Labels: map[string]string{"app": "sleep"}, Address: "127.0.0.3",
				Ports: []uint32{80}, SidecarPorts: map[uint32]uint32{80: 18080}}
		},
		Validate:   validate,
		MinBackoff: 20 * time.Millisecond,
		MaxBackoff: 200 * time.Millisecond,
		Log:        slog.New(slog.NewTextHandler(e.logs, nil)),
	})
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { c.Run(ctx); close(done) }()
	e.t.Cleanup(func() { cancel(); <-done })
	return c
}

// waitFor waits until cond holds, failing the test after a generous
// deadline (a liveness bound, not a timing assertion).
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// httpbinPlaintext is a config change that concerns the sleep sidecars:
// httpbin's client TLS mode becomes DISABLE.
const httpbinPlaintext = `apiVersion: networking.istio.io/v1alpha3
kind: DestinationRule
metadata: {name: httpbin}
spec:
  host: httpbin
  trafficPolicy: {tls: {mode: DISABLE}}
`

func TestPushAckAndUpdate(t *testing.T) {
	e := newEnv(t)
	c := e.client("spiffe://cluster.local/ns/default/sa/sleep", "sleep-1", nil)
	waitFor(t, "first snapshot", func() bool { return c.Current() != nil })
	u := c.Current()
	if u.Snapshot.Workload.ServiceAccount != "sleep" || u.Snapshot.Workload.Namespace != "default" {
		t.Errorf("snapshot workload = %+v; want identity from the certificate", u.Snapshot.Workload)
	}
	if len(u.Snapshot.Outbound) != 1 || u.Snapshot.Outbound[0].Ports[0].TLSMode != policy.ClientIstioMutual {
		t.Errorf("outbound = %+v", u.Snapshot.Outbound)
	}
	if w := e.reg.Workload("default", "sleep-1"); w == nil || w.Source != registry.SourceSidecar || w.Address != "127.0.0.3" ||
		len(w.Ports) != 1 || w.Ports[0].SidecarPort != 18080 {
		t.Errorf("registered workload = %+v", w)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	if err := e.server.WaitSynced(ctx, 1); err != nil {
		t.Fatal(err)
	}
	// A config change reaches the sidecar as a new version and is ACKed.
	changed := c.Changed()
	e.server.SetEngine(engineFor(t, e.reg, meshYAML, httpbinPlaintext))
	<-changed
	if got := c.Current().Snapshot.Outbound[0].Ports[0].TLSMode; got != policy.ClientDisable {
		t.Errorf("after config change TLS mode = %s, want DISABLE", got)
	}
	if err := e.server.WaitSynced(ctx, 1); err != nil {
		t.Fatal(err)
	}
	st := e.server.Status()
	if len(st) != 1 || st[0].Acked != c.Current().Version || st[0].SPIFFEID != "spiffe://cluster.local/ns/default/sa/sleep" {
		t.Errorf("status = %+v", st)
	}
}

func TestStreamAuthentication(t *testing.T) {
	e := newEnv(t)
	tests := []struct {
		name     string
		spiffeID string
		workload string
		code     codes.Code
	}{
		{"no certificate", "", "sleep-1", codes.Unauthenticated},
		{"claims a workload declared for another service account", "spiffe://cluster.local/ns/default/sa/sleep", "httpbin-1", codes.PermissionDenied},
		{"bad workload name", "spiffe://cluster.local/ns/default/sa/sleep", "Sleep_1", codes.InvalidArgument},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			cc := e.dial(tc.spiffeID)
			ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
			defer cancel()
			st, err := pb.NewDiscoveryClient(cc).Stream(ctx)
			if err != nil {
				t.Fatal(err)
			}
			st.Send(&pb.DiscoveryRequest{Kind: &pb.DiscoveryRequest_Register{Register: &pb.Register{Workload: tc.workload}}})
			_, err = st.Recv()
			if status.Code(err) != tc.code {
				t.Fatalf("Recv error = %v, want code %s", err, tc.code)
			}
		})
	}
	if e.reg.Workload("default", "httpbin-1").ServiceAccount != "httpbin" {
		t.Error("a refused registration changed the declared workload")
	}
}

// TestRevocationEndsStream: a sidecar whose certificate is revoked while
// connected loses its stream at the next bundle push, and cannot reconnect.
func TestRevocationEndsStream(t *testing.T) {
	e := newEnv(t)
	cert := e.ca.Issue(t, "spiffe://cluster.local/ns/default/sa/sleep")
	c := NewClient(ClientConfig{
		Conn:       e.dialCert(cert),
		Register:   func() *pb.Register { return &pb.Register{Workload: "sleep-1"} },
		MinBackoff: 20 * time.Millisecond, MaxBackoff: 100 * time.Millisecond,
		Log: slog.New(slog.NewTextHandler(e.logs, nil)),
	})
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { c.Run(ctx); close(done) }()
	defer func() { cancel(); <-done }()
	waitFor(t, "connected", func() bool { return c.Connected() && len(e.server.Status()) == 1 })

	e.bundle.Store(e.ca.Bundle(cert))
	e.server.BundleChanged(2)
	waitFor(t, "stream ended", func() bool { return len(e.server.Status()) == 0 })
	time.Sleep(300 * time.Millisecond) // several reconnect attempts
	if n := len(e.server.Status()); n != 0 {
		t.Fatalf("revoked sidecar reconnected (%d streams)", n)
	}
	if e.server.Stats().Refused == 0 {
		t.Error("no refusal counted")
	}
	if e.reg.Workload("default", "sleep-1") != nil {
		t.Error("revoked sidecar's registration stayed in the registry")
	}
}

func TestKeepsLastGoodSnapshotAcrossRestart(t *testing.T) {
	e := newEnv(t)
	c := e.client("spiffe://cluster.local/ns/default/sa/sleep", "sleep-1", nil)
	waitFor(t, "first snapshot", func() bool { return c.Current() != nil && c.Connected() })
	good := c.Current()

	e.stop()
	waitFor(t, "client to notice the control plane is gone", func() bool { return !c.Connected() })
	if c.Current() != good {
		t.Fatal("snapshot changed while the control plane was away")
	}
	// Let a few reconnect attempts fail.
	time.Sleep(300 * time.Millisecond)
	if c.Current() != good {
		t.Fatal("snapshot lost during failed reconnects")
	}

	// The control plane comes back on the same address with a new config.
	e.start(e.addr, engineFor(t, e.reg, meshYAML, `apiVersion: authentication.istio.io/v1alpha1
kind: Policy
metadata: {name: default}
spec:
  peers: [{mtls: {mode: PERMISSIVE}}]
`))
	waitFor(t, "reconnect and new snapshot", func() bool { return c.Current() != good })
	if got := c.Current().Snapshot.InboundDefault; got != policy.ServerPermissive {
		t.Errorf("after restart inboundDefault = %s, want PERMISSIVE", got)
	}
}

func TestNACKKeepsGoodSnapshot(t *testing.T) {
	e := newEnv(t)
	errBad := errors.New("cannot serve port 9999: address already in use")
	c := e.client("spiffe://cluster.local/ns/default/sa/sleep", "sleep-1", func(u *Update) error {
		for _, o := range u.Snapshot.Outbound {
			if o.Name == "bad" {
				return errBad
			}
		}
		return nil
	})
	waitFor(t, "first snapshot", func() bool { return c.Current() != nil })
	good := c.Current()
	e.server.SetEngine(engineFor(t, e.reg, meshYAML, `apiVersion: meshauth.io/v1alpha1
kind: Service
metadata: {name: bad}
spec:
  ports: [{number: 9999}]
`))
	waitFor(t, "NACK at the server", func() bool {
		st := e.server.Status()
		return len(st) == 1 && st[0].Nacked != ""
	})
	if c.Current() != good {
		t.Fatal("a NACKed snapshot replaced the good one")
	}
	st := e.server.Status()[0]
	if st.NackError != errBad.Error() || st.Acked != good.Version {
		t.Errorf("status = %+v", st)
	}
	if c.NACKs() == 0 {
		t.Error("client counted no NACK")
	}
}

// TestBundleChangeSendsNoSnapshot: the trust bundle travels on the CA's
// WatchTrustBundle stream only. A bundle change rechecks the connected
// sidecars (TestRevocationEndsStream) but sends a sidecar that is still
// valid nothing new: its snapshot version stays and the server counts no
// send.
func TestBundleChangeSendsNoSnapshot(t *testing.T) {
	e := newEnv(t)
	c := e.client("spiffe://cluster.local/ns/default/sa/sleep", "sleep-1", nil)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	waitFor(t, "first snapshot", func() bool { return c.Current() != nil })
	if err := e.server.WaitSynced(ctx, 1); err != nil {
		t.Fatal(err)
	}
	before, sent := c.Current(), e.server.Stats().Sent
	e.server.BundleChanged(2)
	if err := e.server.WaitSynced(ctx, 1); err != nil {
		t.Fatal(err)
	}
	// A config change after it is the next thing the sidecar receives.
	changed := c.Changed()
	e.server.SetEngine(engineFor(t, e.reg, meshYAML, httpbinPlaintext))
	<-changed
	if got := e.server.Stats().Sent; got != sent+1 {
		t.Errorf("sent %d snapshots for a bundle change and a config change; want 1 (the config change)", got-sent)
	}
	if c.Current().Version == before.Version {
		t.Error("config change did not change the version")
	}
}

// goodSnapshot is the smallest snapshot a sidecar accepts.
func goodSnapshot(version string) *pb.Snapshot {
	return &pb.Snapshot{Version: version, Policy: &pb.PolicySnapshot{Version: version, TrustDomain: "cluster.local",
		Workload:       &pb.WorkloadRef{Name: "w", Namespace: "default", ServiceAccount: "sa"},
		InboundDefault: pb.ServerMode_SERVER_MODE_STRICT}}
}

// TestClientRejectsMalformedSnapshots drives the client's accept path with
// snapshots a broken or hostile (or newer) control plane could send.
func TestClientRejectsMalformedSnapshots(t *testing.T) {
	c := NewClient(ClientConfig{})
	if err := c.accept(goodSnapshot("v1")); err != nil {
		t.Fatalf("good snapshot rejected: %v", err)
	}
	outbound := func(mode pb.ClientTLSMode) func(*pb.Snapshot) {
		return func(m *pb.Snapshot) {
			m.Policy.Outbound = []*pb.OutboundService{{Name: "a", Namespace: "b", Hosts: []string{"a.b"},
				Ports: []*pb.OutboundPort{{Port: 80, TargetPort: 80, TlsMode: mode}}}}
		}
	}
	tests := []struct {
		name, wantErr string
		edit          func(*pb.Snapshot)
	}{
		{"no policy", "snapshot has no policy", func(m *pb.Snapshot) { m.Policy = nil }},
		{"version mismatch", "does not match", func(m *pb.Snapshot) { m.Policy.Version = "v3" }},
		{"unknown server mode", "inboundDefault: unknown ServerMode 7", func(m *pb.Snapshot) { m.Policy.InboundDefault = 7 }},
		{"unknown inbound mode", "inbound[0].mode: unknown ServerMode 4", func(m *pb.Snapshot) {
			m.Policy.Inbound = []*pb.InboundPort{{Port: 80, Mode: 4}}
		}},
		{"unspecified server mode", `inboundDefault "" is not STRICT`, func(m *pb.Snapshot) { m.Policy.InboundDefault = 0 }},
		{"no workload", "names no workload", func(m *pb.Snapshot) { m.Policy.Workload = nil }},
		{"unknown tls mode", "outbound[0].ports[0].tlsMode: unknown ClientTLSMode 9", outbound(9)},
		{"unspecified tls mode", `tlsMode "" is not DISABLE`, outbound(pb.ClientTLSMode_CLIENT_TLS_MODE_UNSPECIFIED)},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			m := goodSnapshot("v2")
			tc.edit(m)
			err := c.accept(m)
			if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
				t.Fatalf("accept = %v; want an error containing %q", err, tc.wantErr)
			}
			if c.Current().Version != "v1" {
				t.Fatal("bad snapshot replaced the good one")
			}
		})
	}
}

// TestUnknownEnumNACKed: a snapshot with an enum value this sidecar does
// not know (a newer control plane's) goes through the whole stream: the
// sidecar NACKs it with the field named, and keeps its last good one.
func TestUnknownEnumNACKed(t *testing.T) {
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	acks := make(chan *pb.Ack, 2)
	srv := grpc.NewServer()
	pb.RegisterDiscoveryServer(srv, scriptedDiscovery{send: []*pb.Snapshot{goodSnapshot("v1"), func() *pb.Snapshot {
		m := goodSnapshot("v2")
		m.Policy.Inbound = []*pb.InboundPort{{Port: 8080, Mode: 42}}
		return m
	}()}, acks: acks})
	go srv.Serve(lis)
	defer srv.Stop()
	conn, err := grpc.NewClient(lis.Addr().String(), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	c := NewClient(ClientConfig{Conn: conn, Register: func() *pb.Register { return &pb.Register{Workload: "w"} },
		Log: slog.New(slog.NewTextHandler(io.Discard, nil))})
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { c.Run(ctx); close(done) }()
	defer func() { cancel(); <-done }()
	if a := <-acks; a.Version != "v1" || a.Error != "" {
		t.Fatalf("first answer = %+v; want ACK v1", a)
	}
	a := <-acks
	if a.Version != "v2" || !strings.Contains(a.Error, "inbound[0].mode: unknown ServerMode 42") {
		t.Fatalf("second answer = %+v; want a NACK of v2 naming inbound[0].mode", a)
	}
	if c.Current().Version != "v1" || c.NACKs() != 1 {
		t.Errorf("current = %s, NACKs = %d; want v1 kept and 1 NACK", c.Current().Version, c.NACKs())
	}
}

// scriptedDiscovery is a control plane that sends fixed snapshots (what a
// newer or broken one could send) and reports the answers. The sidecar
// side is the real client over real gRPC; plaintext, because the stream's
// authentication is not under test here (TestStreamAuthentication).
type scriptedDiscovery struct {
	pb.UnimplementedDiscoveryServer
	send []*pb.Snapshot
	acks chan<- *pb.Ack
}

func (d scriptedDiscovery) Stream(st pb.Discovery_StreamServer) error {
	if _, err := st.Recv(); err != nil { // Register
		return err
	}
	for _, m := range d.send {
		if err := st.Send(m); err != nil {
			return err
		}
		r, err := st.Recv()
		if err != nil {
			return err
		}
		d.acks <- r.GetAck()
	}
	<-st.Context().Done()
	return nil
}

// FuzzClientAccept feeds arbitrary bytes, as a Snapshot message, to the
// sidecar's accept path: it must never panic, and a rejected snapshot must
// never replace the good one.
func FuzzClientAccept(f *testing.F) {
	seed := func(m *pb.Snapshot) []byte {
		b, err := proto.Marshal(m)
		if err != nil {
			f.Fatal(err)
		}
		return b
	}
	f.Add(seed(goodSnapshot("v2")))
	rich := goodSnapshot("v2")
	rich.Policy.InboundDefault = pb.ServerMode_SERVER_MODE_DISABLE
	rich.Policy.Inbound = []*pb.InboundPort{{Port: 0, Mode: pb.ServerMode_SERVER_MODE_STRICT}}
	rich.Policy.Outbound = []*pb.OutboundService{{Name: "a", Namespace: "b", Hosts: []string{"a.b"},
		Ports:     []*pb.OutboundPort{{Port: 80, TargetPort: 8080, TlsMode: pb.ClientTLSMode_CLIENT_TLS_MODE_ISTIO_MUTUAL}},
		Endpoints: []*pb.Endpoint{{Workload: "a-1", Address: "10.0.0.1", Ports: map[uint32]uint32{8080: 15006}}}}}
	rich.Policy.Rbac = &pb.RBAC{Policies: []*pb.RBACPolicy{{Role: "n/r", Rules: []*pb.RBACRule{{Services: []string{"*"}}}, Subjects: []*pb.RBACSubject{{User: "*"}}}}}
	f.Add(seed(rich))
	f.Add([]byte{})
	f.Fuzz(func(t *testing.T, data []byte) {
		var m pb.Snapshot
		if proto.Unmarshal(data, &m) != nil {
			return // gRPC would have refused the message
		}
		c := NewClient(ClientConfig{Log: slog.New(slog.NewTextHandler(io.Discard, nil))})
		if err := c.accept(goodSnapshot("v1")); err != nil {
			t.Fatal(err)
		}
		before := c.Current()
		err := c.accept(&m)
		if err != nil && c.Current() != before {
			t.Fatal("a rejected snapshot replaced the good one")
		}
		if err == nil && c.Current().Snapshot.Validate() != nil {
			t.Fatal("accepted a snapshot that does not validate")
		}
	})
}

// TestStoppingEndsStreams: when the control plane starts shutting down, open
// Discovery streams end with Unavailable, so a graceful stop of the gRPC
// server completes instead of waiting for every sidecar to hang up (without
// Stopping, GracefulStop here never returns: the test env has no forced Stop).
func TestStoppingEndsStreams(t *testing.T) {
	e := newEnv(t)
	c := e.client("spiffe://cluster.local/ns/default/sa/sleep", "sleep-1", nil)
	waitFor(t, "first snapshot", func() bool { return c.Current() != nil })
	close(e.stopping)
	done := make(chan struct{})
	go func() { e.grpc.GracefulStop(); close(done) }()
	select {
	case <-done:
	case <-time.After(30 * time.Second):
		t.Fatal("GracefulStop still waiting for the sidecar's stream 30s after Stopping closed")
	}
	e.logs.mu.Lock()
	logs := e.logs.b.String()
	e.logs.mu.Unlock()
	if !strings.Contains(logs, "control plane shutting down") {
		t.Errorf("no log line for the stream ended by shutdown; logs:\n%s", logs)
	}
	// The sidecar keeps its last good snapshot.
	if c.Current() == nil {
		t.Error("client lost its snapshot when the control plane stopped")
	}
}
