// Package capture installs and removes the iptables rules that redirect a
// network namespace's TCP traffic through the sidecar (`meshd init-net`), and
// recovers a redirected connection's original destination (SO_ORIGINAL_DST).
//
// The rules follow Istio's: outbound TCP from anyone but the proxy's uid
// (1337) and not to 127.0.0.1 goes to the outbound capture port (15001);
// inbound TCP to the workload's ports goes to the inbound capture port
// (15006). Everything lives in chains of our own (MESHAUTH_*), so cleanup
// removes exactly what was installed.
package capture

import (
	"encoding/binary"
	"fmt"
	"net"
	"net/netip"
	"syscall"
	"unsafe"

	"golang.org/x/sys/unix"
)

// soOriginalDst is SO_ORIGINAL_DST (linux/netfilter_ipv4.h) and, at the
// SOL_IPV6 level, IP6T_SO_ORIGINAL_DST (linux/netfilter_ipv6/ip6_tables.h).
const soOriginalDst = 80

// OriginalDst returns the destination a redirected TCP connection was
// originally sent to, from the kernel's connection tracking. For a
// connection that was not redirected it returns the local address (or an
// error if conntrack does not track it).
func OriginalDst(c net.Conn) (netip.AddrPort, error) {
	sc, ok := c.(syscall.Conn)
	if !ok {
		if u, ok := c.(interface{ NetConn() net.Conn }); ok {
			return OriginalDst(u.NetConn())
		}
		return netip.AddrPort{}, fmt.Errorf("capture: %T is not a socket", c)
	}
	rc, err := sc.SyscallConn()
	if err != nil {
		return netip.AddrPort{}, fmt.Errorf("capture: %w", err)
	}
	v6 := false
	if la, ok := c.LocalAddr().(*net.TCPAddr); ok && la.IP.To4() == nil {
		v6 = true
	}
	var (
		ap   netip.AddrPort
		gerr error
	)
	err = rc.Control(func(fd uintptr) {
		if v6 {
			ap, gerr = origDst6(int(fd))
		} else {
			ap, gerr = origDst4(int(fd))
		}
	})
	if err != nil {
		return netip.AddrPort{}, fmt.Errorf("capture: %w", err)
	}
	if gerr != nil {
		return netip.AddrPort{}, fmt.Errorf("capture: SO_ORIGINAL_DST: %w", gerr)
	}
	return ap, nil
}

func getsockopt(fd, level, opt int, buf []byte) error {
	n := uint32(len(buf))
	_, _, e := unix.Syscall6(unix.SYS_GETSOCKOPT, uintptr(fd), uintptr(level), uintptr(opt),
		uintptr(unsafe.Pointer(&buf[0])), uintptr(unsafe.Pointer(&n)), 0)
	if e != 0 {
		return e
	}
	return nil
}

// origDst4 reads a struct sockaddr_in: family(2) port(2, big endian) addr(4).
func origDst4(fd int) (netip.AddrPort, error) {
	var b [16]byte
	if err := getsockopt(fd, unix.SOL_IP, soOriginalDst, b[:]); err != nil {
		return netip.AddrPort{}, err
	}
	port := binary.BigEndian.Uint16(b[2:4])
	return netip.AddrPortFrom(netip.AddrFrom4([4]byte(b[4:8])), port), nil
}

// origDst6 reads a struct sockaddr_in6: family(2) port(2) flowinfo(4) addr(16) scope(4).
func origDst6(fd int) (netip.AddrPort, error) {
	var b [28]byte
	if err := getsockopt(fd, unix.SOL_IPV6, soOriginalDst, b[:]); err != nil {
		// A v4 connection on a dual-stack socket is tracked as IPv4.
		if ap, err4 := origDst4(fd); err4 == nil {
			return ap, nil
		}
		return netip.AddrPort{}, err
	}
	port := binary.BigEndian.Uint16(b[2:4])
	return netip.AddrPortFrom(netip.AddrFrom16([16]byte(b[8:24])).Unmap(), port), nil
}
