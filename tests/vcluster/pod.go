package vcluster

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"slices"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// HostVethMAC is the MAC of every host-side pod veth (Calico's choice): the
// pod's permanent neighbour entry for Gateway points at it.
var HostVethMAC = net.HardwareAddr{0xee, 0xee, 0xee, 0xee, 0xee, 0xee}

// Pod is one pod: a network namespace joined to its node by a veth pair, and
// a cgroup v2 directory its programs run in.
type Pod struct {
	Namespace, Name, Node string
	IP                    netip.Addr
	Labels                map[string]string
	Ports                 []Port
	ServiceAccount        string
	// NetnsName is the name under /run/netns; NetnsPath the file.
	NetnsName, NetnsPath string
	// HostIfname is the host-side veth in the node's namespace ("lxc" and a
	// hash, 15 characters); the pod's side is PodIfname.
	HostIfname string
	// CgroupPath is the pod's cgroup v2 directory.
	CgroupPath string

	c       *Cluster
	deleted bool // guarded by c.mu
}

// AddPod creates a pod on a node. The zero PodConfig.IP takes the next free
// address of the node's pod CIDR; Namespace defaults to "default".
func (c *Cluster) AddPod(ctx context.Context, pc PodConfig) (_ *Pod, err error) {
	if pc.Namespace == "" {
		pc.Namespace = "default"
	}
	key := pc.Namespace + "/" + pc.Name
	if err := pc.validate(); err != nil {
		return nil, fmt.Errorf("add pod %s: %w", key, err)
	}
	if err := ctx.Err(); err != nil {
		return nil, fmt.Errorf("add pod %s: %w", key, err)
	}
	node := c.Node(pc.Node)
	if node == nil {
		return nil, fmt.Errorf("add pod %s: no node %q", key, pc.Node)
	}
	c.ops.RLock()
	defer c.ops.RUnlock()
	p := &Pod{
		Namespace:      pc.Namespace,
		Name:           pc.Name,
		Node:           node.Name,
		Labels:         maps.Clone(pc.Labels),
		Ports:          slices.Clone(pc.Ports),
		ServiceAccount: pc.ServiceAccount,
		NetnsName:      c.name + "_pod_" + pc.Namespace + "_" + pc.Name,
		HostIfname:     hashName("lxc", c.name, pc.Namespace, pc.Name),
		CgroupPath:     filepath.Join(node.CgroupPath, pc.Namespace+"_"+pc.Name),
		c:              c,
	}
	p.NetnsPath = netnsPath(p.NetnsName)
	if p.IP, err = c.reserve(key, node, pc.IP); err != nil {
		return nil, fmt.Errorf("add pod %s: %w", key, err)
	}
	defer func() {
		if err != nil {
			err = errors.Join(fmt.Errorf("add pod %s: %w", key, err), c.teardownPod(p))
		}
	}()
	if err := os.Mkdir(p.CgroupPath, 0o755); err != nil {
		return nil, fmt.Errorf("pod cgroup: %w", err)
	}
	if err := c.newNetns(p.NetnsName); err != nil {
		return nil, err
	}
	if err := p.wire(node); err != nil {
		return nil, err
	}
	c.mu.Lock()
	c.pods[key] = p
	c.mu.Unlock()
	return p, nil
}

// reserve claims the pod's name and address.
func (c *Cluster) reserve(key string, node *Node, want netip.Addr) (netip.Addr, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closed {
		return netip.Addr{}, errClosed
	}
	if _, dup := c.pods[key]; dup {
		return netip.Addr{}, errors.New("pod exists")
	}
	for _, owner := range c.used {
		if owner == key {
			return netip.Addr{}, errors.New("pod is being created")
		}
	}
	first, last := node.PodCIDR.Addr().Next(), lastAddr(node.PodCIDR)
	if want.IsValid() {
		if !node.PodCIDR.Contains(want) || want.Less(first) || !want.Less(last) {
			return netip.Addr{}, fmt.Errorf("IP %s is not a host address of node %s's pod CIDR %s", want, node.Name, node.PodCIDR)
		}
		if other := c.used[want]; other != "" {
			return netip.Addr{}, fmt.Errorf("IP %s is pod %s's", want, other)
		}
		c.used[want] = key
		return want, nil
	}
	for a := first; a.Less(last); a = a.Next() {
		if c.used[a] == "" {
			c.used[a] = key
			return a, nil
		}
	}
	return netip.Addr{}, fmt.Errorf("node %s's pod CIDR %s is full", node.Name, node.PodCIDR)
}

