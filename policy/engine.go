package policy

import (
	"context"
	"fmt"
	"net/netip"
	"sort"
	"strings"
	"sync"

	"github.com/nodemesh/nodemesh/api"
	"github.com/nodemesh/nodemesh/identity"
)

// Engine compiles policies against endpoints into tables and keeps them
// current as pods, namespaces and policies change, recompiling only what a
// change affects:
//
//   - Endpoints with the same identity and the same named ports share one
//     table (a "class"); a new pod of an existing class compiles nothing.
//   - A selector cache holds, for every distinct selector, the identities it
//     selects. A new or vanished identity is matched once against each
//     selector; only the classes selected by blocks that use a selector it
//     changed are recompiled.
//   - A policy change recompiles the classes its old and new subjects select
//     (and, when it adds or drops a prefix, the classes with CIDR rules).
//
// Changes mark classes dirty; tables are recompiled when read (Table, Check)
// or when Flush is called. Engine is safe for concurrent use.
type Engine struct {
	mu       sync.Mutex
	alloc    identity.Allocator
	world    *World
	pods     map[string]*podState
	ids      map[identity.NumericIdentity]*idState
	policies map[string]*Policy
	order    []string // sorted keys of policies; nil after a change
	sels     map[string]*selState
	prefixes *prefixRegistry
	classes  map[classKey]*classState
	dirty    map[classKey]bool
	stats    Stats
}

// Stats counts the engine's work.
type Stats struct {
	TablesCompiled int // tables compiled since the engine was made
	Classes        int // distinct tables now (endpoints sharing identity and named ports share one)
	Identities     int // identities with pods
	Selectors      int // distinct selectors in the cache
}

type podState struct {
	ep    *Endpoint
	id    identity.NumericIdentity
	class classKey
}

type idState struct {
	labels     identity.Labels
	pods       map[string]*podState
	portRefs   map[NamedPort]int // how many pods declare each named port
	namedPorts []NamedPort       // the keys of portRefs, sorted
}

type selState struct {
	sel       *Selector
	ids       map[identity.NumericIdentity]bool
	subjectOf map[*Block]int
	peerOf    map[*Block]int
}

type classKey struct {
	id    identity.NumericIdentity
	ports string // the endpoint's named ports, for ingress named-port rules
}

type classState struct {
	key   classKey
	pods  map[string]*podState
	table *Table
	uses  tableUses
}

// NewEngine returns an empty engine allocating identities from alloc.
func NewEngine(alloc identity.Allocator) *Engine {
	e := &Engine{
		alloc:    alloc,
		world:    newWorld(),
		pods:     map[string]*podState{},
		ids:      map[identity.NumericIdentity]*idState{},
		policies: map[string]*Policy{},
		sels:     map[string]*selState{},
		prefixes: newPrefixRegistry(),
		classes:  map[classKey]*classState{},
		dirty:    map[classKey]bool{},
	}
	for _, id := range identity.Reserved() {
		e.ids[id] = &idState{labels: identity.ReservedLabels(id)}
	}
	return e
}

// NewEngineFromWorld builds an engine holding a whole world and its policies.
func NewEngineFromWorld(w *api.World, policies []*Policy) (*Engine, error) {
	e := NewEngine(identity.NewMemoryAllocator())
	for i := range w.Namespaces {
		e.world.namespaces[w.Namespaces[i].Metadata.Name] = w.Namespaces[i].Metadata.Labels
	}
	for i := range w.Nodes {
		e.world.setNode(&w.Nodes[i])
	}
	e.world.setAPIServer(w.APIServerIPs)
	for _, p := range policies {
		e.UpsertPolicy(p)
	}
	for i := range w.Pods {
		if err := e.UpsertPod(&w.Pods[i]); err != nil {
			return nil, err
		}
	}
	e.Flush()
	return e, nil
}

// Stats returns the engine's counters.
func (e *Engine) Stats() Stats {
	e.mu.Lock()
	defer e.mu.Unlock()
	s := e.stats
	s.Classes, s.Selectors = len(e.classes), len(e.sels)
	for _, st := range e.ids {
		if len(st.pods) > 0 {
			s.Identities++
		}
	}
	return s
}

