package agent

import (
	"bytes"
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/workloadapi"

	"github.com/meshauth/meshauth/internal/ca/catest"
	"github.com/meshauth/meshauth/internal/identity"
)

const sleepID = "spiffe://cluster.local/ns/default/sa/sleep"

func svidOf(t testing.TB, c *catest.Cert) *SVID {
	t.Helper()
	s, err := NewSVID(c.ChainPEM, c.KeyPEM)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// TestStoreRefusesBadCertificates: a bad new certificate is refused, counted
// and the old one kept.
func TestStoreRefusesBadCertificates(t *testing.T) {
	ca := catest.New(t)
	foreign := catest.New(t)
	now := time.Now()
	var refusals []string
	st := NewStore(StoreConfig{
		Want:      identity.MustParse(sleepID),
		OnRefused: func(what, reason string) { refusals = append(refusals, what+":"+reason) },
	})
	good := svidOf(t, ca.Issue(t, sleepID))
	if err := st.Set(good, ca.Bundle()); err != nil {
		t.Fatal(err)
	}
	cases := []struct {
		name   string
		cert   *catest.Cert
		reason string
	}{
		{"foreign root", foreign.Issue(t, sleepID), "untrusted_chain"},
		{"expired", ca.Issue(t, sleepID, catest.Validity(now.Add(-2*time.Hour), now.Add(-time.Hour))), "expired"},
		{"other identity", ca.Issue(t, "spiffe://cluster.local/ns/default/sa/httpbin"), "invalid"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			refusals = nil
			err := st.SetSVID(svidOf(t, tc.cert))
			if !errors.Is(err, ErrRefused) {
				t.Fatalf("SetSVID = %v, want ErrRefused", err)
			}
			if st.SVID() != good {
				t.Fatal("store dropped the good certificate")
			}
			if len(refusals) != 1 || refusals[0] != "svid:"+tc.reason {
				t.Errorf("refusals = %v, want [svid:%s]", refusals, tc.reason)
			}
		})
	}
	// A bundle that does not trust the current certificate is refused too.
	if err := st.SetBundle(foreign.BundleWith(2, nil)); !errors.Is(err, ErrRefused) {
		t.Errorf("SetBundle(foreign) = %v, want ErrRefused", err)
	}
	// An older bundle version is refused.
	if err := st.SetBundle(ca.BundleWith(5, nil)); err != nil {
		t.Fatal(err)
	}
	if err := st.SetBundle(ca.BundleWith(4, nil)); !errors.Is(err, ErrRefused) {
		t.Errorf("SetBundle(older) = %v, want ErrRefused", err)
	}
}

func TestWriteFiles(t *testing.T) {
	ca := catest.New(t)
	dir := t.TempDir()
	s := svidOf(t, ca.Issue(t, sleepID))
	if err := WriteFiles(dir, s, ca.Bundle()); err != nil {
		t.Fatal(err)
	}
	for name, mode := range map[string]os.FileMode{ChainFile: 0o644, KeyFile: 0o600, RootFile: 0o644} {
		fi, err := os.Stat(filepath.Join(dir, name))
		if err != nil {
			t.Fatal(err)
		}
		if fi.Mode().Perm() != mode {
			t.Errorf("%s mode %v, want %v", name, fi.Mode().Perm(), mode)
		}
	}
	back, bundle, err := ReadFiles(dir, ca.TrustDomain)
	if err != nil {
		t.Fatal(err)
	}
	if back.Serial() != s.Serial() {
		t.Errorf("round trip serial %s, want %s", back.Serial(), s.Serial())
	}
	if got, want := bundle.RootsPEM(), ca.Bundle().RootsPEM(); !bytes.Equal(got, want) {
		t.Errorf("round trip roots differ:\n%s\nwant\n%s", got, want)
	}
	entries, _ := os.ReadDir(dir)
	if len(entries) != 3 {
		t.Errorf("dir has %d entries (temp files left?): %v", len(entries), entries)
	}

	// A key that is not the chain's is refused; a missing file is named.
	other := svidOf(t, ca.Issue(t, sleepID))
	if err := os.WriteFile(filepath.Join(dir, KeyFile), other.KeyPEM, 0o600); err != nil {
		t.Fatal(err)
	}
	if _, _, err := ReadFiles(dir, ca.TrustDomain); err == nil || !strings.Contains(err.Error(), "does not match") {
		t.Errorf("ReadFiles with a foreign key = %v, want a key mismatch", err)
	}
	os.Remove(filepath.Join(dir, RootFile))
	if _, _, err := ReadFiles(dir, ca.TrustDomain); !errors.Is(err, os.ErrNotExist) || !strings.Contains(err.Error(), RootFile) {
		t.Errorf("ReadFiles without %s = %v, want not-exist naming it", RootFile, err)
	}
}

// TestWorkloadAPIGoSpiffeClient: an unmodified go-spiffe X509Source gets the
// SVID from our socket and sees every rotation.
func TestWorkloadAPIGoSpiffeClient(t *testing.T) {
	ca := catest.New(t)
	st := NewStore(StoreConfig{})
	if err := st.Set(svidOf(t, ca.Issue(t, sleepID)), ca.Bundle()); err != nil {
		t.Fatal(err)
	}
	sock := filepath.Join(t.TempDir(), "agent.sock")
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	api := NewWorkloadAPI(st, nil)
	done := make(chan error, 1)
	go func() { done <- api.Serve(ctx, sock) }()
	waitSocket(t, sock)

	sctx, scancel := context.WithTimeout(ctx, 10*time.Second)
	defer scancel()
	src, err := workloadapi.NewX509Source(sctx, workloadapi.WithClientOptions(workloadapi.WithAddr("unix://"+sock)))
	if err != nil {
		t.Fatal(err)
	}
	defer src.Close()
	check := func(want *SVID) {
		t.Helper()
		deadline := time.Now().Add(10 * time.Second)
		for {
			got, err := src.GetX509SVID()
			if err == nil && got.Certificates[0].SerialNumber.Cmp(want.Leaf().SerialNumber) == 0 {
				if got.ID.String() != sleepID {
					t.Fatalf("SVID ID %s, want %s", got.ID, sleepID)
				}
				return
			}
			if time.Now().After(deadline) {
				t.Fatalf("X509Source never saw serial %s (err %v)", want.Serial(), err)
			}
			select {
			case <-src.Updated():
			case <-time.After(100 * time.Millisecond):
			}
		}
	}
	check(st.SVID())
	b, err := src.GetX509BundleForTrustDomain(spiffeid.RequireTrustDomainFromString("cluster.local"))
	if err != nil || !b.HasX509Authority(ca.Root) {
		t.Fatalf("bundle from the Workload API lacks the root (err %v)", err)
	}
	for i := 0; i < 5; i++ {
		next := svidOf(t, ca.Issue(t, sleepID))
		if err := st.SetSVID(next); err != nil {
			t.Fatal(err)
		}
		check(next)
	}
	cancel()
	if err := <-done; err != nil {
		t.Errorf("Serve: %v", err)
	}
}

func waitSocket(t *testing.T, path string) {
	t.Helper()
	for i := 0; i < 500; i++ {
		if _, err := os.Stat(path); err == nil {
			return
		}
		time.Sleep(10 * time.Millisecond)
	}
	t.Fatalf("socket %s never appeared", path)
}
