package agent

import (
	"context"
	"fmt"
	"log/slog"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/meshauth/meshauth/internal/identity"
)

// BundleFollow configures FollowBundle.
type BundleFollow struct {
	CA       CA
	Instance string
	// Store holds the certificate the stream is authenticated with; a new
	// one (renewal) reopens the stream with it.
	Store *Store
	Log   *slog.Logger
	// Update is called for each bundle received, with the stream's Acker.
	Update func(u BundleUpdate, ack Acker)
	// MinBackoff and MaxBackoff bound the reconnection delay (defaults
	// 500ms and 30s).
	MinBackoff, MaxBackoff time.Duration
}

// FollowBundle keeps the sidecar's bundle stream (CA.SyncBundle) open
// until ctx ends: it waits for a certificate, reconnects with backoff
// when the stream ends, and at once when the certificate changes, so the
// CA always knows the sidecar by the certificate it holds now.
func FollowBundle(ctx context.Context, f BundleFollow) {
	if f.MinBackoff <= 0 {
		f.MinBackoff = 500 * time.Millisecond
	}
	if f.MaxBackoff < f.MinBackoff {
		f.MaxBackoff = 30 * time.Second
	}
	if f.Log == nil {
		f.Log = slog.New(slog.DiscardHandler)
	}
	backoff := f.MinBackoff
	for ctx.Err() == nil {
		if f.Store.SVID() == nil {
			select {
			case <-ctx.Done():
				return
			case <-f.Store.Changed():
				continue
			}
		}
		received, renewed, err := followOnce(ctx, f)
		if ctx.Err() != nil {
			return
		}
		if renewed {
			continue // a new certificate: reconnect with it at once
		}
		if received {
			backoff = f.MinBackoff
		}
		f.Log.Warn("trust bundle stream ended; reconnecting", "error", fmt.Sprint(err), "retry_in", backoff.String())
		t := time.NewTimer(withJitter(backoff))
		select {
		case <-ctx.Done():
			t.Stop()
			return
		case <-t.C:
		}
		backoff = min(2*backoff, f.MaxBackoff)
	}
}

// followOnce runs one bundle stream, ending it when the certificate
// changes (renewed).
func followOnce(ctx context.Context, f BundleFollow) (received, renewed bool, err error) {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	svid := f.Store.SVID()
	var newCert atomic.Bool
	go func() {
		for f.Store.SVID() == svid {
			select {
			case <-ctx.Done():
				return
			case <-f.Store.Changed():
			}
		}
		newCert.Store(true)
		cancel()
	}()
	err = f.CA.SyncBundle(ctx, f.Instance, func(u BundleUpdate, ack Acker) {
		received = true
		f.Update(u, ack)
	})
	cancel()
	return received, newCert.Load(), err
}

// AckFromFiles follows the bundle stream for a sidecar whose certificate
// and roots come from files (--static-certs: a Kubernetes Secret volume
// that the kubelet refreshes), which installs nothing from the stream: it
// ACKs a bundle version once the bundle installed from the files (in
// store) holds every root of it, and again on every change of the files.
func AckFromFiles(ctx context.Context, ca CA, instance string, store *Store, log *slog.Logger) {
	var mu sync.Mutex
	type pending struct {
		version uint64
		roots   []string
		ack     Acker
	}
	var last *pending
	tryAck := func() {
		mu.Lock()
		p := last
		mu.Unlock()
		b := store.Bundle()
		if p == nil || b == nil || !covers(b, p.roots) {
			return
		}
		if err := p.ack(p.version, p.roots, ""); err != nil && log != nil {
			log.Warn("could not ACK trust bundle", "version", p.version, "error", err.Error())
		}
	}
	go func() {
		for {
			ch := store.Changed()
			select {
			case <-ctx.Done():
				return
			case <-ch:
				tryAck()
			}
		}
	}()
	FollowBundle(ctx, BundleFollow{CA: ca, Instance: instance, Store: store, Log: log,
		Update: func(u BundleUpdate, ack Acker) {
			b, err := identity.NewBundle(store.Bundle().TrustDomain, u.Version, u.Roots, nil)
			if err != nil {
				ack(u.Version, nil, err.Error())
				return
			}
			mu.Lock()
			last = &pending{version: u.Version, roots: RootFingerprints(b), ack: ack}
			mu.Unlock()
			tryAck()
		}})
}

// covers reports whether b holds every root in fps.
func covers(b *identity.Bundle, fps []string) bool {
	have := RootFingerprints(b)
	for _, f := range fps {
		if !slices.Contains(have, f) {
			return false
		}
	}
	return true
}
