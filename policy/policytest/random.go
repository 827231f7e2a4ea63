package policytest

import (
	"encoding/json"
	"fmt"
	"math/rand/v2"

	"github.com/nodemesh/nodemesh/api"
	"github.com/nodemesh/nodemesh/l7policy"
	"github.com/nodemesh/nodemesh/policy"
)

// Random generates worlds, policies and flows from a small vocabulary, so
// that selectors, CIDRs, ports and names collide often enough to exercise
// every rule of the policy model.
type Random struct {
	R *rand.Rand
}

// NewRandom returns a generator with a fixed seed.
func NewRandom(seed uint64) *Random {
	return &Random{R: rand.New(rand.NewPCG(seed, seed^0x9e3779b97f4a7c15))}
}

func (g *Random) pick(xs ...string) string { return xs[g.R.IntN(len(xs))] }
func (g *Random) chance(p float64) bool    { return g.R.Float64() < p }

var (
	labelKeys   = []string{"app", "tier", "env"}
	labelValues = map[string][]string{"app": {"web", "db", "api"}, "tier": {"front", "back"}, "env": {"prod", "dev"}}
	namedPorts  = []api.ContainerPort{
		{Name: "http", ContainerPort: 80, Protocol: "TCP"},
		{Name: "http", ContainerPort: 8080, Protocol: "TCP"},
		{Name: "dns", ContainerPort: 53, Protocol: "UDP"},
		{Name: "dns", ContainerPort: 53, Protocol: "TCP"},
		{Name: "metrics", ContainerPort: 9090, Protocol: "TCP"},
		{Name: "sig", ContainerPort: 5000, Protocol: "SCTP"},
	}
	flowPorts = []uint16{53, 80, 443, 5000, 8080, 9090, 10000}
	// ExternalIPs are addresses outside the cluster that flows use.
	ExternalIPs = []string{"203.0.113.5", "203.0.113.200", "198.51.100.7", "8.8.8.8"}
	cidrs       = []string{"10.0.0.0/8", "10.0.1.0/24", "10.0.2.0/24", "10.0.1.0/28", "203.0.113.0/24", "203.0.113.128/25", "0.0.0.0/0", "192.168.0.0/16", "198.51.100.0/24"}
	exceptOf    = map[string][]string{"10.0.0.0/8": {"10.0.1.0/24", "10.0.2.0/25"}, "203.0.113.0/24": {"203.0.113.128/25"}, "0.0.0.0/0": {"10.0.0.0/8", "203.0.113.0/24"}, "10.0.1.0/24": {"10.0.1.0/28"}}
	httpRules   = []api.HTTPRule{{Method: "GET", Path: "/userdata/[0-9]+"}, {Method: "POST"}, {Path: "/public/.*"}, {Method: "GET|HEAD", Path: "/"}, {Headers: []string{"X-Token: s3cret"}}}
	requests    = []l7policy.Request{{Method: "GET", Path: "/userdata/42"}, {Method: "GET", Path: "/userdata/abc"}, {Method: "POST", Path: "/userdata/1"}, {Method: "GET", Path: "/public/x"}, {Method: "HEAD", Path: "/"}, {Method: "GET", Path: "/", Headers: map[string]string{"X-Token": "s3cret"}}}
)

// World returns a random world: 2-3 nodes, 2-4 namespaces, nPods pods.
func (g *Random) World(nPods int) *api.World {
	w := &api.World{APIServerIPs: []string{"192.168.0.100"}}
	nodes := 2 + g.R.IntN(2)
	for n := 1; n <= nodes; n++ {
		w.Nodes = append(w.Nodes, api.Node{Metadata: api.ObjectMeta{Name: fmt.Sprintf("node-%d", n)},
			Status: api.NodeStatus{Addresses: []api.NodeAddress{{Type: "InternalIP", Address: fmt.Sprintf("192.168.0.%d", n)}}}})
	}
	nss := []string{"default", "prod", "dev", "ops"}[:2+g.R.IntN(3)]
	for _, ns := range nss {
		w.Namespaces = append(w.Namespaces, api.Namespace{Metadata: api.ObjectMeta{Name: ns, Labels: g.labels(0.6)}})
	}
	for i := 0; i < nPods; i++ {
		node := 1 + g.R.IntN(nodes)
		p := api.Pod{
			Metadata: api.ObjectMeta{Name: fmt.Sprintf("p%d", i), Namespace: nss[g.R.IntN(len(nss))], Labels: g.labels(0.7)},
			Spec:     api.PodSpec{NodeName: fmt.Sprintf("node-%d", node), ServiceAccountName: g.pick("default", "default", "robot")},
			Status:   api.PodStatus{PodIP: fmt.Sprintf("10.0.%d.%d", node, 2+i)},
		}
		var ports []api.ContainerPort
		for _, np := range namedPorts {
			if g.chance(0.35) {
				ports = append(ports, np)
			}
		}
		p.Spec.Containers = []api.Container{{Name: "c", Ports: dedupePortNames(ports)}}
		w.Pods = append(w.Pods, p)
	}
	return w
}

