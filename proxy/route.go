package proxy

import (
	"fmt"
	"net"
	"net/http"
	"regexp"
	"slices"
	"strings"
	"time"

	route "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
)

// routeTable is a compiled RouteConfiguration.
type routeTable struct {
	name       string
	ignorePort bool
	exact      map[string]*virtualHost // lower-case domain
	suffix     []domainHost            // "*.example.com": longest first
	prefix     []domainHost            // "example.*": longest first
	any        *virtualHost            // "*"
}

type domainHost struct {
	part string // the domain without its "*"
	vh   *virtualHost
}

type virtualHost struct {
	name   string
	routes []*routeEntry
}

// routeEntry is one route: a match and either a cluster or a direct
// response.
type routeEntry struct {
	name          string
	kind          int // pathPrefix...
	value         string
	re            *regexp.Regexp
	caseSensitive bool
	headers       []*headerMatcher

	cluster         string
	notFoundCode    int
	timeout         time.Duration // upstream timeout, 0 = none
	idleTimeout     time.Duration // per-route stream idle timeout override
	hasIdleOverride bool
	direct          *directResponse
}

type directResponse struct {
	status int
	body   string
}

const (
	pathPrefix = iota
	pathExact
	pathRegex
	pathSeparatedPrefix
)

// defaultRouteTimeout is RouteAction.timeout's default in Envoy.
const defaultRouteTimeout = 15 * time.Second

func compileRouteConfig(path string, rc *route.RouteConfiguration) (*routeTable, error) {
	if err := onlyFields(path, rc, "name", "virtual_hosts", "validate_clusters", "ignore_port_in_host_matching"); err != nil {
		return nil, err
	}
	t := &routeTable{name: rc.GetName(), ignorePort: rc.GetIgnorePortInHostMatching(), exact: map[string]*virtualHost{}}
	seen := map[string]string{}
	for i, v := range rc.GetVirtualHosts() {
		vp := join(path, at("virtual_hosts", i))
		if err := onlyFields(vp, v, "name", "domains", "routes"); err != nil {
			return nil, err
		}
		vh := &virtualHost{name: v.GetName()}
		if len(v.GetDomains()) == 0 {
			return nil, fmt.Errorf("%s.domains: must not be empty", vp)
		}
		for _, d := range v.GetDomains() {
			d = strings.ToLower(d)
			if other, dup := seen[d]; dup {
				return nil, fmt.Errorf("%s.domains: %q is also a domain of virtual host %q", vp, d, other)
			}
			seen[d] = v.GetName()
			switch {
			case d == "*":
				t.any = vh
			case strings.HasPrefix(d, "*"):
				t.suffix = append(t.suffix, domainHost{d[1:], vh})
			case strings.HasSuffix(d, "*"):
				t.prefix = append(t.prefix, domainHost{d[:len(d)-1], vh})
			case strings.Contains(d, "*"):
				return nil, fmt.Errorf("%s.domains: %q: a wildcard must be at the start or end", vp, d)
			default:
				t.exact[d] = vh
			}
		}
		for j, r := range v.GetRoutes() {
			re, err := compileRoute(join(vp, at("routes", j)), r)
			if err != nil {
				return nil, err
			}
			vh.routes = append(vh.routes, re)
		}
	}
	longestFirst := func(a, b domainHost) int { return len(b.part) - len(a.part) }
	slices.SortStableFunc(t.suffix, longestFirst)
	slices.SortStableFunc(t.prefix, longestFirst)
	return t, nil
}

