package xds

import (
	"slices"
	"strings"

	"github.com/nodemesh/nodemesh/l7policy"
	"github.com/nodemesh/nodemesh/policy"
)

// group is the peers whose redirect entries carry one HTTP rule set.
type group struct {
	rules   *l7policy.RuleSet
	peers   []policy.PeerKey // in table order
	origins []string         // the policy rules the HTTP rules come from, sorted
}

// segment is a TCP port range over which the redirect entries of a
// direction table are the same.
type segment struct {
	lo, hi uint16
	groups []group // sorted by rule set
}

func (s segment) signature() string {
	var b strings.Builder
	for _, g := range s.groups {
		b.WriteString(g.rules.Key())
		b.WriteByte(0)
		for _, p := range g.peers {
			b.WriteString(p.String())
			b.WriteByte(1)
		}
		b.WriteByte(2)
	}
	return b.String()
}

// redirectSegments cuts the TCP redirect entries of a direction table into
// disjoint port segments. Only redirect entries matter: a connection whose
// keys include an allow or a deny entry for its port is never sent to the
// proxy (Decide), so for a redirected connection the allowed requests are
// the union of the rule sets of its keys' redirect entries. HTTP rules make
// a port TCP-only, so other protocols have no redirect entries.
func redirectSegments(dt *policy.DirTable) []segment {
	var es []policy.Entry
	for _, e := range dt.Entries() {
		if e.Action == policy.ActionRedirect && e.Proto == policy.ProtoTCP && e.L7 != nil {
			es = append(es, e)
		}
	}
	if len(es) == 0 {
		return nil
	}
	points := make([]uint32, 0, 2*len(es))
	for _, e := range es {
		points = append(points, uint32(e.Lo), uint32(e.Hi)+1)
	}
	slices.Sort(points)
	points = slices.Compact(points)
	var out []segment
	var lastSig string
	for i := 0; i+1 < len(points); i++ {
		lo, hi := uint16(points[i]), uint16(points[i+1]-1)
		byRules := map[string]*group{}
		var keys []string
		for _, e := range es {
			if e.Lo > lo || e.Hi < lo {
				continue
			}
			k := e.L7.Key()
			g, ok := byRules[k]
			if !ok {
				g = &group{rules: e.L7}
				byRules[k] = g
				keys = append(keys, k)
			}
			g.peers = append(g.peers, e.Peer)
			for _, r := range e.Rules {
				if o := r.Origin(); !slices.Contains(g.origins, o) {
					g.origins = append(g.origins, o)
				}
			}
		}
		if len(keys) == 0 {
			continue
		}
		slices.Sort(keys)
		s := segment{lo: lo, hi: hi}
		for _, k := range keys {
			slices.Sort(byRules[k].origins)
			s.groups = append(s.groups, *byRules[k])
		}
		sig := s.signature()
		if n := len(out); n > 0 && uint32(out[n-1].hi)+1 == uint32(lo) && lastSig == sig {
			out[n-1].hi = hi
			continue
		}
		out = append(out, s)
		lastSig = sig
	}
	return out
}
