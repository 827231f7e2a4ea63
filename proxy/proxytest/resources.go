package proxytest

import (
	"time"

	accesslog "github.com/envoyproxy/go-control-plane/envoy/config/accesslog/v3"
	cluster "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	core "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	endpoint "github.com/envoyproxy/go-control-plane/envoy/config/endpoint/v3"
	listener "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	rbac "github.com/envoyproxy/go-control-plane/envoy/config/rbac/v3"
	route "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	grpcals "github.com/envoyproxy/go-control-plane/envoy/extensions/access_loggers/grpc/v3"
	stdoutlog "github.com/envoyproxy/go-control-plane/envoy/extensions/access_loggers/stream/v3"
	rbacfilter "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/rbac/v3"
	router "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/router/v3"
	origsrc "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/listener/original_src/v3"
	hcm "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	netrbac "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/rbac/v3"
	tcpproxy "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/tcp_proxy/v3"
	matcher "github.com/envoyproxy/go-control-plane/envoy/type/matcher/v3"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/wrapperspb"
)

// Any packs m; it panics on error (only for well-formed test messages).
func Any(m proto.Message) *anypb.Any {
	a, err := anypb.New(m)
	if err != nil {
		panic(err)
	}
	return a
}

// SocketAddress is a TCP address.
func SocketAddress(ip string, port uint32) *core.Address {
	return &core.Address{Address: &core.Address_SocketAddress{SocketAddress: &core.SocketAddress{
		Address: ip, PortSpecifier: &core.SocketAddress_PortValue{PortValue: port}}}}
}

// Listener builds a listener with one HCM filter chain.
func Listener(name, ip string, port uint32, h *hcm.HttpConnectionManager, tweaks ...func(*listener.Listener)) *listener.Listener {
	l := &listener.Listener{
		Name:    name,
		Address: SocketAddress(ip, port),
		FilterChains: []*listener.FilterChain{{
			Name:    name + "-http",
			Filters: []*listener.Filter{HCMFilter(h)},
		}},
	}
	for _, t := range tweaks {
		t(l)
	}
	return l
}

// HCMFilter wraps an HCM as a network filter.
func HCMFilter(h *hcm.HttpConnectionManager) *listener.Filter {
	return &listener.Filter{Name: "envoy.filters.network.http_connection_manager", ConfigType: &listener.Filter_TypedConfig{TypedConfig: Any(h)}}
}

// Transparent sets transparent: true.
func Transparent(l *listener.Listener) { l.Transparent = wrapperspb.Bool(true) }

// HCM builds an HTTP connection manager with RDS, the given HTTP filters,
// then the router.
func HCM(rdsName string, filters []*hcm.HttpFilter, tweaks ...func(*hcm.HttpConnectionManager)) *hcm.HttpConnectionManager {
	h := &hcm.HttpConnectionManager{
		StatPrefix: "nodemesh",
		RouteSpecifier: &hcm.HttpConnectionManager_Rds{Rds: &hcm.Rds{
			RouteConfigName: rdsName,
			ConfigSource: &core.ConfigSource{ResourceApiVersion: core.ApiVersion_V3,
				ConfigSourceSpecifier: &core.ConfigSource_Ads{Ads: &core.AggregatedConfigSource{}}},
		}},
		HttpFilters: append(filters, &hcm.HttpFilter{Name: "envoy.filters.http.router",
			ConfigType: &hcm.HttpFilter_TypedConfig{TypedConfig: Any(&router.Router{})}}),
	}
	for _, t := range tweaks {
		t(h)
	}
	return h
}

// WithAccessLog adds the stdout access logger.
func WithAccessLog(h *hcm.HttpConnectionManager) {
	h.AccessLog = append(h.AccessLog, &accesslog.AccessLog{Name: "envoy.access_loggers.stdout",
		ConfigType: &accesslog.AccessLog_TypedConfig{TypedConfig: Any(&stdoutlog.StdoutAccessLog{})}})
}

// WithGRPCAccessLog adds an envoy.access_loggers.http_grpc logger
// sending to the static cluster clusterName under logName, as the
// Nodemesh control plane configures it; tweaks edit its common_config.
func WithGRPCAccessLog(clusterName, logName string, tweaks ...func(*grpcals.CommonGrpcAccessLogConfig)) func(*hcm.HttpConnectionManager) {
	return func(h *hcm.HttpConnectionManager) {
		cc := &grpcals.CommonGrpcAccessLogConfig{
			LogName: logName,
			GrpcService: &core.GrpcService{TargetSpecifier: &core.GrpcService_EnvoyGrpc_{
				EnvoyGrpc: &core.GrpcService_EnvoyGrpc{ClusterName: clusterName}}},
			TransportApiVersion: core.ApiVersion_V3,
		}
		for _, t := range tweaks {
			t(cc)
		}
		h.AccessLog = append(h.AccessLog, &accesslog.AccessLog{Name: "envoy.access_loggers.http_grpc",
			ConfigType: &accesslog.AccessLog_TypedConfig{TypedConfig: Any(&grpcals.HttpGrpcAccessLogConfig{CommonConfig: cc})}})
	}
}

