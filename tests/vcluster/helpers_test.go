package vcluster_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/nodemesh/nodemesh/tests/podtool"
	"github.com/nodemesh/nodemesh/tests/vcluster"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

func TestMain(m *testing.M) { os.Exit(vcluster.RunTests(m)) }

// Ports every test server listens on.
const (
	tcpPort  = 7000
	udpPort  = 7001
	rrPort   = 7002
	bulkPort = 7003
	sctpPort = 7004
	httpPort = 8080
)

// serve starts the standard podtool servers in a pod and waits until they
// listen.
func serve(t *testing.T, tool string, p *vcluster.Pod) *vcluster.Process {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	proc, err := p.Start(context.Background(), tool, "serve",
		"--tcp", fmt.Sprint(tcpPort), "--udp", fmt.Sprint(udpPort), "--http", fmt.Sprint(httpPort),
		"--rr", fmt.Sprint(rrPort), "--bulk", fmt.Sprint(bulkPort), "--sctp", fmt.Sprint(sctpPort),
		"--max-lifetime", "2m")
	if err != nil {
		t.Fatal(err)
	}
	if err := proc.WaitReady(ctx); err != nil {
		t.Fatalf("pod %s: %v", p, err)
	}
	return proc
}

// execer is a pod or a node.
type execer interface {
	Exec(ctx context.Context, args ...string) ([]byte, error)
}

type nodeExec struct{ *vcluster.Node }

func (n nodeExec) Exec(ctx context.Context, args ...string) ([]byte, error) {
	return n.Run(ctx, args...)
}

// exitCode is the exit status of a failed Exec, 0 for success, -1 when it
// did not run.
func exitCode(err error) int {
	if err == nil {
		return 0
	}
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		return ee.ExitCode()
	}
	return -1
}

// connect runs podtool connect and decodes its result; the exit code must
// agree with it.
func connect(t *testing.T, tool string, from execer, proto, to string, extra ...string) podtool.ConnectResult {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	args := append([]string{tool, "connect", "--proto", proto, "--to", to, "--timeout", "2s"}, extra...)
	out, err := from.Exec(ctx, args...)
	var res podtool.ConnectResult
	if jerr := json.Unmarshal(out, &res); jerr != nil {
		t.Fatalf("connect %s %s: %v; output %q, exit %v", proto, to, jerr, out, err)
	}
	code := exitCode(err)
	switch {
	case res.OK && code != podtool.ExitOK,
		!res.OK && res.Reason == podtool.ReasonUnsupported && code != podtool.ExitUnsupported,
		!res.OK && res.Reason != podtool.ReasonUnsupported && code != podtool.ExitFailed:
		t.Fatalf("connect %s %s: result %+v but exit code %d (%v)", proto, to, res, code, err)
	}
	return res
}

func httpGet(t *testing.T, tool string, from execer, url string) podtool.HTTPResult {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	out, err := from.Exec(ctx, tool, "http", "--url", url, "--timeout", "2s")
	var res podtool.HTTPResult
	if jerr := json.Unmarshal(out, &res); jerr != nil {
		t.Fatalf("http %s: %v; output %q, exit %v", url, jerr, out, err)
	}
	if res.OK != (err == nil) {
		t.Fatalf("http %s: result %+v but exit %v", url, res, err)
	}
	return res
}

func addr(a netip.Addr, port int) string { return netip.AddrPortFrom(a, uint16(port)).String() }

// objects lists what of a cluster exists on the machine, by name.
func objects(t *testing.T, name string) []string {
	t.Helper()
	var found []string
	ents, err := os.ReadDir("/run/netns")
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		t.Fatal(err)
	}
	for _, e := range ents {
		if strings.HasPrefix(e.Name(), name+"_") {
			found = append(found, "netns "+e.Name())
		}
	}
	for _, p := range []string{
		filepath.Join(vcluster.Cgroup2Mount, "nodemesh-"+name),
		filepath.Join(vcluster.BPFFSMount, "nodemesh-"+name),
		filepath.Join(vcluster.StateDir, name),
	} {
		if _, err := os.Lstat(p); err == nil {
			found = append(found, p)
		}
	}
	return found
}

