package wireguard

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

// requireNetnsRoot skips a test that needs root and a TUN device (what it
// would check: why). A missing ip(8) fails the test: scripts/deps.sh
// installs iproute2.
func requireNetnsRoot(tb testing.TB, why string) {
	tb.Helper()
	if os.Geteuid() != 0 {
		tb.Skip("needs root to create network namespaces and TUN devices: " + why + " (CI runs as root)")
	}
	if _, err := os.Stat("/dev/net/tun"); err != nil {
		tb.Skip("needs /dev/net/tun for the userspace device: " + why)
	}
	if _, err := exec.LookPath("ip"); err != nil {
		tb.Fatalf("ip is missing (scripts/deps.sh installs iproute2): %v", err)
	}
}

func run(tb testing.TB, args ...string) {
	tb.Helper()
	if out, err := exec.Command(args[0], args[1:]...).CombinedOutput(); err != nil {
		tb.Fatalf("%s: %v\n%s", strings.Join(args, " "), err, out)
	}
}

// testNet is two namespaces ("nodes") joined by a veth pair: A has
// veth0 192.168.77.1/24 and pod address 10.77.1.1 on lo, B has
// veth1 192.168.77.2/24 and 10.77.2.1. The root namespace gets nothing.
type testNet struct {
	a, b string // namespace names
	id   string // unique suffix for interface names
}

var netSeq int

func newTestNet(tb testing.TB) *testNet {
	tb.Helper()
	netSeq++
	id := fmt.Sprintf("%d%d", os.Getpid()%100000, netSeq)
	n := &testNet{a: "nmwg-a-" + id, b: "nmwg-b-" + id, id: id}
	for _, ns := range []string{n.a, n.b} {
		run(tb, "ip", "netns", "add", ns)
		tb.Cleanup(func() {
			if out, err := exec.Command("ip", "netns", "del", ns).CombinedOutput(); err != nil {
				tb.Errorf("ip netns del %s: %v\n%s", ns, err, out)
			}
		})
	}
	inA := []string{"ip", "netns", "exec", n.a}
	inB := []string{"ip", "netns", "exec", n.b}
	run(tb, append(inA, "ip", "link", "add", "veth0", "type", "veth", "peer", "name", "veth1", "netns", n.b)...)
	for _, s := range []struct {
		in      []string
		dev, ip string
		pod     string
	}{{inA, "veth0", "192.168.77.1/24", "10.77.1.1/32"}, {inB, "veth1", "192.168.77.2/24", "10.77.2.1/32"}} {
		run(tb, append(s.in, "ip", "link", "set", "lo", "up")...)
		run(tb, append(s.in, "ip", "addr", "add", s.ip, "dev", s.dev)...)
		run(tb, append(s.in, "ip", "link", "set", s.dev, "up")...)
		// The kernel has no dummy links: the pod address sits on lo.
		run(tb, append(s.in, "ip", "addr", "add", s.pod, "dev", "lo")...)
	}
	return n
}

// inNS runs f on a thread in the named namespace; sockets f creates stay
// there.
func inNS(name string, f func() error) error {
	ns, err := netns.GetFromName(name)
	if err != nil {
		return fmt.Errorf("open netns %s: %w", name, err)
	}
	defer ns.Close()
	return inNetns(ns, f)
}

func mustInNS(tb testing.TB, name string, f func() error) {
	tb.Helper()
	if err := inNS(name, f); err != nil {
		tb.Fatal(err)
	}
}

// echoServer accepts on addr in ns and echoes every connection until the
// test ends.
func echoServer(tb testing.TB, ns, addr string) {
	tb.Helper()
	var l net.Listener
	mustInNS(tb, ns, func() (err error) { l, err = net.Listen("tcp4", addr); return err })
	tb.Cleanup(func() { l.Close() })
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			go func() { defer c.Close(); _, _ = io.Copy(c, c) }()
		}
	}()
}

// dial connects from local (any port) in ns to remote.
func dial(ns, local, remote string, timeout time.Duration) (net.Conn, error) {
	var c net.Conn
	err := inNS(ns, func() (err error) {
		d := net.Dialer{Timeout: timeout}
		if local != "" {
			d.LocalAddr = &net.TCPAddr{IP: net.ParseIP(local)}
		}
		c, err = d.Dial("tcp4", remote)
		return err
	})
	return c, err
}

