package netns

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

func hostLinks(t *testing.T) string {
	t.Helper()
	out, err := exec.Command("ip", "-o", "link", "show").Output()
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, l := range strings.Split(string(out), "\n") {
		if f := strings.Fields(l); len(f) > 1 {
			names = append(names, f[1])
		}
	}
	return strings.Join(names, " ")
}

// TestClusterLeavesHostAlone builds a cluster and checks the promises of
// the package doc: no link appears in the host namespace, the hosts files
// resolve by Kubernetes rules, and Close removes every namespace and file.
func TestClusterLeavesHostAlone(t *testing.T) {
	if err := Available(); err != nil {
		t.Skipf("skipping: %v", err)
	}
	before := hostLinks(t)
	c, err := New(Config{})
	if err != nil {
		t.Fatal(err)
	}
	closed := false
	defer func() {
		if !closed {
			c.Close()
		}
	}()
	a, err := c.AddPod("a", "default")
	if err != nil {
		t.Fatal(err)
	}
	b, err := c.AddPod("b", "other")
	if err != nil {
		t.Fatal(err)
	}
	svc, err := c.AddService("web", "default", []Port{{Name: "http", Port: 8000, TargetPort: 80}}, a)
	if err != nil {
		t.Fatal(err)
	}
	if got := hostLinks(t); got != before {
		t.Errorf("host links changed:\nbefore %s\nafter  %s", before, got)
	}

	hostsB, err := os.ReadFile(filepath.Join("/etc/netns", b.NetNS, "hosts"))
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(hostsB), svc.VIP+"\tweb.default web.default.svc") || strings.Contains(string(hostsB), "\tweb ") {
		t.Errorf("pod b (namespace other) hosts should have web.default but not the short name:\n%s", hostsB)
	}
	// The hosts file is what the pod sees as /etc/hosts.
	out, err := b.Command(context.Background(), "cat", "/etc/hosts").Output()
	if err != nil || !strings.Contains(string(out), "web.default") {
		t.Errorf("ip netns exec b cat /etc/hosts = %q, %v", out, err)
	}
	// uid switching works as the proxy container needs it.
	out, err = a.CommandAs(context.Background(), 1337, "id", "-u").Output()
	if err != nil || strings.TrimSpace(string(out)) != "1337" {
		t.Errorf("id -u as 1337 = %q, %v", out, err)
	}
	// ServicesLast keeps exactly one jump, at the end of OUTPUT.
	if err := a.ServicesLast(); err != nil {
		t.Fatal(err)
	}
	out, err = a.Command(context.Background(), "iptables", "-t", "nat", "-S", "OUTPUT").Output()
	if err != nil {
		t.Fatal(err)
	}
	if n := strings.Count(string(out), "-j "+ServiceChain); n != 1 {
		t.Errorf("OUTPUT has %d jumps to %s:\n%s", n, ServiceChain, out)
	}

	if err := c.Close(); err != nil {
		t.Fatal(err)
	}
	closed = true
	list, _ := exec.Command("ip", "netns", "list").Output()
	for _, p := range []string{a.NetNS, b.NetNS, c.NodeNetNS()} {
		if strings.Contains(string(list), p) {
			t.Errorf("namespace %s survived Close", p)
		}
		if _, err := os.Stat(filepath.Join("/etc/netns", p)); !os.IsNotExist(err) {
			t.Errorf("/etc/netns/%s survived Close", p)
		}
	}
}
