package proxy

import (
	"fmt"
	"math/rand/v2"
	"net/http/httptest"
	"regexp"
	"testing"

	rbac "github.com/envoyproxy/go-control-plane/envoy/config/rbac/v3"
	route "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	rbacfilter "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/rbac/v3"
	matcher "github.com/envoyproxy/go-control-plane/envoy/type/matcher/v3"

	pt "github.com/nodemesh/nodemesh/proxy/proxytest"
)

// TestRBACIndexSameVerdicts compares the indexed RBAC evaluation with the
// linear walk over random policies and requests: same verdict, same
// policy.
func TestRBACIndexSameVerdicts(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	segs := []string{"a", "ab", "abc", "svc-1", "svc-12", "userdata", "x", "é", "%2F", ""}
	methods := []string{"GET", "POST", "get", "PUT"}
	pick := func(ss []string) string { return ss[rng.IntN(len(ss))] }
	randPath := func() string {
		p := ""
		for range 1 + rng.IntN(3) {
			p += "/" + pick(segs)
		}
		switch rng.IntN(6) {
		case 0:
			p += fmt.Sprint(rng.IntN(100))
		case 1:
			p += fmt.Sprintf("/%d/item-%d", rng.IntN(100), rng.IntN(3))
		case 2:
			p += pick(segs) + "x"
		}
		if rng.IntN(5) == 0 {
			p += "?q=" + pick(segs)
		}
		return p
	}
	strMatcher := func() *matcher.StringMatcher {
		base := randPath()
		switch rng.IntN(7) {
		case 0:
			return &matcher.StringMatcher{MatchPattern: &matcher.StringMatcher_Exact{Exact: base}}
		case 1:
			return &matcher.StringMatcher{MatchPattern: &matcher.StringMatcher_Prefix{Prefix: base}}
		case 2:
			return &matcher.StringMatcher{MatchPattern: &matcher.StringMatcher_Suffix{Suffix: pick(segs) + "x"}}
		case 3:
			return &matcher.StringMatcher{MatchPattern: &matcher.StringMatcher_Prefix{Prefix: base}, IgnoreCase: true}
		case 4:
			return pt.Regex(regexp.QuoteMeta(base) + "(/[a-z]+)?/[0-9]+")
		case 5:
			return pt.Regex("/" + pick(segs) + "/([0-9]+)/item-" + fmt.Sprint(rng.IntN(3)))
		default:
			return pt.Regex("(/" + pick(segs) + "|/x)/.*" + pick(segs))
		}
	}
	var perm func(depth int) *rbac.Permission
	perm = func(depth int) *rbac.Permission {
		n := rng.IntN(10)
		if depth > 2 {
			n = 3 + rng.IntN(2)
		}
		switch n {
		case 0, 1:
			var rs []*rbac.Permission
			for range 1 + rng.IntN(12) {
				rs = append(rs, perm(depth+1))
			}
			return &rbac.Permission{Rule: &rbac.Permission_OrRules{OrRules: &rbac.Permission_Set{Rules: rs}}}
		case 2:
			return &rbac.Permission{Rule: &rbac.Permission_NotRule{NotRule: perm(depth + 1)}}
		case 3:
			return &rbac.Permission{Rule: &rbac.Permission_Header{Header: &route.HeaderMatcher{Name: ":method",
				HeaderMatchSpecifier: &route.HeaderMatcher_StringMatch{StringMatch: pt.Regex(pick(methods))}, InvertMatch: rng.IntN(5) == 0}}}
		case 4:
			return &rbac.Permission{Rule: &rbac.Permission_UrlPath{UrlPath: &matcher.PathMatcher{Rule: &matcher.PathMatcher_Path{Path: strMatcher()}}}}
		case 5:
			return &rbac.Permission{Rule: &rbac.Permission_Any{Any: true}}
		default:
			var rs []*rbac.Permission
			for range 1 + rng.IntN(3) {
				rs = append(rs, perm(depth+1))
			}
			return &rbac.Permission{Rule: &rbac.Permission_AndRules{AndRules: &rbac.Permission_Set{Rules: rs}}}
		}
	}
	for round := range 120 {
		pols := map[string]*rbac.Policy{}
		for i := range 1 + rng.IntN(40) {
			var ps []*rbac.Permission
			for range 1 + rng.IntN(12) {
				if round%3 == 0 || rng.IntN(30) == 0 {
					ps = append(ps, perm(0))
					continue
				}
				// The generated shape: method and path.
				ps = append(ps, &rbac.Permission{Rule: &rbac.Permission_AndRules{AndRules: &rbac.Permission_Set{Rules: []*rbac.Permission{
					perm(3), {Rule: &rbac.Permission_UrlPath{UrlPath: &matcher.PathMatcher{Rule: &matcher.PathMatcher_Path{Path: strMatcher()}}}}}}}})
			}
			pols[fmt.Sprintf("p%03d", i)] = &rbac.Policy{Permissions: ps, Principals: []*rbac.Principal{{Identifier: &rbac.Principal_Any{Any: true}}}}
		}
		action := rbac.RBAC_ALLOW
		if round%2 == 1 {
			action = rbac.RBAC_DENY
		}
		cfg := pt.Any(&rbacfilter.RBAC{Rules: &rbac.RBAC{Action: action, Policies: pols}})
		indexed, err := compileRBAC("rbac", filterRBAC, cfg)
		if err != nil {
			t.Fatal(err)
		}
		rbacIndexing = false
		linear, err := compileRBAC("rbac", filterRBAC, cfg)
		rbacIndexing = true
		if err != nil {
			t.Fatal(err)
		}
		for range 200 {
			r := httptest.NewRequest(pick(methods), "http://h"+randPath(), nil)
			var a1, a2 requestAttrs
			ok1, p1 := indexed.evaluate(r, &a1)
			ok2, p2 := linear.evaluate(r, &a2)
			if ok1 != ok2 || p1 != p2 {
				t.Fatalf("round %d: %s %s: indexed %v %q, linear %v %q", round, r.Method, r.URL, ok1, p1, ok2, p2)
			}
		}
	}
}

