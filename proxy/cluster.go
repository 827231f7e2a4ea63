package proxy

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/http/httputil"
	"net/netip"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	cluster "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	core "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	upstreamhttp "github.com/envoyproxy/go-control-plane/envoy/extensions/upstreams/http/v3"
	"golang.org/x/sys/unix"
	"google.golang.org/protobuf/types/known/anypb"
)

// upstreamCluster is a compiled Cluster: how to pick the upstream address
// of a request and the connection pool to reach it.
type upstreamCluster struct {
	name           string
	originalDst    bool
	useHeader      bool
	headerName     string
	portOverride   uint16
	endpoints      []netip.AddrPort // STATIC
	rr             atomic.Uint64
	connectTimeout time.Duration
	idleTimeout    time.Duration
	sockopts       []intSockopt
	source         netip.Addr   // upstream_bind_config.source_address, zero = any
	tls            *upstreamTLS // transport_socket envoy.transport_sockets.tls, nil: plaintext

	protocol  upstreamProtocol
	transport *http.Transport // HTTP/1.1
	h2c       *http.Transport // HTTP/2 with prior knowledge
	proxyOnce sync.Once
	proxy     *httputil.ReverseProxy

	// pools holds the transports of downstream connections with an
	// upstream bind (original_src), one pool per bind: Envoy keys its
	// connection pools by the upstream socket options, so upstream
	// connections of different client addresses are never shared. With
	// TLS, pools are per bind and TLS generation (the secrets the
	// connections were made with).
	pools     sync.Map   // poolKey → *bindPool
	poolMu    sync.Mutex // serializes creating and sweeping pools
	lastSweep time.Time  // guarded by poolMu
}

// poolKey identifies a connection pool: the upstream bind, and for a TLS
// cluster the generation of its client configuration.
type poolKey struct {
	bind upstreamBind
	gen  uint64
}

// bindPool is the connection pool of one upstream bind.
type bindPool struct {
	transport, h2c *http.Transport
	lastUsed       atomic.Int64 // unix nanoseconds
}

// poolSweepInterval is how often, at most, pools unused for longer than
// the idle timeout are dropped (their connections have closed by then).
const poolSweepInterval = time.Minute

// Envoy's defaults.
const (
	defaultConnectTimeout   = 5 * time.Second
	defaultIdleTimeout      = time.Hour
	originalDstHeaderHeader = "x-envoy-original-dst-host"
)

