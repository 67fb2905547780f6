package control_test

import (
	"bytes"
	"context"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	pb "github.com/meshauth/meshauth/api/meshauth/v1"
	"github.com/meshauth/meshauth/internal/client"
	"github.com/meshauth/meshauth/internal/control"
	"github.com/meshauth/meshauth/internal/meshapi"
	"github.com/meshauth/meshauth/internal/policy"
	"github.com/meshauth/meshauth/internal/push/pushclient"
)

const planeMesh = `apiVersion: meshauth.io/v1alpha1
kind: MeshConfig
metadata: {name: mesh}
spec: {authPolicy: MUTUAL_TLS}
---
apiVersion: meshauth.io/v1alpha1
kind: Service
metadata: {name: httpbin}
spec:
  selector: {app: httpbin}
  ports: [{name: http, number: 8000, targetPort: 80, protocol: HTTP}]
  serviceAccounts: [httpbin]
`

// syncBuffer is a log sink safe for the plane's goroutines.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

func startPlane(t *testing.T, dir string, logs io.Writer) *env {
	e := start(t, func(c *control.Config) {
		c.Plane = control.PlaneConfig{ConfigDir: dir, PollInterval: 10 * time.Millisecond, Debounce: 5 * time.Millisecond}
		if logs != nil {
			c.Log = slog.New(slog.NewTextHandler(logs, nil))
		}
	})
	t.Cleanup(e.srv.Plane().Close)
	return e
}

func getState(t *testing.T, e *env) *meshapi.State {
	t.Helper()
	resp, err := e.admin(t).GetState(context.Background(), &pb.GetStateRequest{})
	if err != nil {
		t.Fatal(err)
	}
	st, err := meshapi.StateFromProto(resp)
	if err != nil {
		t.Fatal(err)
	}
	return st
}

