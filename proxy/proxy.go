package proxy

import (
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"io"
	"log"
	"log/slog"
	"maps"
	"net"
	"net/http"
	"net/netip"
	"os"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	admin "github.com/envoyproxy/go-control-plane/envoy/admin/v3"
	cluster "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	listener "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	route "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"
	"google.golang.org/protobuf/types/known/timestamppb"
)

// Proxy is the node's L7 proxy: it applies the xDS resources it receives
// (apply*.go) and serves the listeners they describe.
type Proxy struct {
	cfg        Config
	log        *slog.Logger
	metrics    *metrics
	access     *accessLogger
	discardLog *log.Logger

	// Read by every request, replaced (copy on write) by the xDS loop.
	routes   atomic.Pointer[map[string]*routeTable]
	clusters atomic.Pointer[map[string]*upstreamCluster]
	secrets  atomic.Pointer[map[string]*secret] // read by every handshake
	ready    atomic.Bool

	svid         SVIDVerifier
	secretSeq    atomic.Uint64 // numbers accepted secret versions
	tlsGen       atomic.Uint64 // numbers upstream TLS generations
	ticketSecret [32]byte      // session ticket keys derive from it

	mu            sync.Mutex // guards the resource state below
	listeners     map[string]*listenerState
	clusterStates map[string]*resourceState
	routeStates   map[string]*resourceState
	secretStates  map[string]*resourceState
	// pendingClusters warm: they wait for their secrets, while the
	// previous version of the cluster, if any, serves (Envoy's cluster
	// warming).
	pendingClusters map[string]*pendingCluster
	versions        map[string]string // type URL → last accepted version_info
	acked           map[string]bool   // type URL → a response was accepted once
	adminAddr       net.Addr
	grpcLogs        map[grpcLogKey]*grpcLogger // the loggers listeners use
}

// resourceState is what /config_dump shows of one resource.
type resourceState struct {
	version string
	raw     proto.Message
	updated time.Time
	failed  *admin.UpdateFailureState
}

type listenerState struct {
	resourceState
	rt *listenerRuntime
}

// New returns a proxy with no configuration.
func New(cfg Config, logger *slog.Logger) *Proxy {
	cfg.Defaults()
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	out := cfg.AccessLog
	if out == nil {
		out = os.Stdout
	}
	p := &Proxy{
		cfg: cfg, log: logger, metrics: newMetrics(), access: &accessLogger{w: out},
		discardLog: log.New(io.Discard, "", 0),
		listeners:  map[string]*listenerState{}, clusterStates: map[string]*resourceState{}, routeStates: map[string]*resourceState{},
		secretStates: map[string]*resourceState{}, pendingClusters: map[string]*pendingCluster{},
		versions: map[string]string{}, acked: map[string]bool{}, grpcLogs: map[grpcLogKey]*grpcLogger{},
		svid: cfg.SVIDVerifier,
	}
	if p.svid == nil {
		p.svid = X509SVIDVerifier{}
	}
	if _, err := rand.Read(p.ticketSecret[:]); err != nil {
		panic(fmt.Sprintf("session ticket secret: %v", err)) // crypto/rand does not fail on Linux
	}
	p.routes.Store(&map[string]*routeTable{})
	p.clusters.Store(&map[string]*upstreamCluster{})
	p.secrets.Store(&map[string]*secret{})
	return p
}

// pendingCluster is a cluster waiting for its secrets.
type pendingCluster struct {
	u     *upstreamCluster
	state *resourceState
}

// Run serves the admin endpoint and follows the control plane until ctx
// ends; then it drains every listener.
func (p *Proxy) Run(ctx context.Context) error {
	if err := p.cfg.Validate(); err != nil {
		return err
	}
	var wg sync.WaitGroup
	if p.cfg.AdminAddress != "" {
		ln, err := net.Listen("tcp", p.cfg.AdminAddress)
		if err != nil {
			return fmt.Errorf("admin endpoint: %w", err)
		}
		p.mu.Lock()
		p.adminAddr = ln.Addr()
		p.mu.Unlock()
		srv := &http.Server{Handler: p.AdminHandler(), ReadHeaderTimeout: 10 * time.Second, ErrorLog: p.discardLog}
		wg.Go(func() { _ = srv.Serve(ln) })
		defer func() {
			_ = srv.Close()
			wg.Wait()
		}()
	}
	err := p.runXDS(ctx)
	p.Close()
	if errors.Is(err, context.Canceled) {
		return nil
	}
	return err
}

// AdminAddr is the admin endpoint's bound address once Run started it.
func (p *Proxy) AdminAddr() net.Addr {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.adminAddr
}

