package bpf

import (
	"path/filepath"
	"testing"

	"github.com/vishvananda/netlink"
)

// TestTCFallback attaches with tc clsact filters, as on kernels without
// tcx, and checks what the tcx path guarantees: enforcement on a real veth,
// enforcement after the process closed the datapath, a new process taking
// over and changing policy, and Detach restoring plain forwarding.
func TestTCFallback(t *testing.T) {
	pin := filepath.Join(bpffsDir(t), "node-tc")
	v := newVethPair(t)
	eng := adoptEngine(t, adoptPolicy(9000))
	tbl, id, _ := eng.Table("default/client")
	cfg := Config{PinDir: pin, Hook: HookTC}
	d1, err := Open(cfg)
	requireFeature(t, "open", err)
	t.Cleanup(func() {
		if d, err := Open(cfg); err == nil {
			_ = inNetns(v.node, func() error { _ = d.Detach(v.hostIf); return d.Remove() })
		}
	})
	must := func(what string, err error) {
		t.Helper()
		if err != nil {
			t.Fatalf("%s: %v", what, err)
		}
	}
	check := func(when string, want map[int]bool) {
		t.Helper()
		for port, ok := range want {
			if got := v.delivered(t, port); got != ok {
				t.Fatalf("%s: UDP to the node's port %d delivered=%v, want %v", when, port, got, ok)
			}
		}
	}
	must("sync ipcache", d1.SyncIPCache(eng.IPCache("node-1")))
	must("set endpoint", d1.SetEndpoint(v.podAddr, 1, uint32(v.ifindex), id, 0))
	must("set policy", d1.SetPolicy(1, tbl, ProxyPorts{}))
	must("attach with tc", inNetns(v.node, func() error { return d1.Attach(v.hostIf) }))
	must("attach again (idempotent)", inNetns(v.node, func() error { return d1.Attach(v.hostIf) }))

	var filters [2]int
	must("list filters", inNetns(v.node, func() error {
		for i, parent := range []uint32{netlink.HANDLE_MIN_INGRESS, netlink.HANDLE_MIN_EGRESS} {
			fs, err := netlink.FilterList(&netlink.Dummy{LinkAttrs: netlink.LinkAttrs{Index: v.ifindex}}, parent)
			if err != nil {
				return err
			}
			filters[i] = len(fs)
		}
		return nil
	}))
	if filters != [2]int{1, 1} {
		t.Fatalf("tc filters (ingress, egress) = %v, want one each", filters)
	}
	if st := tcxState(t, v); st.count != 0 {
		t.Fatalf("tcx links in tc mode: %+v", st)
	}
	check("attached with tc", map[int]bool{9000: true, 9001: false})

	must("close", d1.Close())
	check("after Close", map[int]bool{9000: true, 9001: false})

	var d2 *Datapath
	must("adopt", inNetns(v.node, func() (err error) { d2, err = Open(cfg); return err }))
	must("policy change through the adopted maps", d2.SetPolicy(1, mustTable(t, adoptEngine(t, adoptPolicy(9000, 9001)), "default/client"), ProxyPorts{}))
	check("adopted, policy changed", map[int]bool{9000: true, 9001: true, 9002: false})

	must("detach", inNetns(v.node, func() error { return d2.Detach(v.hostIf) }))
	check("detached", map[int]bool{9002: true})
}
