package capture

import (
	"bytes"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"strconv"
	"strings"
)

// Chains installed by Rules; Cleanup removes exactly these and the two
// jumps into them.
const (
	chainInbound    = "MESHAUTH_INBOUND"
	chainInRedirect = "MESHAUTH_IN_REDIRECT"
	chainOutput     = "MESHAUTH_OUTPUT"
	chainRedirect   = "MESHAUTH_REDIRECT"
)

// Config describes the capture. The zero value of a field means its default.
type Config struct {
	// ProxyUID and ProxyGID own the sidecar; their traffic is never
	// captured, or the proxy would capture itself (default 1337).
	ProxyUID, ProxyGID int
	// OutboundPort receives captured outbound traffic (default 15001) and
	// InboundPort captured inbound traffic (default 15006).
	OutboundPort, InboundPort uint16
	// InboundPorts lists the workload ports to capture; empty or ["*"]
	// means all TCP ports except ExcludeInboundPorts.
	InboundPorts        []uint16
	ExcludeInboundPorts []uint16
	// ExcludeOutboundPorts and ExcludeOutboundCIDRs are never captured.
	ExcludeOutboundPorts []uint16
	ExcludeOutboundCIDRs []netip.Prefix
	// IncludeOutboundPorts, if set, captures only these destination ports.
	IncludeOutboundPorts []uint16
}

func (c *Config) defaults() {
	if c.ProxyUID == 0 {
		c.ProxyUID = 1337
	}
	if c.ProxyGID == 0 {
		c.ProxyGID = 1337
	}
	if c.OutboundPort == 0 {
		c.OutboundPort = 15001
	}
	if c.InboundPort == 0 {
		c.InboundPort = 15006
	}
}

// Rules returns the iptables-restore input (nat table) that installs the
// capture, for IPv4 or IPv6. It is pure so tests can read the rules.
func Rules(cfg Config, v6 bool) string {
	cfg.defaults()
	loopback := "127.0.0.1/32"
	if v6 {
		loopback = "::1/128"
	}
	var b strings.Builder
	w := func(format string, args ...any) { fmt.Fprintf(&b, format+"\n", args...) }
	w("*nat")
	for _, c := range []string{chainInbound, chainInRedirect, chainOutput, chainRedirect} {
		w(":%s - [0:0]", c)
	}
	w("-A %s -p tcp -j REDIRECT --to-ports %d", chainInRedirect, cfg.InboundPort)
	w("-A %s -p tcp -j REDIRECT --to-ports %d", chainRedirect, cfg.OutboundPort)

	// Inbound: traffic arriving from other hosts for the workload's ports.
	w("-A PREROUTING -p tcp -j %s", chainInbound)
	for _, p := range cfg.ExcludeInboundPorts {
		w("-A %s -p tcp --dport %d -j RETURN", chainInbound, p)
	}
	if len(cfg.InboundPorts) == 0 {
		// Never capture the sidecar's own capture ports.
		w("-A %s -p tcp --dport %d -j RETURN", chainInbound, cfg.InboundPort)
		w("-A %s -p tcp --dport %d -j RETURN", chainInbound, cfg.OutboundPort)
		w("-A %s -p tcp -j %s", chainInbound, chainInRedirect)
	} else {
		for _, p := range cfg.InboundPorts {
			w("-A %s -p tcp --dport %d -j %s", chainInbound, p, chainInRedirect)
		}
	}

	// Outbound: everything the workload sends, except the proxy's own
	// traffic (uid/gid) and loopback.
	w("-A OUTPUT -p tcp -j %s", chainOutput)
	w("-A %s -m owner --uid-owner %d -j RETURN", chainOutput, cfg.ProxyUID)
	w("-A %s -m owner --gid-owner %d -j RETURN", chainOutput, cfg.ProxyGID)
	w("-A %s -d %s -j RETURN", chainOutput, loopback)
	for _, p := range cfg.ExcludeOutboundPorts {
		w("-A %s -p tcp --dport %d -j RETURN", chainOutput, p)
	}
	for _, c := range cfg.ExcludeOutboundCIDRs {
		if c.Addr().Is4() != v6 {
			w("-A %s -d %s -j RETURN", chainOutput, c)
		}
	}
	if len(cfg.IncludeOutboundPorts) == 0 {
		w("-A %s -j %s", chainOutput, chainRedirect)
	} else {
		for _, p := range cfg.IncludeOutboundPorts {
			w("-A %s -p tcp --dport %d -j %s", chainOutput, p, chainRedirect)
		}
	}
	w("COMMIT")
	return b.String()
}

