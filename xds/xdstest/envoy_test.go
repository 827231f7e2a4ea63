package xdstest_test

import (
	"net/netip"
	"strings"
	"testing"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	rbacv3 "github.com/envoyproxy/go-control-plane/envoy/config/rbac/v3"
	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	rbacfilter "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/rbac/v3"
	routerfilter "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/router/v3"
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
