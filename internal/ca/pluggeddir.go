package ca

import (
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"github.com/meshauth/meshauth/internal/atomicfile"
	"github.com/meshauth/meshauth/internal/identity"
)

// The staged next CA of `meshd control --cacerts DIR` lives in the state
// dir (the control plane owns it), as the Secret cacerts-next does on
// Kubernetes; its markers play the Secret's annotations.
const (
	// NextCADir, under Config.Dir, holds the staged CA's four files.
	NextCADir = "cacerts-next"
	// markerStagedAt holds when `rotate-root --from` staged it,
	// markerActivateAt when it started signing (RFC 3339), and
	// markerRetiring says its files are being copied into the --cacerts
	// dir (a start that finds it finishes the copy).
	markerStagedAt   = "staged-at"
	markerActivateAt = "activate-at"
	markerRetiring   = "retiring"
)

var pluggedFiles = []string{FileCACert, FileCAKey, FileCertChain, FileRootCert}

// pluggedDir is the Backend of `meshd control --cacerts DIR`: the
// operator's CA in DIR, and a next one staged by `meshctl ca rotate-root
// --from NEWDIR` into the state dir's cacerts-next/. It implements Stager:
// the staged CA is in the bundle (pending), signs once the fleet ACKed its
// root (ActivateRoot), and retiring the old one copies the staged files
// into DIR (so a restart signs with the new CA) and removes cacerts-next.
type pluggedDir struct {
	dir, nextDir string
	clock        func() time.Time

	mu     sync.Mutex
	cur    *Authority
	next   *Authority // nil: none staged
	nextAt time.Time  // Pending until ActivateRoot
}

// openPluggedDir loads the operator's CA from dir and a staged one from
// stateDir/cacerts-next, finishing a retirement a crash interrupted.
func openPluggedDir(dir, stateDir string, clock func() time.Time) (*pluggedDir, error) {
	p := &pluggedDir{dir: dir, nextDir: filepath.Join(stateDir, NextCADir), clock: clock}
	if _, err := os.Stat(filepath.Join(p.nextDir, markerRetiring)); err == nil {
		if err := p.promote(); err != nil { // died while copying into dir
			return nil, err
		}
	}
	cur, err := loadPluggedAuthority(dir, clock())
	if err != nil {
		return nil, err
	}
	p.cur = cur
	if err := p.loadNext(); err != nil {
		return nil, err
	}
	return p, nil
}

func loadPluggedAuthority(dir string, now time.Time) (*Authority, error) {
	b, err := LoadPluggedDir(dir, now)
	if err != nil {
		return nil, err
	}
	a := *b.(*pluggedBackend).a
	sum := sha256.Sum256(a.Certificate.Raw)
	a.ID = binary.BigEndian.Uint64(sum[:8]) >> 1 // stable across the promotion of next to DIR
	return &a, nil
}

// loadNext takes in cacerts-next if staged: pending, or signing from its
// activate-at marker.
func (p *pluggedDir) loadNext() error {
	if _, err := os.Stat(filepath.Join(p.nextDir, markerStagedAt)); errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	next, err := loadPluggedAuthority(p.nextDir, p.clock())
	if err != nil {
		return fmt.Errorf("staged CA: %w", err)
	}
	at := Pending
	if b, err := os.ReadFile(filepath.Join(p.nextDir, markerActivateAt)); err == nil {
		if at, err = time.Parse(time.RFC3339Nano, strings.TrimSpace(string(b))); err != nil {
			return fmt.Errorf("staged CA: %s: %w", filepath.Join(p.nextDir, markerActivateAt), err)
		}
	}
	p.mu.Lock()
	p.next, p.nextAt = next, at
	p.mu.Unlock()
	return nil
}

func (p *pluggedDir) Mode() string   { return "plugged-in" }
func (p *pluggedDir) Source() string { return "plugged-in files from " + p.dir }

func (p *pluggedDir) Authorities() ([]*Authority, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	out := []*Authority{p.cur}
	if p.next != nil {
		n := *p.next
		n.ActivateAt = p.nextAt
		out = append(out, &n)
	}
	return out, nil
}

// checkFrom confines what the control plane reads for an admin caller:
// an absolute path to a directory beside the --cacerts dir (under its
// parent, symlinks resolved), not the --cacerts dir itself.
func (p *pluggedDir) checkFrom(from string) (string, error) {
	if !filepath.IsAbs(from) {
		return "", fmt.Errorf("--from %q: give the new CA's directory as an absolute path", from)
	}
	real, err := filepath.EvalSymlinks(from)
	if err != nil {
		return "", fmt.Errorf("--from: %w", err)
	}
	curAbs, err := filepath.Abs(p.dir)
	if err != nil {
		return "", fmt.Errorf("--cacerts %s: %w", p.dir, err)
	}
	curReal, err := filepath.EvalSymlinks(curAbs)
	if err != nil {
		return "", fmt.Errorf("--cacerts %s: %w", p.dir, err)
	}
	parent := filepath.Dir(curReal)
	if filepath.Dir(real) != parent || real == curReal {
		return "", fmt.Errorf("--from %s: the new CA's directory must be beside the --cacerts directory, in %s (e.g. %s-new)", from, parent, curReal)
	}
	if fi, err := os.Stat(real); err != nil || !fi.IsDir() {
		return "", fmt.Errorf("--from %s is not a directory", from)
	}
	return real, nil
}

