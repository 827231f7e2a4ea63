package proxy

import (
	"errors"
	"fmt"
	"net/http"
	"net/netip"
	"regexp"
	"regexp/syntax"
	"slices"
	"strings"
	"unicode/utf8"

	core "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	route "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	matcher "github.com/envoyproxy/go-control-plane/envoy/type/matcher/v3"
)

// stringMatcher is a compiled envoy.type.matcher.v3.StringMatcher.
type stringMatcher struct {
	kind       int    // smExact...
	value      string // smRegex: a literal prefix every match starts with
	suffix     string // smRegex: a literal suffix every match ends with
	re         *regexp.Regexp
	ignoreCase bool
}

const (
	smExact = iota
	smPrefix
	smSuffix
	smContains
	smRegex
)

func (m *stringMatcher) match(s string) bool {
	if m.kind == smRegex {
		// Rejecting on the literal prefix first saves most of the cost
		// of the many regexes a request does not match.
		return strings.HasPrefix(s, m.value) && strings.HasSuffix(s, m.suffix) && m.re.MatchString(s)
	}
	v := m.value
	if m.ignoreCase {
		s = strings.ToLower(s)
	}
	switch m.kind {
	case smExact:
		return s == v
	case smPrefix:
		return strings.HasPrefix(s, v)
	case smSuffix:
		return strings.HasSuffix(s, v)
	default:
		return strings.Contains(s, v)
	}
}

func compileStringMatcher(path string, sm *matcher.StringMatcher) (*stringMatcher, error) {
	if sm == nil {
		return nil, fmt.Errorf("%s: a string matcher is required", path)
	}
	if err := onlyFields(path, sm, "exact", "prefix", "suffix", "contains", "safe_regex", "ignore_case"); err != nil {
		return nil, err
	}
	m := &stringMatcher{ignoreCase: sm.GetIgnoreCase()}
	switch p := sm.GetMatchPattern().(type) {
	case *matcher.StringMatcher_Exact:
		m.kind, m.value = smExact, p.Exact
	case *matcher.StringMatcher_Prefix:
		if p.Prefix == "" {
			return nil, fmt.Errorf("%s.prefix: must not be empty", path)
		}
		m.kind, m.value = smPrefix, p.Prefix
	case *matcher.StringMatcher_Suffix:
		if p.Suffix == "" {
			return nil, fmt.Errorf("%s.suffix: must not be empty", path)
		}
		m.kind, m.value = smSuffix, p.Suffix
	case *matcher.StringMatcher_Contains:
		if p.Contains == "" {
			return nil, fmt.Errorf("%s.contains: must not be empty", path)
		}
		m.kind, m.value = smContains, p.Contains
	case *matcher.StringMatcher_SafeRegex:
		re, err := compileRegex(path+".safe_regex", p.SafeRegex, m.ignoreCase)
		if err != nil {
			return nil, err
		}
		m.kind, m.re = smRegex, re
		if !m.ignoreCase {
			m.value = regexPrefix(p.SafeRegex.GetRegex())
			m.suffix = regexSuffix(p.SafeRegex.GetRegex())
		}
		// A regex that is a plain literal ("GET") fully matches only
		// itself: compare strings instead of running the automaton.
		if lit, ok := literalRegex(p.SafeRegex.GetRegex()); ok && !m.ignoreCase {
			m.kind, m.value, m.re = smExact, lit, nil
		}
	default:
		return nil, fmt.Errorf("%s: one of exact, prefix, suffix, contains, safe_regex is required", path)
	}
	if m.ignoreCase {
		m.value = strings.ToLower(m.value)
	}
	return m, nil
}

