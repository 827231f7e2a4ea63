package proxy

import (
	"fmt"
	"net/netip"
	"slices"
	"strings"
	"time"

	core "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	listener "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	origdst "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/listener/original_dst/v3"
	origsrc "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/listener/original_src/v3"
	tlsinspector "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/listener/tls_inspector/v3"
	hcm "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	netrbac "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/rbac/v3"
	tcpproxy "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/tcp_proxy/v3"
	"golang.org/x/sys/unix"
)

// Well-known extension names the proxy implements.
const (
	filterHCM         = "envoy.filters.network.http_connection_manager"
	filterRBAC        = "envoy.filters.http.rbac"
	filterRouter      = "envoy.filters.http.router"
	listenerOrigDst   = "envoy.filters.listener.original_dst"
	listenerOrigSrc   = "envoy.filters.listener.original_src"
	accessLogStdout   = "envoy.access_loggers.stdout"
	accessLogHTTPGRPC = "envoy.access_loggers.http_grpc"
	accessLogTCPGRPC  = "envoy.access_loggers.tcp_grpc"
	transportRawBytes = "raw_buffer"
)

// listenerConfig is a compiled, immutable Listener. A connection's
// listener runtime holds the active one in an atomic pointer; gen
// numbers activations so connections can cache their chain choice.
type listenerConfig struct {
	name          string
	version       string
	addrs         []bindAddr // address, then additional_addresses
	socket        socketKey
	extraOpts     []intSockopt // socket_options
	origDstFilter bool
	origSrc       *originalSrc // the original_src listener filter, nil without
	tlsInspector  bool         // the tls_inspector listener filter
	// filtersTimeout bounds the listener filters' wait for the first
	// bytes (Envoy's default listener_filters_timeout).
	filtersTimeout time.Duration
	chains         []*filterChain
	defaultChain   *filterChain
	rdsNames       []string
	secretRefs     map[string]secretKind // the SDS secrets the chains use
	tlsChains      bool                  // some chain has a TLS transport socket
	raw            *listener.Listener
	updated        time.Time
	gen            uint64
}

// originalSrc is a compiled envoy.filters.listener.original_src: the
// upstream connections of a connection it accepted are bound to the
// client's IP (port 0: the kernel picks one at connect) and marked.
type originalSrc struct {
	mark uint32 // SO_MARK, 0: none
}

// socketKey is how the listening sockets are made: a listener update that
// keeps it is applied in place, without closing the sockets of the
// addresses it keeps.
type socketKey struct {
	transparent bool
	freebind    bool
	opts        string // fmt of the socket options
}

type filterChain struct {
	name  string
	match chainMatch
	hcm   *hcmConfig // the HTTP connection manager, nil on an L4 chain
	// The optional network RBAC, before the HCM or tcp_proxy; on an L4
	// chain (hcm nil), tcp_proxy.
	netRBAC *netRBACConfig
	tcp     *tcpProxyConfig
	tlsCtx  *tlsContext    // transport_socket envoy.transport_sockets.tls, nil: plaintext
	tls     *downstreamTLS // tlsCtx bound to the proxy when the listener is installed
	raw     *listener.FilterChain
}

// chainMatch is a compiled FilterChainMatch (the criteria the proxy
// supports; the others are refused at compile time).
type chainMatch struct {
	dport     uint32 // 0: any
	dst       []netip.Prefix
	transport string   // "", raw_buffer or tls
	alpn      []string // application_protocols
	directSrc []netip.Prefix
	src       []netip.Prefix
	sports    []uint32
}