func TestRegexSuffix(t *testing.T) {
	for expr, want := range map[string]string{
		"/userdata/([0-9]+)/item-7": "/item-7",
		"/svc-1/[a-z]+/[0-9]+":      "",
		"abc":                       "abc",
		"a(?i)bc":                   "",
		"a|b":                       "",
		"x.*yz":                     "yz",
		"x.*\\x{FFFD}yz":            "yz",
		"(":                         "",
		"ab$":                       "",
	} {
		if got := regexSuffix(expr); got != want {
			t.Errorf("regexSuffix(%q) = %q, want %q", expr, got, want)
		}
	}
}

func TestRequestIDFormat(t *testing.T) {
	re := regexp.MustCompile(`^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$`)
	for range 100 {
		if id := newRequestID(); !re.MatchString(id) {
			t.Fatalf("request id %q", id)
		}
	}
}

// TestRBACIndexManyLists: more candidate lists than the merge takes
// (prefixes of 8 lengths, each with suffixes of 3 lengths) fall back to
// the walk, with the same verdicts.
func TestRBACIndexManyLists(t *testing.T) {
	pols := map[string]*rbac.Policy{}
	var ors []*rbac.Permission
	sfx := []string{"z", "yz", "xyz"}
	for p := 1; p <= 8; p++ {
		for j := range 9 {
			pol := pt.MethodPathPolicy("GET", regexp.QuoteMeta("/abcdefgh"[:p+1])+".*"+sfx[j%3]+fmt.Sprint(j/3))
			pols[fmt.Sprintf("p%d-%d", p, j)] = pol
			ors = append(ors, pol.Permissions[0])
		}
	}
	or := &rbac.Policy{Permissions: []*rbac.Permission{{Rule: &rbac.Permission_OrRules{OrRules: &rbac.Permission_Set{Rules: ors}}}},
		Principals: []*rbac.Principal{{Identifier: &rbac.Principal_Any{Any: true}}}}
	for _, ps := range []map[string]*rbac.Policy{pols, {"or": or}} {
		cfg := pt.Any(&rbacfilter.RBAC{Rules: &rbac.RBAC{Policies: ps}})
		indexed, err := compileRBAC("rbac", filterRBAC, cfg)
		if err != nil {
			t.Fatal(err)
		}
		rbacIndexing = false
		linear, err := compileRBAC("rbac", filterRBAC, cfg)
		rbacIndexing = true
		if err != nil {
			t.Fatal(err)
		}
		for _, path := range []string{"/abcdefghi/xyz0", "/abcdefghi/xyz1", "/abcdefghi/xyz2", "/abcdefghi/yz2", "/abcd/z1", "/a/xyz0", "/b/xyz0", "/abcdefghi/xyz3"} {
			r := httptest.NewRequest("GET", path, nil)
			var a1, a2 requestAttrs
			ok1, p1 := indexed.evaluate(r, &a1)
			ok2, p2 := linear.evaluate(r, &a2)
			if ok1 != ok2 || p1 != p2 {
				t.Fatalf("%s: indexed %v %q, linear %v %q", path, ok1, p1, ok2, p2)
			}
		}
	}
}
