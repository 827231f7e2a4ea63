package xds

// Build turns one node's compiled tables into Envoy resources. It is pure:
// the same Input gives byte-identical resources and the same version.
//
// Per direction (inbound: ingress L7 of local pods; outbound: egress L7 of
// local pods) there is one transparent listener, one route configuration
// (served by RDS) and one ORIGINAL_DST cluster, each only when some local
// pod has a redirect entry in that direction. A listener has the
// original_src listener filter (upstream connections come from the
// client's address, marked) and a filter chain per local pod and port,
// selected by filter_chain_match: the pod's addresses as destination
// (inbound) or source (outbound) and the destination port. Each chain runs
// an HTTP connection manager with the RBAC filter (ALLOW policies: one per
// HTTP rule set, its principals or destination the peers whose entries
// carry it) and the router, and logs every request to the agent's access
// log service (http_grpc, log name per direction).
//
// Envoy selects a chain level by level — destination port first, then
// addresses — and does not backtrack, so a chain with a port hides every
// chain without one for that port. Hence: every port that is a single-port
// segment of some pod gets a chain for every pod whose redirect entries
// cover it; the rest of a pod's port ranges go to one portless chain whose
// policies check the port themselves (destination_port_range).

import (
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"strings"
	"time"

	accesslogv3 "github.com/envoyproxy/go-control-plane/envoy/config/accesslog/v3"
	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	rbacv3 "github.com/envoyproxy/go-control-plane/envoy/config/rbac/v3"
	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	grpcalsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/access_loggers/grpc/v3"
	rbacfilter "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/rbac/v3"
	routerfilter "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/router/v3"
	origsrcv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/listener/original_src/v3"
	hcmv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	tlsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/tls/v3"
	upstreamhttpv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/upstreams/http/v3"
	"github.com/envoyproxy/go-control-plane/pkg/cache/types"
	"github.com/envoyproxy/go-control-plane/pkg/cache/v3"
	"github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	"github.com/envoyproxy/go-control-plane/pkg/wellknown"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/wrapperspb"

	"github.com/nodemesh/nodemesh/policy"
)

// Names of the generated resources.
const (
	InboundListenerName  = "nodemesh-inbound"
	OutboundListenerName = "nodemesh-outbound"
	InboundRouteName     = "nodemesh-inbound"
	OutboundRouteName    = "nodemesh-outbound"
	InboundClusterName   = "nodemesh-inbound-original-dst"
	OutboundClusterName  = "nodemesh-outbound-original-dst"
)

// Log names of the HTTP gRPC access logs of each direction's listener:
// the log_name the proxy announces on its access log stream, from which
// AccessLogServer tells the directions apart.
const (
	InboundAccessLogName  = "nodemesh-inbound"
	OutboundAccessLogName = "nodemesh-outbound"
)

// Linux socket option numbers for the upstream mark; Envoy passes them to
// setsockopt as they are.
const (
	solSocket = 1
	soMark    = 36
)

// direction is what differs between the inbound and outbound side.
type direction struct {
	dir            policy.Direction
	name           string // "inbound" / "outbound"
	listener       string
	route, cluster string
	logName        string
	port           uint16
	mark           uint32
	traffic        corev3.TrafficDirection
}

func directions(cfg Config) []direction {
	return []direction{
		{policy.Ingress, "inbound", InboundListenerName, InboundRouteName, InboundClusterName, InboundAccessLogName, cfg.InboundPort, MarkProxyIngress, corev3.TrafficDirection_INBOUND},
		{policy.Egress, "outbound", OutboundListenerName, OutboundRouteName, OutboundClusterName, OutboundAccessLogName, cfg.OutboundPort, MarkProxyEgress, corev3.TrafficDirection_OUTBOUND},
	}
}

// Resources is one node's generated configuration.
type Resources struct {
	// Version identifies the contents: a hash of every resource.
	Version   string
	Listeners []*listenerv3.Listener
	Routes    []*routev3.RouteConfiguration
	Clusters  []*clusterv3.Cluster
	// Secrets are the SDS secrets the node's listeners and clusters name:
	// its workloads' SVIDs (with private keys) and the trust bundle.
	Secrets []*tlsv3.Secret
	// typeVersions are per type URL hashes of that type's resources: a
	// type whose resources did not change keeps its version, so the
	// proxy is not sent it again.
	typeVersions map[resource.Type]string
}