func compileListener(l *listener.Listener) (*listenerConfig, error) {
	path := fmt.Sprintf("listener %q", l.GetName())
	if l.GetName() == "" {
		return nil, fmt.Errorf("listener: name is required")
	}
	if err := onlyFields(path, l, "name", "address", "stat_prefix", "filter_chains", "default_filter_chain",
		"transparent", "freebind", "socket_options", "listener_filters", "traffic_direction", "use_original_dst",
		"additional_addresses", "enable_reuse_port"); err != nil {
		return nil, err
	}
	if l.GetEnableReusePort().GetValue() {
		// One socket per listener: the datapath's bpf_sk_assign picks it.
		return nil, fmt.Errorf("%s.enable_reuse_port: true is not supported (one listening socket per address)", path)
	}
	if l.GetUseOriginalDst().GetValue() {
		return nil, fmt.Errorf("%s.use_original_dst: handing connections off to other listeners is not supported", path)
	}
	lc := &listenerConfig{name: l.GetName(), raw: l}
	ba, err := compileBindAddress(path+".address", l.GetAddress())
	if err != nil {
		return nil, err
	}
	lc.addrs = append(lc.addrs, ba)
	for i, aa := range l.GetAdditionalAddresses() {
		ap := join(path, at("additional_addresses", i))
		if err := onlyFields(ap, aa, "address"); err != nil {
			return nil, err
		}
		ba, err := compileBindAddress(ap+".address", aa.GetAddress())
		if err != nil {
			return nil, err
		}
		for _, o := range lc.addrs {
			if o.overlaps(ba) {
				return nil, fmt.Errorf("%s.address: %s overlaps %s", ap, ba, o)
			}
		}
		lc.addrs = append(lc.addrs, ba)
	}
	lc.socket = socketKey{transparent: l.GetTransparent().GetValue(), freebind: l.GetFreebind().GetValue()}
	opts, err := compileSocketOptions(path+".socket_options", l.GetSocketOptions())
	if err != nil {
		return nil, err
	}
	lc.socket.opts, lc.extraOpts = fmt.Sprint(opts), opts
	for i, f := range l.GetListenerFilters() {
		fp := join(path, at("listener_filters", i))
		if err := onlyFields(fp, f, "name", "typed_config"); err != nil {
			return nil, err
		}
		switch f.GetName() {
		case listenerOrigDst:
			var od origdst.OriginalDst
			if err := unpackAny(fp+".typed_config", f.GetTypedConfig(), &od); err != nil {
				return nil, err
			}
			if err := onlyFields(fp+".typed_config", &od); err != nil {
				return nil, err
			}
			lc.origDstFilter = true
		case listenerOrigSrc:
			var os origsrc.OriginalSrc
			if err := unpackAny(fp+".typed_config", f.GetTypedConfig(), &os); err != nil {
				return nil, err
			}
			// bind_port (reuse the client's port too) is not implemented
			// by Envoy either.
			if err := onlyFields(fp+".typed_config", &os, "mark"); err != nil {
				return nil, err
			}
			if lc.origSrc != nil {
				return nil, fmt.Errorf("%s: %s is listed twice", fp, listenerOrigSrc)
			}
			lc.origSrc = &originalSrc{mark: os.GetMark()}
		case listenerTLSInspector:
			var ti tlsinspector.TlsInspector
			if err := unpackAny(fp+".typed_config", f.GetTypedConfig(), &ti); err != nil {
				return nil, err
			}
			if err := onlyFields(fp+".typed_config", &ti); err != nil {
				return nil, err
			}
			if lc.tlsInspector {
				return nil, fmt.Errorf("%s: %s is listed twice", fp, listenerTLSInspector)
			}
			lc.tlsInspector = true
		default:
			return nil, fmt.Errorf("%s: listener filter %q is not supported by nodemesh-proxy (%s, %s, %s)", fp, f.GetName(), listenerOrigDst, listenerOrigSrc, listenerTLSInspector)
		}
	}
	lc.filtersTimeout = listenerFiltersTimeout
	if len(l.GetFilterChains()) == 0 && l.GetDefaultFilterChain() == nil {
		return nil, fmt.Errorf("%s: no filter chains", path)
	}
	seen := map[string]int{}
	for i, fc := range l.GetFilterChains() {
		fp := join(path, at("filter_chains", i))
		c, err := compileFilterChain(fp, fc)
		if err != nil {
			return nil, err
		}
		// Envoy refuses two chains with the same match: which one a
		// connection got would be undefined.
		for _, k := range c.match.keys() {
			if j, dup := seen[k]; dup {
				return nil, fmt.Errorf("%s: filter_chain_match overlaps filter_chains[%d] (%s): multiple filter chains with the same matching rules", fp, j, k)
			}
			seen[k] = i
		}
		if !lc.tlsInspector && (c.match.transport == transportTLS || len(c.match.alpn) > 0) {
			// Without it every connection is raw_buffer without ALPN:
			// the chain could never match (Envoy stopped injecting it).
			return nil, fmt.Errorf("%s.filter_chain_match: matching on transport_protocol %q or application_protocols needs the %s listener filter",
				fp, c.match.transport, listenerTLSInspector)
		}
		lc.chains = append(lc.chains, c)
	}
	if d := l.GetDefaultFilterChain(); d != nil {
		fp := path + ".default_filter_chain"
		if d.FilterChainMatch != nil {
			return nil, fmt.Errorf("%s.filter_chain_match: not allowed on the default chain", fp)
		}
		c, err := compileFilterChain(fp, d)
		if err != nil {
			return nil, err
		}
		lc.defaultChain = c
	}
	lc.secretRefs = map[string]secretKind{}
	for _, c := range lc.allChains() {
		if c.hcm != nil && c.hcm.rdsName != "" && !slices.Contains(lc.rdsNames, c.hcm.rdsName) {
			lc.rdsNames = append(lc.rdsNames, c.hcm.rdsName)
		}
		if c.tlsCtx != nil {
			for n, k := range c.tlsCtx.refs() {
				if prev, ok := lc.secretRefs[n]; ok && prev != k {
					return nil, fmt.Errorf("%s: secret %q is used both as %s and as %s", path, n, prev, k)
				}
				lc.secretRefs[n] = k
			}
			lc.tlsChains = true
		}
	}
	slices.Sort(lc.rdsNames)
	return lc, nil
}

