package adversarial

import (
	"crypto/x509"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/meshauth/meshauth/internal/identity"
)

// Issue #11, finding 2: a stolen certificate outlives its revocation.
//
// The attacker is a workload (or anyone) that copied sleep's cert-chain.pem
// and key.pem. It renews them over mTLS as a sidecar does (`meshctl cert
// renew`), first asking for the 90-day maximum, then twice with the
// lineage's own lifetime, and calls httpbin with the newest certificate.
// The operator then revokes the serial that was stolen: the CA must have
// refused the 90 days, revoke both renewals with it (and say so), and
// httpbin's sidecar must refuse the newest one.
func TestStolenCertificateCannotOutliveRevocation(t *testing.T) {
	needTool(t, "openssl")
	m := startMesh(t, meshOptions{})
	stolen := t.TempDir()
	for _, f := range []string{"cert-chain.pem", "key.pem", "root-cert.pem"} {
		b, err := os.ReadFile(filepath.Join(m.Sleep.CertsDir, f))
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(stolen, f), b, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	orig := serialIn(t, stolen)

	// 90 days asked for with a 24h certificate: refused, naming the cap.
	_, errOut, code := m.Ctl(t, "cert", "renew", "--cert-dir", stolen, "--ttl", "2160h")
	if code == 0 || !strings.Contains(errOut, "requested TTL 2160h0m0s is over the 24h0m0s a renewal of certificate "+orig) || !strings.Contains(errOut, "(InvalidArgument)") {
		t.Fatalf("renewal asking for 90 days: exit %d, %s", code, errOut)
	}
	m.WaitLog(t, "control", 5*time.Second, "refused CSR", "reason=ttl", "requester=mtls:"+orig)
	if got := serialIn(t, stolen); got != orig {
		t.Fatalf("a refused renewal replaced the certificate (%s)", got)
	}

	// Two renewals within the lineage's 24h: the CA cannot tell the thief
	// from the sidecar, so they are signed.
	var renewed []string
	for i := 0; i < 2; i++ {
		out, errOut, code := m.Ctl(t, "cert", "renew", "--cert-dir", stolen)
		if code != 0 {
			t.Fatalf("renewal %d: exit %d: %s", i+1, code, errOut)
		}
		s := serialIn(t, stolen)
		if !strings.Contains(out, "serial "+s) || !strings.Contains(out, "not after") {
			t.Fatalf("renewal %d printed %q", i+1, out)
		}
		if l := lifetimeIn(t, stolen); l > 24*time.Hour+time.Minute {
			t.Fatalf("renewal %d lives %s, more than the lineage's 24h", i+1, l)
		}
		renewed = append(renewed, s)
	}
	req := "GET /headers HTTP/1.1\r\nHost: httpbin:8000\r\nConnection: close\r\n\r\n"
	if out := openssl(t, m.Httpbin.InboundAddr, stolen, "", req); statusOf(out) != 200 {
		t.Fatalf("positive control: the thief's renewal is not served before the revocation:\n%s", out)
	}

	// The operator revokes the serial that was stolen.
	out, errOut, code := m.Ctl(t, "ca", "revoke", "--serial", orig, "--reason", "key.pem copied")
	if code != 0 {
		t.Fatalf("meshctl ca revoke: exit %d: %s", code, errOut)
	}
	if !strings.Contains(out, "revoked 3 certificate(s): "+orig+" and 2 renewed from it") {
		t.Fatalf("meshctl ca revoke does not say it revoked the serial and its 2 renewals:\n%s", out)
	}
	parent := orig
	for _, s := range renewed {
		if !regexp.MustCompile(s + `\s+spiffe://cluster.local/ns/default/sa/sleep\s+renewed from revoked ` + parent + `: key.pem copied`).MatchString(out) {
			t.Fatalf("meshctl ca revoke does not list %s as renewed from %s:\n%s", s, parent, out)
		}
		parent = s
		m.WaitLog(t, "control", 5*time.Second, "revoked certificate", "serial="+s)
	}

	// httpbin's sidecar refuses the newest renewal once the revocation is
	// pushed (one push: poll briefly), and logs why.
	newest := renewed[len(renewed)-1]
	deadline := time.Now().Add(15 * time.Second)
	for {
		out := openssl(t, m.Httpbin.InboundAddr, stolen, "", req)
		if statusOf(out) == 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("httpbin still serves the revoked renewal %s 15s after the revocation:\n%s", newest, out)
		}
		time.Sleep(200 * time.Millisecond)
	}
	m.WaitLog(t, "httpbin", 5*time.Second, `"connection refused"`, `"reason":"revoked"`)

	// And it cannot renew itself back.
	_, errOut, code = m.Ctl(t, "cert", "renew", "--cert-dir", stolen)
	if code == 0 || !strings.Contains(errOut, "serial is revoked: serial "+newest) {
		t.Fatalf("renewal with the revoked renewal: exit %d: %s", code, errOut)
	}
	m.WaitLog(t, "control", 5*time.Second, "refused caller", "reason=caller_cert_invalid", newest)
}

func leafIn(t *testing.T, dir string) *x509.Certificate {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(dir, "cert-chain.pem"))
	if err != nil {
		t.Fatal(err)
	}
	certs, err := identity.ParseCertsPEM(b)
	if err != nil {
		t.Fatal(err)
	}
	return certs[0]
}

func serialIn(t *testing.T, dir string) string { return identity.SerialHex(leafIn(t, dir)) }

func lifetimeIn(t *testing.T, dir string) time.Duration {
	l := leafIn(t, dir)
	return l.NotAfter.Sub(l.NotBefore)
}