// TCPGRPCAccessLog is an envoy.access_loggers.tcp_grpc logger for a
// tcp_proxy's access_log, sending to the static cluster clusterName under
// logName; tweaks edit its common_config.
func TCPGRPCAccessLog(clusterName, logName string, tweaks ...func(*grpcals.CommonGrpcAccessLogConfig)) *accesslog.AccessLog {
	cc := &grpcals.CommonGrpcAccessLogConfig{
		LogName: logName,
		GrpcService: &core.GrpcService{TargetSpecifier: &core.GrpcService_EnvoyGrpc_{
			EnvoyGrpc: &core.GrpcService_EnvoyGrpc{ClusterName: clusterName}}},
		TransportApiVersion: core.ApiVersion_V3,
	}
	for _, t := range tweaks {
		t(cc)
	}
	return &accesslog.AccessLog{Name: "envoy.access_loggers.tcp_grpc",
		ConfigType: &accesslog.AccessLog_TypedConfig{TypedConfig: Any(&grpcals.TcpGrpcAccessLogConfig{CommonConfig: cc})}}
}

// WithTCPAccessLogs adds access loggers to a tcp_proxy (TCPProxyFilter's
// tweak).
func WithTCPAccessLogs(logs ...*accesslog.AccessLog) func(*tcpproxy.TcpProxy) {
	return func(t *tcpproxy.TcpProxy) { t.AccessLog = append(t.AccessLog, logs...) }
}

// StdoutAccessLog is the envoy.access_loggers.stdout logger without
// log_format.
func StdoutAccessLog() *accesslog.AccessLog {
	return &accesslog.AccessLog{Name: "envoy.access_loggers.stdout",
		ConfigType: &accesslog.AccessLog_TypedConfig{TypedConfig: Any(&stdoutlog.StdoutAccessLog{})}}
}

// FlushInterval sets a gRPC access log's buffer_flush_interval.
func FlushInterval(d time.Duration) func(*grpcals.CommonGrpcAccessLogConfig) {
	return func(c *grpcals.CommonGrpcAccessLogConfig) { c.BufferFlushInterval = durationpb.New(d) }
}

// OriginalSrc adds the original_src listener filter: upstream connections
// come from the client's IP, marked with mark (0: unmarked).
func OriginalSrc(mark uint32) func(*listener.Listener) {
	return func(l *listener.Listener) {
		l.ListenerFilters = append(l.ListenerFilters, &listener.ListenerFilter{Name: "envoy.filters.listener.original_src",
			ConfigType: &listener.ListenerFilter_TypedConfig{TypedConfig: Any(&origsrc.OriginalSrc{Mark: mark})}})
	}
}

// WithStreamIdleTimeout sets stream_idle_timeout.
func WithStreamIdleTimeout(d time.Duration) func(*hcm.HttpConnectionManager) {
	return func(h *hcm.HttpConnectionManager) { h.StreamIdleTimeout = durationpb.New(d) }
}

// RBACFilter builds an envoy.filters.http.rbac filter.
func RBACFilter(action rbac.RBAC_Action, policies map[string]*rbac.Policy) *hcm.HttpFilter {
	return &hcm.HttpFilter{Name: "envoy.filters.http.rbac", ConfigType: &hcm.HttpFilter_TypedConfig{TypedConfig: Any(
		&rbacfilter.RBAC{Rules: &rbac.RBAC{Action: action, Policies: policies}})}}
}

// MethodPathPolicy allows requests whose method and path (without
// query) fully match the RE2 expressions, from any peer: what the
// control plane makes of an L7 rule {method, path}.
func MethodPathPolicy(method, pathRegex string) *rbac.Policy {
	return &rbac.Policy{
		Permissions: []*rbac.Permission{{Rule: &rbac.Permission_AndRules{AndRules: &rbac.Permission_Set{Rules: []*rbac.Permission{
			{Rule: &rbac.Permission_Header{Header: &route.HeaderMatcher{Name: ":method",
				HeaderMatchSpecifier: &route.HeaderMatcher_StringMatch{StringMatch: Regex(method)}}}},
			{Rule: &rbac.Permission_UrlPath{UrlPath: &matcher.PathMatcher{Rule: &matcher.PathMatcher_Path{Path: Regex(pathRegex)}}}},
		}}}}},
		Principals: []*rbac.Principal{{Identifier: &rbac.Principal_Any{Any: true}}},
	}
}

// Regex is a google_re2 string matcher.
func Regex(expr string) *matcher.StringMatcher {
	return &matcher.StringMatcher{MatchPattern: &matcher.StringMatcher_SafeRegex{SafeRegex: &matcher.RegexMatcher{
		EngineType: &matcher.RegexMatcher_GoogleRe2{GoogleRe2: &matcher.RegexMatcher_GoogleRE2{}}, Regex: expr}}}
}

