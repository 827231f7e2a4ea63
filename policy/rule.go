package policy

import (
	"fmt"
	"net/netip"
	"strconv"

	"github.com/nodemesh/nodemesh/api"
	"github.com/nodemesh/nodemesh/identity"
	"github.com/nodemesh/nodemesh/l7policy"
)

// Direction is ingress (toward the selected endpoint) or egress (from it).
type Direction uint8

// Directions.
const (
	Ingress Direction = iota
	Egress
)

func (d Direction) String() string {
	if d == Ingress {
		return "ingress"
	}
	return "egress"
}

// Proto is an IP protocol number; ProtoAny in a port spec means TCP, UDP
// and SCTP.
type Proto uint8

// Protocols.
const (
	ProtoAny    Proto = 0
	ProtoICMP   Proto = 1
	ProtoTCP    Proto = 6
	ProtoUDP    Proto = 17
	ProtoICMPv6 Proto = 58
	ProtoSCTP   Proto = 132
)

// PortProtos are the protocols that have ports.
var PortProtos = []Proto{ProtoTCP, ProtoUDP, ProtoSCTP}

// AllProtos are the protocols a table distinguishes; ProtoAny stands for
// every other IP protocol in a table.
var AllProtos = []Proto{ProtoAny, ProtoICMP, ProtoTCP, ProtoUDP, ProtoICMPv6, ProtoSCTP}

func (p Proto) String() string {
	switch p {
	case ProtoAny:
		return "ANY"
	case ProtoICMP:
		return "ICMP"
	case ProtoTCP:
		return "TCP"
	case ProtoUDP:
		return "UDP"
	case ProtoICMPv6:
		return "ICMPv6"
	case ProtoSCTP:
		return "SCTP"
	}
	return strconv.Itoa(int(p))
}

// ParseProto parses a protocol name as written in policies and flags.
func ParseProto(s string) (Proto, error) {
	switch s {
	case "TCP", "tcp":
		return ProtoTCP, nil
	case "UDP", "udp":
		return ProtoUDP, nil
	case "SCTP", "sctp":
		return ProtoSCTP, nil
	case "ICMP", "icmp":
		return ProtoICMP, nil
	case "ICMPv6", "icmpv6", "ICMPV6":
		return ProtoICMPv6, nil
	case "ANY", "any", "":
		return ProtoAny, nil
	}
	return 0, fmt.Errorf("%q is not a protocol (TCP, UDP, SCTP, ICMP, ICMPv6)", s)
}

// Policy is one policy document in normalized form.
type Policy struct {
	Ref       string // "Kind ns/name" or "Kind name"
	Namespace string // "" for cluster-wide policies
	Source    api.Source
	Blocks    []*Block
}

// Block is the part of a policy that applies to one set of endpoints in one
// direction: a NetworkPolicy has one per policy type, a Mesh policy one per
// rule and direction used.
type Block struct {
	Policy  *Policy
	Path    string // "spec" or "specs[1]"
	Subject *Selector
	Dir     Direction
	// DefaultDeny: selecting an endpoint makes it deny in this direction
	// whatever no rule allows.
	DefaultDeny bool
	Allow       []*PeerRule
	Deny        []*PeerRule
}

// PeerRule is one allow or deny rule: peers × ports.
type PeerRule struct {
	Block        *Block
	Path         string   // "spec.ingress[0]"
	Peers        *PeerSet // nil: every peer
	Ports        []PortSpec
	AuthRequired bool
}

// Origin names the rule for users: "CiliumNetworkPolicy default/p spec.ingress[0]".
func (r *PeerRule) Origin() string { return r.Block.Policy.Ref + " " + r.Path }

// PeerSet is a union of selectors and CIDRs.
type PeerSet struct {
	Selectors []*Selector
	CIDRs     []CIDRSelector
}

// CIDRSelector selects addresses in Prefix and in none of Except. With
// AnyAddress it selects any such address (Kubernetes ipBlock); without, only
// addresses outside the cluster (Cilium's CIDR rules, which never select
// pods or nodes).
type CIDRSelector struct {
	Prefix     netip.Prefix
	Except     []netip.Prefix
	AnyAddress bool
}