func compileRoute(path string, r *route.Route) (*routeEntry, error) {
	if err := onlyFields(path, r, "name", "match", "route", "direct_response"); err != nil {
		return nil, err
	}
	e := &routeEntry{name: r.GetName(), caseSensitive: true}
	m := r.GetMatch()
	mp := path + ".match"
	if m == nil {
		return nil, fmt.Errorf("%s: is required", mp)
	}
	if err := onlyFields(mp, m, "prefix", "path", "safe_regex", "path_separated_prefix", "case_sensitive", "headers"); err != nil {
		return nil, err
	}
	if m.CaseSensitive != nil {
		e.caseSensitive = m.GetCaseSensitive().GetValue()
	}
	switch s := m.GetPathSpecifier().(type) {
	case *route.RouteMatch_Prefix:
		e.kind, e.value = pathPrefix, s.Prefix
	case *route.RouteMatch_Path:
		e.kind, e.value = pathExact, s.Path
	case *route.RouteMatch_PathSeparatedPrefix:
		if !strings.HasPrefix(s.PathSeparatedPrefix, "/") || (len(s.PathSeparatedPrefix) > 1 && strings.HasSuffix(s.PathSeparatedPrefix, "/")) {
			return nil, fmt.Errorf("%s.path_separated_prefix %q: must start and not end with /", mp, s.PathSeparatedPrefix)
		}
		e.kind, e.value = pathSeparatedPrefix, s.PathSeparatedPrefix
	case *route.RouteMatch_SafeRegex:
		re, err := compileRegex(mp+".safe_regex", s.SafeRegex, false)
		if err != nil {
			return nil, err
		}
		e.kind, e.re = pathRegex, re
	default:
		return nil, fmt.Errorf("%s: one of prefix, path, safe_regex, path_separated_prefix is required", mp)
	}
	if !e.caseSensitive {
		e.value = strings.ToLower(e.value)
	}
	for i, h := range m.GetHeaders() {
		hm, err := compileHeaderMatcher(join(mp, at("headers", i)), h)
		if err != nil {
			return nil, err
		}
		e.headers = append(e.headers, hm)
	}
	switch a := r.GetAction().(type) {
	case *route.Route_Route:
		ap := path + ".route"
		ra := a.Route
		if err := onlyFields(ap, ra, "cluster", "cluster_not_found_response_code", "timeout", "idle_timeout"); err != nil {
			return nil, err
		}
		if ra.GetCluster() == "" {
			return nil, fmt.Errorf("%s.cluster: is required", ap)
		}
		e.cluster = ra.GetCluster()
		switch ra.GetClusterNotFoundResponseCode() {
		case route.RouteAction_SERVICE_UNAVAILABLE:
			e.notFoundCode = http.StatusServiceUnavailable
		case route.RouteAction_NOT_FOUND:
			e.notFoundCode = http.StatusNotFound
		case route.RouteAction_INTERNAL_SERVER_ERROR:
			e.notFoundCode = http.StatusInternalServerError
		default:
			return nil, fmt.Errorf("%s.cluster_not_found_response_code: %s is not supported", ap, ra.GetClusterNotFoundResponseCode())
		}
		e.timeout = defaultRouteTimeout
		if ra.Timeout != nil {
			e.timeout = ra.GetTimeout().AsDuration()
		}
		if ra.IdleTimeout != nil {
			e.idleTimeout, e.hasIdleOverride = ra.GetIdleTimeout().AsDuration(), true
		}
	case *route.Route_DirectResponse:
		ap := path + ".direct_response"
		if err := onlyFields(ap, a.DirectResponse, "status", "body"); err != nil {
			return nil, err
		}
		st := a.DirectResponse.GetStatus()
		if st < 200 || st > 599 {
			return nil, fmt.Errorf("%s.status %d: must be in [200, 600)", ap, st)
		}
		e.direct = &directResponse{status: int(st)}
		if b := a.DirectResponse.GetBody(); b != nil {
			if err := onlyFields(ap+".body", b, "inline_string", "inline_bytes"); err != nil {
				return nil, err
			}
			e.direct.body = b.GetInlineString() + string(b.GetInlineBytes())
		}
	default:
		return nil, fmt.Errorf("%s: a route or direct_response action is required", path)
	}
	return e, nil
}

// match finds the virtual host by Envoy's domain search order (exact,
// longest suffix wildcard, longest prefix wildcard, "*") and its first
// matching route.
func (t *routeTable) match(r *http.Request) *routeEntry {
	host := strings.ToLower(r.Host)
	if t.ignorePort {
		if h, _, err := net.SplitHostPort(host); err == nil {
			host = h
		}
	}
	vh := t.exact[host]
	if vh == nil {
		for _, d := range t.suffix {
			if len(host) > len(d.part) && strings.HasSuffix(host, d.part) {
				vh = d.vh
				break
			}
		}
	}
	if vh == nil {
		for _, d := range t.prefix {
			if len(host) > len(d.part) && strings.HasPrefix(host, d.part) {
				vh = d.vh
				break
			}
		}
	}
	if vh == nil {
		vh = t.any
	}
	if vh == nil {
		return nil
	}
	p := requestPath(r)
	for _, e := range vh.routes {
		if e.matches(r, p) {
			return e
		}
	}
	return nil
}

func (e *routeEntry) matches(r *http.Request, p string) bool {
	if !e.caseSensitive {
		p = strings.ToLower(p)
	}
	switch e.kind {
	case pathPrefix:
		if !strings.HasPrefix(p, e.value) {
			return false
		}
	case pathExact:
		if p != e.value {
			return false
		}
	case pathSeparatedPrefix:
		if p != e.value && !strings.HasPrefix(p, e.value+"/") {
			return false
		}
	case pathRegex:
		if !e.re.MatchString(p) {
			return false
		}
	}
	for _, h := range e.headers {
		if !h.match(r) {
			return false
		}
	}
	return true
}
