package adversarial

import (
	"path/filepath"
	"testing"
	"time"

	"github.com/meshauth/meshauth/internal/tlsprofile/tlsprofiletest"
)

// Issue #11 finding 10: one TLS profile for every listener. A network peer
// (here with a valid mesh certificate, so only the cipher decides) that
// offers only TLS 1.2 CBC-SHA1 suites is refused by the server sidecar and
// by the control plane; an ECDHE-AEAD suite and TLS 1.3 are served.

func TestTLSProfileEverywhere(t *testing.T) {
	m := startMesh(t, meshOptions{})
	targets := []struct {
		name, addr, alpn, log string
	}{
		{"httpbin's sidecar", m.Httpbin.InboundAddr, "http/1.1", "httpbin"},
		{"the control plane", m.ControlAddr, "h2", ""},
	}
	for _, tg := range targets {
		tlsprofiletest.Check(t, tg.name, tg.addr, "-alpn", tg.alpn,
			"-cert", filepath.Join(m.Sleep.CertsDir, "cert-chain.pem"), "-key", filepath.Join(m.Sleep.CertsDir, "key.pem"))
		if tg.log != "" {
			m.WaitLog(t, tg.log, 5*time.Second, `"msg":"connection refused"`, "no cipher suite supported by both client and server")
		}
	}
}
