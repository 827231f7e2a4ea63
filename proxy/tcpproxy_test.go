package proxy

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	accesslog "github.com/envoyproxy/go-control-plane/envoy/config/accesslog/v3"
	core "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	listener "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	rbac "github.com/envoyproxy/go-control-plane/envoy/config/rbac/v3"
	route "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	grpcals "github.com/envoyproxy/go-control-plane/envoy/extensions/access_loggers/grpc/v3"
	netrbac "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/rbac/v3"
	tcpproxy "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/tcp_proxy/v3"
	tlsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/tls/v3"
	matcher "github.com/envoyproxy/go-control-plane/envoy/type/matcher/v3"
	typev3 "github.com/envoyproxy/go-control-plane/envoy/type/v3"
	"github.com/envoyproxy/go-control-plane/pkg/cache/types"
	"github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/wrapperspb"

	pt "github.com/nodemesh/nodemesh/proxy/proxytest"
)

func anyPerm() []*rbac.Permission {
	return []*rbac.Permission{{Rule: &rbac.Permission_Any{Any: true}}}
}

func l4Listener(filters ...*listener.Filter) *listener.Listener {
	return pt.TCPListener("l4", "127.0.0.1", 0, filters)
}

func tcpGRPCLog(clusterName, logName string) *accesslog.AccessLog {
	return pt.TCPGRPCAccessLog(clusterName, logName, pt.FlushInterval(20*time.Millisecond))
}

func tcpGRPCLogConfig(clusterName, logName string) *grpcals.TcpGrpcAccessLogConfig {
	var c grpcals.TcpGrpcAccessLogConfig
	if err := tcpGRPCLog(clusterName, logName).GetTypedConfig().UnmarshalTo(&c); err != nil {
		panic(err)
	}
	return &c
}

