package redirect

import (
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// Defaults of Config.
const (
	DefaultHostLink = "nm_host"
	DefaultNetLink  = "nm_net"
	// DefaultTable is the routing table holding the local default routes.
	DefaultTable = 2004
	// DefaultPriority is the ip rule's priority: before the main table's
	// rule (32766), after the local table's (0).
	DefaultPriority = 90
	// MarkToProxy and MarkMask are the datapath's NM_MARK_TO_PROXY and
	// NM_MARK_MASK (bpf/include/datapath.h).
	MarkToProxy uint32 = 0x0200
	MarkMask    uint32 = 0x0f00
)

// Config names what Setup creates. The zero value means the defaults.
type Config struct {
	HostLink string // the hairpin end to_pod redirects to
	NetLink  string // the end whose ingress runs to_proxy
	Table    int
	Priority int
}

func (c *Config) defaults() {
	if c.HostLink == "" {
		c.HostLink = DefaultHostLink
	}
	if c.NetLink == "" {
		c.NetLink = DefaultNetLink
	}
	if c.Table == 0 {
		c.Table = DefaultTable
	}
	if c.Priority == 0 {
		c.Priority = DefaultPriority
	}
}

// Node is a node's redirect plumbing, as Setup left it.
type Node struct {
	HostLink, NetLink   string
	HostIndex, NetIndex int
	// Warnings are settings of the node that Setup did not change but that
	// can defeat the redirect.
	Warnings []string
}

// Setup creates (or finds in place) the hairpin, the rule and the local
// routes in the calling thread's network namespace, for IPv4 and IPv6.
func Setup(cfg Config) (*Node, error) {
	cfg.defaults()
	n := &Node{HostLink: cfg.HostLink, NetLink: cfg.NetLink}
	host, peer, err := hairpin(cfg)
	if err != nil {
		return nil, err
	}
	n.HostIndex, n.NetIndex = host.Attrs().Index, peer.Attrs().Index
	// The hairpinned packets carry pod addresses as source, which route
	// out through the pods' veths, not nm_net: no reverse-path filter here.
	for _, name := range []string{cfg.HostLink, cfg.NetLink} {
		if err := sysctl("net/ipv4/conf/"+name+"/rp_filter", "0"); err != nil {
			return nil, err
		}
		if err := sysctl("net/ipv6/conf/"+name+"/accept_ra", "0"); err != nil && !errors.Is(err, os.ErrNotExist) {
			return nil, err
		}
	}
	// Early demux would hand a segment of a redirected connection, on its
	// way in from the client (pod veth or underlay), to the proxy's socket
	// before routing; the segment is then forwarded toward the pod with a
	// socket attached, which the kernel drops. Without it, the segment is
	// routed to the pod's veth, where to_pod sends it through the hairpin.
	if err := sysctl("net/ipv4/tcp_early_demux", "0"); err != nil {
		return nil, err
	}
	if v, err := os.ReadFile("/proc/sys/net/ipv4/conf/all/rp_filter"); err == nil && strings.TrimSpace(string(v)) == "1" {
		// The effective value is the larger of "all" and the device's.
		n.Warnings = append(n.Warnings, "net.ipv4.conf.all.rp_filter is 1 (strict): ingress L7 redirects through "+cfg.NetLink+" fail; set it to 2 (loose) or 0")
	}
	for _, family := range []int{unix.AF_INET, unix.AF_INET6} {
		if family == unix.AF_INET6 && !ipv6Enabled() {
			n.Warnings = append(n.Warnings, "IPv6 is disabled in this network namespace: no IPv6 redirect routes (IPv6 L7-covered connections drop)")
			continue
		}
		if err := ensureRule(cfg, family); err != nil {
			return nil, err
		}
		if err := ensureLocalRoute(cfg, family); err != nil {
			return nil, err
		}
	}
	return n, nil
}

// hairpin returns the veth pair, creating it if needed, both ends up.
func hairpin(cfg Config) (netlink.Link, netlink.Link, error) {
	host, err := netlink.LinkByName(cfg.HostLink)
	if err != nil {
		var nf netlink.LinkNotFoundError
		if !errors.As(err, &nf) {
			return nil, nil, fmt.Errorf("hairpin %s: %w", cfg.HostLink, err)
		}
		veth := &netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: cfg.HostLink}, PeerName: cfg.NetLink}
		if err := netlink.LinkAdd(veth); err != nil {
			return nil, nil, fmt.Errorf("create hairpin %s/%s: %w", cfg.HostLink, cfg.NetLink, err)
		}
		if host, err = netlink.LinkByName(cfg.HostLink); err != nil {
			return nil, nil, fmt.Errorf("hairpin %s: %w", cfg.HostLink, err)
		}
	}
	if host.Type() != "veth" {
		return nil, nil, fmt.Errorf("hairpin: %s exists and is a %s, not a veth", cfg.HostLink, host.Type())
	}
	peer, err := netlink.LinkByName(cfg.NetLink)
	if err != nil {
		return nil, nil, fmt.Errorf("hairpin %s: %w (is %s's peer elsewhere? delete %s to recreate the pair)", cfg.NetLink, err, cfg.HostLink, cfg.HostLink)
	}
	if peerIdx, err := netlink.VethPeerIndex(host.(*netlink.Veth)); err == nil && peerIdx != peer.Attrs().Index {
		return nil, nil, fmt.Errorf("hairpin: %s's peer is not %s", cfg.HostLink, cfg.NetLink)
	}
	for _, l := range []netlink.Link{host, peer} {
		if err := netlink.LinkSetUp(l); err != nil {
			return nil, nil, fmt.Errorf("hairpin: set %s up: %w", l.Attrs().Name, err)
		}
	}
	return host, peer, nil
}

