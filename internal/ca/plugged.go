package ca

import (
	"crypto"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"time"

	"github.com/meshauth/meshauth/internal/identity"
	"github.com/meshauth/meshauth/internal/pki"
)

// The plugged-in CA files, named as in the seed (Istio's cacerts secret).
const (
	FileCACert    = "ca-cert.pem"
	FileCAKey     = "ca-key.pem"
	FileCertChain = "cert-chain.pem"
	FileRootCert  = "root-cert.pem"
)

// PluggedCA is an operator's CA as the four PEM files' contents, and the
// names refusals give each (a path, or a Secret's key).
type PluggedCA struct {
	Cert, Key, Chain, Root                 []byte
	CertName, KeyName, ChainName, RootName string
	// Source says where the files are, for logs and refusals.
	Source string
}

// pluggedBackend signs with an operator's CA, held in memory. It does not
// rotate: the operator replaces the files (or Secret) and restarts.
type pluggedBackend struct {
	a      *Authority
	source string
}

func (b *pluggedBackend) Authorities() ([]*Authority, error) { return []*Authority{b.a}, nil }
func (b *pluggedBackend) Mode() string                       { return "plugged-in" }
func (b *pluggedBackend) Source() string                     { return b.source }

// LoadPluggedDir reads an operator's CA from dir (ca-cert.pem, ca-key.pem,
// cert-chain.pem, root-cert.pem) and checks it with NewPluggedBackend.
func LoadPluggedDir(dir string, now time.Time) (Backend, error) {
	p := PluggedCA{Source: "plugged-in files from " + dir}
	for _, f := range []struct {
		name string
		data *[]byte
		path *string
	}{{FileCACert, &p.Cert, &p.CertName}, {FileCAKey, &p.Key, &p.KeyName}, {FileCertChain, &p.Chain, &p.ChainName}, {FileRootCert, &p.Root, &p.RootName}} {
		*f.path = filepath.Join(dir, f.name)
		b, err := os.ReadFile(*f.path)
		if err != nil {
			return nil, fmt.Errorf("ca: plugged-in CA: read %s: %w", *f.path, err)
		}
		*f.data = b
	}
	return NewPluggedBackend(p, now)
}

