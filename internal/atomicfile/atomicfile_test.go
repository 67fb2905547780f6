package atomicfile

import (
	"bytes"
	"errors"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
)

func entries(t *testing.T, dir string) []string {
	t.Helper()
	es, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, e := range es {
		names = append(names, e.Name())
	}
	return names
}

func TestWriteReplacesWithMode(t *testing.T) {
	// A restrictive umask must not change the mode asked for.
	old := syscall.Umask(0o077)
	defer syscall.Umask(old)
	dir := t.TempDir()
	p := filepath.Join(dir, "root-cert.pem")
	for _, c := range []struct {
		data string
		mode os.FileMode
	}{{"first\n", 0o644}, {"second, longer\n", 0o600}, {"3\n", 0o640}} {
		if err := Write(p, []byte(c.data), c.mode); err != nil {
			t.Fatal(err)
		}
		got, err := os.ReadFile(p)
		if err != nil {
			t.Fatal(err)
		}
		if string(got) != c.data {
			t.Fatalf("content %q, want %q", got, c.data)
		}
		fi, err := os.Stat(p)
		if err != nil {
			t.Fatal(err)
		}
		if fi.Mode().Perm() != c.mode {
			t.Fatalf("mode %v, want %v", fi.Mode().Perm(), c.mode)
		}
		if names := entries(t, dir); len(names) != 1 {
			t.Fatalf("directory holds %v, want only root-cert.pem (a temp file left behind)", names)
		}
	}
}

// TestFailedWriteKeepsOldFile makes the write itself fail half way (the
// process's file-size limit is below the data's size) and checks that the
// old file is whole and no temp file is left.
func TestFailedWriteKeepsOldFile(t *testing.T) {
	dir := t.TempDir()
	p := filepath.Join(dir, "revocations.json")
	oldData := []byte(`{"serials":["01"]}` + "\n")
	if err := Write(p, oldData, 0o644); err != nil {
		t.Fatal(err)
	}

	signal.Ignore(syscall.SIGXFSZ) // the write returns EFBIG instead of killing the test
	defer signal.Reset(syscall.SIGXFSZ)
	var lim syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_FSIZE, &lim); err != nil {
		t.Fatal(err)
	}
	small := lim
	small.Cur = 4096
	if err := syscall.Setrlimit(syscall.RLIMIT_FSIZE, &small); err != nil {
		t.Skipf("cannot lower RLIMIT_FSIZE: %v", err)
	}
	err := Write(p, bytes.Repeat([]byte("x"), 64<<10), 0o600)
	if rerr := syscall.Setrlimit(syscall.RLIMIT_FSIZE, &lim); rerr != nil {
		t.Fatal(rerr)
	}
	if err == nil {
		t.Fatal("Write of 64 KiB under a 4 KiB file-size limit succeeded")
	}
	if !errors.Is(err, syscall.EFBIG) || !strings.HasPrefix(err.Error(), "write "+p+": ") {
		t.Fatalf("error %q: want EFBIG, prefixed with the path", err)
	}
	got, rerr := os.ReadFile(p)
	if rerr != nil {
		t.Fatal(rerr)
	}
	if !bytes.Equal(got, oldData) {
		t.Fatalf("old file now holds %d bytes %.40q, want the old content", len(got), got)
	}
	fi, _ := os.Stat(p)
	if fi.Mode().Perm() != 0o644 {
		t.Fatalf("old file's mode changed to %v", fi.Mode().Perm())
	}
	if names := entries(t, dir); len(names) != 1 {
		t.Fatalf("directory holds %v, want only revocations.json", names)
	}
}

func TestWriteMissingDir(t *testing.T) {
	p := filepath.Join(t.TempDir(), "no", "such", "control.addr")
	err := Write(p, []byte("127.0.0.1:1\n"), 0o644)
	if !errors.Is(err, os.ErrNotExist) || !strings.Contains(err.Error(), p) {
		t.Fatalf("error %v: want not-exist naming %s", err, p)
	}
}