// compileRegex compiles a RegexMatcher for a full match, as Envoy's RE2
// engine does (RE2::FullMatch): Go's regexp implements RE2 syntax.
func compileRegex(path string, rm *matcher.RegexMatcher, ignoreCase bool) (*regexp.Regexp, error) {
	if rm == nil {
		return nil, fmt.Errorf("%s: a regex matcher is required", path)
	}
	if err := onlyFields(path, rm, "google_re2", "regex"); err != nil {
		return nil, err
	}
	if g := rm.GetGoogleRe2(); g != nil {
		if err := onlyFields(path+".google_re2", g); err != nil {
			return nil, err
		}
	}
	expr := `\A(?:` + rm.GetRegex() + `)\z`
	if ignoreCase {
		expr = `(?i)` + expr
	}
	re, err := regexp.Compile(expr)
	if err != nil {
		return nil, fmt.Errorf("%s.regex %q: %w", path, rm.GetRegex(), err)
	}
	return re, nil
}

// regexPrefix is the literal every match of expr starts with.
func regexPrefix(expr string) string {
	re, err := regexp.Compile(expr)
	if err != nil {
		return ""
	}
	p, _ := re.LiteralPrefix()
	return p
}

// regexSuffix is a literal every full match of expr ends with: the
// case-sensitive literals that end its top-level concatenation.
func regexSuffix(expr string) string {
	re, err := syntax.Parse(expr, syntax.Perl)
	if err != nil {
		return ""
	}
	re = re.Simplify()
	subs := []*syntax.Regexp{re}
	if re.Op == syntax.OpConcat {
		subs = re.Sub
	}
	var rs []rune
	for i := len(subs) - 1; i >= 0; i-- {
		s := subs[i]
		if s.Op != syntax.OpLiteral || s.Flags&syntax.FoldCase != 0 {
			break
		}
		rs = append(slices.Clone(s.Rune), rs...)
	}
	// U+FFFD also matches an invalid byte: the suffix is what follows
	// the last one.
	for i := len(rs) - 1; i >= 0; i-- {
		if rs[i] == utf8.RuneError {
			rs = rs[i+1:]
			break
		}
	}
	return string(rs)
}

// literalRegex reports whether expr matches exactly one string.
func literalRegex(expr string) (string, bool) {
	re, err := syntax.Parse(expr, syntax.Perl)
	if err != nil {
		return "", false
	}
	re = re.Simplify()
	switch {
	case re.Op == syntax.OpLiteral && re.Flags&syntax.FoldCase == 0:
		return string(re.Rune), true
	case re.Op == syntax.OpEmptyMatch:
		return "", true
	}
	return "", false
}

// headerMatcher is a compiled envoy.config.route.v3.HeaderMatcher.
type headerMatcher struct {
	name         string // canonical Go header name, or a pseudo-header ":path"
	present      *bool
	str          *stringMatcher
	invert       bool
	missingEmpty bool
}