// allChains is the filter chains and the default chain.
func (lc *listenerConfig) allChains() []*filterChain {
	out := slices.Clone(lc.chains)
	if lc.defaultChain != nil {
		out = append(out, lc.defaultChain)
	}
	return out
}

// sockopts lists the options the listening socket needs.
func (k socketKey) sockopts(extra []intSockopt) []intSockopt {
	var o []intSockopt
	if k.transparent {
		o = append(o, intSockopt{level: unix.SOL_IP, name: unix.IP_TRANSPARENT, value: 1, desc: "IP_TRANSPARENT"})
	}
	if k.freebind {
		o = append(o, intSockopt{level: unix.SOL_IP, name: unix.IP_FREEBIND, value: 1, desc: "IP_FREEBIND"})
	}
	return append(o, extra...)
}

func compileFilterChain(path string, fc *listener.FilterChain) (*filterChain, error) {
	if err := onlyFields(path, fc, "name", "filter_chain_match", "filters", "transport_socket"); err != nil {
		return nil, err
	}
	c := &filterChain{name: fc.GetName(), raw: fc}
	if ts := fc.GetTransportSocket(); ts != nil {
		tc, err := compileDownstreamTLS(path+".transport_socket", ts)
		if err != nil {
			return nil, err
		}
		c.tlsCtx = tc
	}
	if m := fc.GetFilterChainMatch(); m != nil {
		mp := path + ".filter_chain_match"
		if err := onlyFields(mp, m, "destination_port", "prefix_ranges", "direct_source_prefix_ranges", "source_type",
			"source_prefix_ranges", "source_ports", "transport_protocol", "application_protocols"); err != nil {
			return nil, err
		}
		if m.GetSourceType() != listener.FilterChainMatch_ANY {
			return nil, fmt.Errorf("%s.source_type: %s is not supported (ANY)", mp, m.GetSourceType())
		}
		if tp := m.GetTransportProtocol(); tp != "" && tp != transportRawBytes && tp != transportTLS {
			return nil, fmt.Errorf("%s.transport_protocol: %q is not supported (%q, %q)", mp, tp, transportRawBytes, transportTLS)
		}
		c.match.transport = m.GetTransportProtocol()
		for i, a := range m.GetApplicationProtocols() {
			if a == "" {
				return nil, fmt.Errorf("%s.application_protocols[%d]: must not be empty", mp, i)
			}
		}
		c.match.alpn = slices.Clone(m.GetApplicationProtocols())
		if m.DestinationPort != nil {
			p := m.GetDestinationPort().GetValue()
			if p == 0 || p > 65535 {
				return nil, fmt.Errorf("%s.destination_port %d: out of range", mp, p)
			}
			c.match.dport = p
		}
		var err error
		if c.match.dst, err = compileCIDRs(mp+".prefix_ranges", m.GetPrefixRanges()); err != nil {
			return nil, err
		}
		if c.match.directSrc, err = compileCIDRs(mp+".direct_source_prefix_ranges", m.GetDirectSourcePrefixRanges()); err != nil {
			return nil, err
		}
		if c.match.src, err = compileCIDRs(mp+".source_prefix_ranges", m.GetSourcePrefixRanges()); err != nil {
			return nil, err
		}
		for _, p := range m.GetSourcePorts() {
			if p == 0 || p > 65535 {
				return nil, fmt.Errorf("%s.source_ports: %d out of range", mp, p)
			}
		}
		c.match.sports = m.GetSourcePorts()
	}
	return c, c.compileFilters(path, fc.GetFilters())
}