func compileCluster(path string, c *cluster.Cluster) (*upstreamCluster, error) {
	if err := onlyFields(path, c, "name", "alt_stat_name", "type", "cluster_type", "lb_policy", "connect_timeout", "load_assignment",
		"original_dst_lb_config", "cleanup_interval", "upstream_bind_config", "common_http_protocol_options",
		"typed_extension_protocol_options", "transport_socket"); err != nil {
		return nil, err
	}
	u := &upstreamCluster{name: c.GetName(), connectTimeout: defaultConnectTimeout, idleTimeout: defaultIdleTimeout}
	if u.name == "" {
		return nil, fmt.Errorf("%s.name: is required", path)
	}
	if c.GetClusterType() != nil {
		return nil, fmt.Errorf("%s.cluster_type: custom cluster type %q is not supported by nodemesh-proxy (ORIGINAL_DST or STATIC)", path, c.GetClusterType().GetName())
	}
	switch c.GetType() {
	case cluster.Cluster_ORIGINAL_DST:
		u.originalDst = true
		if c.GetLbPolicy() != cluster.Cluster_CLUSTER_PROVIDED {
			return nil, fmt.Errorf("%s.lb_policy: an ORIGINAL_DST cluster needs CLUSTER_PROVIDED, not %s", path, c.GetLbPolicy())
		}
		if c.LoadAssignment != nil {
			return nil, fmt.Errorf("%s.load_assignment: an ORIGINAL_DST cluster has no endpoints", path)
		}
		if o := c.GetOriginalDstLbConfig(); o != nil {
			op := path + ".original_dst_lb_config"
			if err := onlyFields(op, o, "use_http_header", "http_header_name", "upstream_port_override"); err != nil {
				return nil, err
			}
			u.useHeader = o.GetUseHttpHeader()
			u.headerName = o.GetHttpHeaderName()
			if o.UpstreamPortOverride != nil {
				p := o.GetUpstreamPortOverride().GetValue()
				if p == 0 || p > 65535 {
					return nil, fmt.Errorf("%s.upstream_port_override %d: out of range", op, p)
				}
				u.portOverride = uint16(p)
			}
		}
		if u.headerName == "" {
			u.headerName = originalDstHeaderHeader
		}
	case cluster.Cluster_STATIC:
		if c.GetLbPolicy() != cluster.Cluster_ROUND_ROBIN {
			return nil, fmt.Errorf("%s.lb_policy: %s is not supported for a STATIC cluster (ROUND_ROBIN)", path, c.GetLbPolicy())
		}
		if c.GetOriginalDstLbConfig() != nil {
			return nil, fmt.Errorf("%s.original_dst_lb_config: only for ORIGINAL_DST clusters", path)
		}
		eps, err := compileEndpoints(path+".load_assignment", c)
		if err != nil {
			return nil, err
		}
		u.endpoints = eps
	default:
		return nil, fmt.Errorf("%s.type: %s is not supported by nodemesh-proxy (ORIGINAL_DST or STATIC)", path, c.GetType())
	}
	if c.ConnectTimeout != nil {
		u.connectTimeout = c.GetConnectTimeout().AsDuration()
		if u.connectTimeout <= 0 {
			return nil, fmt.Errorf("%s.connect_timeout: must be positive", path)
		}
	}
	if o := c.GetCommonHttpProtocolOptions(); o != nil {
		op := path + ".common_http_protocol_options"
		if err := onlyFields(op, o, "idle_timeout"); err != nil {
			return nil, err
		}
		if o.IdleTimeout != nil {
			u.idleTimeout = o.GetIdleTimeout().AsDuration()
		}
	}
	if b := c.GetUpstreamBindConfig(); b != nil {
		bp := path + ".upstream_bind_config"
		if err := onlyFields(bp, b, "source_address", "socket_options"); err != nil {
			return nil, err
		}
		if sa := b.GetSourceAddress(); sa != nil {
			ap, err := compileSocketAddress(bp+".source_address", sa)
			if err != nil {
				return nil, err
			}
			if ap.Port() != 0 {
				return nil, fmt.Errorf("%s.source_address.port_value: must be 0", bp)
			}
			if !ap.Addr().IsUnspecified() {
				u.source = ap.Addr()
			}
		}
		opts, err := compileSocketOptions(bp+".socket_options", b.GetSocketOptions())
		if err != nil {
			return nil, err
		}
		u.sockopts = opts
	}
	for k, a := range c.GetTypedExtensionProtocolOptions() {
		op := fmt.Sprintf("%s.typed_extension_protocol_options[%q]", path, k)
		if k != upstreamHTTPOptions {
			return nil, fmt.Errorf("%s: protocol options %q are not supported by nodemesh-proxy (%s)", op, k, upstreamHTTPOptions)
		}
		if err := u.compileProtocolOptions(op, a); err != nil {
			return nil, err
		}
	}
	if ts := c.GetTransportSocket(); ts != nil {
		tc, err := compileUpstreamTLS(path+".transport_socket", ts)
		if err != nil {
			return nil, err
		}
		u.tls = &upstreamTLS{ctx: tc, cluster: u.name}
	}
	u.transport = u.newTransport(false, upstreamBind{}, nil)
	if u.protocol != upstreamHTTP1 {
		u.h2c = u.newTransport(true, upstreamBind{}, nil)
	}
	return u, nil
}

// secretRefs is the SDS secrets the cluster needs.
func (u *upstreamCluster) secretRefs() map[string]secretKind {
	if u.tls == nil {
		return nil
	}
	return u.tls.ctx.refs()
}

// upstreamProtocol is the HTTP version spoken to upstreams.
type upstreamProtocol int

