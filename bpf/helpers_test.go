package bpf

import (
	"encoding/binary"
	"errors"
	"net"
	"net/netip"
	"os"
	"runtime"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/ringbuf"
	"golang.org/x/sys/unix"
)

// Privileged tests run as root on Linux. They skip, with the reason, when
// that is not so; but as root on Linux 6.6 or later, where every feature
// they use exists (bpffs, LPM tries, map-in-map, ring buffers, test runs,
// tcx), a failure to set up is a test failure, never a skip, so that a
// regression cannot hide behind one.

// kernelAtLeast reports whether the running kernel is major.minor or later.
func kernelAtLeast(major, minor int) bool {
	var u unix.Utsname
	if err := unix.Uname(&u); err != nil {
		return false
	}
	rel := unix.ByteSliceToString(u.Release[:])
	parts := strings.SplitN(rel, ".", 3)
	if len(parts) < 2 {
		return false
	}
	ma, _ := strconv.Atoi(parts[0])
	mi, _ := strconv.Atoi(strings.TrimFunc(parts[1], func(r rune) bool { return r < '0' || r > '9' }))
	return ma > major || (ma == major && mi >= minor)
}

// requirePrivileges skips unless the test can load BPF at all.
func requirePrivileges(tb testing.TB) {
	tb.Helper()
	if runtime.GOOS != "linux" {
		tb.Skip("needs Linux: the datapath is eBPF")
	}
	if os.Geteuid() != 0 {
		tb.Skip("needs root to load BPF programs and mount bpffs (run the tests as root, as CI does)")
	}
}

// requireFeature ends the test when setup failed for lack of a kernel
// feature: a skip on kernels older than 6.6, a failure from 6.6 on.
func requireFeature(tb testing.TB, what string, err error) {
	tb.Helper()
	if err == nil {
		return
	}
	if kernelAtLeast(6, 6) {
		tb.Fatalf("%s: %v (root on Linux >= 6.6 has everything this test needs: this is a failure, not a missing feature)", what, err)
	}
	tb.Skipf("%s: %v (kernel older than 6.6)", what, err)
}

// bpffsDir mounts a private bpf filesystem for one test and unmounts it
// when the test ends, so that no pin outlives the test.
func bpffsDir(tb testing.TB) string {
	tb.Helper()
	requirePrivileges(tb)
	dir := tb.TempDir()
	requireFeature(tb, "mount bpffs", unix.Mount("bpf", dir, "bpf", 0, "mode=0700"))
	tb.Cleanup(func() {
		if err := unix.Unmount(dir, unix.MNT_DETACH); err != nil {
			tb.Errorf("unmount bpffs %s: %v", dir, err)
		}
	})
	return dir
}

// newTestDatapath opens a datapath on a private bpffs; it is removed when
// the test ends.
func newTestDatapath(tb testing.TB) *Datapath {
	tb.Helper()
	root := bpffsDir(tb)
	d, err := Open(Config{PinDir: root + "/node-1"})
	requireFeature(tb, "open datapath", err)
	tb.Cleanup(func() {
		if err := d.Remove(); err != nil {
			tb.Errorf("remove datapath: %v", err)
		}
	})
	return d
}

// loIndex is the interface index BPF_PROG_TEST_RUN gives a packet: the
// kernel sets skb->dev to the loopback device of the caller's network
// namespace unless the context names another ifindex. Tests store it as
// the endpoints' ifindex.
func loIndex(tb testing.TB) uint32 {
	tb.Helper()
	lo, err := net.InterfaceByName("lo")
	if err != nil {
		tb.Fatalf("loopback: %v", err)
	}
	return uint32(lo.Index)
}

// ---- packets ----

const (
	ipprotoICMP   = 1
	ipprotoTCP    = 6
	ipprotoUDP    = 17
	ipprotoICMPv6 = 58
	ipprotoSCTP   = 132

	tcpFIN = 0x01
	tcpSYN = 0x02
	tcpRST = 0x04
	tcpACK = 0x10
)

// pkt describes a test packet.
type pkt struct {
	src, dst     netip.Addr
	proto        uint8
	sport, dport uint16 // ICMP: sport is the echo identifier
	tcpFlags     uint8
	icmpType     uint8   // ICMP/ICMPv6
	embedded     []byte  // ICMP error: the IP datagram it is about
	v6Ext        []uint8 // IPv6: extension headers (next-header values) before L4
	fragID       uint32
	fragFirst    bool   // first fragment of several
	fragLater    bool   // a later fragment (no L4 header)
	ethType      uint16 // overrides the ethertype
	hopLimit     uint8  // IPv6; 0: 64
	payload      int
}

