package policy

import (
	"net/netip"
	"sort"

	"github.com/nodemesh/nodemesh/identity"
	"github.com/nodemesh/nodemesh/l7policy"
)

// compileEnv is what compiling a table needs to know about the rest of the
// cluster; the Engine provides it.
type compileEnv interface {
	// selected lists the identities a selector selects, reserved included.
	selected(s *Selector) []identity.NumericIdentity
	// namedPorts are the named ports declared by any pod of an identity.
	namedPorts(id identity.NumericIdentity) []NamedPort
	// podIdentities lists the identities that have pods.
	podIdentities() []identity.NumericIdentity
	// prefixesIn lists the IDs of the registered prefixes a CIDR selector
	// selects.
	prefixesIn(c CIDRSelector) []uint32
}

// contrib is one rule's claim on a peer, protocol and port range.
type contrib struct {
	proto  Proto
	lo, hi uint16
	deny   bool
	l7     *l7policy.RuleSet // nil: every request
	auth   bool
	rule   *PeerRule
}

// compileTable compiles the policy of endpoint ep (any member of its class)
// from the blocks selecting it.
func compileTable(ep *Endpoint, blocks [2][]*Block, env compileEnv) (*Table, tableUses) {
	t := &Table{}
	var uses tableUses
	for _, d := range []Direction{Ingress, Egress} {
		dt := t.dir(d)
		contribs := map[PeerKey][]contrib{}
		var selected []string
		for _, b := range blocks[d] {
			dt.Enforced = dt.Enforced || b.DefaultDeny
			selected = append(selected, b.Policy.Ref)
			for _, r := range b.Deny {
				uses = uses.or(addRule(contribs, ep, d, r, true, env))
			}
			for _, r := range b.Allow {
				uses = uses.or(addRule(contribs, ep, d, r, false, env))
			}
		}
		if len(selected) > 0 {
			dt.Selected = sortedUnique(selected)
		}
		dt.byPeer = make(map[PeerKey][]Entry, len(contribs))
		for k, cs := range contribs {
			dt.byPeer[k] = buildEntries(k, cs)
		}
	}
	return t, uses
}

// tableUses records what a table depends on beyond the identities its
// selectors select, so the engine knows when to recompile it.
type tableUses struct {
	cidr            bool // depends on the set of registered prefixes
	egressNamedPort bool // depends on the named ports of remote identities
}

func (u tableUses) or(v tableUses) tableUses {
	return tableUses{u.cidr || v.cidr, u.egressNamedPort || v.egressNamedPort}
}

func expandProto(p Proto) []Proto {
	if p == ProtoAny {
		return PortProtos
	}
	return []Proto{p}
}