// Install applies the capture in the current network namespace for IPv4 and,
// if v6, IPv6. It first removes any previous meshauth capture, so running it
// twice leaves one copy of the rules.
func Install(cfg Config, v6 bool) error {
	if err := Cleanup(v6); err != nil {
		return err
	}
	if err := restore("iptables-restore", Rules(cfg, false)); err != nil {
		return err
	}
	if v6 {
		if err := restore("ip6tables-restore", Rules(cfg, true)); err != nil {
			Cleanup(v6)
			return err
		}
	}
	return nil
}

func restore(tool, rules string) error {
	cmd := exec.Command(tool, "--noflush")
	cmd.Stdin = strings.NewReader(rules)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	if err := cmd.Run(); err != nil {
		return fmt.Errorf("capture: %s: %w: %s (rules:\n%s)", tool, err, strings.TrimSpace(stderr.String()), rules)
	}
	return nil
}

// Cleanup removes the capture (both jumps and the MESHAUTH_* chains). It
// is idempotent: missing rules and chains are not errors.
func Cleanup(v6 bool) error {
	tools := []string{"iptables"}
	if v6 {
		tools = append(tools, "ip6tables")
	}
	var errs []error
	for _, t := range tools {
		// Delete every copy of the jumps (a half-finished earlier run may
		// have left several).
		for _, j := range [][2]string{{"PREROUTING", chainInbound}, {"OUTPUT", chainOutput}} {
			for i := 0; i < 16; i++ {
				if run(t, "-t", "nat", "-D", j[0], "-p", "tcp", "-j", j[1]) != nil {
					break
				}
			}
		}
		for _, c := range []string{chainInbound, chainInRedirect, chainOutput, chainRedirect} {
			if run(t, "-t", "nat", "-L", c, "-n") != nil {
				continue // does not exist
			}
			if err := run(t, "-t", "nat", "-F", c); err != nil {
				errs = append(errs, err)
			}
			if err := run(t, "-t", "nat", "-X", c); err != nil {
				errs = append(errs, err)
			}
		}
	}
	return errors.Join(errs...)
}

func run(tool string, args ...string) error {
	cmd := exec.Command(tool, args...)
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Run(); err != nil {
		return fmt.Errorf("capture: %s %s: %w: %s", tool, strings.Join(args, " "), err, strings.TrimSpace(out.String()))
	}
	return nil
}

// HaveIPv6 reports whether the namespace has IPv6 and ip6tables is present.
func HaveIPv6() bool {
	if _, err := os.Stat("/proc/net/if_inet6"); err != nil {
		return false
	}
	_, err := exec.LookPath("ip6tables-restore")
	return err == nil
}

// ParsePorts parses "80,8080" or "*" (nil). Empty is nil.
func ParsePorts(s string) ([]uint16, error) {
	s = strings.TrimSpace(s)
	if s == "" || s == "*" {
		return nil, nil
	}
	var out []uint16
	for _, f := range strings.Split(s, ",") {
		f = strings.TrimSpace(f)
		n, err := strconv.ParseUint(f, 10, 16)
		if err != nil || n == 0 {
			return nil, fmt.Errorf("port %q is not in 1-65535", f)
		}
		out = append(out, uint16(n))
	}
	return out, nil
}
