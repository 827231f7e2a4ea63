package agent

import (
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"net/netip"
	"path/filepath"
	"sort"
	"sync"
	"time"

	"github.com/nodemesh/nodemesh/api"
	"github.com/nodemesh/nodemesh/bpf"
	"github.com/nodemesh/nodemesh/certs"
	"github.com/nodemesh/nodemesh/identity"
	"github.com/nodemesh/nodemesh/policy"
	"github.com/nodemesh/nodemesh/xds"
)

// Agent enforces policy for the pods of one node.
type Agent struct {
	cfg     Config
	version string
	log     *slog.Logger
	dp      Datapath
	links   Links
	src     Source
	events  *eventRing
	metrics *metrics
	xds     *xds.Server
	// idSource serves the node's workload SVIDs and the trust bundle to
	// the proxy (SDS): the built-in CA's manager (idManager, which also
	// has per-identity status) or SPIRE's Workload API. Both nil while
	// mTLS is disabled.
	idSource  certs.Source
	idManager *certs.Manager
	idRunner  IdentitySource

	mu       sync.Mutex // guards everything below
	engine   *policy.Engine
	applied  applied
	local    map[string]*localEndpoint       // "ns/pod" → endpoint of this node
	byAddr   map[netip.Addr]*policy.Endpoint // every pod by address, to name flow events
	ids      map[netip.Addr]uint32           // endpoint IDs by address, kept across restarts
	attached map[string]error                // interface → attach result
	status   Status
	// proxy is what redirect entries are programmed with: the proxy's
	// ports once it has ACKed the configuration of the tables in force,
	// zero (fail closed) before.
	proxy bpf.ProxyPorts
	// redirectErr is why the node could not be set up for the redirect.
	redirectErr error
	// idSnap is the identity source's latest snapshot; nsLabels the
	// namespaces' labels, nsModes their mTLS mode labels.
	idSnap        *certs.Snapshot
	nsLabels      map[string]map[string]string
	nsModes       map[string]xds.MTLSMode
	nsProblems    []string
	svidWorkloads string // the workloads last given to idManager
	mtlsPorts     [2]uint16
	// world is the last snapshot's world; tunnel the node's WireGuard
	// device (nil: encryption off), keyStore where nodes publish keys,
	// tun what the device was last given.
	world    *api.World
	tunnel   Tunnel
	keyStore KeyStore
	tun      tunnelState
}

// applied is the state last pushed into the engine, to diff the next
// snapshot against.
type applied struct {
	namespaces map[string]string // name → labels JSON
	pods       map[string]string // ns/name → pod JSON
	policies   map[string]string // ref → document JSON
	nodes      map[string]string
	apiServer  string
}

type localEndpoint struct {
	ep      *policy.Endpoint
	addr    netip.Addr
	id      uint32
	ident   identity.NumericIdentity
	table   *policy.Table
	proxy   bpf.ProxyPorts // as table was programmed
	flags   bpf.EndpointFlags
	mode    xds.MTLSMode
	ifname  string
	ifindex int
	state   string
	err     error
}

// New assembles an agent from its parts.
func New(cfg Config, version string, src Source, dp Datapath, links Links, log *slog.Logger) (*Agent, error) {
	cfg.Defaults()
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	ids, err := dp.Endpoints()
	if err != nil {
		return nil, fmt.Errorf("read endpoints of the previous run: %w", err)
	}
	a := &Agent{
		cfg: cfg, version: version, log: log, dp: dp, links: links, src: src,
		events:   newEventRing(cfg.EventBuffer),
		engine:   policy.NewEngine(identity.NewMemoryAllocator()),
		local:    map[string]*localEndpoint{},
		nsLabels: map[string]map[string]string{},
		ids:      ids,
		attached: map[string]error{},
		applied:  applied{namespaces: map[string]string{}, pods: map[string]string{}, policies: map[string]string{}, nodes: map[string]string{}},
	}
	a.metrics = newMetrics(a)
	a.xds = xds.NewServer(log, a.metrics.reg)
	a.xds.OnL7Event(func(e xds.L7Event) { a.recordEvent(l7Event(e)) })
	a.xds.OnConnEvent(func(e xds.ConnEvent) {
		fe := connEvent(e)
		if fe.Verdict == "dropped" {
			a.log.Warn("node proxy refused a connection", "reason", fe.Reason, "src", e.Source, "dst", e.Destination,
				"peer", e.PeerID, "details", e.Details)
		}
		a.recordEvent(fe)
	})
	a.status = Status{Node: cfg.NodeName, Version: version, Mode: "standalone",
		Source: fmt.Sprintf("world %v, policies %v", cfg.WorldPaths, cfg.PolicyPaths)}
	return a, nil
}

