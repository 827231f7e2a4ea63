package proxy

import (
	"strings"
	"testing"
	"time"

	accesslog "github.com/envoyproxy/go-control-plane/envoy/config/accesslog/v3"
	cluster "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	core "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	listener "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	rbac "github.com/envoyproxy/go-control-plane/envoy/config/rbac/v3"
	route "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	fileal "github.com/envoyproxy/go-control-plane/envoy/extensions/access_loggers/file/v3"
	grpcals "github.com/envoyproxy/go-control-plane/envoy/extensions/access_loggers/grpc/v3"
	stdoutlog "github.com/envoyproxy/go-control-plane/envoy/extensions/access_loggers/stream/v3"
	rbacfilter "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/rbac/v3"
	origdst "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/listener/original_dst/v3"
	origsrc "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/listener/original_src/v3"
	hcm "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	tcpproxy "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/tcp_proxy/v3"
	tls "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/tls/v3"
	matcher "github.com/envoyproxy/go-control-plane/envoy/type/matcher/v3"
	tracingtype "github.com/envoyproxy/go-control-plane/envoy/type/tracing/v3"
	expr "google.golang.org/genproto/googleapis/api/expr/v1alpha1"
	"google.golang.org/protobuf/types/known/anypb"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/wrapperspb"

	pt "github.com/nodemesh/nodemesh/proxy/proxytest"
)

// testListener is what the control plane sends for an L7 redirect:
// RDS, one RBAC filter, the router, on 127.0.0.1:0.
func testListener(tweaks ...func(*listener.Listener)) *listener.Listener {
	return pt.Listener("l7", "127.0.0.1", 0, pt.HCM("routes", []*hcm.HttpFilter{
		pt.RBACFilter(rbac.RBAC_ALLOW, map[string]*rbac.Policy{"p": pt.MethodPathPolicy("GET", "/userdata/[0-9]+")}),
	}), tweaks...)
}

// withHCM edits the HCM of the first filter chain.
func withHCM(f func(*hcm.HttpConnectionManager)) func(*listener.Listener) {
	return func(l *listener.Listener) {
		var h hcm.HttpConnectionManager
		if err := l.FilterChains[0].Filters[0].GetTypedConfig().UnmarshalTo(&h); err != nil {
			panic(err)
		}
		f(&h)
		l.FilterChains[0].Filters[0] = pt.HCMFilter(&h)
	}
}

// withPolicy replaces the RBAC policy "p".
func withPolicy(pol *rbac.Policy) func(*listener.Listener) {
	return withHCM(func(h *hcm.HttpConnectionManager) {
		h.HttpFilters[0] = pt.RBACFilter(rbac.RBAC_ALLOW, map[string]*rbac.Policy{"p": pol})
	})
}

func anyPrincipal() []*rbac.Principal {
	return []*rbac.Principal{{Identifier: &rbac.Principal_Any{Any: true}}}
}

