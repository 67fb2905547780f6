package agent

import (
	"bytes"
	"context"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/workloadapi"

	"github.com/meshauth/meshauth/internal/ca/catest"
)

type syncBuf struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuf) Write(p []byte) (int, error) { s.mu.Lock(); defer s.mu.Unlock(); return s.b.Write(p) }
func (s *syncBuf) String() string              { s.mu.Lock(); defer s.mu.Unlock(); return s.b.String() }

// fetchSVID asks the Workload API at sock for an SVID, as an app would.
func fetchSVID(sock string) error {
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
	defer cancel()
	_, err := workloadapi.FetchX509SVID(ctx, workloadapi.WithAddr("unix://"+sock))
	return err
}

// TestHelperWorkloadAPIClient is not a test: TestWorkloadAPIPeerUID runs
// the test binary under another uid with this as the client.
func TestHelperWorkloadAPIClient(t *testing.T) {
	sock := os.Getenv("MESHAUTH_TEST_WORKLOAD_SOCK")
	if sock == "" {
		t.Skip("helper process only")
	}
	if err := fetchSVID(sock); err != nil {
		t.Fatalf("FETCH FAILED: %v", err)
	}
}

// TestWorkloadAPIPeerUID: the Workload API hands out the private key, so it
// serves only the sidecar's own uid and the uids it is told to allow. As
// root, real processes of other users (setpriv) try it: refused at the
// socket's mode when no other uid is allowed, served when allowed, refused
// by the peer check (and logged) when another uid is allowed but not theirs.
func TestWorkloadAPIPeerUID(t *testing.T) {
	ca := catest.New(t)
	st := NewStore(StoreConfig{})
	if err := st.Set(svidOf(t, ca.Issue(t, sleepID)), ca.Bundle()); err != nil {
		t.Fatal(err)
	}
	start := func(t *testing.T, self int, allow []int) (string, *syncBuf) {
		dir := t.TempDir()
		// Other users must reach the socket to be refused by it (t.TempDir's
		// parent is 0700 too).
		os.Chmod(filepath.Dir(dir), 0o755)
		os.Chmod(dir, 0o755)
		sock := filepath.Join(dir, "agent.sock")
		logs := &syncBuf{}
		api := NewWorkloadAPI(st, slog.New(slog.NewTextHandler(logs, nil)))
		api.selfUID, api.AllowUIDs = self, allow
		ctx, cancel := context.WithCancel(context.Background())
		done := make(chan error, 1)
		go func() { done <- api.Serve(ctx, sock) }()
		t.Cleanup(func() { cancel(); <-done })
		waitSocket(t, sock)
		return sock, logs
	}

	t.Run("own uid served", func(t *testing.T) {
		sock, _ := start(t, os.Getuid(), nil)
		if err := fetchSVID(sock); err != nil {
			t.Fatal(err)
		}
		if fi, err := os.Stat(sock); err != nil || fi.Mode().Perm() != 0o600 {
			t.Errorf("socket mode %v (%v), want 0600 when no other uid is allowed", fi.Mode().Perm(), err)
		}
	})
	t.Run("a uid not allowed is refused by the peer check", func(t *testing.T) {
		// selfUID -1: this process's uid is "another user" here.
		sock, logs := start(t, -1, []int{4242})
		if err := fetchSVID(sock); err == nil {
			t.Fatal("served a process whose uid is not allowed")
		}
		if !strings.Contains(logs.String(), "refused a connection from a process of another user") {
			t.Errorf("no log of the refusal:\n%s", logs.String())
		}
	})

	t.Run("other users, for real", func(t *testing.T) {
		if os.Getuid() != 0 {
			t.Skip("needs root to run a client as another uid (setpriv); CI runs as root")
		}
		setpriv, err := exec.LookPath("setpriv")
		if err != nil {
			t.Skip("no setpriv")
		}
		exe, err := os.Executable()
		if err != nil {
			t.Fatal(err)
		}
		os.Chmod(filepath.Dir(exe), 0o755)
		run := func(sock string, uid string) (string, error) {
			cmd := exec.Command(setpriv, "--reuid", uid, "--regid", uid, "--clear-groups", exe, "-test.run", "^TestHelperWorkloadAPIClient$", "-test.v")
			cmd.Env = append(os.Environ(), "MESHAUTH_TEST_WORKLOAD_SOCK="+sock)
			out, err := cmd.CombinedOutput()
			return string(out), err
		}
		sock, _ := start(t, 0, nil)
		if out, err := run(sock, "1337"); err == nil {
			t.Errorf("uid 1337 fetched the SVID from a socket that allows only root:\n%s", out)
		} else if !strings.Contains(out, "permission denied") {
			t.Errorf("uid 1337 refused, but not by the socket's mode:\n%s", out)
		}
		sock, logs := start(t, 0, []int{1337})
		if out, err := run(sock, "1337"); err != nil {
			t.Errorf("allowed uid 1337 not served: %v\n%s", err, out)
		}
		if out, err := run(sock, "1338"); err == nil {
			t.Errorf("uid 1338 served though only 1337 is allowed:\n%s", out)
		}
		if !strings.Contains(logs.String(), "peer_uid=1338") {
			t.Errorf("refusal of uid 1338 not logged:\n%s", logs.String())
		}
	})
}
