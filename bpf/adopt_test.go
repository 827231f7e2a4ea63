package bpf

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"runtime"
	"testing"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/asm"
	"github.com/cilium/ebpf/link"
	"github.com/nodemesh/nodemesh/api"
	"github.com/nodemesh/nodemesh/policy"
	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
)

// ---- a pod and its node, in two network namespaces of the test ----

// inNetns runs fn on a thread in ns. If the thread cannot be put back, it
// stays locked and dies with the goroutine rather than serve others in a
// foreign namespace.
func inNetns(ns netns.NsHandle, fn func() error) error {
	runtime.LockOSThread()
	orig, err := netns.Get()
	if err != nil {
		runtime.UnlockOSThread()
		return err
	}
	defer orig.Close()
	if err := netns.Set(ns); err != nil {
		runtime.UnlockOSThread()
		return err
	}
	ferr := fn()
	if err := netns.Set(orig); err == nil {
		runtime.UnlockOSThread()
	}
	return ferr
}

// newNetns makes a network namespace that lives until the test ends (it
// is held by a file descriptor only: nothing outlives the process).
func newNetns(t *testing.T) netns.NsHandle {
	t.Helper()
	var ns netns.NsHandle
	err := func() error {
		runtime.LockOSThread()
		orig, err := netns.Get()
		if err != nil {
			runtime.UnlockOSThread()
			return err
		}
		defer orig.Close()
		ns, err = netns.New() // moves this thread into it
		if err := netns.Set(orig); err == nil {
			runtime.UnlockOSThread()
		}
		return err
	}()
	requireFeature(t, "create a network namespace", err)
	t.Cleanup(func() { ns.Close() })
	return ns
}

// vethPair is a pod's veth: host side hostIf (10.200.0.1/24, the node's
// address) in the "node" namespace, pod side (10.200.0.2/24) in the "pod"
// namespace. The test's root namespace gets neither address nor route.
type vethPair struct {
	node, pod netns.NsHandle
	hostIf    string
	ifindex   int
	nodeAddr  netip.Addr
	podAddr   netip.Addr
}

func newVethPair(t *testing.T) *vethPair {
	t.Helper()
	v := &vethPair{node: newNetns(t), pod: newNetns(t), hostIf: "nm-host0",
		nodeAddr: netip.MustParseAddr("10.200.0.1"), podAddr: netip.MustParseAddr("10.200.0.2")}
	v.create(t)
	return v
}

// create (re)creates the veth pair in the namespaces.
func (v *vethPair) create(t *testing.T) {
	t.Helper()
	nh, err := netlink.NewHandleAt(v.node)
	requireFeature(t, "netlink in the node namespace", err)
	defer nh.Close()
	ph, err := netlink.NewHandleAt(v.pod)
	requireFeature(t, "netlink in the pod namespace", err)
	defer ph.Close()
	veth := &netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: v.hostIf}, PeerName: "eth0", PeerNamespace: netlink.NsFd(v.pod)}
	requireFeature(t, "create veth", nh.LinkAdd(veth))
	setup := func(h *netlink.Handle, name, cidr string) error {
		l, err := h.LinkByName(name)
		if err != nil {
			return err
		}
		a, err := netlink.ParseAddr(cidr)
		if err != nil {
			return err
		}
		if err := h.AddrAdd(l, a); err != nil {
			return err
		}
		if lo, err := h.LinkByName("lo"); err == nil {
			_ = h.LinkSetUp(lo)
		}
		return h.LinkSetUp(l)
	}
	if err := setup(nh, v.hostIf, "10.200.0.1/24"); err != nil {
		t.Fatalf("node side: %v", err)
	}
	if err := setup(ph, "eth0", "10.200.0.2/24"); err != nil {
		t.Fatalf("pod side: %v", err)
	}
	l, err := nh.LinkByName(v.hostIf)
	if err != nil {
		t.Fatal(err)
	}
	v.ifindex = l.Attrs().Index
}

// remove deletes the veth pair, as when a pod goes away.
func (v *vethPair) remove(t *testing.T) {
	t.Helper()
	nh, err := netlink.NewHandleAt(v.node)
	if err != nil {
		t.Fatal(err)
	}
	defer nh.Close()
	l, err := nh.LinkByName(v.hostIf)
	if err != nil {
		t.Fatal(err)
	}
	if err := nh.LinkDel(l); err != nil {
		t.Fatal(err)
	}
}