func TestTranslateListener(t *testing.T) {
	for _, tc := range []struct {
		name    string
		l       *listener.Listener
		wantErr string
	}{
		{name: "supported", l: testListener()},
		{name: "transparent freebind and original_dst listener filter", l: testListener(func(l *listener.Listener) {
			l.Freebind = wrapperspb.Bool(true)
			l.ListenerFilters = []*listener.ListenerFilter{{Name: "envoy.filters.listener.original_dst",
				ConfigType: &listener.ListenerFilter_TypedConfig{TypedConfig: pt.Any(&origdst.OriginalDst{})}}}
		})},
		{name: "original_src listener filter", l: testListener(pt.Transparent, pt.OriginalSrc(0xa00))},
		{name: "original_src bind_port", wantErr: `listener "l7".listener_filters[0].typed_config: field bind_port not supported by nodemesh-proxy`,
			l: testListener(func(l *listener.Listener) {
				l.ListenerFilters = []*listener.ListenerFilter{{Name: "envoy.filters.listener.original_src",
					ConfigType: &listener.ListenerFilter_TypedConfig{TypedConfig: pt.Any(&origsrc.OriginalSrc{BindPort: true, Mark: 1})}}}
			})},
		{name: "original_src twice", wantErr: "listener_filters[1]: envoy.filters.listener.original_src is listed twice",
			l: testListener(pt.OriginalSrc(1), pt.OriginalSrc(2))},
		{name: "original_src with an original_dst config", wantErr: `listener_filters[0].typed_config: typed_config type "type.googleapis.com/envoy.extensions.filters.listener.original_dst.v3.OriginalDst" is not supported`,
			l: testListener(func(l *listener.Listener) {
				l.ListenerFilters = []*listener.ListenerFilter{{Name: "envoy.filters.listener.original_src",
					ConfigType: &listener.ListenerFilter_TypedConfig{TypedConfig: pt.Any(&origdst.OriginalDst{})}}}
			})},
		{name: "grpc access log", l: testListener(withHCM(pt.WithGRPCAccessLog("als", "inbound", pt.FlushInterval(50*time.Millisecond), func(c *grpcals.CommonGrpcAccessLogConfig) {
			c.BufferSizeBytes = wrapperspb.UInt32(0)
		})))},
		{name: "grpc access log over google_grpc", wantErr: `access_log[0].typed_config.common_config.grpc_service: field google_grpc not supported`,
			l: testListener(withHCM(pt.WithGRPCAccessLog("als", "inbound", func(c *grpcals.CommonGrpcAccessLogConfig) {
				c.GrpcService = &core.GrpcService{TargetSpecifier: &core.GrpcService_GoogleGrpc_{GoogleGrpc: &core.GrpcService_GoogleGrpc{TargetUri: "x"}}}
			})))},
		{name: "grpc access log timeout", wantErr: `grpc_service: field timeout not supported`,
			l: testListener(withHCM(pt.WithGRPCAccessLog("als", "inbound", func(c *grpcals.CommonGrpcAccessLogConfig) {
				c.GrpcService.Timeout = durationpb.New(time.Second)
			})))},
		{name: "grpc access log AUTO transport", wantErr: `common_config.transport_api_version: AUTO is not supported (V3)`,
			l: testListener(withHCM(pt.WithGRPCAccessLog("als", "inbound", func(c *grpcals.CommonGrpcAccessLogConfig) {
				c.TransportApiVersion = core.ApiVersion_AUTO
			})))},
		{name: "grpc access log custom tags", wantErr: `common_config: field custom_tags not supported`,
			l: testListener(withHCM(pt.WithGRPCAccessLog("als", "inbound", func(c *grpcals.CommonGrpcAccessLogConfig) {
				c.CustomTags = []*tracingtype.CustomTag{{Tag: "direction", Type: &tracingtype.CustomTag_Literal_{Literal: &tracingtype.CustomTag_Literal{Value: "in"}}}}
			})))},
		{name: "grpc access log extra headers", wantErr: `access_log[0].typed_config: field additional_request_headers_to_log not supported`,
			l: testListener(withHCM(func(h *hcm.HttpConnectionManager) {
				h.AccessLog = []*accesslog.AccessLog{{Name: "envoy.access_loggers.http_grpc", ConfigType: &accesslog.AccessLog_TypedConfig{TypedConfig: pt.Any(
					&grpcals.HttpGrpcAccessLogConfig{AdditionalRequestHeadersToLog: []string{"x-a"}})}}}
			}))},
		{name: "grpc access log without log name", wantErr: `common_config.log_name: is required`,
			l: testListener(withHCM(pt.WithGRPCAccessLog("als", "")))},
		{name: "filter chain match", l: testListener(func(l *listener.Listener) {
			l.FilterChains[0].FilterChainMatch = &listener.FilterChainMatch{
				DestinationPort: wrapperspb.UInt32(80), PrefixRanges: cidrs("10.0.0.0/8"), SourcePrefixRanges: cidrs("10.1.0.0/16"),
				TransportProtocol: "raw_buffer"}
		})},
		{name: "inline route config", l: testListener(withHCM(func(h *hcm.HttpConnectionManager) {
			h.RouteSpecifier = &hcm.HttpConnectionManager_RouteConfig{RouteConfig: pt.RouteConfig("inline", "c")}
		}))},
		{name: "timeouts, header limit, codec, stdout access log", l: testListener(withHCM(func(h *hcm.HttpConnectionManager) {
			h.CodecType = hcm.HttpConnectionManager_HTTP2
			h.StreamIdleTimeout = durationpb.New(0)
			h.RequestTimeout = durationpb.New(5e9)
			h.CommonHttpProtocolOptions = &core.HttpProtocolOptions{IdleTimeout: durationpb.New(3e9)}
			h.MaxRequestHeadersKb = wrapperspb.UInt32(96)
			pt.WithAccessLog(h)
		}))},
		{name: "lua filter", wantErr: `listener "l7".filter_chains[0].filters[0].typed_config.http_filters[0]: http filter "envoy.filters.http.lua" is not supported`,
			l: testListener(withHCM(func(h *hcm.HttpConnectionManager) {
				h.HttpFilters = append([]*hcm.HttpFilter{{Name: "envoy.filters.http.lua"}}, h.HttpFilters...)
			}))},
		{name: "unknown http filter", wantErr: `http filter "envoy.filters.http.fault" is not supported`,
			l: testListener(withHCM(func(h *hcm.HttpConnectionManager) {
				h.HttpFilters = append([]*hcm.HttpFilter{{Name: "envoy.filters.http.fault"}}, h.HttpFilters...)
			}))},
		{name: "router not last", wantErr: "the last filter must be envoy.filters.http.router",
			l: testListener(withHCM(func(h *hcm.HttpConnectionManager) { h.HttpFilters = h.HttpFilters[:1] }))},
		{name: "tls transport socket without a context", wantErr: `filter_chains[0].transport_socket.typed_config.common_tls_context: is required`,
			l: testListener(func(l *listener.Listener) {
				l.FilterChains[0].TransportSocket = &core.TransportSocket{Name: "envoy.transport_sockets.tls",
					ConfigType: &core.TransportSocket_TypedConfig{TypedConfig: pt.Any(&tls.DownstreamTlsContext{})}}
			})},
		{name: "tcp_proxy without a cluster", wantErr: `filters[0].typed_config.cluster: is required`,
			l: testListener(func(l *listener.Listener) {
				l.FilterChains[0].Filters[0] = &listener.Filter{Name: "envoy.filters.network.tcp_proxy",
					ConfigType: &listener.Filter_TypedConfig{TypedConfig: pt.Any(&tcpproxy.TcpProxy{StatPrefix: "x"})}}
			})},
		{name: "unknown network filter", wantErr: `network filter "envoy.filters.network.echo" (type.googleapis.com/google.protobuf.Duration) is not supported`,
			l: testListener(func(l *listener.Listener) {
				l.FilterChains[0].Filters[0] = &listener.Filter{Name: "envoy.filters.network.echo",
					ConfigType: &listener.Filter_TypedConfig{TypedConfig: pt.Any(durationpb.New(time.Second))}}
			})},
		{name: "tls inspector without typed_config", wantErr: `listener_filters[0].typed_config: typed_config is required`,
			l: testListener(func(l *listener.Listener) {
				l.ListenerFilters = []*listener.ListenerFilter{{Name: "envoy.filters.listener.tls_inspector"}}
			})},
		{name: "server_names match", wantErr: "filter_chains[0].filter_chain_match: field server_names not supported",
			l: testListener(func(l *listener.Listener) {
				l.FilterChains[0].FilterChainMatch = &listener.FilterChainMatch{ServerNames: []string{"a.example"}}
			})},
		{name: "duplicate filter chain match", wantErr: "filter_chains[1]: filter_chain_match overlaps filter_chains[0]",
			l: testListener(func(l *listener.Listener) {
				l.FilterChains[0].FilterChainMatch = &listener.FilterChainMatch{PrefixRanges: cidrs("10.0.0.0/8", "10.1.0.0/16")}
				l.FilterChains = append(l.FilterChains, &listener.FilterChain{Filters: l.FilterChains[0].Filters,
					FilterChainMatch: &listener.FilterChainMatch{PrefixRanges: cidrs("10.1.0.0/16")}})
			})},
		{name: "file access log", wantErr: `access_log[0]: access logger "envoy.access_loggers.file" is not supported`,
			l: testListener(withHCM(func(h *hcm.HttpConnectionManager) {
				h.AccessLog = []*accesslog.AccessLog{{Name: "envoy.access_loggers.file",
					ConfigType: &accesslog.AccessLog_TypedConfig{TypedConfig: pt.Any(&fileal.FileAccessLog{Path: "/dev/stdout"})}}}
			}))},
		{name: "stdout access log with a format", wantErr: "access_log[0]: the proxy writes its own JSON line",
			l: testListener(withHCM(func(h *hcm.HttpConnectionManager) {
				h.AccessLog = []*accesslog.AccessLog{{Name: "envoy.access_loggers.stdout",
					ConfigType: &accesslog.AccessLog_TypedConfig{TypedConfig: pt.Any(&stdoutlog.StdoutAccessLog{
						AccessLogFormat: &stdoutlog.StdoutAccessLog_LogFormat{LogFormat: &core.SubstitutionFormatString{}}})}}}
			}))},
		{name: "access log filter", wantErr: "access_log[0]: field filter not supported",
			l: testListener(withHCM(func(h *hcm.HttpConnectionManager) {
				pt.WithAccessLog(h)
				h.AccessLog[0].Filter = &accesslog.AccessLogFilter{}
			}))},
		{name: "http3 codec", wantErr: "codec_type: HTTP3 is not supported",
			l: testListener(withHCM(func(h *hcm.HttpConnectionManager) { h.CodecType = hcm.HttpConnectionManager_HTTP3 }))},
		{name: "normalize_path", wantErr: "normalize_path: true is not supported",
			l: testListener(withHCM(func(h *hcm.HttpConnectionManager) { h.NormalizePath = wrapperspb.Bool(true) }))},
		{name: "tracing", wantErr: "field tracing not supported",
			l: testListener(withHCM(func(h *hcm.HttpConnectionManager) { h.Tracing = &hcm.HttpConnectionManager_Tracing{} }))},
		{name: "rbac LOG action", wantErr: "rules.action: LOG is not supported",
			l: testListener(withHCM(func(h *hcm.HttpConnectionManager) {
				h.HttpFilters[0] = pt.RBACFilter(rbac.RBAC_LOG, nil)
			}))},
		{name: "rbac shadow rules", wantErr: "field shadow_rules not supported",
			l: testListener(withHCM(func(h *hcm.HttpConnectionManager) {
				h.HttpFilters[0] = &hcm.HttpFilter{Name: "envoy.filters.http.rbac", ConfigType: &hcm.HttpFilter_TypedConfig{
					TypedConfig: pt.Any(&rbacfilter.RBAC{ShadowRules: &rbac.RBAC{}})}}
			}))},
		{name: "rbac CEL condition", wantErr: `policies["p"]: field condition not supported`,
			l: testListener(withPolicy(&rbac.Policy{Permissions: []*rbac.Permission{{Rule: &rbac.Permission_Any{Any: true}}},
				Principals: anyPrincipal(), Condition: &expr.Expr{}}))},
		{name: "rbac metadata permission", wantErr: `permissions[0]: permission metadata is not supported`,
			l: testListener(withPolicy(&rbac.Policy{Permissions: []*rbac.Permission{{Rule: &rbac.Permission_Metadata{Metadata: &matcher.MetadataMatcher{}}}}, Principals: anyPrincipal()}))},
		{name: "rbac authenticated principal", l: testListener(withPolicy(&rbac.Policy{Permissions: []*rbac.Permission{{Rule: &rbac.Permission_Any{Any: true}}},
			Principals: []*rbac.Principal{{Identifier: &rbac.Principal_Authenticated_{Authenticated: &rbac.Principal_Authenticated{}}}}}))},
		{name: "rbac authenticated principal with a bad regex", wantErr: `principals[0].authenticated.principal_name.safe_regex.regex "(": error parsing regexp`,
			l: testListener(withPolicy(&rbac.Policy{Permissions: []*rbac.Permission{{Rule: &rbac.Permission_Any{Any: true}}},
				Principals: []*rbac.Principal{pt.Authenticated(pt.Regex("("))}}))},
		{name: "rbac metadata principal", wantErr: `principals[0]: principal metadata is not supported`,
			l: testListener(withPolicy(&rbac.Policy{Permissions: []*rbac.Permission{{Rule: &rbac.Permission_Any{Any: true}}},
				Principals: []*rbac.Principal{{Identifier: &rbac.Principal_Metadata{Metadata: &matcher.MetadataMatcher{}}}}}))},
		{name: "rbac header range match", wantErr: `permissions[0].header: field range_match not supported`,
			l: testListener(withPolicy(&rbac.Policy{Permissions: []*rbac.Permission{{Rule: &rbac.Permission_Header{Header: &route.HeaderMatcher{
				Name: "x", HeaderMatchSpecifier: &route.HeaderMatcher_RangeMatch{}}}}}, Principals: anyPrincipal()}))},
		{name: "rbac bad regex", wantErr: `safe_regex.regex "(": error parsing regexp`,
			l: testListener(withPolicy(&rbac.Policy{Permissions: []*rbac.Permission{{Rule: &rbac.Permission_UrlPath{UrlPath: &matcher.PathMatcher{Rule: &matcher.PathMatcher_Path{Path: pt.Regex("(")}}}}}, Principals: anyPrincipal()}))},
		{name: "no address", wantErr: `listener "l7".address: is required`,
			l: testListener(func(l *listener.Listener) { l.Address = nil })},
		{name: "udp", wantErr: "protocol: UDP is not supported",
			l: testListener(func(l *listener.Listener) { l.Address.GetSocketAddress().Protocol = core.SocketAddress_UDP })},
		{name: "listener access log", wantErr: `listener "l7": field access_log not supported`,
			l: testListener(func(l *listener.Listener) { l.AccessLog = []*accesslog.AccessLog{{Name: "x"}} })},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := compileListener(tc.l)
			checkErr(t, err, tc.wantErr)
		})
	}
}

