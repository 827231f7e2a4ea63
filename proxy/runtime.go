package proxy

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"log"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"os"
	"slices"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	hcm "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
)

// listenerRuntime owns one listening socket. Its accept loop picks a
// filter chain per connection and hands the connection to the HTTP server
// of the chain's profile; requests look up the active configuration again
// (see doc.go, "Configuration changes").
//
// Lock order: Proxy.mu, then listenerRuntime.mu.
type listenerRuntime struct {
	p      *Proxy
	name   string
	socket socketKey
	cfg    atomic.Pointer[listenerConfig] // active; nil while the first config warms

	mu       sync.Mutex
	socks    map[bindAddr]net.Listener
	order    []bindAddr
	pending  *listenerConfig // warming: waits for its route configurations
	servers  map[serverProfile]*profileServer
	started  bool
	draining bool
	tcpConns map[*tcpConn]struct{} // tcp_proxy connections

	acceptWG sync.WaitGroup
}

// profileServer is an HTTP server fed with the connections of one
// profile through a channel listener.
type profileServer struct {
	srv   *http.Server
	ln    *chanListener
	done  chan struct{} // closed when Serve returned
	drain sync.Once
}

func (p *Proxy) newListenerRuntime(lc *listenerConfig) (*listenerRuntime, error) {
	lr := &listenerRuntime{p: p, name: lc.name, socket: lc.socket, servers: map[serverProfile]*profileServer{}, socks: map[bindAddr]net.Listener{}}
	if err := lr.setAddrs(lc); err != nil {
		return nil, err
	}
	return lr, nil
}

// setAddrs opens the sockets of addresses new in lc and closes those it
// no longer has (their connections carry on); all or nothing.
func (lr *listenerRuntime) setAddrs(lc *listenerConfig) error {
	lr.mu.Lock()
	defer lr.mu.Unlock()
	opts := lc.socket.sockopts(lc.extraOpts)
	lcfg := net.ListenConfig{}
	if len(opts) > 0 {
		lcfg.Control = func(network, _ string, c syscall.RawConn) error { return applySockopts(c, network, opts) }
	}
	want := map[bindAddr]bool{}
	opened := map[bindAddr]net.Listener{}
	for _, b := range lc.addrs {
		want[b] = true
		if lr.socks[b] != nil {
			continue
		}
		ln, err := lcfg.Listen(context.Background(), b.network(), b.ap.String())
		if err != nil {
			for _, l := range opened {
				_ = l.Close()
			}
			var oe *net.OpError
			if errors.As(err, &oe) {
				err = oe.Err // it repeats the address
			}
			return fmt.Errorf("listener %q: listen on %s: %w", lc.name, b.ap, err)
		}
		opened[b] = ln
	}
	for b, ln := range lr.socks {
		if !want[b] {
			_ = ln.Close()
			delete(lr.socks, b)
		}
	}
	for b, ln := range opened {
		lr.socks[b] = ln
		if lr.started {
			lr.acceptWG.Go(func() { lr.acceptLoop(ln) })
		}
	}
	lr.order = slices.Clone(lc.addrs)
	return nil
}

func (lr *listenerRuntime) overlaps(addrs []bindAddr) bool {
	lr.mu.Lock()
	defer lr.mu.Unlock()
	for b := range lr.socks {
		for _, a := range addrs {
			if a.overlaps(b) {
				return true
			}
		}
	}
	return false
}

// Addr is the bound address of the listener's first address (useful when
// the config asked for port 0).
func (lr *listenerRuntime) Addr() netip.AddrPort {
	lr.mu.Lock()
	defer lr.mu.Unlock()
	return lr.socks[lr.order[0]].Addr().(*net.TCPAddr).AddrPort()
}

