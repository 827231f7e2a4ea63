package proxy

import (
	"net/http"
	"slices"
	"strings"
)

// RBAC indexing. A permission is a pure predicate of the request, so a
// list of permissions that is OR'd (a policy's permissions, or_rules) may
// skip every permission that cannot match, and the policies of a filter,
// evaluated in name order for the first match, may skip those that cannot
// match. What cannot match is told by a pathCond: conditions every
// matching request meets, derived when compiling (url_path literals,
// the literal prefix and suffix of a url_path regex, an exact :method).
// Skipping is only ever done on a necessary condition, so verdicts and the
// policy reported are those of the linear walk.

// pathCond holds necessary conditions of a permission: the request's
// url path (requestPath) starts with one of prefixes (nil: no such
// condition), ends with suffix, and its method is method ("": any).
type pathCond struct {
	prefixes []string
	suffix   string
	method   string
}

// urlPathCond is the condition of a url_path permission matching sm.
func urlPathCond(sm *stringMatcher) pathCond {
	if sm.ignoreCase {
		return pathCond{}
	}
	var c pathCond
	switch sm.kind {
	case smExact:
		c.suffix = sm.value
		if sm.value != "" {
			c.prefixes = []string{sm.value}
		}
	case smPrefix:
		if sm.value != "" {
			c.prefixes = []string{sm.value}
		}
	case smSuffix:
		c.suffix = sm.value
	case smRegex:
		if sm.value != "" {
			c.prefixes = []string{sm.value}
		}
		c.suffix = sm.suffix
	}
	return c
}

// methodCond is the condition of a header permission: an exact,
// case-sensitive, non-inverted :method match requires that method.
func methodCond(hm *headerMatcher) pathCond {
	if hm.name != ":method" || hm.present != nil || hm.invert || hm.str == nil || hm.str.kind != smExact || hm.str.ignoreCase {
		return pathCond{}
	}
	return pathCond{method: hm.str.value}
}

// andCond: every child's conditions are necessary; keep the most
// selective of each kind.
func andCond(cs []pathCond) pathCond {
	var out pathCond
	for _, c := range cs {
		if c.prefixes != nil && (out.prefixes == nil || minLen(c.prefixes) > minLen(out.prefixes)) {
			out.prefixes = c.prefixes
		}
		if len(c.suffix) > len(out.suffix) {
			out.suffix = c.suffix
		}
		if out.method == "" {
			out.method = c.method
		}
	}
	return out
}

// orCond: what every child requires (prefixes: the union, when each
// child has some).
func orCond(cs []pathCond) pathCond {
	if len(cs) == 0 {
		return pathCond{}
	}
	out := pathCond{suffix: cs[0].suffix, method: cs[0].method}
	all := true
	n := 0
	for _, c := range cs {
		if c.prefixes == nil {
			all = false
		}
		n += len(c.prefixes)
		out.suffix = commonSuffix(out.suffix, c.suffix)
		if c.method != out.method {
			out.method = ""
		}
	}
	if all {
		ps := make([]string, 0, n)
		for _, c := range cs {
			ps = append(ps, c.prefixes...)
		}
		slices.Sort(ps)
		out.prefixes = slices.Compact(ps)
	}
	return out
}

func minLen(ss []string) int {
	m := -1
	for _, s := range ss {
		if m < 0 || len(s) < m {
			m = len(s)
		}
	}
	return m
}

func commonSuffix(a, b string) string {
	n := 0
	for n < len(a) && n < len(b) && a[len(a)-1-n] == b[len(b)-1-n] {
		n++
	}
	return a[len(a)-n:]
}

// rbacIndexing enables the index (tests compare with the linear walk).
var rbacIndexing = true

// indexMin is the smallest list worth indexing.
const indexMin = 8

// maxIndexLists bounds the candidate lists merged per request (the
// unconstrained items and one per distinct prefix length); beyond it the
// walk is linear.
const maxIndexLists = 16

// pathIndex indexes items (permissions or policies) by their conditions:
// by literal prefix, then, in a large bucket, by literal suffix.
type pathIndex struct {
	items    []ixItem
	free     bucket             // items without a prefix condition
	lens     []int              // distinct prefix lengths, ascending
	byPrefix map[string]*bucket // prefix → items requiring it
}

type ixItem struct{ suffix, method string }

// bucket holds items in order; when large, also by their suffix (all
// nil: walk all).
type bucket struct {
	all      []int32
	noSuffix []int32            // items without a suffix condition
	sLens    []int              // distinct suffix lengths, ascending
	bySuffix map[string][]int32 // suffix → items requiring it
}

// maxSuffixLens bounds the lookups of a bucket by suffix.
const maxSuffixLens = 8

