package sidecar

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/meshauth/meshauth/internal/agent"
	"github.com/meshauth/meshauth/internal/identity"
	"github.com/meshauth/meshauth/internal/proxy"
)

// reload re-reads the snapshot file and, with StaticCerts, the certs (on
// SIGHUP). A bad file keeps the last good state.
func (s *sidecar) reload() {
	c, log, m := s.cfg, s.log, s.metrics
	if c.Snapshot != "" {
		snap, err := proxy.LoadSnapshotFile(c.Snapshot)
		if err == nil {
			if snap.Workload.Name == "" {
				snap.Workload = s.cfgStore.Current().Workload
			}
			err = s.cfgStore.Set(snap)
		}
		if err != nil {
			m.ConfigUpdates.WithLabelValues("refused").Inc()
			log.Error("snapshot reload refused; keeping the last good one", "file", c.Snapshot, "error", err.Error())
		} else {
			m.ConfigUpdates.WithLabelValues("applied").Inc()
			log.Info("snapshot reloaded", "file", c.Snapshot, "version", snap.Version)
		}
	}
	if c.StaticCerts {
		if err := loadStaticCerts(s.store, c.CertsDir, s.store.Bundle().TrustDomain); err != nil {
			log.Error("certificate reload refused; keeping the current one", "dir", c.CertsDir, "error", err.Error())
		}
	}
}

// watchStaticCerts re-reads the certs directory when its files change (a
// Kubernetes Secret volume swaps them atomically). A bad set is refused by
// the store and the current certificate stays.
func watchStaticCerts(ctx context.Context, log *slog.Logger, dir string, store *agent.Store) {
	stamp := func() string {
		var sb strings.Builder
		for _, n := range []string{agent.ChainFile, agent.KeyFile, agent.RootFile} {
			if fi, err := os.Stat(filepath.Join(dir, n)); err == nil {
				fmt.Fprintf(&sb, "%d/%d;", fi.ModTime().UnixNano(), fi.Size())
			}
		}
		return sb.String()
	}
	last := stamp()
	t := time.NewTicker(5 * time.Second)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		if s := stamp(); s != last {
			last = s
			td := identity.DefaultTrustDomain
			if b := store.Bundle(); b != nil {
				td = b.TrustDomain
			}
			if err := loadStaticCerts(store, dir, td); err != nil {
				log.Error("certificate files changed but were refused; keeping the current certificate", "dir", dir, "error", err.Error())
				continue
			}
			log.Info("certificate files reloaded", "dir", dir, "serial", store.SVID().Serial())
		}
	}
}

func loadStaticCerts(store *agent.Store, dir, td string) error {
	s, b, err := agent.ReadFiles(dir, td)
	if err != nil {
		return fmt.Errorf("--static-certs: %w", err)
	}
	return store.Set(s, b)
}
