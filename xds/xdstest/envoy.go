// Package xdstest holds test helpers for Envoy configuration: an emulation
// of how Envoy selects a listener's filter chain, evaluates an HTTP RBAC
// filter and binds an upstream connection (listener filters and cluster
// socket options; written from Envoy's documentation, independent of
// package xds's builders), and minimal ADS clients speaking
// state-of-the-world and delta xDS over gRPC, as Envoy does.
//
// The emulation supports the fields Nodemesh generates and fails loudly on
// any other, so that a builder change cannot silently leave it behind.
package xdstest

import (
	"fmt"
	"net/netip"
	"regexp"
	"slices"
	"sort"
	"strings"
	"sync"

	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	rbacv3 "github.com/envoyproxy/go-control-plane/envoy/config/rbac/v3"
	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	rbacfilter "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/rbac/v3"
	origdstv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/listener/original_dst/v3"
	origsrcv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/listener/original_src/v3"
	hcmv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	matcherv3 "github.com/envoyproxy/go-control-plane/envoy/type/matcher/v3"
)

// Conn is a downstream connection as a transparent listener sees it: Dst
// is the original destination (the socket's local address).
type Conn struct {
	Src, Dst netip.AddrPort
}

// Request is an HTTP request as the HTTP connection manager presents it to
// filters. Host becomes :authority (absent when empty); header names are
// case-insensitive.
type Request struct {
	Method, Path, Host string
	Headers            map[string]string
}

func (r Request) header(name string) (string, bool) {
	switch name {
	case ":method":
		return r.Method, true
	case ":path":
		return r.Path, true
	case ":authority", "host":
		return r.Host, r.Host != ""
	}
	for k, v := range r.Headers {
		if strings.EqualFold(k, name) {
			return v, true
		}
	}
	return "", false
}

// FindFilterChain returns the filter chain Envoy selects for c, nil when
// none matches (Envoy closes the connection). Envoy narrows the chains
// criterion by criterion — destination port, destination address, server
// name, transport protocol, application protocols, direct source address,
// source type, source address, source port — keeping at each step only the
// most specific matches, and never goes back to a less specific one.
func FindFilterChain(l *listenerv3.Listener, c Conn) (*listenerv3.FilterChain, error) {
	cands := slices.Clone(l.GetFilterChains())
	for _, fc := range cands {
		m := fc.GetFilterChainMatch()
		if len(m.GetServerNames()) > 0 || m.GetTransportProtocol() != "" || len(m.GetApplicationProtocols()) > 0 ||
			len(m.GetDirectSourcePrefixRanges()) > 0 || m.GetSourceType() != listenerv3.FilterChainMatch_ANY ||
			m.GetAddressSuffix() != "" || m.GetSuffixLen() != nil {
			return nil, fmt.Errorf("filter chain %q: match criteria the emulation does not support: %v", fc.GetName(), m)
		}
	}
	// Each level scores a chain: -1 no match, higher is more specific.
	levels := []func(m *listenerv3.FilterChainMatch) (int, error){
		func(m *listenerv3.FilterChainMatch) (int, error) {
			switch {
			case m.GetDestinationPort() == nil:
				return 0, nil
			case m.GetDestinationPort().GetValue() == uint32(c.Dst.Port()):
				return 1, nil
			}
			return -1, nil
		},
		func(m *listenerv3.FilterChainMatch) (int, error) {
			return prefixScore(m.GetPrefixRanges(), c.Dst.Addr())
		},
		func(m *listenerv3.FilterChainMatch) (int, error) {
			return prefixScore(m.GetSourcePrefixRanges(), c.Src.Addr())
		},
		func(m *listenerv3.FilterChainMatch) (int, error) {
			switch {
			case len(m.GetSourcePorts()) == 0:
				return 0, nil
			case slices.Contains(m.GetSourcePorts(), uint32(c.Src.Port())):
				return 1, nil
			}
			return -1, nil
		},
	}
	for _, score := range levels {
		best, kept := -1, []*listenerv3.FilterChain(nil)
		for _, fc := range cands {
			s, err := score(fc.GetFilterChainMatch())
			if err != nil {
				return nil, fmt.Errorf("filter chain %q: %w", fc.GetName(), err)
			}
			switch {
			case s > best:
				best, kept = s, []*listenerv3.FilterChain{fc}
			case s == best && s >= 0:
				kept = append(kept, fc)
			}
		}
		cands = kept
	}
	switch len(cands) {
	case 0:
		if d := l.GetDefaultFilterChain(); d != nil {
			return d, nil
		}
		return nil, nil
	case 1:
		return cands[0], nil
	}
	names := make([]string, len(cands))
	for i, fc := range cands {
		names[i] = fc.GetName()
	}
	return nil, fmt.Errorf("filter chains %v have the same match (Envoy refuses such a listener)", names)
}

