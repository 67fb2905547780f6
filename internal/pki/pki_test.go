package pki

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"crypto/x509/pkix"
	"net/url"
	"testing"
	"time"
)

func TestSelfSignedCA(t *testing.T) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	now := time.Now().Truncate(time.Second)
	c, err := SelfSignedCA(key, CA{
		Subject:   pkix.Name{Organization: []string{"example.org"}, CommonName: "test root"},
		NotBefore: now.Add(-time.Hour), NotAfter: now.Add(time.Hour),
		KeyUsage: x509.KeyUsageCertSign | x509.KeyUsageCRLSign,
		URIs:     []*url.URL{{Scheme: "spiffe", Host: "example.org"}},
	})
	if err != nil {
		t.Fatal(err)
	}
	if !c.IsCA || !c.BasicConstraintsValid || c.KeyUsage != x509.KeyUsageCertSign|x509.KeyUsageCRLSign {
		t.Errorf("IsCA %v, basic constraints %v, key usage %v", c.IsCA, c.BasicConstraintsValid, c.KeyUsage)
	}
	if c.Subject.CommonName != "test root" || !c.NotBefore.Equal(now.Add(-time.Hour)) || !c.NotAfter.Equal(now.Add(time.Hour)) {
		t.Errorf("subject %v, validity %v .. %v", c.Subject, c.NotBefore, c.NotAfter)
	}
	if len(c.URIs) != 1 || c.URIs[0].String() != "spiffe://example.org" {
		t.Errorf("URIs %v", c.URIs)
	}
	if err := c.CheckSignatureFrom(c); err != nil {
		t.Errorf("not self-signed: %v", err)
	}
	if !PublicKeysEqual(c.PublicKey, key.Public()) {
		t.Error("certificate's key is not the signer's")
	}
	if n := len(c.SerialNumber.Bytes()); n != 16 || c.SerialNumber.Sign() <= 0 {
		t.Errorf("serial %x: %d bytes, want 16 and positive", c.SerialNumber, n)
	}
}

func TestPublicKeysEqual(t *testing.T) {
	a, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	b, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	r, _ := rsa.GenerateKey(rand.Reader, 1024)
	if !PublicKeysEqual(a.Public(), &a.PublicKey) {
		t.Error("same key reported different")
	}
	if PublicKeysEqual(a.Public(), b.Public()) || PublicKeysEqual(a.Public(), r.Public()) || PublicKeysEqual(r.Public(), a.Public()) {
		t.Error("different keys reported equal")
	}
	if PublicKeysEqual(struct{}{}, a.Public()) {
		t.Error("a value without Equal reported equal")
	}
}