func addRule(out map[PeerKey][]contrib, ep *Endpoint, d Direction, r *PeerRule, deny bool, env compileEnv) tableUses {
	var uses tableUses
	var idKeys, cidrKeys []PeerKey
	if r.Peers == nil {
		idKeys = []PeerKey{{PeerIdentity, 0}}
	} else {
		seen := map[identity.NumericIdentity]bool{}
		for _, s := range r.Peers.Selectors {
			for _, id := range env.selected(s) {
				if !seen[id] {
					seen[id] = true
					idKeys = append(idKeys, PeerKey{PeerIdentity, uint32(id)})
				}
			}
		}
		for _, c := range r.Peers.CIDRs {
			uses.cidr = true
			kind := PeerWorldCIDR
			if c.AnyAddress {
				kind = PeerCIDR
			}
			for _, id := range env.prefixesIn(c) {
				cidrKeys = append(cidrKeys, PeerKey{kind, id})
			}
		}
	}
	allKeys := append(append([]PeerKey{}, idKeys...), cidrKeys...)
	add := func(keys []PeerKey, c contrib) {
		for _, k := range keys {
			out[k] = append(out[k], c)
		}
	}
	base := contrib{deny: deny, auth: r.AuthRequired, rule: r}
	if len(r.Ports) == 0 {
		for _, p := range AllProtos {
			c := base
			c.proto, c.lo, c.hi = p, 0, 65535
			add(allKeys, c)
		}
		return uses
	}
	for _, ps := range r.Ports {
		c := base
		c.l7 = ps.HTTP
		switch {
		case ps.Name == "":
			for _, p := range expandProto(ps.Proto) {
				c.proto, c.lo, c.hi = p, ps.Lo, ps.Hi
				add(allKeys, c)
			}
		case d == Ingress: // resolved on the endpoint itself
			for _, np := range ep.NamedPorts {
				if np.Name == ps.Name && ps.protoMatches(np.Proto) {
					c.proto, c.lo, c.hi = np.Proto, np.Port, np.Port
					add(allKeys, c)
				}
			}
		default: // egress: resolved per remote identity, never through a CIDR
			uses.egressNamedPort = true
			ids := idKeys
			if r.Peers == nil {
				ids = nil
				for _, id := range env.podIdentities() {
					ids = append(ids, PeerKey{PeerIdentity, uint32(id)})
				}
			}
			for _, k := range ids {
				for _, np := range env.namedPorts(identity.NumericIdentity(k.ID)) {
					if np.Name == ps.Name && ps.protoMatches(np.Proto) {
						c.proto, c.lo, c.hi = np.Proto, np.Port, np.Port
						add([]PeerKey{k}, c)
					}
				}
			}
		}
	}
	return uses
}

// buildEntries turns the claims on one peer into disjoint, merged entries.
func buildEntries(k PeerKey, cs []contrib) []Entry {
	byProto := map[Proto][]contrib{}
	for _, c := range cs {
		byProto[c.proto] = append(byProto[c.proto], c)
	}
	protos := make([]Proto, 0, len(byProto))
	for p := range byProto {
		protos = append(protos, p)
	}
	sort.Slice(protos, func(i, j int) bool { return protos[i] < protos[j] })
	var out []Entry
	for _, p := range protos {
		pcs := byProto[p]
		points := make([]uint32, 0, 2*len(pcs))
		for _, c := range pcs {
			points = append(points, uint32(c.lo), uint32(c.hi)+1)
		}
		sort.Slice(points, func(i, j int) bool { return points[i] < points[j] })
		points = uniq(points)
		start := len(out)
		for i := 0; i+1 < len(points); i++ {
			lo, hi := uint16(points[i]), uint16(points[i+1]-1)
			var covering []contrib
			for _, c := range pcs {
				if c.lo <= lo && c.hi >= lo {
					covering = append(covering, c)
				}
			}
			if len(covering) == 0 {
				continue
			}
			e := mergeContribs(k, p, lo, hi, covering)
			if n := len(out); n > start && out[n-1].Hi+1 == lo && sameValue(&out[n-1], &e) {
				out[n-1].Hi = hi
				continue
			}
			out = append(out, e)
		}
	}
	return out
}

func uniq(ps []uint32) []uint32 {
	out := ps[:0]
	for i, p := range ps {
		if i == 0 || p != ps[i-1] {
			out = append(out, p)
		}
	}
	return out
}

func mergeContribs(k PeerKey, p Proto, lo, hi uint16, cs []contrib) Entry {
	e := Entry{Peer: k, Proto: p, Lo: lo, Hi: hi}
	anyDeny := false
	for _, c := range cs {
		anyDeny = anyDeny || c.deny
	}
	var sets []*l7policy.RuleSet
	anyL7 := false
	seen := map[*PeerRule]bool{}
	for _, c := range cs {
		if c.deny != anyDeny {
			continue
		}
		if !seen[c.rule] {
			seen[c.rule] = true
			e.Rules = append(e.Rules, c.rule)
		}
		if !c.deny {
			e.AuthRequired = e.AuthRequired || c.auth
			if c.l7 == nil {
				anyL7 = true
			} else {
				sets = append(sets, c.l7)
			}
		}
	}
	sort.Slice(e.Rules, func(i, j int) bool { return e.Rules[i].Origin() < e.Rules[j].Origin() })
	switch {
	case anyDeny:
		e.Action = ActionDeny
	case anyL7:
		e.Action = ActionAllow
	default:
		e.Action, e.L7 = ActionRedirect, l7policy.Union(sets...)
	}
	return e
}

