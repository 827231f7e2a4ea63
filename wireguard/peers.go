package wireguard

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"slices"
	"strings"
	"time"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
	"golang.zx2c4.com/wireguard/wgctrl/wgtypes"
)

// Peer is another node as this node's device sees it.
type Peer struct {
	// PublicKey is the peer node's public key.
	PublicKey wgtypes.Key
	// Endpoint is the peer node's underlay address and listen port.
	Endpoint netip.AddrPort
	// AllowedIPs are the addresses behind the peer: its pod CIDRs (and
	// its node IP when host traffic is encrypted). Packets to them are
	// routed into the device, and packets from them are accepted only
	// from this peer.
	AllowedIPs []netip.Prefix
	// Name is the peer's node name, for Status.
	Name string
}

// Status is what the device reports.
type Status struct {
	Interface    string
	Kind         string // KindKernel or KindUserspace
	PublicKey    wgtypes.Key
	ListenPort   int
	FirewallMark int
	Peers        []PeerStatus // by name, then public key
}

// PeerStatus is one peer of Status.
type PeerStatus struct {
	Name       string // "" for a peer SetPeers did not set (an adopted device's)
	PublicKey  wgtypes.Key
	Endpoint   netip.AddrPort // the configured one, or where the peer last sent from
	AllowedIPs []netip.Prefix
	// LastHandshake is zero before the first handshake.
	LastHandshake time.Time
	// ReceiveBytes and TransmitBytes count the peer's UDP payload,
	// handshakes and keepalives included.
	ReceiveBytes, TransmitBytes int64
}

// SetPeers makes the device's peers exactly peers, in one wgctrl call:
// new peers are added, existing ones get their endpoint and AllowedIPs
// replaced (their sessions continue), others are removed. It then makes
// the route table (Config.RouteTable) hold exactly one route per allowed
// prefix, through the device (scope link, no metric: the table is
// Nodemesh's alone), so a removed peer's prefixes are no longer routed
// into the tunnel. Calling it again with the same peers changes nothing.
func (d *Device) SetPeers(peers []Peer) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.closed {
		return fmt.Errorf("wireguard %s: the device is closed", d.cfg.Interface)
	}
	cur, err := d.wg.Device(d.cfg.Interface)
	if err != nil {
		return fmt.Errorf("wireguard %s: read device: %w", d.cfg.Interface, err)
	}
	if err := validatePeers(peers, cur.PublicKey); err != nil {
		return fmt.Errorf("wireguard %s: set peers: %w", d.cfg.Interface, err)
	}
	keepalive := max(d.cfg.PersistentKeepalive, 0).Round(time.Second)
	want := map[wgtypes.Key]bool{}
	var cfgs []wgtypes.PeerConfig
	var prefixes []netip.Prefix
	for _, p := range peers {
		want[p.PublicKey] = true
		pc := wgtypes.PeerConfig{
			PublicKey:                   p.PublicKey,
			Endpoint:                    net.UDPAddrFromAddrPort(p.Endpoint),
			ReplaceAllowedIPs:           true,
			PersistentKeepaliveInterval: &keepalive,
		}
		for _, pre := range p.AllowedIPs {
			pre = pre.Masked()
			prefixes = append(prefixes, pre)
			pc.AllowedIPs = append(pc.AllowedIPs, net.IPNet{IP: pre.Addr().AsSlice(), Mask: net.CIDRMask(pre.Bits(), pre.Addr().BitLen())})
		}
		cfgs = append(cfgs, pc)
	}
	var removed []string
	for _, p := range cur.Peers {
		if !want[p.PublicKey] {
			cfgs = append(cfgs, wgtypes.PeerConfig{PublicKey: p.PublicKey, Remove: true})
			removed = append(removed, d.peerName(p.PublicKey))
		}
	}
	if err := d.wg.ConfigureDevice(d.cfg.Interface, wgtypes.Config{Peers: cfgs}); err != nil {
		return fmt.Errorf("wireguard %s: configure peers: %w", d.cfg.Interface, err)
	}
	had := map[wgtypes.Key]bool{}
	for _, p := range cur.Peers {
		had[p.PublicKey] = true
	}
	names := map[wgtypes.Key]string{}
	for _, p := range peers {
		names[p.PublicKey] = p.Name
		if !had[p.PublicKey] {
			d.log.Info("wireguard peer added", "peer", p.Name, "public_key", p.PublicKey.String(), "endpoint", p.Endpoint.String())
		}
	}
	for _, n := range removed {
		d.log.Info("wireguard peer removed", "peer", n)
	}
	d.names = names
	if err := d.syncRoutes(prefixes); err != nil {
		return fmt.Errorf("wireguard %s: %w", d.cfg.Interface, err)
	}
	return nil
}

func (d *Device) peerName(k wgtypes.Key) string {
	if n := d.names[k]; n != "" {
		return n
	}
	return k.String()
}

