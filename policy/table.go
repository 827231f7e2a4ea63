package policy

import (
	"fmt"
	"sort"
	"strings"

	"github.com/nodemesh/nodemesh/identity"
	"github.com/nodemesh/nodemesh/l7policy"
)

// PeerKind says what a table key's ID names.
type PeerKind uint8

// Peer kinds. A remote address resolves to up to four keys, all looked up:
// its identity, the wildcard (PeerIdentity 0), and the longest policy prefix
// containing it, as PeerCIDR always and as PeerWorldCIDR when the address is
// outside the cluster.
const (
	PeerIdentity  PeerKind = iota // ID is a numeric identity; 0 means every peer
	PeerCIDR                      // ID is a prefix ID; any address in the prefix (Kubernetes ipBlock)
	PeerWorldCIDR                 // ID is a prefix ID; only addresses outside the cluster (Mesh/Cilium CIDR)
)

// PeerKey is the remote side of a table key.
type PeerKey struct {
	Kind PeerKind
	ID   uint32
}

func (k PeerKey) String() string {
	switch k.Kind {
	case PeerCIDR:
		return fmt.Sprintf("cidr#%d", k.ID)
	case PeerWorldCIDR:
		return fmt.Sprintf("world-cidr#%d", k.ID)
	}
	if k.ID == 0 {
		return "any"
	}
	return "identity " + identity.NumericIdentity(k.ID).String()
}

// Action is what a table entry does with a matching connection.
type Action uint8

// Actions.
const (
	ActionAllow    Action = iota + 1
	ActionDeny            // wins over every allow
	ActionRedirect        // allow through the node proxy, which enforces L7
)

func (a Action) String() string {
	switch a {
	case ActionAllow:
		return "allow"
	case ActionDeny:
		return "deny"
	case ActionRedirect:
		return "redirect"
	}
	return "?"
}

// Entry is one row of a table: a peer, a protocol and a port range (for
// ICMP, types) mapped to an action. Within a peer and protocol, entries are
// disjoint and sorted. ProtoAny stands for every protocol not listed.
type Entry struct {
	Peer         PeerKey
	Proto        Proto
	Lo, Hi       uint16
	Action       Action
	L7           *l7policy.RuleSet // the HTTP rules, for ActionRedirect
	AuthRequired bool
	Rules        []*PeerRule // the rules that made the entry: deny rules for a deny
}

// DirTable is the compiled policy of one endpoint in one direction.
type DirTable struct {
	// Enforced: no matching entry means deny (default deny).
	Enforced bool
	// Selected are the policies selecting the endpoint in this direction.
	Selected []string
	byPeer   map[PeerKey][]Entry
}

// Entries lists every entry in key order.
func (t *DirTable) Entries() []Entry {
	keys := make([]PeerKey, 0, len(t.byPeer))
	for k := range t.byPeer {
		keys = append(keys, k)
	}
	sort.Slice(keys, func(i, j int) bool {
		if keys[i].Kind != keys[j].Kind {
			return keys[i].Kind < keys[j].Kind
		}
		return keys[i].ID < keys[j].ID
	})
	var out []Entry
	for _, k := range keys {
		out = append(out, t.byPeer[k]...)
	}
	return out
}

// Len is the number of entries.
func (t *DirTable) Len() int {
	n := 0
	for _, es := range t.byPeer {
		n += len(es)
	}
	return n
}

// lookup finds the entry of peer for proto/port.
func (t *DirTable) lookup(peer PeerKey, proto Proto, port uint16) *Entry {
	es := t.byPeer[peer]
	if len(es) == 0 {
		return nil
	}
	if !tableProto(proto) {
		proto = ProtoAny
	}
	i := sort.Search(len(es), func(i int) bool {
		return es[i].Proto > proto || (es[i].Proto == proto && es[i].Hi >= port)
	})
	if i < len(es) && es[i].Proto == proto && es[i].Lo <= port {
		return &es[i]
	}
	return nil
}

func tableProto(p Proto) bool {
	for _, q := range AllProtos {
		if p == q {
			return true
		}
	}
	return false
}

// Table is the compiled policy of one endpoint.
type Table struct {
	Ingress, Egress DirTable
}

func (t *Table) dir(d Direction) *DirTable {
	if d == Ingress {
		return &t.Ingress
	}
	return &t.Egress
}

// Decide merges the entries of the keys a remote address resolved to, the
// same way the datapath and proxy do: any deny wins; an allow without L7
// rules allows every request; otherwise the union of the L7 rule sets
// applies. remoteID is the remote's identity (for the local-node rule).
func (t *DirTable) Decide(d Direction, keys []PeerKey, remoteID identity.NumericIdentity, proto Proto, port uint16) decision {
	var deny, allow decision
	var sets []*l7policy.RuleSet
	anyL7 := false
	for _, k := range keys {
		e := t.lookup(k, proto, port)
		if e == nil {
			continue
		}
		target := &allow
		if e.Action == ActionDeny {
			target = &deny
		}
		for _, r := range e.Rules {
			target.rules = append(target.rules, r.Origin())
			target.policies = append(target.policies, r.Block.Policy.Ref)
		}
		switch e.Action {
		case ActionAllow:
			anyL7 = true
		case ActionRedirect:
			sets = append(sets, e.L7)
		}
		allow.auth = allow.auth || (e.Action != ActionDeny && e.AuthRequired)
	}
	switch {
	case len(t.Selected) == 0:
		return decision{reason: ReasonNoPolicy}
	case len(deny.rules) > 0:
		deny.reason = ReasonDenied
		return deny
	case len(allow.rules) > 0:
		allow.reason = ReasonAllowed
		if !anyL7 {
			allow.l7 = l7policy.Union(sets...)
		}
		return allow
	case d == Ingress && remoteID.IsLocalHost():
		return decision{reason: ReasonLocalNode}
	case t.Enforced:
		return decision{reason: ReasonDefaultDeny, policies: t.Selected}
	}
	return decision{reason: ReasonNotIsolated, policies: t.Selected}
}

// String renders the table for people, one entry a line.
func (t *Table) String() string {
	var b strings.Builder
	for _, d := range []Direction{Ingress, Egress} {
		dt := t.dir(d)
		fmt.Fprintf(&b, "%s: enforced=%v selected-by=%v\n", d, dt.Enforced, dt.Selected)
		for _, e := range dt.Entries() {
			fmt.Fprintf(&b, "  %-16s %-6s %5d-%-5d %s", e.Peer, e.Proto, e.Lo, e.Hi, e.Action)
			if e.L7 != nil {
				var rs []string
				for _, r := range e.L7.Rules() {
					rs = append(rs, r.String())
				}
				fmt.Fprintf(&b, " [%s]", strings.Join(rs, "; "))
			}
			if e.AuthRequired {
				b.WriteString(" auth")
			}
			b.WriteByte('\n')
		}
	}
	return b.String()
}
