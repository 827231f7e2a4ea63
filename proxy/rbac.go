package proxy

import (
	"fmt"
	"net/http"
	"net/netip"
	"slices"
	"strings"

	rbac "github.com/envoyproxy/go-control-plane/envoy/config/rbac/v3"
	rbacfilter "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/rbac/v3"
	matcher "github.com/envoyproxy/go-control-plane/envoy/type/matcher/v3"
	"google.golang.org/protobuf/types/known/anypb"
)

// rbacFilter is a compiled envoy.filters.http.rbac. A nil rules field means
// the filter allows everything (Envoy: "rules" unset disables the filter).
type rbacFilter struct {
	name       string
	statPrefix string // rules_stat_prefix: prefixes the dynamic metadata keys too
	enabled    bool
	deny       bool // action DENY: a matching policy denies; ALLOW: a matching policy allows
	policies   []rbacPolicy
	ix         *pathIndex // the policies by their conditions, nil: walk them (rbacindex.go)
}

// rbacPolicy is one named policy: it matches when any permission and any
// principal match. Policies are kept sorted by name, the order in which
// Envoy's engine reports the first matching one.
type rbacPolicy struct {
	name        string
	permissions anySet
	principals  anySet
}

// requestAttrs is what RBAC rules look at besides the request itself.
type requestAttrs struct {
	remote netip.AddrPort // the downstream peer
	local  netip.AddrPort // the original destination
	path   string         // requestPath, computed once (hasPath)
	tls    *tlsInfo       // the downstream TLS session, nil for plaintext

	hasPath bool
}

func (a *requestAttrs) urlPath(r *http.Request) string {
	if !a.hasPath {
		a.path, a.hasPath = requestPath(r), true
	}
	return a.path
}

type permission func(r *http.Request, a *requestAttrs) bool
type principal = permission

func compileRBAC(path, name string, a *anypb.Any) (*rbacFilter, error) {
	var cfg rbacfilter.RBAC
	if err := unpackAny(path, a, &cfg); err != nil {
		return nil, err
	}
	if err := onlyFields(path, &cfg, "rules", "rules_stat_prefix", "shadow_rules_stat_prefix", "track_per_rule_stats"); err != nil {
		return nil, err
	}
	f := &rbacFilter{name: name, statPrefix: cfg.GetRulesStatPrefix()}
	if cfg.Rules == nil {
		return f, nil
	}
	if err := f.compileRules(path+".rules", cfg.GetRules()); err != nil {
		return nil, err
	}
	return f, nil
}

// compileRules compiles an RBAC's rules (action and policies) into f;
// the HTTP and the network RBAC filters share it.
func (f *rbacFilter) compileRules(rp string, rules *rbac.RBAC) error {
	if err := onlyFields(rp, rules, "action", "policies"); err != nil {
		return err
	}
	f.enabled = true
	switch rules.GetAction() {
	case rbac.RBAC_ALLOW:
	case rbac.RBAC_DENY:
		f.deny = true
	default:
		return fmt.Errorf("%s.action: %s is not supported (ALLOW or DENY)", rp, rules.GetAction())
	}
	names := make([]string, 0, len(rules.GetPolicies()))
	for n := range rules.GetPolicies() {
		names = append(names, n)
	}
	slices.Sort(names)
	var conds []pathCond
	for _, n := range names {
		pol := rules.GetPolicies()[n]
		pp := fmt.Sprintf("%s.policies[%q]", rp, n)
		if err := onlyFields(pp, pol, "permissions", "principals"); err != nil {
			return err
		}
		if len(pol.GetPermissions()) == 0 || len(pol.GetPrincipals()) == 0 {
			return fmt.Errorf("%s: permissions and principals must not be empty", pp)
		}
		p := rbacPolicy{name: n}
		var perms []permission
		var pcs []pathCond
		for i, perm := range pol.GetPermissions() {
			m, c, err := compilePermissionCond(join(pp, at("permissions", i)), perm)
			if err != nil {
				return err
			}
			perms = append(perms, m)
			pcs = append(pcs, c)
		}
		p.permissions = newAnySet(perms, pcs)
		var prins []principal
		for i, prin := range pol.GetPrincipals() {
			m, err := compilePrincipal(join(pp, at("principals", i)), prin)
			if err != nil {
				return err
			}
			prins = append(prins, m)
		}
		p.principals = anySet{ms: prins}
		f.policies = append(f.policies, p)
		conds = append(conds, orCond(pcs))
	}
	f.ix = newPathIndex(conds)
	return nil
}

// evaluate returns whether the request may pass and the name of the
// policy that decided it ("" when none matched).
func (f *rbacFilter) evaluate(r *http.Request, a *requestAttrs) (allowed bool, policy string) {
	if !f.enabled {
		return true, ""
	}
	if f.ix != nil && r != nil {
		if i := f.firstPolicy(r, a); i >= 0 {
			return !f.deny, f.policies[i].name
		}
		return f.deny, ""
	}
	for i := range f.policies {
		p := &f.policies[i]
		if p.permissions.match(r, a) && p.principals.match(r, a) {
			return !f.deny, p.name
		}
	}
	return f.deny, ""
}

