package adversarial

import (
	"net"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// The classes of attack refused before issue #11, kept proven: a network
// peer without the mesh's trust (plaintext, no certificate, a certificate
// from another CA claiming a mesh identity) and a workload that frames a
// request two ways (request smuggling). One mesh serves them all; each
// subtest asserts the refusal and the reason httpbin's sidecar logged.
func TestClassesRefused(t *testing.T) {
	m := startMesh(t, meshOptions{})
	in := m.Httpbin.InboundAddr
	req := "GET /headers HTTP/1.1\r\nHost: httpbin:8000\r\nConnection: close\r\n\r\n"

	t.Run("positive control: sleep's certificate is served", func(t *testing.T) {
		out := openssl(t, in, m.Sleep.CertsDir, "", req)
		if statusOf(out) != 200 {
			t.Fatalf("with sleep's certificate: want 200, got:\n%s", out)
		}
		saw := parseAppSaw(t, out)
		xfcc := saw.header("X-Forwarded-Client-Cert")
		if len(xfcc) != 1 || !strings.Contains(xfcc[0], "URI=spiffe://cluster.local/ns/default/sa/sleep") {
			t.Fatalf("app saw XFCC %q, want sleep's verified identity", xfcc)
		}
	})

	t.Run("plaintext under STRICT", func(t *testing.T) {
		_, _, code := curl(t, "-o", "/dev/null", "http://"+in+"/headers")
		if code == 0 {
			t.Fatal("plaintext request to a STRICT inbound succeeded")
		}
		m.WaitLog(t, "httpbin", 5*time.Second, `"connection refused"`, `"reason":"plaintext"`)
	})

	t.Run("TLS without a client certificate", func(t *testing.T) {
		out := openssl(t, in, "", "", req)
		if statusOf(out) != 0 {
			t.Fatalf("a client without a certificate got an HTTP answer:\n%s", out)
		}
		m.WaitLog(t, "httpbin", 5*time.Second, `"connection refused"`, `"reason":"no_client_cert"`)
	})

	t.Run("a certificate from another CA claiming sleep's identity", func(t *testing.T) {
		needTool(t, "openssl")
		dir := t.TempDir()
		key, cert := filepath.Join(dir, "key.pem"), filepath.Join(dir, "cert-chain.pem")
		out, err := exec.Command("openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256",
			"-nodes", "-keyout", key, "-out", cert, "-days", "1", "-subj", "/O=attacker",
			"-addext", "subjectAltName=URI:spiffe://cluster.local/ns/default/sa/sleep").CombinedOutput()
		if err != nil {
			t.Fatalf("openssl req: %v\n%s", err, out)
		}
		// The attacker trusts its own root; -CAfile does not matter to the server.
		if err := exec.Command("cp", cert, filepath.Join(dir, "root-cert.pem")).Run(); err != nil {
			t.Fatal(err)
		}
		got := openssl(t, in, dir, "", req)
		if statusOf(got) != 0 {
			t.Fatalf("a foreign certificate got an HTTP answer:\n%s", got)
		}
		m.WaitLog(t, "httpbin", 5*time.Second, `"connection refused"`, `"reason":"untrusted_chain"`)
	})

	t.Run("request smuggling: Content-Length and Transfer-Encoding together", func(t *testing.T) {
		smuggle := "POST /post HTTP/1.1\r\nHost: httpbin:8000\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n" +
			"0\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: httpbin:8000\r\nConnection: close\r\n\r\n"
		out := openssl(t, in, m.Sleep.CertsDir, "", smuggle)
		if statusOf(out) != 400 {
			t.Fatalf("a request framed two ways: want 400, got:\n%s", out)
		}
		if strings.Contains(out, "/smuggled") {
			t.Fatalf("the smuggled request reached the app:\n%s", out)
		}
	})
}

// A workload that stole another's join token can only get the identity the
// token is bound to: the CA refuses a CSR for any other (the CA side of
// "the CA never signs an identity the caller has not proven").
func TestStolenJoinTokenCannotNameAnotherIdentity(t *testing.T) {
	m := startMesh(t, meshOptions{NoSleep: true})
	tok, errOut, code := m.Ctl(t, "token", "create", "-n", "default", "-s", "sleep")
	if code != 0 {
		t.Fatalf("meshctl token create: exit %d: %s", code, errOut)
	}
	_, out, code := m.Ctl(t, "cert", "issue", "-n", "default", "-s", "httpbin", "--token", strings.TrimSpace(tok), "--out", t.TempDir())
	if code == 0 {
		t.Fatalf("a join token bound to sleep got a certificate for httpbin:\n%s", out)
	}
	if !strings.Contains(out, "the caller proved spiffe://cluster.local/ns/default/sa/sleep") {
		t.Fatalf("the refusal does not say the token is bound to another identity:\n%s", out)
	}
	m.WaitLog(t, "control", 5*time.Second, "refused CSR", "reason=identity_mismatch")
	// The token was not spent by the refused call: its rightful identity
	// still gets its certificate with it.
	_, out, code = m.Ctl(t, "cert", "issue", "-n", "default", "-s", "sleep", "--token", strings.TrimSpace(tok), "--out", t.TempDir())
	if code != 0 {
		t.Fatalf("the token's own identity was refused after the failed theft: %s", out)
	}
}

// A network peer that opens many connections and never speaks pins no
// resources for longer than the handshake timeout, and real callers are
// served meanwhile.
func TestHandshakeFlood(t *testing.T) {
	m := startMesh(t, meshOptions{HttpbinArgs: []string{"--handshake-timeout", "1s"}})
	base := m.usage(t, m.Httpbin)
	var conns []net.Conn
	for i := 0; i < 200; i++ {
		c, err := net.Dial("tcp", m.Httpbin.InboundAddr)
		if err != nil {
			t.Fatalf("connection %d: %v", i, err)
		}
		conns = append(conns, c)
	}
	defer func() {
		for _, c := range conns {
			c.Close()
		}
	}()
	req := "GET /headers HTTP/1.1\r\nHost: httpbin:8000\r\nConnection: close\r\n\r\n"
	if out := openssl(t, m.Httpbin.InboundAddr, m.Sleep.CertsDir, "", req); statusOf(out) != 200 {
		t.Fatalf("during the flood sleep was not served:\n%s", out)
	}
	// Every silent connection is closed by the server after the timeout:
	// a read sees EOF or a reset, not our own deadline.
	for i, c := range conns {
		c.SetReadDeadline(time.Now().Add(10 * time.Second))
		if _, err := c.Read(make([]byte, 1)); err == nil {
			t.Fatalf("connection %d: the server sent bytes to a silent client", i)
		} else if ne, ok := err.(net.Error); ok && ne.Timeout() {
			t.Fatalf("connection %d still open 10s after a 1s handshake timeout", i)
		}
	}
	m.WaitLog(t, "httpbin", 5*time.Second, `"reason":"handshake_timeout"`)
	m.waitBaseline(t, m.Httpbin, base, 5, 10*time.Second)
}
