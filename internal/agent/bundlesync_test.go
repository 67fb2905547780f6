package agent

import (
	"context"
	"fmt"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/meshauth/meshauth/internal/ca/catest"
	"github.com/meshauth/meshauth/internal/identity"
)

// scriptedCA is an agent.CA whose bundle stream sends the bundles a test
// gives it and records the ACKs (a fake: the real stream is covered end
// to end in test/e2e TestRootRotationEndToEnd and test/adversarial
// TestForgedBundleACKs).
type scriptedCA struct {
	CA
	bundles chan BundleUpdate
	mu      sync.Mutex
	acks    []string
}

func (s *scriptedCA) SyncBundle(ctx context.Context, instance string, update func(BundleUpdate, Acker)) error {
	ack := func(version uint64, roots []string, installErr string) error {
		s.mu.Lock()
		defer s.mu.Unlock()
		s.acks = append(s.acks, fmt.Sprintf("%s v%d %s", instance, version, installErr))
		return nil
	}
	for {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case u := <-s.bundles:
			update(u, ack)
		}
	}
}

func (s *scriptedCA) got() []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]string(nil), s.acks...)
}

// TestAckFromFiles: a sidecar whose roots come from files (Kubernetes
// Secret mode) ACKs a bundle version of the CA only once the bundle it
// installed from its files holds every root of that version: the kubelet
// refreshes the Secret volume some time after the CA changed the bundle.
func TestAckFromFiles(t *testing.T) {
	old, next := catest.New(t), catest.New(t)
	store := NewStore(StoreConfig{})
	oldBundle, err := identity.NewBundle("cluster.local", 0, []string{string(old.RootPEM())}, nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := store.Set(svidOf(t, old.Issue(t, sleepID)), oldBundle); err != nil {
		t.Fatal(err)
	}
	ca := &scriptedCA{bundles: make(chan BundleUpdate)}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go AckFromFiles(ctx, ca, "sleep-0", store, nil)
	waitAcks := func(want ...string) {
		t.Helper()
		deadline := time.Now().Add(5 * time.Second)
		for {
			got := ca.got()
			if len(got) >= len(want) && slices.Equal(got[len(got)-len(want):], want) {
				return
			}
			if time.Now().After(deadline) {
				t.Fatalf("ACKs %q, want them to end with %q", got, want)
			}
			time.Sleep(10 * time.Millisecond)
		}
	}
	ca.bundles <- BundleUpdate{Version: 1, Roots: []string{string(old.RootPEM())}}
	waitAcks("sleep-0 v1 ")
	// The CA adds the new root: the files do not have it yet, so no ACK.
	ca.bundles <- BundleUpdate{Version: 2, Roots: []string{string(old.RootPEM()), string(next.RootPEM())}}
	time.Sleep(100 * time.Millisecond)
	if got := ca.got(); len(got) != 1 {
		t.Fatalf("ACKed before the files held the new root: %q", got)
	}
	// The kubelet refreshes the volume: both roots in root-cert.pem.
	both, err := identity.NewBundle("cluster.local", 0, []string{string(old.RootPEM()) + string(next.RootPEM())}, nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := store.SetBundle(both); err != nil {
		t.Fatal(err)
	}
	waitAcks("sleep-0 v2 ")
}
