package xdstest_test

import (
	"net/netip"
	"strings"
	"testing"

	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	rbacv3 "github.com/envoyproxy/go-control-plane/envoy/config/rbac/v3"
	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	rbacfilter "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/rbac/v3"
	routerfilter "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/router/v3"
	origsrcv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/listener/original_src/v3"
	hcmv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	matcherv3 "github.com/envoyproxy/go-control-plane/envoy/type/matcher/v3"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"
	"google.golang.org/protobuf/types/known/wrapperspb"

	"github.com/nodemesh/nodemesh/xds/xdstest"
)

func chain(name string, port uint32, dst ...string) *listenerv3.FilterChain {
	m := &listenerv3.FilterChainMatch{}
	if port != 0 {
		m.DestinationPort = wrapperspb.UInt32(port)
	}
	for _, d := range dst {
		p := netip.MustParsePrefix(d)
		m.PrefixRanges = append(m.PrefixRanges, &corev3.CidrRange{AddressPrefix: p.Addr().String(), PrefixLen: wrapperspb.UInt32(uint32(p.Bits()))})
	}
	return &listenerv3.FilterChain{Name: name, FilterChainMatch: m}
}

func TestFindFilterChain(t *testing.T) {
	l := &listenerv3.Listener{FilterChains: []*listenerv3.FilterChain{
		chain("a80", 80, "10.0.0.1/32"),
		chain("b-any-port", 0, "10.0.0.2/32"),
		chain("net80", 80, "10.1.0.0/16"),
		chain("host80", 80, "10.1.2.3/32"),
	}}
	for _, tc := range []struct{ dst, want string }{
		{"10.0.0.1:80", "a80"},
		{"10.0.0.2:81", "b-any-port"},
		{"10.0.0.2:80", ""}, // port 80 has chains: Envoy does not fall back to the portless one
		{"10.1.2.3:80", "host80"},
		{"10.1.2.4:80", "net80"},
		{"10.0.0.1:81", ""},
	} {
		fc, err := xdstest.FindFilterChain(l, xdstest.Conn{Src: netip.MustParseAddrPort("10.9.9.9:1"), Dst: netip.MustParseAddrPort(tc.dst)})
		if err != nil {
			t.Fatal(err)
		}
		if got := fc.GetName(); got != tc.want {
			t.Errorf("%s: chain %q, want %q", tc.dst, got, tc.want)
		}
	}
	l.FilterChains = append(l.FilterChains, chain("dup", 80, "10.0.0.1/32"))
	if _, err := xdstest.FindFilterChain(l, xdstest.Conn{Src: netip.MustParseAddrPort("10.9.9.9:1"), Dst: netip.MustParseAddrPort("10.0.0.1:80")}); err == nil || !strings.Contains(err.Error(), "same match") {
		t.Errorf("duplicate matches: %v", err)
	}
}

func mustAny(t *testing.T, m proto.Message) *anypb.Any {
	a, err := anypb.New(m)
	if err != nil {
		t.Fatal(err)
	}
	return a
}

func TestAuthorize(t *testing.T) {
	re := func(s string) *matcherv3.StringMatcher {
		return &matcherv3.StringMatcher{MatchPattern: &matcherv3.StringMatcher_SafeRegex{SafeRegex: &matcherv3.RegexMatcher{Regex: s}}}
	}
	perm := &rbacv3.Permission{Rule: &rbacv3.Permission_AndRules{AndRules: &rbacv3.Permission_Set{Rules: []*rbacv3.Permission{
		{Rule: &rbacv3.Permission_Header{Header: &routev3.HeaderMatcher{Name: ":method", HeaderMatchSpecifier: &routev3.HeaderMatcher_StringMatch{StringMatch: re("GET")}}}},
		{Rule: &rbacv3.Permission_UrlPath{UrlPath: &matcherv3.PathMatcher{Rule: &matcherv3.PathMatcher_Path{Path: re("/a/[0-9]+")}}}},
	}}}}
	cidr := func(s string) *corev3.CidrRange {
		p := netip.MustParsePrefix(s)
		return &corev3.CidrRange{AddressPrefix: p.Addr().String(), PrefixLen: wrapperspb.UInt32(uint32(p.Bits()))}
	}
	princ := &rbacv3.Principal{Identifier: &rbacv3.Principal_AndIds{AndIds: &rbacv3.Principal_Set{Ids: []*rbacv3.Principal{
		{Identifier: &rbacv3.Principal_DirectRemoteIp{DirectRemoteIp: cidr("10.0.0.0/8")}},
		{Identifier: &rbacv3.Principal_NotId{NotId: &rbacv3.Principal{Identifier: &rbacv3.Principal_DirectRemoteIp{DirectRemoteIp: cidr("10.1.0.0/16")}}}},
	}}}}
	rbac := &rbacfilter.RBAC{Rules: &rbacv3.RBAC{Policies: map[string]*rbacv3.Policy{"p": {Permissions: []*rbacv3.Permission{perm}, Principals: []*rbacv3.Principal{princ}}}}}
	hcm := &hcmv3.HttpConnectionManager{StatPrefix: "x", HttpFilters: []*hcmv3.HttpFilter{
		{Name: "envoy.filters.http.rbac", ConfigType: &hcmv3.HttpFilter_TypedConfig{TypedConfig: mustAny(t, rbac)}},
		{Name: "envoy.filters.http.router", ConfigType: &hcmv3.HttpFilter_TypedConfig{TypedConfig: mustAny(t, &routerfilter.Router{})}},
	}}
	fc := &listenerv3.FilterChain{Filters: []*listenerv3.Filter{{Name: "envoy.filters.network.http_connection_manager",
		ConfigType: &listenerv3.Filter_TypedConfig{TypedConfig: mustAny(t, hcm)}}}}
	for _, tc := range []struct {
		src    string
		method string
		path   string
		want   bool
	}{
		{"10.2.0.1", "GET", "/a/1", true},
		{"10.2.0.1", "GET", "/a/1?q=x", true},
		{"10.2.0.1", "GET", "/a/1x", false},
		{"10.2.0.1", "GET", "/b/a/1", false},
		{"10.2.0.1", "PUT", "/a/1", false},
		{"10.1.0.1", "GET", "/a/1", false}, // the hole
		{"11.0.0.1", "GET", "/a/1", false},
	} {
		c := xdstest.Conn{Src: netip.AddrPortFrom(netip.MustParseAddr(tc.src), 1), Dst: netip.MustParseAddrPort("10.0.0.1:80")}
		got, _, err := xdstest.Authorize(fc, c, xdstest.Request{Method: tc.method, Path: tc.path})
		if err != nil {
			t.Fatal(err)
		}
		if got != tc.want {
			t.Errorf("%s %s %s: %v, want %v", tc.src, tc.method, tc.path, got, tc.want)
		}
	}
}

