package push

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
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
	"google.golang.org/grpc/peer"
	"google.golang.org/grpc/status"

	pb "github.com/meshauth/meshauth/api/meshauth/v1"
	"github.com/meshauth/meshauth/internal/ca/catest"
	"github.com/meshauth/meshauth/internal/config"
	"github.com/meshauth/meshauth/internal/identity"
	"github.com/meshauth/meshauth/internal/policy"
	"github.com/meshauth/meshauth/internal/policy/engine"
	"github.com/meshauth/meshauth/internal/push/pushclient"
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

func engineFor(t testing.TB, reg *registry.Registry, docs ...string) *engine.Engine {
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
	return engine.New(cfg, reg)
}

func newEnv(t testing.TB) *env { return newEnvDebounce(t, 5*time.Millisecond) }

func newEnvDebounce(t testing.TB, debounce time.Duration) *env {
	e := &env{t: t, ca: catest.New(t), reg: registry.New(), logs: &lockedBuffer{}, debounce: debounce}
	e.start("127.0.0.1:0", engineFor(t, e.reg, meshYAML))
	return e
}

// start serves on addr (":0" for a new port, or the old address to
// simulate a control-plane restart).
func (e *env) start(addr string, eng *engine.Engine) {
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

func (e *env) client(spiffeID, workload string, validate func(*pushclient.Update) error) *pushclient.Client {
	c := pushclient.NewClient(pushclient.ClientConfig{
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
	c := pushclient.NewClient(pushclient.ClientConfig{
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
	c := e.client("spiffe://cluster.local/ns/default/sa/sleep", "sleep-1", func(u *pushclient.Update) error {
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
