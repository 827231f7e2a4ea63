package xds

// HTTP rules and peer sets as Envoy RBAC (envoy.config.rbac.v3). The
// mapping keeps l7policy's semantics:
//
//   - method: the :method header, safe_regex (RE2, which Envoy matches
//     against the whole value, as l7policy does);
//   - path: url_path, which Envoy matches without query and fragment, as
//     l7policy does;
//   - host: the :authority header (HTTP/1 Host), safe_regex; a missing
//     authority counts as empty, as l7policy's Request.Host does;
//   - headers: present_match, or an exact string_match; "Host" and
//     ":authority" name the authority, as in l7policy;
//   - a rule setting nothing matches every request (any).
//
// Inbound, the peer is the connection's source: principals of
// direct_remote_ip ranges (the address of the downstream socket, never a
// header). Outbound, the peer is the original destination, the local
// address of the transparent socket: destination_ip permissions.

import (
	"net/netip"
	"strings"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	rbacv3 "github.com/envoyproxy/go-control-plane/envoy/config/rbac/v3"
	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	matcherv3 "github.com/envoyproxy/go-control-plane/envoy/type/matcher/v3"
	typev3 "github.com/envoyproxy/go-control-plane/envoy/type/v3"
	"google.golang.org/protobuf/types/known/wrapperspb"

	"github.com/nodemesh/nodemesh/l7policy"
)

func cidr(p netip.Prefix) *corev3.CidrRange {
	return &corev3.CidrRange{AddressPrefix: p.Addr().String(), PrefixLen: wrapperspb.UInt32(uint32(p.Bits()))}
}

func regexMatcher(re string) *matcherv3.StringMatcher {
	// The engine is left unset: google_re2 is Envoy's default and the
	// explicit field is deprecated.
	return &matcherv3.StringMatcher{MatchPattern: &matcherv3.StringMatcher_SafeRegex{SafeRegex: &matcherv3.RegexMatcher{Regex: re}}}
}

// headerName maps an l7policy header name to Envoy's (lower-case, HTTP/2
// style) name.
func headerName(name string) string {
	n := strings.ToLower(name)
	if n == "host" {
		return ":authority"
	}
	return n
}

func headerPerm(h *routev3.HeaderMatcher) *rbacv3.Permission {
	return &rbacv3.Permission{Rule: &rbacv3.Permission_Header{Header: h}}
}

func andPerms(ps []*rbacv3.Permission) *rbacv3.Permission {
	if len(ps) == 1 {
		return ps[0]
	}
	return &rbacv3.Permission{Rule: &rbacv3.Permission_AndRules{AndRules: &rbacv3.Permission_Set{Rules: ps}}}
}

func orPerms(ps []*rbacv3.Permission) *rbacv3.Permission {
	if len(ps) == 1 {
		return ps[0]
	}
	return &rbacv3.Permission{Rule: &rbacv3.Permission_OrRules{OrRules: &rbacv3.Permission_Set{Rules: ps}}}
}

func anyPerm() *rbacv3.Permission { return &rbacv3.Permission{Rule: &rbacv3.Permission_Any{Any: true}} }

// rulePermission is the permission matching the requests rule r allows.
func rulePermission(r l7policy.HTTPRule) *rbacv3.Permission {
	var ps []*rbacv3.Permission
	if r.Method != "" {
		ps = append(ps, headerPerm(&routev3.HeaderMatcher{Name: ":method",
			HeaderMatchSpecifier: &routev3.HeaderMatcher_StringMatch{StringMatch: regexMatcher(r.Method)}}))
	}
	if r.Path != "" {
		ps = append(ps, &rbacv3.Permission{Rule: &rbacv3.Permission_UrlPath{UrlPath: &matcherv3.PathMatcher{
			Rule: &matcherv3.PathMatcher_Path{Path: regexMatcher(r.Path)}}}})
	}
	if r.Host != "" {
		ps = append(ps, headerPerm(&routev3.HeaderMatcher{Name: ":authority", TreatMissingHeaderAsEmpty: true,
			HeaderMatchSpecifier: &routev3.HeaderMatcher_StringMatch{StringMatch: regexMatcher(r.Host)}}))
	}
	for _, h := range r.Headers {
		m := &routev3.HeaderMatcher{Name: headerName(h.Name)}
		if h.Value == "" {
			m.HeaderMatchSpecifier = &routev3.HeaderMatcher_PresentMatch{PresentMatch: true}
		} else {
			m.HeaderMatchSpecifier = &routev3.HeaderMatcher_StringMatch{StringMatch: &matcherv3.StringMatcher{
				MatchPattern: &matcherv3.StringMatcher_Exact{Exact: h.Value}}}
		}
		ps = append(ps, headerPerm(m))
	}
	if len(ps) == 0 {
		return anyPerm()
	}
	return andPerms(ps)
}