// Contains reports whether a is in the selector's prefix and no exception.
func (c CIDRSelector) Contains(a netip.Addr) bool {
	if !c.Prefix.Contains(a) {
		return false
	}
	for _, x := range c.Except {
		if x.Contains(a) {
			return false
		}
	}
	return true
}

// PortSpec is a protocol with a port range (Lo..Hi, both included; for
// ICMP, the type) or a named port. HTTP, when set, restricts requests on
// these ports.
type PortSpec struct {
	Proto  Proto
	Lo, Hi uint16
	Name   string // a named port, resolved against the destination pod
	HTTP   *l7policy.RuleSet
}

// portRange converts a policy's port and endPort (0: unset) to a range;
// port 0 means every port.
func portRange(port, endPort uint16) (lo, hi uint16) {
	switch {
	case port == 0:
		return 0, 65535
	case endPort == 0:
		return port, port
	}
	return port, endPort
}

// protoMatches reports whether a spec's protocol covers proto.
func (p PortSpec) protoMatches(proto Proto) bool {
	if p.Proto == ProtoAny {
		return proto == ProtoTCP || proto == ProtoUDP || proto == ProtoSCTP
	}
	return p.Proto == proto
}

// FromDocuments normalizes validated policy documents.
func FromDocuments(docs []api.PolicyDocument) []*Policy {
	out := make([]*Policy, 0, len(docs))
	for i := range docs {
		out = append(out, FromDocument(&docs[i]))
	}
	return out
}

// FromDocument normalizes one validated policy document.
func FromDocument(doc *api.PolicyDocument) *Policy {
	p := &Policy{Ref: doc.Ref(), Source: doc.Source}
	if !doc.Clusterwide() {
		p.Namespace = doc.Meta().Namespace
	}
	if doc.NetworkPolicy != nil {
		fromNetworkPolicy(p, doc.NetworkPolicy)
	} else {
		if doc.Mesh.Spec != nil {
			fromMeshRule(p, "spec", doc.Mesh.Spec)
		}
		for i := range doc.Mesh.Specs {
			fromMeshRule(p, "specs["+strconv.Itoa(i)+"]", &doc.Mesh.Specs[i])
		}
	}
	return p
}

func fromNetworkPolicy(p *Policy, np *api.NetworkPolicy) {
	ns := p.Namespace
	subject := newSelector(append(selectorReqs(&np.Spec.PodSelector, "", identity.SourceK8s), inNamespace(ns))...)
	types := np.Spec.PolicyTypes
	if len(types) == 0 { // the API server's defaulting
		types = []string{api.PolicyTypeIngress}
		if len(np.Spec.Egress) > 0 {
			types = append(types, api.PolicyTypeEgress)
		}
	}
	for _, t := range types {
		b := &Block{Policy: p, Path: "spec", Subject: subject, DefaultDeny: true}
		if t == api.PolicyTypeIngress {
			b.Dir = Ingress
			for i, r := range np.Spec.Ingress {
				b.Allow = append(b.Allow, &PeerRule{Block: b, Path: fmt.Sprintf("spec.ingress[%d]", i), Peers: k8sPeers(r.From, ns), Ports: k8sPorts(r.Ports)})
			}
		} else {
			b.Dir = Egress
			for i, r := range np.Spec.Egress {
				b.Allow = append(b.Allow, &PeerRule{Block: b, Path: fmt.Sprintf("spec.egress[%d]", i), Peers: k8sPeers(r.To, ns), Ports: k8sPorts(r.Ports)})
			}
		}
		p.Blocks = append(p.Blocks, b)
	}
}