func sameValue(a, b *Entry) bool {
	if a.Action != b.Action || a.AuthRequired != b.AuthRequired || len(a.Rules) != len(b.Rules) {
		return false
	}
	if (a.L7 == nil) != (b.L7 == nil) || (a.L7 != nil && a.L7.Key() != b.L7.Key()) {
		return false
	}
	for i := range a.Rules {
		if a.Rules[i] != b.Rules[i] {
			return false
		}
	}
	return true
}

// prefixRegistry holds every prefix policies mention (CIDRs and their
// exceptions), each with a stable ID, and finds the longest one containing
// an address. Because every selector's prefix and exceptions are
// registered, an address is selected by a CIDR selector exactly when its
// longest registered prefix is.
type prefixRegistry struct {
	ids  map[netip.Prefix]uint32
	refs map[netip.Prefix]int
	byID map[uint32]netip.Prefix
	bits [2]map[int]int // per family (0 v4, 1 v6): prefix length → count
	next uint32
}

func newPrefixRegistry() *prefixRegistry {
	return &prefixRegistry{ids: map[netip.Prefix]uint32{}, refs: map[netip.Prefix]int{}, byID: map[uint32]netip.Prefix{},
		bits: [2]map[int]int{{}, {}}, next: 1}
}

func family(a netip.Addr) int {
	if a.Is4() {
		return 0
	}
	return 1
}

// add takes a reference on p; it reports whether p is new.
func (r *prefixRegistry) add(p netip.Prefix) bool {
	r.refs[p]++
	if r.refs[p] > 1 {
		return false
	}
	id := r.next
	r.next++
	r.ids[p], r.byID[id] = id, p
	r.bits[family(p.Addr())][p.Bits()]++
	return true
}

// remove drops a reference on p; it reports whether p is gone.
func (r *prefixRegistry) remove(p netip.Prefix) bool {
	r.refs[p]--
	if r.refs[p] > 0 {
		return false
	}
	id := r.ids[p]
	delete(r.refs, p)
	delete(r.ids, p)
	delete(r.byID, id)
	f := family(p.Addr())
	if r.bits[f][p.Bits()]--; r.bits[f][p.Bits()] == 0 {
		delete(r.bits[f], p.Bits())
	}
	return true
}

// lookup returns the ID of the longest registered prefix containing a.
func (r *prefixRegistry) lookup(a netip.Addr) (uint32, bool) {
	f := family(a)
	best := -1
	for bits := range r.bits[f] {
		if bits > best {
			if id, ok := r.ids[netip.PrefixFrom(a, bits).Masked()]; ok && id != 0 {
				best = bits
			}
		}
	}
	if best < 0 {
		return 0, false
	}
	return r.ids[netip.PrefixFrom(a, best).Masked()], true
}

// selectedBy lists the IDs of registered prefixes inside c and outside its
// exceptions.
func (r *prefixRegistry) selectedBy(c CIDRSelector) []uint32 {
	var out []uint32
	for p, id := range r.ids {
		if p.Addr().Is4() != c.Prefix.Addr().Is4() || p.Bits() < c.Prefix.Bits() || !c.Prefix.Contains(p.Addr()) {
			continue
		}
		excluded := false
		for _, x := range c.Except {
			if p.Bits() >= x.Bits() && x.Contains(p.Addr()) {
				excluded = true
				break
			}
		}
		if !excluded {
			out = append(out, id)
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i] < out[j] })
	return out
}
