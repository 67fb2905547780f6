package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/meshauth/meshauth/internal/netns"
	"github.com/meshauth/meshauth/internal/policy"
	"github.com/meshauth/meshauth/internal/walkthrough"
)

// The seed's expectations, one per command.
var (
	want200   = walkthrough.SeedOK
	wantReset = walkthrough.SeedReset
	wantTLS   = walkthrough.SeedTLSFailed
)

const seedW = `%{http_code}\n`

func meshConfig(authPolicy string) string {
	return fmt.Sprintf(`apiVersion: meshauth.io/v1alpha1
kind: MeshConfig
metadata:
  name: mesh
spec:
  authPolicy: %s
`, authPolicy)
}

// servicesConfig is the registry a cluster would have from its Services and
// Pods: httpbin's Service with its VIP, and the legacy pod, which runs no
// sidecar (sidecar pods register themselves when they connect).
func servicesConfig(svc *netns.Service, legacy *netns.Pod) string {
	return fmt.Sprintf(`apiVersion: meshauth.io/v1alpha1
kind: Service
metadata:
  name: httpbin
  namespace: default
spec:
  address: %s
  selector:
    app: httpbin
  ports:
  - name: http
    number: 8000
    targetPort: 80
    protocol: HTTP
---
apiVersion: meshauth.io/v1alpha1
kind: Workload
metadata:
  name: %s
  namespace: legacy
  labels:
    app: sleep
spec:
  serviceAccount: sleep
  address: %s
  sidecar: false
`, svc.VIP, legacy.Name, legacy.IP)
}

// seedPods is the seed's cluster: httpbin and sleep with sidecars in
// default, and sleep without one in legacy.
type seedPods struct {
	m                      *mesh
	httpbin, sleep, legacy *netns.Pod
	svc                    *netns.Service
}

func setupSeed(t *testing.T) *seedPods {
	t.Helper()
	needPods(t)
	needPieces(t)
	c := newCluster(t)
	s := &seedPods{}
	var err error
	if s.httpbin, err = c.AddPod("httpbin", "default"); err != nil {
		t.Fatal(err)
	}
	if s.sleep, err = c.AddPod("sleep", "default"); err != nil {
		t.Fatal(err)
	}
	if s.legacy, err = c.AddPod("sleep-legacy", "legacy"); err != nil {
		t.Fatal(err)
	}
	if s.svc, err = c.AddService("httpbin", "default", []netns.Port{{Name: "http", Port: 8000, TargetPort: 80}}, s.httpbin); err != nil {
		t.Fatal(err)
	}
	// $ kubectl apply -f istio-demo-auth.yaml   (global mutual TLS)
	s.m = newMesh(t, c, map[string]string{
		"mesh.yaml":     meshConfig("MUTUAL_TLS"),
		"services.yaml": servicesConfig(s.svc, s.legacy),
	})
	// $ kubectl apply -f <(istioctl kube-inject -f samples/httpbin/httpbin.yaml)
	s.m.addSidecar(s.httpbin, "httpbin", 80)
	startApp(t, c, s.httpbin, "http://127.0.0.1:80/status/200", "httpbin", "--listen", ":80")
	// $ kubectl apply -f <(istioctl kube-inject -f samples/sleep/sleep.yaml)
	s.m.addSidecar(s.sleep, "sleep")
	startApp(t, c, s.sleep, "", "sleep")
	// $ kubectl apply -f samples/sleep/sleep.yaml -n legacy
	startApp(t, c, s.legacy, "", "sleep")
	// "Wait after the pod status changes to Running": here, until sleep's
	// sidecar has been pushed httpbin with its endpoint.
	waitRoute(t, s.sleep, "httpbin", s.httpbin.IP)
	return s
}

// waitRoute waits until the pod's sidecar (admin on 127.0.0.1:15000 in the
// pod) has a route to service name with an endpoint at ip.
func waitRoute(t *testing.T, p *netns.Pod, name, ip string) {
	t.Helper()
	waitFor(t, fmt.Sprintf("pod %s's sidecar to route to %s", p.Name, name), func() error {
		out, err := p.Command(context.Background(), "curl", "-s", "--max-time", "2", "http://127.0.0.1:15000/config_dump").Output()
		if err != nil {
			return fmt.Errorf("config_dump: %v", err)
		}
		var dump struct {
			Snapshot *policy.Snapshot `json:"snapshot"`
		}
		if err := json.Unmarshal(out, &dump); err != nil {
			return fmt.Errorf("config_dump: %v", err)
		}
		if dump.Snapshot != nil {
			for _, svc := range dump.Snapshot.Outbound {
				for _, ep := range svc.Endpoints {
					if svc.Name == name && ep.Address == ip {
						return nil
					}
				}
			}
		}
		return fmt.Errorf("no route to %s with endpoint %s yet", name, ip)
	})
}