// RouteConfig routes every host and path to cluster.
func RouteConfig(name, clusterName string) *route.RouteConfiguration {
	return &route.RouteConfiguration{Name: name, VirtualHosts: []*route.VirtualHost{{
		Name: name, Domains: []string{"*"},
		Routes: []*route.Route{{
			Match:  &route.RouteMatch{PathSpecifier: &route.RouteMatch_Prefix{Prefix: "/"}},
			Action: &route.Route_Route{Route: &route.RouteAction{ClusterSpecifier: &route.RouteAction_Cluster{Cluster: clusterName}}},
		}},
	}}}
}

// StaticCluster sends to fixed endpoints, round robin.
func StaticCluster(name string, eps ...*core.Address) *cluster.Cluster {
	la := &endpoint.ClusterLoadAssignment{ClusterName: name, Endpoints: []*endpoint.LocalityLbEndpoints{{}}}
	for _, a := range eps {
		la.Endpoints[0].LbEndpoints = append(la.Endpoints[0].LbEndpoints, &endpoint.LbEndpoint{
			HostIdentifier: &endpoint.LbEndpoint_Endpoint{Endpoint: &endpoint.Endpoint{Address: a}}})
	}
	return &cluster.Cluster{
		Name:                 name,
		ClusterDiscoveryType: &cluster.Cluster_Type{Type: cluster.Cluster_STATIC},
		ConnectTimeout:       durationpb.New(2 * time.Second),
		LoadAssignment:       la,
	}
}

// OriginalDstCluster connects to each connection's original destination,
// with the proxy's upstream sockets marked (SO_MARK) so the datapath does
// not redirect them again.
func OriginalDstCluster(name string, mark int64, tweaks ...func(*cluster.Cluster)) *cluster.Cluster {
	c := &cluster.Cluster{
		Name:                 name,
		ClusterDiscoveryType: &cluster.Cluster_Type{Type: cluster.Cluster_ORIGINAL_DST},
		LbPolicy:             cluster.Cluster_CLUSTER_PROVIDED,
		ConnectTimeout:       durationpb.New(2 * time.Second),
	}
	if mark != 0 {
		c.UpstreamBindConfig = &core.BindConfig{SocketOptions: []*core.SocketOption{{
			Description: "SO_MARK", Level: 1 /* SOL_SOCKET */, Name: 36, /* SO_MARK */
			Value: &core.SocketOption_IntValue{IntValue: mark}, State: core.SocketOption_STATE_PREBIND,
		}}}
	}
	for _, t := range tweaks {
		t(c)
	}
	return c
}

// UseOriginalDstHeader lets x-envoy-original-dst-host override the
// destination (for tests on loopback, where a non-transparent listener's
// local address is its own).
func UseOriginalDstHeader(c *cluster.Cluster) {
	c.LbConfig = &cluster.Cluster_OriginalDstLbConfig_{OriginalDstLbConfig: &cluster.Cluster_OriginalDstLbConfig{UseHttpHeader: true}}
}

// TCPProxyFilter builds an envoy.filters.network.tcp_proxy to cluster.
func TCPProxyFilter(statPrefix, clusterName string, tweaks ...func(*tcpproxy.TcpProxy)) *listener.Filter {
	t := &tcpproxy.TcpProxy{StatPrefix: statPrefix, ClusterSpecifier: &tcpproxy.TcpProxy_Cluster{Cluster: clusterName}}
	for _, tw := range tweaks {
		tw(t)
	}
	return &listener.Filter{Name: "envoy.filters.network.tcp_proxy", ConfigType: &listener.Filter_TypedConfig{TypedConfig: Any(t)}}
}

// NetworkRBACFilter builds an envoy.filters.network.rbac.
func NetworkRBACFilter(statPrefix string, action rbac.RBAC_Action, policies map[string]*rbac.Policy) *listener.Filter {
	return &listener.Filter{Name: "envoy.filters.network.rbac", ConfigType: &listener.Filter_TypedConfig{TypedConfig: Any(
		&netrbac.RBAC{StatPrefix: statPrefix, Rules: &rbac.RBAC{Action: action, Policies: policies}})}}
}

// TCPListener is a listener on ip:port with one filter chain running the
// network filters (e.g. NetworkRBACFilter then TCPProxyFilter).
func TCPListener(name, ip string, port uint32, filters []*listener.Filter, tweaks ...func(*listener.Listener)) *listener.Listener {
	l := &listener.Listener{
		Name:         name,
		Address:      SocketAddress(ip, port),
		FilterChains: []*listener.FilterChain{{Name: name + "-tcp", Filters: filters}},
	}
	for _, t := range tweaks {
		t(l)
	}
	return l
}

// PortPolicy allows connections to destination port from any peer.
func PortPolicy(port uint32) *rbac.Policy {
	return &rbac.Policy{Permissions: []*rbac.Permission{{Rule: &rbac.Permission_DestinationPort{DestinationPort: port}}},
		Principals: []*rbac.Principal{{Identifier: &rbac.Principal_Any{Any: true}}}}
}