// compileFilters accepts the network filter lists the proxy implements:
// [rbac (optional), http_connection_manager], or [rbac (optional),
// tcp_proxy].
func (c *filterChain) compileFilters(path string, fs []*listener.Filter) error {
	const supported = "[" + filterNetRBAC + " (optional), " + filterHCM + "] or [" + filterNetRBAC + " (optional), " + filterTCPProxy + "]"
	if len(fs) == 0 {
		return fmt.Errorf("%s.filters: no network filter (%s)", path, supported)
	}
	for i, f := range fs {
		fp := join(path, at("filters", i))
		if err := onlyFields(fp, f, "name", "typed_config"); err != nil {
			return err
		}
		last := i == len(fs)-1
		var h hcm.HttpConnectionManager
		var t tcpproxy.TcpProxy
		var r netrbac.RBAC
		switch {
		case unpackAny(fp+".typed_config", f.GetTypedConfig(), &h) == nil:
			if !last || (i == 1 && c.netRBAC == nil) || i > 1 {
				return fmt.Errorf("%s: %s must be the chain's last network filter, after %s at most (%s)", fp, filterHCM, filterNetRBAC, supported)
			}
			hc, err := compileHCM(fp+".typed_config", &h)
			if err != nil {
				return err
			}
			c.hcm = hc
		case unpackAny(fp+".typed_config", f.GetTypedConfig(), &t) == nil:
			if !last {
				return fmt.Errorf("%s: %s is a terminal filter: it must be the last one", fp, filterTCPProxy)
			}
			tc, err := compileTCPProxy(fp+".typed_config", &t)
			if err != nil {
				return err
			}
			c.tcp = tc
		case unpackAny(fp+".typed_config", f.GetTypedConfig(), &r) == nil:
			if i != 0 || len(fs) != 2 || c.netRBAC != nil {
				return fmt.Errorf("%s: %s is supported only as the first filter before %s or %s", fp, filterNetRBAC, filterHCM, filterTCPProxy)
			}
			rc, err := compileNetRBAC(fp+".typed_config", &r)
			if err != nil {
				return err
			}
			c.netRBAC = rc
		default:
			if f.GetTypedConfig() == nil {
				return fmt.Errorf("%s.typed_config: is required", fp)
			}
			return fmt.Errorf("%s: network filter %q (%s) is not supported by nodemesh-proxy (%s)", fp, f.GetName(), f.GetTypedConfig().GetTypeUrl(), supported)
		}
	}
	if c.hcm == nil && c.tcp == nil {
		return fmt.Errorf("%s.filters: the last network filter must be %s or %s", path, filterHCM, filterTCPProxy)
	}
	return nil
}

// grpcLogs are the chain's gRPC access logs: its HCM's http_grpc or its
// tcp_proxy's tcp_grpc loggers.
func (c *filterChain) grpcLogs() []*grpcLogConfig {
	switch {
	case c == nil:
		return nil
	case c.hcm != nil:
		return c.hcm.grpcLogs
	case c.tcp != nil:
		return c.tcp.grpcLogs
	}
	return nil
}

func compileCIDRs(path string, cs []*core.CidrRange) ([]netip.Prefix, error) {
	var out []netip.Prefix
	for i, c := range cs {
		p, err := compileCIDR(fmt.Sprintf("%s[%d]", path, i), c)
		if err != nil {
			return nil, err
		}
		out = append(out, p)
	}
	return out, nil
}

// keys expands the match into one string per combination of its values,
// to find chains Envoy would refuse as duplicates.
func (m *chainMatch) keys() []string {
	each := func(ps []netip.Prefix) []string {
		if len(ps) == 0 {
			return []string{"*"}
		}
		var s []string
		for _, p := range ps {
			s = append(s, p.String())
		}
		return s
	}
	ports := []string{"*"}
	if len(m.sports) > 0 {
		ports = nil
		for _, p := range m.sports {
			ports = append(ports, fmt.Sprint(p))
		}
	}
	alpns := []string{"*"}
	if len(m.alpn) > 0 {
		alpns = m.alpn
	}
	var keys []string
	for _, d := range each(m.dst) {
		for _, a := range alpns {
			for _, ds := range each(m.directSrc) {
				for _, s := range each(m.src) {
					for _, sp := range ports {
						keys = append(keys, fmt.Sprintf("dport=%d dst=%s transport=%q alpn=%q direct_src=%s src=%s sport=%s", m.dport, d, m.transport, a, ds, s, sp))
					}
				}
			}
		}
	}
	return keys
}

