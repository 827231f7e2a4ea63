package redirect

import (
	"os"
	"runtime"
	"testing"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

// inNewNetns runs f on a locked thread in a fresh network namespace, then
// returns the thread to its namespace and discards the new one.
func inNewNetns(t *testing.T, f func()) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root: creates a network namespace")
	}
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	orig, err := netns.Get()
	if err != nil {
		t.Fatal(err)
	}
	defer orig.Close()
	ns, err := netns.New()
	if err != nil {
		t.Fatal(err)
	}
	defer ns.Close()
	defer netns.Set(orig)
	lo, err := netlink.LinkByName("lo")
	if err != nil {
		t.Fatal(err)
	}
	if err := netlink.LinkSetUp(lo); err != nil {
		t.Fatal(err)
	}
	f()
}

// TestSetup checks what a node gets: the hairpin veth pair up, the fwmark
// rule and the local default route in both families; that Setup is
// idempotent (an agent restart) and Teardown removes everything.
func TestSetup(t *testing.T) {
	inNewNetns(t, func() {
		var first *Node
		for i := range 2 {
			n, err := Setup(Config{})
			if err != nil {
				t.Fatalf("setup #%d: %v", i+1, err)
			}
			if first == nil {
				first = n
			} else if n.HostIndex != first.HostIndex || n.NetIndex != first.NetIndex {
				t.Errorf("second setup made new links: %+v then %+v", first, n)
			}
		}
		for _, name := range []string{DefaultHostLink, DefaultNetLink} {
			l, err := netlink.LinkByName(name)
			if err != nil {
				t.Fatal(err)
			}
			if l.Attrs().Flags&unix.IFF_UP == 0 {
				t.Errorf("%s is down", name)
			}
			v, _ := os.ReadFile("/proc/sys/net/ipv4/conf/" + name + "/rp_filter")
			if string(v) != "0\n" {
				t.Errorf("%s rp_filter = %q, want 0", name, v)
			}
		}
		for _, family := range []int{unix.AF_INET, unix.AF_INET6} {
			rules, err := netlink.RuleList(family)
			if err != nil {
				t.Fatal(err)
			}
			n := 0
			for _, r := range rules {
				if r.Mark == MarkToProxy && r.Mask != nil && *r.Mask == MarkMask && r.Table == DefaultTable {
					n++
				}
			}
			if n != 1 {
				t.Errorf("%s: %d fwmark rules to table %d, want 1", familyName(family), n, DefaultTable)
			}
			routes, err := netlink.RouteListFiltered(family, &netlink.Route{Table: DefaultTable}, netlink.RT_FILTER_TABLE)
			if err != nil {
				t.Fatal(err)
			}
			if len(routes) != 1 || routes[0].Type != unix.RTN_LOCAL {
				t.Errorf("%s: table %d holds %v, want one local default route", familyName(family), DefaultTable, routes)
			}
		}
		if err := Teardown(Config{}); err != nil {
			t.Fatal(err)
		}
		if _, err := netlink.LinkByName(DefaultHostLink); err == nil {
			t.Error("hairpin still there after Teardown")
		}
		rules, _ := netlink.RuleList(unix.AF_INET)
		for _, r := range rules {
			if r.Table == DefaultTable {
				t.Errorf("rule left after Teardown: %v", r)
			}
		}
		if err := Teardown(Config{}); err != nil {
			t.Errorf("second teardown: %v", err)
		}
	})
}
