package agent_test

import (
	"context"
	"crypto/tls"
	"io"
	"log/slog"
	"net/http"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/meshauth/meshauth/internal/agent"
	"github.com/meshauth/meshauth/internal/ca"
	"github.com/meshauth/meshauth/internal/client"
	"github.com/meshauth/meshauth/internal/control"
	"github.com/meshauth/meshauth/internal/identity"
	"github.com/meshauth/meshauth/internal/policy"
	"github.com/meshauth/meshauth/internal/proxy"
	"github.com/meshauth/meshauth/internal/sidecar"
	"google.golang.org/grpc"
)

// controlPlane is a real `meshd control` server, in process, that a test can
// stop and start again on the same address and state directory.
type controlPlane struct {
	dir, addr string
	caCfg     ca.Config
	srv       *control.Server
	cancel    context.CancelFunc
	done      chan error
}

func (c *controlPlane) start(t *testing.T) {
	t.Helper()
	listen := c.addr
	if listen == "" {
		listen = "127.0.0.1:0"
	}
	srv, err := control.New(control.Config{Dir: c.dir, Listen: listen, CA: c.caCfg, Log: slog.New(slog.DiscardHandler)})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	c.srv, c.cancel, c.done = srv, cancel, make(chan error, 1)
	go func() { c.done <- srv.Serve(ctx) }()
	for srv.Addr() == "" {
		select {
		case err := <-c.done:
			t.Fatalf("control plane: %v", err)
		case <-time.After(5 * time.Millisecond):
		}
	}
	if c.addr == "" {
		// Set once, before any agent reads it; a restart listens on the
		// same address.
		c.addr = srv.Addr()
	}
}

func (c *controlPlane) stop(t *testing.T) {
	t.Helper()
	if c.cancel == nil {
		return
	}
	c.cancel()
	if err := <-c.done; err != nil {
		t.Errorf("control plane Serve: %v", err)
	}
	c.cancel = nil
}

// startAgent runs an agent for id against cp with a join token. TTL is the
// CA's 1-minute minimum and RenewFraction is small, so the agent renews
// about every second and a test sees many renewals quickly.
func startAgent(t *testing.T, ctx context.Context, cp *controlPlane, id identity.ID) (*agent.Agent, string) {
	t.Helper()
	tok, err := cp.srv.CA().CreateJoinToken(id, time.Hour, 1)
	if err != nil {
		t.Fatal(err)
	}
	roots, err := client.LoadRoots(cp.dir, "")
	if err != nil {
		t.Fatal(err)
	}
	store := agent.NewStore(agent.StoreConfig{Want: id})
	connect := sidecar.GRPCCA{Dial: func(ctx context.Context, bootstrap bool) (*grpc.ClientConn, error) {
		o := client.Options{Dir: cp.dir, Addr: cp.addr, Roots: func() *identity.Bundle {
			if b := store.Bundle(); b != nil {
				return b
			}
			return roots
		}}
		if !bootstrap {
			o.GetClientCertificate = func(*tls.CertificateRequestInfo) (*tls.Certificate, error) { return currentCert(store), nil }
		} else {
			o.Token = tok.Secret
		}
		return client.Dial(ctx, o)
	}}
	dir := filepath.Join(t.TempDir(), "certs")
	a, err := agent.New(agent.Config{
		ID: id, Dir: dir, CA: connect, Store: store, TTL: time.Minute,
		RenewFraction: 0.02, Jitter: 0.005, MinRenewInterval: 100 * time.Millisecond,
		MinBackoff: 50 * time.Millisecond, MaxBackoff: 300 * time.Millisecond,
	})
	if err != nil {
		t.Fatal(err)
	}
	// The agent stops, and stops writing into dir, before t.TempDir's
	// cleanup removes it (cleanups run last-in first-out).
	actx, acancel := context.WithCancel(ctx)
	done := make(chan struct{})
	go func() { a.Run(actx); close(done) }()
	t.Cleanup(func() { acancel(); <-done })
	waitFor(t, func() bool { return store.SVID() != nil }, "first certificate for %s", id)
	return a, dir
}

