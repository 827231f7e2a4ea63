package proxy

// L4 filter chains: an optional envoy.filters.network.rbac, then the
// terminal envoy.filters.network.tcp_proxy to one cluster. The connection
// (after the listener filters and, with a DownstreamTlsContext, the TLS
// handshake) is checked by the network RBAC once, then connected upstream
// through the cluster's dialer (the HTTP pools' one: original_src bind,
// socket options, UpstreamTlsContext) and the bytes are copied both ways
// with half-closes propagated, until both directions ended, either side
// failed or the idle timeout passed.

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	accesslogv3 "github.com/envoyproxy/go-control-plane/envoy/config/accesslog/v3"
	rbac "github.com/envoyproxy/go-control-plane/envoy/config/rbac/v3"
	grpcals "github.com/envoyproxy/go-control-plane/envoy/extensions/access_loggers/grpc/v3"
	netrbac "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/rbac/v3"
	tcpproxy "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/tcp_proxy/v3"
	"google.golang.org/protobuf/proto"
)

const (
	filterTCPProxy = "envoy.filters.network.tcp_proxy"
	filterNetRBAC  = "envoy.filters.network.rbac"
	// defaultTCPIdleTimeout is Envoy's tcp_proxy idle_timeout default.
	defaultTCPIdleTimeout = time.Hour
)

// tcpProxyConfig is a compiled envoy.filters.network.tcp_proxy.
type tcpProxyConfig struct {
	statPrefix  string
	cluster     string
	idleTimeout time.Duration    // 0: none
	accessLog   bool             // the stdout logger
	grpcLogs    []*grpcLogConfig // tcp_grpc loggers
}

// logs reports whether the tcp_proxy has an access log.
func (t *tcpProxyConfig) logs() bool { return t.accessLog || len(t.grpcLogs) > 0 }

// netRBACConfig is a compiled envoy.filters.network.rbac.
type netRBACConfig struct {
	statPrefix string
	rules      *rbacFilter
}

func compileTCPProxy(path string, t *tcpproxy.TcpProxy) (*tcpProxyConfig, error) {
	if err := onlyFields(path, t, "stat_prefix", "cluster", "idle_timeout", "max_connect_attempts", "access_log"); err != nil {
		return nil, err
	}
	if t.GetStatPrefix() == "" {
		return nil, fmt.Errorf("%s.stat_prefix: is required", path)
	}
	if t.GetCluster() == "" {
		return nil, fmt.Errorf("%s.cluster: is required (weighted_clusters is not supported)", path)
	}
	if t.MaxConnectAttempts != nil && t.GetMaxConnectAttempts().GetValue() != 1 {
		return nil, fmt.Errorf("%s.max_connect_attempts: %d is not supported (1: no retries)", path, t.GetMaxConnectAttempts().GetValue())
	}
	c := &tcpProxyConfig{statPrefix: t.GetStatPrefix(), cluster: t.GetCluster(), idleTimeout: defaultTCPIdleTimeout}
	if t.IdleTimeout != nil {
		if err := t.GetIdleTimeout().CheckValid(); err != nil || t.GetIdleTimeout().AsDuration() < 0 {
			return nil, fmt.Errorf("%s.idle_timeout: invalid duration", path)
		}
		c.idleTimeout = t.GetIdleTimeout().AsDuration() // 0 disables it, as in Envoy
	}
	var err error
	c.accessLog, c.grpcLogs, err = compileAccessLogs(path, t.GetAccessLog(), typeURLOf(&grpcals.TcpGrpcAccessLogConfig{}), compileTCPGRPCLog,
		func(ap string, al *accesslogv3.AccessLog) error {
			if al.GetTypedConfig().GetTypeUrl() == "" {
				return fmt.Errorf("%s.typed_config: is required (%s without log_format, %s)", ap, accessLogStdout, accessLogTCPGRPC)
			}
			return fmt.Errorf("%s: access logger %q (%s) is not supported on %s by nodemesh-proxy (%s without log_format, %s)",
				ap, al.GetName(), al.GetTypedConfig().GetTypeUrl(), filterTCPProxy, accessLogStdout, accessLogTCPGRPC)
		})
	if err != nil {
		return nil, err
	}
	return c, nil
}