const (
	upstreamHTTP1      upstreamProtocol = iota // Envoy's default
	upstreamH2C                                // explicit http2_protocol_options
	upstreamDownstream                         // use_downstream_protocol_config
)

const upstreamHTTPOptions = "envoy.extensions.upstreams.http.v3.HttpProtocolOptions"

func (u *upstreamCluster) compileProtocolOptions(path string, a *anypb.Any) error {
	var o upstreamhttp.HttpProtocolOptions
	if err := unpackAny(path, a, &o); err != nil {
		return err
	}
	if err := onlyFields(path, &o, "explicit_http_config", "use_downstream_protocol_config", "common_http_protocol_options"); err != nil {
		return err
	}
	if ch := o.GetCommonHttpProtocolOptions(); ch != nil {
		if err := onlyFields(path+".common_http_protocol_options", ch, "idle_timeout"); err != nil {
			return err
		}
		if ch.IdleTimeout != nil {
			u.idleTimeout = ch.GetIdleTimeout().AsDuration()
		}
	}
	checkH1 := func(p string, h1 *core.Http1ProtocolOptions) error { return onlyFields(p, h1) }
	checkH2 := func(p string, h2 *core.Http2ProtocolOptions) error { return onlyFields(p, h2) }
	switch pc := o.GetUpstreamProtocolOptions().(type) {
	case *upstreamhttp.HttpProtocolOptions_ExplicitHttpConfig_:
		ep := path + ".explicit_http_config"
		if err := onlyFields(ep, pc.ExplicitHttpConfig, "http_protocol_options", "http2_protocol_options"); err != nil {
			return err
		}
		if h2 := pc.ExplicitHttpConfig.GetHttp2ProtocolOptions(); h2 != nil {
			u.protocol = upstreamH2C
			return checkH2(ep+".http2_protocol_options", h2)
		}
		u.protocol = upstreamHTTP1
		return checkH1(ep+".http_protocol_options", pc.ExplicitHttpConfig.GetHttpProtocolOptions())
	case *upstreamhttp.HttpProtocolOptions_UseDownstreamProtocolConfig:
		dp := path + ".use_downstream_protocol_config"
		d := pc.UseDownstreamProtocolConfig
		if err := onlyFields(dp, d, "http_protocol_options", "http2_protocol_options"); err != nil {
			return err
		}
		if d.GetHttpProtocolOptions() != nil {
			if err := checkH1(dp+".http_protocol_options", d.GetHttpProtocolOptions()); err != nil {
				return err
			}
		}
		if d.GetHttp2ProtocolOptions() != nil {
			if err := checkH2(dp+".http2_protocol_options", d.GetHttp2ProtocolOptions()); err != nil {
				return err
			}
		}
		u.protocol = upstreamDownstream
	case nil:
		return fmt.Errorf("%s: explicit_http_config or use_downstream_protocol_config is required", path)
	}
	return nil
}

// transportFor picks the connection pool for a request: per upstream
// bind and TLS generation, then per protocol. It fails when the
// cluster's TLS secrets are missing.
func (u *upstreamCluster) transportFor(downstreamH2 bool, b upstreamBind) (*http.Transport, error) {
	h1, h2c := u.transport, u.h2c
	var ct *clientTLS
	if u.tls != nil {
		var err error
		if ct, err = u.tls.current(); err != nil {
			return nil, err
		}
	}
	if b != (upstreamBind{}) || ct != nil {
		bp := u.pool(b, ct)
		h1, h2c = bp.transport, bp.h2c
	}
	switch {
	case u.protocol == upstreamH2C, u.protocol == upstreamDownstream && downstreamH2:
		return h2c, nil
	}
	return h1, nil
}