func checkErr(t *testing.T, err error, wantErr string) {
	t.Helper()
	switch {
	case wantErr == "" && err != nil:
		t.Fatalf("unexpected error: %v", err)
	case wantErr != "" && err == nil:
		t.Fatalf("no error, want %q", wantErr)
	case wantErr != "" && !strings.Contains(err.Error(), wantErr):
		t.Fatalf("error %q\n does not contain %q", err, wantErr)
	}
}

func TestTranslateCluster(t *testing.T) {
	od := func(tweaks ...func(*cluster.Cluster)) *cluster.Cluster {
		return pt.OriginalDstCluster("od", 0xb00, tweaks...)
	}
	for _, tc := range []struct {
		name    string
		c       *cluster.Cluster
		wantErr string
	}{
		{name: "original dst with SO_MARK", c: od()},
		{name: "original dst with header and port override", c: od(pt.UseOriginalDstHeader, func(c *cluster.Cluster) {
			c.GetOriginalDstLbConfig().UpstreamPortOverride = wrapperspb.UInt32(8080)
		})},
		{name: "static", c: pt.StaticCluster("s", pt.SocketAddress("127.0.0.1", 80))},
		{name: "eds", wantErr: `cluster "od".type: EDS is not supported by nodemesh-proxy`,
			c: od(func(c *cluster.Cluster) { c.ClusterDiscoveryType = &cluster.Cluster_Type{Type: cluster.Cluster_EDS} })},
		{name: "custom cluster type", wantErr: `custom cluster type "envoy.clusters.aggregate" is not supported`,
			c: od(func(c *cluster.Cluster) {
				c.ClusterDiscoveryType = &cluster.Cluster_ClusterType{ClusterType: &cluster.Cluster_CustomClusterType{Name: "envoy.clusters.aggregate"}}
			})},
		{name: "original dst with round robin", wantErr: "lb_policy: an ORIGINAL_DST cluster needs CLUSTER_PROVIDED",
			c: od(func(c *cluster.Cluster) { c.LbPolicy = cluster.Cluster_ROUND_ROBIN })},
		{name: "upstream tls without typed_config", wantErr: `cluster "od".transport_socket.typed_config: is required`,
			c: od(func(c *cluster.Cluster) {
				c.TransportSocket = &core.TransportSocket{Name: "envoy.transport_sockets.tls"}
			})},
		{name: "circuit breakers", wantErr: "field circuit_breakers not supported",
			c: od(func(c *cluster.Cluster) { c.CircuitBreakers = &cluster.CircuitBreakers{} })},
		{name: "socket option after bind", wantErr: "socket_options[0].state: STATE_BOUND is not supported",
			c: od(func(c *cluster.Cluster) { c.UpstreamBindConfig.SocketOptions[0].State = core.SocketOption_STATE_BOUND })},
		{name: "buffer socket option", wantErr: "socket_options[0]: field buf_value not supported",
			c: od(func(c *cluster.Cluster) {
				c.UpstreamBindConfig.SocketOptions[0].Value = &core.SocketOption_BufValue{BufValue: []byte("x")}
			})},
		{name: "static without endpoints", wantErr: "a STATIC cluster needs endpoints",
			c: &cluster.Cluster{Name: "s", ClusterDiscoveryType: &cluster.Cluster_Type{Type: cluster.Cluster_STATIC}}},
		{name: "hostname endpoint", wantErr: `address "backend.example": an IP address is required`,
			c: pt.StaticCluster("s", pt.SocketAddress("backend.example", 80))},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := compileCluster(`cluster "`+tc.c.GetName()+`"`, tc.c)
			checkErr(t, err, tc.wantErr)
		})
	}
}

