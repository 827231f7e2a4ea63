package podtool

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"time"

	"golang.org/x/sys/unix"
)

// ErrSCTPUnsupported is returned when the kernel refuses SCTP sockets
// (built without CONFIG_IP_SCTP, or the module is not loaded).
var ErrSCTPUnsupported = errors.New("kernel has no SCTP (CONFIG_IP_SCTP)")

// SCTPSupported reports whether this network namespace's kernel can open an
// SCTP socket.
func SCTPSupported() bool {
	fd, err := sctpSocket(unix.AF_INET)
	if err != nil {
		return false
	}
	unix.Close(fd)
	return true
}

// sctpSocket opens a one-to-one (SOCK_STREAM) SCTP socket: it reads and
// writes like TCP, so the net package can wrap it after the fact.
func sctpSocket(family int) (int, error) {
	fd, err := unix.Socket(family, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, unix.IPPROTO_SCTP)
	if errors.Is(err, unix.EPROTONOSUPPORT) || errors.Is(err, unix.ESOCKTNOSUPPORT) || errors.Is(err, unix.EAFNOSUPPORT) {
		return -1, fmt.Errorf("%w: %v", ErrSCTPUnsupported, err)
	}
	if err != nil {
		return -1, fmt.Errorf("sctp socket: %w", err)
	}
	return fd, nil
}

func listenSCTP(port int) (net.Listener, error) {
	fd, err := sctpSocket(unix.AF_INET)
	if err != nil {
		return nil, err
	}
	f := os.NewFile(uintptr(fd), "sctp-listener")
	defer f.Close() // net.FileListener dups the descriptor
	if err := unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_REUSEADDR, 1); err != nil {
		return nil, fmt.Errorf("sctp reuseaddr: %w", err)
	}
	if err := unix.Bind(fd, &unix.SockaddrInet4{Port: port}); err != nil {
		return nil, fmt.Errorf("sctp bind: %w", err)
	}
	if err := unix.Listen(fd, 128); err != nil {
		return nil, fmt.Errorf("sctp listen: %w", err)
	}
	return net.FileListener(f)
}

func dialSCTP(ctx context.Context, to string) (net.Conn, error) {
	ap, err := netip.ParseAddrPort(to)
	if err != nil {
		return nil, err
	}
	var sa unix.Sockaddr
	family := unix.AF_INET
	if ap.Addr().Is4() {
		sa = &unix.SockaddrInet4{Port: int(ap.Port()), Addr: ap.Addr().As4()}
	} else {
		family = unix.AF_INET6
		sa = &unix.SockaddrInet6{Port: int(ap.Port()), Addr: ap.Addr().As16()}
	}
	fd, err := sctpSocket(family)
	if err != nil {
		return nil, err
	}
	f := os.NewFile(uintptr(fd), "sctp-conn")
	defer f.Close() // net.FileConn dups the descriptor
	if err := unix.SetNonblock(fd, true); err != nil {
		return nil, err
	}
	err = unix.Connect(fd, sa)
	if errors.Is(err, unix.EINPROGRESS) {
		err = waitConnected(ctx, fd)
	}
	if err != nil {
		return nil, err
	}
	return net.FileConn(f)
}

// waitConnected polls a non-blocking connect until it completes or ctx ends.
func waitConnected(ctx context.Context, fd int) error {
	for {
		wait := 100 * time.Millisecond
		if dl, ok := ctx.Deadline(); ok {
			wait = min(wait, time.Until(dl))
		}
		if wait <= 0 || ctx.Err() != nil {
			return context.DeadlineExceeded
		}
		fds := []unix.PollFd{{Fd: int32(fd), Events: unix.POLLOUT}}
		n, err := unix.Poll(fds, int(wait.Milliseconds())+1)
		if errors.Is(err, unix.EINTR) || n == 0 {
			continue
		}
		if err != nil {
			return err
		}
		soErr, err := unix.GetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_ERROR)
		if err != nil {
			return err
		}
		if soErr != 0 {
			return unix.Errno(soErr)
		}
		return nil
	}
}