func TestUpstreamOf(t *testing.T) {
	origSrc := func(mark uint32) *listenerv3.ListenerFilter {
		return &listenerv3.ListenerFilter{Name: "envoy.filters.listener.original_src",
			ConfigType: &listenerv3.ListenerFilter_TypedConfig{TypedConfig: mustAny(t, &origsrcv3.OriginalSrc{Mark: mark})}}
	}
	markOpt := func(mark int64) *corev3.BindConfig {
		return &corev3.BindConfig{SocketOptions: []*corev3.SocketOption{{Level: 1, Name: 36,
			Value: &corev3.SocketOption_IntValue{IntValue: mark}, State: corev3.SocketOption_STATE_PREBIND}}}
	}
	withSource := func(b *corev3.BindConfig, ip string) *corev3.BindConfig {
		b.SourceAddress = &corev3.SocketAddress{Address: ip, PortSpecifier: &corev3.SocketAddress_PortValue{}}
		return b
	}
	c := xdstest.Conn{Src: netip.MustParseAddrPort("10.0.1.10:40000"), Dst: netip.MustParseAddrPort("10.0.2.10:80")}
	for _, tc := range []struct {
		name    string
		filters []*listenerv3.ListenerFilter
		bind    *corev3.BindConfig
		want    xdstest.Upstream
		wantErr string
	}{
		{name: "plain", want: xdstest.Upstream{}},
		{name: "cluster mark", bind: markOpt(0xb00), want: xdstest.Upstream{Mark: 0xb00}},
		{name: "original_src", filters: []*listenerv3.ListenerFilter{origSrc(0xa00)}, want: xdstest.Upstream{Src: c.Src.Addr(), Mark: 0xa00}},
		{name: "original_src without mark", filters: []*listenerv3.ListenerFilter{origSrc(0)}, want: xdstest.Upstream{Src: c.Src.Addr()}},
		{name: "the cluster's mark wins", filters: []*listenerv3.ListenerFilter{origSrc(0xa00)}, bind: markOpt(0xb00), want: xdstest.Upstream{Src: c.Src.Addr(), Mark: 0xb00}},
		{name: "original_src beats source_address", filters: []*listenerv3.ListenerFilter{origSrc(0)}, bind: withSource(markOpt(1), "192.0.2.1"),
			want: xdstest.Upstream{Src: c.Src.Addr(), Mark: 1}},
		{name: "source_address", bind: withSource(&corev3.BindConfig{}, "192.0.2.1"), want: xdstest.Upstream{Src: netip.MustParseAddr("192.0.2.1")}},
		{name: "tls_inspector changes nothing", filters: []*listenerv3.ListenerFilter{origSrc(0xa00), {Name: "envoy.filters.listener.tls_inspector"}}, want: xdstest.Upstream{Src: c.Src.Addr(), Mark: 0xa00}},
		{name: "unknown filter", filters: []*listenerv3.ListenerFilter{{Name: "envoy.filters.listener.http_inspector"}}, wantErr: "http_inspector not emulated"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			l := &listenerv3.Listener{Name: "l", ListenerFilters: tc.filters}
			cl := &clusterv3.Cluster{Name: "c", UpstreamBindConfig: tc.bind}
			got, err := xdstest.UpstreamOf(l, cl, c)
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("error %v, want %q", err, tc.wantErr)
				}
				return
			}
			if err != nil || got != tc.want {
				t.Fatalf("UpstreamOf = %+v, %v; want %+v", got, err, tc.want)
			}
		})
	}
}