// Run runs the agent until ctx ends. The datapath keeps enforcing after it
// returns.
func (a *Agent) Run(ctx context.Context) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	errc := make(chan error, 8)
	var wg sync.WaitGroup
	run := func(name string, f func() error) {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := f(); err != nil && ctx.Err() == nil {
				errc <- fmt.Errorf("%s: %w", name, err)
			}
		}()
	}
	if err := a.dp.SetupRedirect(); err != nil {
		// L7-covered connections stay dropped (proxy-unavailable); the
		// rest of the policy is enforced.
		a.log.Error("L7 redirect unavailable", "err", err)
		a.mu.Lock()
		a.redirectErr = err
		a.mu.Unlock()
	}
	run("api", func() error { return Serve(ctx, a.cfg.APISocket, a) })
	run("xds", func() error { return a.xds.Serve(ctx, a.cfg.XDSSocket) })
	run("proxy", func() error { a.followProxy(ctx); return nil })
	if len(a.ids) > 0 {
		// A restart: the datapath still redirects to the node proxy. Let
		// it reconnect before the first programming, which otherwise
		// would find no proxy and turn the redirects off until it does.
		a.waitProxyStream(ctx, proxyRestartWait)
	}
	if a.cfg.MetricsAddr != "" {
		run("metrics", func() error { return a.metrics.serve(ctx, a.cfg.MetricsAddr) })
	}
	a.runIdentities(ctx, run)
	if a.tunnel != nil {
		run("tunnel-keys", func() error { a.followKeys(ctx, a.cfg.Resync); return nil })
		if a.cfg.RotateKeyEvery > 0 {
			run("tunnel-rotation", func() error { a.rotateEvery(ctx, a.cfg.RotateKeyEvery); return nil })
		}
	}
	run("links", func() error { return a.links.Watch(ctx, a.attach) })
	run("events", func() error { return a.dp.ReadEvents(ctx, a.recordEvent) })
	run("source", func() error { return a.src.Run(ctx, a.Apply) })
	a.log.Info("agent running", "api", a.cfg.APISocket, "pins", a.cfg.PinDir)
	var err error
	select {
	case <-ctx.Done():
	case err = <-errc:
	}
	cancel()
	wg.Wait()
	return err
}