// dedupePortNames keeps one port per (name, protocol) as Kubernetes requires
// unique names within a pod.
func dedupePortNames(ps []api.ContainerPort) []api.ContainerPort {
	var out []api.ContainerPort
	seen := map[string]bool{}
	for _, p := range ps {
		if !seen[p.Name] {
			seen[p.Name] = true
			out = append(out, p)
		}
	}
	return out
}

func (g *Random) labels(p float64) map[string]string {
	m := map[string]string{}
	for _, k := range labelKeys {
		if g.chance(p) {
			vs := labelValues[k]
			m[k] = vs[g.R.IntN(len(vs))]
		}
	}
	return m
}

func (g *Random) selector() *api.LabelSelector {
	s := &api.LabelSelector{}
	if g.chance(0.2) {
		return s
	}
	k := labelKeys[g.R.IntN(len(labelKeys))]
	vs := labelValues[k]
	switch g.R.IntN(5) {
	case 0, 1:
		s.MatchLabels = map[string]string{k: vs[g.R.IntN(len(vs))]}
	case 2:
		s.MatchExpressions = []api.LabelSelectorRequirement{{Key: k, Operator: g.pick(api.OpIn, api.OpNotIn), Values: []string{vs[0], vs[g.R.IntN(len(vs))]}}}
	default:
		s.MatchExpressions = []api.LabelSelectorRequirement{{Key: k, Operator: g.pick(api.OpExists, api.OpDoesNotExist)}}
	}
	return s
}

// Policies returns n random policy documents as YAML (JSON) text, mixing
// NetworkPolicy, Cilium and Mesh kinds, namespaced and cluster-wide.
func (g *Random) Policies(w *api.World, n int) []byte {
	var out []byte
	for i := 0; i < n; i++ {
		var doc any
		ns := w.Namespaces[g.R.IntN(len(w.Namespaces))].Metadata.Name
		if g.chance(0.4) {
			doc = g.networkPolicy(fmt.Sprintf("np%d", i), ns)
		} else {
			doc = g.meshPolicy(fmt.Sprintf("mp%d", i), ns)
		}
		b, err := json.Marshal(doc)
		if err != nil {
			panic(err)
		}
		out = append(out, "---\n"...)
		out = append(out, b...)
		out = append(out, '\n')
	}
	return out
}

func (g *Random) networkPolicy(name, ns string) *api.NetworkPolicy {
	np := &api.NetworkPolicy{TypeMeta: api.TypeMeta{APIVersion: api.GroupVersionNetworking, Kind: api.KindNetworkPolicy},
		Metadata: api.ObjectMeta{Name: name, Namespace: ns}}
	np.Spec.PodSelector = *g.selector()
	switch g.R.IntN(4) {
	case 0:
		np.Spec.PolicyTypes = []string{api.PolicyTypeIngress}
	case 1:
		np.Spec.PolicyTypes = []string{api.PolicyTypeEgress}
	case 2:
		np.Spec.PolicyTypes = []string{api.PolicyTypeIngress, api.PolicyTypeEgress}
	}
	for r := g.R.IntN(3); r > 0; r-- {
		np.Spec.Ingress = append(np.Spec.Ingress, api.NetworkPolicyIngressRule{From: g.npPeers(), Ports: g.npPorts()})
	}
	for r := g.R.IntN(3); r > 0; r-- {
		np.Spec.Egress = append(np.Spec.Egress, api.NetworkPolicyEgressRule{To: g.npPeers(), Ports: g.npPorts()})
	}
	return np
}