// newPathIndex returns an index of items with conditions cs, or nil when
// it would not save anything.
func newPathIndex(cs []pathCond) *pathIndex {
	if len(cs) < indexMin || !rbacIndexing {
		return nil
	}
	ix := &pathIndex{items: make([]ixItem, len(cs)), byPrefix: map[string]*bucket{}}
	for i, c := range cs {
		ix.items[i] = ixItem{suffix: c.suffix, method: c.method}
		if c.prefixes == nil {
			ix.free.all = append(ix.free.all, int32(i))
			continue
		}
		for _, p := range c.prefixes {
			b := ix.byPrefix[p]
			if b == nil {
				b = &bucket{}
				ix.byPrefix[p] = b
				if !slices.Contains(ix.lens, len(p)) {
					ix.lens = append(ix.lens, len(p))
				}
			}
			if n := len(b.all); n > 0 && b.all[n-1] == int32(i) {
				continue
			}
			b.all = append(b.all, int32(i))
		}
	}
	slices.Sort(ix.lens)
	if len(ix.byPrefix) == 0 || len(ix.lens) > maxIndexLists/2 {
		// Nothing to look up, or too many lists to merge.
		ix.byPrefix, ix.lens = nil, nil
		ix.free = bucket{}
		for i := range cs {
			ix.free.all = append(ix.free.all, int32(i))
		}
	}
	ix.free.indexSuffixes(ix.items)
	for _, b := range ix.byPrefix {
		b.indexSuffixes(ix.items)
	}
	return ix
}

// indexSuffixes indexes a large bucket's items by their suffix.
func (b *bucket) indexSuffixes(items []ixItem) {
	if len(b.all) < indexMin {
		return
	}
	var noSuffix []int32
	var lens []int
	by := map[string][]int32{}
	for _, i := range b.all {
		sfx := items[i].suffix
		if sfx == "" {
			noSuffix = append(noSuffix, i)
			continue
		}
		if _, ok := by[sfx]; !ok && !slices.Contains(lens, len(sfx)) {
			lens = append(lens, len(sfx))
		}
		by[sfx] = append(by[sfx], i)
	}
	if len(by) == 0 || len(lens) > maxSuffixLens {
		return
	}
	slices.Sort(lens)
	b.noSuffix, b.sLens, b.bySuffix = noSuffix, lens, by
}

// add appends to lists[k:] the lists of b's items that may match path;
// false when they do not fit.
func (b *bucket) add(path string, lists *[maxIndexLists][]int32, k *int) bool {
	push := func(l []int32) bool {
		if len(l) == 0 {
			return true
		}
		if *k == maxIndexLists {
			return false
		}
		lists[*k] = l
		*k++
		return true
	}
	if b.bySuffix == nil {
		return push(b.all)
	}
	if !push(b.noSuffix) {
		return false
	}
	for _, l := range b.sLens {
		if l > len(path) {
			break
		}
		if c, ok := b.bySuffix[path[len(path)-l:]]; ok && !push(c) {
			return false
		}
	}
	return true
}

// quick reports whether item i may match the request (method, path).
func (ix *pathIndex) quick(i int32, method, path string) bool {
	it := &ix.items[i]
	return (it.method == "" || it.method == method) && strings.HasSuffix(path, it.suffix)
}

// candidates fills lists with the sorted lists of the items that may
// match path: the unconstrained ones and those of each prefix path has.
// ok is false when there are too many lists: every item may match.
func (ix *pathIndex) candidates(path string, lists *[maxIndexLists][]int32) (k int, ok bool) {
	if !ix.free.add(path, lists, &k) {
		return 0, false
	}
	for _, l := range ix.lens {
		if l > len(path) {
			break
		}
		if b, found := ix.byPrefix[path[:l]]; found && !b.add(path, lists, &k) {
			return 0, false
		}
	}
	return k, true
}

// anySet is an OR'd list of permissions (or principals).
type anySet struct {
	ms []permission
	ix *pathIndex
}

func newAnySet(ms []permission, cs []pathCond) anySet {
	return anySet{ms: ms, ix: newPathIndex(cs)}
}

func (s *anySet) match(r *http.Request, a *requestAttrs) bool {
	if s.ix == nil || r == nil {
		return anyMatch(s.ms, r, a)
	}
	path := a.urlPath(r)
	var lists [maxIndexLists][]int32
	k, ok := s.ix.candidates(path, &lists)
	if !ok {
		for i, m := range s.ms {
			if s.ix.quick(int32(i), r.Method, path) && m(r, a) {
				return true
			}
		}
		return false
	}
	// The order of an OR of pure predicates does not matter; an item
	// listed twice (two of its prefixes) is only evaluated again.
	for _, l := range lists[:k] {
		for _, i := range l {
			if s.ix.quick(i, r.Method, path) && s.ms[i](r, a) {
				return true
			}
		}
	}
	return false
}

// firstPolicy returns the index of the first policy (in order) whose
// permissions and principals match, -1 if none, using f.ix.
func (f *rbacFilter) firstPolicy(r *http.Request, a *requestAttrs) int {
	ix := f.ix
	path := a.urlPath(r)
	var lists [maxIndexLists][]int32
	k, ok := ix.candidates(path, &lists)
	if !ok {
		for i := range f.policies {
			p := &f.policies[i]
			if ix.quick(int32(i), r.Method, path) && p.permissions.match(r, a) && p.principals.match(r, a) {
				return i
			}
		}
		return -1
	}
	last := int32(-1)
	for {
		best := -1
		for j := range k {
			if len(lists[j]) > 0 && (best < 0 || lists[j][0] < lists[best][0]) {
				best = j
			}
		}
		if best < 0 {
			return -1
		}
		i := lists[best][0]
		lists[best] = lists[best][1:]
		if i == last {
			continue
		}
		last = i
		if !ix.quick(i, r.Method, path) {
			continue
		}
		p := &f.policies[i]
		if p.permissions.match(r, a) && p.principals.match(r, a) {
			return int(i)
		}
	}
}