func (a *Agent) attach(name string) {
	if ok, _ := filepath.Match(a.cfg.InterfaceGlob, name); !ok {
		return
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	a.attachLocked(name)
}

// attachLocked attaches the datapath to an interface unless it already is;
// a.mu is held, so the interface watcher and program never race.
func (a *Agent) attachLocked(name string) {
	if err, done := a.attached[name]; done && err == nil {
		return
	}
	err := a.dp.Attach(name)
	a.attached[name] = err
	if err != nil {
		a.metrics.attachFailures.Inc()
		a.log.Error("attach failed: traffic of this interface is not enforced", "interface", name, "err", err)
		return
	}
	a.log.Debug("attached", "interface", name)
}

func (a *Agent) recordEvent(e FlowEvent) {
	e.Node = a.cfg.NodeName
	a.mu.Lock()
	for _, p := range []*Peer{&e.Src, &e.Dst} {
		if addr, err := netip.ParseAddr(p.IP); err == nil {
			if ep := a.byAddr[addr]; ep != nil {
				p.Namespace, p.Pod = ep.Namespace, ep.Name
			}
		}
	}
	a.mu.Unlock()
	a.events.add(e)
}

func jsonOf(v any) string {
	b, _ := json.Marshal(v)
	return string(b)
}

// Apply brings the engine and the datapath to a snapshot. It is the
// source's update callback.
func (a *Agent) Apply(s Snapshot) {
	start := time.Now()
	a.mu.Lock()
	defer a.mu.Unlock()
	a.status.LastLoad = start
	if s.Err != nil {
		a.status.LastError = s.Err.Error()
		a.metrics.sourceErrors.Inc()
	} else {
		a.status.LastError = ""
	}
	if s.World == nil {
		return
	}
	a.world = s.World
	if err := a.diffIntoEngine(s); err != nil {
		a.log.Error("apply snapshot", "err", err)
		a.status.LastError = err.Error()
		return
	}
	a.program()
	a.status.Generation = s.Generation // only now is this generation enforced
	d := time.Since(start)
	a.status.Reconcile = d
	a.metrics.reconcile.Observe(d.Seconds())
}

// diffIntoEngine feeds what changed since the last snapshot to the engine.
func (a *Agent) diffIntoEngine(s Snapshot) error {
	e := a.engine
	seen := map[string]bool{}
	for i := range s.World.Namespaces {
		ns := &s.World.Namespaces[i]
		j := jsonOf(ns.Metadata.Labels)
		seen[ns.Metadata.Name] = true
		a.nsLabels[ns.Metadata.Name] = ns.Metadata.Labels
		if a.applied.namespaces[ns.Metadata.Name] != j {
			a.applied.namespaces[ns.Metadata.Name] = j
			if err := e.UpsertNamespace(ns); err != nil {
				return err
			}
		}
	}
	for name := range a.applied.namespaces {
		if !seen[name] {
			delete(a.applied.namespaces, name)
			delete(a.nsLabels, name)
			if err := e.UpsertNamespace(&api.Namespace{Metadata: api.ObjectMeta{Name: name}}); err != nil {
				return err
			}
		}
	}
	clear(seen)
	for i := range s.World.Nodes {
		n := &s.World.Nodes[i]
		seen[n.Metadata.Name] = true
		if j := jsonOf(n); a.applied.nodes[n.Metadata.Name] != j {
			a.applied.nodes[n.Metadata.Name] = j
			e.UpsertNode(n)
		}
	}
	for name := range a.applied.nodes {
		if !seen[name] {
			delete(a.applied.nodes, name)
			e.DeleteNode(name)
		}
	}
	if j := jsonOf(s.World.APIServerIPs); j != a.applied.apiServer {
		a.applied.apiServer = j
		e.SetAPIServerIPs(s.World.APIServerIPs)
	}
	clear(seen)
	for i := range s.World.Pods {
		p := &s.World.Pods[i]
		key := p.Metadata.Namespace + "/" + p.Metadata.Name
		seen[key] = true
		if j := jsonOf(p); a.applied.pods[key] != j {
			a.applied.pods[key] = j
			if err := e.UpsertPod(p); err != nil {
				return err
			}
		}
	}
	for key := range a.applied.pods {
		if !seen[key] {
			delete(a.applied.pods, key)
			if err := e.DeletePod(key); err != nil {
				return err
			}
		}
	}
	clear(seen)
	for i := range s.Policies {
		d := &s.Policies[i]
		ref := d.Ref()
		seen[ref] = true
		j := jsonOf(struct {
			N *api.NetworkPolicy
			M *api.MeshPolicy
		}{d.NetworkPolicy, d.Mesh})
		if a.applied.policies[ref] != j {
			a.applied.policies[ref] = j
			e.UpsertPolicy(policy.FromDocument(d))
		}
	}
	for ref := range a.applied.policies {
		if !seen[ref] {
			delete(a.applied.policies, ref)
			e.DeletePolicy(ref)
		}
	}
	return nil
}

// program pushes the engine's state into the datapath in the order that
// keeps every moment safe (see the package comment).
func (a *Agent) program() {
	a.engine.Flush()
	var problems []string
	fail := func(what string, err error) {
		problems = append(problems, fmt.Sprintf("%s: %v", what, err))
		a.log.Error(what, "err", err)
	}
	// 1. Tables of local endpoints, swapped whole.
	wanted := map[string]*localEndpoint{}
	all := a.engine.Endpoints()
	a.byAddr = make(map[netip.Addr]*policy.Endpoint, len(all))
	for _, ep := range all {
		for _, addr := range ep.Addrs {
			a.byAddr[addr] = ep
		}
	}
	// The node proxy's configuration first: redirect entries send
	// connections to it only once it has ACKed the configuration that
	// serves them, until then they drop (fail closed).
	a.proxy = bpf.ProxyPorts{}
	a.nsModes, a.nsProblems = namespaceModes(a.nsLabels)
	problems = append(problems, a.nsProblems...)
	byKey := make(map[string]*policy.Endpoint, len(all))
	var localEPs []*policy.Endpoint
	for _, ep := range all {
		byKey[ep.Key()] = ep
		if ep.Node == a.cfg.NodeName && len(ep.Addrs) > 0 {
			localEPs = append(localEPs, ep)
		}
	}
	a.requestSVIDs(localEPs)
	in := xds.InputFromEngine(a.engine, a.cfg.NodeName, a.cfg.Proxy)
	ipc := a.engine.IPCache(a.cfg.NodeName)
	a.withMTLS(&in, ipc, byKey)
	if err := a.programTunnel(ipc); err != nil {
		fail("encryption between nodes", err)
	}
	ready := map[string]bool{}
	for _, ep := range in.Endpoints {
		ready[ep.Key] = in.MTLS.Ready(ep)
	}
	acked := false
	if v, err := a.xds.SetNode(a.cfg.NodeName, in); err != nil {
		// The proxy keeps its last configuration, which does not serve
		// these tables: their redirects drop until a change builds.
		fail("proxy configuration", err)
		a.status.ProxyConfig = ""
	} else {
		a.status.ProxyConfig = v
		if a.proxyAcked(v) {
			acked = true
			a.proxy = bpf.ProxyPorts{Ingress: a.cfg.Proxy.InboundPort, Egress: a.cfg.Proxy.OutboundPort}
		}
	}
	mtlsPorts := [2]uint16{}
	if acked && in.MTLS != nil {
		mtlsPorts = [2]uint16{a.cfg.Proxy.MTLSInboundPort, a.cfg.Proxy.MTLSOutboundPort}
	}
	if mtlsPorts != a.mtlsPorts {
		if err := a.dp.SetMTLSPorts(mtlsPorts[0], mtlsPorts[1]); err != nil {
			fail("mTLS proxy ports", err)
		} else {
			a.mtlsPorts = mtlsPorts
		}
	}
	for _, ep := range all {
		if ep.Node != a.cfg.NodeName || len(ep.Addrs) == 0 {
			continue
		}
		key := ep.Key()
		le := a.local[key]
		if le == nil || le.addr != ep.Addrs[0] {
			le = &localEndpoint{addr: ep.Addrs[0], id: a.endpointID(ep.Addrs[0])}
		}
		le.ep = ep
		wanted[key] = le
		t, id, _ := a.engine.Table(key)
		if t != le.table || (le.proxy != a.proxy && hasRedirect(t)) {
			if err := a.dp.SetPolicy(le.id, t, a.proxy); err != nil {
				fail("policy of "+key, err)
				le.state, le.err = "error", err
				continue
			}
			le.table, le.proxy = t, a.proxy
		}
		le.ident = id
	}
	// 2. The ipcache, once every table that names a new identity is in.
	if err := a.dp.SyncIPCache(ipc); err != nil {
		fail("ipcache", err)
	}
	// 3. Endpoint entries: from now on the pod's traffic is enforced by
	// its table rather than dropped as unknown.
	for key, le := range wanted {
		old := a.local[key]
		if le.table == nil {
			continue // its table failed: leave the pod dropped, fail closed
		}
		name, index, err := a.links.InterfaceFor(le.addr)
		if err != nil {
			le.state, le.err = "waiting-for-interface", err
			continue
		}
		// Programs first: an attached veth without an endpoint entry drops.
		a.attachLocked(name)
		if err := a.attached[name]; err != nil {
			le.state, le.err = "error", err
			continue
		}
		le.mode = a.modeOf(le.ep)
		flags := endpointFlags(le.mode, acked && in.MTLS != nil, ready[key])
		if old == nil || old.ifindex != index || old.ident != le.ident || old.state != "ready" || old.flags != flags {
			if err := a.dp.SetEndpoint(le.addr, le.id, uint32(index), le.ident, flags); err != nil {
				fail("endpoint "+key, err)
				le.state, le.err = "error", err
				continue
			}
		}
		le.ifname, le.ifindex, le.state, le.err, le.flags = name, index, "ready", nil, flags
	}
	// 4. Endpoints that left this node.
	for key, le := range a.local {
		if _, ok := wanted[key]; ok && wanted[key].addr == le.addr {
			continue
		}
		if err := a.dp.DeleteEndpoint(le.addr); err != nil {
			fail("remove endpoint "+key, err)
		}
		if err := a.dp.DeletePolicy(le.id); err != nil {
			fail("remove policy of "+key, err)
		}
		delete(a.ids, le.addr)
	}
	a.local = wanted
	// Entries of a previous run for pods that are gone.
	for addr, id := range a.ids {
		if !a.isLocal(addr) {
			if err := a.dp.DeleteEndpoint(addr); err != nil {
				fail("remove stale endpoint "+addr.String(), err)
			}
			if err := a.dp.DeletePolicy(id); err != nil {
				fail("remove stale policy "+addr.String(), err)
			}
			delete(a.ids, addr)
		}
	}
	a.status.Problems = problems
}

func (a *Agent) isLocal(addr netip.Addr) bool {
	for _, le := range a.local {
		if le.addr == addr {
			return true
		}
	}
	return false
}

// endpointID returns the datapath ID of the endpoint at addr, keeping the
// ID a previous run gave it.
func (a *Agent) endpointID(addr netip.Addr) uint32 {
	if id, ok := a.ids[addr]; ok {
		return id
	}
	used := map[uint32]bool{}
	for _, id := range a.ids {
		used[id] = true
	}
	id := uint32(1)
	for used[id] {
		id++
	}
	a.ids[addr] = id
	return id
}

// ---- the API ----

// Status implements Server.
func (a *Agent) Status(context.Context) (*Status, error) {
	a.mu.Lock()
	s := a.status
	s.Policies = len(a.engine.Policies())
	s.Endpoints = len(a.local)
	s.Identities = a.engine.Stats().Identities
	s.ProxyInboundPort, s.ProxyOutboundPort = a.proxy.Ingress, a.proxy.Egress
	s.MTLS = MTLSStatus{Mode: a.cfg.MTLSMode, InboundPort: a.mtlsPorts[0], OutboundPort: a.mtlsPorts[1]}
	if a.idSource == nil {
		s.MTLS.Mode = string(xds.MTLSDisabled)
	} else {
		s.MTLS.TrustDomain, s.MTLS.Source = a.cfg.TrustDomain, SourceBuiltinCA
		if a.idManager == nil {
			s.MTLS.Source = SourceSPIRE
		}
		if a.idSnap != nil {
			s.MTLS.SVIDs = a.idSnap.Len()
		}
		for ns, m := range a.nsModes {
			if s.MTLS.Namespaces == nil {
				s.MTLS.Namespaces = map[string]string{}
			}
			s.MTLS.Namespaces[ns] = string(m)
		}
	}
	if a.redirectErr != nil {
		s.Problems = append(s.Problems, a.redirectErr.Error())
	}
	for name, err := range a.attached {
		if err != nil {
			s.Problems = append(s.Problems, fmt.Sprintf("attach %s: %v", name, err))
		}
	}
	a.mu.Unlock()
	var err error
	if s.Maps, err = a.dp.MapUsage(); err != nil {
		s.Problems = append(s.Problems, "map usage: "+err.Error())
	}
	if s.Counters, err = a.dp.Counters(); err != nil {
		s.Problems = append(s.Problems, "counters: "+err.Error())
	}
	ps := a.xds.Status(a.cfg.NodeName)
	s.ProxyStreams, s.ProxyAcked = ps.Streams, ps.Acked
	for t, ts := range ps.Types {
		if ts.NACK != nil {
			s.Problems = append(s.Problems, fmt.Sprintf("proxy rejected %s version %s: %s", t, ts.NACK.Version, ts.NACK.Message))
		}
	}
	s.Healthy = len(s.Problems) == 0 && s.LastError == "" && s.Generation > 0
	sort.Strings(s.Problems)
	return &s, nil
}

// Endpoints implements Server.
func (a *Agent) Endpoints(context.Context) (*EndpointList, error) {
	a.mu.Lock()
	defer a.mu.Unlock()
	out := &EndpointList{Node: a.cfg.NodeName}
	for _, le := range a.local {
		es := EndpointStatus{ID: le.id, Namespace: le.ep.Namespace, Name: le.ep.Name, IP: le.addr.String(),
			Identity: uint32(le.ident), Interface: le.ifname, State: le.state}
		for _, l := range le.ep.Labels {
			es.Labels = append(es.Labels, l.String())
		}
		if le.err != nil {
			es.Extra = map[string]string{"error": le.err.Error()}
		}
		if t := le.table; t != nil {
			es.IngressEnforced, es.EgressEnforced = t.Ingress.Enforced, t.Egress.Enforced
			es.IngressPolicies, es.EgressPolicies = nonNil(t.Ingress.Selected), nonNil(t.Egress.Selected)
			es.PolicyEntries = t.Ingress.Len() + t.Egress.Len()
		}
		out.Endpoints = append(out.Endpoints, es)
	}
	sort.Slice(out.Endpoints, func(i, j int) bool {
		x, y := out.Endpoints[i], out.Endpoints[j]
		return x.Namespace+"/"+x.Name < y.Namespace+"/"+y.Name
	})
	return out, nil
}

func nonNil(s []string) []string {
	if s == nil {
		return []string{}
	}
	return s
}

// Observe implements Server.
func (a *Agent) Observe(ctx context.Context, req *ObserveRequest, send func(*FlowEvent) error) error {
	var ch chan FlowEvent
	if req.Follow {
		var unsubscribe func()
		ch, unsubscribe = a.events.subscribe()
		defer unsubscribe()
	}
	last := req.Last
	if last == 0 && !req.Follow {
		last = 20
	}
	for _, e := range a.events.last(last) {
		if req.Matches(&e) {
			if err := send(&e); err != nil {
				return err
			}
		}
	}
	if !req.Follow {
		return nil
	}
	for {
		select {
		case <-ctx.Done():
			return nil
		case e := <-ch:
			if req.Matches(&e) {
				if err := send(&e); err != nil {
					return err
				}
			}
		}
	}
}

// EnvoyConfig implements Server: the xDS resources served to this node's
// proxy, as Envoy's admin config_dump.
func (a *Agent) EnvoyConfig(_ context.Context, req *EnvoyConfigRequest) (*EnvoyConfig, error) {
	b, err := a.xds.ConfigDump(a.cfg.NodeName, req.Type)
	if err != nil {
		return nil, err
	}
	return &EnvoyConfig{ConfigDump: json.RawMessage(b)}, nil
}

// proxyWait bounds how long a change waits for the proxy's ACK before its
// tables are programmed with redirects failing closed; followProxy turns
// them on when the ACK comes.
const proxyWait = 2 * time.Second

// proxyAcked reports whether the node proxy has ACKed configuration version
// v, waiting up to proxyWait for a connected proxy. a.mu is held: the xDS
// server's ACK handling never takes it (only the access-log stream does, on
// its own goroutine, via recordEvent), so the wait cannot deadlock.
func (a *Agent) proxyAcked(v string) bool {
	st := a.xds.Status(a.cfg.NodeName)
	if st.Version == v && st.Acked {
		return true
	}
	if st.Streams == 0 {
		return false
	}
	ctx, cancel := context.WithTimeout(context.Background(), proxyWait)
	defer cancel()
	err := a.xds.WaitAcked(ctx, a.cfg.NodeName, v)
	if err != nil {
		a.log.Warn("proxy has not acknowledged its configuration: L7-covered connections drop until it does", "version", v, "err", err)
	}
	return err == nil
}

// followProxy programs the proxy ports into the tables once the proxy ACKs
// the configuration in force (it was down, slow, or restarted), until ctx
// ends.
func (a *Agent) followProxy(ctx context.Context) {
	t := time.NewTicker(200 * time.Millisecond)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		a.mu.Lock()
		if a.proxy == (bpf.ProxyPorts{}) && a.status.ProxyConfig != "" {
			st := a.xds.Status(a.cfg.NodeName)
			if st.Version == a.status.ProxyConfig && st.Acked {
				a.log.Info("proxy acknowledged its configuration: redirecting L7-covered connections to it", "version", st.Version)
				a.program()
			}
		}
		a.mu.Unlock()
	}
}

// hasRedirect reports whether a table sends some connections to the proxy.
func hasRedirect(t *policy.Table) bool {
	for _, dt := range []*policy.DirTable{&t.Ingress, &t.Egress} {
		for _, e := range dt.Entries() {
			if e.Action == policy.ActionRedirect {
				return true
			}
		}
	}
	return false
}

// proxyRestartWait bounds how long a restarted agent waits for the node
// proxy to reconnect before it programs the datapath; the pinned state
// enforces meanwhile.
const proxyRestartWait = 3 * time.Second

// waitProxyStream waits up to d for the node proxy's xDS stream.
func (a *Agent) waitProxyStream(ctx context.Context, d time.Duration) {
	deadline := time.Now().Add(d)
	for a.xds.Status(a.cfg.NodeName).Streams == 0 {
		if time.Now().After(deadline) || ctx.Err() != nil {
			a.log.Info("no node proxy connected: L7-covered connections drop until one ACKs", "waited", d)
			return
		}
		time.Sleep(20 * time.Millisecond)
	}
}