func compileNetRBAC(path string, r *netrbac.RBAC) (*netRBACConfig, error) {
	if err := onlyFields(path, r, "stat_prefix", "rules", "enforcement_type"); err != nil {
		return nil, err
	}
	if r.GetStatPrefix() == "" {
		return nil, fmt.Errorf("%s.stat_prefix: is required", path)
	}
	if r.GetEnforcementType() != netrbac.RBAC_ONE_TIME_ON_FIRST_BYTE {
		return nil, fmt.Errorf("%s.enforcement_type: %s is not supported (ONE_TIME_ON_FIRST_BYTE)", path, r.GetEnforcementType())
	}
	c := &netRBACConfig{statPrefix: r.GetStatPrefix(), rules: &rbacFilter{name: filterNetRBAC}}
	if r.Rules == nil {
		return c, nil // no rules: every connection passes, as in Envoy
	}
	rp := path + ".rules"
	for n, pol := range r.GetRules().GetPolicies() {
		pp := fmt.Sprintf("%s.policies[%q]", rp, n)
		for i, p := range pol.GetPermissions() {
			if err := l4Permission(join(pp, at("permissions", i)), p); err != nil {
				return nil, err
			}
		}
		for i, p := range pol.GetPrincipals() {
			if err := l4Principal(join(pp, at("principals", i)), p); err != nil {
				return nil, err
			}
		}
	}
	if err := c.rules.compileRules(rp, r.GetRules()); err != nil {
		return nil, err
	}
	return c, nil
}

// l4Permission refuses the permissions a connection cannot be matched on
// (they need a request), which Envoy's network RBAC would never match.
func l4Permission(path string, p *rbac.Permission) error {
	switch r := p.GetRule().(type) {
	case *rbac.Permission_AndRules:
		for i, q := range r.AndRules.GetRules() {
			if err := l4Permission(join(path+".and_rules", at("rules", i)), q); err != nil {
				return err
			}
		}
	case *rbac.Permission_OrRules:
		for i, q := range r.OrRules.GetRules() {
			if err := l4Permission(join(path+".or_rules", at("rules", i)), q); err != nil {
				return err
			}
		}
	case *rbac.Permission_NotRule:
		return l4Permission(path+".not_rule", r.NotRule)
	case *rbac.Permission_Header, *rbac.Permission_UrlPath:
		return fmt.Errorf("%s: permission %s needs an HTTP request: not supported in %s", path,
			p.ProtoReflect().WhichOneof(p.ProtoReflect().Descriptor().Oneofs().ByName("rule")).Name(), filterNetRBAC)
	}
	return nil // the others are checked by compilePermissionCond
}

func l4Principal(path string, p *rbac.Principal) error {
	switch id := p.GetIdentifier().(type) {
	case *rbac.Principal_AndIds:
		for i, q := range id.AndIds.GetIds() {
			if err := l4Principal(join(path+".and_ids", at("ids", i)), q); err != nil {
				return err
			}
		}
	case *rbac.Principal_OrIds:
		for i, q := range id.OrIds.GetIds() {
			if err := l4Principal(join(path+".or_ids", at("ids", i)), q); err != nil {
				return err
			}
		}
	case *rbac.Principal_NotId:
		return l4Principal(path+".not_id", id.NotId)
	case *rbac.Principal_Header, *rbac.Principal_UrlPath:
		return fmt.Errorf("%s: principal %s needs an HTTP request: not supported in %s", path,
			p.ProtoReflect().WhichOneof(p.ProtoReflect().Descriptor().Oneofs().ByName("identifier")).Name(), filterNetRBAC)
	}
	return nil
}

// tcpConn is one proxied connection, tracked by its listener so that a
// drain can close it.
type tcpConn struct {
	chain        *filterChain
	down, up     net.Conn
	closeOnce    sync.Once
	lastActivity atomic.Int64
}

func (t *tcpConn) touch() { t.lastActivity.Store(time.Now().UnixNano()) }

func (t *tcpConn) close() {
	t.closeOnce.Do(func() {
		_ = t.down.Close()
		if t.up != nil {
			_ = t.up.Close()
		}
	})
}