// ListenerAddr is the bound address of a listener (for configs that ask
// for port 0), false when it has none.
func (p *Proxy) ListenerAddr(name string) (netip.AddrPort, bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	st := p.listeners[name]
	if st == nil || st.rt == nil {
		return netip.AddrPort{}, false
	}
	return st.rt.Addr(), true
}

// Ready reports whether the first listener and cluster configuration is
// applied and no listener is warming.
func (p *Proxy) Ready() bool { return p.ready.Load() }

// Close drains every listener and stops the access loggers after they
// sent what they hold (if their service is there; at most a few seconds).
func (p *Proxy) Close() {
	p.mu.Lock()
	defer p.mu.Unlock()
	for name, st := range p.listeners {
		if st.rt != nil {
			st.rt.drain()
		}
		delete(p.listeners, name)
	}
	p.pruneLogsLocked(true)
}

// Type URLs of the resources the proxy subscribes to.
const (
	typeListener = "type.googleapis.com/envoy.config.listener.v3.Listener"
	typeCluster  = "type.googleapis.com/envoy.config.cluster.v3.Cluster"
	typeRoute    = "type.googleapis.com/envoy.config.route.v3.RouteConfiguration"
	// typeSecret: secret.go.
)

// markFailed records a refused update of resource name in states, keeping
// the state of its last good version.
func markFailed(states map[string]*resourceState, name, version string, raw proto.Message, err error) {
	st := states[name]
	if st == nil {
		st = &resourceState{}
		states[name] = st
	}
	st.failed = failure(version, raw, err)
}

// promoteListenersLocked lets every listener waiting for route
// configurations or secrets take the ones now current.
func (p *Proxy) promoteListenersLocked() {
	routes, secrets := *p.routes.Load(), *p.secrets.Load()
	for _, st := range p.listeners {
		if st.rt != nil {
			st.rt.promote(routes, secrets)
		}
	}
}

func failure(version string, raw proto.Message, err error) *admin.UpdateFailureState {
	f := &admin.UpdateFailureState{Details: err.Error(), VersionInfo: version, LastUpdateAttempt: timestamppb.Now()}
	if a, aerr := anypb.New(raw); aerr == nil && dumpable(a) {
		f.FailedConfiguration = a
	}
	return f
}

// applyListeners applies a state-of-the-world LDS response: listeners
// missing from it drain; each listener is accepted or refused on its own,
// as in Envoy (a refused one keeps its previous config). The error lists
// every refusal.
func (p *Proxy) applyListeners(version string, ls []*listener.Listener) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	var errs []error
	names := map[string]bool{}
	for _, l := range ls {
		names[l.GetName()] = true
	}
	for name, st := range p.listeners {
		if !names[name] {
			if st.rt != nil {
				st.rt.drain()
			}
			delete(p.listeners, name)
		}
	}
	seen := map[string]bool{}
	routes := *p.routes.Load()
	for _, l := range ls {
		name := l.GetName()
		if seen[name] {
			errs = append(errs, fmt.Errorf("listener %q: duplicate name in one response", name))
			continue
		}
		seen[name] = true
		old := p.listeners[name]
		if old != nil && old.raw != nil && proto.Equal(old.raw, l) {
			old.failed = nil
			continue
		}
		lc, err := compileListener(l)
		if err == nil {
			err = p.resolveLogsLocked(lc)
		}
		if err == nil {
			p.bindTLSLocked(lc)
		}
		if err == nil {
			lc.version, lc.updated = version, time.Now()
			err = p.installListener(old, lc, routes)
		}
		if err != nil {
			errs = append(errs, err)
			if old == nil {
				old = &listenerState{}
				p.listeners[name] = old
			}
			old.failed = failure(version, l, err)
			continue
		}
	}
	p.pruneRoutesLocked()
	p.pruneSecretsLocked()
	p.pruneLogsLocked(false)
	p.updateReadyLocked()
	return errors.Join(errs...)
}

// bindTLSLocked binds the TLS contexts of lc's filter chains to the
// proxy (secrets, statistics, session ticket keys).
func (p *Proxy) bindTLSLocked(lc *listenerConfig) {
	for _, c := range lc.allChains() {
		if c.tlsCtx != nil {
			c.tls = p.newDownstreamTLS(lc.name, c.name, c.tlsCtx)
		}
	}
}

// resolveLogsLocked gives each gRPC access log of lc its logger, started
// on first use. Its cluster must be one of the proxy's static gRPC
// clusters (Config.GRPCClusters), as Envoy requires a bootstrap cluster.
func (p *Proxy) resolveLogsLocked(lc *listenerConfig) error {
	var logs []*grpcLogConfig
	for _, c := range append(slices.Clone(lc.chains), lc.defaultChain) {
		logs = append(logs, c.grpcLogs()...)
	}
	for _, g := range logs {
		if _, ok := p.cfg.GRPCClusters[g.key.cluster]; !ok {
			return fmt.Errorf("%s: %q is not a static gRPC cluster of the proxy (%s; Envoy needs it in the bootstrap's static_resources)",
				g.clusterPath, g.key.cluster, strings.Join(slices.Sorted(maps.Keys(p.cfg.GRPCClusters)), ", "))
		}
	}
	for _, g := range logs {
		l := p.grpcLogs[g.key]
		if l == nil {
			l = p.newGRPCLogger(g.key, p.cfg.GRPCClusters[g.key.cluster])
			p.grpcLogs[g.key] = l
		}
		g.logger = l
	}
	return nil
}

