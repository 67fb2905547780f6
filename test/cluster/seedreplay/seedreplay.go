// Package seedreplay replays the seed walkthrough ("Testing Mutual TLS",
// Istio 0.8) on a real cluster (test/cluster/kcluster): every command is the
// seed's own kubectl line, run by bash in the node's network namespace with
// meshctl in place of istioctl, and each result is printed as OBSERVED next
// to what the seed shows (internal/walkthrough's Reporter). It is both the
// test (test/cluster) and `make demo-k8s`.
package seedreplay

import (
	"context"
	"fmt"
	"regexp"
	"strings"
	"time"

	"github.com/meshauth/meshauth/internal/walkthrough"
	"github.com/meshauth/meshauth/test/cluster/kcluster"
)

// Replayer runs seed lines on a cluster and reports them.
type Replayer struct {
	C *kcluster.Cluster
	R *walkthrough.Reporter
	// Timeout bounds one command (default 3 minutes: waits included).
	Timeout time.Duration
}

// Run runs line (a shell line exactly as the seed writes it), prints it and
// its output, and returns what it did.
func (p *Replayer) Run(ctx context.Context, line string) walkthrough.Observation {
	t := p.Timeout
	if t == 0 {
		t = 3 * time.Minute
	}
	ctx, cancel := context.WithTimeout(ctx, t)
	defer cancel()
	p.R.Command(line)
	o, err := walkthrough.Run(p.C.Shell(ctx, line))
	if err != nil {
		o.Exit = -1
		o.Stderr += err.Error()
	}
	p.R.Output(o)
	return o
}

// Step runs line and checks its observation with check, which returns
// whether it matched, what was observed (short) and what the seed shows.
func (p *Replayer) Step(ctx context.Context, what, line string, check func(walkthrough.Observation) (bool, string, string)) walkthrough.Observation {
	o := p.Run(ctx, line)
	ok, observed, expected := check(o)
	p.R.Check(what, ok, observed, expected)
	return o
}

// Succeeds is the check for a set-up command: exit 0.
func Succeeds(o walkthrough.Observation) (bool, string, string) {
	return o.Exit == 0, fmt.Sprintf("exit %d", o.Exit), "exit 0"
}

// Curl is the check for one of the seed's curl lines.
func Curl(want walkthrough.Expect) func(walkthrough.Observation) (bool, string, string) {
	return func(o walkthrough.Observation) (bool, string, string) {
		return want.Match(o), o.String(), want.String()
	}
}

// Equals checks that the trimmed stdout is want ("" shows as "(none)").
func Equals(want string) func(walkthrough.Observation) (bool, string, string) {
	return func(o walkthrough.Observation) (bool, string, string) {
		got, exp := strings.TrimSpace(o.Stdout), want
		if exp == "" {
			exp = "(none)"
		}
		return o.Exit == 0 && got == want, got, exp
	}
}

// Contains checks that stdout contains want (the seed's output line).
func Contains(want string) func(walkthrough.Observation) (bool, string, string) {
	return func(o walkthrough.Observation) (bool, string, string) {
		return o.Exit == 0 && strings.Contains(o.Stdout, want), lineWith(o.Stdout, want) + fmt.Sprintf(" (exit %d)", o.Exit), want
	}
}

// lineWith is the line of s that contains want, else s's first line.
func lineWith(s, want string) string {
	for _, l := range strings.Split(s, "\n") {
		if strings.Contains(l, want) {
			return strings.TrimSpace(l)
		}
	}
	return firstLine(s)
}

func firstLine(s string) string {
	s = strings.TrimSpace(s)
	if i := strings.IndexByte(s, '\n'); i >= 0 {
		return s[:i] + " ..."
	}
	return s
}

// PodOf is the seed's `$(kubectl get pod -l app=X -o jsonpath={.items..metadata.name})`.
func PodOf(app, ns string) string {
	if ns != "" {
		return fmt.Sprintf("$(kubectl get pod -l app=%s -o jsonpath={.items..metadata.name} -n %s)", app, ns)
	}
	return fmt.Sprintf("$(kubectl get pod -l app=%s -o jsonpath={.items..metadata.name})", app)
}

const curlHeaders = `curl httpbin:8000/headers -o /dev/null -s -w '%{http_code}\n'`