// check runs a seed curl in a pod and compares it with the seed.
func check(t *testing.T, p *netns.Pod, uid int, want walkthrough.Expect, args ...string) result {
	t.Helper()
	got := curl(t, p, uid, args...)
	expect(t, got, want, fmt.Sprintf("pod %s (uid %d): curl %s", p.Name, uid, strings.Join(args, " ")))
	return got
}

// expect fails the test if got is not what the seed shows.
func expect(t *testing.T, got result, want walkthrough.Expect, what string) {
	t.Helper()
	if !want.Match(walkthrough.Observation{Stdout: got.Code, Exit: got.Exit}) {
		t.Errorf("%s = %s, the seed expects %s; stderr %q", what, got, want, got.Stderr)
	}
}

// Two seed calls used by several tests; they observe, the caller judges.
func (s *seedPods) sleepToHttpbin(t *testing.T) result {
	t.Helper()
	return curl(t, s.sleep, -1, seedCurl("httpbin:8000/headers", "--max-time", "10")...)
}

func (s *seedPods) legacyToHttpbin(t *testing.T) result {
	t.Helper()
	return curl(t, s.legacy, -1, seedCurl("httpbin.default:8000/headers", "--max-time", "10")...)
}

// TestSeedWalkthrough replays "Testing Mutual TLS" command for command.
func TestSeedWalkthrough(t *testing.T) {
	s := setupSeed(t)
	m := s.m
	certs := m.certs["httpbin"]
	sleepCerts := m.certs["sleep"]

	t.Run("Verifying Citadel", func(t *testing.T) {
		// $ kubectl get deploy -l istio=citadel -n istio-system
		out, code := m.meshctl("ca", "status")
		if code != 0 || !strings.Contains(strings.ToLower(out), "root") {
			t.Errorf("meshctl ca status: exit %d, output lacks the root:\n%s", code, out)
		}
	})
	t.Run("Verifying service configuration", func(t *testing.T) {
		// $ kubectl get configmap istio -o yaml -n istio-system | grep authPolicy | head -1
		out, code := m.meshctl("get", "meshconfig", "-o", "yaml")
		if code != 0 || !regexp.MustCompile(`(?m)^\s*authPolicy: MUTUAL_TLS$`).MatchString(out) {
			t.Errorf("mesh config: exit %d, want authPolicy: MUTUAL_TLS in:\n%s", code, out)
		}
		// $ kubectl get policies.authentication.istio.io -n default -o yaml
		if _, code := m.meshctl("get", "policies", "-n", "default", "-o", "yaml"); code != 0 {
			t.Errorf("meshctl get policies: exit %d", code)
		}
		// $ kubectl get destinationrules.networking.istio.io --all-namespaces -o yaml
		// (meshctl get lists every namespace unless -n is given)
		if _, code := m.meshctl("get", "destinationrules", "-o", "yaml"); code != 0 {
			t.Errorf("meshctl get destinationrules: exit %d", code)
		}
		// The quick way the seed wished for.
		out, code = m.meshctl("tls-check", "httpbin.default")
		if code != 0 || !tlsCheckRow(out, "httpbin", "OK") {
			t.Errorf("tls-check httpbin: exit %d, want an OK row:\n%s", code, out)
		}
	})
	t.Run("Verifying keys and certificates installation", func(t *testing.T) {
		// $ kubectl exec httpbin -c istio-proxy -- ls /etc/certs
		out, err := s.httpbin.CommandAs(context.Background(), ProxyUID, "ls", certs).Output()
		if err != nil {
			t.Fatalf("ls %s in pod httpbin: %v", certs, err)
		}
		if got := strings.Fields(string(out)); strings.Join(got, " ") != "cert-chain.pem key.pem root-cert.pem" {
			t.Errorf("ls %s = %v, the seed shows cert-chain.pem key.pem root-cert.pem", certs, got)
		}
		// ... -- cat /etc/certs/cert-chain.pem | openssl x509 -text -noout | grep Validity -A 2
		nb, na := validity(t, openssl(t, s.httpbin, certs+"/cert-chain.pem", "grep Validity -A 2"))
		if now := time.Now(); now.Before(nb) || !now.Before(na) {
			t.Errorf("now %s is not between Not Before %s and Not After %s", now, nb, na)
		}
		// ... | grep 'Subject Alternative Name' -A 1
		san := openssl(t, s.httpbin, certs+"/cert-chain.pem", "grep 'Subject Alternative Name' -A 1")
		if got := strings.TrimSpace(lastNonEmpty(san)); got != "URI:spiffe://cluster.local/ns/default/sa/httpbin" {
			t.Errorf("SAN = %q, want URI:spiffe://cluster.local/ns/default/sa/httpbin", got)
		}
	})
	t.Run("Testing the authentication setup", func(t *testing.T) {
		// Request from sleep app container to httpbin service should succeed.
		expect(t, s.sleepToHttpbin(t), want200, "sleep -> httpbin:8000")
		// ... and httpbin sees who called: sleep's identity in XFCC.
		body := curlBody(t, s.sleep, "httpbin:8000/headers")
		if !strings.Contains(body, "URI=spiffe://cluster.local/ns/default/sa/sleep") {
			t.Errorf("httpbin /headers lacks sleep's identity in X-Forwarded-Client-Cert:\n%s", body)
		}
		// Request from sleep proxy container: no TLS, no client certificate.
		check(t, s.sleep, ProxyUID, wantReset, seedCurl("httpbin:8000/headers", "--max-time", "10")...)
		check(t, s.sleep, ProxyUID, wantTLS, seedCurl("https://httpbin:8000/headers", "--max-time", "10")...)
		// However, request will succeed if client certificate is provided.
		check(t, s.sleep, ProxyUID, want200, seedCurl("https://httpbin:8000/headers", "--max-time", "10",
			"--key", sleepCerts+"/key.pem", "--cert", sleepCerts+"/cert-chain.pem", "--cacert", sleepCerts+"/root-cert.pem", "-k")...)
		// Request from pod without sidecar.
		expect(t, s.legacyToHttpbin(t), wantReset, "legacy -> httpbin.default:8000")
	})
}

