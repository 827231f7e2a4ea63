package bpf

import (
	"errors"
	"fmt"
	"net/netip"
	"sort"
	"strings"
	"testing"

	"github.com/cilium/ebpf"
	"github.com/nodemesh/nodemesh/api"
	"github.com/nodemesh/nodemesh/policy"
	"github.com/nodemesh/nodemesh/policy/policytest"
)

// TestDifferentialDatapath is the datapath's acceptance test: on random
// worlds, policies and flows (policytest), it loads one node at a time into
// a datapath and runs the first packet of every flow through from_pod (when
// the source is a pod of that node) and to_pod (when the destination is),
// with BPF_PROG_TEST_RUN. The verdict and the event's reason must be the
// reference evaluator's for that direction: Result.Egress for from_pod,
// Result.Ingress for to_pod, an L7-restricted allow being a drop
// (proxy-unavailable) until the proxy exists. Every flow is run twice: over
// IPv4 and, in a dual-stack copy of the world, over IPv6.
func TestDifferentialDatapath(t *testing.T) {
	worlds, flowsPer := 200, 300
	if testing.Short() {
		worlds, flowsPer = 30, 150
	}
	d := newTestDatapath(t)
	r := newRunner(t, d)
	lo := loIndex(t)
	var st diffStats
	st.reasons = map[string]int{}
	for seed := range uint64(worlds) {
		g := policytest.NewRandom(seed)
		w := g.World(8 + g.R.IntN(20))
		if seed%3 == 0 {
			// The API server on a node: identities host+kube-apiserver
			// and remote-node+kube-apiserver.
			w.APIServerIPs = []string{w.Nodes[0].Status.Addresses[0].Address}
		}
		dualStack(w)
		text := g.Policies(w, 1+g.R.IntN(12))
		docs, err := api.DecodePolicies(fmt.Sprintf("seed-%d.yaml", seed), text)
		if err != nil {
			t.Fatalf("seed %d: generated policies do not decode: %v", seed, err)
		}
		pols := policy.FromDocuments(docs)
		ref := policy.NewEvaluator(policy.NewWorld(w), pols)
		eng, err := policy.NewEngineFromWorld(w, pols)
		if err != nil {
			t.Fatal(err)
		}
		flows := make([]policy.Flow, flowsPer)
		for i := range flows {
			flows[i] = g.Flow(w)
			flows[i].HTTP = nil // L3/L4 only: a request is the proxy's business
		}
		pods := podsByKey(w)
		for _, n := range w.Nodes {
			node := n.Metadata.Name
			loadNode(t, d, eng, node, lo)
			port := uint16(20000) // a fresh source port per packet: no flow meets another's conntrack entry
			for _, f0 := range flows {
				for _, v6 := range []bool{false, true} {
					f := f0
					if v6 {
						f = flowV6(f0, pods)
					}
					want, err := ref.Check(f)
					if err != nil {
						t.Fatalf("seed %d: reference: %v", seed, err)
					}
					src, srcPod := endpointOf(f.From, pods, v6)
					dst, dstPod := endpointOf(f.To, pods, v6)
					for _, egress := range []bool{true, false} {
						local, dr := dstPod, want.Ingress
						if egress {
							local, dr = srcPod, want.Egress
						}
						if local == nil || local.Spec.NodeName != node {
							continue
						}
						port++
						p := flowPacket(f, src, dst, port)
						got := r.run(egress, p)
						st.count(egress, v6, dr)
						checkDirection(t, eng, node, seed, text, f, egress, p, dr, got, local)
					}
				}
			}
		}
	}
	if st.total == 0 {
		t.Fatal("no flow was checked")
	}
	t.Logf("datapath differential: %d first packets over %d random worlds checked against the reference evaluator, 0 mismatches (%d from_pod, %d to_pod; %d IPv6)",
		st.total, worlds, st.egress, st.total-st.egress, st.v6)
	t.Logf("expected reasons: %s", st.summary())
}

type diffStats struct {
	total, egress, v6 int
	reasons           map[string]int
}

func (s *diffStats) count(egress, v6 bool, dr policy.DirectionResult) {
	s.total++
	if egress {
		s.egress++
	}
	if v6 {
		s.v6++
	}
	_, reason := expectedVerdict(dr, false)
	s.reasons[reason.String()]++
}

func (s *diffStats) summary() string {
	var parts []string
	for r, n := range s.reasons {
		parts = append(parts, fmt.Sprintf("%s %d", r, n))
	}
	sort.Strings(parts)
	return strings.Join(parts, ", ")
}