// Install is the seed's "Before you begin": meshauth with global mutual
// TLS, then httpbin and sleep with injected sidecars in namespace default.
func (p *Replayer) Install(ctx context.Context, injectMode string) {
	r := p.R
	r.Section("Before you begin: install with global mutual TLS, deploy httpbin and sleep with sidecars")
	install := "meshctl install --mtls | kubectl apply -f -"
	inject := "meshctl kube-inject -f"
	if injectMode != "" && injectMode != "secret" {
		install = "meshctl install --mtls --inject-mode " + injectMode + " | kubectl apply -f -"
		inject = "meshctl kube-inject --mode " + injectMode + " -f"
	}
	p.Step(ctx, "install", install, Succeeds)
	r.Note("waiting for the control plane (not a seed command)")
	p.Step(ctx, "control plane rolled out", "kubectl rollout status deploy/meshauth-control -n istio-system --timeout=170s", Succeeds)
	p.Step(ctx, "httpbin applied", "kubectl apply -f <("+inject+" samples/httpbin/httpbin.yaml)", Succeeds)
	p.Step(ctx, "sleep applied", "kubectl apply -f <("+inject+" samples/sleep/sleep.yaml)", Succeeds)
	r.Note("waiting for the pods (not a seed command)")
	p.Step(ctx, "httpbin and sleep available", "kubectl wait --for=condition=Available deploy/httpbin deploy/sleep --timeout=170s", Succeeds)
	p.ServiceProgrammed(ctx, "httpbin", "default", 8000)
	p.Step(ctx, "sidecars injected", `kubectl get pod -l app=httpbin -o jsonpath='{.items[0].spec.initContainers[*].name} {.items[0].spec.containers[*].name}{"\n"}'`,
		Contains("istio-init httpbin istio-proxy"))
}

var availableRow = regexp.MustCompile(`(?m)^meshauth-control\s+(\d+)/(\d+)\s+(\d+)\s+(\d+)\s`)

// Verify is the seed's "Verifying Istio's mutual TLS authentication setup":
// Citadel, service configuration, keys and certificates.
func (p *Replayer) Verify(ctx context.Context, ns string) {
	r := p.R
	r.Section("Verifying Citadel")
	p.Step(ctx, "Citadel is up (AVAILABLE is 1)", "kubectl get deploy -l istio=citadel -n istio-system",
		func(o walkthrough.Observation) (bool, string, string) {
			m := availableRow.FindStringSubmatch(o.Stdout)
			if m == nil {
				return false, firstLine(o.Stdout), "a row with AVAILABLE 1"
			}
			return m[4] == "1", "meshauth-control AVAILABLE " + m[4], "istio-citadel ... AVAILABLE 1 (\"Citadel is up if the AVAILABLE column is 1\")"
		})
	r.Section("Verifying service configuration")
	p.Step(ctx, "mesh-wide authPolicy", "kubectl get configmap istio -o yaml -n istio-system | grep authPolicy | head -1", Contains("authPolicy: MUTUAL_TLS"))
	p.Step(ctx, "authentication policies listed", "kubectl get policies.authentication.istio.io --all-namespaces", Succeeds)
	p.Step(ctx, "destination rules listed", "kubectl get destinationrules.networking.istio.io --all-namespaces", Succeeds)

	r.Section("Verifying keys and certificates installation")
	pod := PodOf("httpbin", "")
	p.Step(ctx, "istio-proxy has the three files", "kubectl exec "+pod+" -c istio-proxy -- ls /etc/certs",
		func(o walkthrough.Observation) (bool, string, string) {
			got := strings.Join(strings.Fields(o.Stdout), " ")
			return o.Exit == 0 && got == "cert-chain.pem key.pem root-cert.pem", got, "cert-chain.pem key.pem root-cert.pem"
		})
	p.Step(ctx, "certificate valid now", "kubectl exec "+pod+" -c istio-proxy -- cat /etc/certs/cert-chain.pem | openssl x509 -text -noout | grep Validity -A 2",
		validNow)
	want := "URI:spiffe://cluster.local/ns/default/sa/httpbin"
	o := p.Run(ctx, "kubectl exec "+pod+" -c istio-proxy -- cat /etc/certs/cert-chain.pem | openssl x509 -text -noout | grep 'Subject Alternative Name' -A 1")
	r.Check("httpbin's identity", o.Exit == 0 && strings.Contains(o.Stdout, want), strings.TrimSpace(lastLine(o.Stdout)),
		want+" (the seed shows sa/default: its httpbin ran as the default ServiceAccount)")
}