// ---- selector cache ----

func (e *Engine) selector(s *Selector) *selState {
	st, ok := e.sels[s.Key()]
	if !ok {
		st = &selState{sel: s, ids: map[identity.NumericIdentity]bool{}, subjectOf: map[*Block]int{}, peerOf: map[*Block]int{}}
		for id, is := range e.ids {
			if s.Matches(is.labels) {
				st.ids[id] = true
			}
		}
		e.sels[s.Key()] = st
	}
	return st
}

func (e *Engine) dropSelector(st *selState) {
	if len(st.subjectOf) == 0 && len(st.peerOf) == 0 {
		delete(e.sels, st.sel.Key())
	}
}

// markSubjects marks dirty the classes a block selects.
func (e *Engine) markSubjects(b *Block) {
	for id := range e.sels[b.Subject.Key()].ids {
		for _, ps := range e.ids[id].pods {
			e.dirty[ps.class] = true
		}
	}
}

func (e *Engine) markUses(pred func(tableUses) bool) {
	for k, c := range e.classes {
		if pred(c.uses) {
			e.dirty[k] = true
		}
	}
}

// ---- policies ----

// UpsertPolicy adds a policy or replaces the one with the same Ref.
func (e *Engine) UpsertPolicy(p *Policy) {
	e.mu.Lock()
	defer e.mu.Unlock()
	prefixesChanged := false
	if old, ok := e.policies[p.Ref]; ok {
		prefixesChanged = e.unregister(old)
	}
	prefixesChanged = e.register(p) || prefixesChanged
	e.policies[p.Ref] = p
	e.order = nil
	if prefixesChanged {
		e.markUses(func(u tableUses) bool { return u.cidr })
	}
}

// DeletePolicy removes a policy; it reports whether there was one.
func (e *Engine) DeletePolicy(ref string) bool {
	e.mu.Lock()
	defer e.mu.Unlock()
	old, ok := e.policies[ref]
	if !ok {
		return false
	}
	if e.unregister(old) {
		e.markUses(func(u tableUses) bool { return u.cidr })
	}
	delete(e.policies, ref)
	e.order = nil
	return true
}

// Policies lists the refs of the policies the engine holds, sorted.
func (e *Engine) Policies() []string {
	e.mu.Lock()
	defer e.mu.Unlock()
	out := make([]string, 0, len(e.policies))
	for r := range e.policies {
		out = append(out, r)
	}
	sort.Strings(out)
	return out
}

func forEachPeerRule(b *Block, f func(*PeerRule)) {
	for _, r := range b.Deny {
		f(r)
	}
	for _, r := range b.Allow {
		f(r)
	}
}

// register adds a policy's selectors and prefixes to the caches and marks
// its subjects; it reports whether the prefix set changed.
func (e *Engine) register(p *Policy) bool {
	changed := false
	for _, b := range p.Blocks {
		e.selector(b.Subject).subjectOf[b]++
		forEachPeerRule(b, func(r *PeerRule) {
			if r.Peers == nil {
				return
			}
			for _, s := range r.Peers.Selectors {
				e.selector(s).peerOf[b]++
			}
			for _, c := range r.Peers.CIDRs {
				changed = e.prefixes.add(c.Prefix) || changed
				for _, x := range c.Except {
					changed = e.prefixes.add(x) || changed
				}
			}
		})
		e.markSubjects(b)
	}
	return changed
}

func (e *Engine) unregister(p *Policy) bool {
	changed := false
	for _, b := range p.Blocks {
		e.markSubjects(b)
		st := e.sels[b.Subject.Key()]
		if st.subjectOf[b]--; st.subjectOf[b] == 0 {
			delete(st.subjectOf, b)
		}
		e.dropSelector(st)
		forEachPeerRule(b, func(r *PeerRule) {
			if r.Peers == nil {
				return
			}
			for _, s := range r.Peers.Selectors {
				st := e.sels[s.Key()]
				if st.peerOf[b]--; st.peerOf[b] == 0 {
					delete(st.peerOf, b)
				}
				e.dropSelector(st)
			}
			for _, c := range r.Peers.CIDRs {
				changed = e.prefixes.remove(c.Prefix) || changed
				for _, x := range c.Except {
					changed = e.prefixes.remove(x) || changed
				}
			}
		})
	}
	return changed
}