func TestTranslateRoute(t *testing.T) {
	rc := func(tweak func(*route.Route)) *route.RouteConfiguration {
		r := pt.RouteConfig("r", "c")
		tweak(r.VirtualHosts[0].Routes[0])
		return r
	}
	for _, tc := range []struct {
		name    string
		rc      *route.RouteConfiguration
		wantErr string
	}{
		{name: "prefix", rc: rc(func(*route.Route) {})},
		{name: "exact path, headers, timeouts", rc: rc(func(r *route.Route) {
			r.Match.PathSpecifier = &route.RouteMatch_Path{Path: "/x"}
			r.Match.Headers = []*route.HeaderMatcher{{Name: "x-a", HeaderMatchSpecifier: &route.HeaderMatcher_PresentMatch{PresentMatch: true}}}
			r.GetRoute().Timeout = durationpb.New(0)
			r.GetRoute().IdleTimeout = durationpb.New(1e9)
		})},
		{name: "direct response", rc: rc(func(r *route.Route) {
			r.Action = &route.Route_DirectResponse{DirectResponse: &route.DirectResponseAction{Status: 403,
				Body: &core.DataSource{Specifier: &core.DataSource_InlineString{InlineString: "no"}}}}
		})},
		{name: "weighted clusters", wantErr: `routes[0].route: field weighted_clusters not supported`, rc: rc(func(r *route.Route) {
			r.GetRoute().ClusterSpecifier = &route.RouteAction_WeightedClusters{WeightedClusters: &route.WeightedCluster{}}
		})},
		{name: "retry policy", wantErr: "field retry_policy not supported", rc: rc(func(r *route.Route) {
			r.GetRoute().RetryPolicy = &route.RetryPolicy{}
		})},
		{name: "prefix rewrite", wantErr: "field prefix_rewrite not supported", rc: rc(func(r *route.Route) {
			r.GetRoute().PrefixRewrite = "/y"
		})},
		{name: "query parameters", wantErr: "match: field query_parameters not supported", rc: rc(func(r *route.Route) {
			r.Match.QueryParameters = []*route.QueryParameterMatcher{{Name: "a"}}
		})},
		{name: "redirect", wantErr: `field redirect not supported`, rc: rc(func(r *route.Route) {
			r.Action = &route.Route_Redirect{Redirect: &route.RedirectAction{}}
		})},
		{name: "per-filter config", wantErr: "field typed_per_filter_config not supported", rc: rc(func(r *route.Route) {
			r.TypedPerFilterConfig = map[string]*anypb.Any{"envoy.filters.http.rbac": pt.Any(&rbacfilter.RBACPerRoute{})}
		})},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := compileRouteConfig(`route configuration "r"`, tc.rc)
			checkErr(t, err, tc.wantErr)
		})
	}
}

