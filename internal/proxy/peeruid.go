package proxy

import (
	"bufio"
	"encoding/binary"
	"fmt"
	"net"
	"net/netip"
	"os"
	"slices"
	"strconv"
	"strings"
)

// The explicit proxy and the --upstream ports speak with this workload's
// identity to anyone who can connect to them on loopback. In a pod that is
// the pod; on a shared host it is every local user. With
// Config.OutboundUIDs set, a loopback connection is served only if the
// process at the other end runs as one of those uids, found the way identd
// does: the peer's socket in /proc/net/tcp{,6} (its local address is our
// remote one and the reverse) names its owner. It costs a read of that
// table per connection, so it is off unless asked for.

// loopbackPeerUID returns the uid owning the other end of c, a TCP
// connection between two local sockets.
func loopbackPeerUID(c net.Conn) (int, error) {
	ra, ok1 := c.RemoteAddr().(*net.TCPAddr)
	la, ok2 := c.LocalAddr().(*net.TCPAddr)
	if !ok1 || !ok2 {
		return 0, fmt.Errorf("not a TCP connection")
	}
	for _, v6 := range []bool{false, true} {
		peerLocal, peerRemote := procAddr(ra.AddrPort(), v6), procAddr(la.AddrPort(), v6)
		if peerLocal == "" || peerRemote == "" {
			continue
		}
		f := "/proc/net/tcp"
		if v6 {
			f = "/proc/net/tcp6"
		}
		uid, found, err := findProcSocket(f, peerLocal, peerRemote)
		if err != nil {
			return 0, err
		}
		if found {
			return uid, nil
		}
	}
	return 0, fmt.Errorf("peer socket %s -> %s not found in /proc/net/tcp{,6}", ra, la)
}

// procAddr formats an address as /proc/net/tcp (v6 false: IPv4 only) or
// /proc/net/tcp6 (IPv4 as ::ffff:a.b.c.d) does: the address in 32-bit
// words of host (little-endian) byte order, then the port, in hex. It
// returns "" for an IPv6 address asked in IPv4 form.
func procAddr(ap netip.AddrPort, v6 bool) string {
	a := ap.Addr()
	var b []byte
	if v6 {
		v := a.As16()
		b = v[:]
	} else {
		a = a.Unmap()
		if !a.Is4() {
			return ""
		}
		v := a.As4()
		b = v[:]
	}
	var sb strings.Builder
	for i := 0; i < len(b); i += 4 {
		fmt.Fprintf(&sb, "%08X", binary.LittleEndian.Uint32(b[i:i+4]))
	}
	fmt.Fprintf(&sb, ":%04X", ap.Port())
	return sb.String()
}

func findProcSocket(path, local, remote string) (uid int, found bool, err error) {
	f, err := os.Open(path)
	if err != nil {
		if os.IsNotExist(err) {
			return 0, false, nil
		}
		return 0, false, err
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	sc.Scan() // header
	for sc.Scan() {
		if uid, ok, err := matchProcLine(sc.Text(), local, remote); ok || err != nil {
			return uid, ok, err
		}
	}
	return 0, false, sc.Err()
}

// matchProcLine reads one /proc/net/tcp{,6} line: ok when its local and
// remote addresses are the given ones, with the socket owner's uid.
func matchProcLine(line, local, remote string) (uid int, ok bool, err error) {
	fields := strings.Fields(line)
	if len(fields) < 8 || !strings.EqualFold(fields[1], local) || !strings.EqualFold(fields[2], remote) {
		return 0, false, nil
	}
	uid, err = strconv.Atoi(fields[7])
	if err != nil || uid < 0 {
		return 0, false, fmt.Errorf("%s: bad uid field %q", "/proc/net/tcp", fields[7])
	}
	return uid, true, nil
}

// outboundPeerAllowed applies Config.OutboundUIDs to a loopback connection
// on the explicit proxy or an --upstream port; it logs refusals.
func (p *Proxy) outboundPeerAllowed(c net.Conn) bool {
	if len(p.cfg.OutboundUIDs) == 0 {
		return true
	}
	uid, err := loopbackPeerUID(c)
	if err == nil && slices.Contains(p.cfg.OutboundUIDs, uid) {
		return true
	}
	if err != nil {
		p.log.Warn("outbound: refusing a local connection whose owner could not be found", "peer", c.RemoteAddr().String(), "error", err.Error())
	} else {
		p.log.Warn("outbound: refusing a local connection from a process of another user", "peer", c.RemoteAddr().String(), "peer_uid", uid, "allowed_uids", fmt.Sprint(p.cfg.OutboundUIDs))
	}
	p.m.Closed.WithLabelValues("outbound", "peer_uid_not_allowed").Inc()
	reset(c)
	return false
}