func k8sPeers(peers []api.NetworkPolicyPeer, ns string) *PeerSet {
	if len(peers) == 0 {
		return nil
	}
	ps := &PeerSet{}
	for _, peer := range peers {
		switch {
		case peer.IPBlock != nil:
			ps.CIDRs = append(ps.CIDRs, cidrSelector(peer.IPBlock.CIDR, peer.IPBlock.Except, true))
		default:
			reqs := []Requirement{isPod}
			if peer.PodSelector != nil {
				reqs = append(reqs, selectorReqs(peer.PodSelector, "", identity.SourceK8s)...)
			}
			if peer.NamespaceSelector != nil {
				reqs = append(reqs, selectorReqs(peer.NamespaceSelector, identity.LabelNamespaceLabels, identity.SourceK8s)...)
			} else {
				reqs = append(reqs, inNamespace(ns))
			}
			ps.Selectors = append(ps.Selectors, newSelector(reqs...))
		}
	}
	return ps
}

func cidrSelector(cidr string, except []string, anyAddress bool) CIDRSelector {
	c := CIDRSelector{AnyAddress: anyAddress}
	c.Prefix, _ = api.ParseCIDR(cidr) // validated
	for _, x := range except {
		xp, _ := api.ParseCIDR(x)
		c.Except = append(c.Except, xp)
	}
	return c
}

func k8sPorts(ports []api.NetworkPolicyPort) []PortSpec {
	var out []PortSpec
	for _, pt := range ports {
		ps := PortSpec{Proto: ProtoTCP}
		if pt.Protocol != nil {
			ps.Proto, _ = ParseProto(*pt.Protocol)
		}
		var port, end uint16
		if pt.Port != nil {
			if pt.Port.IsString {
				ps.Name = pt.Port.StrVal
			} else {
				port = uint16(pt.Port.IntVal)
			}
		}
		if pt.EndPort != nil {
			end = uint16(*pt.EndPort)
		}
		ps.Lo, ps.Hi = portRange(port, end)
		out = append(out, ps)
	}
	return out
}

func fromMeshRule(p *Policy, path string, r *api.Rule) {
	reqs := append(selectorReqs(r.EndpointSelector, "", ""), isPod)
	if p.Namespace != "" {
		reqs = append(reqs, inNamespace(p.Namespace))
	}
	subject := newSelector(reqs...)
	defaultDeny := func(d Direction) bool {
		if r.EnableDefaultDeny == nil {
			return true
		}
		v := r.EnableDefaultDeny.Ingress
		if d == Egress {
			v = r.EnableDefaultDeny.Egress
		}
		return v == nil || *v
	}
	for _, d := range []Direction{Ingress, Egress} {
		b := &Block{Policy: p, Path: path, Subject: subject, Dir: d, DefaultDeny: defaultDeny(d)}
		if d == Ingress {
			for i := range r.Ingress {
				b.addMesh(fmt.Sprintf("%s.ingress[%d]", path, i), ingressPeers(&r.Ingress[i], p.Namespace), &r.Ingress[i].ToPorts, r.Ingress[i].ICMPs, r.Ingress[i].Authentication, false)
			}
			for i := range r.IngressDeny {
				b.addMesh(fmt.Sprintf("%s.ingressDeny[%d]", path, i), ingressPeers(&r.IngressDeny[i], p.Namespace), &r.IngressDeny[i].ToPorts, r.IngressDeny[i].ICMPs, nil, true)
			}
			if len(r.Ingress)+len(r.IngressDeny) == 0 {
				continue
			}
		} else {
			for i := range r.Egress {
				b.addMesh(fmt.Sprintf("%s.egress[%d]", path, i), egressPeers(&r.Egress[i], p.Namespace), &r.Egress[i].ToPorts, r.Egress[i].ICMPs, r.Egress[i].Authentication, false)
			}
			for i := range r.EgressDeny {
				b.addMesh(fmt.Sprintf("%s.egressDeny[%d]", path, i), egressPeers(&r.EgressDeny[i], p.Namespace), &r.EgressDeny[i].ToPorts, r.EgressDeny[i].ICMPs, nil, true)
			}
			if len(r.Egress)+len(r.EgressDeny) == 0 {
				continue
			}
		}
		p.Blocks = append(p.Blocks, b)
	}
}

// peerFields is what an ingress or egress rule says about peers.
type peerFields struct {
	endpoints []api.LabelSelector
	cidrs     []string
	cidrSets  []api.CIDRRule
	entities  []string
}