// checkNetRBAC runs the chain's network RBAC (if any) on a connection,
// once: it reports whether the connection may go on and, when it may
// not, Envoy's connection termination details
// (rbac_access_denied_matched_policy[NAME or none]). The caller closes a
// denied connection.
func (lr *listenerRuntime) checkNetRBAC(fc *filterChain, ci *connInfo) (bool, string) {
	r := fc.netRBAC
	if r == nil {
		return true, ""
	}
	p := lr.p
	attrs := requestAttrs{remote: ci.remote, local: ci.origDst, tls: ci.tls}
	ok, pol := r.rules.evaluate(nil, &attrs)
	verdict := "allowed"
	if !ok {
		verdict = "denied"
	}
	p.metrics.netRBAC.WithLabelValues(lr.name, r.statPrefix, verdict).Inc()
	if ok {
		return true, ""
	}
	if pol == "" {
		pol = "none"
	}
	details := "rbac_access_denied_matched_policy[" + pol + "]"
	var peer []string
	if ci.tls != nil {
		peer = ci.tls.peerURIs
	}
	p.log.Debug("network RBAC denied the connection: closed", "listener", lr.name, "chain", fc.name,
		"remote", ci.remote, "dst", ci.origDst, "peer", peer, "reason", details)
	return false, details
}

// serveTCP runs an L4 chain on a connection: network RBAC, then
// tcp_proxy. The connection keeps the chain it was accepted with until it
// ends, the chain is removed or changed, or the listener drains (then
// it is closed after the drain timeout, as Envoy drains the connections
// of the filter chains an update removes). When it ends, the tcp_proxy's
// access logs get its entry, whatever ended it.
func (lr *listenerRuntime) serveTCP(dc *downConn, fc *filterChain) {
	p, ci := lr.p, dc.info
	tp := fc.tcp
	p.metrics.downstreamCxActive.WithLabelValues(lr.name).Inc()
	defer p.metrics.downstreamCxActive.WithLabelValues(lr.name).Dec()
	stats := p.metrics.tcpProxy.MustCurryWith(map[string]string{"listener": lr.name, "stat_prefix": tp.statPrefix})
	stats.WithLabelValues("downstream_cx_total").Inc()
	rec := &tcpLogRecord{}
	defer lr.logTCP(fc, ci, rec)
	if ok, details := lr.checkNetRBAC(fc, ci); !ok {
		rec.termination = details
		_ = dc.Conn.Close()
		return
	}
	u := (*p.clusters.Load())[tp.cluster]
	if u == nil {
		stats.WithLabelValues("downstream_cx_no_route").Inc()
		rec.flag = flagNoCluster
		p.log.Debug("tcp_proxy: no cluster: connection closed", "listener", lr.name, "cluster", tp.cluster, "remote", ci.remote)
		_ = dc.Conn.Close()
		return
	}
	rec.cluster = u.name
	up, dst, err := lr.dialTCP(u, ci)
	rec.upstream = dst
	if err != nil {
		p.metrics.connectFailures.WithLabelValues(u.name).Inc()
		rec.flag, rec.upstreamFailure = flagConnectFailure, err.Error()
		p.log.Debug("tcp_proxy: upstream connect failed: connection closed", "listener", lr.name, "cluster", u.name,
			"remote", ci.remote, "dst", ci.origDst, "err", err)
		_ = dc.Conn.Close()
		return
	}
	rec.upstream, rec.upstreamLocal = unmap(rawOf(up).RemoteAddr()), unmap(rawOf(up).LocalAddr())
	t := &tcpConn{chain: fc, down: dc.Conn, up: up}
	t.touch()
	if !lr.trackTCP(t, true) { // draining
		t.close()
		return
	}
	defer lr.trackTCP(t, false)
	var timer *time.Timer
	if tp.idleTimeout > 0 {
		var check func()
		check = func() {
			since := time.Duration(time.Now().UnixNano() - t.lastActivity.Load())
			if since >= tp.idleTimeout {
				stats.WithLabelValues("idle_timeout").Inc()
				t.close()
				return
			}
			timer.Reset(tp.idleTimeout - since)
		}
		timer = time.AfterFunc(tp.idleTimeout, check)
		defer timer.Stop()
	}
	var wg sync.WaitGroup
	wg.Go(func() {
		n := t.pipe(up, dc.Conn, rawOf(up))
		rec.received = n
		stats.WithLabelValues("downstream_cx_rx_bytes_total").Add(float64(n))
	})
	n := t.pipe(dc.Conn, up, ci.raw)
	rec.sent = n
	stats.WithLabelValues("downstream_cx_tx_bytes_total").Add(float64(n))
	wg.Wait()
	t.close()
}