// prefixScore is the length of the longest range containing a (an empty
// list is every address: 0), -1 if none does.
func prefixScore(rs []*corev3.CidrRange, a netip.Addr) (int, error) {
	if len(rs) == 0 {
		return 0, nil
	}
	best := -1
	for _, r := range rs {
		p, err := Prefix(r)
		if err != nil {
			return 0, err
		}
		if p.Contains(a) && p.Bits() > best {
			best = p.Bits()
		}
	}
	return best, nil
}

// Upstream is how Envoy binds the upstream connection of a downstream
// connection.
type Upstream struct {
	// Src is the address the socket is bound to; invalid when Envoy leaves
	// the choice to the kernel (the route's source address).
	Src netip.Addr
	// Mark is the socket's SO_MARK, 0 when none is set.
	Mark uint32
}

// Linux socket option numbers Envoy passes to setsockopt as they are.
const (
	solSocket = 1
	soMark    = 36
)

// UpstreamOf emulates how Envoy opens the upstream connection, to cluster
// c, of a connection accepted on l: the original_src listener filter binds
// it to the client's IP (Envoy leaves the port to the kernel) and sets its
// mark when the filter's mark is not 0; the cluster's upstream_bind_config
// binds it to source_address unless original_src did, and its socket
// options are applied after the filter's, so a cluster SO_MARK wins.
// Listener filters and socket options the emulation does not know are
// errors.
func UpstreamOf(l *listenerv3.Listener, c *clusterv3.Cluster, conn Conn) (Upstream, error) {
	var up Upstream
	origSrc := false
	for _, f := range l.GetListenerFilters() {
		switch f.GetName() {
		case "envoy.filters.listener.original_src":
			cfg := &origsrcv3.OriginalSrc{}
			if err := f.GetTypedConfig().UnmarshalTo(cfg); err != nil {
				return Upstream{}, fmt.Errorf("listener %s: original_src: %w", l.GetName(), err)
			}
			if cfg.GetBindPort() {
				return Upstream{}, fmt.Errorf("listener %s: original_src bind_port not emulated (Envoy does not implement it)", l.GetName())
			}
			origSrc = true
			up.Src, up.Mark = conn.Src.Addr(), cfg.GetMark()
		case "envoy.filters.listener.original_dst":
			// Conn.Dst is the original destination already.
			if err := f.GetTypedConfig().UnmarshalTo(&origdstv3.OriginalDst{}); err != nil {
				return Upstream{}, fmt.Errorf("listener %s: original_dst: %w", l.GetName(), err)
			}
		case "envoy.filters.listener.tls_inspector":
			// It only informs filter chain selection.
		default:
			return Upstream{}, fmt.Errorf("listener %s: listener filter %s not emulated", l.GetName(), f.GetName())
		}
	}
	b := c.GetUpstreamBindConfig()
	if sa := b.GetSourceAddress(); sa != nil && !origSrc {
		a, err := netip.ParseAddr(sa.GetAddress())
		if err != nil {
			return Upstream{}, fmt.Errorf("cluster %s: source_address: %w", c.GetName(), err)
		}
		if !a.IsUnspecified() {
			up.Src = a
		}
	}
	for _, o := range b.GetSocketOptions() {
		if o.GetLevel() != solSocket || o.GetName() != soMark || o.GetState() != corev3.SocketOption_STATE_PREBIND {
			return Upstream{}, fmt.Errorf("cluster %s: socket option %v not emulated", c.GetName(), o)
		}
		up.Mark = uint32(o.GetIntValue())
	}
	return up, nil
}