// ResourceTypes are the type URLs Build generates, in the order Envoy
// applies them over ADS.
var ResourceTypes = []resource.Type{resource.ClusterType, resource.ListenerType, resource.RouteType, resource.SecretType}

// TypeVersion is the version of the resources of one type URL.
func (r *Resources) TypeVersion(typeURL resource.Type) string { return r.typeVersions[typeURL] }

// ByType returns the resources of one type URL, sorted by name.
func (r *Resources) ByType(typeURL resource.Type) []types.Resource {
	var out []types.Resource
	switch typeURL {
	case resource.ListenerType:
		for _, x := range r.Listeners {
			out = append(out, x)
		}
	case resource.RouteType:
		for _, x := range r.Routes {
			out = append(out, x)
		}
	case resource.ClusterType:
		for _, x := range r.Clusters {
			out = append(out, x)
		}
	case resource.SecretType:
		for _, x := range r.Secrets {
			out = append(out, x)
		}
	}
	return out
}

// Snapshot returns the resources as a go-control-plane snapshot, each type
// carrying its own version, checked for consistency.
func (r *Resources) Snapshot() (*cache.Snapshot, error) {
	s := &cache.Snapshot{}
	for _, t := range ResourceTypes {
		s.Resources[cache.GetResponseType(t)] = cache.NewResources(r.typeVersions[t], r.ByType(t))
	}
	if err := s.Consistent(); err != nil {
		return nil, fmt.Errorf("snapshot %s: %w", r.Version, err)
	}
	return s, nil
}

// Build generates the configuration of one node's proxy.
func Build(in Input) (*Resources, error) {
	cfg := in.Config
	cfg.Defaults()
	if err := cfg.Validate(); err != nil {
		return nil, fmt.Errorf("config: %w", err)
	}
	idx, err := newAddrIndex(in.IPCache)
	if err != nil {
		return nil, err
	}
	eps, err := checkEndpoints(in.Endpoints)
	if err != nil {
		return nil, err
	}
	r := &Resources{}
	plan := newMTLSPlan(in.MTLS, eps)
	remote := remotePodPrefixes(in.IPCache)
	for _, d := range directions(cfg) {
		chains, v6, err := makeFilterChains(d, eps, idx, plan, remote)
		if err != nil {
			return nil, err
		}
		if len(chains) == 0 {
			continue
		}
		l := makeListener(d, chains, v6)
		if d.dir == policy.Ingress && plan != nil {
			// mTLS twins select on the transport protocol and ALPN.
			l.ListenerFilters = append(l.ListenerFilters, TLSInspectorFilter())
		}
		r.Listeners = append(r.Listeners, l)
		r.Routes = append(r.Routes, makeRoute(d))
		r.Clusters = append(r.Clusters, makeCluster(d, cfg.ConnectTimeout))
	}
	if err := plan.build(r, cfg, eps); err != nil {
		return nil, err
	}
	if err := r.finish(); err != nil {
		return nil, err
	}
	if _, err := r.Snapshot(); err != nil {
		return nil, err
	}
	return r, nil
}

// finish validates every resource and computes the versions.
func (r *Resources) finish() error {
	r.typeVersions = map[resource.Type]string{}
	all := sha256.New()
	v := &validator{seen: map[*anypb.Any]bool{}}
	for _, t := range ResourceTypes {
		h := sha256.New()
		for _, res := range r.ByType(t) {
			if err := v.validate(res); err != nil {
				return fmt.Errorf("generated %s %q is invalid: %w", typeName(t), cache.GetResourceName(res), err)
			}
			b, err := deterministic.Marshal(res)
			if err != nil {
				return fmt.Errorf("marshal %s %q: %w", typeName(t), cache.GetResourceName(res), err)
			}
			fmt.Fprintf(h, "%s\x00%d\x00", cache.GetResourceName(res), len(b))
			h.Write(b)
		}
		r.typeVersions[t] = hex.EncodeToString(h.Sum(nil))[:16]
		fmt.Fprintf(all, "%s=%s\n", t, r.typeVersions[t])
	}
	r.Version = hex.EncodeToString(all.Sum(nil))[:16]
	return nil
}

// typeName is the short name of a type URL ("Listener").
func typeName(t resource.Type) string { return t[strings.LastIndexByte(t, '.')+1:] }