// ---- world ----

// UpsertNamespace sets a namespace's labels; its pods' identities follow.
func (e *Engine) UpsertNamespace(ns *api.Namespace) error {
	e.mu.Lock()
	defer e.mu.Unlock()
	e.world.namespaces[ns.Metadata.Name] = ns.Metadata.Labels
	for _, ps := range e.pods {
		if ps.ep.Namespace != ns.Metadata.Name {
			continue
		}
		ep := *ps.ep
		ep.Labels = identity.ForPod(ep.PodLabels, ep.Namespace, ns.Metadata.Labels, ep.ServiceAccount)
		if err := e.setEndpoint(&ep); err != nil {
			return err
		}
	}
	return nil
}

// UpsertNode sets a node's addresses.
func (e *Engine) UpsertNode(n *api.Node) {
	e.mu.Lock()
	defer e.mu.Unlock()
	e.world.setNode(n) // tables name nodes by relative identity: no recompile
}

// SetAPIServerIPs sets the kube-apiserver's addresses.
func (e *Engine) SetAPIServerIPs(ips []string) {
	e.mu.Lock()
	defer e.mu.Unlock()
	e.world.setAPIServer(ips) // a relative identity, like nodes: no recompile
}

// DeleteNode forgets a node's addresses.
func (e *Engine) DeleteNode(name string) {
	e.mu.Lock()
	defer e.mu.Unlock()
	e.world.removeNode(name)
}

// UpsertPod adds or updates a pod. Host-network pods are their node, not
// endpoints: upserting one removes any endpoint of that name.
func (e *Engine) UpsertPod(p *api.Pod) error {
	e.mu.Lock()
	defer e.mu.Unlock()
	if p.Spec.HostNetwork {
		return e.deletePod(p.Metadata.Namespace + "/" + p.Metadata.Name)
	}
	ep := EndpointFromPod(p, e.world.namespaces[p.Metadata.Namespace])
	return e.setEndpoint(ep)
}

// DeletePod removes the pod "ns/name".
func (e *Engine) DeletePod(key string) error {
	e.mu.Lock()
	defer e.mu.Unlock()
	return e.deletePod(key)
}

func portsKey(nps []NamedPort) string {
	if len(nps) == 0 {
		return ""
	}
	parts := make([]string, len(nps))
	for i, np := range nps {
		parts[i] = fmt.Sprintf("%s/%d/%d", np.Name, np.Proto, np.Port)
	}
	sort.Strings(parts)
	return strings.Join(parts, ",")
}

func (e *Engine) setEndpoint(ep *Endpoint) error {
	key := ep.Key()
	old := e.pods[key]
	sameID := old != nil && old.ep.Labels.String() == ep.Labels.String()
	var id identity.NumericIdentity
	if sameID {
		id = old.id
		e.leaveClass(old)
		e.countNamedPorts(id, old.ep.NamedPorts, -1)
	} else {
		var err error
		if id, err = e.alloc.Allocate(context.Background(), ep.Labels); err != nil {
			return fmt.Errorf("pod %s: %w", key, err)
		}
		if old != nil {
			e.removePodState(old)
		}
	}
	ps := &podState{ep: ep, id: id, class: classKey{id: id, ports: portsKey(ep.NamedPorts)}}
	is, ok := e.ids[id]
	if !ok {
		is = &idState{labels: ep.Labels, pods: map[string]*podState{}, portRefs: map[NamedPort]int{}}
		e.ids[id] = is
		e.identityChanged(id, true)
	}
	is.pods[key] = ps
	e.countNamedPorts(id, ep.NamedPorts, +1)
	c, ok := e.classes[ps.class]
	if !ok {
		c = &classState{key: ps.class, pods: map[string]*podState{}}
		e.classes[ps.class] = c
		e.dirty[ps.class] = true
	}
	c.pods[key] = ps
	e.pods[key] = ps
	e.world.setEndpoint(ep)
	return nil
}

