package cluster

import (
	"testing"
	"time"

	"github.com/meshauth/meshauth/internal/walkthrough"
	"github.com/meshauth/meshauth/test/cluster/seedreplay"
)

// TestRestartAndRollout: a deleted pod and a rolling restart come back with
// certificates, and sleep -> httpbin is still mutual TLS (200), while
// istio-proxy's plain call is still refused. The first call after a new pod
// may precede kube-proxy's endpoint update, so it is retried (attempts shown).
func TestRestartAndRollout(t *testing.T) {
	ctx, p := begin(t, 8*time.Minute)
	p.R.Section("Pod restart and rollout keep mutual TLS")
	p.Deploy(ctx, "restart",
		"kubectl create ns restart",
		"kubectl apply -n restart -f <(meshctl kube-inject -f samples/httpbin/httpbin.yaml)",
		"kubectl apply -n restart -f <(meshctl kube-inject -f samples/sleep/sleep.yaml)")
	p.StepUntil(ctx, "before: sleep -> httpbin", seedreplay.CurlFrom("sleep", "sleep", "restart", "httpbin:8000/headers"), walkthrough.SeedOK)
	p.Step(ctx, "httpbin pod deleted", "kubectl delete pod -l app=httpbin -n restart --wait=true", seedreplay.Succeeds)
	p.Step(ctx, "httpbin back", "kubectl wait --for=condition=Available deploy/httpbin -n restart --timeout=170s", seedreplay.Succeeds)
	p.StepUntil(ctx, "after pod restart: sleep -> httpbin", seedreplay.CurlFrom("sleep", "sleep", "restart", "httpbin:8000/headers"), walkthrough.SeedOK)
	for _, app := range []string{"httpbin", "sleep"} {
		p.Step(ctx, app+" rolled out again (and its old pod gone)",
			"old=$(kubectl get pod -l app="+app+" -n restart -o jsonpath={.items..metadata.name}) && kubectl rollout restart deploy/"+app+" -n restart && kubectl rollout status deploy/"+app+" -n restart --timeout=170s && kubectl wait --for=delete pod/$old -n restart --timeout=120s",
			seedreplay.Succeeds)
	}
	p.StepUntil(ctx, "after rollout: sleep -> httpbin", seedreplay.CurlFrom("sleep", "sleep", "restart", "httpbin:8000/headers"), walkthrough.SeedOK)
	p.ServiceProgrammed(ctx, "httpbin", "restart", 8000)
	p.Step(ctx, "after rollout: istio-proxy -> httpbin, plain http", seedreplay.CurlFrom("sleep", "istio-proxy", "restart", "httpbin:8000/headers"), seedreplay.Curl(walkthrough.SeedReset))
}

// TestProbesUnderStrict: kubelet's HTTP readiness and liveness probes pass
// under STRICT because kube-inject moved them to the sidecar's health port;
// the control, the same pod with its readiness probe put back on the app
// port, fails its probe (kubelet has no client certificate: Istio #4429).
func TestProbesUnderStrict(t *testing.T) {
	ctx, p := begin(t, 8*time.Minute)
	p.R.Section("kubelet HTTP probes under STRICT")
	p.Step(ctx, "probed applied", "kubectl create ns probes && kubectl apply -n probes -f <(meshctl kube-inject -f test/cluster/testdata/probed.yaml)", seedreplay.Succeeds)
	p.Step(ctx, "probes point at the sidecar",
		`kubectl get deploy probed -n probes -o jsonpath='{.spec.template.spec.containers[0].readinessProbe.httpGet.port} {.spec.template.spec.containers[0].readinessProbe.httpGet.path} {.spec.template.spec.containers[0].livenessProbe.httpGet.path}{"\n"}'`,
		seedreplay.Contains("15020 /app-health/httpbin/readyz /app-health/httpbin/livez"))
	p.Step(ctx, "pod Ready through the rewritten probes", "kubectl wait --for=condition=Available deploy/probed -n probes --timeout=170s", seedreplay.Succeeds)
	p.Step(ctx, "liveness probe ran and passed (no restart, probes seen by kubelet)",
		"sleep 5; kubectl get pod -l app=probed -n probes -o jsonpath='{.items[0].status.containerStatuses[?(@.name==\"httpbin\")].restartCount} {.items[0].status.containerStatuses[?(@.name==\"httpbin\")].ready}{\"\\n\"}'",
		seedreplay.Equals("0 true")) // restartCount, ready
	p.R.Note("control: the readiness probe back on the app port (what kubelet would do without the rewrite)")
	p.Step(ctx, "probe put back on port 80",
		`kubectl patch deploy probed -n probes --type=json -p '[{"op":"replace","path":"/spec/template/spec/containers/0/readinessProbe","value":{"httpGet":{"path":"/headers","port":80},"periodSeconds":1}}]'`,
		seedreplay.Succeeds)
	p.StepUntil(ctx, "kubelet's direct probe fails under STRICT",
		`kubectl get events -n probes --field-selector reason=Unhealthy -o jsonpath='{range .items[*]}{.message}{"\n"}{end}' | grep -m1 'Readiness probe failed'`,
		walkthrough.Expect{})
}