func (g *Random) npPeers() []api.NetworkPolicyPeer {
	var out []api.NetworkPolicyPeer
	for n := g.R.IntN(3); n > 0; n-- {
		var p api.NetworkPolicyPeer
		switch g.R.IntN(4) {
		case 0:
			p.PodSelector = g.selector()
		case 1:
			p.NamespaceSelector = g.selector()
		case 2:
			p.PodSelector, p.NamespaceSelector = g.selector(), g.selector()
		default:
			c := cidrs[g.R.IntN(len(cidrs))]
			p.IPBlock = &api.IPBlock{CIDR: c}
			if g.chance(0.5) {
				p.IPBlock.Except = exceptOf[c]
			}
		}
		out = append(out, p)
	}
	return out
}

func (g *Random) npPorts() []api.NetworkPolicyPort {
	var out []api.NetworkPolicyPort
	for n := g.R.IntN(3); n > 0; n-- {
		var p api.NetworkPolicyPort
		if g.chance(0.7) {
			proto := g.pick("TCP", "TCP", "UDP", "SCTP")
			p.Protocol = &proto
		}
		switch g.R.IntN(4) {
		case 0:
			v := api.FromString(g.pick("http", "dns", "metrics", "sig"))
			p.Port = &v
		case 1:
			v := api.FromInt(int(flowPorts[g.R.IntN(len(flowPorts))]))
			p.Port = &v
			end := int32(v.IntVal) + int32(g.R.IntN(1000))
			p.EndPort = &end
		case 2:
			v := api.FromInt(int(flowPorts[g.R.IntN(len(flowPorts))]))
			p.Port = &v
		}
		out = append(out, p)
	}
	return out
}

func (g *Random) meshPolicy(name, ns string) *api.MeshPolicy {
	kind, apiV := g.pick(api.KindCiliumNetworkPolicy, api.KindMeshNetworkPolicy, api.KindCiliumClusterwideNetworkPolicy, api.KindMeshClusterwideNetworkPolicy), api.GroupVersionCilium
	if kind == api.KindMeshNetworkPolicy || kind == api.KindMeshClusterwideNetworkPolicy {
		apiV = api.GroupVersionNodemesh
	}
	mp := &api.MeshPolicy{TypeMeta: api.TypeMeta{APIVersion: apiV, Kind: kind}, Metadata: api.ObjectMeta{Name: name}}
	if kind == api.KindCiliumNetworkPolicy || kind == api.KindMeshNetworkPolicy {
		mp.Metadata.Namespace = ns
	}
	rules := 1
	if g.chance(0.2) {
		rules = 2
	}
	for i := 0; i < rules; i++ {
		r := g.meshRule()
		if i == 0 && g.chance(0.8) {
			mp.Spec = &r
		} else {
			mp.Specs = append(mp.Specs, r)
		}
	}
	return mp
}

func (g *Random) meshRule() api.Rule {
	r := api.Rule{EndpointSelector: g.selector()}
	if g.chance(0.1) {
		f := false
		r.EnableDefaultDeny = &api.DefaultDenyConfig{Ingress: &f}
	}
	for n := g.R.IntN(3); n > 0; n-- {
		var in api.IngressRule
		in.FromEndpoints, in.FromCIDR, in.FromCIDRSet, in.FromEntities = g.meshPeers()
		in.ToPorts = g.meshPorts(true)
		if g.chance(0.1) {
			in.Authentication = &api.Authentication{Mode: api.AuthRequired}
		}
		r.Ingress = append(r.Ingress, in)
	}
	for n := g.R.IntN(3); n > 0; n-- {
		var eg api.EgressRule
		eg.ToEndpoints, eg.ToCIDR, eg.ToCIDRSet, eg.ToEntities = g.meshPeers()
		eg.ToPorts = g.meshPorts(true)
		r.Egress = append(r.Egress, eg)
	}
	if g.chance(0.25) {
		var in api.IngressRule
		in.FromEndpoints, in.FromCIDR, in.FromCIDRSet, in.FromEntities = g.meshPeers()
		in.ToPorts = g.meshPorts(false)
		if len(in.FromEndpoints)+len(in.FromCIDR)+len(in.FromCIDRSet)+len(in.FromEntities)+len(in.ToPorts) == 0 {
			in.FromEntities = []string{api.EntityWorld}
		}
		r.IngressDeny = append(r.IngressDeny, in)
	}
	if g.chance(0.25) {
		var eg api.EgressRule
		eg.ToEndpoints, eg.ToCIDR, eg.ToCIDRSet, eg.ToEntities = g.meshPeers()
		eg.ToPorts = g.meshPorts(false)
		if len(eg.ToEndpoints)+len(eg.ToCIDR)+len(eg.ToCIDRSet)+len(eg.ToEntities)+len(eg.ToPorts) == 0 {
			eg.ToEntities = []string{api.EntityCluster}
		}
		r.EgressDeny = append(r.EgressDeny, eg)
	}
	if len(r.Ingress)+len(r.Egress)+len(r.IngressDeny)+len(r.EgressDeny) == 0 {
		r.Ingress = []api.IngressRule{{}}
	}
	return r
}