// dialTCP connects upstream as the HTTP pools do for this connection: the
// cluster's address choice, the connection's original_src bind, the
// cluster's socket options and TLS context. dst is the address it chose
// (invalid if none).
func (lr *listenerRuntime) dialTCP(u *upstreamCluster, ci *connInfo) (c net.Conn, dst netip.AddrPort, err error) {
	var ct *clientTLS
	if u.tls != nil {
		if ct, err = u.tls.current(); err != nil {
			return nil, dst, err
		}
	}
	d, err := u.pick(nil, ci)
	if err != nil {
		return nil, dst, err
	}
	dst = netip.AddrPortFrom(d.Addr().Unmap(), d.Port())
	ctx, cancel := context.WithTimeout(context.Background(), u.connectTimeout)
	defer cancel()
	c, err = u.dialer(ci.bind, ct, "")(ctx, "tcp", d.String())
	return c, dst, err
}

// pipe copies src to dst. At src's end of stream, dst's write side is
// closed (half-close, as Envoy's tcp_proxy propagates it); on an error
// both connections close. It returns the bytes copied.
func (t *tcpConn) pipe(dst, src net.Conn, dstRaw net.Conn) int64 {
	buf := make([]byte, 32<<10)
	var n int64
	for {
		r, rerr := src.Read(buf)
		if r > 0 {
			t.touch()
			w, werr := dst.Write(buf[:r])
			n += int64(w)
			if werr != nil {
				t.close()
				return n
			}
		}
		if rerr != nil {
			if !errors.Is(rerr, io.EOF) {
				t.close()
				return n
			}
			if err := closeWrite(dst, dstRaw); err != nil {
				t.close()
			}
			return n
		}
	}
}

// rawOf is the TCP connection under an upstream connection.
func rawOf(c net.Conn) net.Conn {
	if tc, ok := c.(*tls.Conn); ok {
		return tc.NetConn()
	}
	return c
}

// closeWrite ends c's write side: a TLS close_notify, then the TCP FIN
// on raw, the socket under c.
func closeWrite(c, raw net.Conn) error {
	if tc, ok := c.(*tls.Conn); ok {
		if err := tc.CloseWrite(); err != nil {
			return err
		}
	}
	if cw, ok := raw.(interface{ CloseWrite() error }); ok {
		return cw.CloseWrite()
	}
	return c.Close()
}

// trackTCP adds (add) or removes a proxied connection of the listener;
// adding fails while the listener drains.
func (lr *listenerRuntime) trackTCP(t *tcpConn, add bool) bool {
	lr.mu.Lock()
	defer lr.mu.Unlock()
	if !add {
		delete(lr.tcpConns, t)
		return true
	}
	if lr.draining {
		return false
	}
	if lr.tcpConns == nil {
		lr.tcpConns = map[*tcpConn]struct{}{}
	}
	lr.tcpConns[t] = struct{}{}
	return true
}

// drainTCP closes the listener's proxied connections after the drain
// timeout (Envoy closes a draining listener's connections at the end of
// its drain time).
func (lr *listenerRuntime) drainTCP() {
	lr.mu.Lock()
	n := len(lr.tcpConns)
	lr.mu.Unlock()
	if n == 0 {
		return
	}
	time.AfterFunc(lr.p.cfg.DrainTimeout, func() {
		lr.mu.Lock()
		conns := make([]*tcpConn, 0, len(lr.tcpConns))
		for t := range lr.tcpConns {
			conns = append(conns, t)
		}
		lr.mu.Unlock()
		for _, t := range conns {
			t.close()
		}
	})
}

// drainChangedTCPLocked closes, after the drain timeout, the proxied
// connections whose filter chain lc no longer has unchanged (Envoy's
// filter chain update: the chains that stay keep their connections, the
// others drain), so that a policy change reaches established flows.
func (lr *listenerRuntime) drainChangedTCPLocked(lc *listenerConfig) {
	var gone []*tcpConn
	kept := map[*filterChain]bool{}
	for t := range lr.tcpConns {
		k, seen := kept[t.chain]
		if !seen {
			k = slices.ContainsFunc(lc.allChains(), func(c *filterChain) bool { return proto.Equal(c.raw, t.chain.raw) })
			kept[t.chain] = k
		}
		if !k {
			gone = append(gone, t)
		}
	}
	if len(gone) == 0 {
		return
	}
	lr.p.log.Debug("filter chain removed or changed: draining its tcp_proxy connections", "listener", lr.name,
		"connections", len(gone), "drain", lr.p.cfg.DrainTimeout)
	time.AfterFunc(lr.p.cfg.DrainTimeout, func() {
		for _, t := range gone {
			t.close()
		}
	})
}