// update installs lc now when its route configurations and secrets are
// known, else keeps it warming (the previous config, if any, keeps
// serving: Envoy's listener warming).
func (lr *listenerRuntime) update(lc *listenerConfig, routes map[string]*routeTable, secrets map[string]*secret) {
	lr.mu.Lock()
	defer lr.mu.Unlock()
	if warm(lc, routes, secrets) {
		lr.pending = nil
		lr.activateLocked(lc)
		return
	}
	lr.pending = lc
}

// promote activates a warming config whose routes and secrets have
// arrived.
func (lr *listenerRuntime) promote(routes map[string]*routeTable, secrets map[string]*secret) {
	lr.mu.Lock()
	defer lr.mu.Unlock()
	if lr.pending != nil && warm(lr.pending, routes, secrets) {
		lc := lr.pending
		lr.pending = nil
		lr.activateLocked(lc)
	}
}

func (lr *listenerRuntime) warming() bool {
	lr.mu.Lock()
	defer lr.mu.Unlock()
	return lr.pending != nil
}

func warm(lc *listenerConfig, routes map[string]*routeTable, secrets map[string]*secret) bool {
	for _, n := range lc.rdsNames {
		if routes[n] == nil {
			return false
		}
	}
	return secretsReady(lc.secretRefs, secrets)
}

var configGen atomic.Uint64

func (lr *listenerRuntime) activateLocked(lc *listenerConfig) {
	lc.gen = configGen.Add(1)
	lr.cfg.Store(lc)
	// Servers of profiles the new config no longer has drain: their
	// in-flight requests finish, idle keep-alive connections close.
	used := map[serverProfile]bool{}
	for _, c := range append(lc.chains, lc.defaultChain) {
		if c != nil && c.hcm != nil {
			used[c.hcm.profile] = true
		}
	}
	for prof, s := range lr.servers {
		if !used[prof] {
			delete(lr.servers, prof)
			go lr.p.drainServer(s)
		}
	}
	lr.drainChangedTCPLocked(lc)
	if !lr.started {
		lr.started = true
		for _, ln := range lr.socks {
			lr.acceptWG.Go(func() { lr.acceptLoop(ln) })
		}
	}
}

// drain stops accepting and lets every connection finish its requests.
func (lr *listenerRuntime) drain() {
	lr.mu.Lock()
	lr.draining = true
	started := lr.started
	servers := lr.servers
	lr.servers = map[serverProfile]*profileServer{}
	lr.mu.Unlock()
	lr.mu.Lock()
	for _, ln := range lr.socks {
		_ = ln.Close()
	}
	lr.mu.Unlock()
	if started {
		lr.acceptWG.Wait()
	}
	for _, s := range servers {
		go lr.p.drainServer(s)
	}
	lr.drainTCP()
}

func (p *Proxy) drainServer(s *profileServer) {
	s.drain.Do(func() {
		ctx, cancel := context.WithTimeout(context.Background(), p.cfg.DrainTimeout)
		defer cancel()
		if err := s.srv.Shutdown(ctx); err != nil {
			_ = s.srv.Close()
		}
	})
}

func (lr *listenerRuntime) acceptLoop(ln net.Listener) {
	var delay time.Duration
	for {
		c, err := ln.Accept()
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return
			}
			// EMFILE and friends: back off as net/http does.
			delay = min(max(2*delay, 5*time.Millisecond), time.Second)
			lr.p.log.Warn("accept", "listener", lr.name, "err", err, "retry", delay)
			time.Sleep(delay)
			continue
		}
		delay = 0
		lr.dispatch(c)
	}
}

// dispatch chooses the connection's filter chain; none: reset (fail
// closed) and count. Connections that listener filters must read from or
// that need a TLS handshake continue on their own goroutine.
func (lr *listenerRuntime) dispatch(c net.Conn) {
	lc := lr.cfg.Load()
	ci := newConnInfo(lr, c, lc)
	lr.p.metrics.downstreamCx.WithLabelValues(lr.name).Inc()
	if lc.tlsInspector || lc.tlsChains {
		go lr.dispatchTLS(c, ci, lc)
		return
	}
	fc := lc.selectChain(ci.origDst, ci.remote, nil)
	if fc == nil {
		lr.noChain(c, ci)
		return
	}
	ci.cache.Store(&chainChoice{gen: lc.gen, chain: fc})
	lr.handOff(&downConn{Conn: c, info: ci}, fc)
}