func lastLine(s string) string {
	lines := strings.Split(strings.TrimSpace(s), "\n")
	return lines[len(lines)-1]
}

var notBefore = regexp.MustCompile(`Not Before: (.+ GMT)`)
var notAfter = regexp.MustCompile(`Not After : (.+ GMT)`)

func validNow(o walkthrough.Observation) (bool, string, string) {
	const layout = "Jan _2 15:04:05 2006 GMT"
	exp := "Not Before <= now < Not After (seed: May 17 23:02:11 2018 GMT .. Aug 15 23:02:11 2018 GMT, 90 days)"
	nb, na := notBefore.FindStringSubmatch(o.Stdout), notAfter.FindStringSubmatch(o.Stdout)
	if nb == nil || na == nil {
		return false, firstLine(o.Stdout), exp
	}
	b, err1 := time.Parse(layout, nb[1])
	a, err2 := time.Parse(layout, na[1])
	now := time.Now()
	ok := err1 == nil && err2 == nil && !now.Before(b) && now.Before(a)
	return ok, fmt.Sprintf("%s .. %s (%.0f days)", nb[1], na[1], a.Sub(b).Hours()/24), exp
}

// Traffic is the seed's "Testing the authentication setup", including the
// legacy namespace with sleep and no sidecar.
func (p *Replayer) Traffic(ctx context.Context) {
	r := p.R
	r.Section("Testing the authentication setup")
	sleep := PodOf("sleep", "")
	p.Step(ctx, "sleep -> httpbin (both sidecars)", "kubectl exec "+sleep+" -c sleep -- "+curlHeaders, Curl(walkthrough.SeedOK))
	p.Step(ctx, "istio-proxy -> httpbin, plain http", "kubectl exec "+sleep+" -c istio-proxy -- "+curlHeaders, Curl(walkthrough.SeedReset))
	p.Step(ctx, "istio-proxy -> httpbin, https without a client certificate",
		"kubectl exec "+sleep+" -c istio-proxy -- curl https://httpbin:8000/headers -o /dev/null -s -w '%{http_code}\\n'", Curl(walkthrough.SeedTLSFailed))
	p.Step(ctx, "istio-proxy -> httpbin, https with the sidecar's certificate",
		"kubectl exec "+sleep+" -c istio-proxy -- curl https://httpbin:8000/headers -o /dev/null -s -w '%{http_code}\\n' --key /etc/certs/key.pem --cert /etc/certs/cert-chain.pem --cacert /etc/certs/root-cert.pem -k",
		Curl(walkthrough.SeedOK))
	r.Note("a sleep without sidecar in namespace legacy")
	p.Step(ctx, "legacy namespace", "kubectl create ns legacy", Succeeds)
	p.Step(ctx, "legacy sleep applied", "kubectl apply -f samples/sleep/sleep.yaml -n legacy", Succeeds)
	r.Note("waiting for the legacy pod (not a seed command)")
	p.Step(ctx, "legacy sleep available", "kubectl wait --for=condition=Available deploy/sleep -n legacy --timeout=170s", Succeeds)
	p.Step(ctx, "legacy -> httpbin.default fails",
		"kubectl exec "+PodOf("sleep", "legacy")+" -c sleep -n legacy -- curl httpbin.default:8000/headers -o /dev/null -s -w '%{http_code}\\n'",
		Curl(walkthrough.SeedReset))
}

// Seed replays the whole walkthrough.
func (p *Replayer) Seed(ctx context.Context) {
	p.Install(ctx, "secret")
	p.Verify(ctx, "default")
	p.Traffic(ctx)
}

// StepUntil runs line until its observation matches want (at most 60
// attempts, a second apart), then prints the last run and checks it. For
// steps that wait on the cluster (a new endpoint, an event); the attempts
// are printed, and a step that never matches fails.
func (p *Replayer) StepUntil(ctx context.Context, what, line string, want walkthrough.Expect) walkthrough.Observation {
	var o walkthrough.Observation
	n := 0
	for n < 60 {
		n++
		c, cancel := context.WithTimeout(ctx, time.Minute)
		var err error
		o, err = walkthrough.Run(p.C.Shell(c, line))
		cancel()
		if err == nil && want.Match(o) {
			break
		}
		if ctx.Err() != nil {
			break
		}
		time.Sleep(time.Second)
	}
	p.R.Command(line)
	p.R.Output(o)
	p.R.Check(fmt.Sprintf("%s (attempt %d)", what, n), want.Match(o), o.String(), want.String())
	return o
}