// NewPluggedBackend checks an operator's CA and returns a Backend that signs
// with it. Every refusal names the file and the problem, because the
// operator has to fix the file.
func NewPluggedBackend(p PluggedCA, now time.Time) (Backend, error) {
	certPEM, keyPEM, chainPEM, rootPEM := p.Cert, p.Key, p.Chain, p.Root
	certPath, keyPath, chainPath, rootPath := p.CertName, p.KeyName, p.ChainName, p.RootName
	certs, err := identity.ParseCertsPEM(certPEM)
	if err != nil {
		return nil, fmt.Errorf("ca: plugged-in CA: %s: %w", certPath, err)
	}
	cert := certs[0]
	if !cert.IsCA || !cert.BasicConstraintsValid {
		return nil, fmt.Errorf("ca: plugged-in CA: %s (%s) is not a CA certificate (basicConstraints CA:TRUE missing); use an intermediate CA certificate", certPath, cert.Subject)
	}
	if cert.KeyUsage != 0 && cert.KeyUsage&x509.KeyUsageCertSign == 0 {
		return nil, fmt.Errorf("ca: plugged-in CA: %s (%s) lacks the keyCertSign key usage, so it cannot sign certificates", certPath, cert.Subject)
	}
	if now.After(cert.NotAfter) {
		return nil, fmt.Errorf("ca: plugged-in CA: %s expired at %s", certPath, cert.NotAfter.UTC().Format(time.RFC3339))
	}
	if now.Before(cert.NotBefore) {
		return nil, fmt.Errorf("ca: plugged-in CA: %s is not valid until %s (check the clock)", certPath, cert.NotBefore.UTC().Format(time.RFC3339))
	}

	key, err := ParsePrivateKeyPEM(keyPEM)
	if err != nil {
		return nil, fmt.Errorf("ca: plugged-in CA: %s: %w", keyPath, err)
	}
	if !pki.PublicKeysEqual(key.Public(), cert.PublicKey) {
		return nil, fmt.Errorf("ca: plugged-in CA: %s does not match the public key of %s; the key and certificate must be a pair", keyPath, certPath)
	}

	roots, err := identity.ParseCertsPEM(rootPEM)
	if err != nil {
		return nil, fmt.Errorf("ca: plugged-in CA: %s: %w", rootPath, err)
	}
	// root-cert.pem may hold several roots (the operator's own rotation:
	// old and new). All go into the bundle; the chain must reach one.
	rootPool := x509.NewCertPool()
	for _, r := range roots {
		if !r.IsCA {
			return nil, fmt.Errorf("ca: plugged-in CA: %s (%s) is not a CA certificate", rootPath, r.Subject)
		}
		rootPool.AddCert(r)
	}
	chainCerts, err := identity.ParseCertsPEM(chainPEM)
	if err != nil {
		return nil, fmt.Errorf("ca: plugged-in CA: %s: %w", chainPath, err)
	}
	// cert-chain.pem conventionally holds ca-cert.pem and the intermediates
	// above it, sometimes the root too. Workload chains carry everything but
	// the root.
	isRoot := func(c *x509.Certificate) bool {
		for _, r := range roots {
			if c.Equal(r) {
				return true
			}
		}
		return false
	}
	var chain []*x509.Certificate
	chain = append(chain, cert)
	for _, c := range chainCerts {
		if c.Equal(cert) || isRoot(c) {
			continue
		}
		chain = append(chain, c)
	}
	inter := x509.NewCertPool()
	for _, c := range chain[1:] {
		inter.AddCert(c)
	}
	verified, err := cert.Verify(x509.VerifyOptions{
		Roots: rootPool, Intermediates: inter, CurrentTime: now,
		KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageAny},
	})
	if err != nil {
		return nil, fmt.Errorf("ca: plugged-in CA: %s does not chain to %s through %s: %v", certPath, rootPath, chainPath, err)
	}
	vchain := verified[0]
	root := vchain[len(vchain)-1]
	var others []*x509.Certificate
	for _, r := range roots {
		if !r.Equal(root) {
			others = append(others, r)
		}
	}

	return &pluggedBackend{source: p.Source, a: &Authority{Certificate: cert, Signer: key, Root: root, OtherRoots: others, Chain: chain}}, nil
}

// ParsePrivateKeyPEM accepts PKCS#8, SEC 1 (EC) and PKCS#1 (RSA) keys, the
// three forms openssl writes.
func ParsePrivateKeyPEM(data []byte) (crypto.Signer, error) {
	for {
		var blk *pem.Block
		blk, data = pem.Decode(data)
		if blk == nil {
			return nil, errors.New("no PEM private key block found")
		}
		var k any
		var err error
		switch blk.Type {
		case "PRIVATE KEY":
			k, err = x509.ParsePKCS8PrivateKey(blk.Bytes)
		case "EC PRIVATE KEY":
			k, err = x509.ParseECPrivateKey(blk.Bytes)
		case "RSA PRIVATE KEY":
			k, err = x509.ParsePKCS1PrivateKey(blk.Bytes)
		case "ENCRYPTED PRIVATE KEY":
			return nil, errors.New("the key is encrypted; give meshd the unencrypted key (protect the file with mode 0600)")
		default:
			continue // e.g. "EC PARAMETERS" before the key
		}
		if err != nil {
			return nil, fmt.Errorf("parse %s: %w", blk.Type, err)
		}
		s, ok := k.(crypto.Signer)
		if !ok {
			return nil, fmt.Errorf("key type %T cannot sign", k)
		}
		return s, nil
	}
}