// tlsCheckRow reports whether tls-check output has a row for host with the
// given STATUS column value.
func tlsCheckRow(out, host, status string) bool {
	for _, l := range strings.Split(out, "\n") {
		f := strings.Fields(l)
		if len(f) >= 2 && strings.HasPrefix(f[0], host) && f[1] == status {
			return true
		}
	}
	return false
}

// openssl runs the seed's `cat FILE | openssl x509 -text -noout | GREP` in
// the pod, as the proxy's uid (the file belongs to it).
func openssl(t *testing.T, p *netns.Pod, file, grep string) string {
	t.Helper()
	line := fmt.Sprintf("cat %s | openssl x509 -text -noout | %s", file, grep)
	out, err := p.CommandAs(context.Background(), ProxyUID, "sh", "-c", line).Output()
	if err != nil {
		t.Fatalf("pod %s$ %s: %v", p.Name, line, err)
	}
	t.Logf("pod %s$ %s\n%s", p.Name, line, out)
	return string(out)
}

func validity(t *testing.T, out string) (notBefore, notAfter time.Time) {
	t.Helper()
	re := regexp.MustCompile(`Not (Before|After)\s*:\s*(.+)`)
	for _, m := range re.FindAllStringSubmatch(out, -1) {
		ts, err := time.Parse("Jan _2 15:04:05 2006 MST", strings.TrimSpace(m[2]))
		if err != nil {
			t.Fatalf("openssl date %q: %v", m[2], err)
		}
		if m[1] == "Before" {
			notBefore = ts
		} else {
			notAfter = ts
		}
	}
	if notBefore.IsZero() || notAfter.IsZero() {
		t.Fatalf("no Validity lines in %q", out)
	}
	return notBefore, notAfter
}

// curlBody fetches a URL from a pod's app container and returns the body.
func curlBody(t *testing.T, p *netns.Pod, url string) string {
	t.Helper()
	out, err := p.Command(context.Background(), "curl", "-s", "--max-time", "10", url).Output()
	if err != nil {
		t.Errorf("pod %s$ curl -s %s: %v", p.Name, url, err)
	}
	t.Logf("pod %s$ curl -s %s\n%s", p.Name, url, out)
	return string(out)
}