func TestTranslateL4Filters(t *testing.T) {
	allow := map[string]*rbac.Policy{"p": pt.PortPolicy(8080)}
	withTCP := func(f func(*tcpproxy.TcpProxy)) *listener.Listener {
		return l4Listener(pt.TCPProxyFilter("tcp", "c", f))
	}
	netRBAC := func(r *netrbac.RBAC) *listener.Filter {
		return &listener.Filter{Name: filterNetRBAC, ConfigType: &listener.Filter_TypedConfig{TypedConfig: pt.Any(r)}}
	}
	policyWith := func(perm *rbac.Permission, prin *rbac.Principal) map[string]*rbac.Policy {
		return map[string]*rbac.Policy{"p": {Permissions: []*rbac.Permission{perm}, Principals: []*rbac.Principal{prin}}}
	}
	anyID := &rbac.Principal{Identifier: &rbac.Principal_Any{Any: true}}
	for _, tc := range []struct {
		name    string
		l       *listener.Listener
		wantErr string
	}{
		{name: "rbac then tcp_proxy", l: l4Listener(pt.NetworkRBACFilter("in.", rbac.RBAC_ALLOW, allow), pt.TCPProxyFilter("tcp", "c"))},
		{name: "tcp_proxy alone", l: l4Listener(pt.TCPProxyFilter("tcp", "c"))},
		{name: "l4 principals and permissions", l: l4Listener(pt.NetworkRBACFilter("in.", rbac.RBAC_DENY, policyWith(
			&rbac.Permission{Rule: &rbac.Permission_OrRules{OrRules: &rbac.Permission_Set{Rules: []*rbac.Permission{
				{Rule: &rbac.Permission_DestinationPortRange{DestinationPortRange: &typev3.Int32Range{Start: 8000, End: 9000}}},
				{Rule: &rbac.Permission_DestinationIp{DestinationIp: cidrs("10.0.0.0/8")[0]}},
				{Rule: &rbac.Permission_NotRule{NotRule: &rbac.Permission{Rule: &rbac.Permission_DestinationPort{DestinationPort: 22}}}},
			}}}},
			&rbac.Principal{Identifier: &rbac.Principal_AndIds{AndIds: &rbac.Principal_Set{Ids: []*rbac.Principal{
				{Identifier: &rbac.Principal_DirectRemoteIp{DirectRemoteIp: cidrs("10.0.0.0/8")[0]}},
				{Identifier: &rbac.Principal_RemoteIp{RemoteIp: cidrs("10.0.0.0/8")[0]}},
				{Identifier: &rbac.Principal_SourceIp{SourceIp: cidrs("10.0.0.0/8")[0]}},
				{Identifier: &rbac.Principal_NotId{NotId: pt.Authenticated(pt.Exact("spiffe://x/y"))}},
			}}}})), pt.TCPProxyFilter("tcp", "c"))},
		{name: "rbac without rules", l: l4Listener(netRBAC(&netrbac.RBAC{StatPrefix: "in."}), pt.TCPProxyFilter("tcp", "c"))},
		{name: "max_connect_attempts 1", l: withTCP(func(p *tcpproxy.TcpProxy) { p.MaxConnectAttempts = wrapperspb.UInt32(1) })},
		{name: "max_connect_attempts 3", wantErr: "typed_config.max_connect_attempts: 3 is not supported",
			l: withTCP(func(p *tcpproxy.TcpProxy) { p.MaxConnectAttempts = wrapperspb.UInt32(3) })},
		{name: "weighted_clusters", wantErr: "filters[0].typed_config: field weighted_clusters not supported",
			l: withTCP(func(p *tcpproxy.TcpProxy) {
				p.ClusterSpecifier = &tcpproxy.TcpProxy_WeightedClusters{WeightedClusters: &tcpproxy.TcpProxy_WeightedCluster{}}
			})},
		{name: "tunneling_config", wantErr: "field tunneling_config not supported",
			l: withTCP(func(p *tcpproxy.TcpProxy) { p.TunnelingConfig = &tcpproxy.TcpProxy_TunnelingConfig{Hostname: "x"} })},
		{name: "hash_policy", wantErr: "field hash_policy not supported",
			l: withTCP(func(p *tcpproxy.TcpProxy) { p.HashPolicy = []*typev3.HashPolicy{{}} })},
		{name: "on_demand", wantErr: "field on_demand not supported",
			l: withTCP(func(p *tcpproxy.TcpProxy) { p.OnDemand = &tcpproxy.TcpProxy_OnDemand{} })},
		{name: "access_log tcp_grpc and stdout", l: withTCP(func(p *tcpproxy.TcpProxy) {
			p.AccessLog = []*accesslog.AccessLog{tcpGRPCLog("nodemesh-als", "in"), pt.StdoutAccessLog()}
		})},
		{name: "access_log http_grpc", wantErr: `typed_config.access_log[0]: access logger "envoy.access_loggers.http_grpc" (type.googleapis.com/envoy.extensions.access_loggers.grpc.v3.HttpGrpcAccessLogConfig) is not supported on envoy.filters.network.tcp_proxy`,
			l: withTCP(func(p *tcpproxy.TcpProxy) {
				p.AccessLog = []*accesslog.AccessLog{{Name: accessLogHTTPGRPC, ConfigType: &accesslog.AccessLog_TypedConfig{TypedConfig: pt.Any(
					&grpcals.HttpGrpcAccessLogConfig{CommonConfig: tcpGRPCLogConfig("nodemesh-als", "in").CommonConfig})}}}
			})},
		{name: "access_log without typed_config", wantErr: `access_log[0].typed_config: is required (envoy.access_loggers.stdout without log_format, envoy.access_loggers.tcp_grpc)`,
			l: withTCP(func(p *tcpproxy.TcpProxy) { p.AccessLog = []*accesslog.AccessLog{{Name: accessLogHTTPGRPC}} })},
		{name: "access_log filter", wantErr: "access_log[0]: field filter not supported",
			l: withTCP(func(p *tcpproxy.TcpProxy) {
				al := tcpGRPCLog("nodemesh-als", "in")
				al.Filter = &accesslog.AccessLogFilter{}
				p.AccessLog = []*accesslog.AccessLog{al}
			})},
		{name: "access_log tcp_grpc transport V2", wantErr: "access_log[0].typed_config.common_config.transport_api_version: V2 is not supported",
			l: withTCP(func(p *tcpproxy.TcpProxy) {
				al := tcpGRPCLogConfig("nodemesh-als", "in")
				al.CommonConfig.TransportApiVersion = core.ApiVersion_V2
				p.AccessLog = []*accesslog.AccessLog{{Name: accessLogTCPGRPC, ConfigType: &accesslog.AccessLog_TypedConfig{TypedConfig: pt.Any(al)}}}
			})},
		{name: "access_log tcp_grpc without log_name", wantErr: "access_log[0].typed_config.common_config.log_name: is required",
			l: withTCP(func(p *tcpproxy.TcpProxy) { p.AccessLog = []*accesslog.AccessLog{tcpGRPCLog("nodemesh-als", "")} })},
		{name: "access_log_options", wantErr: "field access_log_options not supported",
			l: withTCP(func(p *tcpproxy.TcpProxy) {
				p.AccessLogOptions = &tcpproxy.TcpProxy_TcpAccessLogOptions{AccessLogFlushInterval: durationpb.New(time.Second)}
			})},
		{name: "downstream idle", wantErr: "field downstream_idle_timeout not supported",
			l: withTCP(func(p *tcpproxy.TcpProxy) { p.DownstreamIdleTimeout = durationpb.New(time.Second) })},
		{name: "no stat_prefix", wantErr: "typed_config.stat_prefix: is required", l: withTCP(func(p *tcpproxy.TcpProxy) { p.StatPrefix = "" })},
		{name: "rbac header permission", wantErr: `policies["p"].permissions[0].or_rules.rules[0]: permission header needs an HTTP request`,
			l: l4Listener(pt.NetworkRBACFilter("in.", rbac.RBAC_ALLOW, policyWith(&rbac.Permission{Rule: &rbac.Permission_OrRules{OrRules: &rbac.Permission_Set{
				Rules: []*rbac.Permission{{Rule: &rbac.Permission_Header{Header: &route.HeaderMatcher{Name: ":method"}}}}}}}, anyID)),
				pt.TCPProxyFilter("tcp", "c"))},
		{name: "rbac url_path principal", wantErr: `principals[0].not_id: principal url_path needs an HTTP request`,
			l: l4Listener(pt.NetworkRBACFilter("in.", rbac.RBAC_ALLOW, policyWith(anyPerm()[0], &rbac.Principal{Identifier: &rbac.Principal_NotId{NotId: &rbac.Principal{
				Identifier: &rbac.Principal_UrlPath{UrlPath: &matcher.PathMatcher{}}}}})), pt.TCPProxyFilter("tcp", "c"))},
		{name: "rbac continuous", wantErr: "enforcement_type: CONTINUOUS is not supported",
			l: l4Listener(netRBAC(&netrbac.RBAC{StatPrefix: "in.", EnforcementType: netrbac.RBAC_CONTINUOUS}), pt.TCPProxyFilter("tcp", "c"))},
		{name: "rbac shadow rules", wantErr: "field shadow_rules not supported",
			l: l4Listener(netRBAC(&netrbac.RBAC{StatPrefix: "in.", ShadowRules: &rbac.RBAC{}}), pt.TCPProxyFilter("tcp", "c"))},
		{name: "rbac without stat_prefix", wantErr: "filters[0].typed_config.stat_prefix: is required",
			l: l4Listener(netRBAC(&netrbac.RBAC{}), pt.TCPProxyFilter("tcp", "c"))},
		{name: "tcp_proxy not last", wantErr: "filters[0]: envoy.filters.network.tcp_proxy is a terminal filter",
			l: l4Listener(pt.TCPProxyFilter("tcp", "c"), pt.NetworkRBACFilter("in.", rbac.RBAC_ALLOW, allow))},
		{name: "rbac alone", wantErr: "envoy.filters.network.rbac is supported only as the first filter before",
			l: l4Listener(pt.NetworkRBACFilter("in.", rbac.RBAC_ALLOW, allow))},
		{name: "rbac before hcm", l: l4Listener(pt.NetworkRBACFilter("in.", rbac.RBAC_ALLOW, allow), pt.HCMFilter(pt.HCM("r", allowAll())))},
		{name: "hcm before rbac", wantErr: "filters[0]: envoy.filters.network.http_connection_manager must be the chain's last network filter",
			l: l4Listener(pt.HCMFilter(pt.HCM("r", allowAll())), pt.NetworkRBACFilter("in.", rbac.RBAC_ALLOW, allow))},
		{name: "rbac rbac hcm", wantErr: "filters[0]: envoy.filters.network.rbac is supported only as the first filter before",
			l: l4Listener(pt.NetworkRBACFilter("in.", rbac.RBAC_ALLOW, allow), pt.NetworkRBACFilter("in.", rbac.RBAC_ALLOW, allow), pt.HCMFilter(pt.HCM("r", allowAll())))},
		{name: "hcm hcm", wantErr: "filters[0]: envoy.filters.network.http_connection_manager must be the chain's last network filter",
			l: l4Listener(pt.HCMFilter(pt.HCM("r", allowAll())), pt.HCMFilter(pt.HCM("r", allowAll())))},
		{name: "no filters", wantErr: "filters: no network filter", l: l4Listener()},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := compileListener(tc.l)
			checkErr(t, err, tc.wantErr)
		})
	}
	t.Run("tcp_grpc logger", func(t *testing.T) {
		lc, err := compileListener(withTCP(func(p *tcpproxy.TcpProxy) {
			p.AccessLog = []*accesslog.AccessLog{tcpGRPCLog("nodemesh-als", "in")}
		}))
		if err != nil {
			t.Fatal(err)
		}
		gl := lc.chains[0].grpcLogs()
		if len(gl) != 1 || gl[0].key != (grpcLogKey{tcp: true, cluster: "nodemesh-als", logName: "in", flushInterval: 20 * time.Millisecond, bufferBytes: defaultLogBufferBytes}) {
			t.Fatalf("loggers %+v", gl)
		}
		lc, err = compileListener(l4Listener(pt.NetworkRBACFilter("in.", rbac.RBAC_ALLOW, allow), pt.HCMFilter(pt.HCM("r", allowAll()))))
		if err != nil {
			t.Fatal(err)
		}
		if c := lc.chains[0]; c.netRBAC == nil || c.hcm == nil || c.tcp != nil {
			t.Fatalf("[rbac, hcm] compiled to %+v", c)
		}
	})
	t.Run("idle_timeout", func(t *testing.T) {
		for _, c := range []struct {
			d    *durationpb.Duration
			want time.Duration
		}{{nil, time.Hour}, {durationpb.New(0), 0}, {durationpb.New(3 * time.Second), 3 * time.Second}} {
			lc, err := compileListener(withTCP(func(p *tcpproxy.TcpProxy) { p.IdleTimeout = c.d }))
			if err != nil {
				t.Fatal(err)
			}
			if got := lc.chains[0].tcp.idleTimeout; got != c.want {
				t.Errorf("idle_timeout %v: got %v, want %v", c.d, got, c.want)
			}
		}
	})
}