func (e *Engine) deletePod(key string) error {
	old, ok := e.pods[key]
	if !ok {
		return nil
	}
	e.removePodState(old)
	delete(e.pods, key)
	e.world.removeEndpoint(key)
	return nil
}

// leaveClass takes a pod out of its class, dropping the class when empty.
func (e *Engine) leaveClass(ps *podState) {
	if c := e.classes[ps.class]; c != nil {
		delete(c.pods, ps.ep.Key())
		if len(c.pods) == 0 {
			delete(e.classes, ps.class)
			delete(e.dirty, ps.class)
		}
	}
}

// removePodState takes a pod out of its class and identity and drops its
// reference on the identity.
func (e *Engine) removePodState(ps *podState) {
	key := ps.ep.Key()
	e.leaveClass(ps)
	is := e.ids[ps.id]
	delete(is.pods, key)
	if len(is.pods) == 0 {
		e.identityChanged(ps.id, false)
		delete(e.ids, ps.id)
	} else {
		e.countNamedPorts(ps.id, ps.ep.NamedPorts, -1)
	}
	_ = e.alloc.Release(context.Background(), ps.id) // only fails for an identity never allocated
}

// identityChanged updates the selector cache for an identity that appeared
// or vanished and marks the classes whose peers it changes.
func (e *Engine) identityChanged(id identity.NumericIdentity, added bool) {
	labels := e.ids[id].labels
	for _, st := range e.sels {
		if !st.sel.Matches(labels) {
			continue
		}
		if added {
			st.ids[id] = true
		} else {
			delete(st.ids, id)
		}
		for b := range st.peerOf {
			e.markSubjects(b)
		}
	}
	if !added {
		e.markUses(func(u tableUses) bool { return u.egressNamedPort })
	}
}

// countNamedPorts adds (delta +1) or removes (-1) a pod's named ports from
// its identity's; when the identity's set changes, the tables with egress
// named-port rules are marked.
func (e *Engine) countNamedPorts(id identity.NumericIdentity, nps []NamedPort, delta int) {
	is := e.ids[id]
	changed := false
	for _, np := range nps {
		before := is.portRefs[np]
		is.portRefs[np] = before + delta
		if is.portRefs[np] <= 0 {
			delete(is.portRefs, np)
		}
		changed = changed || (before == 0) != (is.portRefs[np] == 0)
	}
	if !changed {
		return
	}
	is.namedPorts = is.namedPorts[:0]
	for np := range is.portRefs {
		is.namedPorts = append(is.namedPorts, np)
	}
	sort.Slice(is.namedPorts, func(i, j int) bool {
		a, b := is.namedPorts[i], is.namedPorts[j]
		if a.Name != b.Name {
			return a.Name < b.Name
		}
		if a.Proto != b.Proto {
			return a.Proto < b.Proto
		}
		return a.Port < b.Port
	})
	e.markUses(func(u tableUses) bool { return u.egressNamedPort })
}

// ---- compiling ----

// compileEnv implementation.
func (e *Engine) selected(s *Selector) []identity.NumericIdentity {
	st := e.sels[s.Key()]
	out := make([]identity.NumericIdentity, 0, len(st.ids))
	for id := range st.ids {
		out = append(out, id)
	}
	sort.Slice(out, func(i, j int) bool { return out[i] < out[j] })
	return out
}

func (e *Engine) namedPorts(id identity.NumericIdentity) []NamedPort {
	if is, ok := e.ids[id]; ok {
		return is.namedPorts
	}
	return nil
}

func (e *Engine) podIdentities() []identity.NumericIdentity {
	var out []identity.NumericIdentity
	for id, is := range e.ids {
		if len(is.pods) > 0 {
			out = append(out, id)
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i] < out[j] })
	return out
}

func (e *Engine) prefixesIn(c CIDRSelector) []uint32 { return e.prefixes.selectedBy(c) }