func anyMatch(ms []permission, r *http.Request, a *requestAttrs) bool {
	for _, m := range ms {
		if m(r, a) {
			return true
		}
	}
	return false
}

func allMatch(ms []permission, r *http.Request, a *requestAttrs) bool {
	for _, m := range ms {
		if !m(r, a) {
			return false
		}
	}
	return true
}

// compilePermissionCond compiles p and tells its necessary conditions
// (rbacindex.go).
func compilePermissionCond(path string, p *rbac.Permission) (permission, pathCond, error) {
	if p == nil {
		return nil, pathCond{}, fmt.Errorf("%s: a permission is required", path)
	}
	switch r := p.GetRule().(type) {
	case *rbac.Permission_Any:
		if !r.Any {
			return nil, pathCond{}, fmt.Errorf("%s.any: must be true", path)
		}
		return func(*http.Request, *requestAttrs) bool { return true }, pathCond{}, nil
	case *rbac.Permission_AndRules:
		ms, cs, err := compilePermissions(path+".and_rules", r.AndRules)
		if err != nil {
			return nil, pathCond{}, err
		}
		return func(q *http.Request, a *requestAttrs) bool { return allMatch(ms, q, a) }, andCond(cs), nil
	case *rbac.Permission_OrRules:
		ms, cs, err := compilePermissions(path+".or_rules", r.OrRules)
		if err != nil {
			return nil, pathCond{}, err
		}
		set := newAnySet(ms, cs)
		if set.ix == nil {
			return func(q *http.Request, a *requestAttrs) bool { return anyMatch(ms, q, a) }, orCond(cs), nil
		}
		return set.match, orCond(cs), nil
	case *rbac.Permission_NotRule:
		m, _, err := compilePermissionCond(path+".not_rule", r.NotRule)
		if err != nil {
			return nil, pathCond{}, err
		}
		return func(q *http.Request, a *requestAttrs) bool { return !m(q, a) }, pathCond{}, nil
	case *rbac.Permission_Header:
		hm, err := compileHeaderMatcher(path+".header", r.Header)
		if err != nil {
			return nil, pathCond{}, err
		}
		return func(q *http.Request, _ *requestAttrs) bool { return hm.match(q) }, methodCond(hm), nil
	case *rbac.Permission_UrlPath:
		m, sm, err := compileURLPath(path+".url_path", r.UrlPath)
		if err != nil {
			return nil, pathCond{}, err
		}
		return m, urlPathCond(sm), nil
	case *rbac.Permission_DestinationIp:
		pfx, err := compileCIDR(path+".destination_ip", r.DestinationIp)
		if err != nil {
			return nil, pathCond{}, err
		}
		return func(_ *http.Request, a *requestAttrs) bool { return pfx.Contains(a.local.Addr()) }, pathCond{}, nil
	case *rbac.Permission_DestinationPort:
		port := r.DestinationPort
		if port > 65535 {
			return nil, pathCond{}, fmt.Errorf("%s.destination_port %d: out of range", path, port)
		}
		return func(_ *http.Request, a *requestAttrs) bool { return uint32(a.local.Port()) == port }, pathCond{}, nil
	case *rbac.Permission_DestinationPortRange:
		if err := onlyFields(path+".destination_port_range", r.DestinationPortRange, "start", "end"); err != nil {
			return nil, pathCond{}, err
		}
		lo, hi := r.DestinationPortRange.GetStart(), r.DestinationPortRange.GetEnd()
		if lo > hi {
			return nil, pathCond{}, fmt.Errorf("%s.destination_port_range: start %d after end %d", path, lo, hi)
		}
		// Envoy's Int32Range is half-open: [start, end).
		return func(_ *http.Request, a *requestAttrs) bool {
			p := int32(a.local.Port())
			return p >= lo && p < hi
		}, pathCond{}, nil
	case nil:
		return nil, pathCond{}, fmt.Errorf("%s: a rule is required", path)
	default:
		return nil, pathCond{}, fmt.Errorf("%s: permission %s is not supported by nodemesh-proxy", path, ruleName(p.ProtoReflect().WhichOneof(p.ProtoReflect().Descriptor().Oneofs().ByName("rule")).Name()))
	}
}

func compilePermissions(path string, s *rbac.Permission_Set) ([]permission, []pathCond, error) {
	if len(s.GetRules()) == 0 {
		return nil, nil, fmt.Errorf("%s.rules: must not be empty", path)
	}
	var ms []permission
	var cs []pathCond
	for i, p := range s.GetRules() {
		m, c, err := compilePermissionCond(join(path, at("rules", i)), p)
		if err != nil {
			return nil, nil, err
		}
		ms = append(ms, m)
		cs = append(cs, c)
	}
	return ms, cs, nil
}