// ruleSetPermissions lists one permission per rule of rs (RBAC ORs them).
func ruleSetPermissions(rs *l7policy.RuleSet) []*rbacv3.Permission {
	var out []*rbacv3.Permission
	for _, r := range rs.Rules() {
		p := rulePermission(r)
		if p.GetAny() {
			return []*rbacv3.Permission{p}
		}
		out = append(out, p)
	}
	return out
}

// portRangePermission matches destination ports lo..hi.
func portRangePermission(lo, hi uint16) *rbacv3.Permission {
	if lo == hi {
		return &rbacv3.Permission{Rule: &rbacv3.Permission_DestinationPort{DestinationPort: uint32(lo)}}
	}
	return &rbacv3.Permission{Rule: &rbacv3.Permission_DestinationPortRange{
		DestinationPortRange: &typev3.Int32Range{Start: int32(lo), End: int32(hi) + 1}}}
}

// sourcePrincipals lists principals (ORed) matching a source address in s.
func sourcePrincipals(s addrSet) []*rbacv3.Principal {
	if s.any {
		return []*rbacv3.Principal{{Identifier: &rbacv3.Principal_Any{Any: true}}}
	}
	ip := func(p netip.Prefix) *rbacv3.Principal {
		return &rbacv3.Principal{Identifier: &rbacv3.Principal_DirectRemoteIp{DirectRemoteIp: cidr(p)}}
	}
	var out []*rbacv3.Principal
	for _, r := range s.regions {
		if len(r.holes) == 0 {
			out = append(out, ip(r.prefix))
			continue
		}
		holes := make([]*rbacv3.Principal, len(r.holes))
		for i, h := range r.holes {
			holes[i] = ip(h)
		}
		hole := holes[0]
		if len(holes) > 1 {
			hole = &rbacv3.Principal{Identifier: &rbacv3.Principal_OrIds{OrIds: &rbacv3.Principal_Set{Ids: holes}}}
		}
		out = append(out, &rbacv3.Principal{Identifier: &rbacv3.Principal_AndIds{AndIds: &rbacv3.Principal_Set{Ids: []*rbacv3.Principal{
			ip(r.prefix), {Identifier: &rbacv3.Principal_NotId{NotId: hole}},
		}}}})
	}
	return out
}

// destinationPermission matches a destination address in s; nil for every
// address. s must not be empty.
func destinationPermission(s addrSet) *rbacv3.Permission {
	if s.any {
		return nil
	}
	ip := func(p netip.Prefix) *rbacv3.Permission {
		return &rbacv3.Permission{Rule: &rbacv3.Permission_DestinationIp{DestinationIp: cidr(p)}}
	}
	var out []*rbacv3.Permission
	for _, r := range s.regions {
		if len(r.holes) == 0 {
			out = append(out, ip(r.prefix))
			continue
		}
		holes := make([]*rbacv3.Permission, len(r.holes))
		for i, h := range r.holes {
			holes[i] = ip(h)
		}
		out = append(out, andPerms([]*rbacv3.Permission{ip(r.prefix), {Rule: &rbacv3.Permission_NotRule{NotRule: orPerms(holes)}}}))
	}
	return orPerms(out)
}