// Prefix parses a CidrRange.
func Prefix(r *corev3.CidrRange) (netip.Prefix, error) {
	a, err := netip.ParseAddr(r.GetAddressPrefix())
	if err != nil {
		return netip.Prefix{}, fmt.Errorf("cidr range %v: %w", r, err)
	}
	bits := a.BitLen()
	if r.GetPrefixLen() != nil {
		bits = int(r.GetPrefixLen().GetValue())
	}
	p, err := a.Prefix(bits)
	if err != nil {
		return netip.Prefix{}, fmt.Errorf("cidr range %v: %w", r, err)
	}
	return p, nil
}

// ChainRBAC returns the HTTP connection manager and the RBAC filter config
// of a chain (RBAC nil when the chain has none).
func ChainRBAC(fc *listenerv3.FilterChain) (*hcmv3.HttpConnectionManager, *rbacfilter.RBAC, error) {
	fs := fc.GetFilters()
	if len(fs) != 1 || fs[0].GetName() != "envoy.filters.network.http_connection_manager" {
		return nil, nil, fmt.Errorf("chain %q: want exactly one http_connection_manager filter", fc.GetName())
	}
	hcm := &hcmv3.HttpConnectionManager{}
	if err := fs[0].GetTypedConfig().UnmarshalTo(hcm); err != nil {
		return nil, nil, fmt.Errorf("chain %q: %w", fc.GetName(), err)
	}
	hf := hcm.GetHttpFilters()
	if len(hf) == 0 || hf[len(hf)-1].GetName() != "envoy.filters.http.router" {
		return nil, nil, fmt.Errorf("chain %q: the last HTTP filter must be the router", fc.GetName())
	}
	var rbac *rbacfilter.RBAC
	for _, f := range hf[:len(hf)-1] {
		if f.GetName() != "envoy.filters.http.rbac" {
			return nil, nil, fmt.Errorf("chain %q: HTTP filter %s not emulated", fc.GetName(), f.GetName())
		}
		rbac = &rbacfilter.RBAC{}
		if err := f.GetTypedConfig().UnmarshalTo(rbac); err != nil {
			return nil, nil, fmt.Errorf("chain %q: %w", fc.GetName(), err)
		}
	}
	return hcm, rbac, nil
}

// Authorize evaluates a chain's RBAC filter on a request: whether Envoy
// lets it through (otherwise it answers 403 "RBAC: access denied") and the
// name of the first policy (in name order) that matched.
func Authorize(fc *listenerv3.FilterChain, c Conn, req Request) (bool, string, error) {
	_, f, err := ChainRBAC(fc)
	if err != nil || f == nil {
		return f == nil && err == nil, "", err
	}
	if f.GetMatcher() != nil || f.GetShadowRules() != nil || f.GetShadowMatcher() != nil {
		return false, "", fmt.Errorf("chain %q: RBAC matcher or shadow rules not emulated", fc.GetName())
	}
	rules := f.GetRules()
	if rules == nil {
		return true, "", nil
	}
	names := make([]string, 0, len(rules.GetPolicies()))
	for n := range rules.GetPolicies() {
		names = append(names, n)
	}
	sort.Strings(names)
	matched := ""
	for _, n := range names {
		ok, err := policyMatches(rules.GetPolicies()[n], c, req)
		if err != nil {
			return false, "", fmt.Errorf("chain %q policy %q: %w", fc.GetName(), n, err)
		}
		if ok {
			matched = n
			break
		}
	}
	switch rules.GetAction() {
	case rbacv3.RBAC_ALLOW:
		return matched != "", matched, nil
	case rbacv3.RBAC_DENY:
		return matched == "", matched, nil
	}
	return false, "", fmt.Errorf("chain %q: RBAC action %v not emulated", fc.GetName(), rules.GetAction())
}