// compileURLPath matches the request path without its query string, as
// Envoy's url_path does.
func compileURLPath(path string, pm *matcher.PathMatcher) (permission, *stringMatcher, error) {
	if pm == nil {
		return nil, nil, fmt.Errorf("%s: a path matcher is required", path)
	}
	if err := onlyFields(path, pm, "path"); err != nil {
		return nil, nil, err
	}
	sm, err := compileStringMatcher(path+".path", pm.GetPath())
	if err != nil {
		return nil, nil, err
	}
	return func(q *http.Request, a *requestAttrs) bool { return sm.match(a.urlPath(q)) }, sm, nil
}

func compilePrincipal(path string, p *rbac.Principal) (principal, error) {
	if p == nil {
		return nil, fmt.Errorf("%s: a principal is required", path)
	}
	switch id := p.GetIdentifier().(type) {
	case *rbac.Principal_Any:
		if !id.Any {
			return nil, fmt.Errorf("%s.any: must be true", path)
		}
		return func(*http.Request, *requestAttrs) bool { return true }, nil
	case *rbac.Principal_AndIds:
		ms, err := compilePrincipals(path+".and_ids", id.AndIds)
		if err != nil {
			return nil, err
		}
		return func(q *http.Request, a *requestAttrs) bool { return allMatch(ms, q, a) }, nil
	case *rbac.Principal_OrIds:
		ms, err := compilePrincipals(path+".or_ids", id.OrIds)
		if err != nil {
			return nil, err
		}
		return func(q *http.Request, a *requestAttrs) bool { return anyMatch(ms, q, a) }, nil
	case *rbac.Principal_NotId:
		m, err := compilePrincipal(path+".not_id", id.NotId)
		if err != nil {
			return nil, err
		}
		return func(q *http.Request, a *requestAttrs) bool { return !m(q, a) }, nil
	case *rbac.Principal_DirectRemoteIp, *rbac.Principal_RemoteIp, *rbac.Principal_SourceIp:
		// Without PROXY protocol or trusted XFF hops (neither is
		// supported), Envoy's remote and direct remote address are the
		// downstream peer.
		var (
			c     = p.GetDirectRemoteIp()
			field = "direct_remote_ip"
		)
		if c == nil {
			c, field = p.GetRemoteIp(), "remote_ip"
		}
		if c == nil {
			c, field = p.GetSourceIp(), "source_ip"
		}
		pfx, err := compileCIDR(path+"."+field, c)
		if err != nil {
			return nil, err
		}
		return func(_ *http.Request, a *requestAttrs) bool { return pfx.Contains(a.remote.Addr()) }, nil
	case *rbac.Principal_Header:
		hm, err := compileHeaderMatcher(path+".header", id.Header)
		if err != nil {
			return nil, err
		}
		return func(q *http.Request, _ *requestAttrs) bool { return hm.match(q) }, nil
	case *rbac.Principal_UrlPath:
		m, _, err := compileURLPath(path+".url_path", id.UrlPath)
		return m, err
	case *rbac.Principal_Authenticated_:
		return compileAuthenticated(path+".authenticated", id.Authenticated)
	case nil:
		return nil, fmt.Errorf("%s: an identifier is required", path)
	default:
		return nil, fmt.Errorf("%s: principal %s is not supported by nodemesh-proxy", path, ruleName(p.ProtoReflect().WhichOneof(p.ProtoReflect().Descriptor().Oneofs().ByName("identifier")).Name()))
	}
}

func compilePrincipals(path string, s *rbac.Principal_Set) ([]principal, error) {
	if len(s.GetIds()) == 0 {
		return nil, fmt.Errorf("%s.ids: must not be empty", path)
	}
	var ms []principal
	for i, p := range s.GetIds() {
		m, err := compilePrincipal(join(path, at("ids", i)), p)
		if err != nil {
			return nil, err
		}
		ms = append(ms, m)
	}
	return ms, nil
}

func ruleName[S ~string](s S) string { return strings.TrimSpace(string(s)) }

// compileAuthenticated is Envoy's authenticated principal: it matches a
// request on a TLS connection; with principal_name, when the matcher
// matches one of the peer certificate's URI SANs, else one of its DNS
// SANs, else its subject (RFC 2253). Without a client certificate, only
// the (empty) subject is left to match.
func compileAuthenticated(path string, a *rbac.Principal_Authenticated) (principal, error) {
	if err := onlyFields(path, a, "principal_name"); err != nil {
		return nil, err
	}
	if a.PrincipalName == nil {
		return func(_ *http.Request, at *requestAttrs) bool { return at.tls != nil }, nil
	}
	sm, err := compileStringMatcher(path+".principal_name", a.GetPrincipalName())
	if err != nil {
		return nil, err
	}
	return func(_ *http.Request, at *requestAttrs) bool {
		t := at.tls
		if t == nil {
			return false
		}
		for _, u := range t.peerURIs {
			if sm.match(u) {
				return true
			}
		}
		for _, d := range t.peerDNS {
			if sm.match(d) {
				return true
			}
		}
		return sm.match(t.peerSubj)
	}, nil
}