// blocksSelecting lists, per direction, the blocks selecting an identity,
// in policy order.
func (e *Engine) blocksSelecting(id identity.NumericIdentity) [2][]*Block {
	var out [2][]*Block
	if e.order == nil {
		e.order = make([]string, 0, len(e.policies))
		for r := range e.policies {
			e.order = append(e.order, r)
		}
		sort.Strings(e.order)
	}
	for _, r := range e.order {
		for _, b := range e.policies[r].Blocks {
			if e.sels[b.Subject.Key()].ids[id] {
				out[b.Dir] = append(out[b.Dir], b)
			}
		}
	}
	return out
}

// Flush recompiles every dirty table and returns the endpoints ("ns/pod")
// whose table was recompiled, sorted.
func (e *Engine) Flush() []string {
	e.mu.Lock()
	defer e.mu.Unlock()
	return e.flush()
}

func (e *Engine) flush() []string {
	var changed []string
	for k := range e.dirty {
		c, ok := e.classes[k]
		if !ok {
			continue
		}
		var member *podState
		for _, ps := range c.pods {
			member = ps
			changed = append(changed, ps.ep.Key())
		}
		c.table, c.uses = compileTable(member.ep, e.blocksSelecting(k.id), e)
		e.stats.TablesCompiled++
	}
	clear(e.dirty)
	sort.Strings(changed)
	return changed
}

// Table returns the compiled table of the pod "ns/name" and its identity.
func (e *Engine) Table(key string) (*Table, identity.NumericIdentity, bool) {
	e.mu.Lock()
	defer e.mu.Unlock()
	e.flush()
	ps, ok := e.pods[key]
	if !ok {
		return nil, 0, false
	}
	return e.classes[ps.class].table, ps.id, true
}

// Identity returns the identity of the pod "ns/name".
func (e *Engine) Identity(key string) (identity.NumericIdentity, identity.Labels, bool) {
	e.mu.Lock()
	defer e.mu.Unlock()
	ps, ok := e.pods[key]
	if !ok {
		return 0, nil, false
	}
	return ps.id, ps.ep.Labels, true
}

// ---- answering ----

// Check answers whether a flow is allowed and why, from the compiled tables:
// the same lookups the datapath makes.
func (e *Engine) Check(f Flow) (Result, error) {
	e.mu.Lock()
	defer e.mu.Unlock()
	if len(e.dirty) > 0 {
		e.flush()
	}
	src, err := e.world.ResolvePeer(f.From)
	if err != nil {
		return Result{}, err
	}
	dst, err := e.world.ResolvePeer(f.To)
	if err != nil {
		return Result{}, err
	}
	port, err := resolvePort(f, dst)
	if err != nil {
		return Result{}, err
	}
	eg := e.direction(src, dst, Egress, f.Proto, port).result(f.HTTP)
	in := e.direction(dst, src, Ingress, f.Proto, port).result(f.HTTP)
	return combine(src, dst, f, port, eg, in), nil
}

func (e *Engine) direction(local, remote Peer, d Direction, proto Proto, port uint16) decision {
	if local.Endpoint == nil {
		return decision{reason: ReasonOutside}
	}
	if remote.Endpoint == local.Endpoint {
		return decision{reason: ReasonSelf}
	}
	ps := e.pods[local.Endpoint.Key()]
	t := e.classes[ps.class].table.dir(d)
	keys, remoteID := e.remoteKeys(local.Endpoint, remote)
	return t.Decide(d, keys, remoteID, proto, port)
}

// remoteKeys resolves the remote side of a flow to the table keys to look
// up, as the datapath does from its ipcache and prefix map.
func (e *Engine) remoteKeys(local *Endpoint, remote Peer) ([]PeerKey, identity.NumericIdentity) {
	var id identity.NumericIdentity
	if remote.Endpoint != nil {
		id = e.pods[remote.Endpoint.Key()].id
	} else {
		id = remote.reservedIdentity(local.Node)
	}
	keys := make([]PeerKey, 0, 4)
	keys = append(keys, PeerKey{PeerIdentity, uint32(id)}, PeerKey{PeerIdentity, 0})
	if remote.Addr.IsValid() {
		if pid, ok := e.prefixes.lookup(remote.Addr); ok {
			keys = append(keys, PeerKey{PeerCIDR, pid})
			if remote.outsideCluster() {
				keys = append(keys, PeerKey{PeerWorldCIDR, pid})
			}
		}
	}
	return keys, id
}

