package kcluster

import (
	"bufio"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"syscall"
	"time"
)

// Down stops the cluster and removes everything Up made; it returns what it
// could not remove (Leftovers). It is safe to call twice.
func (c *Cluster) Down() []string {
	t := time.Now()
	// Node agents first, so nothing restarts containers.
	c.stop("kube-proxy", "kubelet")
	c.deleteContainers()
	c.stop("kube-scheduler", "kube-controller-manager", "containerd")
	c.stop("kube-apiserver")
	c.stop("etcd")
	c.killShims()
	c.cleanRuncState()
	c.unmountAll()
	if out, err := c.run("ip", "netns", "del", c.cfg.Netns); err != nil && !strings.Contains(string(out), "No such file") {
		c.logf("ip netns del %s: %v: %s", c.cfg.Netns, err, out)
	}
	c.removeCgroups()
	for k, v := range c.sysctls {
		os.WriteFile("/proc/sys/"+strings.ReplaceAll(k, ".", "/"), []byte(v), 0o644)
	}
	c.cleanOutside()
	// The state goes; logs stay in logs/ until the work directory is removed.
	for _, d := range []string{"etcd", "containerd", "kubelet", "cni", "pod-logs", "run", "images"} {
		os.RemoveAll(c.path(d))
	}
	left := c.Leftovers()
	if len(left) == 0 {
		os.RemoveAll(c.cfg.Work)
	}
	c.logf("down in %.1fs", time.Since(t).Seconds())
	return left
}

// stop sends SIGTERM to the named components, waits up to 5 s, then SIGKILLs.
func (c *Cluster) stop(names ...string) {
	c.mu.Lock()
	var ps []*proc
	for _, p := range c.procs {
		for _, n := range names {
			if p.name == n {
				ps = append(ps, p)
			}
		}
	}
	c.mu.Unlock()
	for _, p := range ps {
		p.cmd.Process.Signal(syscall.SIGTERM)
	}
	deadline := time.After(5 * time.Second)
	for _, p := range ps {
		select {
		case <-p.done:
		case <-deadline:
			c.logf("%s did not stop within 5 s of SIGTERM: SIGKILL", p.name)
			p.cmd.Process.Kill()
			<-p.done
		}
	}
}

// deleteContainers kills and deletes every task and container of this
// cluster's containerd.
func (c *Cluster) deleteContainers() {
	sock := c.path("run", "containerd.sock")
	if _, err := os.Stat(sock); err != nil {
		return
	}
	ctr := func(args ...string) string {
		out, _ := exec.Command("ctr", append([]string{"--address", sock, "-n", "k8s.io"}, args...)...).Output()
		return string(out)
	}
	tasks := strings.Fields(ctr("tasks", "ls", "-q"))
	for _, t := range tasks {
		ctr("tasks", "kill", "-s", "SIGKILL", t)
	}
	if len(tasks) > 0 {
		time.Sleep(300 * time.Millisecond)
	}
	for _, t := range tasks {
		ctr("tasks", "delete", "-f", t)
	}
	for _, ct := range strings.Fields(ctr("containers", "ls", "-q")) {
		ctr("containers", "delete", ct)
	}
}

// shimPIDs lists the containerd shims of this cluster (they re-parent to
// init): matched by this cluster's containerd socket on their command line.
func (c *Cluster) shimPIDs() []int {
	sock := c.path("run", "containerd.sock")
	var pids []int
	dirs, _ := filepath.Glob("/proc/[0-9]*")
	for _, d := range dirs {
		exe, _ := os.Readlink(d + "/exe")
		if !strings.Contains(exe, "containerd-shim") {
			continue
		}
		cl, _ := os.ReadFile(d + "/cmdline")
		if strings.Contains(strings.ReplaceAll(string(cl), "\x00", " "), " "+sock+" ") || strings.HasSuffix(strings.ReplaceAll(string(cl), "\x00", " "), " "+sock) {
			var pid int
			fmt.Sscanf(filepath.Base(d), "%d", &pid)
			pids = append(pids, pid)
		}
	}
	return pids
}

func (c *Cluster) killShims() {
	for _, pid := range c.shimPIDs() {
		syscall.Kill(pid, syscall.SIGKILL)
	}
}