// echoServer echoes what it reads; at the client's end of stream it
// writes "bye" (data after the half-close) and closes its write side.
type echoServer struct {
	ln       net.Listener
	accepted atomic.Int32
}

func startEcho(t *testing.T) *echoServer {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	e := &echoServer{ln: ln}
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			e.accepted.Add(1)
			go func() {
				defer c.Close()
				if _, err := io.Copy(c, c); err != nil {
					return
				}
				_, _ = io.WriteString(c, "bye")
				_ = c.(*net.TCPConn).CloseWrite()
				_, _ = io.Copy(io.Discard, c)
			}()
		}
	}()
	return e
}

func (e *echoServer) addr(t *testing.T) (string, uint32) {
	ap := e.ln.Addr().(*net.TCPAddr).AddrPort()
	return ap.Addr().String(), uint32(ap.Port())
}

// roundTrip sends msg, half-closes, and reads everything until the
// proxy's end of stream.
func roundTrip(c net.Conn, msg string) (string, error) {
	_ = c.SetDeadline(time.Now().Add(5 * time.Second))
	if _, err := io.WriteString(c, msg); err != nil {
		return "", err
	}
	// Read the echo before half-closing: bytes flow both ways while open.
	buf := make([]byte, len(msg))
	if _, err := io.ReadFull(c, buf); err != nil {
		return string(buf), fmt.Errorf("read echo: %w", err)
	}
	var err error
	if tc, ok := c.(*tls.Conn); ok {
		err = tc.CloseWrite()
	} else {
		err = c.(*net.TCPConn).CloseWrite()
	}
	if err != nil {
		return "", err
	}
	rest, err := io.ReadAll(c)
	return string(buf) + string(rest), err
}

