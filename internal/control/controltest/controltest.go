// Package controltest runs a real control plane (internal/control: CA,
// Admin, Discovery on a loopback port) inside a test, stopped when the test
// ends.
package controltest

import (
	"context"
	"log/slog"
	"testing"
	"time"

	"github.com/meshauth/meshauth/internal/control"
)

// Start serves cfg until the test ends and returns once it listens. Empty
// fields get a test's defaults: Dir a temporary directory, Listen
// 127.0.0.1:0, Log discarded.
func Start(t testing.TB, cfg control.Config) *control.Server {
	t.Helper()
	if cfg.Dir == "" {
		cfg.Dir = t.TempDir()
	}
	if cfg.Listen == "" {
		cfg.Listen = "127.0.0.1:0"
	}
	if cfg.Log == nil {
		cfg.Log = slog.New(slog.DiscardHandler)
	}
	srv, err := control.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- srv.Serve(ctx) }()
	t.Cleanup(func() { cancel(); <-done })
	for srv.Addr() == "" {
		select {
		case err := <-done:
			t.Fatalf("control plane: %v", err)
		case <-time.After(5 * time.Millisecond):
		}
	}
	return srv
}