// echo writes msg and waits up to timeout for it to come back.
func echo(c net.Conn, msg []byte, timeout time.Duration) error {
	_ = c.SetDeadline(time.Now().Add(timeout))
	defer c.SetDeadline(time.Time{})
	if _, err := c.Write(msg); err != nil {
		return err
	}
	got := make([]byte, len(msg))
	if _, err := io.ReadFull(c, got); err != nil {
		return err
	}
	if !bytes.Equal(got, msg) {
		return errors.New("echo differs from what was sent")
	}
	return nil
}

// capture records every frame on a link of a namespace (AF_PACKET, both
// directions) until stop.
type capture struct {
	fd     int
	mu     sync.Mutex
	frames [][]byte
	done   chan struct{}
	stopFn func()
}

func startCapture(tb testing.TB, ns, dev string) *capture {
	tb.Helper()
	c := &capture{done: make(chan struct{})}
	proto := int(htons(unix.ETH_P_ALL))
	mustInNS(tb, ns, func() error {
		ifi, err := net.InterfaceByName(dev)
		if err != nil {
			return err
		}
		fd, err := unix.Socket(unix.AF_PACKET, unix.SOCK_RAW|unix.SOCK_CLOEXEC, proto)
		if err != nil {
			return fmt.Errorf("packet socket: %w", err)
		}
		if err := unix.Bind(fd, &unix.SockaddrLinklayer{Protocol: htons(unix.ETH_P_ALL), Ifindex: ifi.Index}); err != nil {
			unix.Close(fd)
			return fmt.Errorf("bind packet socket to %s: %w", dev, err)
		}
		tv := unix.NsecToTimeval((50 * time.Millisecond).Nanoseconds())
		_ = unix.SetsockoptTimeval(fd, unix.SOL_SOCKET, unix.SO_RCVTIMEO, &tv)
		c.fd = fd
		return nil
	})
	stopped := make(chan struct{})
	go func() {
		defer close(c.done)
		buf := make([]byte, 1<<17)
		for {
			select {
			case <-stopped:
				return
			default:
			}
			n, _, err := unix.Recvfrom(c.fd, buf, 0)
			if err != nil {
				continue
			}
			c.mu.Lock()
			c.frames = append(c.frames, bytes.Clone(buf[:n]))
			c.mu.Unlock()
		}
	}()
	var once sync.Once
	stop := func() { once.Do(func() { close(stopped); <-c.done; unix.Close(c.fd) }) }
	tb.Cleanup(stop)
	c.stopFn = stop
	return c
}

func (c *capture) stop() [][]byte {
	c.stopFn()
	return c.frames
}

func htons(v uint16) uint16 { return v<<8 | v>>8 }

// frameSummary describes an Ethernet frame: "udp 192.168.77.1:51871 >
// 192.168.77.2:51871", "tcp ...", "arp", or the ethertype.
type frameSummary struct {
	kind     string // udp, tcp, arp, ipv6, other
	src, dst netip.AddrPort
}

func summarize(f []byte) frameSummary {
	if len(f) < 14 {
		return frameSummary{kind: "other"}
	}
	switch binary.BigEndian.Uint16(f[12:14]) {
	case 0x0806:
		return frameSummary{kind: "arp"}
	case 0x86dd:
		return frameSummary{kind: "ipv6"}
	case 0x0800:
	default:
		return frameSummary{kind: "other"}
	}
	ip := f[14:]
	if len(ip) < 20 {
		return frameSummary{kind: "other"}
	}
	ihl := int(ip[0]&0xf) * 4
	src, _ := netip.AddrFromSlice(ip[12:16])
	dst, _ := netip.AddrFromSlice(ip[16:20])
	var kind string
	switch ip[9] {
	case unix.IPPROTO_UDP:
		kind = "udp"
	case unix.IPPROTO_TCP:
		kind = "tcp"
	case unix.IPPROTO_ICMP:
		kind = "icmp"
	default:
		kind = fmt.Sprintf("ip-proto-%d", ip[9])
	}
	var sp, dp uint16
	if len(ip) >= ihl+4 {
		sp, dp = binary.BigEndian.Uint16(ip[ihl:]), binary.BigEndian.Uint16(ip[ihl+2:])
	}
	return frameSummary{kind: kind, src: netip.AddrPortFrom(src, sp), dst: netip.AddrPortFrom(dst, dp)}
}

func readFull(c net.Conn, b []byte) (int, error) { return io.ReadFull(c, b) }

func mustNS(tb testing.TB, name string) netns.NsHandle {
	tb.Helper()
	h, err := netns.GetFromName(name)
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { h.Close() })
	return h
}
