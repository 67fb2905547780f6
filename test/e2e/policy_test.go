package e2e

import (
	"encoding/json"
	"strings"
	"testing"
	"time"

	"github.com/meshauth/meshauth/internal/walkthrough"
)

const httpbinNoMTLSPolicy = `# mTLS off for httpbin (server side), as in the seed's authentication policy task.
apiVersion: authentication.istio.io/v1alpha1
kind: Policy
metadata:
  name: httpbin-no-mtls
  namespace: default
spec:
  targets:
  - name: httpbin
`

const httpbinNoMTLSRule = `# ...and the matching client side: plaintext to httpbin.
apiVersion: networking.istio.io/v1alpha3
kind: DestinationRule
metadata:
  name: httpbin-no-mtls
  namespace: default
spec:
  host: httpbin.default.svc.cluster.local
  trafficPolicy:
    tls:
      mode: DISABLE
`

// settle polls call until its result matches want (the new config has
// reached the sidecars) or 20s pass, and returns the last result for the
// caller to judge. Config push is asynchronous; the deadline only bounds a
// broken push and is never what a test asserts.
func settle(t *testing.T, call func(t *testing.T) result, done func(result) bool) result {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for {
		got := call(t)
		if done(got) || time.Now().After(deadline) {
			return got
		}
		time.Sleep(300 * time.Millisecond)
	}
}

// waitTLSCheck polls tls-check until httpbin's row shows status.
func (m *mesh) waitTLSCheck(t *testing.T, status string) string {
	t.Helper()
	var out string
	deadline := time.Now().Add(20 * time.Second)
	for {
		out, _ = m.meshctl("tls-check", "httpbin.default")
		if tlsCheckRow(out, "httpbin", status) {
			return out
		}
		if time.Now().After(deadline) {
			t.Fatalf("tls-check never showed httpbin %s:\n%s", status, out)
		}
		time.Sleep(300 * time.Millisecond)
	}
}

// TestPolicyDisablesMTLS is the second scenario: a Policy that turns mTLS
// off for httpbin with the matching DestinationRule lets the legacy pod in
// and tls-check says OK; a mismatched pair is a CONFLICT, and the call
// fails the way `meshctl explain` says it will.
func TestPolicyDisablesMTLS(t *testing.T) {
	s := setupSeed(t)
	m := s.m
	// Under mesh-wide mTLS the legacy pod is refused (the seed's last step).
	expect(t, s.legacyToHttpbin(t), wantReset, "legacy -> httpbin under MUTUAL_TLS")

	m.writeConfig("httpbin-policy.yaml", httpbinNoMTLSPolicy)
	m.writeConfig("httpbin-rule.yaml", httpbinNoMTLSRule)
	m.waitTLSCheck(t, "OK")
	expect(t, settle(t, s.legacyToHttpbin, matches(want200)), want200, "legacy -> httpbin with mTLS disabled for httpbin")
	expect(t, s.sleepToHttpbin(t), want200, "sleep -> httpbin with mTLS disabled for httpbin")

	// Mismatch: the server goes back to mesh-wide STRICT while clients
	// still send plaintext (Istio's classic 503, istio/istio#6279).
	m.removeConfig("httpbin-policy.yaml")
	out := m.waitTLSCheck(t, "CONFLICT")
	t.Logf("tls-check after removing the Policy:\n%s", out)

	// Once httpbin's sidecar has applied STRICT (a new plaintext call is
	// refused), meshctl check sees the same CONFLICT, fails, and says so in
	// JSON, while the certificates themselves are fine.
	expect(t, settle(t, s.legacyToHttpbin, matches(wantReset)), wantReset, "legacy -> httpbin, server STRICT again")
	checkOut, code := m.meshctl("check", "-o", "json")
	if code != 1 {
		t.Errorf("meshctl check with a CONFLICT: exit %d, want 1", code)
	}
	var results []struct{ Check, Status, Detail string }
	if err := json.Unmarshal([]byte(checkOut), &results); err != nil {
		t.Fatalf("meshctl check -o json: %v\n%s", err, checkOut)
	}
	sawConflict := false
	for _, r := range results {
		if strings.HasPrefix(r.Check, "tls-check httpbin.default") && r.Status == "FAIL" && strings.Contains(r.Detail, "CONFLICT") {
			sawConflict = true
		}
		if strings.HasPrefix(r.Check, "workload default/httpbin") && r.Status != "PASS" {
			t.Errorf("check: %s = %s %s, want PASS (the certificates are fine)", r.Check, r.Status, r.Detail)
		}
	}
	if !sawConflict {
		t.Errorf("meshctl check -o json has no FAIL for httpbin's CONFLICT:\n%s", checkOut)
	}

	explain, code := m.meshctl("explain", "--from", "default/sleep", "--to", "httpbin.default:8000")
	if code != 0 && code != 1 {
		t.Fatalf("meshctl explain: exit %d:\n%s", code, explain)
	}
	// explain must predict the failure: a CONFLICT/DENY, naming both modes.
	if !(strings.Contains(explain, "DENY") || strings.Contains(explain, "CONFLICT")) ||
		!strings.Contains(explain, "DISABLE") || !strings.Contains(explain, "STRICT") {
		t.Errorf("explain does not predict the mismatch (want DENY or CONFLICT, with DISABLE and STRICT):\n%s", explain)
	}
	// ...and the call fails as predicted.
	got := settle(t, s.sleepToHttpbin, func(r result) bool { return r.Code != "200" })
	if got.Code == "200" || got.Code == "" {
		t.Errorf("sleep -> httpbin with a Policy/DestinationRule mismatch = %s; explain predicted a failure", got)
	}
	expect(t, s.legacyToHttpbin(t), wantReset, "legacy -> httpbin, server STRICT again")
}

// TestModeFlipLetsLegacyIn proves the seed replay can fail: with the mesh
// set to authPolicy NONE the very check that expects the legacy pod to be
// refused sees it succeed. If a sidecar ever accepted plaintext under
// MUTUAL_TLS, TestSeedWalkthrough would fail the same way.
func TestModeFlipLetsLegacyIn(t *testing.T) {
	s := setupSeed(t)
	expect(t, s.legacyToHttpbin(t), wantReset, "legacy -> httpbin under MUTUAL_TLS")
	s.m.writeConfig("mesh.yaml", meshConfig("NONE"))
	got := settle(t, s.legacyToHttpbin, matches(want200))
	expect(t, got, want200, "legacy -> httpbin under authPolicy NONE")
	if wantReset.Match(walkthrough.Observation{Stdout: got.Code, Exit: got.Exit}) {
		t.Errorf("legacy -> httpbin under authPolicy NONE = %s: the seed's 'must fail' check still passes, so it cannot detect plaintext acceptance", got)
	}
}

// matches is the settle condition "the seed's expectation holds".
func matches(want walkthrough.Expect) func(result) bool {
	return func(r result) bool { return want.Match(walkthrough.Observation{Stdout: r.Code, Exit: r.Exit}) }
}
