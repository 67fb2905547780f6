package adversarial

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/meshauth/meshauth/internal/localmesh"
	"github.com/meshauth/meshauth/internal/policy"
)

// Issue 11 finding 7: any identity could register itself as an endpoint of
// a Service that declares no workloads, and secure naming then trusted it.
// The attacker is a workload with a valid mesh identity (service account
// attacker) whose sidecar registers with the labels of two services:
// ratings (declared by the operator, no workload, no serviceAccounts:
// registration closed) and reviews (served by a self-registered workload
// whose identity the Service allows in spec.serviceAccounts). sleep's calls
// must never reach the attacker; the control plane and the attacker's own
// sidecar log the refusal with identity, service and reason; meshctl check
// shows it. (On the old code sleep's call to ratings was answered by the
// attacker's app, through mTLS that secure naming accepted.)
func TestForeignIdentityRegistersAsServiceEndpoint(t *testing.T) {
	m := startMesh(t, meshOptions{})
	ctx := context.Background()
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}

	// The legitimate self-registered workload: no Workload YAML, the
	// Service (written by localmesh) allows service account reviews.
	_, err = m.StartWorkload(ctx, localmesh.WorkloadSpec{
		Name: "reviews", Namespace: "default", ServiceAccount: "reviews",
		Service: "reviews", ServicePort: 9080, SelfRegister: true,
		App: []string{self, "adversarial-app", "127.0.0.1:{{port}}"},
	})
	if err != nil {
		t.Fatal(err)
	}

	// The attacker's app and sidecar ports, and ratings, which the
	// operator declared with no workload yet (its targetPort is the port
	// the attacker's app happens to use, so that on the old code the route
	// goes to the attacker's sidecar).
	var ports [2]int
	for i := range ports {
		if ports[i], err = localmesh.FreePort(); err != nil {
			t.Fatal(err)
		}
	}
	in, app := fmt.Sprintf("127.0.0.1:%d", ports[0]), fmt.Sprintf("127.0.0.1:%d", ports[1])
	if err := m.WriteConfig("ratings.yaml", fmt.Sprintf(`apiVersion: meshauth.io/v1alpha1
kind: Service
metadata: {name: ratings, namespace: default}
spec:
  selector: {svc: ratings}
  ports: [{name: http, number: 9080, targetPort: %d, protocol: HTTP}]
`, ports[1])); err != nil {
		t.Fatal(err)
	}
	_, err = m.StartWorkload(ctx, localmesh.WorkloadSpec{
		Name: "attacker", Namespace: "default", ServiceAccount: "attacker", SelfRegister: true,
		// Claims both services: app=reviews overrides localmesh's
		// app=attacker (repeated --label flags merge, the last wins).
		SidecarArgs: []string{"--label", "app=reviews", "--label", "svc=ratings", "--inbound", in + "=" + app},
		App:         []string{self, "adversarial-app", app},
	})
	if err != nil {
		t.Fatal(err)
	}
	// The app is a child of the sidecar: poll until it listens.
	for deadline := time.Now().Add(30 * time.Second); ; time.Sleep(50 * time.Millisecond) {
		err := localmesh.Listening(app)
		if err == nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the attacker's app never listened on %s: %v", app, err)
		}
	}
	if err := m.Sleep.WaitOutbound(ctx, "reviews", "default", 30*time.Second); err != nil {
		t.Fatal(err)
	}
	// sleep knows ratings (its route exists), whatever its endpoints.
	waitRoute(t, m.Sleep, "ratings", 30*time.Second)

	const calls = 10
	for i := 0; i < calls; i++ {
		out, _, _ := curl(t, "-i", "-x", m.Sleep.OutboundProxy, "http://ratings.default:9080/headers")
		if strings.Contains(out, `{"method"`) {
			t.Fatalf("call %d to ratings reached an app (the attacker's: ratings has no allowed identity):\n%s", i, out)
		}
		if st := statusOf(out); st != http.StatusServiceUnavailable {
			t.Fatalf("call %d to ratings: want 503 (no endpoints), got %d:\n%s", i, st, out)
		}
		out, _, _ = curl(t, "-i", "-x", m.Sleep.OutboundProxy, "http://reviews.default:9080/headers")
		if statusOf(out) != 200 {
			t.Fatalf("call %d to reviews: want 200, got:\n%s", i, out)
		}
		xfcc := parseAppSaw(t, out).header("X-Forwarded-Client-Cert")
		if len(xfcc) != 1 || !strings.HasPrefix(xfcc[0], "By=spiffe://cluster.local/ns/default/sa/reviews;") {
			t.Fatalf("call %d to reviews was served by %q; want only the reviews identity", i, xfcc)
		}
	}

	// The refusals, with identity, service and reason.
	m.WaitLog(t, "control", 10*time.Second, "self-registration refused", "spiffe_id=spiffe://cluster.local/ns/default/sa/attacker",
		"service=ratings.default", `reason="registration is closed`)
	m.WaitLog(t, "control", 10*time.Second, "self-registration refused", "spiffe_id=spiffe://cluster.local/ns/default/sa/attacker",
		"service=reviews.default", "identity not allowed for the Service (allowed: spiffe://cluster.local/ns/default/sa/reviews)")
	m.WaitLog(t, "attacker", 10*time.Second, "the control plane refused its identity", `"service":"ratings.default"`)
	if strings.Contains(m.Log("control"), "workload=default/reviews service=reviews.default") {
		t.Error("the allowed registration was logged as refused")
	}
	out, _, code := m.Ctl(t, "check")
	if code != 1 {
		t.Errorf("meshctl check exit %d, want 1 (refused registrations are FAILs):\n%s", code, out)
	}
	for _, want := range []string{"FAIL  registration default/attacker -> ratings.default", "FAIL  registration default/attacker -> reviews.default"} {
		if !strings.Contains(out, want) {
			t.Errorf("meshctl check lacks %q:\n%s", want, out)
		}
	}
	if strings.Contains(out, "registration default/reviews") {
		t.Errorf("meshctl check reports the allowed registration:\n%s", out)
	}
}

// waitRoute waits until w's sidecar has a route (with or without
// endpoints) to service name in namespace default.
func waitRoute(t *testing.T, w *localmesh.Workload, name string, timeout time.Duration) {
	t.Helper()
	c := http.Client{Timeout: 2 * time.Second}
	deadline := time.Now().Add(timeout)
	for {
		resp, err := c.Get("http://" + w.AdminAddr + "/config_dump")
		if err == nil {
			var dump struct {
				Snapshot *policy.Snapshot `json:"snapshot"`
			}
			err = json.NewDecoder(resp.Body).Decode(&dump)
			resp.Body.Close()
			if err == nil && dump.Snapshot != nil {
				for _, o := range dump.Snapshot.Outbound {
					if o.Name == name && o.Namespace == "default" {
						return
					}
				}
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s's sidecar has no route to %s.default after %s", w.Spec.Name, name, timeout)
		}
		time.Sleep(100 * time.Millisecond)
	}
}
