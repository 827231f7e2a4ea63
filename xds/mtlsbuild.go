package xds

// Build's part for mTLS between node proxies (Input.MTLS): the secrets, the
// two mTLS listeners, the source workloads' clusters, and the mTLS twins of
// the inbound L7 chains. docs/ARCHITECTURE.md ("mTLS between node
// proxies") tells the whole path.

import (
	"fmt"
	"net/netip"
	"slices"
	"strings"

	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	hcmv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	tlsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/tls/v3"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/wrapperspb"

	"github.com/nodemesh/nodemesh/policy"
)

// Names of the mTLS listeners.
const (
	InboundMTLSListenerName  = "nodemesh-inbound-mtls"
	OutboundMTLSListenerName = "nodemesh-outbound-mtls"
)

// mtlsPlan is what Build derives from Input.MTLS once.
type mtlsPlan struct {
	in *MTLSInput
	// ready are the endpoints that take part (MTLSInput.Ready).
	ready map[string]bool
	// peers binds the SPIFFE IDs of remote mesh pods to their addresses.
	peers map[spiffeid.ID][]netip.Addr
	addrs []netip.Addr // peerAddrs
	// routes are the workloads whose outbound L7 chains have mTLS twins
	// (outboundTwin), which name their OutboundMTLSRouteName.
	routes map[spiffeid.ID]bool
}

func newMTLSPlan(in *MTLSInput, eps []Endpoint) *mtlsPlan {
	if in == nil {
		return nil
	}
	p := &mtlsPlan{in: in, ready: map[string]bool{}, peers: map[spiffeid.ID][]netip.Addr{}, routes: map[spiffeid.ID]bool{}}
	for _, ep := range eps {
		if len(ep.Addrs) > 0 && in.Ready(ep) {
			p.ready[ep.Key] = true
		}
	}
	for a, id := range in.Peers {
		p.peers[id] = append(p.peers[id], a)
	}
	return p
}

// originatesAny reports whether some local pod originates mTLS.
func (p *mtlsPlan) originatesAny() bool { return p != nil && len(p.ready) > 0 && len(p.in.Peers) > 0 }

// OutboundMTLSRouteName names the route of the outbound L7 chains of the
// workload id toward mTLS peers: to its mTLS cluster.
func OutboundMTLSRouteName(id spiffeid.ID) string { return "nodemesh-outbound-mtls|" + id.String() }

// outboundTwin is, for an outbound L7 chain c of ep, its twin for
// destinations that are mTLS peers (the remote mesh pods whose proxies
// accept mTLS): the same match narrowed to those addresses and, when ep
// takes part in mTLS, the same HCM with the route to ep's workload's mTLS
// cluster. Envoy selects chains by destination address before source
// address and does not backtrack, so once one pod has such a twin every
// pod's chain needs one (a pod that does not originate keeps its HCM).
func (p *mtlsPlan) outboundTwin(ep Endpoint, c *listenerv3.FilterChain) (*listenerv3.FilterChain, error) {
	t := proto.Clone(c).(*listenerv3.FilterChain)
	t.Name = "mtls-peers|" + c.GetName()
	for _, a := range p.peerAddrs() {
		t.FilterChainMatch.PrefixRanges = append(t.FilterChainMatch.PrefixRanges, cidr(netip.PrefixFrom(a, a.BitLen())))
	}
	if !p.ready[ep.Key] {
		return t, nil
	}
	h := &hcmv3.HttpConnectionManager{}
	if err := t.GetFilters()[0].GetTypedConfig().UnmarshalTo(h); err != nil {
		return nil, fmt.Errorf("outbound chain %s: %w", c.GetName(), err)
	}
	h.GetRds().RouteConfigName = OutboundMTLSRouteName(ep.ID)
	p.routes[ep.ID] = true
	t.Filters[0] = hcmFilter(h)
	return t, nil
}

// peerAddrs are the mTLS peers' addresses, sorted.
func (p *mtlsPlan) peerAddrs() []netip.Addr {
	if p.addrs == nil {
		for a := range p.in.Peers {
			p.addrs = append(p.addrs, a)
		}
		slices.SortFunc(p.addrs, netip.Addr.Compare)
	}
	return p.addrs
}