func policyMatches(p *rbacv3.Policy, c Conn, req Request) (bool, error) {
	if p.GetCondition() != nil || p.GetCheckedCondition() != nil {
		return false, fmt.Errorf("conditions not emulated")
	}
	perm := false
	for _, x := range p.GetPermissions() {
		ok, err := permissionMatches(x, c, req)
		if err != nil {
			return false, err
		}
		if ok {
			perm = true
			break
		}
	}
	if !perm {
		return false, nil
	}
	for _, x := range p.GetPrincipals() {
		ok, err := principalMatches(x, c, req)
		if err != nil || ok {
			return ok, err
		}
	}
	return false, nil
}

func permissionMatches(p *rbacv3.Permission, c Conn, req Request) (bool, error) {
	switch r := p.GetRule().(type) {
	case *rbacv3.Permission_Any:
		return r.Any, nil
	case *rbacv3.Permission_AndRules:
		for _, x := range r.AndRules.GetRules() {
			if ok, err := permissionMatches(x, c, req); err != nil || !ok {
				return false, err
			}
		}
		return true, nil
	case *rbacv3.Permission_OrRules:
		for _, x := range r.OrRules.GetRules() {
			if ok, err := permissionMatches(x, c, req); err != nil || ok {
				return ok, err
			}
		}
		return false, nil
	case *rbacv3.Permission_NotRule:
		ok, err := permissionMatches(r.NotRule, c, req)
		return !ok, err
	case *rbacv3.Permission_Header:
		return headerMatches(r.Header, req)
	case *rbacv3.Permission_UrlPath:
		path := req.Path
		if i := strings.IndexAny(path, "?#"); i >= 0 {
			path = path[:i]
		}
		if r.UrlPath.GetPath() == nil {
			return false, fmt.Errorf("url_path without path not emulated")
		}
		return stringMatches(r.UrlPath.GetPath(), path)
	case *rbacv3.Permission_DestinationIp:
		pfx, err := Prefix(r.DestinationIp)
		return err == nil && pfx.Contains(c.Dst.Addr()), err
	case *rbacv3.Permission_DestinationPort:
		return r.DestinationPort == uint32(c.Dst.Port()), nil
	case *rbacv3.Permission_DestinationPortRange:
		port := int32(c.Dst.Port())
		return r.DestinationPortRange.GetStart() <= port && port < r.DestinationPortRange.GetEnd(), nil
	}
	return false, fmt.Errorf("permission %T not emulated", p.GetRule())
}

func principalMatches(p *rbacv3.Principal, c Conn, req Request) (bool, error) {
	switch id := p.GetIdentifier().(type) {
	case *rbacv3.Principal_Any:
		return id.Any, nil
	case *rbacv3.Principal_AndIds:
		for _, x := range id.AndIds.GetIds() {
			if ok, err := principalMatches(x, c, req); err != nil || !ok {
				return false, err
			}
		}
		return true, nil
	case *rbacv3.Principal_OrIds:
		for _, x := range id.OrIds.GetIds() {
			if ok, err := principalMatches(x, c, req); err != nil || ok {
				return ok, err
			}
		}
		return false, nil
	case *rbacv3.Principal_NotId:
		ok, err := principalMatches(id.NotId, c, req)
		return !ok, err
	case *rbacv3.Principal_DirectRemoteIp:
		pfx, err := Prefix(id.DirectRemoteIp)
		return err == nil && pfx.Contains(c.Src.Addr()), err
	}
	return false, fmt.Errorf("principal %T not emulated", p.GetIdentifier())
}

