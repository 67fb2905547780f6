package main

import (
	"crypto/tls"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/meshauth/meshauth/internal/ca/catest"
	"github.com/meshauth/meshauth/internal/careport"
	"github.com/meshauth/meshauth/internal/identity"
)

// serveTLS runs a real TLS server on loopback that requires a client
// certificate, as a STRICT sidecar does, and presents cert.
func serveTLS(t *testing.T, cert *catest.Cert) string {
	t.Helper()
	ln, err := tls.Listen("tcp", "127.0.0.1:0", &tls.Config{
		Certificates: []tls.Certificate{cert.TLS},
		ClientAuth:   tls.RequireAnyClientCert,
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func(c net.Conn) {
				_ = c.(*tls.Conn).Handshake() // fails: check sends no certificate
				c.Close()
			}(c)
		}
	}()
	return ln.Addr().String()
}

// TestCheckWorkloadCert probes real TLS servers the way meshctl check
// probes sidecars, one per thing that can be wrong with a workload's
// certificate.
func TestCheckWorkloadCert(t *testing.T) {
	ca := catest.New(t)
	other := catest.New(t)
	httpbin := identity.MustParse("spiffe://cluster.local/ns/default/sa/httpbin")
	now := ca.Now
	good := ca.IssueID(t, httpbin)
	revoked := ca.IssueID(t, httpbin)
	tests := []struct {
		name       string
		cert       *catest.Cert
		bundle     *identity.Bundle
		wantStatus string
		wantDetail string
	}{
		{"valid", good, ca.Bundle(), checkPass, "not revoked"},
		{"wrong service account", ca.Issue(t, "spiffe://cluster.local/ns/default/sa/sleep"), ca.Bundle(), checkFail, "but the workload's service account is"},
		{"foreign root", other.IssueID(t, httpbin), ca.Bundle(), checkFail, "does not verify"},
		{"expired", ca.IssueID(t, httpbin, catest.Validity(now.Add(-48*time.Hour), now.Add(-time.Hour))), ca.Bundle(), checkFail, "expired"},
		{"revoked", revoked, ca.Bundle(revoked), checkFail, "revoked"},
		{"renewal overdue", ca.IssueID(t, httpbin, catest.Validity(now.Add(-23*time.Hour), now.Add(time.Hour))), ca.Bundle(), checkWarn, "renewal is overdue"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			addr := serveTLS(t, tt.cert)
			st, detail := checkWorkloadCert(t.Context(), addr, httpbin, tt.bundle, now, 5*time.Second)
			if st != tt.wantStatus || !strings.Contains(detail, tt.wantDetail) {
				t.Errorf("checkWorkloadCert = %s %q, want %s containing %q", st, detail, tt.wantStatus, tt.wantDetail)
			}
		})
	}
	t.Run("nothing listening", func(t *testing.T) {
		ln, _ := net.Listen("tcp", "127.0.0.1:0")
		addr := ln.Addr().String()
		ln.Close()
		if st, detail := checkWorkloadCert(t.Context(), addr, httpbin, ca.Bundle(), now, time.Second); st != checkFail {
			t.Errorf("checkWorkloadCert on a closed port = %s %q, want FAIL", st, detail)
		}
	})
}

func TestFmtLeft(t *testing.T) {
	for d, want := range map[time.Duration]string{
		72 * time.Hour:               "3d",
		23*time.Hour + 5*time.Minute: "23h05m",
		90 * time.Second:             "1m30s",
	} {
		if got := fmtLeft(d); got != want {
			t.Errorf("fmtLeft(%s) = %q, want %q", d, got, want)
		}
	}
}

func TestCheckRoot(t *testing.T) {
	now := time.Date(2026, 11, 23, 12, 0, 0, 0, time.UTC)
	root := func(nb, na time.Time) careport.RootStatus {
		return careport.RootStatus{CertStatus: careport.CertStatus{Subject: "CN=root", NotBefore: nb, NotAfter: na}, State: "signing"}
	}
	tests := []struct {
		name string
		r    careport.RootStatus
		want string
	}{
		{"ten years left", root(now.Add(-time.Hour), now.AddDate(10, 0, 0)), checkPass},
		{"31 days left", root(now.AddDate(-1, 0, 0), now.AddDate(0, 0, 31)), checkPass},
		{"29 days left", root(now.AddDate(-1, 0, 0), now.AddDate(0, 0, 29)), checkWarn},
		{"expired", root(now.AddDate(-1, 0, 0), now.Add(-time.Second)), checkFail},
		{"not yet valid", root(now.Add(time.Hour), now.AddDate(1, 0, 0)), checkFail},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got, detail := checkRoot(tt.r, now); got != tt.want {
				t.Errorf("checkRoot = %s (%s), want %s", got, detail, tt.want)
			}
		})
	}
}
