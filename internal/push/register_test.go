package push

import (
	"context"
	"log/slog"
	"strings"
	"testing"
	"time"

	pb "github.com/meshauth/meshauth/api/meshauth/v1"
	"github.com/meshauth/meshauth/internal/ca/catest"
	"github.com/meshauth/meshauth/internal/push/pushclient"
	"github.com/meshauth/meshauth/internal/registry"
)

// Services for the registration tests: "open" declares no workload and no
// service account (registration closed), "vm" admits service account vm.
const registerYAML = `apiVersion: meshauth.io/v1alpha1
kind: Service
metadata: {name: open}
spec:
  selector: {app: open}
  ports: [{name: http, number: 9000, protocol: HTTP}]
---
apiVersion: meshauth.io/v1alpha1
kind: Service
metadata: {name: vm}
spec:
  selector: {app: vm}
  ports: [{name: http, number: 9100, protocol: HTTP}]
  serviceAccounts: [vm]
`

// sidecar runs a push client for spiffeID registering as workload with
// labels, until the test ends or stop is called.
func (e *env) sidecar(spiffeID, workload string, labels map[string]string) (c *pushclient.Client, stop func()) {
	c = pushclient.NewClient(pushclient.ClientConfig{
		Conn: e.dial(spiffeID),
		Register: func() *pb.Register {
			return &pb.Register{Workload: workload, Labels: labels, Address: "127.0.0.9", Ports: []uint32{9000, 9100}}
		},
		MinBackoff: 20 * time.Millisecond, MaxBackoff: 200 * time.Millisecond,
		Log: slog.New(slog.NewTextHandler(e.logs, nil)),
	})
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { c.Run(ctx); close(done) }()
	var stopped bool
	stop = func() {
		if !stopped {
			stopped = true
			cancel()
			<-done
		}
	}
	e.t.Cleanup(stop)
	return c, stop
}

// TestForeignIdentityCannotRegisterIntoAService: issue 11 finding 7, over
// real gRPC with real certificates. A sidecar with identity attacker that
// registers with the labels of a Service declaring no workloads is not an
// endpoint of it and not a server identity for it in anyone's snapshot;
// the refusal is logged with identity, service and reason and counted. A
// sidecar whose identity the Service lists in serviceAccounts joins it.
// (Failed on the old code: sleep's snapshot routed open.default to the
// attacker and trusted spiffe://cluster.local/ns/default/sa/attacker.)
func TestForeignIdentityCannotRegisterIntoAService(t *testing.T) {
	e := &env{t: t, ca: catest.New(t), reg: registry.New(), logs: &lockedBuffer{}, debounce: 5 * time.Millisecond}
	e.start("127.0.0.1:0", engineFor(t, e.reg, meshYAML, registerYAML))

	e.sidecar("spiffe://cluster.local/ns/default/sa/attacker", "evil-1", map[string]string{"app": "open"})
	e.sidecar("spiffe://cluster.local/ns/default/sa/attacker", "evil-2", map[string]string{"app": "vm"})
	e.sidecar("spiffe://cluster.local/ns/default/sa/vm", "vm-1", map[string]string{"app": "vm"})
	waitFor(t, "three registrations", func() bool { return len(e.server.Status()) == 3 })
	sleep := e.client("spiffe://cluster.local/ns/default/sa/sleep", "sleep-1", nil)
	waitFor(t, "sleep's snapshot with vm-1 behind vm", func() bool {
		u := sleep.Current()
		if u == nil {
			return false
		}
		for _, o := range u.Snapshot.Outbound {
			if o.Name == "vm" && len(o.Endpoints) > 0 {
				return true
			}
		}
		return false
	})
	for _, o := range sleep.Current().Snapshot.Outbound {
		var eps []string
		for _, ep := range o.Endpoints {
			eps = append(eps, ep.Workload)
		}
		ids := strings.Join(o.ServerIdentities, " ")
		switch o.Name {
		case "open":
			if len(eps) != 0 || ids != "" {
				t.Errorf("open.default: endpoints %v, server identities %q; the attacker's registration must be refused", eps, ids)
			}
		case "vm":
			if strings.Join(eps, " ") != "vm-1" || ids != "spiffe://cluster.local/ns/default/sa/vm" {
				t.Errorf("vm.default: endpoints %v, server identities %q; want vm-1 and .../sa/vm only", eps, ids)
			}
		}
	}
	logs := e.logs.String()
	for _, want := range []string{
		`msg="self-registration refused: not an endpoint of the service" component=push spiffe_id=spiffe://cluster.local/ns/default/sa/attacker workload=default/evil-1 service=open.default reason="registration is closed`,
		`workload=default/evil-2 service=vm.default reason="identity not allowed for the Service (allowed: spiffe://cluster.local/ns/default/sa/vm)"`,
	} {
		if !strings.Contains(logs, want) {
			t.Errorf("log lacks %q:\n%s", want, logs)
		}
	}
	// The refused sidecar hears it too, in its own log.
	waitFor(t, "the refused sidecar logs the refusal", func() bool {
		return strings.Contains(e.logs.String(), `msg="not an endpoint of a service this sidecar registered for: the control plane refused its identity" component=push-client service=open.default spiffe_id=spiffe://cluster.local/ns/default/sa/attacker`)
	})
	if strings.Contains(logs, "workload=default/vm-1 service=vm.default") {
		t.Error("the allowed registration was logged as refused")
	}
	if n := e.server.Stats().RegistrationsRefused; n != 2 {
		t.Errorf("RegistrationsRefused = %d, want 2", n)
	}
}

// TestRegistrationGrace: a self-registration outlives its stream by the
// grace period (a reconnect does not flap the endpoint), then leaves the
// registry.
func TestRegistrationGrace(t *testing.T) {
	const grace = 400 * time.Millisecond
	e := &env{t: t, ca: catest.New(t), reg: registry.New(), logs: &lockedBuffer{}, debounce: 5 * time.Millisecond, grace: grace}
	e.start("127.0.0.1:0", engineFor(t, e.reg, meshYAML, registerYAML))

	_, stop := e.sidecar("spiffe://cluster.local/ns/default/sa/vm", "vm-1", map[string]string{"app": "vm"})
	waitFor(t, "registered", func() bool { return len(e.server.Status()) == 1 })
	first := e.reg.Workload("default", "vm-1")
	stop()
	waitFor(t, "stream ended", func() bool { return len(e.server.Status()) == 0 })
	ended := time.Now()
	if w := e.reg.Workload("default", "vm-1"); w != first {
		t.Fatalf("registration removed as the stream ended (%v); want it kept for the grace period", w)
	}
	// A reconnect within the grace keeps the endpoint; the old stream's
	// delayed cleanup must not remove the new registration.
	_, stop = e.sidecar("spiffe://cluster.local/ns/default/sa/vm", "vm-1", map[string]string{"app": "vm"})
	waitFor(t, "re-registered", func() bool { return len(e.server.Status()) == 1 })
	if time.Since(ended) < grace {
		time.Sleep(grace - time.Since(ended) + 100*time.Millisecond)
		if e.reg.Workload("default", "vm-1") == nil {
			t.Fatal("the first stream's cleanup removed the reconnected sidecar's registration")
		}
	}
	stop()
	waitFor(t, "registration removed after the grace period", func() bool { return e.reg.Workload("default", "vm-1") == nil })
}
