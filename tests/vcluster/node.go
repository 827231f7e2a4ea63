package vcluster

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"path/filepath"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

// Node is one node: a network namespace on the underlay that routes for its
// pods.
type Node struct {
	Name string
	// IP is the node's underlay address (its Kubernetes InternalIP).
	IP netip.Addr
	// PodCIDR is the range its pods' addresses come from.
	PodCIDR netip.Prefix
	// NetnsName is the name under /run/netns (`ip netns exec NAME ...`);
	// NetnsPath the file.
	NetnsName, NetnsPath string
	// SwitchIfname is the underlay veth's end in the switch namespace; the
	// node's end is UnderlayIfname.
	SwitchIfname string
	// CgroupPath is the node's cgroup v2 directory; its pods' directories,
	// and nothing else, are below it, so a program attached here sees every
	// pod of the node.
	CgroupPath string
	// HostCgroupPath is where Run and Start put the node's own programs
	// (agent, proxy): beside CgroupPath, under the cluster's directory.
	HostCgroupPath string

	c *Cluster
}

// hashName derives a unique interface name of at most 15 characters.
func hashName(prefix string, parts ...string) string {
	h := sha256.New()
	for _, p := range parts {
		h.Write([]byte(p))
		h.Write([]byte{0})
	}
	return prefix + hex.EncodeToString(h.Sum(nil))[:15-len(prefix)]
}

func (c *Cluster) makeSwitch() error {
	if err := c.newNetns(c.switchNS); err != nil {
		return err
	}
	err := setSysctls(c.switchNS,
		sysctl{key: "net.ipv6.conf.all.disable_ipv6", value: "1"},
		sysctl{key: "net.ipv6.conf.default.disable_ipv6", value: "1"},
		// br_netfilter (built in on these kernels) would pass bridged frames
		// through the switch's iptables; the underlay is a plain switch.
		sysctl{key: "net.bridge.bridge-nf-call-iptables", value: "0", optional: true},
		sysctl{key: "net.bridge.bridge-nf-call-ip6tables", value: "0", optional: true},
		sysctl{key: "net.bridge.bridge-nf-call-arptables", value: "0", optional: true},
	)
	if err != nil {
		return err
	}
	h, err := handleAt(c.switchNS)
	if err != nil {
		return err
	}
	defer h.Close()
	if err := linkUp(h, "lo"); err != nil {
		return err
	}
	br := &netlink.Bridge{LinkAttrs: netlink.LinkAttrs{Name: BridgeName}}
	if err := h.LinkAdd(br); err != nil {
		return fmt.Errorf("add bridge %s: %w", BridgeName, err)
	}
	return linkUp(h, BridgeName)
}

func (c *Cluster) makeNode(nc NodeConfig) (*Node, error) {
	n := &Node{
		Name:         nc.Name,
		IP:           netip.MustParseAddr(nc.IP),
		PodCIDR:      netip.MustParsePrefix(nc.PodCIDR),
		NetnsName:    c.name + "_node_" + nc.Name,
		SwitchIfname: hashName("sw", c.name, nc.Name),
		CgroupPath:   filepath.Join(c.cgDir, nc.Name),
		// '_' never occurs in node names, so this cannot be a node's dir.
		HostCgroupPath: filepath.Join(c.cgDir, "host_"+nc.Name),
		c:              c,
	}
	n.NetnsPath = netnsPath(n.NetnsName)
	for _, dir := range []string{n.CgroupPath, n.HostCgroupPath} {
		if err := os.Mkdir(dir, 0o755); err != nil {
			return nil, fmt.Errorf("node cgroup: %w", err)
		}
	}
	if err := c.newNetns(n.NetnsName); err != nil {
		return nil, err
	}
	// Defaults first: interfaces made later inherit them.
	err := setSysctls(n.NetnsName,
		sysctl{key: "net.ipv4.ip_forward", value: "1"},
		sysctl{key: "net.ipv4.conf.all.rp_filter", value: "0"},
		sysctl{key: "net.ipv4.conf.default.rp_filter", value: "0"},
		sysctl{key: "net.ipv6.conf.all.disable_ipv6", value: "1"},
		sysctl{key: "net.ipv6.conf.default.disable_ipv6", value: "1"},
	)
	if err != nil {
		return nil, err
	}
	if err := addVeth(c.switchNS, n.SwitchIfname, nil, n.NetnsName, UnderlayIfname); err != nil {
		return nil, err
	}
	sw, err := handleAt(c.switchNS)
	if err != nil {
		return nil, err
	}
	defer sw.Close()
	l, err := sw.LinkByName(n.SwitchIfname)
	if err != nil {
		return nil, fmt.Errorf("find %s: %w", n.SwitchIfname, err)
	}
	if err := sw.LinkSetMasterByIndex(l, mustIndex(sw, BridgeName)); err != nil {
		return nil, fmt.Errorf("attach %s to %s: %w", n.SwitchIfname, BridgeName, err)
	}
	if err := sw.LinkSetUp(l); err != nil {
		return nil, fmt.Errorf("set %s up: %w", n.SwitchIfname, err)
	}
	h, err := handleAt(n.NetnsName)
	if err != nil {
		return nil, err
	}
	defer h.Close()
	if err := linkUp(h, "lo"); err != nil {
		return nil, err
	}
	eth, err := h.LinkByName(UnderlayIfname)
	if err != nil {
		return nil, fmt.Errorf("find %s: %w", UnderlayIfname, err)
	}
	addr := &netlink.Addr{IPNet: ipNet(netip.PrefixFrom(n.IP, c.underlay.Bits()))}
	if err := h.AddrAdd(eth, addr); err != nil {
		return nil, fmt.Errorf("address %s on %s: %w", addr, UnderlayIfname, err)
	}
	if err := h.LinkSetUp(eth); err != nil {
		return nil, fmt.Errorf("set %s up: %w", UnderlayIfname, err)
	}
	return n, nil
}