// refused reports whether the proxy closed the connection without
// passing any byte.
func refused(t *testing.T, c net.Conn) bool {
	t.Helper()
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(5 * time.Second))
	_, _ = io.WriteString(c, "hello")
	b, err := io.ReadAll(c)
	if err != nil && (errors.Is(err, os.ErrDeadlineExceeded) || errors.Is(err, context.DeadlineExceeded)) {
		t.Errorf("connection not closed: %v", err)
		return false
	}
	return len(b) == 0
}

type l4Env struct {
	t        *testing.T
	cp       *pt.ControlPlane
	versions map[string]int
}

func startL4Env(t *testing.T) *l4Env {
	dir, err := os.MkdirTemp("", "nml4")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	return &l4Env{t: t, cp: pt.Start(t, dir), versions: map[string]int{}}
}

func (e *l4Env) proxy(node string, logs io.Writer) *Proxy {
	t := e.t
	log := slog.New(slog.NewTextHandler(io.MultiWriter(logs, testWriter{t}), &slog.HandlerOptions{Level: slog.LevelDebug}))
	p := New(Config{NodeID: node, XDSAddress: e.cp.Address(), AdminAddress: "127.0.0.1:0", AccessLog: io.Discard,
		BackoffMin: 20 * time.Millisecond, BackoffMax: 200 * time.Millisecond, DrainTimeout: time.Second}, log.With("node", node))
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- p.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		select {
		case err := <-done:
			if err != nil {
				t.Errorf("%s Run: %v", node, err)
			}
		case <-time.After(10 * time.Second):
			t.Errorf("%s Run did not return", node)
		}
	})
	waitFor(t, 5*time.Second, node+" admin", func() bool { return p.AdminAddr() != nil })
	return p
}

