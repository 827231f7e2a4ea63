package xds

// The RBAC filter sees a remote address, not the table keys it resolves to,
// so each key of a redirect entry becomes the exact set of addresses that
// resolve to it — the lookups policy.DirTable.Decide and the datapath make:
// the longest ipcache entry containing the address gives its identity and
// prefix ID (no entry: world, no prefix), and the address has the keys
// (identity), (any), (cidr, prefix) and, for world identities,
// (world-cidr, prefix).
//
// The ipcache entries form a tree by containment. The addresses resolving
// to a node of the tree are its prefix minus its children's prefixes, so the
// set of a key is a union of regions "prefix minus holes": one region per
// matching node, whose holes are the children that do not match entirely
// (their matching parts are regions of their own). A matching node inside a
// region that already covers it needs no region.

import (
	"cmp"
	"fmt"
	"net/netip"
	"slices"

	"github.com/nodemesh/nodemesh/identity"
	"github.com/nodemesh/nodemesh/policy"
)

type ipNode struct {
	prefix   netip.Prefix
	id       identity.NumericIdentity
	prefixID uint32
	parent   *ipNode
	children []*ipNode
}

// region is the addresses of prefix outside every hole.
type region struct {
	prefix netip.Prefix
	holes  []netip.Prefix
}

// addrSet is a set of addresses: every address, or a union of regions.
type addrSet struct {
	any     bool
	regions []region
}

// addrIndex answers "which addresses resolve to this key" for one node.
type addrIndex struct {
	byID       map[identity.NumericIdentity][]*ipNode
	byPrefixID map[uint32][]*ipNode
	sets       map[policy.PeerKey]addrSet
}

func isWorld(id identity.NumericIdentity) bool {
	return id == identity.World || id == identity.WorldIPv4 || id == identity.WorldIPv6
}

func newAddrIndex(entries []policy.IPCacheEntry) (*addrIndex, error) {
	x := &addrIndex{byID: map[identity.NumericIdentity][]*ipNode{}, byPrefixID: map[uint32][]*ipNode{}, sets: map[policy.PeerKey]addrSet{}}
	roots := []*ipNode{
		{prefix: netip.PrefixFrom(netip.IPv4Unspecified(), 0), id: identity.WorldIPv4},
		{prefix: netip.PrefixFrom(netip.IPv6Unspecified(), 0), id: identity.WorldIPv6},
	}
	var nodes []*ipNode
	seen := map[netip.Prefix]bool{}
	for _, e := range entries {
		p := e.Prefix
		if !p.IsValid() || p.Addr().Is4In6() || p.Masked() != p {
			return nil, fmt.Errorf("ipcache entry %v: not a valid masked prefix", p)
		}
		if seen[p] {
			return nil, fmt.Errorf("ipcache entry %v: duplicate prefix", p)
		}
		seen[p] = true
		if p.Bits() == 0 {
			r := roots[0]
			if p.Addr().Is6() {
				r = roots[1]
			}
			r.id, r.prefixID = e.Identity, e.PrefixID
			continue
		}
		nodes = append(nodes, &ipNode{prefix: p, id: e.Identity, prefixID: e.PrefixID})
	}
	slices.SortFunc(nodes, func(a, b *ipNode) int {
		if c := a.prefix.Addr().Compare(b.prefix.Addr()); c != 0 {
			return c
		}
		return cmp.Compare(a.prefix.Bits(), b.prefix.Bits())
	})
	// Sorted by address then length, every node's ancestors precede it, and
	// the stack holds the chain of ancestors of the last node.
	stack := []*ipNode{roots[0]}
	for _, n := range nodes {
		if n.prefix.Addr().Is6() && stack[0] != roots[1] {
			stack = []*ipNode{roots[1]}
		}
		for len(stack) > 1 && !stack[len(stack)-1].prefix.Contains(n.prefix.Addr()) {
			stack = stack[:len(stack)-1]
		}
		n.parent = stack[len(stack)-1]
		n.parent.children = append(n.parent.children, n)
		stack = append(stack, n)
	}
	for _, n := range append(roots, nodes...) {
		x.byID[n.id] = append(x.byID[n.id], n)
		if n.prefixID != 0 {
			x.byPrefixID[n.prefixID] = append(x.byPrefixID[n.prefixID], n)
		}
	}
	return x, nil
}

func (n *ipNode) matches(k policy.PeerKey) bool {
	switch k.Kind {
	case policy.PeerIdentity:
		return uint32(n.id) == k.ID
	case policy.PeerCIDR:
		return n.prefixID != 0 && n.prefixID == k.ID
	case policy.PeerWorldCIDR:
		return n.prefixID != 0 && n.prefixID == k.ID && isWorld(n.id)
	}
	return false
}

// set returns the addresses that resolve to key k.
func (x *addrIndex) set(k policy.PeerKey) addrSet {
	if k.Kind == policy.PeerIdentity && k.ID == 0 {
		return addrSet{any: true}
	}
	if s, ok := x.sets[k]; ok {
		return s
	}
	var cands []*ipNode
	if k.Kind == policy.PeerIdentity {
		cands = x.byID[identity.NumericIdentity(k.ID)]
	} else {
		cands = x.byPrefixID[k.ID]
	}
	full := map[*ipNode]bool{}
	var fully func(n *ipNode) bool
	fully = func(n *ipNode) bool {
		if v, ok := full[n]; ok {
			return v
		}
		v := n.matches(k)
		for _, c := range n.children {
			v = v && fully(c)
		}
		full[n] = v
		return v
	}
	var s addrSet
	for _, n := range cands {
		if !n.matches(k) || (n.parent != nil && n.parent.matches(k) && fully(n)) {
			continue
		}
		r := region{prefix: n.prefix}
		for _, c := range n.children {
			if !fully(c) {
				r.holes = append(r.holes, c.prefix)
			}
		}
		s.regions = append(s.regions, r)
	}
	sortRegions(s.regions)
	x.sets[k] = s
	return s
}

// union returns the addresses resolving to any of keys.
func (x *addrIndex) union(keys []policy.PeerKey) addrSet {
	var out addrSet
	seen := map[netip.Prefix][]region{}
	for _, k := range keys {
		s := x.set(k)
		if s.any {
			return s
		}
		for _, r := range s.regions {
			if !slices.ContainsFunc(seen[r.prefix], func(o region) bool { return slices.Equal(o.holes, r.holes) }) {
				seen[r.prefix] = append(seen[r.prefix], r)
				out.regions = append(out.regions, r)
			}
		}
	}
	sortRegions(out.regions)
	return out
}

func comparePrefix(a, b netip.Prefix) int {
	if c := a.Addr().Compare(b.Addr()); c != 0 {
		return c
	}
	return cmp.Compare(a.Bits(), b.Bits())
}

func sortRegions(rs []region) {
	slices.SortFunc(rs, func(a, b region) int {
		if c := comparePrefix(a.prefix, b.prefix); c != 0 {
			return c
		}
		return slices.CompareFunc(a.holes, b.holes, comparePrefix)
	})
}