// bytes builds the Ethernet frame.
func (p pkt) bytes() []byte {
	l4 := p.l4()
	var ip []byte
	if p.src.Is4() {
		ip = make([]byte, 20)
		ip[0] = 0x45
		binary.BigEndian.PutUint16(ip[2:], uint16(20+len(l4)))
		binary.BigEndian.PutUint16(ip[4:], uint16(p.fragID))
		switch {
		case p.fragFirst:
			binary.BigEndian.PutUint16(ip[6:], 0x2000)
		case p.fragLater:
			binary.BigEndian.PutUint16(ip[6:], 185) // offset 1480
		}
		ip[8] = 64
		ip[9] = p.proto
		s, d := p.src.As4(), p.dst.As4()
		copy(ip[12:], s[:])
		copy(ip[16:], d[:])
	} else {
		var ext []byte
		next := p.proto
		exts := append([]uint8(nil), p.v6Ext...)
		if p.fragFirst || p.fragLater {
			exts = append(exts, 44)
		}
		// Chain: exts[0] is first; each header's next is the following one.
		chain := append(exts, p.proto)
		next = chain[0]
		for i, h := range exts {
			hdr := make([]byte, 8)
			hdr[0] = chain[i+1]
			if h == 44 {
				fo := uint16(0)
				if p.fragFirst {
					fo = 1
				} else {
					fo = 185 << 3
				}
				binary.BigEndian.PutUint16(hdr[2:], fo)
				binary.BigEndian.PutUint32(hdr[4:], p.fragID)
			}
			ext = append(ext, hdr...)
		}
		ip = make([]byte, 40)
		ip[0] = 0x60
		binary.BigEndian.PutUint16(ip[4:], uint16(len(ext)+len(l4)))
		ip[6] = next
		ip[7] = 64
		if p.hopLimit != 0 {
			ip[7] = p.hopLimit
		}
		s, d := p.src.As16(), p.dst.As16()
		copy(ip[8:], s[:])
		copy(ip[24:], d[:])
		ip = append(ip, ext...)
	}
	eth := make([]byte, 14)
	copy(eth[0:6], []byte{0x02, 0, 0, 0, 0, 2})
	copy(eth[6:12], []byte{0x02, 0, 0, 0, 0, 1})
	et := p.ethType
	if et == 0 {
		et = 0x0800
		if !p.src.Is4() {
			et = 0x86dd
		}
	}
	binary.BigEndian.PutUint16(eth[12:], et)
	return append(append(eth, ip...), l4...)
}

func (p pkt) l4() []byte {
	if p.fragLater {
		return make([]byte, 64)
	}
	var b []byte
	switch p.proto {
	case ipprotoTCP:
		b = make([]byte, 20)
		binary.BigEndian.PutUint16(b[0:], p.sport)
		binary.BigEndian.PutUint16(b[2:], p.dport)
		b[12] = 5 << 4
		b[13] = p.tcpFlags
	case ipprotoUDP:
		b = make([]byte, 8)
		binary.BigEndian.PutUint16(b[0:], p.sport)
		binary.BigEndian.PutUint16(b[2:], p.dport)
		binary.BigEndian.PutUint16(b[4:], 8)
	case ipprotoSCTP:
		b = make([]byte, 12)
		binary.BigEndian.PutUint16(b[0:], p.sport)
		binary.BigEndian.PutUint16(b[2:], p.dport)
	case ipprotoICMP, ipprotoICMPv6:
		b = make([]byte, 8)
		b[0] = p.icmpType
		binary.BigEndian.PutUint16(b[4:], p.sport)
		b = append(b, p.embedded...)
	default:
		b = make([]byte, 8)
	}
	return append(b, make([]byte, p.payload)...)
}

// ipDatagram is the IP part of a packet (for embedding in ICMP errors).
func (p pkt) ipDatagram() []byte { return p.bytes()[14:] }

// ---- running programs ----

// runner runs the programs on crafted packets and collects their events.
type runner struct {
	tb testing.TB
	d  *Datapath
	rd *ringbuf.Reader
}

func newRunner(tb testing.TB, d *Datapath) *runner {
	tb.Helper()
	rd, err := ringbuf.NewReader(d.objs.Events)
	if err != nil {
		tb.Fatalf("events reader: %v", err)
	}
	tb.Cleanup(func() { rd.Close() })
	return &runner{tb: tb, d: d, rd: rd}
}

// result is what one program run did.
type result struct {
	pass   bool
	events []FlowEvent
}

const (
	tcActOK   = 0
	tcActShot = 2
)

// run runs from_pod (egress true) or to_pod on a packet.
func (r *runner) run(egress bool, p pkt) result {
	r.tb.Helper()
	prog := r.d.objs.ToPod
	if egress {
		prog = r.d.objs.FromPod
	}
	ret, err := prog.Run(&ebpf.RunOptions{Data: p.bytes()})
	if err != nil {
		r.tb.Fatalf("test run: %v", err)
	}
	if ret != tcActOK && ret != tcActShot {
		r.tb.Fatalf("program returned %d, want TC_ACT_OK or TC_ACT_SHOT", ret)
	}
	return result{pass: ret == tcActOK, events: r.drain()}
}

// drain returns the events in the ring buffer.
func (r *runner) drain() []FlowEvent {
	r.tb.Helper()
	var out []FlowEvent
	r.rd.SetDeadline(time.Now())
	for {
		rec, err := r.rd.Read()
		if errors.Is(err, os.ErrDeadlineExceeded) {
			return out
		}
		if err != nil {
			r.tb.Fatalf("read event: %v", err)
		}
		e, err := r.d.decodeEvent(rec.RawSample)
		if err != nil {
			r.tb.Fatal(err)
		}
		out = append(out, e)
	}
}
