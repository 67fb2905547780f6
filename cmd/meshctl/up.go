package main

// meshctl up: the local mesh's control plane in the foreground.

import (
	"context"
	"fmt"
	"io"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/spf13/cobra"

	"github.com/meshauth/meshauth/internal/localmesh"
)

// upFlags are meshctl up's flags.
type upFlags struct {
	config string
	listen string
}

// newUpCmd builds `meshctl up`.
func newUpCmd(g *globalFlags) *cobra.Command {
	f := &upFlags{}
	cmd := &cobra.Command{
		Use:   "up",
		Short: "Run the local mesh's control plane (CA, config, registry, push) in the foreground",
		Long: `up runs the control plane of a local mesh in the foreground: the CA, the
config (from --config DIR if given, watched for changes), the registry and the
push stream to sidecars. Its state (root, signing key, identities, admin
token) lives in --dir (default ./.meshauth), so a restart keeps the root and
every issued identity. up prints where everything is and how to add a
workload; Ctrl-C stops it cleanly.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			ctx, stop := signal.NotifyContext(cmd.Context(), os.Interrupt, syscall.SIGTERM)
			defer stop()
			return runUp(ctx, cmd.OutOrStdout(), cmd.ErrOrStderr(), g.Dir, f)
		},
	}
	cmd.Flags().StringVar(&f.config, "config", "", "directory of YAML config (mesh config, Policy, DestinationRule, Service, Workload), watched")
	cmd.Flags().StringVar(&f.listen, "listen", "127.0.0.1:15012", "control plane address")
	return cmd
}

func runUp(ctx context.Context, out, errOut io.Writer, stateDir string, f *upFlags) error {
	meshd, err := localmesh.Binary("meshd")
	if err != nil {
		return err
	}
	dir, err := filepath.Abs(stateDir)
	if err != nil {
		return fmt.Errorf("up: state directory %q: %w", stateDir, err)
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return fmt.Errorf("up: state directory: %w", err)
	}
	args := []string{"control", "--dir", dir, "--listen", f.listen}
	if f.config != "" {
		cfg, err := filepath.Abs(f.config)
		if err != nil {
			return fmt.Errorf("up: config directory %q: %w", f.config, err)
		}
		if st, err := os.Stat(cfg); err != nil || !st.IsDir() {
			return fmt.Errorf("up: --config %s is not a directory (want a directory of YAML files)", f.config)
		}
		args = append(args, "--config", cfg)
	}
	// A stale control.addr from the last run must not be mistaken for this
	// run's; the control plane writes a fresh one when it listens.
	addrFile := filepath.Join(dir, "control.addr")
	_ = os.Remove(addrFile)

	cmd := exec.Command(meshd, args...)
	cmd.Stdout, cmd.Stderr = errOut, errOut // the control plane's log
	// Own process group so Ctrl-C reaches only us and we stop it in order;
	// Pdeathsig so it does not outlive us if we are killed outright.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGTERM}
	fmt.Fprintf(out, "starting the control plane: %s %s\n", meshd, strings.Join(args, " "))
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("up: start %s: %w", meshd, err)
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()

	addr, err := waitControlAddr(ctx, addrFile, exited)
	if err != nil {
		_ = syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
		return err
	}
	printWhere(out, dir, addr)

	select {
	case err := <-exited:
		if err != nil {
			return &exitError{code: 1, err: fmt.Errorf("up: the control plane stopped: %w", err)}
		}
		return nil
	case <-ctx.Done():
	}
	fmt.Fprintln(out, "\nstopping the control plane (state kept in "+dir+")")
	_ = syscall.Kill(-cmd.Process.Pid, syscall.SIGTERM)
	select {
	case <-exited:
	case <-time.After(10 * time.Second):
		_ = syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
		<-exited
	}
	return nil
}

// waitControlAddr waits for the control plane to write control.addr and
// accept connections there. The control plane exiting first is an error with
// its status; the user can read its log above.
func waitControlAddr(ctx context.Context, addrFile string, exited <-chan error) (string, error) {
	t := time.NewTicker(100 * time.Millisecond)
	defer t.Stop()
	for {
		if b, err := os.ReadFile(addrFile); err == nil {
			addr := strings.TrimSpace(string(b))
			if localmesh.Listening(addr) == nil {
				return addr, nil
			}
		}
		select {
		case err := <-exited:
			return "", &exitError{code: 1, err: fmt.Errorf("up: the control plane exited before it was ready (%v); its log is above", err)}
		case <-ctx.Done():
			return "", fmt.Errorf("up: interrupted before the control plane was ready")
		case <-t.C:
		}
	}
}

func printWhere(out io.Writer, dir, addr string) {
	fmt.Fprintf(out, `
meshauth control plane is up.
  address        %s
  state          %s
  root cert      %s
  admin token    %s (mode 0600; meshctl reads it)
  logs           this terminal

Use it from another terminal:
  export MESHAUTH_DIR=%s
  meshctl ca status
  meshctl token create --namespace default --service-account httpbin
  meshd sidecar --control %s --token <token> ... -- <app command>   (docs/walkthrough.md)

Ctrl-C stops the control plane; a restart keeps the root and every identity.
`, addr, dir, filepath.Join(dir, "root-cert.pem"), filepath.Join(dir, "admin.token"), dir, addr)
}