func (lr *listenerRuntime) noChain(c net.Conn, ci *connInfo) {
	lr.p.metrics.noFilterChain.WithLabelValues(lr.name).Inc()
	lr.p.log.Debug("no filter chain matches: connection reset", "listener", lr.name, "remote", ci.remote, "dst", ci.origDst)
	resetClose(c)
}

// dispatchTLS runs the tls_inspector, chooses the chain and, for a chain
// with a TLS context, runs the handshake before handing the connection to
// its HTTP server. A failed handshake closes the connection (the peer got
// the alert) and is logged with its reason.
func (lr *listenerRuntime) dispatchTLS(c net.Conn, ci *connInfo, lc *listenerConfig) {
	conn := c
	if lc.tlsInspector {
		h, replay, err := inspectTLS(c, lc.filtersTimeout)
		if err != nil {
			if errors.Is(err, os.ErrDeadlineExceeded) {
				lr.p.metrics.listenerFilterTimeouts.WithLabelValues(lr.name).Inc()
			}
			lr.p.log.Debug("connection ended in the listener filters", "listener", lr.name, "remote", ci.remote, "err", err)
			_ = c.Close()
			return
		}
		lr.p.metrics.tlsInspector.WithLabelValues(lr.name, "tls_found").Add(boolF(h.transport == transportTLS))
		lr.p.metrics.tlsInspector.WithLabelValues(lr.name, "tls_not_found").Add(boolF(h.transport != transportTLS))
		ci.hello, conn = &h, replay
	}
	fc := lc.selectChain(ci.origDst, ci.remote, ci.hello)
	if fc == nil {
		lr.noChain(c, ci)
		return
	}
	if fc.tls != nil {
		tc, err := fc.tls.handshake(conn, fc.handshakeTimeout())
		if err != nil {
			var he *handshakeError
			reason := reasonHandshakeErr
			if errors.As(err, &he) {
				reason = he.reason
			}
			// Refused certificates are policy events; other failures
			// (probes, clients going away) are not.
			level := slog.LevelInfo
			var ve *verifyError
			if errors.As(err, &ve) {
				level = slog.LevelWarn
			}
			lr.p.log.Log(context.Background(), level, "downstream TLS handshake failed", "listener", lr.name, "chain", fc.name,
				"remote", ci.remote, "dst", ci.origDst, "reason", reason, "err", err)
			_ = c.Close()
			// Envoy's tcp_proxy exists from accept: it logs the
			// connection with %DOWNSTREAM_TRANSPORT_FAILURE_REASON%.
			if fc.tcp != nil {
				rec := &tcpLogRecord{downstreamFailure: reason}
				if (*lr.p.clusters.Load())[fc.tcp.cluster] != nil {
					rec.cluster = fc.tcp.cluster
				}
				lr.logTCP(fc, ci, rec)
			}
			return
		}
		var local *tls.Certificate
		if s := (*lr.p.secrets.Load())[fc.tlsCtx.certSecret]; s != nil {
			local = s.cert
		}
		ci.tls = newTLSInfo(tc.ConnectionState(), fc.tlsCtx, local)
		conn = tc
	}
	ci.cache.Store(&chainChoice{gen: lc.gen, chain: fc})
	lr.handOff(&downConn{Conn: conn, info: ci}, fc)
}

func boolF(b bool) float64 {
	if b {
		return 1
	}
	return 0
}

// handshakeTimeout bounds a downstream TLS handshake: the connection's
// idle timeout.
func (fc *filterChain) handshakeTimeout() time.Duration {
	if fc.hcm == nil {
		return fc.tcp.idleTimeout
	}
	return fc.hcm.profile.idleTimeout
}