func (e *l4Env) push(node string, res map[resource.Type][]types.Resource) {
	e.t.Helper()
	e.versions[node]++
	v := fmt.Sprintf("%s-v%d", node, e.versions[node])
	e.cp.Set(node, v, res)
	for typ := range res {
		e.cp.WaitRequest(10*time.Second, ackFrom(node, typ, v))
	}
}

func adminGet(t *testing.T, p *Proxy, path string) string {
	t.Helper()
	resp, err := http.Get("http://" + p.AdminAddr().String() + path)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return string(b)
}

func freePort(t *testing.T) uint32 {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return uint32(ln.Addr().(*net.TCPAddr).Port)
}

func TestTCPProxy(t *testing.T) {
	env := startL4Env(t)
	echo := startEcho(t)
	logs := &syncBuffer{}
	p := env.proxy("l4", logs)
	ip, port := echo.addr(t)
	lport := freePort(t)
	res := func(pol *rbac.Policy) map[resource.Type][]types.Resource {
		return map[resource.Type][]types.Resource{
			resource.ListenerType: {pt.TCPListener("tcp", "127.0.0.1", lport, []*listener.Filter{
				pt.NetworkRBACFilter("in.", rbac.RBAC_ALLOW, map[string]*rbac.Policy{"p": pol}),
				pt.TCPProxyFilter("echo", "echo"),
			})},
			resource.ClusterType: {pt.StaticCluster("echo", pt.SocketAddress(ip, port))},
		}
	}
	env.push("l4", res(pt.PortPolicy(lport)))
	addr := fmt.Sprintf("127.0.0.1:%d", lport)
	waitFor(t, 5*time.Second, "listener", func() bool { _, ok := p.ListenerAddr("tcp"); return ok })
	dial := func() net.Conn {
		c, err := net.DialTimeout("tcp", addr, 5*time.Second)
		if err != nil {
			t.Fatal(err)
		}
		return c
	}

	t.Run("echo and half-close", func(t *testing.T) {
		c := dial()
		defer c.Close()
		msg := strings.Repeat("0123456789", 10000) // 100 kB, more than a copy buffer
		got, err := roundTrip(c, msg)
		if err != nil {
			t.Fatal(err)
		}
		if got != msg+"bye" {
			t.Fatalf("got %d bytes (%.20q...), want the echo and \"bye\" after the half-close", len(got), got)
		}
	})
	t.Run("config_dump and stats", func(t *testing.T) {
		dump := adminGet(t, p, "/config_dump")
		for _, s := range []string{"envoy.filters.network.rbac", "envoy.extensions.filters.network.rbac.v3.RBAC",
			"envoy.filters.network.tcp_proxy", "envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy"} {
			if !strings.Contains(dump, s) {
				t.Errorf("/config_dump does not show %s", s)
			}
		}
		stats := adminGet(t, p, "/stats")
		for _, s := range []string{`nodemesh_proxy_network_rbac_total{listener="tcp",stat="allowed",stat_prefix="in."}`,
			`nodemesh_proxy_tcp_total{listener="tcp",stat="downstream_cx_total",stat_prefix="echo"}`} {
			if !strings.Contains(stats, s) {
				t.Errorf("/stats has no %s", s)
			}
		}
	})
	t.Run("policy change drains open connections", func(t *testing.T) {
		c := dial()
		defer c.Close()
		_ = c.SetDeadline(time.Now().Add(5 * time.Second))
		if _, err := io.WriteString(c, "x"); err != nil {
			t.Fatal(err)
		}
		if _, err := io.ReadFull(c, make([]byte, 1)); err != nil {
			t.Fatal(err)
		}
		// The same chain again (another version): the connection stays.
		env.push("l4", res(pt.PortPolicy(lport)))
		time.Sleep(1500 * time.Millisecond) // more than DrainTimeout
		if _, err := io.WriteString(c, "y"); err != nil {
			t.Fatal(err)
		}
		if _, err := io.ReadFull(c, make([]byte, 1)); err != nil {
			t.Fatalf("an unchanged chain's connection was closed: %v", err)
		}
		env.push("l4", res(pt.PortPolicy(lport+1)))
		start := time.Now()
		if b, err := io.ReadAll(c); err != nil || len(b) != 0 || time.Since(start) > 4*time.Second {
			t.Fatalf("the changed chain's connection: read %q, %v after %v; want closed after the drain timeout", b, err, time.Since(start))
		}
	})
	t.Run("denied port", func(t *testing.T) {
		env.push("l4", res(pt.PortPolicy(lport+1)))
		before := echo.accepted.Load()
		if !refused(t, dial()) {
			t.Error("a connection to a port the policy does not allow passed")
		}
		if echo.accepted.Load() != before {
			t.Error("the denied connection reached the upstream")
		}
		waitFor(t, 5*time.Second, "denied stat and log", func() bool {
			return strings.Contains(adminGet(t, p, "/stats"), `nodemesh_proxy_network_rbac_total{listener="tcp",stat="denied",stat_prefix="in."} 1`) &&
				strings.Contains(logs.String(), "network RBAC denied the connection") &&
				strings.Contains(logs.String(), "rbac_access_denied_matched_policy[none]")
		})
	})
	t.Run("denied principal", func(t *testing.T) {
		env.push("l4", res(&rbac.Policy{Permissions: anyPerm(),
			Principals: []*rbac.Principal{{Identifier: &rbac.Principal_RemoteIp{RemoteIp: cidrs("10.0.0.0/8")[0]}}}}))
		if !refused(t, dial()) {
			t.Error("a connection from a source the policy does not allow passed")
		}
		env.push("l4", res(&rbac.Policy{Permissions: anyPerm(),
			Principals: []*rbac.Principal{{Identifier: &rbac.Principal_DirectRemoteIp{DirectRemoteIp: cidrs("127.0.0.0/8")[0]}}}}))
		c := dial()
		defer c.Close()
		if got, err := roundTrip(c, "again"); err != nil || got != "againbye" {
			t.Fatalf("allowed source: %q, %v", got, err)
		}
	})
	t.Run("idle timeout", func(t *testing.T) {
		r := res(pt.PortPolicy(lport))
		r[resource.ListenerType] = []types.Resource{pt.TCPListener("tcp", "127.0.0.1", lport, []*listener.Filter{
			pt.TCPProxyFilter("echo", "echo", func(tp *tcpproxy.TcpProxy) { tp.IdleTimeout = durationpb.New(200 * time.Millisecond) })})}
		env.push("l4", r)
		c := dial()
		defer c.Close()
		_ = c.SetDeadline(time.Now().Add(5 * time.Second))
		if _, err := io.WriteString(c, "x"); err != nil {
			t.Fatal(err)
		}
		start := time.Now()
		b, _ := io.ReadAll(c)
		if string(b) != "x" || time.Since(start) > 3*time.Second {
			t.Fatalf("idle connection: read %q in %v, want \"x\" then a close after 200ms", b, time.Since(start))
		}
	})
}