var deterministic = proto.MarshalOptions{Deterministic: true}

// typed packs m into an Any deterministically (anypb.New does not sort map
// entries, and RBAC policies are a map).
func typed(m proto.Message) *anypb.Any {
	b, err := deterministic.Marshal(m)
	if err != nil {
		panic(fmt.Sprintf("marshal %T: %v", m, err)) // only for invalid UTF-8, which the builders never produce
	}
	return &anypb.Any{TypeUrl: resource.APITypePrefix + string(m.ProtoReflect().Descriptor().FullName()), Value: b}
}

func checkEndpoints(in []Endpoint) ([]Endpoint, error) {
	eps := slices.Clone(in)
	slices.SortFunc(eps, func(a, b Endpoint) int { return strings.Compare(a.Key, b.Key) })
	var errs []error
	addrs := map[netip.Addr]string{}
	for i, ep := range eps {
		if i > 0 && eps[i-1].Key == ep.Key {
			errs = append(errs, fmt.Errorf("endpoint %s: listed twice", ep.Key))
		}
		if ep.Table == nil {
			errs = append(errs, fmt.Errorf("endpoint %s: no table", ep.Key))
		}
		for _, a := range ep.Addrs {
			if !a.IsValid() || a.Is4In6() || a.Zone() != "" {
				errs = append(errs, fmt.Errorf("endpoint %s: address %v: want a plain IPv4 or IPv6 address", ep.Key, a))
			} else if o, ok := addrs[a]; ok {
				errs = append(errs, fmt.Errorf("endpoint %s: address %v is also endpoint %s's", ep.Key, a, o))
			}
			addrs[a] = ep.Key
		}
	}
	return eps, errors.Join(errs...)
}

// chainPart is a segment a chain enforces; withPort when the chain's match
// does not select the port, so the policies must.
type chainPart struct {
	seg      segment
	withPort bool
}

func makeFilterChains(d direction, eps []Endpoint, idx *addrIndex, plan *mtlsPlan, remote []netip.Prefix) ([]*listenerv3.FilterChain, bool, error) {
	// Pods of one identity share a table, so their chains differ only in
	// the match: their connection managers are built once.
	hcms := map[string]*anypb.Any{}
	segs := make([][]segment, len(eps))
	exact := map[uint16]bool{}
	for i, ep := range eps {
		if len(ep.Addrs) == 0 {
			continue
		}
		dt := &ep.Table.Ingress
		if d.dir == policy.Egress {
			dt = &ep.Table.Egress
		}
		segs[i] = redirectSegments(dt)
		for _, s := range segs[i] {
			if s.lo == s.hi {
				exact[s.lo] = true
			}
		}
	}
	ports := make([]uint16, 0, len(exact))
	for p := range exact {
		ports = append(ports, p)
	}
	slices.Sort(ports)

	var chains []*listenerv3.FilterChain
	v6 := false
	for i, ep := range eps {
		if len(segs[i]) == 0 {
			continue
		}
		add := func(port uint16, parts []chainPart) error {
			c, err := makeFilterChain(d, ep, port, parts, idx, hcms)
			if c != nil {
				chains = append(chains, c)
				if d.dir == policy.Ingress && plan.accepts(ep) {
					chains = append(chains, plan.mtlsTwin(ep, c))
				}
				if d.dir == policy.Ingress && ep.Mode == MTLSStrict && len(remote) > 0 {
					chains = append(chains, strictRefusal(ep, c, remote))
				}
				if d.dir == policy.Egress && plan.originatesAny() {
					t, err := plan.outboundTwin(ep, c)
					if err != nil {
						return err
					}
					chains = append(chains, t)
				}
				v6 = v6 || slices.ContainsFunc(ep.Addrs, netip.Addr.Is6)
			}
			return err
		}
		for _, p := range ports {
			for _, s := range segs[i] {
				if s.lo <= p && p <= s.hi {
					if err := add(p, []chainPart{{seg: s}}); err != nil {
						return nil, false, err
					}
					break
				}
			}
		}
		var ranged []chainPart
		for _, s := range segs[i] {
			if s.lo != s.hi {
				ranged = append(ranged, chainPart{seg: s, withPort: true})
			}
		}
		if len(ranged) > 0 {
			if err := add(0, ranged); err != nil {
				return nil, false, err
			}
		}
	}
	return chains, v6, nil
}

