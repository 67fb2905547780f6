package tlsprofile

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"math/big"
	"net"
	"strings"
	"testing"
	"time"
)

func selfSigned(t *testing.T) tls.Certificate {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "profile-test"},
		NotBefore: time.Now().Add(-time.Minute), NotAfter: time.Now().Add(time.Hour)}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key}
}

// handshake runs a real TLS handshake over loopback between a server with
// the profile and a client with cli; it returns the client's state and the
// server's error.
func handshake(t *testing.T, cli *tls.Config) (tls.ConnectionState, error, error) {
	t.Helper()
	srv := New()
	srv.Certificates = []tls.Certificate{selfSigned(t)}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	serr := make(chan error, 1)
	go func() {
		c, err := l.Accept()
		if err != nil {
			serr <- err
			return
		}
		defer c.Close()
		c.SetDeadline(time.Now().Add(5 * time.Second))
		serr <- tls.Server(c, srv).Handshake()
	}()
	c, err := net.Dial("tcp", l.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(5 * time.Second))
	cli.InsecureSkipVerify = true
	tc := tls.Client(c, cli)
	cerr := tc.Handshake()
	return tc.ConnectionState(), cerr, <-serr
}

// TestServerRefusesWeakClients: a server with the profile refuses, in a real
// handshake, a client that offers only CBC suites, only RSA key exchange or
// only TLS 1.1, and serves TLS 1.2 AEAD and TLS 1.3 (preferred).
func TestServerRefusesWeakClients(t *testing.T) {
	for _, c := range []struct {
		name string
		cli  *tls.Config
		ok   bool
		want uint16 // negotiated version when ok
	}{
		{"tls1.2 ECDHE-ECDSA-AES128-SHA (CBC, SHA-1)", &tls.Config{MaxVersion: tls.VersionTLS12, CipherSuites: []uint16{tls.TLS_ECDHE_ECDSA_WITH_AES_128_CBC_SHA}}, false, 0},
		{"tls1.2 ECDHE-ECDSA-AES256-SHA", &tls.Config{MaxVersion: tls.VersionTLS12, CipherSuites: []uint16{tls.TLS_ECDHE_ECDSA_WITH_AES_256_CBC_SHA}}, false, 0},
		{"tls1.2 ECDHE-ECDSA-AES128-SHA256", &tls.Config{MaxVersion: tls.VersionTLS12, CipherSuites: []uint16{tls.TLS_ECDHE_ECDSA_WITH_AES_128_CBC_SHA256}}, false, 0},
		{"tls1.1", &tls.Config{MinVersion: tls.VersionTLS10, MaxVersion: tls.VersionTLS11}, false, 0},
		{"tls1.2 ECDHE-ECDSA-AES128-GCM-SHA256", &tls.Config{MaxVersion: tls.VersionTLS12, CipherSuites: []uint16{tls.TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256}}, true, tls.VersionTLS12},
		{"tls1.2 ECDHE-ECDSA-CHACHA20-POLY1305", &tls.Config{MaxVersion: tls.VersionTLS12, CipherSuites: []uint16{tls.TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256}}, true, tls.VersionTLS12},
		{"tls1.2 CBC and GCM offered: the server picks GCM", &tls.Config{MaxVersion: tls.VersionTLS12, CipherSuites: []uint16{tls.TLS_ECDHE_ECDSA_WITH_AES_128_CBC_SHA, tls.TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384}}, true, tls.VersionTLS12},
		{"default client: tls1.3", &tls.Config{}, true, tls.VersionTLS13},
	} {
		t.Run(c.name, func(t *testing.T) {
			cs, cerr, serr := handshake(t, c.cli)
			if !c.ok {
				if cerr == nil || serr == nil {
					t.Fatalf("handshake succeeded (%s, %s), want refused", tls.VersionName(cs.Version), tls.CipherSuiteName(cs.CipherSuite))
				}
				if !strings.Contains(serr.Error(), "no cipher suite supported") && !strings.Contains(serr.Error(), "unsupported versions") {
					t.Errorf("server error %q does not name the reason", serr)
				}
				return
			}
			if cerr != nil || serr != nil {
				t.Fatalf("client %v, server %v", cerr, serr)
			}
			if cs.Version != c.want {
				t.Errorf("negotiated %s, want %s", tls.VersionName(cs.Version), tls.VersionName(c.want))
			}
			if err := Check(New()); err != nil {
				t.Fatal(err)
			}
			if cs.Version == tls.VersionTLS12 && !aead(cs.CipherSuite) {
				t.Errorf("negotiated %s", tls.CipherSuiteName(cs.CipherSuite))
			}
		})
	}
}

func aead(id uint16) bool {
	n := tls.CipherSuiteName(id)
	return strings.HasPrefix(n, "TLS_ECDHE_") && (strings.Contains(n, "_GCM_") || strings.Contains(n, "CHACHA20_POLY1305"))
}

// TestClientRefusesWeakServers: a client with the profile does not accept a
// server that only has a CBC suite.
func TestClientRefusesWeakServers(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	go func() {
		c, err := l.Accept()
		if err != nil {
			return
		}
		defer c.Close()
		weak := &tls.Config{Certificates: []tls.Certificate{selfSigned(t)}, MaxVersion: tls.VersionTLS12,
			CipherSuites: []uint16{tls.TLS_ECDHE_ECDSA_WITH_AES_128_CBC_SHA}}
		tls.Server(c, weak).Handshake()
	}()
	cli := New()
	cli.InsecureSkipVerify = true
	c, err := tls.Dial("tcp", l.Addr().String(), cli)
	if err == nil {
		c.Close()
		t.Fatalf("profile client accepted a CBC-only TLS 1.2 server (%s)", tls.CipherSuiteName(c.ConnectionState().CipherSuite))
	}
}

// TestProfile: the suites are ECDHE with AEAD only, and Apply/Check agree.
func TestProfile(t *testing.T) {
	for _, id := range CipherSuites() {
		if !aead(id) {
			t.Errorf("suite %s is not ECDHE-AEAD", tls.CipherSuiteName(id))
		}
		for _, in := range tls.InsecureCipherSuites() {
			if in.ID == id {
				t.Errorf("suite %s is in crypto/tls's insecure list", in.Name)
			}
		}
	}
	if err := Check(Apply(&tls.Config{MinVersion: tls.VersionTLS10, CipherSuites: []uint16{tls.TLS_RSA_WITH_AES_128_CBC_SHA}})); err != nil {
		t.Errorf("Apply: %v", err)
	}
	for name, c := range map[string]*tls.Config{
		"zero":    {},
		"min 1.0": func() *tls.Config { c := New(); c.MinVersion = tls.VersionTLS10; return c }(),
		"max 1.2": func() *tls.Config { c := New(); c.MaxVersion = tls.VersionTLS12; return c }(),
		"CBC added": func() *tls.Config {
			c := New()
			c.CipherSuites = append(c.CipherSuites, tls.TLS_ECDHE_ECDSA_WITH_AES_128_CBC_SHA)
			return c
		}(),
		"nil": nil,
	} {
		if Check(c) == nil {
			t.Errorf("Check(%s) passed", name)
		}
	}
}
