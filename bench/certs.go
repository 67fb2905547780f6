package main

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"fmt"
	"math/big"
	"net/url"
	"os"
	"path/filepath"
	"time"
)

// serverName is the DNS SAN the peer proxies check on the server side of the
// pair. nginx, haproxy and stunnel can only check DNS names (not SPIFFE URI
// SANs), so the peers' certificates carry both; meshauth's own certificates
// come from our CA and carry only the SPIFFE ID.
const serverName = "server.bench.local"

// pki is a throwaway root plus one client and one server leaf, all ECDSA
// P-256, written as PEM files the peer proxies read.
type pki struct {
	dir  string
	root *x509.Certificate
	key  *ecdsa.PrivateKey
	pool *x509.CertPool

	RootFile string
	Client   leafFiles
	Server   leafFiles
}

// leafFiles names one leaf's files: separate cert and key (nginx, stunnel)
// and the concatenation haproxy wants.
type leafFiles struct {
	ID       string
	CertFile string
	KeyFile  string
	Combined string
	TLS      tls.Certificate
}

// newPKI creates the root and both leaves in dir.
func newPKI(dir string, now time.Time) (*pki, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, fmt.Errorf("generate root key: %w", err)
	}
	tmpl := &x509.Certificate{
		SerialNumber:          randSerial(),
		Subject:               pkix.Name{Organization: []string{"meshauth bench"}, CommonName: "bench root"},
		NotBefore:             now.Add(-time.Hour),
		NotAfter:              now.Add(48 * time.Hour),
		IsCA:                  true,
		BasicConstraintsValid: true,
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		return nil, fmt.Errorf("sign root: %w", err)
	}
	root, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, fmt.Errorf("parse root: %w", err)
	}
	p := &pki{dir: dir, root: root, key: key, pool: x509.NewCertPool()}
	p.pool.AddCert(root)
	p.RootFile = filepath.Join(dir, "root-cert.pem")
	if err := os.WriteFile(p.RootFile, pemBlock("CERTIFICATE", der), 0o644); err != nil {
		return nil, err
	}
	if p.Client, err = p.leaf("client", "spiffe://cluster.local/ns/bench/sa/client", "", now); err != nil {
		return nil, err
	}
	if p.Server, err = p.leaf("server", "spiffe://cluster.local/ns/bench/sa/server", serverName, now); err != nil {
		return nil, err
	}
	return p, nil
}

// leaf issues a serverAuth+clientAuth certificate for id (and dnsName when
// set) and writes <name>.crt, <name>.key and <name>.pem.
func (p *pki) leaf(name, id, dnsName string, now time.Time) (leafFiles, error) {
	u, err := url.Parse(id)
	if err != nil {
		return leafFiles{}, fmt.Errorf("parse %s: %w", id, err)
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return leafFiles{}, fmt.Errorf("generate %s key: %w", name, err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: randSerial(),
		NotBefore:    now.Add(-time.Hour),
		NotAfter:     now.Add(24 * time.Hour),
		URIs:         []*url.URL{u},
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth},
	}
	if dnsName != "" {
		tmpl.DNSNames = []string{dnsName}
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, p.root, &key.PublicKey, p.key)
	if err != nil {
		return leafFiles{}, fmt.Errorf("sign %s: %w", name, err)
	}
	keyDER, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return leafFiles{}, err
	}
	certPEM := pemBlock("CERTIFICATE", der)
	keyPEM := pemBlock("PRIVATE KEY", keyDER)
	lf := leafFiles{
		ID:       id,
		CertFile: filepath.Join(p.dir, name+".crt"),
		KeyFile:  filepath.Join(p.dir, name+".key"),
		Combined: filepath.Join(p.dir, name+".pem"),
	}
	for _, f := range []struct {
		path string
		data []byte
	}{
		{lf.CertFile, certPEM},
		{lf.KeyFile, keyPEM},
		{lf.Combined, append(append([]byte{}, certPEM...), keyPEM...)},
	} {
		if err := os.WriteFile(f.path, f.data, 0o600); err != nil {
			return leafFiles{}, err
		}
	}
	lf.TLS, err = tls.X509KeyPair(certPEM, keyPEM)
	if err != nil {
		return leafFiles{}, fmt.Errorf("load %s pair: %w", name, err)
	}
	return lf, nil
}

func pemBlock(typ string, der []byte) []byte {
	return pem.EncodeToMemory(&pem.Block{Type: typ, Bytes: der})
}

func randSerial() *big.Int {
	n, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 127))
	if err != nil {
		panic(err) // crypto/rand never fails on Linux
	}
	return n
}