// expectedVerdict is what the datapath must do with the first packet of a
// flow the reference evaluator decided so. mtlsPeer: a TCP flow with a pod
// on another node, which an auth-required rule sends through the node proxy
// for mTLS (none runs here: proxy-unavailable, fail closed).
func expectedVerdict(dr policy.DirectionResult, mtlsPeer bool) (pass bool, reason Reason) {
	r, ok := ParseReason(dr.Reason)
	if !ok {
		r = ReasonUnknown
	}
	switch {
	case dr.Verdict == policy.Denied:
		return false, r
	case dr.L7 != nil:
		return false, ReasonProxyUnavailable // fail closed: no proxy in this test
	case dr.AuthRequired && mtlsPeer:
		return false, ReasonProxyUnavailable
	}
	return true, r
}

func checkDirection(t *testing.T, eng *policy.Engine, node string, seed uint64, text []byte, f policy.Flow, egress bool, p pkt, dr policy.DirectionResult, got result, local *api.Pod) {
	t.Helper()
	prog := "to_pod"
	if egress {
		prog = "from_pod"
	}
	remoteAddr := p.dst
	if !egress {
		remoteAddr = p.src
	}
	mtlsPeer := false
	for _, e := range eng.IPCache(node) {
		if e.RemotePod && e.Prefix.Addr() == remoteAddr && p.src != p.dst && f.Proto == policy.ProtoTCP {
			mtlsPeer = true
		}
	}
	pass, reason := expectedVerdict(dr, mtlsPeer)
	fail := func(msg string, args ...any) {
		tbl, _, _ := eng.Table(local.Metadata.Namespace + "/" + local.Metadata.Name)
		t.Fatalf("seed %d node %s: flow %s -> %s %s/%d (%s -> %s), %s: %s\nreference: %+v\nevents: %v\npolicies:\n%s\nlocal table:\n%v",
			seed, node, f.From, f.To, f.Proto, f.Port, p.src, p.dst, prog, fmt.Sprintf(msg, args...), dr, got.events, text, tbl)
	}
	if got.pass != pass {
		fail("passed=%v, want %v (%s)", got.pass, pass, reason)
	}
	if len(got.events) != 1 {
		fail("%d events, want 1", len(got.events))
	}
	e := got.events[0]
	if e.Reason != reason {
		fail("reason %s, want %s", e.Reason, reason)
	}
	if e.Verdict != reason.Verdict() {
		fail("event verdict %s with reason %s", e.Verdict, e.Reason)
	}
	if e.AuthRequired != dr.AuthRequired {
		fail("auth required %v, want %v", e.AuthRequired, dr.AuthRequired)
	}
	wantDir := policy.Ingress
	if egress {
		wantDir = policy.Egress
	}
	if e.Direction != wantDir || e.Src != p.src || e.Dst != p.dst {
		fail("event %v does not describe the packet", e)
	}
	// The identities the datapath resolved are the engine's.
	localID, _, _ := eng.Identity(local.Metadata.Namespace + "/" + local.Metadata.Name)
	remote, remoteID := p.dst, e.DstIdentity
	if !egress {
		remote, remoteID = p.src, e.SrcIdentity
	}
	wantRemote, _ := eng.Resolve(node, remote)
	if p.src == p.dst {
		wantRemote = localID
	}
	if e.SrcIdentity+e.DstIdentity != localID+remoteID || remoteID != wantRemote {
		fail("identities %v -> %v, want local %v, remote %v", e.SrcIdentity, e.DstIdentity, localID, wantRemote)
	}
}

// ---- worlds and flows ----

// dualStack gives every pod and node of a random world an IPv6 address
// too: pod 10.0.N.M gets fd00:10:0:N::M, node 192.168.0.N fd00:192:168::N,
// the API server 192.168.0.100 fd00:192:168::100.
func dualStack(w *api.World) {
	for i := range w.Pods {
		p := &w.Pods[i]
		v6 := v6Of(netip.MustParseAddr(p.Status.PodIP))
		p.Status.PodIPs = []api.PodIP{{IP: p.Status.PodIP}, {IP: v6.String()}}
	}
	for i := range w.Nodes {
		n := &w.Nodes[i]
		v4 := netip.MustParseAddr(n.Status.Addresses[0].Address)
		n.Status.Addresses = append(n.Status.Addresses, api.NodeAddress{Type: "InternalIP", Address: v6Of(v4).String()})
	}
	var extra []string
	for _, s := range w.APIServerIPs {
		extra = append(extra, v6Of(netip.MustParseAddr(s)).String())
	}
	w.APIServerIPs = append(w.APIServerIPs, extra...)
}