func requireGone(t *testing.T, name string) {
	t.Helper()
	if left := objects(t, name); len(left) > 0 {
		t.Fatalf("cluster %s left behind: %s", name, strings.Join(left, ", "))
	}
}

// netnsInode identifies a namespace by its nsfs inode.
func netnsInode(t *testing.T, path string) uint64 {
	t.Helper()
	var st unix.Stat_t
	if err := unix.Stat(path, &st); err != nil {
		t.Fatal(err)
	}
	return st.Ino
}

// tasksInNetns lists the tasks (threads included) of any process that are
// in one of the namespaces.
func tasksInNetns(inodes map[uint64]string) []string {
	var out []string
	procs, _ := filepath.Glob("/proc/[0-9]*/task/[0-9]*/ns/net")
	for _, p := range procs {
		l, err := os.Readlink(p)
		if err != nil {
			continue
		}
		var ino uint64
		if _, err := fmt.Sscanf(l, "net:[%d]", &ino); err != nil {
			continue
		}
		if ns, ok := inodes[ino]; ok {
			out = append(out, p+" in "+ns)
		}
	}
	return out
}

func alive(pid int) bool {
	return syscall.Kill(pid, 0) == nil
}

// private ranges that must never appear in the root namespace.
var privateRanges = []netip.Prefix{
	netip.MustParsePrefix("10.0.0.0/8"),
	netip.MustParsePrefix("172.16.0.0/12"),
	netip.MustParsePrefix("192.168.0.0/16"),
}

// requireRootClean asserts that the root namespace has no address in a
// private range, no route more specific than default into one, and none of
// the cluster's interfaces.
func requireRootClean(t *testing.T, c *vcluster.Cluster) {
	t.Helper()
	h, err := netlink.NewHandle()
	if err != nil {
		t.Fatal(err)
	}
	defer h.Close()
	routes, err := h.RouteListFiltered(netlink.FAMILY_V4, &netlink.Route{Table: unix.RT_TABLE_UNSPEC}, netlink.RT_FILTER_TABLE)
	if err != nil && !errors.Is(err, netlink.ErrDumpInterrupted) {
		t.Fatal(err)
	}
	if len(routes) == 0 {
		t.Fatal("root namespace: no IPv4 routes listed at all; the check would prove nothing")
	}
	for _, r := range routes {
		if r.Dst == nil {
			continue
		}
		ones, _ := r.Dst.Mask.Size()
		p, ok := netip.AddrFromSlice(r.Dst.IP)
		if !ok || ones == 0 {
			continue
		}
		dst := netip.PrefixFrom(p.Unmap(), ones)
		for _, pr := range privateRanges {
			if pr.Overlaps(dst) {
				t.Errorf("root namespace has route %s (table %d) into private range %s", dst, r.Table, pr)
			}
		}
	}
	addrs, err := h.AddrList(nil, netlink.FAMILY_V4)
	if err != nil {
		t.Fatal(err)
	}
	for _, a := range addrs {
		ip, _ := netip.AddrFromSlice(a.IP)
		for _, pr := range privateRanges {
			if pr.Contains(ip.Unmap()) {
				t.Errorf("root namespace has address %s in private range %s", a.IPNet, pr)
			}
		}
	}
	links, err := h.LinkList()
	if err != nil && !errors.Is(err, netlink.ErrDumpInterrupted) {
		t.Fatal(err)
	}
	ours := map[string]bool{}
	for _, n := range c.Nodes() {
		ours[n.SwitchIfname] = true
	}
	for _, p := range c.Pods() {
		ours[p.HostIfname] = true
	}
	for _, l := range links {
		if ours[l.Attrs().Name] {
			t.Errorf("root namespace has the cluster's interface %s", l.Attrs().Name)
		}
	}
}
