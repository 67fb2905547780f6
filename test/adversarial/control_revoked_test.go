package adversarial

import (
	"context"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/meshauth/meshauth/internal/identity"
	"github.com/meshauth/meshauth/internal/localmesh"
)

// Issue #11, finding 9: revoking the control plane's identity changed
// nothing (it kept serving the revoked certificate; clients did not check).
//
// A careless operator cannot hand the control plane's identity to a
// workload with a join token. When the control plane's certificate is
// revoked (its key is believed stolen), the control plane serves a new one
// from the next handshake, writes the revocation where clients reading its
// directory find it, and meshctl and sidecars keep working against it:
// meshctl (which now refuses the revoked serial, see
// internal/client TestRefusesRevokedControlPlane for a server holding it)
// reaches the re-issued certificate, a workload started afterwards joins,
// and traffic flows.
func TestRevokedControlPlaneCertificate(t *testing.T) {
	needTool(t, "openssl")
	m := startMesh(t, meshOptions{})

	_, errOut, code := m.Ctl(t, "token", "create", "-n", "meshauth-system", "-s", "meshd")
	if code == 0 || !strings.Contains(errOut, "is the control plane's own identity") || !strings.Contains(errOut, "(PermissionDenied)") {
		t.Fatalf("join token for the control plane's identity: exit %d: %s", code, errOut)
	}
	m.WaitLog(t, "control", 5*time.Second, "refused join token", "reason=reserved_identity")

	addrB, err := os.ReadFile(filepath.Join(m.StateDir, "control.addr"))
	if err != nil {
		t.Fatal(err)
	}
	addr := strings.TrimSpace(string(addrB))
	old := controlSerial(t, addr)
	out, errOut, code := m.Ctl(t, "ca", "revoke", "--serial", old, "--reason", "control plane key stolen")
	if code != 0 || !strings.Contains(out, "revoked 1 certificate(s): "+old) || !strings.Contains(out, "spiffe://cluster.local/ns/meshauth-system/sa/meshd") {
		t.Fatalf("meshctl ca revoke of the control plane's serial: exit %d: %s%s", code, out, errOut)
	}
	m.WaitLog(t, "control", 5*time.Second, "the control plane's own certificate was revoked; issuing a new one", "serial="+old)
	deadline := time.Now().Add(10 * time.Second)
	for controlSerial(t, addr) == old {
		if time.Now().After(deadline) {
			t.Fatalf("the control plane still serves its revoked certificate %s", old)
		}
		time.Sleep(100 * time.Millisecond)
	}

	// The revocation is where clients reading the directory look. The
	// control plane writes it (fsynced, internal/atomicfile) just after it
	// starts serving the new certificate, so wait for it within the deadline.
	for {
		var revs struct {
			Revocations []struct{ Serial string } `json:"revocations"`
		}
		b, err := os.ReadFile(filepath.Join(m.StateDir, "revocations.json"))
		if err != nil || json.Unmarshal(b, &revs) != nil {
			t.Fatalf("revocations.json: %v %s", err, b)
		}
		found := false
		for _, r := range revs.Revocations {
			found = found || r.Serial == old
		}
		if found {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("revocations.json does not list %s: %s", old, b)
		}
		time.Sleep(50 * time.Millisecond)
	}

	// meshctl, which checks that list, reaches the re-issued control plane.
	if out, errOut, code := m.Ctl(t, "ca", "status"); code != 0 || !strings.Contains(out, "Trust domain:") {
		t.Fatalf("meshctl ca status after the re-issue: exit %d: %s%s", code, out, errOut)
	}
	// A sidecar started now bootstraps against the new certificate and
	// joins; the mesh keeps serving.
	late, err := m.StartWorkload(context.Background(), localmesh.WorkloadSpec{Name: "late", Namespace: "default", ServiceAccount: "late"})
	if err != nil {
		t.Fatal(err)
	}
	if err := late.WaitOutbound(context.Background(), "httpbin", "default", 30*time.Second); err != nil {
		t.Fatal(err)
	}
	if got, errOut, code := curl(t, "-o", "/dev/null", "-w", "%{http_code}", "-x", late.OutboundProxy, "http://httpbin:8000/headers"); code != 0 || got != "200" {
		t.Fatalf("a workload started after the re-issue cannot reach httpbin: exit %d, status %q: %s", code, got, errOut)
	}
}

// controlSerial is the serial of the certificate the control plane
// presents, as openssl s_client sees it.
func controlSerial(t *testing.T, addr string) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	out, _ := exec.CommandContext(ctx, "openssl", "s_client", "-connect", addr, "-alpn", "h2").CombinedOutput()
	s := string(out)
	i, j := strings.Index(s, "-----BEGIN CERTIFICATE-----"), strings.Index(s, "-----END CERTIFICATE-----")
	if i < 0 || j < i {
		t.Fatalf("openssl s_client %s showed no certificate:\n%s", addr, s)
	}
	certs, err := identity.ParseCertsPEM([]byte(s[i : j+len("-----END CERTIFICATE-----")]))
	if err != nil {
		t.Fatal(err)
	}
	return identity.SerialHex(certs[0])
}
