package ca_test

import (
	"slices"
	"strings"
	"testing"
	"time"
	"unicode/utf8"

	"github.com/meshauth/meshauth/internal/ca"
	"github.com/meshauth/meshauth/internal/identity"
)

// FuzzBundleAck: whatever a sidecar sends on its bundle stream (instance
// name, version, roots, install error), the CA never panics, accepts an
// ACK only for the version it sent with exactly that version's roots, and
// never lets a refused ACK count.
func FuzzBundleAck(f *testing.F) {
	f.Add("sleep-0", uint64(1), "", "", "")
	f.Add("sleep-0", uint64(2), "", "", "x509: bad")
	f.Add("a\x00b", uint64(1), strings.Repeat("ab", 32), "", "")
	f.Add(strings.Repeat("p", 300), uint64(1<<63), "zz", "yy", "")
	c, err := ca.New(ca.Config{Dir: f.TempDir(), Clock: func() time.Time { return t0 }, Log: quietLog()})
	if err != nil {
		f.Fatal(err)
	}
	defer c.Close()
	iss, err := c.Sign(f.Context(), self(sleepID), csrFor(f, ecKey(f)), 0)
	if err != nil {
		f.Fatal(err)
	}
	leaf := chainOf(f, iss)[0]
	b := c.Bundle()
	var want []string
	for _, r := range b.Roots {
		want = append(want, identity.Fingerprint(r))
	}
	f.Fuzz(func(t *testing.T, instance string, version uint64, root1, root2, installErr string) {
		st, err := c.OpenBundleStream(leaf, sleepID, instance)
		if err != nil {
			return // a bad instance name is refused before anything else
		}
		defer st.Close()
		if len(instance) > 253 || !utf8.ValidString(instance) || strings.ContainsAny(instance, "\x00\n ") {
			t.Fatalf("instance %q accepted", instance)
		}
		st.Sent(b)
		var roots []string
		for _, r := range []string{root1, root2} {
			if r != "" {
				roots = append(roots, r)
			}
		}
		err = st.Ack(version, roots, installErr)
		if err == nil && version != b.Version {
			t.Fatalf("ACK for version %d accepted; only %d was sent", version, b.Version)
		}
		if err == nil && installErr == "" && !slices.Equal(roots, want) {
			t.Fatalf("ACK naming %q accepted for a bundle of %q", roots, want)
		}
	})
}
