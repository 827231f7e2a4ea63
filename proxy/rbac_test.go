package proxy

import (
	"net/http"
	"net/http/httptest"
	"net/netip"
	"testing"

	rbac "github.com/envoyproxy/go-control-plane/envoy/config/rbac/v3"
	route "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	rbacfilter "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/rbac/v3"
	matcher "github.com/envoyproxy/go-control-plane/envoy/type/matcher/v3"

	pt "github.com/nodemesh/nodemesh/proxy/proxytest"
)

func perm(r *rbac.Permission) []*rbac.Permission { return []*rbac.Permission{r} }

func headerPerm(hm *route.HeaderMatcher) *rbac.Permission {
	return &rbac.Permission{Rule: &rbac.Permission_Header{Header: hm}}
}

func TestRBAC(t *testing.T) {
	type req struct {
		method, target string
		header         http.Header
		remote         string
		dst            string
		allow          bool
		policy         string
	}
	get := func(target string, allow bool) req { return req{method: "GET", target: target, allow: allow} }
	for _, tc := range []struct {
		name   string
		action rbac.RBAC_Action
		pols   map[string]*rbac.Policy
		reqs   []req
	}{
		{
			name: "method and path regex are full matches, path without query",
			pols: map[string]*rbac.Policy{"userdata": pt.MethodPathPolicy("GET", "/userdata/[0-9]+")},
			reqs: []req{
				{method: "GET", target: "/userdata/42", allow: true, policy: "userdata"},
				get("/userdata/42?x=1", true),
				get("/userdata/42abc", false),
				get("/userdata/abc", false),
				get("/x/userdata/42", false),
				get("/userdata/%34%32", false), // no decoding, as Envoy without normalize_path
				{method: "POST", target: "/userdata/42", allow: false},
				{method: "GETX", target: "/userdata/42", allow: false},
			},
		},
		{
			name: "header present, exact, prefix, invert",
			pols: map[string]*rbac.Policy{"h": {Permissions: perm(&rbac.Permission{Rule: &rbac.Permission_AndRules{AndRules: &rbac.Permission_Set{Rules: []*rbac.Permission{
				headerPerm(&route.HeaderMatcher{Name: "X-Present", HeaderMatchSpecifier: &route.HeaderMatcher_PresentMatch{PresentMatch: true}}),
				headerPerm(&route.HeaderMatcher{Name: "x-team", HeaderMatchSpecifier: &route.HeaderMatcher_StringMatch{StringMatch: &matcher.StringMatcher{MatchPattern: &matcher.StringMatcher_Exact{Exact: "blue"}}}}),
				headerPerm(&route.HeaderMatcher{Name: "x-env", InvertMatch: true, HeaderMatchSpecifier: &route.HeaderMatcher_StringMatch{StringMatch: &matcher.StringMatcher{MatchPattern: &matcher.StringMatcher_Prefix{Prefix: "prod"}}}}),
			}}}}), Principals: anyPrincipal()}},
			reqs: []req{
				{method: "GET", target: "/", header: http.Header{"X-Present": {""}, "X-Team": {"blue"}, "X-Env": {"dev"}}, allow: true, policy: "h"},
				{method: "GET", target: "/", header: http.Header{"X-Team": {"blue"}, "X-Env": {"dev"}}, allow: false},
				{method: "GET", target: "/", header: http.Header{"X-Present": {"1"}, "X-Team": {"Blue"}, "X-Env": {"dev"}}, allow: false},
				{method: "GET", target: "/", header: http.Header{"X-Present": {"1"}, "X-Team": {"blue"}, "X-Env": {"production"}}, allow: false},
				// A missing header never matches a value matcher, inverted or not.
				{method: "GET", target: "/", header: http.Header{"X-Present": {"1"}, "X-Team": {"blue"}}, allow: false},
				// Several values are joined with ",".
				{method: "GET", target: "/", header: http.Header{"X-Present": {"1"}, "X-Team": {"blue", "red"}, "X-Env": {"dev"}}, allow: false},
			},
		},
		{
			name: "url_path exact and prefix, or_rules, destination port, not_rule",
			pols: map[string]*rbac.Policy{"p": {Permissions: perm(&rbac.Permission{Rule: &rbac.Permission_AndRules{AndRules: &rbac.Permission_Set{Rules: []*rbac.Permission{
				{Rule: &rbac.Permission_OrRules{OrRules: &rbac.Permission_Set{Rules: []*rbac.Permission{
					{Rule: &rbac.Permission_UrlPath{UrlPath: &matcher.PathMatcher{Rule: &matcher.PathMatcher_Path{Path: &matcher.StringMatcher{MatchPattern: &matcher.StringMatcher_Exact{Exact: "/health"}}}}}},
					{Rule: &rbac.Permission_UrlPath{UrlPath: &matcher.PathMatcher{Rule: &matcher.PathMatcher_Path{Path: &matcher.StringMatcher{MatchPattern: &matcher.StringMatcher_Prefix{Prefix: "/api/"}}}}}},
				}}}},
				{Rule: &rbac.Permission_DestinationPort{DestinationPort: 80}},
				{Rule: &rbac.Permission_NotRule{NotRule: headerPerm(&route.HeaderMatcher{Name: ":method", HeaderMatchSpecifier: &route.HeaderMatcher_ExactMatch{ExactMatch: "DELETE"}})}},
			}}}}), Principals: anyPrincipal()}},
			reqs: []req{
				{method: "GET", target: "/health", dst: "10.0.0.1:80", allow: true, policy: "p"},
				{method: "GET", target: "/health?full", dst: "10.0.0.1:80", allow: true, policy: "p"},
				{method: "GET", target: "/healthz", dst: "10.0.0.1:80", allow: false},
				{method: "PUT", target: "/api/x", dst: "10.0.0.1:80", allow: true, policy: "p"},
				{method: "DELETE", target: "/api/x", dst: "10.0.0.1:80", allow: false},
				{method: "GET", target: "/api/x", dst: "10.0.0.1:8080", allow: false},
			},
		},
		{
			name: "principals: CIDR, and, not",
			pols: map[string]*rbac.Policy{"net": {Permissions: perm(&rbac.Permission{Rule: &rbac.Permission_Any{Any: true}}),
				Principals: []*rbac.Principal{{Identifier: &rbac.Principal_AndIds{AndIds: &rbac.Principal_Set{Ids: []*rbac.Principal{
					{Identifier: &rbac.Principal_DirectRemoteIp{DirectRemoteIp: cidrs("10.1.0.0/16")[0]}},
					{Identifier: &rbac.Principal_NotId{NotId: &rbac.Principal{Identifier: &rbac.Principal_RemoteIp{RemoteIp: cidrs("10.1.2.0/24")[0]}}}},
				}}}}}}},
			reqs: []req{
				{method: "GET", target: "/", remote: "10.1.3.4:5555", allow: true, policy: "net"},
				{method: "GET", target: "/", remote: "10.1.2.4:5555", allow: false},
				{method: "GET", target: "/", remote: "10.2.0.1:5555", allow: false},
			},
		},
		{
			name:   "DENY action",
			action: rbac.RBAC_DENY,
			pols:   map[string]*rbac.Policy{"no-admin": {Permissions: perm(&rbac.Permission{Rule: &rbac.Permission_UrlPath{UrlPath: &matcher.PathMatcher{Rule: &matcher.PathMatcher_Path{Path: pt.Regex("/admin(/.*)?")}}}}), Principals: anyPrincipal()}},
			reqs: []req{
				get("/admin", false),
				get("/admin/x", false),
				get("/administrator", true),
			},
		},
		{
			name: "ALLOW without policies denies all",
			pols: map[string]*rbac.Policy{},
			reqs: []req{get("/", false)},
		},
		{
			name: "first matching policy by name",
			pols: map[string]*rbac.Policy{
				"b": pt.MethodPathPolicy("GET", "/.*"),
				"a": pt.MethodPathPolicy("GET", "/x"),
			},
			reqs: []req{{method: "GET", target: "/x", allow: true, policy: "a"}, {method: "GET", target: "/y", allow: true, policy: "b"}},
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f, err := compileRBAC("rbac", filterRBAC, pt.Any(&rbacfilter.RBAC{Rules: &rbac.RBAC{Action: tc.action, Policies: tc.pols}}))
			if err != nil {
				t.Fatal(err)
			}
			for _, rq := range tc.reqs {
				r := httptest.NewRequest(rq.method, rq.target, nil)
				for k, v := range rq.header {
					r.Header[k] = v
				}
				a := requestAttrs{remote: netip.MustParseAddrPort("192.0.2.1:1234"), local: netip.MustParseAddrPort("10.0.0.1:80")}
				if rq.remote != "" {
					a.remote = netip.MustParseAddrPort(rq.remote)
				}
				if rq.dst != "" {
					a.local = netip.MustParseAddrPort(rq.dst)
				}
				allow, pol := f.evaluate(r, &a)
				if allow != rq.allow || (rq.policy != "" && pol != rq.policy) {
					t.Errorf("%s %s %v from %s to %s = %v (policy %q), want %v (policy %q)", rq.method, rq.target, rq.header, a.remote, a.local, allow, pol, rq.allow, rq.policy)
				}
			}
		})
	}
}

func TestRBACWithoutRulesAllows(t *testing.T) {
	f, err := compileRBAC("rbac", filterRBAC, pt.Any(&rbacfilter.RBAC{}))
	if err != nil {
		t.Fatal(err)
	}
	if ok, _ := f.evaluate(httptest.NewRequest("DELETE", "/x", nil), &requestAttrs{}); !ok {
		t.Fatal("an RBAC filter without rules denied a request (Envoy: no rules, no enforcement)")
	}
}

func TestLiteralRegex(t *testing.T) {
	for _, tc := range []struct {
		expr string
		lit  string
		ok   bool
	}{
		{"GET", "GET", true},
		{"/userdata", "/userdata", true},
		{`a\.b`, "a.b", true},
		{"", "", true},
		{"GET|POST", "", false},
		{"a.b", "", false},
		{"(?i)get", "", false},
		{"a+", "", false},
		{"^GET$", "", false}, // anchors are not literals: keep the regex
	} {
		lit, ok := literalRegex(tc.expr)
		if lit != tc.lit || ok != tc.ok {
			t.Errorf("literalRegex(%q) = %q, %v; want %q, %v", tc.expr, lit, ok, tc.lit, tc.ok)
		}
	}
}