func waitUntil(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func TestPlaneWatchesConfigDir(t *testing.T) {
	dir := t.TempDir()
	write := func(name, body string) {
		t.Helper()
		if err := os.WriteFile(filepath.Join(dir, name), []byte(body), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	write("mesh.yaml", planeMesh)
	logs := &syncBuffer{}
	e := startPlane(t, dir, logs)
	st := getState(t, e)
	if st.ConfigVersion != 1 || len(st.Registry.Services) != 1 {
		t.Fatalf("initial state: version %d, services %d", st.ConfigVersion, len(st.Registry.Services))
	}
	rows := st.Engine().TLSCheck(nil)
	if len(rows) != 1 || rows[0].Status != "OK" || rows[0].Client.Mode != policy.ClientIstioMutual {
		t.Errorf("tls-check from state: %+v", rows)
	}

	// A bad file rejects the whole directory; the last good config stays
	// and the log says where the error is.
	write("zz-bad.yaml", "apiVersion: networking.istio.io/v1alpha3\nkind: DestinationRule\nmetadata: {name: x}\nspec:\n  host: httpbin\n  trafficPolicy: {tls: {mode: MUTUAL_TLS}}\n")
	write("ratings.yaml", "apiVersion: meshauth.io/v1alpha1\nkind: Service\nmetadata: {name: ratings}\nspec: {ports: [{number: 9080}]}\n")
	waitUntil(t, "rejection logged", func() bool { return strings.Contains(logs.String(), "config rejected") })
	if !strings.Contains(logs.String(), "zz-bad.yaml:6:31") {
		t.Errorf("rejection log has no file:line:col:\n%s", logs.String())
	}
	if st := getState(t, e); st.ConfigVersion != 1 || len(st.Registry.Services) != 1 {
		t.Fatalf("bad batch changed the config: version %d, services %d", st.ConfigVersion, len(st.Registry.Services))
	}
	// Fixing the file applies the whole directory.
	os.Remove(filepath.Join(dir, "zz-bad.yaml"))
	waitUntil(t, "fixed directory applied", func() bool { return getState(t, e).ConfigVersion == 2 })
	if st := getState(t, e); len(st.Registry.Services) != 2 {
		t.Errorf("services after fix = %d, want 2", len(st.Registry.Services))
	}
}

func TestPlaneRefusesBadDirAtStart(t *testing.T) {
	dir := t.TempDir()
	os.WriteFile(filepath.Join(dir, "p.yaml"), []byte("apiVersion: authentication.istio.io/v1alpha1\nkind: Policy\nmetadata: {name: default}\nspec: {peers: [{mtls: {mode: STRCT}}]}\n"), 0o644)
	_, err := control.New(control.Config{Dir: t.TempDir(), Listen: "127.0.0.1:0", Log: slog.New(slog.NewTextHandler(io.Discard, nil)),
		Plane: control.PlaneConfig{ConfigDir: dir}})
	if err == nil || !strings.Contains(err.Error(), "p.yaml:4:30") {
		t.Fatalf("New with a bad config dir: %v", err)
	}
}

func TestApplyConfigAndDiscovery(t *testing.T) {
	e := startPlane(t, "", nil)
	admin := e.admin(t)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()

	_, err := admin.ApplyConfig(ctx, &pb.ApplyConfigRequest{Files: []*pb.ConfigFile{
		{Name: "good.yaml", Content: []byte(planeMesh)},
		{Name: "bad.yaml", Content: []byte("apiVersion: authentication.istio.io/v1alpha1\nkind: Policy\nmetadata: {name: default}\nspec:\n  origins: [{jwt: {issuer: x}}]\n")},
	}})
	if status.Code(err) != codes.InvalidArgument || !strings.Contains(err.Error(), "bad.yaml:5:19") || !strings.Contains(err.Error(), "jwksUri must be set") {
		t.Fatalf("ApplyConfig(bad batch) = %v", err)
	}
	if st := getState(t, e); st.ConfigVersion != 0 || len(st.Registry.Services) != 0 {
		t.Fatalf("a rejected batch changed the state: %+v", st)
	}
	resp, err := admin.ApplyConfig(ctx, &pb.ApplyConfigRequest{Files: []*pb.ConfigFile{{Name: "good.yaml", Content: []byte(planeMesh)}}})
	if err != nil {
		t.Fatal(err)
	}
	if resp.ConfigVersion != 1 || len(resp.Applied) != 2 {
		t.Errorf("ApplyConfig = %+v", resp)
	}

	// A sidecar with a CA-issued certificate registers as httpbin-1 and
	// receives its snapshot; its identity comes from the certificate.
	cert, _ := e.issueTLS(t, "default", "httpbin")
	conn := e.dial(t, client.Options{GetClientCertificate: withCert(cert)})
	c := pushclient.NewClient(pushclient.ClientConfig{Conn: conn, MinBackoff: 10 * time.Millisecond, Log: slog.New(slog.NewTextHandler(io.Discard, nil)), Register: func() *pb.Register {
		return &pb.Register{Workload: "httpbin-1", Labels: map[string]string{"app": "httpbin"}, Address: "127.0.0.2", Ports: []uint32{80}}
	}})
	runCtx, stop := context.WithCancel(ctx)
	done := make(chan struct{})
	go func() { c.Run(runCtx); close(done) }()
	defer func() { stop(); <-done }()
	waitUntil(t, "snapshot", func() bool { return c.Current() != nil })
	s := c.Current().Snapshot
	if s.Workload.ServiceAccount != "httpbin" || len(s.Inbound) != 1 || s.Inbound[0].Mode != policy.ServerStrict || s.Inbound[0].Port != 80 {
		t.Errorf("snapshot = %+v", s)
	}
	if got := s.Outbound[0].ServerIdentities; len(got) != 1 || got[0] != "spiffe://cluster.local/ns/default/sa/httpbin" {
		t.Errorf("secure naming from the registered sidecar = %v", got)
	}
	// A later apply reaches the connected sidecar.
	first := c.Current()
	changed := c.Changed()
	if _, err := admin.ApplyConfig(ctx, &pb.ApplyConfigRequest{Files: []*pb.ConfigFile{{Name: "p.yaml",
		Content: []byte("apiVersion: authentication.istio.io/v1alpha1\nkind: Policy\nmetadata: {name: httpbin}\nspec:\n  targets: [{name: httpbin}]\n  peers: [{mtls: {mode: PERMISSIVE}}]\n")}}}); err != nil {
		t.Fatal(err)
	}
	select {
	case <-changed:
	case <-ctx.Done():
		t.Fatal("no new snapshot after ApplyConfig")
	}
	if c.Current() == first || c.Current().Snapshot.Inbound[0].Mode != policy.ServerPermissive {
		t.Errorf("after apply: %+v", c.Current().Snapshot.Inbound)
	}
	st := getState(t, e)
	if len(st.Sidecars) != 1 || st.Sidecars[0].SPIFFEID != "spiffe://cluster.local/ns/default/sa/httpbin" {
		t.Errorf("sidecars in state = %+v", st.Sidecars)
	}
	// The plane's metrics on the control plane's registry, once the sidecar
	// has ACKed the latest snapshot.
	if err := e.srv.Plane().Push().WaitSynced(ctx, 1); err != nil {
		t.Fatal(err)
	}
	got := gauges(t, e)
	for name, want := range map[string]float64{"meshauth_push_sidecars_connected": 1, "meshauth_config_rejected_total": 1, "meshauth_config_version": 2} {
		if got[name] != want {
			t.Errorf("%s = %v, want %v", name, got[name], want)
		}
	}
	if got["meshauth_push_acks_total"] < 2 {
		t.Errorf("meshauth_push_acks_total = %v, want >= 2", got["meshauth_push_acks_total"])
	}
}

// TestAppliedConfigSurvivesRestart: config applied with meshctl apply is
// saved in the state directory and in force again after a restart, so a
// restart never silently weakens policy.
func TestAppliedConfigSurvivesRestart(t *testing.T) {
	dir := t.TempDir()
	run := func() (*control.Server, func()) {
		srv, err := control.New(control.Config{Dir: dir, Listen: "127.0.0.1:0", Log: slog.New(slog.NewTextHandler(io.Discard, nil))})
		if err != nil {
			t.Fatal(err)
		}
		ctx, cancel := context.WithCancel(context.Background())
		done := make(chan error, 1)
		go func() { done <- srv.Serve(ctx) }()
		waitUntil(t, "listening", func() bool { return srv.Addr() != "" })
		return srv, func() { cancel(); <-done; srv.Plane().Close() }
	}
	admin := func(srv *control.Server) pb.AdminClient {
		e := &env{srv: srv, dir: dir}
		return e.admin(t)
	}
	srv, stop := run()
	ctx := context.Background()
	if _, err := admin(srv).ApplyConfig(ctx, &pb.ApplyConfigRequest{Files: []*pb.ConfigFile{{Name: "m.yaml", Content: []byte(planeMesh +
		"---\napiVersion: authentication.istio.io/v1alpha1\nkind: Policy\nmetadata: {name: default}\nspec:\n  peers:\n  - mtls:\n")}}}); err != nil {
		t.Fatal(err)
	}
	stop()
	if fi, err := os.Stat(filepath.Join(dir, control.FileAppliedConfig)); err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("applied config file: %v %v", fi, err)
	}

	srv, stop = run()
	defer stop()
	resp, err := admin(srv).GetState(ctx, &pb.GetStateRequest{})
	if err != nil {
		t.Fatal(err)
	}
	st, err := meshapi.StateFromProto(resp)
	if err != nil {
		t.Fatal(err)
	}
	if st.Config.AuthPolicy() != "MUTUAL_TLS" || len(st.Registry.Services) != 1 || len(st.Config.Policies) != 1 {
		t.Fatalf("after restart: authPolicy %s, %d services, %d policies", st.Config.AuthPolicy(), len(st.Registry.Services), len(st.Config.Policies))
	}
	// The bare `mtls:` must still mean STRICT after the save/load round trip.
	if rows := st.Engine().TLSCheck(nil); rows[0].Server.Mode != policy.ServerStrict || rows[0].Server.DecidedBy != "Policy/default/default" {
		t.Errorf("after restart: %+v", rows[0])
	}
}
