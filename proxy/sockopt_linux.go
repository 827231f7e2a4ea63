package proxy

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"syscall"
	"unsafe"

	"golang.org/x/sys/unix"
)

// intSockopt is one integer socket option applied before bind or connect.
type intSockopt struct {
	level, name int
	value       int
	desc        string // for errors: "SO_MARK", "level 1 name 36"
}

// applySockopts sets opts on the raw socket of c (a net.ListenConfig or
// net.Dialer Control hook's RawConn). EPERM means a missing capability: the
// error says which one so the NACK tells the operator what to fix.
func applySockopts(c syscall.RawConn, family string, opts []intSockopt) error {
	var serr error
	err := c.Control(func(fd uintptr) {
		for _, o := range opts {
			level, name := o.level, o.name
			// IP_TRANSPARENT and IP_FREEBIND have IPv6 twins; a socket bound
			// to [::] needs both so IPv4-mapped flows are covered too.
			if err := unix.SetsockoptInt(int(fd), level, name, o.value); err != nil {
				serr = fmt.Errorf("set %s: %w", o.desc, err)
				if errors.Is(err, unix.EPERM) {
					serr = fmt.Errorf("set %s: %w (needs CAP_NET_ADMIN or CAP_NET_RAW)", o.desc, err)
				}
				return
			}
			if family == "tcp6" && level == unix.SOL_IP {
				var v6 int
				switch name {
				case unix.IP_TRANSPARENT:
					v6 = unix.IPV6_TRANSPARENT
				case unix.IP_FREEBIND:
					v6 = unix.IPV6_FREEBIND
				default:
					continue
				}
				if err := unix.SetsockoptInt(int(fd), unix.SOL_IPV6, v6, o.value); err != nil {
					serr = fmt.Errorf("set IPv6 twin of %s: %w", o.desc, err)
					return
				}
			}
		}
	})
	if err != nil {
		return err
	}
	return serr
}

// originalDst reads SO_ORIGINAL_DST, the destination netfilter's NAT
// (REDIRECT) rewrote; ok is false when the connection was not NATed.
func originalDst(c net.Conn) (netip.AddrPort, bool) {
	tc, ok := c.(*net.TCPConn)
	if !ok {
		return netip.AddrPort{}, false
	}
	rc, err := tc.SyscallConn()
	if err != nil {
		return netip.AddrPort{}, false
	}
	var (
		res netip.AddrPort
		got bool
	)
	_ = rc.Control(func(fd uintptr) {
		var sa unix.RawSockaddrInet4
		l := uint32(unsafe.Sizeof(sa))
		if _, _, e := unix.Syscall6(unix.SYS_GETSOCKOPT, fd, unix.SOL_IP, unix.SO_ORIGINAL_DST,
			uintptr(unsafe.Pointer(&sa)), uintptr(unsafe.Pointer(&l)), 0); e == 0 && sa.Family == unix.AF_INET {
			port := uint16(sa.Port>>8) | uint16(sa.Port<<8)
			res = netip.AddrPortFrom(netip.AddrFrom4(sa.Addr), port)
			got = true
			return
		}
		var sa6 unix.RawSockaddrInet6
		l = uint32(unsafe.Sizeof(sa6))
		if _, _, e := unix.Syscall6(unix.SYS_GETSOCKOPT, fd, unix.SOL_IPV6, unix.SO_ORIGINAL_DST,
			uintptr(unsafe.Pointer(&sa6)), uintptr(unsafe.Pointer(&l)), 0); e == 0 && sa6.Family == unix.AF_INET6 {
			port := uint16(sa6.Port>>8) | uint16(sa6.Port<<8)
			res = netip.AddrPortFrom(netip.AddrFrom16(sa6.Addr).Unmap(), port)
			got = true
		}
	})
	return res, got
}

// resetClose closes c with an RST instead of a FIN, as Envoy resets a
// connection no filter chain accepts.
func resetClose(c net.Conn) {
	if tc, ok := c.(*net.TCPConn); ok {
		_ = tc.SetLinger(0)
	}
	_ = c.Close()
}

// sockoptName names well-known options for error messages and stats.
func sockoptName(level, name int) string {
	switch {
	case level == unix.SOL_SOCKET && name == unix.SO_MARK:
		return "SO_MARK"
	case level == unix.SOL_IP && name == unix.IP_TRANSPARENT:
		return "IP_TRANSPARENT"
	case level == unix.SOL_IP && name == unix.IP_FREEBIND:
		return "IP_FREEBIND"
	case level == unix.SOL_SOCKET && name == unix.SO_KEEPALIVE:
		return "SO_KEEPALIVE"
	}
	return fmt.Sprintf("socket option level %d name %d", level, name)
}
