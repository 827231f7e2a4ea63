package policy

import (
	"github.com/nodemesh/nodemesh/l7policy"
)

// Evaluator is the reference evaluator: it answers from the world and the
// policies directly, rule by rule, with no compiled state. It is the
// specification the compiled tables (and through them the datapath and the
// proxy) are tested against, so it favours plainness over speed.
type Evaluator struct {
	world    *World
	policies []*Policy
	// selecting memoizes, per endpoint and direction, the blocks whose
	// subject selects it. The world does not change under an Evaluator.
	selecting map[*Endpoint]*[2][]*Block
	// byLabels groups endpoints by identity labels, for named ports.
	byLabels map[string][]*Endpoint
}

// NewEvaluator returns an evaluator for a world and its policies.
func NewEvaluator(w *World, policies []*Policy) *Evaluator {
	return &Evaluator{world: w, policies: policies, selecting: map[*Endpoint]*[2][]*Block{}}
}

func (ev *Evaluator) blocks(e *Endpoint, d Direction) []*Block {
	s, ok := ev.selecting[e]
	if !ok {
		s = &[2][]*Block{}
		for _, p := range ev.policies {
			for _, b := range p.Blocks {
				if b.Subject.Matches(e.Labels) {
					s[b.Dir] = append(s[b.Dir], b)
				}
			}
		}
		ev.selecting[e] = s
	}
	return s[d]
}

// Check answers whether a flow is allowed and why.
func (ev *Evaluator) Check(f Flow) (Result, error) {
	src, err := ev.world.ResolvePeer(f.From)
	if err != nil {
		return Result{}, err
	}
	dst, err := ev.world.ResolvePeer(f.To)
	if err != nil {
		return Result{}, err
	}
	port, err := resolvePort(f, dst)
	if err != nil {
		return Result{}, err
	}
	eg := ev.direction(src, dst, Egress, f.Proto, port).result(f.HTTP)
	in := ev.direction(dst, src, Ingress, f.Proto, port).result(f.HTTP)
	return combine(src, dst, f, port, eg, in), nil
}

// direction decides the policy of local (the source for egress, the
// destination for ingress) toward remote.
func (ev *Evaluator) direction(local, remote Peer, dir Direction, proto Proto, port uint16) decision {
	if local.Endpoint == nil {
		return decision{reason: ReasonOutside}
	}
	if remote.Endpoint == local.Endpoint {
		return decision{reason: ReasonSelf}
	}
	blocks := ev.blocks(local.Endpoint, dir)
	var deny, allow decision
	isolated := false
	var selecting []string
	for _, b := range blocks {
		isolated = isolated || b.DefaultDeny
		selecting = append(selecting, b.Policy.Ref)
		for _, r := range b.Deny {
			if ok, _, _ := ev.ruleMatches(r, local.Endpoint, remote, dir, proto, port); ok {
				deny.policies = append(deny.policies, b.Policy.Ref)
				deny.rules = append(deny.rules, r.Origin())
			}
		}
	}
	if len(deny.rules) > 0 {
		deny.reason = ReasonDenied
		return deny
	}
	var l7sets []*l7policy.RuleSet
	l7Any := false
	for _, b := range blocks {
		for _, r := range b.Allow {
			ok, anyL7, sets := ev.ruleMatches(r, local.Endpoint, remote, dir, proto, port)
			if !ok {
				continue
			}
			allow.policies = append(allow.policies, b.Policy.Ref)
			allow.rules = append(allow.rules, r.Origin())
			allow.auth = allow.auth || r.AuthRequired
			l7Any = l7Any || anyL7
			l7sets = append(l7sets, sets...)
		}
	}
	if len(allow.rules) > 0 {
		allow.reason = ReasonAllowed
		if !l7Any {
			allow.l7 = l7policy.Union(l7sets...)
		}
		return allow
	}
	switch {
	case len(blocks) == 0:
		return decision{reason: ReasonNoPolicy}
	case dir == Ingress && remote.Endpoint == nil && remote.reservedIdentity(local.Endpoint.Node).IsLocalHost():
		return decision{reason: ReasonLocalNode}
	case isolated:
		return decision{reason: ReasonDefaultDeny, policies: selecting}
	}
	return decision{reason: ReasonNotIsolated, policies: selecting}
}

// ruleMatches reports whether rule r of local's policy covers the remote
// peer on proto/port. anyL7 is true when a matching port carries no HTTP
// rules; sets are the HTTP rule sets of the matching ports otherwise.
func (ev *Evaluator) ruleMatches(r *PeerRule, local *Endpoint, remote Peer, dir Direction, proto Proto, port uint16) (ok, anyL7 bool, sets []*l7policy.RuleSet) {
	byIdentity, byCIDR := ev.peerMatches(r.Peers, local, remote)
	if !byIdentity && !byCIDR {
		return false, false, nil
	}
	if len(r.Ports) == 0 {
		return true, true, nil
	}
	for _, ps := range r.Ports {
		if !ps.protoMatches(proto) || !ev.portMatches(ps, local, remote, dir, proto, port) {
			continue
		}
		if ps.Name != "" && dir == Egress && !byIdentity {
			continue // an egress named port is a property of pods, not of CIDRs
		}
		ok = true
		if ps.HTTP == nil {
			anyL7 = true
		} else {
			sets = append(sets, ps.HTTP)
		}
	}
	return ok, anyL7, sets
}

// peerMatches reports whether the peer set selects remote through its
// identity (a selector, an entity, or every peer) and through a CIDR.
func (ev *Evaluator) peerMatches(ps *PeerSet, local *Endpoint, remote Peer) (byIdentity, byCIDR bool) {
	if ps == nil {
		return true, false
	}
	labels := remote.Labels(local.Node)
	for _, s := range ps.Selectors {
		byIdentity = byIdentity || s.Matches(labels)
	}
	if remote.Addr.IsValid() {
		for _, c := range ps.CIDRs {
			byCIDR = byCIDR || ((c.AnyAddress || remote.outsideCluster()) && c.Contains(remote.Addr))
		}
	}
	return byIdentity, byCIDR
}

// portMatches checks a port spec. A named port is looked up on the
// destination: the local pod for ingress; for egress, the pods that share the
// remote pod's identity (policy is per identity, so every pod of an identity
// answers to the names any of them declares).
func (ev *Evaluator) portMatches(ps PortSpec, local *Endpoint, remote Peer, dir Direction, proto Proto, port uint16) bool {
	if ps.Name == "" {
		return port >= ps.Lo && port <= ps.Hi
	}
	var dsts []*Endpoint
	if dir == Ingress {
		dsts = []*Endpoint{local}
	} else if remote.Endpoint != nil {
		if ev.byLabels == nil {
			ev.byLabels = map[string][]*Endpoint{}
			for _, e := range ev.world.Endpoints() {
				k := e.Labels.String()
				ev.byLabels[k] = append(ev.byLabels[k], e)
			}
		}
		dsts = ev.byLabels[remote.Endpoint.Labels.String()]
	}
	for _, d := range dsts {
		for _, np := range d.lookupNamedPort(ps.Name, proto) {
			if np.Port == port {
				return true
			}
		}
	}
	return false
}