// v6Of maps the random worlds' IPv4 addresses into IPv6: a.b.c.d becomes
// fd00:a:b:c::d for cluster addresses (10/8, 192.168/16) and
// 2001:db8:a:b:c::d outside.
func v6Of(a netip.Addr) netip.Addr {
	b := a.As4()
	s := fmt.Sprintf("fd00:%d:%d:%d::%d", b[0], b[1], b[2], b[3])
	if b[0] != 10 && b[0] != 192 {
		s = fmt.Sprintf("2001:db8:%d:%d:%d::%d", b[0], b[1], b[2], b[3])
	}
	return netip.MustParseAddr(s)
}

func podsByKey(w *api.World) map[string]*api.Pod {
	out := map[string]*api.Pod{}
	for i := range w.Pods {
		p := &w.Pods[i]
		out[p.Metadata.Namespace+"/"+p.Metadata.Name] = p
	}
	return out
}

// endpointOf resolves one end of a flow to its address and, for a pod, the
// pod.
func endpointOf(s string, pods map[string]*api.Pod, v6 bool) (netip.Addr, *api.Pod) {
	if p, ok := pods[s]; ok {
		addrs := p.Addresses()
		if v6 {
			return addrs[1], p
		}
		return addrs[0], p
	}
	a := netip.MustParseAddr(s)
	for _, p := range pods {
		for _, pa := range p.Addresses() {
			if pa == a {
				return a, p
			}
		}
	}
	return a, nil
}

// flowV6 is the flow over IPv6: pods by their IPv6 address, other
// addresses mapped by v6Of, ICMP echo as ICMPv6 echo.
func flowV6(f policy.Flow, pods map[string]*api.Pod) policy.Flow {
	end := func(s string) string {
		if p, ok := pods[s]; ok {
			return p.Addresses()[1].String()
		}
		return v6Of(netip.MustParseAddr(s)).String()
	}
	f.From, f.To = end(f.From), end(f.To)
	if f.Proto == policy.ProtoICMP {
		f.Proto, f.Port = policy.ProtoICMPv6, 128
	}
	return f
}

// flowPacket is the first packet of a flow: a TCP SYN, a UDP or SCTP
// datagram, or an ICMP echo request.
func flowPacket(f policy.Flow, src, dst netip.Addr, sport uint16) pkt {
	p := pkt{src: src, dst: dst, proto: uint8(f.Proto), sport: sport, dport: f.Port}
	switch f.Proto {
	case policy.ProtoTCP:
		p.tcpFlags = tcpSYN
	case policy.ProtoICMP, policy.ProtoICMPv6:
		p.icmpType, p.dport = uint8(f.Port), 0
	}
	return p
}

// loadNode makes the datapath enforce node's view of the engine's world:
// its ipcache, its pods as endpoints (ifindex: loopback, as test runs see
// it) with their tables, and no conntrack state.
func loadNode(tb testing.TB, d *Datapath, eng *policy.Engine, node string, ifindex uint32) map[string]uint32 {
	tb.Helper()
	if err := d.SyncIPCache(eng.IPCache(node)); err != nil {
		tb.Fatal(err)
	}
	old, err := d.Endpoints()
	if err != nil {
		tb.Fatal(err)
	}
	for a, id := range old {
		if err := d.DeleteEndpoint(a); err != nil {
			tb.Fatal(err)
		}
		if err := d.DeletePolicy(id); err != nil {
			tb.Fatal(err)
		}
	}
	flushMap(tb, d.objs.Conntrack)
	flushMap(tb, d.objs.Fragments)
	ids := map[string]uint32{}
	for i, ep := range eng.Endpoints() {
		if ep.Node != node {
			continue
		}
		epID := uint32(i + 1)
		tbl, id, ok := eng.Table(ep.Key())
		if !ok {
			tb.Fatalf("no table for %s", ep.Key())
		}
		if err := d.SetPolicy(epID, tbl, ProxyPorts{}); err != nil {
			tb.Fatal(err)
		}
		for _, a := range ep.Addrs {
			if err := d.SetEndpoint(a, epID, ifindex, id, 0); err != nil {
				tb.Fatal(err)
			}
		}
		ids[ep.Key()] = epID
	}
	return ids
}

// flushMap deletes every entry of a hash map.
func flushMap(tb testing.TB, m *ebpf.Map) {
	tb.Helper()
	key := make([]byte, m.KeySize())
	for {
		err := m.NextKey(nil, key)
		if errors.Is(err, ebpf.ErrKeyNotExist) {
			return
		}
		if err != nil {
			tb.Fatalf("flush %s: %v", m, err)
		}
		if err := m.Delete(key); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
			tb.Fatalf("flush %s: %v", m, err)
		}
	}
}