// handOff gives a connection to the HTTP server of its chain's profile,
// or to tcp_proxy on an L4 chain.
func (lr *listenerRuntime) handOff(dc *downConn, fc *filterChain) {
	if fc.hcm == nil {
		go lr.serveTCP(dc, fc)
		return
	}
	// [network RBAC, HCM]: the connection is checked once, before any
	// request is read; denied, it is closed without an HTTP response.
	if ok, _ := lr.checkNetRBAC(fc, dc.info); !ok {
		_ = dc.Conn.Close()
		return
	}
	for {
		s := lr.server(fc.hcm.profile)
		if s == nil { // draining
			resetClose(dc.info.raw)
			return
		}
		select {
		case s.ln.ch <- dc:
			return
		case <-s.ln.closed:
			// Drained between lookup and hand-off: ask again.
		}
	}
}

func (lr *listenerRuntime) server(prof serverProfile) *profileServer {
	lr.mu.Lock()
	defer lr.mu.Unlock()
	if lr.draining {
		return nil
	}
	if s := lr.servers[prof]; s != nil {
		return s
	}
	s := &profileServer{ln: newChanListener(lr.socks[lr.order[0]].Addr()), done: make(chan struct{})}
	s.srv = &http.Server{
		Handler:           lr,
		IdleTimeout:       prof.idleTimeout,
		ReadHeaderTimeout: prof.headersTimeout,
		// The per-request check in ServeHTTP applies the exact limit; the
		// server's own bound (HTTP/1 adds 4 KiB to it) stops the read.
		MaxHeaderBytes: prof.maxHeaderBytes,
		ConnContext: func(ctx context.Context, c net.Conn) context.Context {
			return context.WithValue(ctx, connKey{}, c.(*downConn).info)
		},
		ConnState: func(c net.Conn, st http.ConnState) {
			switch st {
			case http.StateNew:
				lr.p.metrics.downstreamCxActive.WithLabelValues(lr.name).Inc()
			case http.StateClosed, http.StateHijacked:
				lr.p.metrics.downstreamCxActive.WithLabelValues(lr.name).Dec()
			}
		},
		ErrorLog: log.New(io.Discard, "", 0),
	}
	var protos http.Protocols
	switch prof.codec {
	case hcm.HttpConnectionManager_HTTP1:
		protos.SetHTTP1(true)
	case hcm.HttpConnectionManager_HTTP2:
		protos.SetUnencryptedHTTP2(true)
	default:
		protos.SetHTTP1(true)
		protos.SetUnencryptedHTTP2(true)
	}
	s.srv.Protocols = &protos
	if prof.idleTimeout == 0 {
		// Envoy: 0 disables the idle timeout; net/http would fall back
		// to ReadTimeout (0: none) too.
		s.srv.IdleTimeout = 0
	}
	go func() {
		defer close(s.done)
		_ = s.srv.Serve(s.ln)
	}()
	lr.servers[prof] = s
	return s
}

// connInfo is what the proxy knows about a downstream connection.
type connInfo struct {
	lr       *listenerRuntime
	raw      net.Conn  // the accepted socket
	start    time.Time // accepted
	remote   netip.AddrPort
	local    netip.AddrPort // the accepted socket's local address
	origDst  netip.AddrPort // the original destination
	restored bool           // origDst is not simply the listener's own address
	// bind is fixed at accept by the listener filters, as Envoy sets a
	// connection's upstream socket options once.
	bind  upstreamBind
	cache atomic.Pointer[chainChoice]
	// Set once, before the connection reaches its HTTP server.
	hello *helloInfo // what the tls_inspector found, nil without it
	tls   *tlsInfo   // the TLS session, nil for plaintext
}

// upstreamBind is how the upstream connections of a downstream connection
// are bound. The zero value leaves the source to the cluster
// (source_address) or the kernel. Connections with different binds never
// share an upstream connection.
type upstreamBind struct {
	src  netip.Addr // original_src: the client's IP
	mark uint32     // original_src's SO_MARK, 0: none
}