// pool returns the pool of bind b and TLS generation ct, creating it. A
// new generation retires the pools of older ones: their idle connections
// close, requests in flight finish.
func (u *upstreamCluster) pool(b upstreamBind, ct *clientTLS) *bindPool {
	now := time.Now()
	k := poolKey{bind: b}
	if ct != nil {
		k.gen = ct.gen
	}
	if v, ok := u.pools.Load(k); ok {
		bp := v.(*bindPool)
		bp.lastUsed.Store(now.UnixNano())
		return bp
	}
	u.poolMu.Lock()
	defer u.poolMu.Unlock()
	if v, ok := u.pools.Load(k); ok {
		bp := v.(*bindPool)
		bp.lastUsed.Store(now.UnixNano())
		return bp
	}
	u.sweepLocked(now)
	if ct != nil {
		u.pools.Range(func(key, v any) bool {
			if key.(poolKey).gen < ct.gen {
				u.pools.Delete(key)
				v.(*bindPool).closeIdle()
			}
			return true
		})
	}
	bp := &bindPool{transport: u.newTransport(false, b, ct)}
	if u.protocol != upstreamHTTP1 {
		bp.h2c = u.newTransport(true, b, ct)
	}
	bp.lastUsed.Store(now.UnixNano())
	u.pools.Store(k, bp)
	return bp
}

// sweepLocked drops the pools unused for longer than the idle timeout:
// their connections have closed, so only the empty pool would remain
// (clients come and go). With no idle timeout, pools stay, as their
// connections do.
func (u *upstreamCluster) sweepLocked(now time.Time) {
	if u.idleTimeout <= 0 || now.Sub(u.lastSweep) < poolSweepInterval {
		return
	}
	u.lastSweep = now
	u.pools.Range(func(k, v any) bool {
		bp := v.(*bindPool)
		if now.Sub(time.Unix(0, bp.lastUsed.Load())) > u.idleTimeout {
			u.pools.Delete(k)
			bp.closeIdle()
		}
		return true
	})
}

func (bp *bindPool) closeIdle() {
	bp.transport.CloseIdleConnections()
	if bp.h2c != nil {
		bp.h2c.CloseIdleConnections()
	}
}

// poolCount is the number of upstream bind pools (for tests).
func (u *upstreamCluster) poolCount() int {
	n := 0
	u.pools.Range(func(any, any) bool { n++; return true })
	return n
}

func (u *upstreamCluster) closeIdle() {
	u.transport.CloseIdleConnections()
	if u.h2c != nil {
		u.h2c.CloseIdleConnections()
	}
	u.pools.Range(func(_, v any) bool {
		v.(*bindPool).closeIdle()
		return true
	})
}

func compileEndpoints(path string, c *cluster.Cluster) ([]netip.AddrPort, error) {
	la := c.GetLoadAssignment()
	if la == nil {
		return nil, fmt.Errorf("%s: a STATIC cluster needs endpoints", path)
	}
	if err := onlyFields(path, la, "cluster_name", "endpoints"); err != nil {
		return nil, err
	}
	var eps []netip.AddrPort
	for i, l := range la.GetEndpoints() {
		lp := join(path, at("endpoints", i))
		if err := onlyFields(lp, l, "lb_endpoints"); err != nil {
			return nil, err
		}
		for j, e := range l.GetLbEndpoints() {
			ep := join(lp, at("lb_endpoints", j))
			if err := onlyFields(ep, e, "endpoint", "health_status"); err != nil {
				return nil, err
			}
			if hs := e.GetHealthStatus(); hs != core.HealthStatus_UNKNOWN && hs != core.HealthStatus_HEALTHY {
				return nil, fmt.Errorf("%s.health_status: %s is not supported (UNKNOWN or HEALTHY)", ep, hs)
			}
			en := e.GetEndpoint()
			if en == nil {
				return nil, fmt.Errorf("%s.endpoint: is required", ep)
			}
			if err := onlyFields(ep+".endpoint", en, "address"); err != nil {
				return nil, err
			}
			ap, err := compileAddress(ep+".endpoint.address", en.GetAddress())
			if err != nil {
				return nil, err
			}
			eps = append(eps, ap)
		}
	}
	if len(eps) == 0 {
		return nil, fmt.Errorf("%s: a STATIC cluster needs endpoints", path)
	}
	return eps, nil
}

