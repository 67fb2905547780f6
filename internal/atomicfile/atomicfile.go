// Package atomicfile writes a file so that a reader sees either the old
// content or the new, never a part of either, and the new content survives a
// crash once Write returns: a temp file in the same directory with the
// chosen mode, write, fsync the file, rename over the target, fsync the
// directory. Every file meshauth writes for another process to read (the
// certs directory, the control plane's state files, configs) goes through it.
package atomicfile

import (
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
)

// Write replaces path with data, mode exactly mode (the umask does not
// apply). On an error before the rename the old file is left as it was and
// the temp file is removed. Errors read "write PATH: cause".
func Write(path string, data []byte, mode fs.FileMode) (err error) {
	defer func() {
		if err != nil {
			err = fmt.Errorf("write %s: %w", path, err)
		}
	}()
	dir := filepath.Dir(path)
	// A dot name: directory watchers (internal/config) skip it.
	tmp, err := os.CreateTemp(dir, "."+filepath.Base(path)+".*")
	if err != nil {
		return err
	}
	renamed := false
	defer func() {
		if !renamed {
			tmp.Close()
			os.Remove(tmp.Name())
		}
	}()
	if err := tmp.Chmod(mode); err != nil {
		return err
	}
	if _, err := tmp.Write(data); err != nil {
		return err
	}
	if err := tmp.Sync(); err != nil {
		return err
	}
	if err := tmp.Close(); err != nil {
		return err
	}
	if err := os.Rename(tmp.Name(), path); err != nil {
		return err
	}
	renamed = true
	// The rename is durable only once the directory is.
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer d.Close()
	return d.Sync()
}