// makeFilterChain builds the chain of endpoint ep for one port (0: the
// chain for its port ranges); nil when no address can reach its policies.
func makeFilterChain(d direction, ep Endpoint, port uint16, parts []chainPart, idx *addrIndex, hcms map[string]*anypb.Any) (*listenerv3.FilterChain, error) {
	var key strings.Builder
	for _, part := range parts {
		fmt.Fprintf(&key, "%d-%d-%v\x03%s\x04", part.seg.lo, part.seg.hi, part.withPort, part.seg.signature())
	}
	hcm, ok := hcms[key.String()]
	if !ok {
		policies, err := makePolicies(d, ep, parts, idx)
		if err != nil {
			return nil, err
		}
		if len(policies) > 0 {
			rbac := &rbacfilter.RBAC{Rules: &rbacv3.RBAC{Action: rbacv3.RBAC_ALLOW, Policies: policies}}
			hcm = typed(makeHTTPConnectionManager(d, rbac))
		}
		hcms[key.String()] = hcm
	}
	if hcm == nil {
		return nil, nil
	}
	match := &listenerv3.FilterChainMatch{}
	name := fmt.Sprintf("%s|%s|", d.name, ep.Key)
	if port != 0 {
		match.DestinationPort = wrapperspb.UInt32(uint32(port))
		name += fmt.Sprint(port)
	} else {
		name += "ranges"
	}
	addrs := slices.Clone(ep.Addrs)
	slices.SortFunc(addrs, netip.Addr.Compare)
	for _, a := range addrs {
		r := cidr(netip.PrefixFrom(a, a.BitLen()))
		if d.dir == policy.Ingress {
			match.PrefixRanges = append(match.PrefixRanges, r)
		} else {
			match.SourcePrefixRanges = append(match.SourcePrefixRanges, r)
		}
	}
	return &listenerv3.FilterChain{
		Name:             name,
		FilterChainMatch: match,
		Filters: []*listenerv3.Filter{{
			Name:       wellknown.HTTPConnectionManager,
			ConfigType: &listenerv3.Filter_TypedConfig{TypedConfig: hcm},
		}},
	}, nil
}

// makePolicies builds the RBAC policies of a chain: one per segment and
// HTTP rule set; none when no address can reach them.
func makePolicies(d direction, ep Endpoint, parts []chainPart, idx *addrIndex) (map[string]*rbacv3.Policy, error) {
	policies := map[string]*rbacv3.Policy{}
	for _, part := range parts {
		for _, g := range part.seg.groups {
			if g.rules.Len() == 0 {
				continue // allows no request
			}
			peers := idx.union(g.peers)
			if !peers.any && len(peers.regions) == 0 {
				continue // no address resolves to these peers
			}
			var conds []*rbacv3.Permission
			if part.withPort {
				conds = append(conds, portRangePermission(part.seg.lo, part.seg.hi))
			}
			principals := []*rbacv3.Principal{{Identifier: &rbacv3.Principal_Any{Any: true}}}
			if d.dir == policy.Ingress {
				principals = sourcePrincipals(peers)
			} else if p := destinationPermission(peers); p != nil {
				conds = append(conds, p)
			}
			perms := ruleSetPermissions(g.rules)
			if len(conds) > 0 {
				perms = []*rbacv3.Permission{andPerms(append(conds, orPerms(perms)))}
			}
			name := policyName(g)
			if part.withPort {
				name = fmt.Sprintf("ports-%d-%d/%s", part.seg.lo, part.seg.hi, name)
			}
			if _, dup := policies[name]; dup {
				return nil, fmt.Errorf("%s chain of %s: two rule sets named %s", d.name, ep.Key, name)
			}
			policies[name] = &rbacv3.Policy{Permissions: perms, Principals: principals}
		}
	}
	return policies, nil
}

// policyName names the policy of a rule set after the policy rules it comes
// from, for access logs and meshctl observe ("CiliumNetworkPolicy
// default/p spec.ingress[0]"), and after its contents, so that a policy
// keeps its name while the peers change and two rule sets never share one.
func policyName(g group) string {
	h := sha256.Sum256([]byte(g.rules.Key()))
	name := "http-rules-" + hex.EncodeToString(h[:6])
	if len(g.origins) > 0 {
		name = strings.Join(g.origins, "; ") + " #" + hex.EncodeToString(h[:4])
	}
	return name
}