type chainChoice struct {
	gen   uint64
	chain *filterChain
}

type connKey struct{}

func newConnInfo(lr *listenerRuntime, c net.Conn, lc *listenerConfig) *connInfo {
	ci := &connInfo{lr: lr, raw: c, start: time.Now(), remote: unmap(c.RemoteAddr()), local: unmap(c.LocalAddr())}
	ci.origDst = ci.local
	// With IP_TRANSPARENT (TPROXY, bpf_sk_assign) the accepted socket's
	// local address is the destination the client dialed.
	ci.restored = lr.socket.transparent
	if lc.origDstFilter {
		if od, ok := originalDst(c); ok && od != ci.local {
			ci.origDst, ci.restored = od, true
		}
	}
	if lc.origSrc != nil && ci.remote.IsValid() {
		ci.bind = upstreamBind{src: ci.remote.Addr(), mark: lc.origSrc.mark}
	}
	return ci
}

func unmap(a net.Addr) netip.AddrPort {
	ta, ok := a.(*net.TCPAddr)
	if !ok {
		return netip.AddrPort{}
	}
	ap := ta.AddrPort()
	return netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port())
}

// chain returns the connection's filter chain under the active config,
// choosing again only when the config changed. A connection stays with a
// chain whose transport it was not accepted under only if that makes no
// difference: TLS or not alike, the same server certificate, and its
// client certificate verified by the new chain's validation context.
// Otherwise it has no chain (it is reset).
func (ci *connInfo) chain(lc *listenerConfig) *filterChain {
	if cc := ci.cache.Load(); cc != nil && cc.gen == lc.gen {
		return cc.chain
	}
	fc := lc.selectChain(ci.origDst, ci.remote, ci.hello)
	if fc != nil && (!ci.fits(fc) || !ci.netRBACAllows(fc)) {
		fc = nil
	}
	ci.cache.Store(&chainChoice{gen: lc.gen, chain: fc})
	return fc
}

// netRBACAllows reports whether the network RBAC of fc, a chain the
// connection moves to after a configuration change, allows it: checked
// at accept under its first chain, a connection is checked again under
// a new one (Envoy would drain it and check its successor), so that a
// revocation applies to its next request.
func (ci *connInfo) netRBACAllows(fc *filterChain) bool {
	if fc.netRBAC == nil {
		return true
	}
	ok, _ := fc.netRBAC.rules.evaluate(nil, &requestAttrs{remote: ci.remote, local: ci.origDst, tls: ci.tls})
	return ok
}

func (ci *connInfo) fits(fc *filterChain) bool {
	if (fc.tls == nil) != (ci.tls == nil) {
		return false
	}
	if fc.tls == nil {
		return true
	}
	if fc.tlsCtx == ci.tls.ctx {
		return true
	}
	if fc.tlsCtx.certSecret != ci.tls.ctx.certSecret {
		return false
	}
	_, err := fc.tls.verifyPeer(ci.tls.peer)
	return err == nil
}

// downConn carries the connInfo into the HTTP server.
type downConn struct {
	net.Conn
	info *connInfo
}

// chanListener is a net.Listener fed by the accept loop.
type chanListener struct {
	addr   net.Addr
	ch     chan net.Conn
	closed chan struct{}
	once   sync.Once
}

func newChanListener(addr net.Addr) *chanListener {
	return &chanListener{addr: addr, ch: make(chan net.Conn), closed: make(chan struct{})}
}

func (l *chanListener) Accept() (net.Conn, error) {
	select {
	case c := <-l.ch:
		return c, nil
	case <-l.closed:
		return nil, net.ErrClosed
	}
}

func (l *chanListener) Close() error {
	l.once.Do(func() { close(l.closed) })
	return nil
}

func (l *chanListener) Addr() net.Addr { return l.addr }