// routeNodes gives every node a route to every other node's pod CIDR.
func (c *Cluster) routeNodes() error {
	for _, n := range c.nodes {
		h, err := handleAt(n.NetnsName)
		if err != nil {
			return err
		}
		eth, err := h.LinkByName(UnderlayIfname)
		if err != nil {
			h.Close()
			return fmt.Errorf("node %s: find %s: %w", n.Name, UnderlayIfname, err)
		}
		for _, o := range c.nodes {
			if o == n {
				continue
			}
			r := &netlink.Route{LinkIndex: eth.Attrs().Index, Dst: ipNet(o.PodCIDR), Gw: net.IP(o.IP.AsSlice())}
			if err := h.RouteAdd(r); err != nil {
				h.Close()
				return fmt.Errorf("node %s: route %s via %s: %w", n.Name, o.PodCIDR, o.IP, err)
			}
		}
		h.Close()
	}
	return nil
}

// addVeth creates a veth pair with one end in each namespace.
func addVeth(ns, name string, mac net.HardwareAddr, peerNS, peerName string) error {
	peer, err := netns.GetFromPath(netnsPath(peerNS))
	if err != nil {
		return fmt.Errorf("open netns %s: %w", peerNS, err)
	}
	defer peer.Close()
	h, err := handleAt(ns)
	if err != nil {
		return err
	}
	defer h.Close()
	v := &netlink.Veth{
		LinkAttrs:     netlink.LinkAttrs{Name: name, HardwareAddr: mac},
		PeerName:      peerName,
		PeerNamespace: netlink.NsFd(peer),
	}
	if err := h.LinkAdd(v); err != nil {
		if errors.Is(err, unix.EEXIST) {
			return fmt.Errorf("add veth %s: name taken in %s or %s: %w", name, ns, peerNS, err)
		}
		return fmt.Errorf("add veth %s (peer %s in %s): %w", name, peerName, peerNS, err)
	}
	return nil
}

func linkUp(h *netlink.Handle, name string) error {
	l, err := h.LinkByName(name)
	if err != nil {
		return fmt.Errorf("find %s: %w", name, err)
	}
	if err := h.LinkSetUp(l); err != nil {
		return fmt.Errorf("set %s up: %w", name, err)
	}
	return nil
}

func mustIndex(h *netlink.Handle, name string) int {
	l, err := h.LinkByName(name)
	if err != nil {
		return 0 // LinkSetMasterByIndex then fails with a clear error
	}
	return l.Attrs().Index
}

func ipNet(p netip.Prefix) *net.IPNet {
	return &net.IPNet{IP: net.IP(p.Addr().AsSlice()), Mask: net.CIDRMask(p.Bits(), p.Addr().BitLen())}
}

// Run runs a command in the node's network namespace and HostCgroupPath
// and returns its stdout; a failure's error carries stderr and wraps
// *exec.ExitError.
func (n *Node) Run(ctx context.Context, args ...string) ([]byte, error) {
	return n.c.run(ctx, n.spec(), nil, args)
}

// Start starts a long-running program in the node's network namespace, for
// example an agent or a proxy. Close kills it.
func (n *Node) Start(ctx context.Context, args ...string) (*Process, error) {
	return n.c.spawn(ctx, n.spec(), nil, args)
}

func (n *Node) spec() runSpec {
	return runSpec{netns: n.NetnsName, cgroup: n.HostCgroupPath, env: []string{"NODE_NAME=" + n.Name, "NODE_IP=" + n.IP.String()}}
}

// InNetns runs f on an OS thread that is inside the node's network
// namespace, for in-process work such as attaching BPF programs or opening
// sockets there.
func (n *Node) InNetns(f func() error) error { return inNetns(n.NetnsName, f) }

// Netlink opens a netlink handle in the node's namespace; close it.
func (n *Node) Netlink() (*netlink.Handle, error) { return handleAt(n.NetnsName) }

// BPFFSDir returns the node's pin directory,
// /sys/fs/bpf/nodemesh-<cluster>/<node>, creating it on first use.
func (n *Node) BPFFSDir() (string, error) { return n.c.bpffsDir(n.Name) }

// HostVeth is the name of the pod's host-side veth in this node's
// namespace, or "" when the pod runs on another node.
func (n *Node) HostVeth(p *Pod) string {
	if p == nil || p.Node != n.Name {
		return ""
	}
	return p.HostIfname
}
