package main

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"encoding/pem"
	"net/url"
	"strings"
	"testing"
	"time"

	pb "github.com/meshauth/meshauth/api/meshauth/v1"
	"github.com/meshauth/meshauth/internal/ca"
	"github.com/meshauth/meshauth/internal/client"
	"github.com/meshauth/meshauth/internal/control"
	"github.com/meshauth/meshauth/internal/control/controltest"
	"github.com/meshauth/meshauth/internal/identity"
)

// TestCheckFromLog: a client-only workload is judged by the issuance log of
// a real control plane over its Admin API: PASS on the newest unrevoked
// certificate (a revoked newer one is passed over), FAIL when every
// unexpired certificate is revoked, FAIL when there is none.
func TestCheckFromLog(t *testing.T) {
	dir := t.TempDir()
	srv := controltest.Start(t, control.Config{Dir: dir})
	conn, err := client.Dial(context.Background(), client.Options{Dir: dir, Addr: srv.Addr(), AdminToken: true})
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	admin := pb.NewAdminClient(conn)

	sleep := identity.MustParse("spiffe://cluster.local/ns/default/sa/sleep")
	sign := func() string {
		key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		u, _ := url.Parse(sleep.String())
		der, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{URIs: []*url.URL{u}}, key)
		if err != nil {
			t.Fatal(err)
		}
		iss, err := srv.CA().Sign(context.Background(), ca.Caller{ID: sleep, Method: "self", Subject: "test"},
			pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE REQUEST", Bytes: der}), time.Hour)
		if err != nil {
			t.Fatal(err)
		}
		time.Sleep(1100 * time.Millisecond) // the log orders by issue time (seconds)
		return iss.Serial
	}
	check := func() (string, string) {
		return checkFromLog(context.Background(), admin, sleep, time.Now(), 5*time.Second)
	}

	if v, d := check(); v != checkFail || !strings.Contains(d, "no unexpired certificate") {
		t.Errorf("no certificate yet: %s %s", v, d)
	}
	older, newer := sign(), sign()
	if _, _, err := srv.CA().Revoke(newer, "", "test"); err != nil {
		t.Fatal(err)
	}
	if v, d := check(); v != checkPass || !strings.Contains(d, older) {
		t.Errorf("newest unrevoked is %s: got %s %s", older, v, d)
	}
	if _, _, err := srv.CA().Revoke(older, "", "test"); err != nil {
		t.Fatal(err)
	}
	if v, d := check(); v != checkFail || !strings.Contains(d, "revoked") {
		t.Errorf("all revoked: %s %s", v, d)
	}
}