// pruneLogsLocked stops the loggers no listener configuration (active or
// warming) uses any more; wait: until they sent what they hold, or gave
// up (a second or two).
func (p *Proxy) pruneLogsLocked(wait bool) {
	used := map[grpcLogKey]bool{}
	for _, st := range p.listeners {
		if st.rt == nil {
			continue
		}
		cfgs := []*listenerConfig{st.rt.cfg.Load()}
		st.rt.mu.Lock()
		cfgs = append(cfgs, st.rt.pending)
		st.rt.mu.Unlock()
		for _, lc := range cfgs {
			if lc == nil {
				continue
			}
			for _, c := range append(slices.Clone(lc.chains), lc.defaultChain) {
				for _, g := range c.grpcLogs() {
					used[g.key] = true
				}
			}
		}
	}
	var wg sync.WaitGroup
	for k, l := range p.grpcLogs {
		if !used[k] {
			delete(p.grpcLogs, k)
			wg.Go(func() { l.close(2 * time.Second) })
		}
	}
	if wait {
		wg.Wait()
	}
}

// installListener binds or updates the runtime of one compiled listener.
func (p *Proxy) installListener(old *listenerState, lc *listenerConfig, routes map[string]*routeTable) error {
	switch {
	case old != nil && old.rt != nil && old.rt.socket == lc.socket:
		if err := old.rt.setAddrs(lc); err != nil {
			return err
		}
		old.rt.update(lc, routes, *p.secrets.Load())
	case old != nil && old.rt != nil && old.rt.overlaps(lc.addrs):
		return fmt.Errorf("listener %q: changing transparent, freebind or socket_options of a bound address is not supported (remove the listener, then add it)", lc.name)
	default:
		rt, err := p.newListenerRuntime(lc)
		if err != nil {
			return err
		}
		rt.update(lc, routes, *p.secrets.Load())
		if old != nil && old.rt != nil {
			old.rt.drain()
		}
		if old == nil {
			old = &listenerState{}
			p.listeners[lc.name] = old
		}
		old.rt = rt
	}
	old.raw, old.version, old.updated, old.failed = lc.raw, lc.version, lc.updated, nil
	return nil
}

// rdsNames is the route configurations the listeners (active and
// warming) refer to.
func (p *Proxy) rdsNames() []string {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.rdsNamesLocked()
}

func (p *Proxy) rdsNamesLocked() []string {
	set := map[string]bool{}
	for _, st := range p.listeners {
		if st.rt == nil {
			continue
		}
		if lc := st.rt.cfg.Load(); lc != nil {
			for _, n := range lc.rdsNames {
				set[n] = true
			}
		}
		st.rt.mu.Lock()
		if st.rt.pending != nil {
			for _, n := range st.rt.pending.rdsNames {
				set[n] = true
			}
		}
		st.rt.mu.Unlock()
	}
	return slices.Sorted(maps.Keys(set))
}

// applyRoutes applies an RDS response. Route configurations are kept
// while a listener refers to them (pruned when listeners change).
func (p *Proxy) applyRoutes(version string, rcs []*route.RouteConfiguration) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	var errs []error
	next := maps.Clone(*p.routes.Load())
	for _, rc := range rcs {
		name := rc.GetName()
		st := p.routeStates[name]
		if st != nil && st.raw != nil && proto.Equal(st.raw, rc) {
			st.failed = nil
			continue
		}
		t, err := compileRouteConfig(fmt.Sprintf("route configuration %q", name), rc)
		if err == nil && name == "" {
			err = errors.New("route configuration: name is required")
		}
		if err != nil {
			errs = append(errs, err)
			markFailed(p.routeStates, name, version, rc, err)
			continue
		}
		next[name] = t
		p.routeStates[name] = &resourceState{version: version, raw: rc, updated: time.Now()}
	}
	p.routes.Store(&next)
	p.promoteListenersLocked()
	p.updateReadyLocked()
	return errors.Join(errs...)
}

// pruneRoutesLocked forgets route configurations no listener refers to.
func (p *Proxy) pruneRoutesLocked() {
	keep := map[string]bool{}
	for _, n := range p.rdsNamesLocked() {
		keep[n] = true
	}
	cur := *p.routes.Load()
	next := make(map[string]*routeTable, len(cur))
	for n, t := range cur {
		if keep[n] {
			next[n] = t
		}
	}
	p.routes.Store(&next)
	for n := range p.routeStates {
		if !keep[n] {
			delete(p.routeStates, n)
		}
	}
}