// Stage (Stager) checks the operator's next CA in the directory from as
// the --cacerts files are checked, and copies it, marked staged, into
// cacerts-next (a temp dir renamed into place: all or nothing). Its root
// must differ from the one in force.
func (p *pluggedDir) Stage(from string) error {
	src, err := p.checkFrom(from)
	if err != nil {
		return err
	}
	now := p.clock()
	next, err := loadPluggedAuthority(src, now)
	if err != nil {
		return err
	}
	p.mu.Lock()
	cur, staged := p.cur, p.next != nil
	p.mu.Unlock()
	if staged {
		return fmt.Errorf("a CA is staged already in %s", p.nextDir)
	}
	if next.Root.Equal(cur.Root) {
		return fmt.Errorf("%s has the root in force (%s): a rotation needs a new root", filepath.Join(from, FileRootCert), identity.Fingerprint(next.Root)[:16])
	}
	tmp := p.nextDir + ".tmp"
	if err := os.RemoveAll(tmp); err != nil {
		return err
	}
	if err := os.Mkdir(tmp, 0o700); err != nil {
		return fmt.Errorf("stage the new CA: %w", err)
	}
	defer os.RemoveAll(tmp)
	if err := copyPlugged(src, tmp); err != nil {
		return err
	}
	if err := atomicfile.Write(filepath.Join(tmp, markerStagedAt), []byte(now.UTC().Format(time.RFC3339)+"\n"), 0o600); err != nil {
		return err
	}
	if err := os.Rename(tmp, p.nextDir); err != nil {
		return fmt.Errorf("stage the new CA: %w", err)
	}
	if err := syncDir(filepath.Dir(p.nextDir)); err != nil {
		return err
	}
	p.mu.Lock()
	p.next, p.nextAt = next, Pending
	p.mu.Unlock()
	return nil
}

// ActivateRoot (Stager) records in cacerts-next when it starts signing.
func (p *pluggedDir) ActivateRoot(id uint64, at time.Time) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.next == nil || p.next.ID != id {
		return fmt.Errorf("authority %d is not the staged CA in %s", id, p.nextDir)
	}
	if err := atomicfile.Write(filepath.Join(p.nextDir, markerActivateAt), []byte(at.UTC().Format(time.RFC3339Nano)+"\n"), 0o600); err != nil {
		return err
	}
	p.nextAt = at
	return nil
}

// RetireRoot (Stager) retires the CA in force once the staged one signs:
// the --cacerts dir gets the staged files (so a restart signs with the new
// CA), then cacerts-next is removed. The retiring marker, written first,
// makes a start after a crash in between finish the job. This CA keeps the
// only issuance log, so the shared rotation logic's liveness check is
// enough and force changes nothing here.
func (p *pluggedDir) RetireRoot(id uint64, _ bool) (bool, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.cur.ID != id {
		return false, fmt.Errorf("authority %d is not the CA in force from %s", id, p.dir)
	}
	if p.next == nil || !p.nextAt.Before(Pending) {
		return false, fmt.Errorf("the staged CA in %s does not sign yet: the CA in force cannot go", p.nextDir)
	}
	if err := atomicfile.Write(filepath.Join(p.nextDir, markerRetiring), []byte(p.clock().UTC().Format(time.RFC3339)+"\n"), 0o600); err != nil {
		return false, err
	}
	if err := p.promote(); err != nil {
		return false, err
	}
	n := *p.next
	n.ActivateAt = time.Time{}
	p.cur, p.next = &n, nil
	return true, nil
}

// promote copies cacerts-next's four files into the --cacerts dir and
// removes cacerts-next.
func (p *pluggedDir) promote() error {
	if err := copyPlugged(p.nextDir, p.dir); err != nil {
		return fmt.Errorf("promote the staged CA into %s: %w", p.dir, err)
	}
	if err := os.RemoveAll(p.nextDir); err != nil {
		return fmt.Errorf("remove %s: %w", p.nextDir, err)
	}
	return syncDir(filepath.Dir(p.nextDir))
}

// copyPlugged copies the four CA files from one dir to another, each
// atomically, the key with mode 0600.
func copyPlugged(from, to string) error {
	for _, f := range pluggedFiles {
		b, err := os.ReadFile(filepath.Join(from, f))
		if err != nil {
			return err
		}
		mode := fs.FileMode(0o644)
		if f == FileCAKey {
			mode = 0o600
		}
		if err := atomicfile.Write(filepath.Join(to, f), b, mode); err != nil {
			return err
		}
	}
	return nil
}

func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer d.Close()
	if err := d.Sync(); err != nil {
		return fmt.Errorf("sync %s: %w", dir, err)
	}
	return nil
}