// compileAddress accepts a TCP socket address with a literal IP.
func compileAddress(path string, a *core.Address) (netip.AddrPort, error) {
	if a == nil {
		return netip.AddrPort{}, fmt.Errorf("%s: is required", path)
	}
	if err := onlyFields(path, a, "socket_address"); err != nil {
		return netip.AddrPort{}, err
	}
	return compileSocketAddress(path+".socket_address", a.GetSocketAddress())
}

func compileSocketAddress(path string, sa *core.SocketAddress) (netip.AddrPort, error) {
	if err := onlyFields(path, sa, "protocol", "address", "port_value", "ipv4_compat"); err != nil {
		return netip.AddrPort{}, err
	}
	if sa.GetProtocol() != core.SocketAddress_TCP {
		return netip.AddrPort{}, fmt.Errorf("%s.protocol: %s is not supported (TCP)", path, sa.GetProtocol())
	}
	ip, err := netip.ParseAddr(sa.GetAddress())
	if err != nil {
		return netip.AddrPort{}, fmt.Errorf("%s.address %q: an IP address is required: %w", path, sa.GetAddress(), err)
	}
	if sa.GetPortValue() > 65535 {
		return netip.AddrPort{}, fmt.Errorf("%s.port_value %d: out of range", path, sa.GetPortValue())
	}
	return netip.AddrPortFrom(ip.Unmap(), uint16(sa.GetPortValue())), nil
}

// compileSocketOptions accepts integer options applied before bind or
// connect (STATE_PREBIND), such as SO_MARK at level SOL_SOCKET.
func compileSocketOptions(path string, opts []*core.SocketOption) ([]intSockopt, error) {
	var out []intSockopt
	for i, o := range opts {
		op := fmt.Sprintf("%s[%d]", path, i)
		if err := onlyFields(op, o, "description", "level", "name", "int_value", "state"); err != nil {
			return nil, err
		}
		if o.GetState() != core.SocketOption_STATE_PREBIND {
			return nil, fmt.Errorf("%s.state: %s is not supported (STATE_PREBIND)", op, o.GetState())
		}
		if _, ok := o.GetValue().(*core.SocketOption_IntValue); !ok {
			return nil, fmt.Errorf("%s: int_value is required", op)
		}
		out = append(out, intSockopt{level: int(o.GetLevel()), name: int(o.GetName()), value: int(o.GetIntValue()),
			desc: sockoptName(int(o.GetLevel()), int(o.GetName()))})
	}
	return out, nil
}

// errConnect marks a failure to connect upstream (Envoy's UF flag).
type connectError struct{ err error }

func (e *connectError) Error() string { return "upstream connect: " + e.err.Error() }
func (e *connectError) Unwrap() error { return e.err }

// newTransport returns a connection pool whose connections are bound as b
// says. With original_src (b.src set) the socket is bound to the client's
// IP — which overrides the cluster's source_address, as in Envoy — with
// IP_TRANSPARENT so that the address need not be local, and
// IP_BIND_ADDRESS_NO_PORT so that the kernel picks the port at connect
// (the 4-tuple, not the address and port alone, must then be unique).
// The filter's options are applied first and the cluster's
// upstream_bind_config socket options after them, the order in which
// Envoy applies a connection's and its cluster's options: should both set
// SO_MARK, the cluster's wins.
func (u *upstreamCluster) newTransport(h2c bool, b upstreamBind, ct *clientTLS) *http.Transport {
	alpn := "http/1.1"
	if h2c {
		alpn = "h2"
	}
	t := &http.Transport{
		DialContext: u.dialer(b, ct, alpn),
		// Envoy pools upstream connections per host without a count limit.
		MaxIdleConnsPerHost: 1024,
		IdleConnTimeout:     u.idleTimeout,
		// The proxy forwards bodies as they are; the transport must not
		// ask for gzip and decode it behind the client's back.
		DisableCompression: true,
		// HTTP/1.1 upstream unless configured otherwise, as in Envoy.
		ForceAttemptHTTP2: false,
	}
	if h2c {
		var p http.Protocols
		p.SetUnencryptedHTTP2(true)
		t.Protocols = &p
	}
	return t
}