func makeHTTPConnectionManager(d direction, rbac *rbacfilter.RBAC) *hcmv3.HttpConnectionManager {
	return &hcmv3.HttpConnectionManager{
		CodecType:  hcmv3.HttpConnectionManager_AUTO,
		StatPrefix: "nodemesh_" + d.name,
		RouteSpecifier: &hcmv3.HttpConnectionManager_Rds{Rds: &hcmv3.Rds{
			ConfigSource:    adsConfigSource(),
			RouteConfigName: d.route,
		}},
		HttpFilters: []*hcmv3.HttpFilter{
			{Name: wellknown.HTTPRoleBasedAccessControl, ConfigType: &hcmv3.HttpFilter_TypedConfig{TypedConfig: typed(rbac)}},
			{Name: wellknown.Router, ConfigType: &hcmv3.HttpFilter_TypedConfig{TypedConfig: typed(&routerfilter.Router{})}},
		},
		// The rules match the path as the client sent it (l7policy does
		// not normalize); set explicitly so that a runtime default
		// cannot change what the regexes see.
		NormalizePath:                wrapperspb.Bool(false),
		MergeSlashes:                 false,
		PathWithEscapedSlashesAction: hcmv3.HttpConnectionManager_KEEP_UNCHANGED,
		// A transparent proxy: leave the application's headers alone.
		GenerateRequestId:          wrapperspb.Bool(false),
		ServerHeaderTransformation: hcmv3.HttpConnectionManager_PASS_THROUGH,
		UpgradeConfigs:             []*hcmv3.HttpConnectionManager_UpgradeConfig{{UpgradeType: "websocket"}},
		AccessLog:                  []*accesslogv3.AccessLog{accessLog(d)},
	}
}

// accessLog sends every request's entry to the agent's access log service
// (AccessLogServer) over the bootstrap's static AccessLogClusterName: the
// RBAC filter's verdict and matched policy travel in the entry's dynamic
// metadata and response_code_details, as upstream Envoy fills them. Envoy
// buffers entries (1 s or 16 KiB) and drops them rather than stall
// requests when the agent is slow or gone.
func accessLog(d direction) *accesslogv3.AccessLog {
	return &accesslogv3.AccessLog{
		Name:       wellknown.HTTPGRPCAccessLog,
		ConfigType: &accesslogv3.AccessLog_TypedConfig{TypedConfig: typed(&grpcalsv3.HttpGrpcAccessLogConfig{CommonConfig: alsCommon(d.logName)})},
	}
}

// tcpAccessLog is accessLog's twin for L4 chains (tcp_proxy): one entry
// per connection.
func tcpAccessLog(logName string) *accesslogv3.AccessLog {
	return &accesslogv3.AccessLog{
		Name:       "envoy.access_loggers.tcp_grpc",
		ConfigType: &accesslogv3.AccessLog_TypedConfig{TypedConfig: typed(&grpcalsv3.TcpGrpcAccessLogConfig{CommonConfig: alsCommon(logName)})},
	}
}

func alsCommon(logName string) *grpcalsv3.CommonGrpcAccessLogConfig {
	return &grpcalsv3.CommonGrpcAccessLogConfig{
		LogName: logName,
		GrpcService: &corev3.GrpcService{TargetSpecifier: &corev3.GrpcService_EnvoyGrpc_{
			EnvoyGrpc: &corev3.GrpcService_EnvoyGrpc{ClusterName: AccessLogClusterName},
		}},
		TransportApiVersion: corev3.ApiVersion_V3,
	}
}

func adsConfigSource() *corev3.ConfigSource {
	return &corev3.ConfigSource{
		ResourceApiVersion:    corev3.ApiVersion_V3,
		ConfigSourceSpecifier: &corev3.ConfigSource_Ads{Ads: &corev3.AggregatedConfigSource{}},
	}
}

func socketAddress(addr string, port uint16) *corev3.Address {
	return &corev3.Address{Address: &corev3.Address_SocketAddress{SocketAddress: &corev3.SocketAddress{
		Protocol: corev3.SocketAddress_TCP, Address: addr, PortSpecifier: &corev3.SocketAddress_PortValue{PortValue: uint32(port)},
	}}}
}

