package adversarial

import (
	"encoding/json"
	"net/http"
	"strings"
	"testing"
	"time"
)

// Issue #11, finding 11: a short certificate lifetime must not turn a
// sidecar into a load generator against the CA. The CA back-dates NotBefore
// by a minute, and the agent counted "half the lifetime" from it: with
// --cert-ttl 1m it renewed at the issuance itself, about 60 times a second
// per sidecar. A careless operator (or an attacker who can set a sidecar's
// flags) could storm the CA that way. Now the renewal time counts from the
// issuance, with +-10% jitter, and never comes sooner than 10 s after the
// last certificate.
func TestShortTTLDoesNotStormTheCA(t *testing.T) {
	m := startMesh(t, meshOptions{HttpbinArgs: []string{"--cert-ttl", "1m"}, NoSleep: true})
	const id = "spiffe://cluster.local/ns/default/sa/httpbin"
	issued := func() int {
		out, errOut, code := m.Ctl(t, "ca", "issued", "--identity", id, "-o", "json")
		if code != 0 {
			t.Fatalf("meshctl ca issued: exit %d: %s", code, errOut)
		}
		var entries []json.RawMessage
		if err := json.Unmarshal([]byte(out), &entries); err != nil {
			t.Fatalf("meshctl ca issued -o json: %v: %s", err, out)
		}
		return len(entries)
	}
	// The sidecar is up with its first certificate. Watch the CA for 8
	// seconds: renewals come 24-36 s apart, so at most one may fall in the
	// window (on a slow start-up the first renewal may); the old agent made
	// ~680 requests in that time.
	before := issued()
	time.Sleep(8 * time.Second)
	after := issued()
	t.Logf("certificates issued to httpbin: %d at start, %d after 8 s", before, after)
	if after-before > 1 {
		t.Fatalf("%d certificates issued to a --cert-ttl 1m sidecar within 8 s; want at most one (renewals 24-36 s apart)", after-before)
	}
	// The agent's own schedule says the same (admin /config_dump).
	c := http.Client{Timeout: 5 * time.Second}
	resp, err := c.Get("http://" + m.Httpbin.AdminAddr + "/config_dump")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var a struct {
		RenewAt     time.Time `json:"renew_at"`
		LastRenewal time.Time `json:"last_renewal"`
	}
	var raw map[string]json.RawMessage
	if err := json.NewDecoder(resp.Body).Decode(&raw); err != nil {
		t.Fatal(err)
	}
	agentJSON := findKey(raw, "agent")
	if agentJSON == nil {
		t.Fatalf("no agent status in /config_dump")
	}
	if err := json.Unmarshal(agentJSON, &a); err != nil {
		t.Fatal(err)
	}
	d := a.RenewAt.Sub(a.LastRenewal)
	t.Logf("agent status: last_renewal %s, renew_at %s (+%s)", a.LastRenewal.Format(time.RFC3339Nano), a.RenewAt.Format(time.RFC3339Nano), d)
	// Half of the 1m lifetime +-10%, and a second either way for NotAfter's
	// whole-second resolution.
	if d < 23*time.Second || d > 37*time.Second {
		t.Fatalf("renewal scheduled %s after the issuance, want about 30 s (24-36 s)", d)
	}
	if strings.Contains(m.Log("httpbin"), `"level":"WARN","msg":"certificate request failed`) {
		t.Errorf("httpbin's agent logged failed certificate requests")
	}
}

// findKey finds the first value stored under key at any depth of a JSON
// object (the admin dump nests the agent's status).
func findKey(m map[string]json.RawMessage, key string) json.RawMessage {
	if v, ok := m[key]; ok {
		return v
	}
	for _, v := range m {
		var sub map[string]json.RawMessage
		if json.Unmarshal(v, &sub) == nil {
			if r := findKey(sub, key); r != nil {
				return r
			}
		}
	}
	return nil
}