// dialer returns how the cluster connects upstream for a downstream
// connection bound as b (see newTransport) with the TLS generation ct
// (nil: plaintext), offering fallbackALPN when the context has no
// alpn_protocols ("": none). The HTTP pools and tcp_proxy both dial
// through it, so an upstream connection is made the same way for both.
func (u *upstreamCluster) dialer(b upstreamBind, ct *clientTLS, fallbackALPN string) func(ctx context.Context, network, addr string) (net.Conn, error) {
	d := &net.Dialer{Timeout: u.connectTimeout}
	local := u.source
	var opts []intSockopt
	if b.src.IsValid() {
		local = b.src
		opts = originalSrcSockopts(b)
	}
	opts = append(opts, u.sockopts...)
	if local.IsValid() {
		d.LocalAddr = &net.TCPAddr{IP: local.AsSlice()}
	}
	if len(opts) > 0 {
		d.Control = func(network, _ string, c syscall.RawConn) error { return applySockopts(c, network, opts) }
	}
	return func(ctx context.Context, network, addr string) (net.Conn, error) {
		if ct != nil {
			// Envoy's connect timeout runs until the transport
			// socket is connected: TCP and the TLS handshake.
			var cancel context.CancelFunc
			ctx, cancel = context.WithTimeout(ctx, u.connectTimeout)
			defer cancel()
		}
		c, err := d.DialContext(ctx, network, addr)
		if err != nil {
			return nil, &connectError{err}
		}
		if ct == nil {
			return c, nil
		}
		tc, err := ct.handshake(ctx, u.tls, c, addr, fallbackALPN)
		if err != nil {
			_ = c.Close()
			return nil, &connectError{err}
		}
		return tc, nil
	}
}

// errOwnListener refuses an ORIGINAL_DST request whose destination is the
// proxy's own (non-transparent) listener: forwarding would loop.
var errOwnListener = errors.New("the original destination is this proxy's own listener")

// pick chooses the upstream address of a request (nil for a tcp_proxy
// connection).
func (u *upstreamCluster) pick(r *http.Request, ci *connInfo) (netip.AddrPort, error) {
	if !u.originalDst {
		n := u.rr.Add(1) - 1
		return u.endpoints[n%uint64(len(u.endpoints))], nil
	}
	dst := ci.origDst
	fromHeader := false
	if u.useHeader && r != nil { // tcp_proxy: no request, no header
		if v := r.Header.Get(u.headerName); v != "" {
			ap, err := netip.ParseAddrPort(v)
			if err != nil {
				return netip.AddrPort{}, fmt.Errorf("header %s %q: not an IP:port", u.headerName, v)
			}
			dst, fromHeader = netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port()), true
		}
	}
	if u.portOverride != 0 {
		dst = netip.AddrPortFrom(dst.Addr(), u.portOverride)
	}
	if !fromHeader && !ci.restored && dst == ci.local {
		return netip.AddrPort{}, errOwnListener
	}
	return dst, nil
}

// sockoptMark builds the SO_MARK option, for tests and callers.
func sockoptMark(mark int) intSockopt {
	return intSockopt{level: unix.SOL_SOCKET, name: unix.SO_MARK, value: mark, desc: "SO_MARK"}
}

// originalSrcSockopts are the options of an upstream socket bound to the
// client's address b.src.
func originalSrcSockopts(b upstreamBind) []intSockopt {
	o := []intSockopt{{level: unix.SOL_IP, name: unix.IP_TRANSPARENT, value: 1, desc: "IP_TRANSPARENT (original_src)"}}
	if b.src.Is6() {
		o[0] = intSockopt{level: unix.SOL_IPV6, name: unix.IPV6_TRANSPARENT, value: 1, desc: "IPV6_TRANSPARENT (original_src)"}
	}
	o = append(o, intSockopt{level: unix.SOL_IP, name: unix.IP_BIND_ADDRESS_NO_PORT, value: 1, desc: "IP_BIND_ADDRESS_NO_PORT"})
	if b.mark != 0 {
		o = append(o, sockoptMark(int(b.mark)))
	}
	return o
}