// applyClusters applies a state-of-the-world CDS response. A cluster
// whose secrets have not arrived warms (pendingClusters); its previous
// version, if any, serves meanwhile.
func (p *Proxy) applyClusters(version string, cs []*cluster.Cluster) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	var errs []error
	cur := *p.clusters.Load()
	secrets := *p.secrets.Load()
	next := make(map[string]*upstreamCluster, len(cs))
	states := make(map[string]*resourceState, len(cs))
	seen := make(map[string]bool, len(cs))
	for _, c := range cs {
		name := c.GetName()
		old := p.clusterStates[name]
		if seen[name] {
			errs = append(errs, fmt.Errorf("cluster %q: duplicate name in one response", name))
			continue
		}
		seen[name] = true
		if pc := p.pendingClusters[name]; pc != nil && proto.Equal(pc.state.raw, c) {
			// Still warming: unchanged.
			pc.state.failed = nil
			if cur[name] != nil && old != nil {
				next[name], states[name] = cur[name], old
			}
			continue
		}
		if old != nil && old.raw != nil && proto.Equal(old.raw, c) && cur[name] != nil {
			next[name], states[name] = cur[name], old
			old.failed = nil
			delete(p.pendingClusters, name)
			continue
		}
		u, err := compileCluster(fmt.Sprintf("cluster %q", name), c)
		if err != nil {
			errs = append(errs, err)
			st := &resourceState{failed: failure(version, c, err)}
			if old != nil && cur[name] != nil {
				// Keep the last good cluster.
				next[name] = cur[name]
				st.version, st.raw, st.updated = old.version, old.raw, old.updated
			}
			states[name] = st
			continue
		}
		if u.tls != nil {
			u.tls.p = p
		}
		st := &resourceState{version: version, raw: c, updated: time.Now()}
		if !secretsReady(u.secretRefs(), secrets) {
			p.pendingClusters[name] = &pendingCluster{u: u, state: st}
			if cur[name] != nil && old != nil && old.raw != nil {
				next[name], states[name] = cur[name], old
			}
			continue
		}
		delete(p.pendingClusters, name)
		next[name] = u
		states[name] = st
	}
	for name := range p.pendingClusters {
		if !seen[name] {
			delete(p.pendingClusters, name)
		}
	}
	p.clusters.Store(&next)
	p.clusterStates = states
	p.pruneSecretsLocked()
	p.updateReadyLocked()
	for name, u := range cur {
		if next[name] != u {
			// In-flight requests keep their transport; idle pooled
			// connections of a replaced or removed cluster close.
			u.closeIdle()
		}
	}
	return errors.Join(errs...)
}

// promoteClustersLocked activates the warming clusters whose secrets
// have arrived.
func (p *Proxy) promoteClustersLocked() {
	secrets := *p.secrets.Load()
	cur := *p.clusters.Load()
	var next map[string]*upstreamCluster
	for name, pc := range p.pendingClusters {
		if !secretsReady(pc.u.secretRefs(), secrets) {
			continue
		}
		if next == nil {
			next = maps.Clone(cur)
		}
		next[name] = pc.u
		p.clusterStates[name] = pc.state
		delete(p.pendingClusters, name)
	}
	if next == nil {
		return
	}
	p.clusters.Store(&next)
	for name, u := range cur {
		if next[name] != u {
			u.closeIdle()
		}
	}
}

// accepted records an accepted response of a type.
func (p *Proxy) accepted(typeURL, version string) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.versions[typeURL] = version
	p.acked[typeURL] = true
	p.metrics.configVersion.DeletePartialMatch(map[string]string{"type": shortType(typeURL)})
	p.metrics.configVersion.WithLabelValues(shortType(typeURL), version).Set(1)
	p.updateReadyLocked()
}

// updateReadyLocked: ready once LDS and CDS were accepted and no listener
// or cluster warms; it stays ready after (as Envoy's /ready).
func (p *Proxy) updateReadyLocked() {
	if p.ready.Load() || !p.acked[typeListener] || !p.acked[typeCluster] || len(p.pendingClusters) > 0 {
		return
	}
	for _, st := range p.listeners {
		if st.rt != nil && st.rt.warming() {
			return
		}
	}
	p.ready.Store(true)
	p.log.Info("ready: first configuration applied")
}

func shortType(typeURL string) string {
	switch typeURL {
	case typeListener:
		return "lds"
	case typeCluster:
		return "cds"
	case typeRoute:
		return "rds"
	case typeSecret:
		return "sds"
	}
	return typeURL
}
