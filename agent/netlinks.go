package agent

import (
	"context"
	"fmt"
	"net/netip"

	"github.com/vishvananda/netlink"
)

// NetlinkLinks implements Links with rtnetlink in the agent's network
// namespace (the node's).
type NetlinkLinks struct{}

// InterfaceFor implements Links: the interface of the route to addr.
func (NetlinkLinks) InterfaceFor(addr netip.Addr) (string, int, error) {
	routes, err := netlink.RouteGet(addr.AsSlice())
	if err != nil || len(routes) == 0 {
		return "", 0, fmt.Errorf("no route to %s: %v", addr, err)
	}
	l, err := netlink.LinkByIndex(routes[0].LinkIndex)
	if err != nil {
		return "", 0, fmt.Errorf("route to %s: interface %d: %w", addr, routes[0].LinkIndex, err)
	}
	if l.Type() != "veth" {
		return "", 0, fmt.Errorf("route to %s goes through %s (%s), not a pod veth", addr, l.Attrs().Name, l.Type())
	}
	return l.Attrs().Name, l.Attrs().Index, nil
}

// Watch implements Links: every veth now, then every veth that appears.
func (NetlinkLinks) Watch(ctx context.Context, fn func(string)) error {
	updates := make(chan netlink.LinkUpdate, 64)
	done := make(chan struct{})
	defer close(done)
	if err := netlink.LinkSubscribe(updates, done); err != nil {
		return fmt.Errorf("subscribe to interface changes: %w", err)
	}
	links, err := netlink.LinkList()
	if err != nil {
		return fmt.Errorf("list interfaces: %w", err)
	}
	for _, l := range links {
		if l.Type() == "veth" {
			fn(l.Attrs().Name)
		}
	}
	for {
		select {
		case <-ctx.Done():
			return nil
		case u, ok := <-updates:
			if !ok {
				return fmt.Errorf("interface change subscription closed")
			}
			if u.Link != nil && u.Link.Type() == "veth" && u.Header.Type == 16 /* RTM_NEWLINK */ {
				fn(u.Link.Attrs().Name)
			}
		}
	}
}