// accepts reports whether ep's proxy terminates mTLS for it.
func (p *mtlsPlan) accepts(ep Endpoint) bool { return p != nil && p.ready[ep.Key] }

// buildMTLS adds the mTLS listeners, clusters and secrets to r.
func (p *mtlsPlan) build(r *Resources, cfg Config, eps []Endpoint) error {
	if p == nil {
		return nil
	}
	var inChains, outChains []*listenerv3.FilterChain
	inV6, outV6 := false, false
	ids := map[spiffeid.ID]bool{}
	for _, ep := range eps {
		if len(ep.Addrs) == 0 || ep.Mode == MTLSDisabled || ep.Mode == "" {
			continue
		}
		v6 := slices.ContainsFunc(ep.Addrs, netip.Addr.Is6)
		c := InboundChain{Key: ep.Key, Addrs: ep.Addrs, ID: ep.ID, Peers: p.peers, LogName: InboundMTLSAccessLogName}
		if p.ready[ep.Key] {
			ids[ep.ID] = true
			inChains = append(inChains, InboundMTLSFilterChain(c))
			outChains = append(outChains, outboundMTLSChain(ep, cfg))
			outV6 = outV6 || v6
		}
		// Clients that do not speak mTLS between proxies: plaintext, or
		// an application's own TLS. Strict refuses both (and, without
		// an SVID yet, mTLS too: its ALPN falls back to the TLS chain).
		strict := ep.Mode == MTLSStrict
		inChains = append(inChains, InboundPlaintextFilterChain(c, "raw_buffer", strict), InboundPlaintextFilterChain(c, "tls", strict))
		if !p.ready[ep.Key] && !strict {
			// No SVID yet: a peer proxy's mTLS is refused, not passed
			// on to the pod as if it were the application's TLS.
			nr := InboundPlaintextFilterChain(c, "tls", true)
			nr.Name = "inbound-not-ready|" + ep.Key + "|" + portLabel(0)
			nr.FilterChainMatch.ApplicationProtocols = []string{MTLSALPN}
			inChains = append(inChains, nr)
		}
		inV6 = inV6 || v6
	}
	if len(inChains) > 0 {
		r.Listeners = append(r.Listeners, mtlsListener(InboundMTLSListenerName, cfg.MTLSInboundPort, MarkProxyIngress, corev3.TrafficDirection_INBOUND, inChains, inV6, true))
		if !slices.ContainsFunc(r.Clusters, func(c *clusterv3.Cluster) bool { return c.GetName() == InboundClusterName }) {
			r.Clusters = append(r.Clusters, makeCluster(directions(cfg)[0], cfg.ConnectTimeout))
		}
	}
	if len(outChains) > 0 {
		r.Listeners = append(r.Listeners, mtlsListener(OutboundMTLSListenerName, cfg.MTLSOutboundPort, MarkProxyEgress, corev3.TrafficDirection_OUTBOUND, outChains, outV6, false))
	}
	var sorted []spiffeid.ID
	for id := range ids {
		sorted = append(sorted, id)
	}
	slices.SortFunc(sorted, func(a, b spiffeid.ID) int { return strings.Compare(a.String(), b.String()) })
	for _, id := range sorted {
		r.Clusters = append(r.Clusters, OutboundMTLSCluster(id, cfg.ConnectTimeout))
		if p.routes[id] {
			r.Routes = append(r.Routes, makeRoute(direction{route: OutboundMTLSRouteName(id), cluster: OutboundMTLSClusterName(id)}))
		}
	}
	slices.SortFunc(r.Routes, func(a, b *routev3.RouteConfiguration) int { return strings.Compare(a.GetName(), b.GetName()) })
	slices.SortFunc(r.Clusters, func(a, b *clusterv3.Cluster) int { return strings.Compare(a.GetName(), b.GetName()) })
	slices.SortFunc(r.Listeners, func(a, b *listenerv3.Listener) int { return strings.Compare(a.GetName(), b.GetName()) })

	// Exactly the secrets the resources name: the bundle and the SVIDs
	// of the endpoints that take part.
	all, err := SecretsFrom(p.in.Identities)
	if err != nil {
		return err
	}
	if len(ids) > 0 {
		for _, s := range all {
			if s.GetName() == TrustBundleSecretName || isReadySVID(s, ids) {
				r.Secrets = append(r.Secrets, s)
			}
		}
	}
	return nil
}