// headerMatches follows Envoy's HeaderMatcher: a missing header fails a
// value match unless treat_missing_header_as_empty; present_match false
// matches an absent header.
func headerMatches(h *routev3.HeaderMatcher, req Request) (bool, error) {
	if h.GetInvertMatch() {
		return false, fmt.Errorf("header %s: invert_match not emulated", h.GetName())
	}
	if h.GetName() != strings.ToLower(h.GetName()) {
		return false, fmt.Errorf("header %s: Envoy lower-cases header names; generate them lower-case", h.GetName())
	}
	v, present := req.header(h.GetName())
	switch s := h.GetHeaderMatchSpecifier().(type) {
	case *routev3.HeaderMatcher_PresentMatch:
		return present == s.PresentMatch, nil
	case *routev3.HeaderMatcher_StringMatch:
		if !present && !h.GetTreatMissingHeaderAsEmpty() {
			return false, nil
		}
		return stringMatches(s.StringMatch, v)
	}
	return false, fmt.Errorf("header %s: matcher %T not emulated", h.GetName(), h.GetHeaderMatchSpecifier())
}

// regexps caches compiled regexes: evaluations repeat the same few.
var regexps sync.Map // string → *regexp.Regexp

func stringMatches(m *matcherv3.StringMatcher, v string) (bool, error) {
	if m.GetIgnoreCase() {
		return false, fmt.Errorf("ignore_case not emulated")
	}
	switch p := m.GetMatchPattern().(type) {
	case *matcherv3.StringMatcher_Exact:
		return v == p.Exact, nil
	case *matcherv3.StringMatcher_Prefix:
		return strings.HasPrefix(v, p.Prefix), nil
	case *matcherv3.StringMatcher_Suffix:
		return strings.HasSuffix(v, p.Suffix), nil
	case *matcherv3.StringMatcher_Contains:
		return strings.Contains(v, p.Contains), nil
	case *matcherv3.StringMatcher_SafeRegex:
		if p.SafeRegex.GetEngineType() != nil {
			return false, fmt.Errorf("regex engine %T not emulated", p.SafeRegex.GetEngineType())
		}
		// Envoy's safe_regex is RE2 and must match the whole string.
		src := p.SafeRegex.GetRegex()
		re, ok := regexps.Load(src)
		if !ok {
			c, err := regexp.Compile(`^(?:` + src + `)$`)
			if err != nil {
				return false, fmt.Errorf("regex %q: %w", src, err)
			}
			re, _ = regexps.LoadOrStore(src, c)
		}
		return re.(*regexp.Regexp).MatchString(v), nil
	}
	return false, fmt.Errorf("string matcher %T not emulated", m.GetMatchPattern())
}

// RouteCluster returns the cluster a route configuration sends a request
// to: the first virtual host whose domains include "*" or the request's
// host, and its first route whose prefix or path matches.
func RouteCluster(rc *routev3.RouteConfiguration, req Request) (string, error) {
	for _, vh := range rc.GetVirtualHosts() {
		if !slices.Contains(vh.GetDomains(), "*") && !slices.Contains(vh.GetDomains(), req.Host) {
			continue
		}
		for _, r := range vh.GetRoutes() {
			switch ps := r.GetMatch().GetPathSpecifier().(type) {
			case *routev3.RouteMatch_Prefix:
				if !strings.HasPrefix(req.Path, ps.Prefix) {
					continue
				}
			case *routev3.RouteMatch_Path:
				if req.Path != ps.Path {
					continue
				}
			default:
				return "", fmt.Errorf("route match %T not emulated", ps)
			}
			return r.GetRoute().GetCluster(), nil
		}
		return "", nil
	}
	return "", nil
}