// delivered sends UDP datagrams from the pod to the node's port and
// reports whether one arrived. Bounded: three tries, 300 ms each.
func (v *vethPair) delivered(t *testing.T, port int) bool {
	t.Helper()
	var ln *net.UDPConn
	err := inNetns(v.node, func() (err error) {
		ln, err = net.ListenUDP("udp4", &net.UDPAddr{IP: v.nodeAddr.AsSlice(), Port: port})
		return err
	})
	if err != nil {
		t.Fatalf("listen in the node namespace: %v", err)
	}
	defer ln.Close()
	var c *net.UDPConn
	err = inNetns(v.pod, func() (err error) {
		c, err = net.DialUDP("udp4", nil, &net.UDPAddr{IP: v.nodeAddr.AsSlice(), Port: port})
		return err
	})
	if err != nil {
		t.Fatalf("dial in the pod namespace: %v", err)
	}
	defer c.Close()
	buf := make([]byte, 64)
	for try := range 3 {
		msg := fmt.Sprintf("nodemesh %d", try)
		if _, err := c.Write([]byte(msg)); err != nil {
			t.Fatalf("send: %v", err)
		}
		_ = ln.SetReadDeadline(time.Now().Add(300 * time.Millisecond))
		n, _, err := ln.ReadFromUDP(buf)
		if err == nil && string(buf[:n]) == msg {
			return true
		}
	}
	return false
}

// ---- the test ----

const adoptWorld = `apiVersion: v1
kind: List
items:
- {apiVersion: v1, kind: Namespace, metadata: {name: default}}
- {apiVersion: v1, kind: Node, metadata: {name: node-1}, status: {addresses: [{type: InternalIP, address: 10.200.0.1}]}}
- apiVersion: v1
  kind: Pod
  metadata: {name: client, namespace: default, labels: {app: client}}
  spec: {nodeName: node-1, containers: [{name: c}]}
  status: {podIP: 10.200.0.2}
`

// adoptPolicy lets client send to its node on the given UDP ports only.
func adoptPolicy(ports ...int) string {
	s := "apiVersion: cilium.io/v2\nkind: CiliumNetworkPolicy\nmetadata: {name: p, namespace: default}\nspec:\n  endpointSelector: {matchLabels: {app: client}}\n  egress:\n  - toEntities: [host]\n    toPorts: [{ports: ["
	for i, p := range ports {
		if i > 0 {
			s += ", "
		}
		s += fmt.Sprintf(`{port: "%d", protocol: UDP}`, p)
	}
	return s + "]}]\n"
}

func adoptEngine(t *testing.T, policies string) *policy.Engine {
	t.Helper()
	w := &api.World{}
	if err := api.DecodeWorld("world.yaml", []byte(adoptWorld), w); err != nil {
		t.Fatal(err)
	}
	docs, err := api.DecodePolicies("p.yaml", []byte(policies))
	if err != nil {
		t.Fatal(err)
	}
	eng, err := policy.NewEngineFromWorld(w, policy.FromDocuments(docs))
	if err != nil {
		t.Fatal(err)
	}
	return eng
}

// TestAdoption: a datapath enforces on a real veth after its process
// closed it; opening the pin directory again adopts maps (with their
// state) and links (never detached, switched to the new program when the
// attached one differs); the adopted datapath changes policy.
func TestAdoption(t *testing.T) {
	pin := filepath.Join(bpffsDir(t), "node-1")
	v := newVethPair(t)
	eng := adoptEngine(t, adoptPolicy(9000))
	tbl, id, _ := eng.Table("default/client")

	d1, err := Open(Config{PinDir: pin})
	requireFeature(t, "open", err)
	removed := false
	t.Cleanup(func() {
		if removed {
			return
		}
		if d, err := Open(Config{PinDir: pin}); err == nil {
			_ = inNetns(v.node, d.Remove)
		}
	})
	must := func(what string, err error) {
		t.Helper()
		if err != nil {
			t.Fatalf("%s: %v", what, err)
		}
	}
	must("sync ipcache", d1.SyncIPCache(eng.IPCache("node-1")))
	must("set endpoint", d1.SetEndpoint(v.podAddr, 1, uint32(v.ifindex), id, 0))
	must("set policy", d1.SetPolicy(1, tbl, ProxyPorts{}))
	if !v.delivered(t, 9001) {
		t.Fatal("before attaching: the pod cannot reach its node (test setup)")
	}
	requireFeature(t, "attach tcx", inNetns(v.node, func() error { return d1.Attach(v.hostIf) }))
	must("attach again (idempotent)", inNetns(v.node, func() error { return d1.Attach(v.hostIf) }))

	check := func(when string, want map[int]bool) {
		t.Helper()
		for port, ok := range want {
			if got := v.delivered(t, port); got != ok {
				t.Fatalf("%s: UDP to the node's port %d delivered=%v, want %v", when, port, got, ok)
			}
		}
	}
	check("attached", map[int]bool{9000: true, 9001: false})
	links := tcxState(t, v)

	// The process goes away: enforcement stays.
	must("close", d1.Close())
	check("after Close", map[int]bool{9000: true, 9001: false})

	// A new process adopts: state, links.
	d2, err := Open(Config{PinDir: pin})
	must("adopt", err)
	eps, err := d2.Endpoints()
	must("endpoints", err)
	if eps[v.podAddr] != 1 || len(eps) != 1 {
		t.Fatalf("adopted endpoints %v", eps)
	}
	usage, err := d2.MapUsage()
	must("map usage", err)
	for _, u := range usage {
		if (u.Name == "policy" || u.Name == "conntrack" || u.Name == "ipcache") && u.Entries == 0 {
			t.Fatalf("adopted map %s is empty: %+v", u.Name, usage)
		}
	}
	if got := tcxState(t, v); got != links {
		t.Fatalf("links after adoption %+v, before %+v: they must be the same links, never re-created", got, links)
	}
	must("policy change through the adopted maps", d2.SetPolicy(1, mustTable(t, adoptEngine(t, adoptPolicy(9000, 9001)), "default/client"), ProxyPorts{}))
	check("adopted, policy changed", map[int]bool{9000: true, 9001: true, 9002: false})

	// An older program on the links (simulated: one that drops all) is
	// replaced on adoption, atomically and without detaching.
	drop := dropAllProgram(t)
	for _, h := range podHooks {
		l, err := link.LoadPinnedLink(filepath.Join(pin, linksDir, v.hostIf, h.name), nil)
		must("load pinned link", err)
		must("install the old program", l.Update(drop))
		l.Close()
	}
	check("old program", map[int]bool{9000: false})
	must("close", d2.Close())
	d3, err := Open(Config{PinDir: pin})
	must("adopt with an older program attached", err)
	st := tcxState(t, v)
	if st.linkIDs != links.linkIDs || st.progIDs == links.progIDs {
		t.Fatalf("links %+v after adopting over an old program, before %+v: want the same links, new programs", st, links)
	}
	check("adopted over an old program", map[int]bool{9000: true, 9001: true, 9002: false})

	// Detach stops enforcement; Remove leaves nothing.
	must("detach", inNetns(v.node, func() error { return d3.Detach(v.hostIf) }))
	check("detached", map[int]bool{9002: true})
	if st := tcxState(t, v); st.count != 0 {
		t.Fatalf("programs still attached after Detach: %+v", st)
	}
	must("detach again", inNetns(v.node, func() error { return d3.Detach(v.hostIf) }))
	must("remove", d3.Remove())
	removed = true
	if _, err := os.Stat(pin); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("pin dir after Remove: %v", err)
	}
}

