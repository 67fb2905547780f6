package sidecar

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"os/signal"
	"syscall"
	"time"
)

// superviseApp starts the app (if any) and waits: SIGHUP reloads, SIGINT
// and SIGTERM (and ctx) stop the sidecar after forwarding the signal to the
// app, an agent that gave up stops both, and the app's exit ends the
// sidecar with the app's status.
func (s *sidecar) superviseApp(ctx context.Context, agentDone <-chan error) error {
	sigs := make(chan os.Signal, 4)
	signal.Notify(sigs, syscall.SIGINT, syscall.SIGTERM, syscall.SIGHUP)
	defer signal.Stop(sigs)
	var child *exec.Cmd
	childDone := make(chan error, 1)
	if app := s.cfg.App; len(app) > 0 {
		child = exec.Command(app[0], app[1:]...)
		child.Stdin, child.Stdout, child.Stderr = os.Stdin, os.Stdout, os.Stderr
		if err := child.Start(); err != nil {
			return fmt.Errorf("start app %q: %w", app[0], err)
		}
		go func() { childDone <- child.Wait() }()
	}
	stopChild := func(sig os.Signal) {
		if child == nil {
			return
		}
		child.Process.Signal(sig)
		select {
		case <-childDone:
		case <-time.After(10 * time.Second):
			child.Process.Kill()
		}
	}
	for {
		select {
		case sig := <-sigs:
			if sig == syscall.SIGHUP {
				s.reload()
				if s.cc != nil && s.cc.tokens.Check() {
					s.log.Info("join token file re-read on SIGHUP", "file", s.cfg.TokenFile)
				}
				continue
			}
			s.log.Info("shutting down", "signal", sig.String())
			stopChild(sig)
			return nil
		case <-ctx.Done():
			s.log.Info("shutting down", "reason", context.Cause(ctx).Error())
			stopChild(syscall.SIGTERM)
			return nil
		case err := <-agentDone:
			if err == nil {
				continue
			}
			stopChild(syscall.SIGTERM)
			return err
		case err := <-childDone:
			return err // an *exec.ExitError carries the app's status
		}
	}
}