func validatePeers(peers []Peer, self wgtypes.Key) error {
	var errs []error
	keys := map[wgtypes.Key]string{}
	owner := map[netip.Prefix]string{}
	for i, p := range peers {
		name := p.Name
		if name == "" {
			name = fmt.Sprintf("peers[%d]", i)
		}
		switch {
		case p.PublicKey == wgtypes.Key{}:
			errs = append(errs, fmt.Errorf("peer %s: no public key", name))
		case p.PublicKey == self:
			errs = append(errs, fmt.Errorf("peer %s: has this node's own public key", name))
		case keys[p.PublicKey] != "":
			errs = append(errs, fmt.Errorf("peer %s: same public key as peer %s", name, keys[p.PublicKey]))
		}
		keys[p.PublicKey] = name
		if !p.Endpoint.IsValid() || p.Endpoint.Port() == 0 {
			errs = append(errs, fmt.Errorf("peer %s: endpoint %q is not an address and port", name, p.Endpoint))
		}
		for _, pre := range p.AllowedIPs {
			if !pre.IsValid() {
				errs = append(errs, fmt.Errorf("peer %s: invalid allowed prefix", name))
				continue
			}
			pre = pre.Masked()
			if o := owner[pre]; o != "" && o != name {
				// WireGuard would silently give it to the last peer.
				errs = append(errs, fmt.Errorf("peer %s: allowed prefix %s is also peer %s's", name, pre, o))
			}
			owner[pre] = name
		}
	}
	return errors.Join(errs...)
}

// syncRoutes makes the route table hold exactly one route through the
// device per prefix.
func (d *Device) syncRoutes(prefixes []netip.Prefix) error {
	want := map[netip.Prefix]bool{}
	for _, p := range prefixes {
		want[p] = true
	}
	wantFallback := map[netip.Prefix]bool{}
	for _, p := range d.fallback {
		wantFallback[p] = true
	}
	var errs []error
	for _, fam := range []int{netlink.FAMILY_V4, netlink.FAMILY_V6} {
		routes, err := d.nl.RouteListFiltered(fam, &netlink.Route{Table: d.cfg.RouteTable}, netlink.RT_FILTER_TABLE)
		if err != nil {
			if fam == netlink.FAMILY_V6 && errors.Is(err, unix.EAFNOSUPPORT) {
				continue
			}
			errs = append(errs, fmt.Errorf("list routes of table %d: %w", d.cfg.RouteTable, err))
			continue
		}
		for _, r := range routes {
			dst := routeDst(r, fam)
			if want[dst] && r.LinkIndex == d.index && r.Gw == nil {
				delete(want, dst) // in place already
				continue
			}
			if r.Type == unix.RTN_BLACKHOLE && r.Priority == fallbackMetric && wantFallback[dst] {
				delete(wantFallback, dst)
				continue
			}
			if err := d.nl.RouteDel(&r); err != nil && !errors.Is(err, unix.ESRCH) {
				errs = append(errs, fmt.Errorf("remove route %s from table %d: %w", dst, d.cfg.RouteTable, err))
			}
		}
	}
	for p := range want {
		r := &netlink.Route{
			LinkIndex: d.index,
			Dst:       &net.IPNet{IP: p.Addr().AsSlice(), Mask: net.CIDRMask(p.Bits(), p.Addr().BitLen())},
			Table:     d.cfg.RouteTable,
			Scope:     netlink.SCOPE_LINK,
		}
		if err := d.nl.RouteReplace(r); err != nil {
			errs = append(errs, fmt.Errorf("route %s dev %s table %d: %w", p, d.cfg.Interface, d.cfg.RouteTable, err))
		}
	}
	for p := range wantFallback {
		r := &netlink.Route{
			Dst:      &net.IPNet{IP: p.Addr().AsSlice(), Mask: net.CIDRMask(p.Bits(), p.Addr().BitLen())},
			Table:    d.cfg.RouteTable,
			Type:     unix.RTN_BLACKHOLE,
			Priority: fallbackMetric,
		}
		if err := d.nl.RouteAdd(r); err != nil && !errors.Is(err, unix.EEXIST) {
			errs = append(errs, fmt.Errorf("blackhole %s table %d: %w", p, d.cfg.RouteTable, err))
		}
	}
	return errors.Join(errs...)
}

// fallbackMetric is the metric of SetFallback's blackhole routes: behind
// the device's own routes (metric 0) for the same prefix.
const fallbackMetric = 4096

// SetFallback makes the route table drop traffic to prefixes that no
// peer's route covers: a blackhole route per prefix, behind the device's
// routes. Unlike those, a blackhole does not depend on the link, so while
// the device is down (a userspace device's process restarting) or a
// node's key is unknown, traffic to the prefixes is dropped instead of
// falling through to the main table's routes in plaintext. The
// prefixes are typically every other node's pod CIDRs. nil removes them.
func (d *Device) SetFallback(prefixes []netip.Prefix) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.closed {
		return fmt.Errorf("wireguard %s: the device is closed", d.cfg.Interface)
	}
	d.fallback = slices.Clone(prefixes)
	cur, err := d.wg.Device(d.cfg.Interface)
	if err != nil {
		return fmt.Errorf("wireguard %s: read device: %w", d.cfg.Interface, err)
	}
	var have []netip.Prefix
	for _, p := range cur.Peers {
		for _, a := range p.AllowedIPs {
			if pre, ok := netipPrefix(a); ok {
				have = append(have, pre)
			}
		}
	}
	return d.syncRoutes(have)
}

