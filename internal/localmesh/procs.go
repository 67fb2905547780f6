// Package localmesh runs a mesh on one machine as plain processes, with no
// root: the control plane (`meshd control`), and workloads each made of an
// app and its sidecar (`meshd sidecar ... -- <app>`), all on loopback. It is
// what `meshctl demo` drives and what `meshctl up` documents.
//
// Every process gets its own process group and a log file under the mesh's
// directory; Close stops them all (SIGTERM, then SIGKILL after a grace
// period) in reverse start order, so nothing outlives the mesh, even when a
// step fails or the user presses Ctrl-C.
package localmesh

import (
	"fmt"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"time"
)

// Proc is one started process.
type Proc struct {
	Name    string
	Cmd     *exec.Cmd
	LogPath string
	done    chan struct{}
	err     error
	logf    *os.File
}

// Done is closed when the process has exited.
func (p *Proc) Done() <-chan struct{} { return p.done }

// Err is the process's exit error, valid after Done.
func (p *Proc) Err() error { return p.err }

// Exited reports whether the process has exited, and if so a description
// with the tail of its log, for "it died while starting" errors.
func (p *Proc) Exited() error {
	select {
	case <-p.done:
		return fmt.Errorf("%s exited (%v); last log lines:\n%s", p.Name, p.err, Tail(p.LogPath, 15))
	default:
		return nil
	}
}

// Tail returns the last n lines of a file, indented, for error messages.
func Tail(path string, n int) string {
	b, err := os.ReadFile(path)
	if err != nil {
		return "    (no log: " + err.Error() + ")"
	}
	lines := strings.Split(strings.TrimRight(string(b), "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return "    " + strings.Join(lines, "\n    ")
}

// Procs starts and stops processes as a group.
type Procs struct {
	// LogDir receives <name>.log for every process.
	LogDir string
	// Grace is how long Stop waits after SIGTERM before SIGKILL; 0 means 3s.
	Grace time.Duration
	Log   *slog.Logger

	mu    sync.Mutex
	procs []*Proc
}

// Start runs argv with env added to the current environment, its output
// going to LogDir/name.log.
func (ps *Procs) Start(name string, argv []string, env []string) (*Proc, error) {
	if err := os.MkdirAll(ps.LogDir, 0o755); err != nil {
		return nil, fmt.Errorf("localmesh: log dir: %w", err)
	}
	logPath := filepath.Join(ps.LogDir, name+".log")
	f, err := os.OpenFile(logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return nil, fmt.Errorf("localmesh: log for %s: %w", name, err)
	}
	cmd := exec.Command(argv[0], argv[1:]...)
	cmd.Env = append(os.Environ(), env...)
	cmd.Stdout, cmd.Stderr = f, f
	// Own process group: Stop signals everything the process spawned (a
	// sidecar's app), and Ctrl-C in the terminal reaches only us, so the
	// shutdown order stays ours.
	// Pdeathsig: if the mesh's owner is killed outright (SIGKILL, no
	// cleanup), its processes still stop instead of lingering.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGTERM}
	fmt.Fprintf(f, "# %s\n", strings.Join(argv, " "))
	if err := cmd.Start(); err != nil {
		f.Close()
		return nil, fmt.Errorf("localmesh: start %s (%s): %w", name, argv[0], err)
	}
	p := &Proc{Name: name, Cmd: cmd, LogPath: logPath, done: make(chan struct{}), logf: f}
	go func() {
		p.err = cmd.Wait()
		f.Close()
		close(p.done)
	}()
	if ps.Log != nil {
		ps.Log.Debug("started", "name", name, "pid", cmd.Process.Pid, "cmd", strings.Join(argv, " "))
	}
	ps.mu.Lock()
	ps.procs = append(ps.procs, p)
	ps.mu.Unlock()
	return p, nil
}

// Stop stops one process and its group: SIGTERM, then SIGKILL after Grace.
func (ps *Procs) Stop(p *Proc) {
	grace := ps.Grace
	if grace == 0 {
		grace = 3 * time.Second
	}
	pgid := p.Cmd.Process.Pid
	_ = syscall.Kill(-pgid, syscall.SIGTERM)
	select {
	case <-p.done:
	case <-time.After(grace):
		_ = syscall.Kill(-pgid, syscall.SIGKILL)
		<-p.done
	}
	// The leader is gone; make sure no child of it lingers in the group.
	_ = syscall.Kill(-pgid, syscall.SIGKILL)
	ps.mu.Lock()
	for i, q := range ps.procs {
		if q == p {
			ps.procs = append(ps.procs[:i], ps.procs[i+1:]...)
			break
		}
	}
	ps.mu.Unlock()
}

// StopAll stops every process, last started first.
func (ps *Procs) StopAll() {
	ps.mu.Lock()
	procs := append([]*Proc(nil), ps.procs...)
	ps.mu.Unlock()
	for i := len(procs) - 1; i >= 0; i-- {
		ps.Stop(procs[i])
	}
}

// Running returns the processes still registered.
func (ps *Procs) Running() []*Proc {
	ps.mu.Lock()
	defer ps.mu.Unlock()
	return append([]*Proc(nil), ps.procs...)
}

// FreePort returns a TCP port on 127.0.0.1 that was free a moment ago. A
// process given it must still handle "address in use" (another program may
// take it first); on a quiet machine that does not happen.
func FreePort() (int, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, fmt.Errorf("localmesh: find a free port: %w", err)
	}
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port, nil
}

// Binary finds a meshauth binary: next to the running executable first (so
// `bin/meshctl demo` uses `bin/meshd` from the same build), then on PATH.
// "meshd" is the plain build (`go build ./cmd/meshd`), which links no
// Kubernetes client code (cmd/meshd/deps_test.go); bin/meshd-kube (-tags
// kube) is never picked. Its `meshd sidecar` execs bin/meshd-sidecar, the
// sidecar alone, when `make build` put it beside meshd, so every local
// sidecar runs the small binary (cmd/meshd-sidecar).
func Binary(name string) (string, error) {
	if exe, err := os.Executable(); err == nil {
		p := filepath.Join(filepath.Dir(exe), name)
		if st, err := os.Stat(p); err == nil && !st.IsDir() && st.Mode()&0o111 != 0 {
			return p, nil
		}
	}
	if p, err := exec.LookPath(name); err == nil {
		return p, nil
	}
	return "", fmt.Errorf("localmesh: %s not found next to %s or on PATH; build it with `make build` (go build -o bin/ ./cmd/...)", name, os.Args[0])
}

// Listening reports whether something accepts TCP connections on addr now
// (one dial; callers that wait poll it).
func Listening(addr string) error {
	c, err := net.DialTimeout("tcp", addr, time.Second)
	if err != nil {
		return err
	}
	return c.Close()
}

// BuildTemp builds pkgs (`go build` arguments, e.g. "../../cmd/meshd" from
// a test's directory) into a new temporary directory named after prefix,
// for tests that run the real binaries. It returns the directory (the
// caller removes it, also when err is set) and the build's error with its
// output.
func BuildTemp(prefix string, pkgs ...string) (string, error) {
	dir, err := os.MkdirTemp("", prefix)
	if err != nil {
		return "", err
	}
	out, err := exec.Command("go", append([]string{"build", "-o", dir + "/"}, pkgs...)...).CombinedOutput()
	if err != nil {
		return dir, fmt.Errorf("go build: %w: %s", err, out)
	}
	return dir, nil
}
