package localmesh

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/meshauth/meshauth/internal/atomicfile"
)

// Config configures a local Mesh.
type Config struct {
	// Dir holds everything the mesh writes: control/ (the control plane's
	// state: admin.token, root-cert.pem, control.addr), config/ (YAML),
	// workloads/<name>/certs, and logs/. Required.
	Dir string
	// Meshd and Meshctl are the binaries to run; "" means Binary("meshd")
	// and Binary("meshctl").
	Meshd, Meshctl string
	// Log receives debug lines; nil discards.
	Log *slog.Logger
	// StartTimeout bounds how long a process may take to come up; 0 means
	// 20s. It only stops a broken start from hanging.
	StartTimeout time.Duration
	// ControlArgs are extra `meshd control` flags (tests: a short --tick).
	ControlArgs []string
}

// Mesh is a local mesh: one control plane and any number of workloads.
type Mesh struct {
	cfg   Config
	procs Procs
	// StateDir is the control plane's --dir; ConfigDir its --config.
	StateDir, ConfigDir string
	// ControlAddr is where the control plane listens, read from
	// StateDir/control.addr once it is up.
	ControlAddr string
	control     *Proc
}

// New prepares the directories; nothing runs until StartControl.
func New(cfg Config) (*Mesh, error) {
	if cfg.Dir == "" {
		return nil, fmt.Errorf("localmesh: Config.Dir is required")
	}
	if cfg.Log == nil {
		cfg.Log = slog.New(slog.DiscardHandler)
	}
	if cfg.StartTimeout == 0 {
		cfg.StartTimeout = 20 * time.Second
	}
	var err error
	if cfg.Meshd == "" {
		if cfg.Meshd, err = Binary("meshd"); err != nil {
			return nil, err
		}
	}
	if cfg.Meshctl == "" {
		if cfg.Meshctl, err = Binary("meshctl"); err != nil {
			return nil, err
		}
	}
	m := &Mesh{
		cfg:       cfg,
		StateDir:  filepath.Join(cfg.Dir, "control"),
		ConfigDir: filepath.Join(cfg.Dir, "config"),
		procs:     Procs{LogDir: filepath.Join(cfg.Dir, "logs"), Log: cfg.Log},
	}
	for _, d := range []string{m.StateDir, m.ConfigDir} {
		if err := os.MkdirAll(d, 0o700); err != nil {
			return nil, fmt.Errorf("localmesh: %w", err)
		}
	}
	return m, nil
}

// Meshd returns the meshd binary in use.
func (m *Mesh) Meshd() string { return m.cfg.Meshd }

// Meshctl returns the meshctl binary in use.
func (m *Mesh) Meshctl() string { return m.cfg.Meshctl }

// LogDir is where every process's log goes.
func (m *Mesh) LogDir() string { return m.procs.LogDir }

// WriteConfig writes one YAML file into the config directory, which the
// control plane watches.
func (m *Mesh) WriteConfig(name, yaml string) error {
	// Atomic so the watcher never reads half a file.
	if err := atomicfile.Write(filepath.Join(m.ConfigDir, name), []byte(yaml), 0o644); err != nil {
		return fmt.Errorf("localmesh: write config %s: %w", name, err)
	}
	return nil
}

// ControlArgs is the command line StartControl runs, for display.
func (m *Mesh) ControlArgs() []string {
	// Port 0 everywhere: a demo must not collide with a mesh the user
	// already runs (meshctl up on 15012) or with another demo.
	args := []string{m.cfg.Meshd, "control", "--dir", m.StateDir, "--listen", "127.0.0.1:0", "--metrics-listen", "", "--config", m.ConfigDir}
	return append(args, m.cfg.ControlArgs...)
}

// Control is the running control plane process (nil before StartControl).
// A test may kill it and call StartControl again on the same state.
func (m *Mesh) Control() *Proc { return m.control }

// StartControl starts `meshd control` and waits until it has written
// control.addr and accepts connections there.
func (m *Mesh) StartControl(ctx context.Context) error {
	addrFile := filepath.Join(m.StateDir, "control.addr")
	if m.control != nil { // a restart: wait for the new address, not the old one
		if err := os.Remove(addrFile); err != nil && !os.IsNotExist(err) {
			return fmt.Errorf("localmesh: %w", err)
		}
	}
	p, err := m.procs.Start("control", m.ControlArgs(), nil)
	if err != nil {
		return err
	}
	m.control = p
	ctx, cancel := context.WithTimeout(ctx, m.cfg.StartTimeout)
	defer cancel()
	err = waitFor(ctx, func() error {
		if err := p.Exited(); err != nil {
			return permanent{err}
		}
		b, err := os.ReadFile(addrFile)
		if err != nil {
			return fmt.Errorf("control plane has not written %s yet", addrFile)
		}
		addr := strings.TrimSpace(string(b))
		if err := Listening(addr); err != nil {
			return fmt.Errorf("control plane at %s: %w", addr, err)
		}
		m.ControlAddr = addr
		return nil
	})
	if err != nil {
		return fmt.Errorf("localmesh: start control plane: %w (log: %s)", err, p.LogPath)
	}
	return nil
}

// Running returns the processes that are still up, for "stopped N
// processes".
func (m *Mesh) Running() []*Proc {
	var up []*Proc
	for _, p := range m.procs.Running() {
		if p.Exited() == nil {
			up = append(up, p)
		}
	}
	return up
}

// Start runs an extra process (a sample app without a sidecar) under the
// mesh's lifecycle.
func (m *Mesh) Start(name string, argv, env []string) (*Proc, error) {
	return m.procs.Start(name, argv, env)
}

// Close stops every process the mesh started, last first.
func (m *Mesh) Close() { m.procs.StopAll() }

// permanent marks an error that no amount of waiting fixes (the process
// died), so waitFor returns it at once.
type permanent struct{ error }

func (p permanent) Unwrap() error { return p.error }

// waitFor polls f every 100ms until it returns nil, a permanent error, or
// ctx ends.
func waitFor(ctx context.Context, f func() error) error {
	t := time.NewTicker(100 * time.Millisecond)
	defer t.Stop()
	for {
		err := f()
		if err == nil {
			return nil
		}
		if p, ok := err.(permanent); ok {
			return p.error
		}
		select {
		case <-ctx.Done():
			return err
		case <-t.C:
		}
	}
}