func netipPrefix(n net.IPNet) (netip.Prefix, bool) {
	a, ok := netip.AddrFromSlice(n.IP)
	if !ok {
		return netip.Prefix{}, false
	}
	ones, _ := n.Mask.Size()
	return netip.PrefixFrom(a.Unmap(), ones).Masked(), true
}

func routeDst(r netlink.Route, fam int) netip.Prefix {
	if r.Dst == nil {
		if fam == netlink.FAMILY_V6 {
			return netip.PrefixFrom(netip.IPv6Unspecified(), 0)
		}
		return netip.PrefixFrom(netip.IPv4Unspecified(), 0)
	}
	a, _ := netip.AddrFromSlice(r.Dst.IP)
	ones, _ := r.Dst.Mask.Size()
	return netip.PrefixFrom(a.Unmap(), ones)
}

// rule is the ip rule "not fwmark MARK/MARK lookup TABLE" of a family.
func (d *Device) rule(fam int) *netlink.Rule {
	r := netlink.NewRule()
	r.Family = fam
	r.Priority = d.cfg.RulePriority
	r.Table = d.cfg.RouteTable
	r.Mark = uint32(d.cfg.FirewallMark)
	m := uint32(d.cfg.FirewallMark)
	r.Mask = &m
	r.Invert = true
	return r
}

func (d *Device) hasRule(fam int) (bool, error) {
	rules, err := d.nl.RuleList(fam)
	if err != nil {
		return false, err
	}
	want := d.rule(fam)
	for _, r := range rules {
		if r.Priority == want.Priority && r.Table == want.Table && r.Mark == want.Mark && r.Mask != nil && *r.Mask == *want.Mask && r.Invert {
			return true, nil
		}
	}
	return false, nil
}

// addRules installs the rule for IPv4, and for IPv6 where the namespace
// has it.
func (d *Device) addRules() error {
	for _, fam := range []int{netlink.FAMILY_V4, netlink.FAMILY_V6} {
		has, err := d.hasRule(fam)
		if err == nil && !has {
			err = d.nl.RuleAdd(d.rule(fam))
		}
		if err != nil {
			if fam == netlink.FAMILY_V6 && errors.Is(err, unix.EAFNOSUPPORT) {
				continue
			}
			return fmt.Errorf("wireguard %s: ip rule not fwmark 0x%x lookup %d: %w", d.cfg.Interface, d.cfg.FirewallMark, d.cfg.RouteTable, err)
		}
		d.families = append(d.families, fam)
	}
	return nil
}

func (d *Device) removeRules() error {
	var errs []error
	for _, fam := range d.families {
		if err := d.nl.RuleDel(d.rule(fam)); err != nil && !errors.Is(err, unix.ENOENT) {
			errs = append(errs, fmt.Errorf("wireguard %s: remove ip rule lookup %d: %w", d.cfg.Interface, d.cfg.RouteTable, err))
		}
	}
	d.families = nil
	return errors.Join(errs...)
}

// Status reads the device's state.
func (d *Device) Status() (Status, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.closed {
		return Status{}, fmt.Errorf("wireguard %s: the device is closed", d.cfg.Interface)
	}
	dev, err := d.wg.Device(d.cfg.Interface)
	if err != nil {
		return Status{}, fmt.Errorf("wireguard %s: read device: %w", d.cfg.Interface, err)
	}
	st := Status{Interface: d.cfg.Interface, Kind: d.kind, PublicKey: dev.PublicKey, ListenPort: dev.ListenPort, FirewallMark: dev.FirewallMark}
	for _, p := range dev.Peers {
		ps := PeerStatus{
			Name: d.names[p.PublicKey], PublicKey: p.PublicKey,
			LastHandshake: p.LastHandshakeTime,
			ReceiveBytes:  p.ReceiveBytes, TransmitBytes: p.TransmitBytes,
		}
		if p.Endpoint != nil {
			ap := p.Endpoint.AddrPort()
			ps.Endpoint = netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port())
		}
		for _, n := range p.AllowedIPs {
			a, _ := netip.AddrFromSlice(n.IP)
			ones, _ := n.Mask.Size()
			ps.AllowedIPs = append(ps.AllowedIPs, netip.PrefixFrom(a.Unmap(), ones))
		}
		slices.SortFunc(ps.AllowedIPs, func(a, b netip.Prefix) int { return strings.Compare(a.String(), b.String()) })
		st.Peers = append(st.Peers, ps)
	}
	slices.SortFunc(st.Peers, func(a, b PeerStatus) int {
		if c := strings.Compare(a.Name, b.Name); c != 0 {
			return c
		}
		return strings.Compare(a.PublicKey.String(), b.PublicKey.String())
	})
	return st, nil
}
