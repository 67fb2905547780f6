package main

import (
	"fmt"
	"net/netip"
	"strings"

	"github.com/spf13/cobra"

	"github.com/meshauth/meshauth/internal/capture"
)

// initNetFlags are the flags of `meshd init-net`.
type initNetFlags struct {
	cfg                      capture.Config
	inbound, exclIn, exclOut string
	inclOut, exclCIDR, ipv6  string
	cleanup, dryRun          bool
	outPort, inPort          uint16
}

func init() {
	var f initNetFlags
	cmd := &cobra.Command{
		Use:   "init-net",
		Short: "Install (or --cleanup) the iptables capture that sends a network namespace's TCP through the sidecar",
		Long: `init-net installs the nat rules a pod's init container installs: outbound TCP
from every uid but the proxy's (1337) and not to loopback goes to the sidecar's
outbound port (15001); inbound TCP to the workload's ports goes to its inbound
capture port (15006). It acts on the current network namespace (run it with
ip netns exec, or as the pod's init container) and needs CAP_NET_ADMIN.`,
		Example: `  meshd init-net                                  # capture everything, defaults
  meshd init-net --inbound-ports 80,8080 --exclude-outbound-ports 15012
  meshd init-net --dry-run                        # print the iptables-restore input
  meshd init-net --cleanup`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error { return runInitNet(cmd, &f) },
	}
	fl := cmd.Flags()
	fl.IntVar(&f.cfg.ProxyUID, "proxy-uid", 1337, "uid the sidecar runs as; its traffic is not captured")
	fl.IntVar(&f.cfg.ProxyGID, "proxy-gid", 1337, "gid the sidecar runs as; its traffic is not captured")
	fl.Uint16Var(&f.outPort, "outbound-port", 15001, "sidecar port for captured outbound traffic")
	fl.Uint16Var(&f.inPort, "inbound-port", 15006, "sidecar port for captured inbound traffic")
	fl.StringVar(&f.inbound, "inbound-ports", "*", "workload ports to capture inbound (comma list, or * for all)")
	fl.StringVar(&f.exclIn, "exclude-inbound-ports", "15000,15020,15090", "inbound ports never captured (the sidecar's admin ports)")
	fl.StringVar(&f.exclOut, "exclude-outbound-ports", "", "outbound destination ports never captured")
	fl.StringVar(&f.inclOut, "outbound-ports", "", "capture only these outbound destination ports (default all)")
	fl.StringVar(&f.exclCIDR, "exclude-outbound-cidrs", "", "outbound destinations never captured (comma list of CIDRs)")
	fl.StringVar(&f.ipv6, "ipv6", "auto", "also install ip6tables rules: auto, true or false")
	fl.BoolVar(&f.cleanup, "cleanup", false, "remove the capture instead of installing it")
	fl.BoolVar(&f.dryRun, "dry-run", false, "print the rules instead of installing them")
	root.AddCommand(cmd)
}

// runInitNet installs, prints (--dry-run) or removes (--cleanup) the capture.
func runInitNet(cmd *cobra.Command, f *initNetFlags) error {
	cfg := &f.cfg
	var err error
	v6 := false
	switch f.ipv6 {
	case "auto":
		v6 = capture.HaveIPv6()
	case "true", "on", "yes":
		v6 = true
	case "false", "off", "no":
	default:
		return fmt.Errorf("--ipv6 %q: want auto, true or false", f.ipv6)
	}
	if f.cleanup {
		if err := capture.Cleanup(v6); err != nil {
			return err
		}
		fmt.Fprintln(cmd.OutOrStdout(), "meshauth capture removed")
		return nil
	}
	cfg.OutboundPort, cfg.InboundPort = f.outPort, f.inPort
	if cfg.InboundPorts, err = capture.ParsePorts(f.inbound); err != nil {
		return fmt.Errorf("--inbound-ports: %w", err)
	}
	if cfg.ExcludeInboundPorts, err = capture.ParsePorts(f.exclIn); err != nil {
		return fmt.Errorf("--exclude-inbound-ports: %w", err)
	}
	if cfg.ExcludeOutboundPorts, err = capture.ParsePorts(f.exclOut); err != nil {
		return fmt.Errorf("--exclude-outbound-ports: %w", err)
	}
	if cfg.IncludeOutboundPorts, err = capture.ParsePorts(f.inclOut); err != nil {
		return fmt.Errorf("--outbound-ports: %w", err)
	}
	for _, c := range strings.Split(f.exclCIDR, ",") {
		if c = strings.TrimSpace(c); c == "" {
			continue
		}
		p, err := netip.ParsePrefix(c)
		if err != nil {
			return fmt.Errorf("--exclude-outbound-cidrs: %w", err)
		}
		cfg.ExcludeOutboundCIDRs = append(cfg.ExcludeOutboundCIDRs, p)
	}
	if f.dryRun {
		fmt.Fprint(cmd.OutOrStdout(), capture.Rules(*cfg, false))
		if v6 {
			fmt.Fprint(cmd.OutOrStdout(), capture.Rules(*cfg, true))
		}
		return nil
	}
	if err := capture.Install(*cfg, v6); err != nil {
		return err
	}
	fmt.Fprintf(cmd.OutOrStdout(), "meshauth capture installed (outbound -> %d, inbound -> %d, uid %d excluded, ipv6 %v)\n",
		f.outPort, f.inPort, cfg.ProxyUID, v6)
	return nil
}