func ingressPeers(r *api.IngressRule, ns string) *peerFields {
	return &peerFields{r.FromEndpoints, r.FromCIDR, r.FromCIDRSet, r.FromEntities}
}

func egressPeers(r *api.EgressRule, ns string) *peerFields {
	return &peerFields{r.ToEndpoints, r.ToCIDR, r.ToCIDRSet, r.ToEntities}
}

func (pf *peerFields) empty() bool {
	return len(pf.endpoints)+len(pf.cidrs)+len(pf.cidrSets)+len(pf.entities) == 0
}

func (pf *peerFields) peerSet(ns string) *PeerSet {
	ps := &PeerSet{}
	for i := range pf.endpoints {
		reqs := selectorReqs(&pf.endpoints[i], "", "")
		if !mentions(reqs, "", identity.SourceReserved) {
			// Endpoint selectors select pods. In a namespaced policy they
			// select the policy's namespace unless they name one.
			namesNamespace := mentions(reqs, identity.LabelNamespace, "")
			reqs = append(reqs, isPod)
			if ns != "" && !namesNamespace {
				reqs = append(reqs, inNamespace(ns))
			}
		}
		ps.Selectors = append(ps.Selectors, newSelector(reqs...))
	}
	for _, e := range pf.entities {
		ps.Selectors = append(ps.Selectors, entitySelector(e))
	}
	for _, c := range pf.cidrs {
		ps.CIDRs = append(ps.CIDRs, cidrSelector(c, nil, false))
	}
	for _, c := range pf.cidrSets {
		ps.CIDRs = append(ps.CIDRs, cidrSelector(c.CIDR, c.Except, false))
	}
	return ps
}

func (b *Block) addMesh(path string, pf *peerFields, toPorts *[]api.PortRule, icmps []api.ICMPRule, auth *api.Authentication, deny bool) {
	r := &PeerRule{Block: b, Path: path, AuthRequired: auth != nil && auth.Mode == api.AuthRequired}
	if pf.empty() {
		if len(*toPorts) == 0 && len(icmps) == 0 {
			return // `ingress: [{}]`: selects the endpoint, allows nothing
		}
	} else {
		r.Peers = pf.peerSet(b.Policy.Namespace)
	}
	for _, pr := range *toPorts {
		var http *l7policy.RuleSet
		if pr.Rules != nil && len(pr.Rules.HTTP) > 0 {
			http = l7policy.MustCompile(httpRules(pr.Rules.HTTP))
		}
		for _, pp := range pr.Ports {
			ps := PortSpec{HTTP: http}
			ps.Proto, _ = ParseProto(pp.Protocol)
			if http != nil {
				ps.Proto = ProtoTCP // HTTP runs over TCP only
			}
			if n, err := strconv.Atoi(string(pp.Port)); err == nil || pp.Port == "" {
				ps.Lo, ps.Hi = portRange(uint16(n), uint16(pp.EndPort))
			} else {
				ps.Name = string(pp.Port)
			}
			r.Ports = append(r.Ports, ps)
		}
	}
	for _, ic := range icmps {
		for _, f := range ic.Fields {
			t, _ := api.ICMPType(f.Family, f.Type)
			proto := ProtoICMP
			if f.Family == "IPv6" {
				proto = ProtoICMPv6
			}
			r.Ports = append(r.Ports, PortSpec{Proto: proto, Lo: uint16(t), Hi: uint16(t)})
		}
	}
	if deny {
		b.Deny = append(b.Deny, r)
	} else {
		b.Allow = append(b.Allow, r)
	}
}

func httpRules(in []api.HTTPRule) []l7policy.HTTPRule {
	out := make([]l7policy.HTTPRule, 0, len(in))
	for _, h := range in {
		r := l7policy.HTTPRule{Method: h.Method, Path: h.Path, Host: h.Host}
		for _, hd := range h.Headers {
			r.Headers = append(r.Headers, l7policy.ParseHeader(hd))
		}
		for _, hm := range h.HeaderMatches {
			r.Headers = append(r.Headers, l7policy.HeaderMatch{Name: hm.Name, Value: hm.Value})
		}
		out = append(out, r)
	}
	return out
}