// CurlFrom is the seed's curl from app's container c in namespace ns.
func CurlFrom(app, c, ns, url string, extra ...string) string {
	line := fmt.Sprintf("kubectl exec $(kubectl get pod -l app=%s -o jsonpath={.items..metadata.name} -n %s) -c %s -n %s -- curl %s -o /dev/null -s -w '%%{http_code}\\n'",
		app, ns, c, ns, url)
	if len(extra) > 0 {
		line += " " + strings.Join(extra, " ")
	}
	return line
}

// Deploy applies httpbin and sleep to ns with the given apply lines and
// waits for them.
func (p *Replayer) Deploy(ctx context.Context, ns string, applies ...string) {
	for _, a := range applies {
		p.Step(ctx, "applied: "+a, a, Succeeds)
	}
	p.Step(ctx, "httpbin and sleep available in "+ns,
		"kubectl wait --for=condition=Available deploy/httpbin deploy/sleep -n "+ns+" --timeout=170s", Succeeds)
	p.ServiceProgrammed(ctx, "httpbin", ns, 8000)
}

// ServiceProgrammed waits until a TCP connection from the node to the
// Service's ClusterIP opens: kube-proxy has programmed its endpoints. Pods
// being Ready does not mean that yet, and before it kube-proxy rejects the
// ClusterIP (curl exit 7), which is not what the seed's commands are about.
// A harness wait, printed as one; sidecar-to-sidecar calls do not need it
// (sidecars dial the endpoints they get from the control plane).
func (p *Replayer) ServiceProgrammed(ctx context.Context, svc, ns string, port int) {
	p.R.Note("waiting for kube-proxy to program %s.%s (not a seed command)", svc, ns)
	p.StepUntil(ctx, fmt.Sprintf("%s.%s:%d reachable from the node", svc, ns, port),
		fmt.Sprintf("timeout 2 bash -c \"</dev/tcp/$(kubectl get svc %s -n %s -o jsonpath={.spec.clusterIP})/%d\"", svc, ns, port),
		walkthrough.Expect{})
}

// Webhook is the seed's deployment done by the webhook instead of
// kube-inject: the plain samples in a namespace labelled
// istio-injection=enabled get istio-init and istio-proxy, the seed's curls
// behave as in default, and a namespace without the label gets no sidecar.
func (p *Replayer) Webhook(ctx context.Context) {
	p.R.Section("Webhook injection in a labelled namespace")
	p.Step(ctx, "namespace", "kubectl create ns webhook && kubectl label namespace webhook istio-injection=enabled", Succeeds)
	p.Deploy(ctx, "webhook", "kubectl apply -f samples/httpbin/httpbin.yaml -n webhook", "kubectl apply -f samples/sleep/sleep.yaml -n webhook")
	p.Step(ctx, "webhook injected the sidecar",
		`kubectl get pod -l app=sleep -n webhook -o jsonpath='{.items[0].spec.initContainers[*].name} {.items[0].spec.containers[*].name}{"\n"}'`,
		Contains("istio-init sleep istio-proxy"))
	p.Step(ctx, "sleep -> httpbin", CurlFrom("sleep", "sleep", "webhook", "httpbin:8000/headers"), Curl(walkthrough.SeedOK))
	p.Step(ctx, "istio-proxy -> httpbin, plain http", CurlFrom("sleep", "istio-proxy", "webhook", "httpbin:8000/headers"), Curl(walkthrough.SeedReset))
	p.Step(ctx, "istio-proxy -> httpbin, https with the sidecar's certificate",
		CurlFrom("sleep", "istio-proxy", "webhook", "https://httpbin:8000/headers", "--key /etc/certs/key.pem --cert /etc/certs/cert-chain.pem --cacert /etc/certs/root-cert.pem -k"),
		Curl(walkthrough.SeedOK))
	p.Step(ctx, "sleep in a namespace without the label", "kubectl create ns plain && kubectl apply -f samples/sleep/sleep.yaml -n plain", Succeeds)
	p.Step(ctx, "the pod in the unlabelled namespace has no sidecar",
		`kubectl wait --for=condition=Available deploy/sleep -n plain --timeout=170s >/dev/null && kubectl get pod -l app=sleep -n plain -o jsonpath='{.items[0].spec.containers[*].name}{"\n"}'`,
		Equals("sleep"))
}
