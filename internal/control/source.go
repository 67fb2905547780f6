package control

import (
	"context"
	"crypto/sha256"
	"fmt"
	"time"

	"github.com/meshauth/meshauth/internal/config"
)

// ConfigSource feeds the config plane the objects that come from outside
// the admin API: a directory (DirSource, meshd control --config) or the
// cluster's config objects (internal/kube). The plane combines them with
// the objects applied through Admin.ApplyConfig (which win), validates the
// whole and installs it, or rejects it and keeps the last good config.
type ConfigSource interface {
	// Name names the source in logs and in GetState's configRejected.dir
	// (a directory's path).
	Name() string
	// Load returns the source's objects as they are now. New calls it
	// once: an error stops the control plane (running with no policy
	// would silently mean authPolicy NONE). A source that has nothing yet
	// returns nil, nil.
	Load() ([]any, error)
	// Watch calls update with every later change until ctx is done: the
	// new objects, or why the source's content cannot be used (the plane
	// logs it and keeps the last good config). Calls are sequential.
	Watch(ctx context.Context, update func(objs []any, err error)) error
}

// LateSource is a ConfigSource whose content arrives only through Watch
// (Kubernetes: once the informers have synced), so Load has nothing to
// say yet. Until its first content is installed the plane sends sidecars
// no snapshot: the empty config meanwhile would mean authPolicy NONE, and
// a control plane restarted (or a new replica started) would open the
// mesh until it had read the cluster's config. CSRs are served meanwhile.
type LateSource interface {
	ConfigSource
	LoadsLate() bool
}

// DirSource watches a directory of YAML files (*.yaml, *.yml, *.json);
// every change reloads the whole directory as one batch.
//
// It polls (not inotify), which works on every file system, including
// the ConfigMap volumes Kubernetes updates by symlink swap. A change is
// delivered once two polls in a row read the same content, so a file
// caught half-written (an editor's truncate-then-write, a copy in
// progress) is never applied: its complete version is. A file with no
// object is refused (config.ParseFile): an empty or truncated file must
// not silently remove what it defined (issue 11).
func DirSource(dir string, poll time.Duration) ConfigSource {
	if poll == 0 {
		poll = time.Second
	}
	return &dirSource{dir: dir, poll: poll}
}

type dirSource struct {
	dir  string
	poll time.Duration

	// sum is the content last tried (delivered or rejected); pending is a
	// new content seen once, waiting for the next poll to read it
	// unchanged before it is tried. Only the watch goroutine uses them
	// (Load runs before it starts).
	sum, pending [32]byte
	// readErr is the read error last reported; it is not reported again
	// until content has been tried in between.
	readErr string
}

func (d *dirSource) Name() string { return d.dir }

// Load reads the directory at start-up: nothing to wait for.
func (d *dirSource) Load() ([]any, error) {
	objs, _, err := d.read(false)
	return objs, err
}

func (d *dirSource) Watch(ctx context.Context, update func([]any, error)) error {
	t := time.NewTicker(d.poll)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
			if objs, changed, err := d.read(true); err != nil {
				update(nil, err)
			} else if changed {
				update(objs, nil)
			}
		}
	}
}

// read reads the directory and parses it if its content changed. With
// settle, a changed content is tried only when a second poll reads it
// unchanged; at start-up there is nothing to wait for.
func (d *dirSource) read(settle bool) ([]any, bool, error) {
	files, err := config.ReadPaths(d.dir)
	if err != nil {
		// A directory that cannot be read is not an empty one: the config
		// in force stays. Reported once per distinct error.
		if d.readErr == err.Error() {
			return nil, false, nil
		}
		d.sum, d.pending = [32]byte{}, [32]byte{}
		d.readErr = err.Error()
		return nil, false, err
	}
	h := sha256.New()
	for _, f := range files {
		fmt.Fprintf(h, "%s\x00%d\x00", f.Name, len(f.Content))
		h.Write(f.Content)
	}
	var sum [32]byte
	copy(sum[:], h.Sum(nil))
	if sum == d.sum {
		d.pending = [32]byte{} // "two polls in a row" means in a row
		return nil, false, nil
	}
	if settle && sum != d.pending {
		d.pending = sum
		return nil, false, nil
	}
	// Remember the content even if it is bad, so a bad file is logged once,
	// not on every poll; the next edit is tried again.
	d.sum = sum
	d.readErr = ""
	var objs []any
	var errs config.ErrorList
	for _, f := range files {
		// ParseFile refuses a file with no object: an empty or truncated
		// file must not silently remove what it defined (issue 11).
		o, e := config.ParseFile(f.Name, f.Content)
		objs = append(objs, o...)
		errs = append(errs, e...)
	}
	if len(errs) > 0 {
		errs.Sort()
		return nil, false, errs
	}
	return objs, true, nil
}
