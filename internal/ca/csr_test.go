package ca_test

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"testing"

	"github.com/meshauth/meshauth/internal/ca"
	"github.com/meshauth/meshauth/internal/identity"
)

func TestCSRWithOwnURIOrNone(t *testing.T) {
	c := newCA(t, t.TempDir(), newClock(t0), nil)
	ctx := context.Background()
	for name, csr := range map[string][]byte{
		"no URI: CA fills it in": csrFor(t, ecKey(t)),
		"exactly the caller's":   csrFor(t, ecKey(t), sleepID.String()),
		"DER, not PEM":           pemToDER(t, csrFor(t, ecKey(t))),
		"P-384 key":              csrFor(t, p384(t)),
	} {
		t.Run(name, func(t *testing.T) {
			iss, err := c.Sign(ctx, self(sleepID), csr, 0)
			if err != nil {
				t.Fatal(err)
			}
			if leaf := chainOf(t, iss)[0]; len(leaf.URIs) != 1 || leaf.URIs[0].String() != sleepID.String() {
				t.Fatalf("URIs %v", leaf.URIs)
			}
		})
	}
	rk, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		t.Fatal(err)
	}
	iss, err := c.Sign(ctx, self(sleepID), csrFor(t, rk), 0)
	if err != nil {
		t.Fatal(err)
	}
	if ku := chainOf(t, iss)[0].KeyUsage; ku != x509.KeyUsageDigitalSignature|x509.KeyUsageKeyEncipherment {
		t.Fatalf("RSA leaf key usage %v, want digitalSignature+keyEncipherment", ku)
	}
	if _, err := c.Sign(ctx, ca.Caller{}, csrFor(t, ecKey(t)), 0); !errors.Is(err, ca.ErrUnauthenticated) {
		t.Fatalf("no caller: %v", err)
	}
	foreign := identity.MustParse("spiffe://evil.example/ns/default/sa/sleep")
	if _, err := c.Sign(ctx, self(foreign), csrFor(t, ecKey(t)), 0); !errors.Is(err, ca.ErrForeignDomain) {
		t.Fatalf("caller from a foreign domain: %v", err)
	}
}

func p384(t *testing.T) *ecdsa.PrivateKey {
	k, err := ecdsa.GenerateKey(elliptic.P384(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	return k
}

func pemToDER(t testing.TB, p []byte) []byte {
	blk, _ := pem.Decode(p)
	if blk == nil {
		t.Fatal("not PEM")
	}
	return blk.Bytes
}

// FuzzSign feeds arbitrary bytes (seeded with real, abusive and truncated
// CSRs) through the whole signing path. It must never panic, and whatever it
// signs must be a workload certificate for the caller and nothing more.
func FuzzSign(f *testing.F) {
	key := ecKey(f)
	good := csrFor(f, key)
	f.Add(good)
	f.Add(pemToDER(f, good))
	f.Add(csrFor(f, key, sleepID.String()))
	f.Add(csrFor(f, key, "spiffe://cluster.local/ns/default/sa/x", "spiffe://cluster.local/ns/default/sa/y"))
	f.Add(pemToDER(f, good)[:40])
	f.Add([]byte("-----BEGIN CERTIFICATE REQUEST-----\nMIIB\n-----END CERTIFICATE REQUEST-----\n"))
	f.Add([]byte{0x30, 0x82, 0xff, 0xff})
	f.Add([]byte{})

	c, err := ca.New(ca.Config{Dir: f.TempDir(), Clock: newClock(t0).now, Log: quietLog()})
	if err != nil {
		f.Fatal(err)
	}
	f.Cleanup(func() { c.Close() })
	f.Fuzz(func(t *testing.T, data []byte) {
		iss, err := c.Sign(context.Background(), self(sleepID), data, 0)
		if err != nil {
			var e *ca.Error
			if !errors.As(err, &e) || e.Reason == "" || e.Kind == ca.KindInternal {
				t.Fatalf("refusal without a reason or internal: %v", err)
			}
			return
		}
		leaf := chainOf(t, iss)[0]
		if leaf.IsCA || len(leaf.URIs) != 1 || leaf.URIs[0].String() != sleepID.String() ||
			len(leaf.DNSNames)+len(leaf.IPAddresses)+len(leaf.EmailAddresses) != 0 {
			t.Fatalf("signed a non-workload certificate: CA=%v URIs=%v DNS=%v", leaf.IsCA, leaf.URIs, leaf.DNSNames)
		}
		// Whatever was accepted must have been a correctly self-signed CSR.
		csr, err := ca.ParseCSR(data)
		if err != nil || csr.CheckSignature() != nil {
			t.Fatalf("signed a CSR whose signature does not verify: %v", err)
		}
		if _, err := x509.ParseCertificate(iss.Leaf); err != nil {
			t.Fatal(err)
		}
	})
}
