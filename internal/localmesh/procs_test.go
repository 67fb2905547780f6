package localmesh

import (
	"fmt"
	"os"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// TestStopAllKillsGroup starts a real shell that spawns a child; StopAll
// must leave neither behind, even though the child ignores SIGTERM.
func TestStopAllKillsGroup(t *testing.T) {
	ps := &Procs{LogDir: t.TempDir(), Grace: 500 * time.Millisecond}
	p, err := ps.Start("parent", []string{"sh", "-c", `sh -c 'trap "" TERM; echo child $$; while :; do sleep 1; done' & wait`}, nil)
	if err != nil {
		t.Fatal(err)
	}
	// Wait for the child to announce itself in the log.
	var childPID int
	deadline := time.Now().Add(10 * time.Second)
	for childPID == 0 && time.Now().Before(deadline) {
		b, _ := os.ReadFile(p.LogPath)
		for _, l := range strings.Split(string(b), "\n") {
			if strings.HasPrefix(l, "child ") {
				_, _ = fmtSscan(l[6:], &childPID)
			}
		}
		time.Sleep(50 * time.Millisecond)
	}
	if childPID == 0 {
		t.Fatalf("child never started; log:\n%s", Tail(p.LogPath, 10))
	}
	ps.StopAll()
	if p.Exited() == nil {
		t.Error("parent still running after StopAll")
	}
	// The child was SIGKILLed with the group; it may linger as a zombie of
	// init for a moment, so poll for its disappearance.
	for time.Now().Before(deadline) {
		if err := syscall.Kill(childPID, 0); err != nil {
			return
		}
		if b, _ := os.ReadFile("/proc/" + itoa(childPID) + "/stat"); strings.Contains(string(b), ") Z ") {
			return
		}
		time.Sleep(50 * time.Millisecond)
	}
	t.Errorf("child %d survived StopAll", childPID)
}

func fmtSscan(s string, pid *int) (int, error) { return fmt.Sscan(s, pid) }
func itoa(i int) string                        { return strconv.Itoa(i) }