// makeListener builds a transparent listener on all IPv4 addresses (and
// IPv6 ones when a chain needs them). The datapath hands it connections
// with bpf_sk_assign, so a socket's local address is the original
// destination: no original_dst listener filter is needed.
//
// The original_src listener filter makes every upstream connection of a
// downstream connection come from the client's IP (port chosen by the
// kernel), because the destination's datapath identifies the client by
// its source address: without it, the node's address would stand for
// every client the proxy serves. The filter's mark is the direction's, the
// same value the cluster sets with SO_MARK (in Envoy and nodemesh-proxy
// the cluster's socket options are applied after the filter's, so the
// cluster's would win; the build tests hold them equal).
func makeListener(d direction, chains []*listenerv3.FilterChain, v6 bool) *listenerv3.Listener {
	l := &listenerv3.Listener{
		Name:        d.listener,
		Address:     socketAddress("0.0.0.0", d.port),
		Transparent: wrapperspb.Bool(true),
		// bpf_sk_assign hands a connection to one socket: Envoy's default
		// of one SO_REUSEPORT socket per worker would split the listener
		// into a group the datapath would have to pick from.
		EnableReusePort:  wrapperspb.Bool(false),
		TrafficDirection: d.traffic,
		ListenerFilters: []*listenerv3.ListenerFilter{{
			Name:       wellknown.OriginalSource,
			ConfigType: &listenerv3.ListenerFilter_TypedConfig{TypedConfig: typed(&origsrcv3.OriginalSrc{Mark: d.mark})},
		}},
		FilterChains: chains,
	}
	if v6 {
		l.AdditionalAddresses = []*listenerv3.AdditionalAddress{{Address: socketAddress("::", d.port)}}
	}
	return l
}

// makeRoute routes every request of the direction to its ORIGINAL_DST
// cluster, without a route timeout: the proxy is transparent, the
// application sets its own.
func makeRoute(d direction) *routev3.RouteConfiguration {
	return &routev3.RouteConfiguration{
		Name: d.route,
		VirtualHosts: []*routev3.VirtualHost{{
			Name:    d.route,
			Domains: []string{"*"},
			Routes: []*routev3.Route{{
				Match: &routev3.RouteMatch{PathSpecifier: &routev3.RouteMatch_Prefix{Prefix: "/"}},
				Action: &routev3.Route_Route{Route: &routev3.RouteAction{
					ClusterSpecifier: &routev3.RouteAction_Cluster{Cluster: d.cluster},
					Timeout:          durationpb.New(0),
				}},
			}},
		}},
	}
}

// makeCluster builds the ORIGINAL_DST cluster of a direction: upstream
// connections go to the downstream connection's original destination,
// marked so that the datapath does not steer them to the proxy again, in
// the protocol the client spoke (HTTP/1.1 or h2c).
func makeCluster(d direction, connectTimeout time.Duration) *clusterv3.Cluster {
	return &clusterv3.Cluster{
		Name:                 d.cluster,
		ClusterDiscoveryType: &clusterv3.Cluster_Type{Type: clusterv3.Cluster_ORIGINAL_DST},
		LbPolicy:             clusterv3.Cluster_CLUSTER_PROVIDED,
		ConnectTimeout:       durationpb.New(connectTimeout),
		UpstreamBindConfig: &corev3.BindConfig{SocketOptions: []*corev3.SocketOption{{
			Description: fmt.Sprintf("SO_MARK 0x%x: nodemesh proxy %s upstream", d.mark, d.name),
			Level:       solSocket,
			Name:        soMark,
			Value:       &corev3.SocketOption_IntValue{IntValue: int64(d.mark)},
			State:       corev3.SocketOption_STATE_PREBIND,
		}}},
		TypedExtensionProtocolOptions: map[string]*anypb.Any{
			"envoy.extensions.upstreams.http.v3.HttpProtocolOptions": typed(&upstreamhttpv3.HttpProtocolOptions{
				UpstreamProtocolOptions: &upstreamhttpv3.HttpProtocolOptions_UseDownstreamProtocolConfig{
					UseDownstreamProtocolConfig: &upstreamhttpv3.HttpProtocolOptions_UseDownstreamHttpConfig{
						HttpProtocolOptions:  &corev3.Http1ProtocolOptions{},
						Http2ProtocolOptions: &corev3.Http2ProtocolOptions{},
					},
				},
			}),
		},
	}
}
