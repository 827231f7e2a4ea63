package l7policy

import (
	"fmt"
	"net/textproto"
	"regexp"
	"sort"
	"strings"
)

// HeaderMatch requires a header to be present (Value empty and Present) or to
// equal Value.
type HeaderMatch struct {
	Name  string `json:"name"`
	Value string `json:"value,omitempty"`
}

// HTTPRule is one HTTP rule as written in a policy.
type HTTPRule struct {
	Method  string        `json:"method,omitempty"`
	Path    string        `json:"path,omitempty"`
	Host    string        `json:"host,omitempty"`
	Headers []HeaderMatch `json:"headers,omitempty"`
}

// String renders the rule as users read it: `GET /userdata/[0-9]+ host=a.b header[X-A]=1`.
func (r HTTPRule) String() string {
	var parts []string
	if r.Method != "" {
		parts = append(parts, r.Method)
	}
	if r.Path != "" {
		parts = append(parts, r.Path)
	}
	if r.Host != "" {
		parts = append(parts, "host="+r.Host)
	}
	for _, h := range r.Headers {
		if h.Value == "" {
			parts = append(parts, "header["+h.Name+"]")
		} else {
			parts = append(parts, "header["+h.Name+"]="+h.Value)
		}
	}
	if len(parts) == 0 {
		return "any request"
	}
	return strings.Join(parts, " ")
}

// ParseHeader parses the Cilium "Name" / "Name: value" header form.
func ParseHeader(s string) HeaderMatch {
	name, value, _ := strings.Cut(s, ":")
	return HeaderMatch{Name: strings.TrimSpace(name), Value: strings.TrimSpace(value)}
}

// Request is the part of an HTTP request rules look at.
type Request struct {
	Method  string            `json:"method"`
	Path    string            `json:"path"`
	Host    string            `json:"host,omitempty"`
	Headers map[string]string `json:"headers,omitempty"`
}

func (r Request) header(name string) (string, bool) {
	if strings.EqualFold(name, "host") || name == ":authority" {
		return r.Host, r.Host != ""
	}
	for k, v := range r.Headers {
		if strings.EqualFold(k, name) {
			return v, true
		}
	}
	return "", false
}

type compiledRule struct {
	rule               HTTPRule
	method, path, host *regexp.Regexp
}

// RuleSet is a compiled, deduplicated and sorted set of HTTP rules.
type RuleSet struct {
	rules []compiledRule
}

// fullMatch compiles re so that it must match the whole value.
func fullMatch(re string) (*regexp.Regexp, error) {
	if re == "" {
		return nil, nil
	}
	c, err := regexp.Compile(`^(?:` + re + `)$`)
	if err != nil {
		return nil, fmt.Errorf("%q is not a valid regular expression: %w", re, err)
	}
	return c, nil
}

// Compile compiles rules into a RuleSet.
func Compile(rules []HTTPRule) (*RuleSet, error) {
	seen := map[string]bool{}
	rs := &RuleSet{}
	for _, r := range rules {
		for i := range r.Headers {
			r.Headers[i].Name = textproto.CanonicalMIMEHeaderKey(r.Headers[i].Name)
		}
		key := r.key()
		if seen[key] {
			continue
		}
		seen[key] = true
		c := compiledRule{rule: r}
		var err error
		if c.method, err = fullMatch(r.Method); err != nil {
			return nil, fmt.Errorf("method: %w", err)
		}
		if c.path, err = fullMatch(r.Path); err != nil {
			return nil, fmt.Errorf("path: %w", err)
		}
		if c.host, err = fullMatch(r.Host); err != nil {
			return nil, fmt.Errorf("host: %w", err)
		}
		rs.rules = append(rs.rules, c)
	}
	sort.Slice(rs.rules, func(i, j int) bool { return rs.rules[i].rule.key() < rs.rules[j].rule.key() })
	return rs, nil
}

// MustCompile is Compile for rules known to be valid (validated earlier).
func MustCompile(rules []HTTPRule) *RuleSet {
	rs, err := Compile(rules)
	if err != nil {
		panic(err)
	}
	return rs
}

func (r HTTPRule) key() string {
	var b strings.Builder
	b.WriteString(r.Method)
	b.WriteByte(0)
	b.WriteString(r.Path)
	b.WriteByte(0)
	b.WriteString(r.Host)
	for _, h := range r.Headers {
		b.WriteByte(0)
		b.WriteString(h.Name)
		b.WriteByte(1)
		b.WriteString(h.Value)
	}
	return b.String()
}

// Rules returns the rules of the set, sorted.
func (rs *RuleSet) Rules() []HTTPRule {
	out := make([]HTTPRule, len(rs.rules))
	for i, c := range rs.rules {
		out[i] = c.rule
	}
	return out
}

// Len is the number of distinct rules.
func (rs *RuleSet) Len() int { return len(rs.rules) }

// Key identifies the set's contents, for deduplication and comparison.
func (rs *RuleSet) Key() string {
	keys := make([]string, len(rs.rules))
	for i, c := range rs.rules {
		keys[i] = c.rule.key()
	}
	return strings.Join(keys, "\x02")
}

// Union returns a set with the rules of every set. Rules are already
// compiled, so this only merges; a single set is returned as it is.
func Union(sets ...*RuleSet) *RuleSet {
	var first *RuleSet
	n := 0
	for _, s := range sets {
		if s != nil && s != first {
			if first == nil {
				first = s
			}
			n++
		}
	}
	switch {
	case n == 0:
		return &RuleSet{}
	case n == 1:
		return first
	}
	seen := map[string]bool{}
	out := &RuleSet{}
	for _, s := range sets {
		if s == nil {
			continue
		}
		for _, c := range s.rules {
			if k := c.rule.key(); !seen[k] {
				seen[k] = true
				out.rules = append(out.rules, c)
			}
		}
	}
	sort.Slice(out.rules, func(i, j int) bool { return out.rules[i].rule.key() < out.rules[j].rule.key() })
	return out
}

// Match returns the first rule (in the set's order) that allows req.
func (rs *RuleSet) Match(req Request) (HTTPRule, bool) {
	path := req.Path
	if i := strings.IndexAny(path, "?#"); i >= 0 {
		path = path[:i]
	}
	for _, c := range rs.rules {
		if c.method != nil && !c.method.MatchString(req.Method) {
			continue
		}
		if c.path != nil && !c.path.MatchString(path) {
			continue
		}
		if c.host != nil {
			if h, _ := req.header("host"); !c.host.MatchString(h) {
				continue
			}
		}
		if !headersMatch(c.rule.Headers, req) {
			continue
		}
		return c.rule, true
	}
	return HTTPRule{}, false
}

func headersMatch(hs []HeaderMatch, req Request) bool {
	for _, h := range hs {
		v, ok := req.header(h.Name)
		if !ok || (h.Value != "" && v != h.Value) {
			return false
		}
	}
	return true
}