func isReadySVID(s *tlsv3.Secret, ids map[spiffeid.ID]bool) bool {
	id, err := spiffeid.FromString(s.GetName())
	return err == nil && ids[id]
}

// outboundMTLSChain hands a local pod's connections (matched by source
// address) to its workload's mTLS cluster.
func outboundMTLSChain(ep Endpoint, cfg Config) *listenerv3.FilterChain {
	m := &listenerv3.FilterChainMatch{}
	addrs := slices.Clone(ep.Addrs)
	slices.SortFunc(addrs, netip.Addr.Compare)
	for _, a := range addrs {
		m.SourcePrefixRanges = append(m.SourcePrefixRanges, cidr(netip.PrefixFrom(a, a.BitLen())))
	}
	return &listenerv3.FilterChain{
		Name:             "outbound-mtls|" + ep.Key,
		FilterChainMatch: m,
		Filters:          []*listenerv3.Filter{tcpProxyFilter("nodemesh_outbound_mtls", OutboundMTLSClusterName(ep.ID), OutboundMTLSAccessLogName)},
	}
}

// mtlsListener is a transparent listener like makeListener's, with
// tls_inspector on the inbound side.
func mtlsListener(name string, port uint16, mark uint32, traffic corev3.TrafficDirection, chains []*listenerv3.FilterChain, v6, inspect bool) *listenerv3.Listener {
	l := makeListener(direction{listener: name, port: port, mark: mark, traffic: traffic}, chains, v6)
	if inspect {
		l.ListenerFilters = append(l.ListenerFilters, TLSInspectorFilter())
	}
	return l
}

// mtlsTwin is the mTLS variant of an inbound L7 chain c of ep: matched on
// TLS with ALPN MTLSALPN, terminating it with ep's SVID, binding the peer,
// then the same HCM. The plaintext chain keeps serving other clients (the
// node, the pods of this node, permissive peers).
func (p *mtlsPlan) mtlsTwin(ep Endpoint, c *listenerv3.FilterChain) *listenerv3.FilterChain {
	t := &listenerv3.FilterChain{
		Name:             "mtls|" + c.GetName(),
		FilterChainMatch: proto.Clone(c.GetFilterChainMatch()).(*listenerv3.FilterChainMatch),
		TransportSocket: tlsTransportSocket(&tlsv3.DownstreamTlsContext{
			RequireClientCertificate: wrapperspb.Bool(true),
			CommonTlsContext:         mtlsCommonContext(ep.ID),
		}),
		Filters: append([]*listenerv3.Filter{peerRBACFilter(p.peers)}, c.GetFilters()...),
	}
	t.FilterChainMatch.TransportProtocol = "tls"
	t.FilterChainMatch.ApplicationProtocols = []string{MTLSALPN}
	return t
}

// strictRefusal is, for a strict ep's inbound L7 chain c, the chain that
// refuses plaintext from mesh pods on other nodes (remote): c's match
// narrowed to those sources, a network RBAC admitting nobody, logged.
func strictRefusal(ep Endpoint, c *listenerv3.FilterChain, remote []netip.Prefix) *listenerv3.FilterChain {
	m := proto.Clone(c.GetFilterChainMatch()).(*listenerv3.FilterChainMatch)
	for _, p := range remote {
		m.SourcePrefixRanges = append(m.SourcePrefixRanges, cidr(p))
	}
	return &listenerv3.FilterChain{
		Name:             "strict-refuse|" + c.GetName(),
		FilterChainMatch: m,
		Filters:          []*listenerv3.Filter{refuseFilter(), tcpProxyFilter("nodemesh_inbound_plaintext", InboundClusterName, InboundMTLSAccessLogName)},
	}
}

// remotePodPrefixes are the addresses of mesh pods on other nodes.
func remotePodPrefixes(ipc []policy.IPCacheEntry) []netip.Prefix {
	var out []netip.Prefix
	for _, e := range ipc {
		if e.RemotePod {
			out = append(out, e.Prefix)
		}
	}
	return out
}