func (g *Random) meshPeers() (eps []api.LabelSelector, cidr []string, sets []api.CIDRRule, entities []string) {
	for n := g.R.IntN(3); n > 0; n-- {
		switch g.R.IntN(5) {
		case 0, 1:
			s := g.selector()
			if g.chance(0.3) {
				if s.MatchLabels == nil {
					s.MatchLabels = map[string]string{}
				}
				s.MatchLabels["k8s:io.kubernetes.pod.namespace"] = g.pick("default", "prod", "dev")
			}
			eps = append(eps, *s)
		case 2:
			cidr = append(cidr, cidrs[g.R.IntN(len(cidrs))])
		case 3:
			c := cidrs[g.R.IntN(len(cidrs))]
			sets = append(sets, api.CIDRRule{CIDR: c, Except: exceptOf[c]})
		default:
			entities = append(entities, g.pick(api.Entities...))
		}
	}
	return
}

func (g *Random) meshPorts(allowL7 bool) []api.PortRule {
	var out []api.PortRule
	for n := g.R.IntN(3); n > 0; n-- {
		var pr api.PortRule
		for m := 1 + g.R.IntN(2); m > 0; m-- {
			pp := api.PortProtocol{Protocol: g.pick("", "TCP", "UDP", "SCTP", "ANY")}
			switch g.R.IntN(4) {
			case 0:
				pp.Port = api.PortString(g.pick("http", "dns", "metrics", "sig"))
			case 1:
				pp.Port = api.PortString(fmt.Sprint(flowPorts[g.R.IntN(len(flowPorts))]))
				pp.EndPort = int32(flowPorts[g.R.IntN(len(flowPorts))])
				if pp.EndPort < int32(mustAtoi(string(pp.Port))) {
					pp.EndPort = 0
				}
			case 2:
				pp.Port = "0"
			default:
				pp.Port = api.PortString(fmt.Sprint(flowPorts[g.R.IntN(len(flowPorts))]))
			}
			pr.Ports = append(pr.Ports, pp)
		}
		if allowL7 && g.chance(0.3) {
			for i := range pr.Ports {
				pr.Ports[i].Protocol = "TCP"
			}
			pr.Rules = &api.L7Rules{}
			for k := 1 + g.R.IntN(2); k > 0; k-- {
				pr.Rules.HTTP = append(pr.Rules.HTTP, httpRules[g.R.IntN(len(httpRules))])
			}
		}
		out = append(out, pr)
	}
	return out
}

func mustAtoi(s string) int {
	var n int
	fmt.Sscanf(s, "%d", &n)
	return n
}

// Flow returns a random flow in w: mostly pod to pod, sometimes from or to
// a node, the API server or an address outside the cluster.
func (g *Random) Flow(w *api.World) policy.Flow {
	end := func() string {
		switch x := g.R.IntN(20); {
		case x < 15:
			p := w.Pods[g.R.IntN(len(w.Pods))]
			return p.Metadata.Namespace + "/" + p.Metadata.Name
		case x < 17:
			return ExternalIPs[g.R.IntN(len(ExternalIPs))]
		case x < 19:
			return w.Nodes[g.R.IntN(len(w.Nodes))].Status.Addresses[0].Address
		default:
			return w.APIServerIPs[0]
		}
	}
	f := policy.Flow{From: end(), To: end()}
	switch g.R.IntN(10) {
	case 0:
		f.Proto, f.Port = policy.ProtoICMP, 8
	case 1, 2:
		f.Proto = policy.ProtoUDP
	case 3:
		f.Proto = policy.ProtoSCTP
	default:
		f.Proto = policy.ProtoTCP
	}
	if f.Proto != policy.ProtoICMP {
		f.Port = flowPorts[g.R.IntN(len(flowPorts))]
	}
	if f.Proto == policy.ProtoTCP && g.chance(0.4) {
		r := requests[g.R.IntN(len(requests))]
		f.HTTP = &r
	}
	return f
}