// IPCacheEntry maps an address prefix to what the datapath needs to know
// about a remote address in it: its identity (as seen from one node) and
// the ID of the longest policy prefix containing it (0: none).
type IPCacheEntry struct {
	Prefix   netip.Prefix
	Identity identity.NumericIdentity
	PrefixID uint32
	// RemotePod: a pod address on another node than IPCache's localNode
	// (a peer the node proxies may talk mTLS with).
	RemotePod bool
	// MTLSPeer: a RemotePod whose node proxy accepts mTLS for it (its
	// mTLS mode is not disabled), so that a source proxy may originate
	// mTLS to it. The engine does not know modes: the agent sets it.
	MTLSPeer bool
	// NoTunnel: a RemotePod whose node has no WireGuard peer while
	// encryption between nodes is on: the datapath drops traffic to it
	// (encryption-unavailable). The agent sets it.
	NoTunnel bool
}

// IPCache returns, for the node named localNode, every address the
// datapath must resolve: pods (their identity), nodes (host or remote-node),
// the API server, and every registered policy prefix (identity world). A
// longest-prefix lookup of an address in these entries, defaulting to world
// with no prefix ID, gives exactly the keys Check looks up; the datapath
// makes that lookup in one LPM map.
func (e *Engine) IPCache(localNode string) []IPCacheEntry {
	e.mu.Lock()
	defer e.mu.Unlock()
	var out []IPCacheEntry
	host := func(a netip.Addr, id identity.NumericIdentity) {
		pid, _ := e.prefixes.lookup(a)
		out = append(out, IPCacheEntry{Prefix: netip.PrefixFrom(a, a.BitLen()), Identity: id, PrefixID: pid})
	}
	for _, ps := range e.pods {
		for _, a := range ps.ep.Addrs {
			host(a, ps.id)
			out[len(out)-1].RemotePod = ps.ep.Node != localNode
		}
	}
	seen := map[netip.Addr]bool{}
	for a := range e.world.nodeAddrs {
		seen[a] = true
		host(a, e.world.PeerForAddr(a).reservedIdentity(localNode))
	}
	for a := range e.world.apiServer {
		if !seen[a] {
			host(a, identity.KubeAPIServer)
		}
	}
	exact := map[netip.Prefix]bool{}
	for _, en := range out {
		exact[en.Prefix] = true
	}
	for p, id := range e.prefixes.ids {
		if exact[p] {
			continue // a pod or node address that is also a policy prefix
		}
		w := identity.WorldIPv4
		if p.Addr().Is6() {
			w = identity.WorldIPv6
		}
		out = append(out, IPCacheEntry{Prefix: p, Identity: w, PrefixID: id})
	}
	sort.Slice(out, func(i, j int) bool {
		if c := out[i].Prefix.Addr().Compare(out[j].Prefix.Addr()); c != 0 {
			return c < 0
		}
		return out[i].Prefix.Bits() < out[j].Prefix.Bits()
	})
	return out
}

// Endpoints lists the pods the engine holds, sorted by namespace/name.
func (e *Engine) Endpoints() []*Endpoint {
	e.mu.Lock()
	defer e.mu.Unlock()
	return append([]*Endpoint(nil), e.world.Endpoints()...)
}

// Resolve says how a node sees an address: its identity and the ID of its
// longest policy prefix (0: none) — the lookups Check makes, for tests of
// datapaths that make them from IPCache.
func (e *Engine) Resolve(localNode string, a netip.Addr) (identity.NumericIdentity, uint32) {
	e.mu.Lock()
	defer e.mu.Unlock()
	keys, id := e.remoteKeys(&Endpoint{Node: localNode}, e.world.PeerForAddr(a.Unmap()))
	for _, k := range keys {
		if k.Kind == PeerCIDR {
			return id, k.ID
		}
	}
	return id, 0
}
