// Package tlsprofile is meshauth's one TLS profile. Every TLS listener and
// dialer in the tree — the sidecar's inbound mTLS and its outbound dialer,
// the control plane's gRPC server and its clients, meshctl, the injection
// webhook, the health port's app probes — takes its tls.Config from New, or
// passes one a library built (go-spiffe's tlsconfig) through Apply;
// test/repo's TestTLSConfigsUseProfile fails on any other construction.
//
// The profile: TLS 1.3, or TLS 1.2 with ECDHE key exchange and an AEAD
// cipher (AES-GCM, ChaCha20-Poly1305) only — no CBC, no SHA-1 MACs, no RSA
// key exchange, no TLS 1.0/1.1. Key exchange groups are X25519, P-256, and
// for TLS 1.3 the X25519+ML-KEM-768 hybrid first. crypto/tls negotiates the
// highest version both sides have, so TLS 1.3 is used whenever the peer
// supports it, and with TLS 1.2 the server's order of suites decides.
// The choice is the server's: what a client offers never widens it.
package tlsprofile

import (
	"crypto/tls"
	"fmt"
	"slices"
)

// MinVersion is the lowest protocol version the profile accepts.
const MinVersion = tls.VersionTLS12

// cipherSuites are the TLS 1.2 suites, in order of preference. TLS 1.3
// suites are not configurable in crypto/tls and are all AEAD.
var cipherSuites = []uint16{
	tls.TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256,
	tls.TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256,
	tls.TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384,
	tls.TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384,
	tls.TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256,
	tls.TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256,
}

// curves are the key exchange groups, in order of preference. The hybrid
// post-quantum group is used by TLS 1.3 only.
var curves = []tls.CurveID{tls.X25519MLKEM768, tls.X25519, tls.CurveP256}

// CipherSuites returns the TLS 1.2 cipher suites the profile allows.
func CipherSuites() []uint16 { return slices.Clone(cipherSuites) }

// Curves returns the key exchange groups the profile allows.
func Curves() []tls.CurveID { return slices.Clone(curves) }

// New returns a tls.Config with the profile and nothing else set; the
// caller adds certificates, verification and ALPN.
func New() *tls.Config { return Apply(&tls.Config{}) }

// Apply sets the profile on c (versions, TLS 1.2 suites, groups) and
// returns c. It is for configs a library built; everything else calls New.
func Apply(c *tls.Config) *tls.Config {
	c.MinVersion = MinVersion
	c.MaxVersion = 0 // the newest crypto/tls knows: TLS 1.3
	c.CipherSuites = CipherSuites()
	c.CurvePreferences = Curves()
	return c
}

// Check reports how c departs from the profile, or nil.
func Check(c *tls.Config) error {
	switch {
	case c == nil:
		return fmt.Errorf("tlsprofile: no TLS config")
	case c.MinVersion != MinVersion:
		return fmt.Errorf("tlsprofile: MinVersion %#x, want TLS 1.2 (%#x)", c.MinVersion, MinVersion)
	case c.MaxVersion != 0 && c.MaxVersion < tls.VersionTLS13:
		return fmt.Errorf("tlsprofile: MaxVersion %#x excludes TLS 1.3", c.MaxVersion)
	case !slices.Equal(c.CipherSuites, cipherSuites):
		return fmt.Errorf("tlsprofile: cipher suites %v, want %v", suiteNames(c.CipherSuites), suiteNames(cipherSuites))
	case !slices.Equal(c.CurvePreferences, curves):
		return fmt.Errorf("tlsprofile: curves %v, want %v", c.CurvePreferences, curves)
	}
	return nil
}

func suiteNames(ids []uint16) []string {
	out := make([]string, len(ids))
	for i, id := range ids {
		out[i] = tls.CipherSuiteName(id)
	}
	return out
}