// TestTCPProxyMTLS: node-a's plaintext listener tcp_proxies to a STATIC
// cluster with an UpstreamTlsContext (frontend's SVID) to node-b's
// listener, whose TLS chain runs the network RBAC on the peer's SPIFFE ID
// then tcp_proxy to the echo server.
func TestTCPProxyMTLS(t *testing.T) {
	env := startL4Env(t)
	echo := startEcho(t)
	ca := pt.NewCA(t, meshTD)
	frontend, backend, other := ca.SVID(t, "shop", "frontend"), ca.SVID(t, "shop", "backend"), ca.SVID(t, "shop", "other")
	bundle := map[string][]byte{meshTD: ca.CertPEM}
	bLogs := &syncBuffer{}
	a, b := env.proxy("node-a", io.Discard), env.proxy("node-b", bLogs)
	ip, port := echo.addr(t)

	in := pt.TCPListener("in", "127.0.0.1", 0, nil, pt.TLSInspector)
	in.FilterChains = []*listener.FilterChain{{Name: "mtls", FilterChainMatch: &listener.FilterChainMatch{TransportProtocol: "tls"},
		TransportSocket: pt.DownstreamTLS(backendID, "bundle", nil),
		Filters: []*listener.Filter{
			pt.NetworkRBACFilter("mtls.", rbac.RBAC_ALLOW, map[string]*rbac.Policy{"frontend": pt.PeerPolicy(pt.Authenticated(pt.Exact(frontendID)))}),
			pt.TCPProxyFilter("in", "echo"),
		}}}
	env.push("node-b", map[resource.Type][]types.Resource{
		resource.ListenerType: {in},
		resource.ClusterType:  {pt.StaticCluster("echo", pt.SocketAddress(ip, port))},
		resource.SecretType:   {pt.SVIDSecret(backendID, backend), pt.SPIFFESecret("bundle", bundle)},
	})
	var inAddr string
	waitFor(t, 5*time.Second, "node-b listener", func() bool {
		ap, ok := b.ListenerAddr("in")
		inAddr = ap.String()
		return ok
	})
	bPort := uint32(0)
	fmt.Sscanf(inAddr[strings.LastIndex(inAddr, ":")+1:], "%d", &bPort)
	mesh := pt.StaticCluster("mesh", pt.SocketAddress("127.0.0.1", bPort))
	mesh.TransportSocket = pt.UpstreamTLS(frontendID, "bundle", []*tlsv3.SubjectAltNameMatcher{pt.URISAN(pt.Exact(backendID))},
		func(u *tlsv3.UpstreamTlsContext) { u.CommonTlsContext.AlpnProtocols = nil })
	env.push("node-a", map[resource.Type][]types.Resource{
		resource.ListenerType: {pt.TCPListener("out", "127.0.0.1", 0, []*listener.Filter{pt.TCPProxyFilter("out", "mesh")})},
		resource.ClusterType:  {mesh},
		resource.SecretType:   {pt.SVIDSecret(frontendID, frontend), pt.SPIFFESecret("bundle", bundle)},
	})
	var outAddr string
	waitFor(t, 5*time.Second, "node-a listener", func() bool {
		ap, ok := a.ListenerAddr("out")
		outAddr = ap.String()
		return ok
	})

	t.Run("through node-a: allowed SPIFFE ID", func(t *testing.T) {
		c, err := net.DialTimeout("tcp", outAddr, 5*time.Second)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		if got, err := roundTrip(c, "over mtls"); err != nil || got != "over mtlsbye" {
			t.Fatalf("got %q, %v", got, err)
		}
		st := adminGet(t, a, "/stats")
		if !strings.Contains(st, `nodemesh_proxy_ssl_total{name="mesh",scope="cluster",stat="handshake"}`) {
			t.Error("node-a made no upstream TLS handshake")
		}
	})
	direct := func(s *pt.SVID) (net.Conn, error) {
		cfg := &tls.Config{InsecureSkipVerify: true, MinVersion: tls.VersionTLS13, Certificates: []tls.Certificate{s.TLS}} //nolint:gosec // test client
		return tls.DialWithDialer(&net.Dialer{Timeout: 5 * time.Second}, "tcp", inAddr, cfg)
	}
	t.Run("direct: allowed SPIFFE ID", func(t *testing.T) {
		c, err := direct(frontend)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		if got, err := roundTrip(c, "direct"); err != nil || got != "directbye" {
			t.Fatalf("got %q, %v", got, err)
		}
	})
	t.Run("direct: another SPIFFE ID is refused", func(t *testing.T) {
		before := echo.accepted.Load()
		c, err := direct(other)
		if err != nil {
			t.Fatal(err) // the handshake succeeds: the RBAC decides after it
		}
		if !refused(t, c) {
			t.Error("a peer the policy does not allow passed")
		}
		if echo.accepted.Load() != before {
			t.Error("the denied connection reached the upstream")
		}
		waitFor(t, 5*time.Second, "denied stat and log", func() bool {
			return strings.Contains(adminGet(t, b, "/stats"), `nodemesh_proxy_network_rbac_total{listener="in",stat="denied",stat_prefix="mtls."} 1`) &&
				strings.Contains(bLogs.String(), other.ID)
		})
	})
}