func rule(cfg Config, family int) *netlink.Rule {
	r := netlink.NewRule()
	r.Family = family
	r.Priority = cfg.Priority
	r.Mark = MarkToProxy
	m := MarkMask
	r.Mask = &m
	r.Table = cfg.Table
	return r
}

func ensureRule(cfg Config, family int) error {
	want := rule(cfg, family)
	rules, err := netlink.RuleList(family)
	if err != nil {
		return fmt.Errorf("list ip rules: %w", err)
	}
	for _, r := range rules {
		if r.Priority == want.Priority && r.Mark == want.Mark && r.Mask != nil && *r.Mask == *want.Mask && r.Table == want.Table {
			return nil
		}
	}
	if err := netlink.RuleAdd(want); err != nil {
		return fmt.Errorf("add ip rule fwmark 0x%x/0x%x lookup %d (%s): %w", MarkToProxy, MarkMask, cfg.Table, familyName(family), err)
	}
	return nil
}

func localRoute(cfg Config, family int) (*netlink.Route, error) {
	lo, err := netlink.LinkByName("lo")
	if err != nil {
		return nil, fmt.Errorf("loopback: %w", err)
	}
	dst := &net.IPNet{IP: net.IPv4zero.To4(), Mask: net.CIDRMask(0, 32)}
	if family == unix.AF_INET6 {
		dst = &net.IPNet{IP: net.IPv6zero, Mask: net.CIDRMask(0, 128)}
	}
	return &netlink.Route{
		LinkIndex: lo.Attrs().Index, Dst: dst, Table: cfg.Table,
		Type: unix.RTN_LOCAL, Scope: netlink.SCOPE_HOST, Family: family,
	}, nil
}

func ensureLocalRoute(cfg Config, family int) error {
	r, err := localRoute(cfg, family)
	if err != nil {
		return err
	}
	if err := netlink.RouteReplace(r); err != nil {
		return fmt.Errorf("add local default route to table %d (%s): %w", cfg.Table, familyName(family), err)
	}
	return nil
}

// Teardown removes what Setup created. Absent parts are not an error.
func Teardown(cfg Config) error {
	cfg.defaults()
	var errs []error
	for _, family := range []int{unix.AF_INET, unix.AF_INET6} {
		if err := netlink.RuleDel(rule(cfg, family)); err != nil && !errors.Is(err, unix.ENOENT) {
			errs = append(errs, fmt.Errorf("delete ip rule (%s): %w", familyName(family), err))
		}
		if r, err := localRoute(cfg, family); err == nil {
			if err := netlink.RouteDel(r); err != nil && !errors.Is(err, unix.ESRCH) && !errors.Is(err, unix.ENOENT) {
				errs = append(errs, fmt.Errorf("delete local route (%s): %w", familyName(family), err))
			}
		}
	}
	if l, err := netlink.LinkByName(cfg.HostLink); err == nil {
		if err := netlink.LinkDel(l); err != nil {
			errs = append(errs, fmt.Errorf("delete %s: %w", cfg.HostLink, err))
		}
	}
	return errors.Join(errs...)
}

func sysctl(path, value string) error {
	if err := os.WriteFile(filepath.Join("/proc/sys", path), []byte(value), 0o644); err != nil {
		return fmt.Errorf("sysctl %s=%s: %w", strings.ReplaceAll(path, "/", "."), value, err)
	}
	return nil
}

func familyName(family int) string {
	if family == unix.AF_INET6 {
		return "IPv6"
	}
	return "IPv4"
}

// ipv6Enabled reports whether the namespace's loopback takes IPv6 routes.
func ipv6Enabled() bool {
	v, err := os.ReadFile("/proc/sys/net/ipv6/conf/lo/disable_ipv6")
	return err == nil && strings.TrimSpace(string(v)) == "0"
}
