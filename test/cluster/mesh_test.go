package cluster

import (
	"context"
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

// TestWebhookInjection: in a namespace labelled istio-injection=enabled the
// plain samples (no kube-inject) get istio-init and istio-proxy from the
// control plane's webhook, and the seed's three curls behave as in default.
func TestWebhookInjection(t *testing.T) {
	ctx, p := begin(t, 8*time.Minute)
	p.Webhook(ctx)
}

// TestCSRMode: kube-inject --mode csr: the key never leaves the pod; the
// sidecar proves its ServiceAccount with a projected token (audience
// istio-ca) that the CA checks with a TokenReview. The pods talk mTLS to each
// other and to the Secret-mode httpbin in default.
func TestCSRMode(t *testing.T) {
	ctx, p := begin(t, 8*time.Minute)
	p.R.Section("CSR mode: projected ServiceAccount tokens and TokenReview")
	p.Step(ctx, "namespace", "kubectl create ns csr", seedreplay.Succeeds)
	p.Deploy(ctx, "csr",
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
	p.Step(ctx, "sleep -> httpbin (CSR mode both)", seedreplay.CurlFrom("sleep", "sleep", "csr", "httpbin:8000/headers"), seedreplay.Curl(walkthrough.SeedOK))
	p.Step(ctx, "httpbin in default (Secret mode; TestSeed made it)",
		"kubectl apply -f <(meshctl kube-inject -f samples/httpbin/httpbin.yaml) >/dev/null && kubectl wait --for=condition=Available deploy/httpbin --timeout=170s",
		seedreplay.Succeeds)
	p.StepUntil(ctx, "sleep (CSR) -> httpbin.default (Secret mode)", seedreplay.CurlFrom("sleep", "sleep", "csr", "httpbin.default:8000/headers"), walkthrough.SeedOK)
	p.Step(ctx, "istio-proxy -> httpbin, plain http", seedreplay.CurlFrom("sleep", "istio-proxy", "csr", "httpbin:8000/headers"), seedreplay.Curl(walkthrough.SeedReset))
}