func waitFor(t *testing.T, cond func() bool, format string, args ...any) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for: "+format, args...)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// TestAgentAgainstCA runs two agents against the real control plane and a
// sidecar pair on their certificates. It checks bootstrap with a join
// token, the certs directory, renewal over mTLS, and that with the CA down
// traffic keeps flowing on the current certificates, and renewal succeeds
// again once the CA is back.
func TestAgentAgainstCA(t *testing.T) {
	if testing.Short() {
		t.Skip("runs a control plane")
	}
	cp := &controlPlane{dir: t.TempDir()}
	cp.start(t)
	defer cp.stop(t)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()

	sleepID := identity.MustParse("spiffe://cluster.local/ns/default/sa/sleep")
	httpbinID := identity.MustParse("spiffe://cluster.local/ns/default/sa/httpbin")
	sleep, sleepDir := startAgent(t, ctx, cp, sleepID)
	httpbin, _ := startAgent(t, ctx, cp, httpbinID)

	t.Run("certs directory", func(t *testing.T) {
		// The files are written right after the store is updated.
		waitFor(t, func() bool { _, err := os.Stat(filepath.Join(sleepDir, agent.RootFile)); return err == nil }, "root-cert.pem")
		for name, mode := range map[string]os.FileMode{agent.ChainFile: 0o644, agent.KeyFile: 0o600, agent.RootFile: 0o644} {
			fi, err := os.Stat(filepath.Join(sleepDir, name))
			if err != nil {
				t.Fatal(err)
			}
			if fi.Mode().Perm() != mode {
				t.Errorf("%s mode %v, want %v", name, fi.Mode().Perm(), mode)
			}
		}
		// The agent renews about every second here, and the three files
		// are replaced one by one; a reader can catch a renewal between two
		// of them, so read until a consistent pair is seen.
		var s *agent.SVID
		var err error
		waitFor(t, func() bool {
			chain, _ := os.ReadFile(filepath.Join(sleepDir, agent.ChainFile))
			key, _ := os.ReadFile(filepath.Join(sleepDir, agent.KeyFile))
			s, err = agent.NewSVID(chain, key)
			return err == nil
		}, "a matching cert-chain.pem and key.pem")
		if s.ID != sleepID {
			t.Fatalf("files hold %s, want %s", s.ID, sleepID)
		}
	})

	first := sleep.Store().SVID().Serial()
	t.Run("renewal over mTLS", func(t *testing.T) {
		waitFor(t, func() bool { return sleep.Store().SVID().Serial() != first }, "a renewal")
	})

	// A sidecar pair on the agents' stores.
	app := http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, "ok") })}
	appL := listen(t)
	go app.Serve(appL)
	defer app.Close()
	srvP := newProxy(t, httpbin.Store(), &policy.Snapshot{TrustDomain: "cluster.local", InboundDefault: policy.ServerStrict},
		proxy.Config{Inbound: []proxy.InboundListener{{Listen: "127.0.0.1:0", App: appL.Addr().String(), Port: 80}}})
	inAddr := srvP.InboundAddrs[0].String()
	cliP := newProxy(t, sleep.Store(), &policy.Snapshot{TrustDomain: "cluster.local", Outbound: []policy.OutboundService{{
		Name: "httpbin", Namespace: "default", Hosts: []string{"httpbin"},
		Ports:            []policy.OutboundPort{{Port: 8000, TargetPort: 80, Protocol: "HTTP", TLSMode: policy.ClientIstioMutual}},
		Endpoints:        []policy.Endpoint{{Address: "127.0.0.1", Ports: map[uint32]uint32{80: portOf(inAddr)}, Sidecar: true}},
		ServerIdentities: []string{httpbinID.String()},
	}}}, proxy.Config{Outbound: "127.0.0.1:0"})
	get := func() error {
		c := &http.Client{Transport: &http.Transport{Proxy: http.ProxyURL(mustURL("http://" + cliP.OutboundAddr.String())), DisableKeepAlives: true}, Timeout: 5 * time.Second}
		resp, err := c.Get("http://httpbin:8000/")
		if err != nil {
			return err
		}
		defer resp.Body.Close()
		if resp.StatusCode != 200 {
			return &statusError{resp.StatusCode}
		}
		return nil
	}
	if err := get(); err != nil {
		t.Fatal(err)
	}

	t.Run("CA down: traffic flows, renewals fail and are retried", func(t *testing.T) {
		cp.stop(t)
		// A renewal in flight when the CA stopped may still land; once one
		// has failed, none can succeed until the CA is back.
		waitFor(t, func() bool { return sleep.Status()["last_error"] != "" }, "a failed renewal while the CA is down")
		down := sleep.Store().SVID().Serial()
		for i := 0; i < 20; i++ {
			// New client connections and new upstream handshakes.
			if err := get(); err != nil {
				t.Fatalf("request %d with the CA down: %v", i, err)
			}
			time.Sleep(50 * time.Millisecond)
		}
		if s := sleep.Store().SVID().Serial(); s != down {
			t.Fatalf("certificate changed from %s to %s while the CA was down", down, s)
		}
	})
	t.Run("CA back: renewal succeeds again", func(t *testing.T) {
		before := sleep.Store().SVID().Serial()
		cp.start(t)
		waitFor(t, func() bool { return sleep.Store().SVID().Serial() != before }, "renewal after the CA returned")
		waitFor(t, func() bool { return sleep.Status()["last_error"] == "" }, "agent status clear")
		if err := get(); err != nil {
			t.Fatal(err)
		}
	})
}

type statusError struct{ code int }

func (e *statusError) Error() string { return http.StatusText(e.code) }