func compileHeaderMatcher(path string, hm *route.HeaderMatcher) (*headerMatcher, error) {
	if hm == nil {
		return nil, fmt.Errorf("%s: a header matcher is required", path)
	}
	if err := onlyFields(path, hm, "name", "exact_match", "safe_regex_match", "present_match", "prefix_match",
		"suffix_match", "contains_match", "string_match", "invert_match", "treat_missing_header_as_empty"); err != nil {
		return nil, err
	}
	name := strings.ToLower(hm.GetName())
	if name == "" {
		return nil, fmt.Errorf("%s.name: is required", path)
	}
	if !strings.HasPrefix(name, ":") {
		name = http.CanonicalHeaderKey(name)
	} else if name != ":method" && name != ":path" && name != ":authority" && name != ":scheme" {
		return nil, fmt.Errorf("%s.name: pseudo-header %q is not supported", path, name)
	}
	m := &headerMatcher{name: name, invert: hm.GetInvertMatch(), missingEmpty: hm.GetTreatMissingHeaderAsEmpty()}
	var err error
	switch s := hm.GetHeaderMatchSpecifier().(type) {
	case *route.HeaderMatcher_ExactMatch:
		m.str = &stringMatcher{kind: smExact, value: s.ExactMatch}
	case *route.HeaderMatcher_PrefixMatch:
		m.str = &stringMatcher{kind: smPrefix, value: s.PrefixMatch}
	case *route.HeaderMatcher_SuffixMatch:
		m.str = &stringMatcher{kind: smSuffix, value: s.SuffixMatch}
	case *route.HeaderMatcher_ContainsMatch:
		m.str = &stringMatcher{kind: smContains, value: s.ContainsMatch}
	case *route.HeaderMatcher_SafeRegexMatch:
		re, rerr := compileRegex(path+".safe_regex_match", s.SafeRegexMatch, false)
		if rerr != nil {
			return nil, rerr
		}
		m.str = &stringMatcher{kind: smRegex, re: re, value: regexPrefix(s.SafeRegexMatch.GetRegex()), suffix: regexSuffix(s.SafeRegexMatch.GetRegex())}
		if lit, ok := literalRegex(s.SafeRegexMatch.GetRegex()); ok {
			m.str = &stringMatcher{kind: smExact, value: lit}
		}
	case *route.HeaderMatcher_StringMatch:
		m.str, err = compileStringMatcher(path+".string_match", s.StringMatch)
		if err != nil {
			return nil, err
		}
	case *route.HeaderMatcher_PresentMatch:
		v := s.PresentMatch
		m.present = &v
	case nil:
		// Envoy: no specifier means "present".
		v := true
		m.present = &v
	default:
		return nil, fmt.Errorf("%s: header match specifier %T is not supported", path, s)
	}
	return m, nil
}

// match applies Envoy's header matching: several values of one header are
// joined with "," before matching; invert_match negates the result, except
// that a missing header never matches a value matcher.
func (m *headerMatcher) match(r *http.Request) bool {
	v, ok := headerValue(r, m.name)
	if m.present != nil {
		return (ok == *m.present) != m.invert
	}
	if !ok {
		if !m.missingEmpty {
			return false
		}
		v = ""
	}
	return m.str.match(v) != m.invert
}

func headerValue(r *http.Request, name string) (string, bool) {
	switch name {
	case ":method":
		return r.Method, true
	case ":path":
		if r.RequestURI != "" && r.RequestURI[0] == '/' {
			return r.RequestURI, true
		}
		return r.URL.RequestURI(), true
	case ":authority", "Host":
		return r.Host, r.Host != ""
	case ":scheme":
		if r.TLS != nil {
			return "https", true
		}
		return "http", true
	}
	vs, ok := r.Header[name]
	if !ok {
		return "", false
	}
	if len(vs) == 1 {
		return vs[0], true
	}
	return strings.Join(vs, ","), true
}

// compileCIDR turns a CidrRange into a prefix; prefix_len defaults to 0 as
// in Envoy.
func compileCIDR(path string, c *core.CidrRange) (netip.Prefix, error) {
	if c == nil {
		return netip.Prefix{}, errors.New(path + ": a CIDR range is required")
	}
	if err := onlyFields(path, c, "address_prefix", "prefix_len"); err != nil {
		return netip.Prefix{}, err
	}
	a, err := netip.ParseAddr(c.GetAddressPrefix())
	if err != nil {
		return netip.Prefix{}, fmt.Errorf("%s.address_prefix %q: %w", path, c.GetAddressPrefix(), err)
	}
	a = a.Unmap()
	bits := int(c.GetPrefixLen().GetValue())
	if bits > a.BitLen() {
		return netip.Prefix{}, fmt.Errorf("%s.prefix_len %d: longer than the address", path, bits)
	}
	return netip.PrefixFrom(a, bits).Masked(), nil
}

// requestPath is the path of the request line without query: the raw
// (still escaped) form, as Envoy sees it.
func requestPath(r *http.Request) string {
	p := r.URL.EscapedPath()
	if r.URL.Opaque != "" {
		p = r.URL.Opaque
	}
	return p
}
