package cluster

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/meshauth/meshauth/internal/walkthrough"
	"github.com/meshauth/meshauth/test/cluster/seedreplay"
)

// begin starts a test on the shared cluster: a Replayer whose transcript is
// logged (and whose failed checks fail t) when the test ends, a context
// bounded by d, and the seed's install applied.
func begin(t *testing.T, d time.Duration) (context.Context, *seedreplay.Replayer) {
	t.Helper()
	p, done := replayer(t)
	ctx, cancel := context.WithTimeout(context.Background(), d)
	t.Cleanup(func() { cancel(); done() })
	installed(ctx, t, p)
	return ctx, p
}

// installed applies the seed's install (idempotent: TestSeed did it first
// when it ran) and waits for the control plane.
func installed(ctx context.Context, t *testing.T, p *seedreplay.Replayer) {
	t.Helper()
	p.Step(ctx, "install", "meshctl install --mtls | kubectl apply -f -", seedreplay.Succeeds)
	p.Step(ctx, "control plane rolled out", "kubectl rollout status deploy/meshauth-control -n istio-system --timeout=170s", seedreplay.Succeeds)
}

// curlFrom is the seed's curl from app's container c in namespace ns.
func curlFrom(app, c, ns, url string, extra ...string) string {
	line := fmt.Sprintf("kubectl exec $(kubectl get pod -l app=%s -o jsonpath={.items..metadata.name} -n %s) -c %s -n %s -- curl %s -o /dev/null -s -w '%%{http_code}\\n'",
		app, ns, c, ns, url)
	if len(extra) > 0 {
		line += " " + strings.Join(extra, " ")
	}
	return line
}

// deploy applies httpbin and sleep to ns with the given apply lines and
// waits for them.
func deploy(ctx context.Context, p *seedreplay.Replayer, ns string, applies ...string) {
	for _, a := range applies {
		p.Step(ctx, "applied: "+a, a, seedreplay.Succeeds)
	}
	p.Step(ctx, "httpbin and sleep available in "+ns,
		"kubectl wait --for=condition=Available deploy/httpbin deploy/sleep -n "+ns+" --timeout=170s", seedreplay.Succeeds)
}

// TestWebhookInjection: in a namespace labelled istio-injection=enabled the
// plain samples (no kube-inject) get istio-init and istio-proxy from the
// control plane's webhook, and the seed's three curls behave as in default.
func TestWebhookInjection(t *testing.T) {
	ctx, p := begin(t, 8*time.Minute)
	p.R.Section("Webhook injection in a labelled namespace")
	p.Step(ctx, "namespace", "kubectl create ns webhook && kubectl label namespace webhook istio-injection=enabled", seedreplay.Succeeds)
	deploy(ctx, p, "webhook", "kubectl apply -f samples/httpbin/httpbin.yaml -n webhook", "kubectl apply -f samples/sleep/sleep.yaml -n webhook")
	p.Step(ctx, "webhook injected the sidecar",
		`kubectl get pod -l app=sleep -n webhook -o jsonpath='{.items[0].spec.initContainers[*].name} {.items[0].spec.containers[*].name}{"\n"}'`,
		seedreplay.Contains("istio-init sleep istio-proxy"))
	p.Step(ctx, "sleep -> httpbin", curlFrom("sleep", "sleep", "webhook", "httpbin:8000/headers"), seedreplay.Curl(walkthrough.SeedOK))
	p.Step(ctx, "istio-proxy -> httpbin, plain http", curlFrom("sleep", "istio-proxy", "webhook", "httpbin:8000/headers"), seedreplay.Curl(walkthrough.SeedReset))
	p.Step(ctx, "istio-proxy -> httpbin, https with the sidecar's certificate",
		curlFrom("sleep", "istio-proxy", "webhook", "https://httpbin:8000/headers", "--key /etc/certs/key.pem --cert /etc/certs/cert-chain.pem --cacert /etc/certs/root-cert.pem -k"),
		seedreplay.Curl(walkthrough.SeedOK))
	p.Step(ctx, "a namespace without the label gets no sidecar (legacy)",
		`kubectl create ns plain >/dev/null && kubectl apply -f samples/sleep/sleep.yaml -n plain >/dev/null && kubectl get deploy sleep -n plain -o jsonpath='{.spec.template.spec.containers[*].name}{"\n"}'`,
		seedreplay.Equals("sleep"))
	p.Step(ctx, "plain pod injected? (the pod, not the template)",
		`kubectl wait --for=condition=Available deploy/sleep -n plain --timeout=170s >/dev/null && kubectl get pod -l app=sleep -n plain -o jsonpath='{.items[0].spec.containers[*].name}{"\n"}'`,
		seedreplay.Equals("sleep"))
}

// TestCSRMode: kube-inject --mode csr: the key never leaves the pod; the
// sidecar proves its ServiceAccount with a projected token (audience
// istio-ca) that the CA checks with a TokenReview. The pods talk mTLS to each
// other and to the Secret-mode httpbin in default.
func TestCSRMode(t *testing.T) {
	ctx, p := begin(t, 8*time.Minute)
	p.R.Section("CSR mode: projected ServiceAccount tokens and TokenReview")
	p.Step(ctx, "namespace", "kubectl create ns csr", seedreplay.Succeeds)
	deploy(ctx, p, "csr",
		"kubectl apply -n csr -f <(meshctl kube-inject --mode csr -f samples/httpbin/httpbin.yaml)",
		"kubectl apply -n csr -f <(meshctl kube-inject --mode csr -f samples/sleep/sleep.yaml)")
	p.Step(ctx, "projected token with audience istio-ca",
		`kubectl get deploy sleep -n csr -o jsonpath='{.spec.template.spec.volumes[*].projected.sources[*].serviceAccountToken.audience}{"\n"}'`,
		seedreplay.Contains("istio-ca"))
	p.Step(ctx, "no Secret volume in CSR mode",
		`kubectl get deploy sleep -n csr -o jsonpath='{.spec.template.spec.volumes[*].secret.secretName}{"\n"}'`,
		seedreplay.Equals(""))
	p.Step(ctx, "sleep's certificate names its own ServiceAccount",
		"kubectl exec $(kubectl get pod -l app=sleep -o jsonpath={.items..metadata.name} -n csr) -c istio-proxy -n csr -- cat /etc/certs/cert-chain.pem | openssl x509 -noout -ext subjectAltName",
		seedreplay.Contains("URI:spiffe://cluster.local/ns/csr/sa/sleep"))
	p.Step(ctx, "sleep -> httpbin (CSR mode both)", curlFrom("sleep", "sleep", "csr", "httpbin:8000/headers"), seedreplay.Curl(walkthrough.SeedOK))
	p.Step(ctx, "httpbin in default (Secret mode; TestSeed made it)",
		"kubectl apply -f <(meshctl kube-inject -f samples/httpbin/httpbin.yaml) >/dev/null && kubectl wait --for=condition=Available deploy/httpbin --timeout=170s",
		seedreplay.Succeeds)
	p.StepUntil(ctx, "sleep (CSR) -> httpbin.default (Secret mode)", curlFrom("sleep", "sleep", "csr", "httpbin.default:8000/headers"), walkthrough.SeedOK)
	p.Step(ctx, "istio-proxy -> httpbin, plain http", curlFrom("sleep", "istio-proxy", "csr", "httpbin:8000/headers"), seedreplay.Curl(walkthrough.SeedReset))
}