// wire connects the pod's namespace to its node.
func (p *Pod) wire(node *Node) error {
	if err := setSysctls(p.NetnsName,
		sysctl{key: "net.ipv6.conf.all.disable_ipv6", value: "1"},
		sysctl{key: "net.ipv6.conf.default.disable_ipv6", value: "1"},
	); err != nil {
		return err
	}
	if err := addVeth(node.NetnsName, p.HostIfname, HostVethMAC, p.NetnsName, PodIfname); err != nil {
		return err
	}
	if err := setSysctls(node.NetnsName,
		sysctl{key: "net.ipv4.conf." + p.HostIfname + ".proxy_arp", value: "1"},
		sysctl{key: "net.ipv4.conf." + p.HostIfname + ".rp_filter", value: "0"},
		sysctl{key: "net.ipv4.neigh." + p.HostIfname + ".proxy_delay", value: "0"},
	); err != nil {
		return err
	}
	nh, err := handleAt(node.NetnsName)
	if err != nil {
		return err
	}
	defer nh.Close()
	host, err := nh.LinkByName(p.HostIfname)
	if err != nil {
		return fmt.Errorf("find %s: %w", p.HostIfname, err)
	}
	if err := nh.LinkSetUp(host); err != nil {
		return fmt.Errorf("set %s up: %w", p.HostIfname, err)
	}
	toPod := &netlink.Route{LinkIndex: host.Attrs().Index, Dst: ipNet(netip.PrefixFrom(p.IP, 32)), Scope: netlink.SCOPE_LINK}
	if err := nh.RouteAdd(toPod); err != nil {
		return fmt.Errorf("node route %s dev %s: %w", p.IP, p.HostIfname, err)
	}

	ph, err := handleAt(p.NetnsName)
	if err != nil {
		return err
	}
	defer ph.Close()
	if err := linkUp(ph, "lo"); err != nil {
		return err
	}
	eth, err := ph.LinkByName(PodIfname)
	if err != nil {
		return fmt.Errorf("find %s: %w", PodIfname, err)
	}
	idx := eth.Attrs().Index
	if err := ph.AddrAdd(eth, &netlink.Addr{IPNet: ipNet(netip.PrefixFrom(p.IP, 32))}); err != nil {
		return fmt.Errorf("address %s/32: %w", p.IP, err)
	}
	if err := ph.LinkSetUp(eth); err != nil {
		return fmt.Errorf("set %s up: %w", PodIfname, err)
	}
	gw := net.IP(Gateway.AsSlice())
	if err := ph.RouteAdd(&netlink.Route{LinkIndex: idx, Dst: ipNet(netip.PrefixFrom(Gateway, 32)), Scope: netlink.SCOPE_LINK}); err != nil {
		return fmt.Errorf("route %s dev %s: %w", Gateway, PodIfname, err)
	}
	// The node has no default route, so proxy ARP would not answer for the
	// gateway: pin its neighbour entry.
	neigh := &netlink.Neigh{LinkIndex: idx, Family: unix.AF_INET, State: netlink.NUD_PERMANENT, IP: gw, HardwareAddr: HostVethMAC}
	if err := ph.NeighAdd(neigh); err != nil {
		return fmt.Errorf("neighbour %s: %w", Gateway, err)
	}
	if err := ph.RouteAdd(&netlink.Route{LinkIndex: idx, Gw: gw}); err != nil {
		return fmt.Errorf("default route via %s: %w", Gateway, err)
	}
	return nil
}

// DeletePod kills the pod's programs and removes its veth, namespace and
// cgroup.
func (c *Cluster) DeletePod(ctx context.Context, namespace, name string) error {
	key := namespace + "/" + name
	c.ops.RLock()
	defer c.ops.RUnlock()
	c.mu.Lock()
	p := c.pods[key]
	if p == nil || c.closed {
		c.mu.Unlock()
		return fmt.Errorf("delete pod %s: no such pod", key)
	}
	p.deleted = true
	delete(c.pods, key)
	c.mu.Unlock()
	if err := c.teardownPod(p); err != nil {
		return fmt.Errorf("delete pod %s: %w", key, err)
	}
	return nil
}

// teardownPod removes what AddPod made for p, whatever of it exists, and
// frees its address.
func (c *Cluster) teardownPod(p *Pod) error {
	c.killPodProcs(p)
	var errs []error
	if err := killCgroup(p.CgroupPath); err != nil {
		errs = append(errs, fmt.Errorf("kill cgroup: %w", err))
	}
	// Deleting the host veth removes the pod's end and the node's route at
	// once, rather than whenever the kernel gets to freeing the namespace.
	if h, err := handleAt(c.nodeNetns(p.Node)); err == nil {
		if l, err := h.LinkByName(p.HostIfname); err == nil {
			if err := h.LinkDel(l); err != nil {
				errs = append(errs, fmt.Errorf("delete %s: %w", p.HostIfname, err))
			}
		}
		h.Close()
	}
	if err := deleteNetns(p.NetnsName); err != nil {
		errs = append(errs, err)
	} else {
		c.forgetNetns(p.NetnsName)
	}
	if err := removeCgroupTree(p.CgroupPath); err != nil {
		errs = append(errs, err)
	}
	c.mu.Lock()
	if c.used[p.IP] == p.Namespace+"/"+p.Name {
		delete(c.used, p.IP)
	}
	c.mu.Unlock()
	return errors.Join(errs...)
}

func (c *Cluster) nodeNetns(node string) string {
	if n := c.Node(node); n != nil {
		return n.NetnsName
	}
	return ""
}

func (p *Pod) spec() runSpec {
	return runSpec{netns: p.NetnsName, cgroup: p.CgroupPath, env: []string{
		"POD_NAME=" + p.Name, "POD_NAMESPACE=" + p.Namespace, "POD_IP=" + p.IP.String(), "NODE_NAME=" + p.Node,
	}}
}

// Start starts a program in the pod's network namespace and cgroup, with
// POD_NAME, POD_NAMESPACE, POD_IP and NODE_NAME set. The program is killed
// when ctx ends, when the pod is deleted and when the cluster closes.
func (p *Pod) Start(ctx context.Context, args ...string) (*Process, error) {
	return p.c.spawn(ctx, p.spec(), p, args)
}

// Exec runs a command in the pod's network namespace and cgroup and returns
// its stdout; a failure's error carries stderr and wraps *exec.ExitError.
func (p *Pod) Exec(ctx context.Context, args ...string) ([]byte, error) {
	return p.c.run(ctx, p.spec(), p, args)
}

// InNetns runs f on an OS thread inside the pod's network namespace (not
// its cgroup).
func (p *Pod) InNetns(f func() error) error { return inNetns(p.NetnsName, f) }

// Netlink opens a netlink handle in the pod's namespace; close it.
func (p *Pod) Netlink() (*netlink.Handle, error) { return handleAt(p.NetnsName) }

// String is namespace/name.
func (p *Pod) String() string { return p.Namespace + "/" + p.Name }
