package kcluster

import (
	"crypto/sha256"
	"encoding/hex"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// ReapStale tears down clusters whose harness process died before Down (a
// `go test -timeout` panic, SIGKILL): network namespaces named ma-cl-<pid>
// whose <pid> no longer runs, with their work directory in the default
// place. Their components are killed only if a recorded PID still runs the
// recorded binary. It returns what each teardown could not remove.
func ReapStale(log io.Writer) []string {
	entries, _ := os.ReadDir("/run/netns")
	var left []string
	for _, e := range entries {
		n := e.Name()
		pid, err := strconv.Atoi(strings.TrimPrefix(n, "ma-cl-"))
		if !strings.HasPrefix(n, "ma-cl-") || err != nil || running(pid) {
			continue
		}
		c := &Cluster{cfg: Config{Work: filepath.Join(os.TempDir(), n), Netns: n, Log: log}, began: time.Now(), sysctls: map[string]string{}}
		c.logf("reaping the cluster of dead process %d", pid)
		c.loadStale()
		left = append(left, c.Down()...)
	}
	return left
}

// running reports whether pid exists and is not a zombie.
func running(pid int) bool {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return false
	}
	f := strings.Fields(string(b[strings.LastIndexByte(string(b), ')')+1:]))
	return len(f) > 0 && f[0] != "Z"
}

// loadStale kills the recorded components and reads back what Up recorded
// (kernel settings, cgroups and directories it created) for Down.
func (c *Cluster) loadStale() {
	pidfiles, _ := filepath.Glob(c.path("run", "*.pid"))
	var pids []int
	for _, pf := range pidfiles {
		b, _ := os.ReadFile(pf)
		f := strings.Fields(string(b))
		if len(f) != 2 {
			continue
		}
		pid, err := strconv.Atoi(f[0])
		if exe, _ := os.Readlink("/proc/" + f[0] + "/exe"); err == nil && exe == f[1] {
			syscall.Kill(pid, syscall.SIGKILL)
			pids = append(pids, pid)
		}
	}
	for i := 0; i < 50; i++ {
		alive := false
		for _, p := range pids {
			alive = alive || running(p)
		}
		if !alive {
			break
		}
		time.Sleep(100 * time.Millisecond)
	}
	lines := func(file string) []string {
		b, _ := os.ReadFile(c.path("run", file))
		return strings.Fields(string(b))
	}
	for _, kv := range lines("sysctl.saved") {
		if k, v, ok := strings.Cut(kv, "="); ok {
			c.sysctls[k] = v
		}
	}
	c.cgroups = lines("cgroups")
	c.created = lines("created")
	c.cleanRuncState()
}

// runcRoot is where containerd 1.6's runc shim keeps container state
// (k8s.io namespace) whatever containerd's own state directory.
const runcRoot = "/run/containerd/runc/k8s.io"

// cleanRuncState removes what a dead containerd left in /run/containerd for
// this cluster's containers: each container whose runc state names this
// work directory is deleted with runc (killing what is left of it), and its
// shim's socket, /run/containerd/s/sha256(<containerd socket>/k8s.io/<id>),
// is removed.
func (c *Cluster) cleanRuncState() {
	dirs, _ := filepath.Glob(filepath.Join(runcRoot, "*"))
	for _, d := range dirs {
		b, err := os.ReadFile(filepath.Join(d, "state.json"))
		if err != nil || !strings.Contains(string(b), c.cfg.Work+"/") {
			continue
		}
		id := filepath.Base(d)
		exec.Command("runc", "--root", runcRoot, "delete", "--force", id).Run()
		os.RemoveAll(d)
		sum := sha256.Sum256([]byte(filepath.Join(c.path("run", "containerd.sock"), "k8s.io", id)))
		os.Remove(filepath.Join("/run/containerd/s", hex.EncodeToString(sum[:])))
	}
}