func mustTable(t *testing.T, eng *policy.Engine, pod string) *policy.Table {
	t.Helper()
	tbl, _, ok := eng.Table(pod)
	if !ok {
		t.Fatalf("no pod %s", pod)
	}
	return tbl
}

// tcxLinks is what is attached to the host veth's two tcx hooks.
type tcxLinks struct {
	count   int
	linkIDs [2]link.ID
	progIDs [2]ebpf.ProgramID
}

func tcxState(t *testing.T, v *vethPair) tcxLinks {
	t.Helper()
	var st tcxLinks
	err := inNetns(v.node, func() error {
		for i, h := range podHooks {
			res, err := link.QueryPrograms(link.QueryOptions{Target: v.ifindex, Attach: h.attach})
			if err != nil {
				return err
			}
			st.count += len(res.Programs)
			if len(res.Programs) > 1 {
				return fmt.Errorf("%d programs on %s", len(res.Programs), h.name)
			}
			if len(res.Programs) == 1 {
				st.progIDs[i] = res.Programs[0].ID
				st.linkIDs[i], _ = res.Programs[0].LinkID()
			}
		}
		return nil
	})
	if err != nil {
		t.Fatalf("query tcx: %v", err)
	}
	return st
}

// dropAllProgram stands for an older datapath version on the links.
func dropAllProgram(t *testing.T) *ebpf.Program {
	t.Helper()
	p, err := ebpf.NewProgram(&ebpf.ProgramSpec{
		Name: "old_version", Type: ebpf.SchedCLS, License: "GPL",
		Instructions: asm.Instructions{asm.Mov.Imm(asm.R0, tcActShot), asm.Return()},
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { p.Close() })
	return p
}

// TestAttachVanishedInterface: a pod's veth goes and a new one comes with
// the same name (a restarted pod): Attach replaces the stale link; Detach
// of a vanished interface cleans up without error.
func TestAttachVanishedInterface(t *testing.T) {
	d := newTestDatapath(t)
	v := newVethPair(t)
	attach := func() error { return inNetns(v.node, func() error { return d.Attach(v.hostIf) }) }
	requireFeature(t, "attach tcx", attach())
	first := tcxState(t, v)
	v.remove(t)
	v.create(t)
	if st := tcxState(t, v); st.count != 0 {
		t.Fatalf("a new veth starts with programs: %+v", st)
	}
	if err := attach(); err != nil {
		t.Fatalf("attach to the new veth of the same name: %v", err)
	}
	second := tcxState(t, v)
	if second.count != 2 || second.linkIDs == first.linkIDs {
		t.Fatalf("links on the new veth %+v (on the old one %+v): want two new links", second, first)
	}
	v.remove(t)
	if err := inNetns(v.node, func() error { return d.Detach(v.hostIf) }); err != nil {
		t.Fatalf("detach a vanished interface: %v", err)
	}
	if ifs, err := d.Attached(); err != nil || len(ifs) != 0 {
		t.Fatalf("attached after detach: %v, %v", ifs, err)
	}
	if err := d.Attach("nm-no-such-if"); err == nil {
		t.Fatal("attach to a missing interface succeeded")
	}
}
