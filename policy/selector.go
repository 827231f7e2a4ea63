package policy

import (
	"sort"
	"strings"

	"github.com/nodemesh/nodemesh/api"
	"github.com/nodemesh/nodemesh/identity"
)

// Operator is a label selector operator.
type Operator uint8

// Operators.
const (
	In Operator = iota
	NotIn
	Exists
	DoesNotExist
)

// Requirement is one condition on an identity's labels.
type Requirement struct {
	Source string // "" matches any source
	Key    string
	Op     Operator
	Values []string
}

func (r Requirement) matches(ls identity.Labels) bool {
	v, ok := ls.Get(r.Source, r.Key)
	switch r.Op {
	case In:
		return ok && contains(r.Values, v)
	case NotIn:
		return !ok || !contains(r.Values, v)
	case Exists:
		return ok
	default:
		return !ok
	}
}

func contains(vs []string, v string) bool {
	for _, x := range vs {
		if x == v {
			return true
		}
	}
	return false
}

// Selector selects identities by their labels: all requirements must hold.
// The empty selector selects every identity, the world included.
type Selector struct {
	Reqs []Requirement
	key  string
}

// Matches reports whether the selector selects an identity with labels ls.
func (s *Selector) Matches(ls identity.Labels) bool {
	for _, r := range s.Reqs {
		if !r.matches(ls) {
			return false
		}
	}
	return true
}

// Key is a canonical string for the selector, equal for equal selectors.
func (s *Selector) Key() string { return s.key }

func (s *Selector) String() string {
	if s.key == "" {
		return "{}"
	}
	return s.key
}

func newSelector(reqs ...Requirement) *Selector {
	for i := range reqs {
		reqs[i].Values = append([]string(nil), reqs[i].Values...)
		sort.Strings(reqs[i].Values)
	}
	sort.Slice(reqs, func(i, j int) bool { return reqString(reqs[i]) < reqString(reqs[j]) })
	parts := make([]string, len(reqs))
	for i, r := range reqs {
		parts[i] = reqString(r)
	}
	return &Selector{Reqs: reqs, key: strings.Join(parts, ",")}
}

func reqString(r Requirement) string {
	k := r.Key
	if r.Source != "" {
		k = r.Source + ":" + k
	}
	switch r.Op {
	case In:
		if len(r.Values) == 1 {
			return k + "=" + r.Values[0]
		}
		return k + " in (" + strings.Join(r.Values, ",") + ")"
	case NotIn:
		return k + " notin (" + strings.Join(r.Values, ",") + ")"
	case Exists:
		return k
	default:
		return "!" + k
	}
}

var opByName = map[string]Operator{api.OpIn: In, api.OpNotIn: NotIn, api.OpExists: Exists, api.OpDoesNotExist: DoesNotExist}

// selectorReqs converts an api selector. keyPrefix is put before every key
// (to select namespace labels); source is the source given to keys that name
// none (k8s for NetworkPolicy, where keys are plain pod labels).
func selectorReqs(s *api.LabelSelector, keyPrefix, defaultSource string) []Requirement {
	var reqs []Requirement
	conv := func(k string) (string, string) {
		src, key := api.SplitLabelKey(k)
		if src == "" || src == identity.SourceAny || src == "unspec" {
			src = defaultSource
		}
		return src, keyPrefix + key
	}
	for k, v := range s.MatchLabels {
		src, key := conv(k)
		reqs = append(reqs, Requirement{Source: src, Key: key, Op: In, Values: []string{v}})
	}
	for _, e := range s.MatchExpressions {
		src, key := conv(e.Key)
		reqs = append(reqs, Requirement{Source: src, Key: key, Op: opByName[e.Operator], Values: e.Values})
	}
	return reqs
}

// Requirements used to build selectors.
var (
	isPod = Requirement{Source: identity.SourceK8s, Key: identity.LabelNamespace, Op: Exists}
)

func inNamespace(ns string) Requirement {
	return Requirement{Source: identity.SourceK8s, Key: identity.LabelNamespace, Op: In, Values: []string{ns}}
}

func reserved(name string, op Operator) Requirement {
	return Requirement{Source: identity.SourceReserved, Key: name, Op: op}
}

// entitySelector returns the selector an entity name stands for.
func entitySelector(entity string) *Selector {
	switch entity {
	case api.EntityAll:
		return newSelector()
	case api.EntityCluster:
		return newSelector(reserved("world", DoesNotExist))
	default: // world, world-ipv4, world-ipv6, host, remote-node, kube-apiserver, ...
		return newSelector(reserved(entity, Exists))
	}
}

// mentions reports whether any requirement names key (of any source) or a
// key of the given source.
func mentions(reqs []Requirement, key, source string) bool {
	for _, r := range reqs {
		if (key != "" && r.Key == key) || (source != "" && r.Source == source) {
			return true
		}
	}
	return false
}