// selectChain picks the filter chain of a connection as Envoy does: the
// criteria are applied in order (destination port, destination IP,
// [server names: refused at compile time], transport protocol,
// application protocols, direct source IP, source IP, source port) and
// at each one only the chains with the most specific match go on; a
// connection that falls through at a later criterion does not go back to
// a less specific chain of an earlier one. No chain: the default chain,
// else nil (the connection is reset). h is what the listener filters
// found (nil: raw_buffer, no ALPN).
func (lc *listenerConfig) selectChain(local, remote netip.AddrPort, h *helloInfo) *filterChain {
	transport, alpn := transportRawBytes, []string(nil)
	if h != nil {
		transport, alpn = h.transport, h.alpn
	}
	cands := make([]*filterChain, 0, len(lc.chains))
	cands = append(cands, lc.chains...)
	// destination port: exact beats unset.
	cands = narrow(cands, func(c *filterChain) int {
		switch c.match.dport {
		case uint32(local.Port()):
			return 1
		case 0:
			return 0
		}
		return -1
	})
	cands = narrow(cands, func(c *filterChain) int { return prefixScore(c.match.dst, local.Addr()) })
	// The detected transport protocol beats none; another one fails.
	cands = narrow(cands, func(c *filterChain) int {
		switch c.match.transport {
		case transport:
			return 1
		case "":
			return 0
		}
		return -1
	})
	// Application protocols: the client's first protocol that some chain
	// lists wins (Envoy walks the client's list in order), then chains
	// without application_protocols.
	cands = narrow(cands, func(c *filterChain) int {
		if len(c.match.alpn) == 0 {
			return 0
		}
		for i, a := range alpn {
			if slices.Contains(c.match.alpn, a) {
				return len(alpn) - i
			}
		}
		return -1
	})
	cands = narrow(cands, func(c *filterChain) int { return prefixScore(c.match.directSrc, remote.Addr()) })
	cands = narrow(cands, func(c *filterChain) int { return prefixScore(c.match.src, remote.Addr()) })
	cands = narrow(cands, func(c *filterChain) int {
		if len(c.match.sports) == 0 {
			return 0
		}
		if slices.Contains(c.match.sports, uint32(remote.Port())) {
			return 1
		}
		return -1
	})
	if len(cands) > 0 {
		return cands[0]
	}
	return lc.defaultChain
}

// narrow keeps the candidates with the highest non-negative score.
func narrow(cands []*filterChain, score func(*filterChain) int) []*filterChain {
	best := -1
	out := cands[:0]
	for _, c := range cands {
		s := score(c)
		switch {
		case s < 0 || s < best:
		case s > best:
			best = s
			out = append(out[:0], c)
		default:
			out = append(out, c)
		}
	}
	return out
}

// prefixScore: 0 for a chain without prefixes (any address), 1+length of
// the longest matching prefix, -1 when none matches.
func prefixScore(ps []netip.Prefix, a netip.Addr) int {
	if len(ps) == 0 {
		return 0
	}
	best := -1
	for _, p := range ps {
		if p.Contains(a) && p.Bits()+1 > best {
			best = p.Bits() + 1
		}
	}
	return best
}

func (lc *listenerConfig) String() string {
	var b strings.Builder
	fmt.Fprintf(&b, "%s %v (%d chains)", lc.name, lc.addrs, len(lc.chains))
	return b.String()
}

// bindAddr is one listening address. As in Envoy, "0.0.0.0" binds IPv4
// only and "::" IPv6 only, unless ipv4_compat asks for a dual-stack
// socket.
type bindAddr struct {
	ap   netip.AddrPort
	dual bool
}

func (b bindAddr) String() string {
	if b.dual {
		return b.ap.String() + "(dual-stack)"
	}
	return b.ap.String()
}

func (b bindAddr) network() string {
	switch {
	case b.dual:
		return "tcp"
	case b.ap.Addr().Is4():
		return "tcp4"
	}
	return "tcp6"
}

// overlaps: two sockets on one port where one address covers the other.
func (b bindAddr) overlaps(o bindAddr) bool {
	if b.ap.Port() != o.ap.Port() || b.ap.Port() == 0 {
		return false
	}
	cover := func(x, y bindAddr) bool {
		return x.ap.Addr() == y.ap.Addr() || (x.ap.Addr().IsUnspecified() && (x.dual || x.ap.Addr().Is4() == y.ap.Addr().Is4()))
	}
	return cover(b, o) || cover(o, b)
}

func compileBindAddress(path string, a *core.Address) (bindAddr, error) {
	ap, err := compileAddress(path, a)
	if err != nil {
		return bindAddr{}, err
	}
	b := bindAddr{ap: ap}
	if a.GetSocketAddress().GetIpv4Compat() {
		if !ap.Addr().Is6() {
			return bindAddr{}, fmt.Errorf("%s.socket_address.ipv4_compat: only for IPv6 addresses", path)
		}
		b.dual = true
	}
	return b, nil
}