// TestNACKKeepsLastGood applies a good config, then a bad one: the error
// names the field and the good config keeps serving; a good listener in
// the same response is still applied (per-resource, as Envoy).
func TestNACKKeepsLastGood(t *testing.T) {
	p := New(Config{NodeID: "n"}, nil)
	defer p.Close()
	if err := p.applyRoutes("1", []*route.RouteConfiguration{pt.RouteConfig("routes", "od")}); err != nil {
		t.Fatal(err)
	}
	if err := p.applyListeners("1", []*listener.Listener{testListener()}); err != nil {
		t.Fatal(err)
	}
	bad := testListener(withHCM(func(h *hcm.HttpConnectionManager) {
		h.HttpFilters = append([]*hcm.HttpFilter{{Name: "envoy.filters.http.lua"}}, h.HttpFilters...)
	}))
	other := testListener(func(l *listener.Listener) { l.Name = "other" })
	err := p.applyListeners("2", []*listener.Listener{bad, other})
	checkErr(t, err, `listener "l7".filter_chains[0].filters[0].typed_config.http_filters[0]: http filter "envoy.filters.http.lua" is not supported`)
	st := p.listeners["l7"]
	if lc := st.rt.cfg.Load(); lc == nil || lc.version != "1" {
		t.Fatalf("l7 active config = %v, want version 1 kept", lc)
	}
	if st.failed == nil || st.failed.GetVersionInfo() != "2" || !strings.Contains(st.failed.GetDetails(), "lua") {
		t.Fatalf("l7 error state = %v", st.failed)
	}
	if o := p.listeners["other"]; o == nil || o.rt == nil || o.version != "2" {
		t.Fatalf("listener other was not applied: %+v", o)
	}

	if err := p.applyClusters("1", []*cluster.Cluster{pt.OriginalDstCluster("od", 0xb00)}); err != nil {
		t.Fatal(err)
	}
	badC := pt.OriginalDstCluster("od", 0xb00)
	badC.LbPolicy = cluster.Cluster_RANDOM
	checkErr(t, p.applyClusters("2", []*cluster.Cluster{badC}), "needs CLUSTER_PROVIDED")
	if u := (*p.clusters.Load())["od"]; u == nil || p.clusterStates["od"].version != "1" {
		t.Fatalf("cluster od not kept at version 1")
	}
}