// mounts lists mount points under the work directory, deepest first.
func (c *Cluster) mounts() []string {
	f, err := os.Open("/proc/self/mountinfo")
	if err != nil {
		return nil
	}
	defer f.Close()
	prefix := c.cfg.Work + "/"
	var ms []string
	s := bufio.NewScanner(f)
	for s.Scan() {
		fields := strings.Fields(s.Text())
		if len(fields) > 4 && (strings.HasPrefix(fields[4], prefix) || fields[4] == c.cfg.Work) {
			ms = append(ms, fields[4])
		}
	}
	sort.Sort(sort.Reverse(sort.StringSlice(ms)))
	return ms
}

func (c *Cluster) unmountAll() {
	for i := 0; i < 3; i++ {
		ms := c.mounts()
		if len(ms) == 0 {
			return
		}
		for _, m := range ms {
			syscall.Unmount(m, syscall.MNT_DETACH)
		}
	}
}

// cleanOutside removes what kubelet and containerd write outside the work
// directory: /var/log/containers links into it, and the directories Up found
// absent (/var/lib/kubelet, /var/log/containers, /run/containerd), emptied
// of this cluster's files only.
func (c *Cluster) cleanOutside() {
	links, _ := filepath.Glob("/var/log/containers/*")
	for _, l := range links {
		if dst, err := os.Readlink(l); err == nil && strings.HasPrefix(dst, c.cfg.Work+"/") {
			os.Remove(l)
		}
	}
	for _, d := range c.created {
		if d == "/var/lib/kubelet" {
			os.Remove("/var/lib/kubelet/device-plugins/kubelet.sock")
		}
		removeEmptyDirs(d)
	}
	c.created = nil
}

// removeCgroups kills any process left in this cluster's cgroups (a
// container whose shim died first) and removes them, deepest first; it
// waits up to 5 s for the kernel to let go of killed processes.
func (c *Cluster) removeCgroups() {
	for i := 0; i < 50; i++ {
		left := false
		for _, d := range c.cgroups {
			filepath.Walk(d, func(p string, info os.FileInfo, err error) error {
				if err != nil || info.Name() != "cgroup.procs" {
					return nil
				}
				b, _ := os.ReadFile(p)
				for _, f := range strings.Fields(string(b)) {
					var pid int
					if _, err := fmt.Sscanf(f, "%d", &pid); err == nil && pid > 1 {
						syscall.Kill(pid, syscall.SIGKILL)
						left = true
					}
				}
				return nil
			})
			removeEmptyDirs(d)
		}
		if !left {
			return
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// removeEmptyDirs removes dir and its subdirectories, deepest first, if
// they are empty; a file anywhere keeps it and its parents.
func removeEmptyDirs(dir string) {
	var dirs []string
	filepath.Walk(dir, func(p string, info os.FileInfo, err error) error {
		if err == nil && info.IsDir() {
			dirs = append(dirs, p)
		}
		return nil
	})
	for i := len(dirs) - 1; i >= 0; i-- {
		os.Remove(dirs[i])
	}
}

// Leftovers lists anything of this cluster still present: a process, a
// shim, a mount under the work directory, the network namespace, a changed
// kernel setting.
func (c *Cluster) Leftovers() []string {
	var left []string
	c.mu.Lock()
	for _, p := range c.procs {
		select {
		case <-p.done:
		default:
			left = append(left, fmt.Sprintf("process %s (pid %d)", p.name, p.cmd.Process.Pid))
		}
	}
	c.mu.Unlock()
	for _, pid := range c.shimPIDs() {
		left = append(left, fmt.Sprintf("containerd shim (pid %d)", pid))
	}
	states, _ := filepath.Glob(filepath.Join(runcRoot, "*", "state.json"))
	for _, st := range states {
		if b, err := os.ReadFile(st); err == nil && strings.Contains(string(b), c.cfg.Work+"/") {
			left = append(left, "runc state "+filepath.Dir(st))
		}
	}
	for _, m := range c.mounts() {
		left = append(left, "mount "+m)
	}
	for _, d := range c.cgroups {
		if _, err := os.Stat(d); err == nil {
			left = append(left, "cgroup "+d)
		}
	}
	if _, err := os.Stat(c.NetnsPath()); err == nil {
		left = append(left, "netns "+c.cfg.Netns)
	}
	for k, v := range c.sysctls {
		cur, _ := os.ReadFile("/proc/sys/" + strings.ReplaceAll(k, ".", "/"))
		if strings.TrimSpace(string(cur)) != v {
			left = append(left, fmt.Sprintf("sysctl %s=%s (was %s)", k, strings.TrimSpace(string(cur)), v))
		}
	}
	return left
}
