package ca

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"io"
	"log/slog"
	"net/url"
	"testing"
	"time"

	"github.com/meshauth/meshauth/internal/identity"
	"github.com/meshauth/meshauth/internal/pki"
)

// countingStore is a Store that passes every call to the bbolt store and
// counts the ones the test looks for.
type countingStore struct {
	Store
	recorded, revoked, closed int
}

func (s *countingStore) RecordIssuance(rec *IssuanceRecord, serial []byte, tokenHash string, now time.Time) error {
	s.recorded++
	return s.Store.RecordIssuance(rec, serial, tokenHash, now)
}

func (s *countingStore) Revoke(serial, spiffeID, reason string, now time.Time) ([]Revocation, uint64, error) {
	s.revoked++
	return s.Store.Revoke(serial, spiffeID, reason, now)
}

func (s *countingStore) Close() error { s.closed++; return s.Store.Close() }

// TestStoreSeam: with Config.Store the CA logs issuances and revocations
// through it and closes it; without a Backend it refuses (the self-signed
// roots live in the default store).
func TestStoreSeam(t *testing.T) {
	bs, err := openStore(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	st := &countingStore{Store: bs}
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	now := time.Now()
	root, err := pki.SelfSignedCA(key, pki.CA{Subject: pkix.Name{CommonName: "test root"}, NotBefore: now.Add(-time.Hour), NotAfter: now.Add(time.Hour), KeyUsage: x509.KeyUsageCertSign})
	if err != nil {
		t.Fatal(err)
	}
	quiet := slog.New(slog.NewTextHandler(io.Discard, nil))
	c, err := New(Config{Dir: t.TempDir(), Store: st, Log: quiet, Backend: &pluggedBackend{source: "test", a: &Authority{Certificate: root, Signer: key, Root: root}}})
	if err != nil {
		t.Fatal(err)
	}
	id := identity.MustParse("spiffe://cluster.local/ns/default/sa/sleep")
	wk, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	u, _ := url.Parse(id.String())
	der, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{URIs: []*url.URL{u}}, wk)
	if err != nil {
		t.Fatal(err)
	}
	iss, err := c.Sign(context.Background(), Caller{ID: id, Method: "self"}, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE REQUEST", Bytes: der}), time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	if _, _, err := c.Revoke(iss.Serial, "", "test"); err != nil {
		t.Fatal(err)
	}
	if len(c.Bundle().Revocations) != 1 {
		t.Fatalf("bundle has %d revocations", len(c.Bundle().Revocations))
	}
	c.Close()
	if st.recorded != 1 || st.revoked != 1 || st.closed != 1 {
		t.Fatalf("store calls: recorded %d, revoked %d, closed %d", st.recorded, st.revoked, st.closed)
	}

	bs2, err := openStore(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	defer bs2.Close()
	if _, err := New(Config{Dir: t.TempDir(), Store: &countingStore{Store: bs2}, Log: quiet}); err == nil {
		t.Fatal("Config.Store without Config.Backend was accepted")
	}
}
