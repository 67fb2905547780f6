package cluster

import (
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/meshauth/meshauth/internal/walkthrough"
	"github.com/meshauth/meshauth/test/cluster/seedreplay"
)

const disableDR = `apiVersion: networking.istio.io/v1alpha3
kind: DestinationRule
metadata:
  name: httpbin-plaintext
  namespace: default
spec:
  host: httpbin.default.svc.cluster.local
  trafficPolicy:
    tls:
      mode: DISABLE
`

// meshctlCheck runs meshctl check as a node admin would: the control plane's
// state directory (admin token, root) is its pod's emptyDir on the node, the
// address its Service's ClusterIP.
const meshctlCheck = meshctlAdmin + " check"

// TestTLSCheckKubeconfig: meshctl tls-check --kubeconfig reads the cluster
// with the user's credentials: httpbin.default is OK under the mesh-wide
// MUTUAL_TLS; a DestinationRule that turns TLS off for httpbin makes it a
// CONFLICT (exit 1) naming the rule; removing the rule clears it.
func TestTLSCheckKubeconfig(t *testing.T) {
	ctx, p := begin(t, 6*time.Minute)
	p.R.Section("meshctl tls-check --kubeconfig, and a CONFLICT from a DestinationRule")
	p.Step(ctx, "httpbin deployed", "kubectl apply -f <(meshctl kube-inject -f samples/httpbin/httpbin.yaml)", seedreplay.Succeeds)
	// meshctl check looks at httpbin's sidecar: wait until it is ready
	// (run alone, the test otherwise checked a pod still starting).
	p.Step(ctx, "httpbin rolled out", "kubectl rollout status deploy/httpbin -n default --timeout=170s", seedreplay.Succeeds)
	tlsCheck := "meshctl --kubeconfig $KUBECONFIG tls-check httpbin.default"
	p.Step(ctx, "tls-check: OK", tlsCheck, func(o walkthrough.Observation) (bool, string, string) {
		ok := o.Exit == 0 && strings.Contains(o.Stdout, "httpbin.default.svc.cluster.local:8000") && strings.Contains(o.Stdout, " OK ")
		return ok, row(o), "exit 0, httpbin.default.svc.cluster.local:8000 OK STRICT ISTIO_MUTUAL"
	})
	p.Step(ctx, "meshctl check: httpbin OK, its sidecar's certificate verified", meshctlCheck,
		checkLines("PASS  tls-check httpbin.default.svc.cluster.local:8000", "PASS  control plane reachable", "PASS  workload default/httpbin-",
			// No sidecar serves these; the install's mtlsExcludedServices
			// says so, so a fresh install shows no CONFLICT for them.
			"PASS  tls-check meshauth-control.istio-system.svc.cluster.local:15012",
			"PASS  tls-check kubernetes.default.svc.cluster.local:443"))
	p.Step(ctx, "DestinationRule with tls DISABLE applied", "kubectl apply -f - <<'EOF'\n"+disableDR+"EOF", seedreplay.Succeeds)
	p.Step(ctx, "tls-check: CONFLICT", tlsCheck, func(o walkthrough.Observation) (bool, string, string) {
		ok := o.Exit == 1 && strings.Contains(o.Stdout, "CONFLICT") && strings.Contains(o.Stdout, "DestinationRule/default/httpbin-plaintext")
		return ok, row(o), "exit 1, CONFLICT STRICT DISABLE DestinationRule/default/httpbin-plaintext"
	})
	p.Step(ctx, "meshctl check: the CONFLICT is a FAIL naming the rule", meshctlCheck,
		checkLines("FAIL  tls-check httpbin.default.svc.cluster.local:8000", "client DISABLE (DestinationRule/default/httpbin-plaintext)"))
	p.Step(ctx, "DestinationRule deleted", "kubectl delete destinationrule httpbin-plaintext -n default", seedreplay.Succeeds)
	p.Step(ctx, "tls-check: OK again", tlsCheck, func(o walkthrough.Observation) (bool, string, string) {
		return o.Exit == 0 && !strings.Contains(o.Stdout, "CONFLICT"), row(o), "exit 0, no CONFLICT"
	})
}

// checkLines checks that meshctl check printed a line containing each of
// want (in one line each). Its exit status is not checked: pods without
// sidecars (legacy) make other lines FAIL.
func checkLines(want ...string) func(walkthrough.Observation) (bool, string, string) {
	return func(o walkthrough.Observation) (bool, string, string) {
		var seen []string
		ok := true
		for _, w := range want {
			l := ""
			for _, line := range strings.Split(o.Stdout, "\n") {
				if strings.Contains(line, w) {
					l = strings.Join(strings.Fields(line), " ")
					break
				}
			}
			if l == "" {
				ok = false
				l = "(no line with " + w + ")"
			}
			seen = append(seen, l)
		}
		return ok, strings.Join(seen, " | "), strings.Join(want, " | ")
	}
}

// row is tls-check's last table row and the exit status.
func row(o walkthrough.Observation) string {
	lines := strings.Split(strings.TrimSpace(o.Stdout), "\n")
	return fmt.Sprintf("%s (exit %d)", strings.Join(strings.Fields(lines[len(lines)-1]), " "), o.Exit)
}
