package proxy

import (
	"bufio"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"strings"
	"testing"
	"time"

	listener "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	rbac "github.com/envoyproxy/go-control-plane/envoy/config/rbac/v3"
	accesslogdata "github.com/envoyproxy/go-control-plane/envoy/data/accesslog/v3"
	"github.com/envoyproxy/go-control-plane/pkg/cache/types"
	"github.com/envoyproxy/go-control-plane/pkg/resource/v3"

	pt "github.com/nodemesh/nodemesh/proxy/proxytest"
)

// tcpLogEnv is a proxy whose gRPC access logs go to a test access log
// service, and whose stdout access log is kept.
type tcpLogEnv struct {
	*l4Env
	als    *pt.AccessLogServer
	p      *Proxy
	stdout *syncBuffer
	logs   *syncBuffer
}

func startTCPLogEnv(t *testing.T, node string) *tcpLogEnv {
	dir, err := os.MkdirTemp("", "nmtcplog")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	e := &tcpLogEnv{l4Env: &l4Env{t: t, cp: pt.Start(t, dir), versions: map[string]int{}},
		als: pt.StartAccessLog(t, dir, "als.sock"), stdout: &syncBuffer{}, logs: &syncBuffer{}}
	log := slog.New(slog.NewTextHandler(io.MultiWriter(e.logs, testWriter{t}), &slog.HandlerOptions{Level: slog.LevelDebug}))
	p := New(Config{NodeID: node, Cluster: "nodemesh", XDSAddress: e.cp.Address(), AdminAddress: "127.0.0.1:0", AccessLog: e.stdout,
		GRPCClusters: map[string]string{DefaultAccessLogCluster: e.als.Address()},
		BackoffMin:   20 * time.Millisecond, BackoffMax: 200 * time.Millisecond, DrainTimeout: time.Second}, log.With("node", node))
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
	e.p = p
	return e
}

// mtlsClient dials addr and runs a TLS 1.3 handshake with cert (nil: no
// client certificate), offering alpn. It returns the TLS connection and
// the client's port; with TLS 1.3 a refused client certificate shows at
// the first read, not in the handshake.
func mtlsClient(t *testing.T, addr string, cert *tls.Certificate, alpn ...string) (*tls.Conn, uint32) {
	t.Helper()
	raw, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	cfg := &tls.Config{InsecureSkipVerify: true, MinVersion: tls.VersionTLS13, NextProtos: alpn} //nolint:gosec // test client
	if cert != nil {
		cfg.Certificates = []tls.Certificate{*cert}
	}
	c := tls.Client(raw, cfg)
	_ = c.SetDeadline(time.Now().Add(5 * time.Second))
	if err := c.Handshake(); err != nil {
		t.Logf("client handshake: %v", err)
	}
	return c, uint32(raw.LocalAddr().(*net.TCPAddr).Port)
}

// closedByProxy reports whether the proxy closed c without sending
// application data.
func closedByProxy(t *testing.T, c net.Conn) bool {
	t.Helper()
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(5 * time.Second))
	_, _ = io.WriteString(c, "hello")
	b, err := io.ReadAll(c)
	if errors.Is(err, os.ErrDeadlineExceeded) {
		t.Errorf("connection not closed: %v", err)
		return false
	}
	return len(b) == 0
}

func uriSANs(p *accesslogdata.TLSProperties_CertificateProperties) []string {
	var out []string
	for _, s := range p.GetSubjectAltName() {
		out = append(out, s.GetUri())
	}
	return out
}

// TestTCPAccessLog: node-b's mTLS listener (client certificate required,
// network RBAC on the peer's SPIFFE ID, tcp_proxy with a tcp_grpc and a
// stdout access log) logs one entry per downstream connection, whatever
// ended it: proxied, refused TLS handshake (with the SVID verification's
// reason), RBAC denial, upstream connect failure.
func TestTCPAccessLog(t *testing.T) {
	env := startTCPLogEnv(t, "node-b")
	echo := startEcho(t)
	ca, rogue := pt.NewCA(t, meshTD), pt.NewCA(t, meshTD)
	frontend, backend, other := ca.SVID(t, "shop", "frontend"), ca.SVID(t, "shop", "backend"), ca.SVID(t, "shop", "other")
	expired := ca.SVID(t, "shop", "frontend", pt.Expired)
	unknownCA := rogue.SVID(t, "shop", "frontend")
	ip, port := echo.addr(t)
	const logName = "nodemesh-inbound-mtls"

	res := func(clusterPort uint32) map[resource.Type][]types.Resource {
		in := pt.TCPListener("in", "127.0.0.1", 0, nil, pt.TLSInspector)
		in.FilterChains = []*listener.FilterChain{{Name: "mtls", FilterChainMatch: &listener.FilterChainMatch{TransportProtocol: "tls"},
			TransportSocket: pt.DownstreamTLS(backendID, "bundle", nil),
			Filters: []*listener.Filter{
				pt.NetworkRBACFilter("mtls.", rbac.RBAC_ALLOW, map[string]*rbac.Policy{"frontend": pt.PeerPolicy(pt.Authenticated(pt.Exact(frontendID)))}),
				pt.TCPProxyFilter("in", "echo", pt.WithTCPAccessLogs(
					pt.TCPGRPCAccessLog(DefaultAccessLogCluster, logName, pt.FlushInterval(20*time.Millisecond)),
					pt.StdoutAccessLog())),
			}}}
		return map[resource.Type][]types.Resource{
			resource.ListenerType: {in},
			resource.ClusterType:  {pt.StaticCluster("echo", pt.SocketAddress(ip, clusterPort))},
			resource.SecretType:   {pt.SVIDSecret(backendID, backend), pt.SPIFFESecret("bundle", map[string][]byte{meshTD: ca.CertPEM})},
		}
	}
	env.push("node-b", res(port))
	var addr string
	waitFor(t, 5*time.Second, "listener", func() bool {
		ap, ok := env.p.ListenerAddr("in")
		addr = ap.String()
		return ok
	})
	entry := func(clientPort uint32) *accesslogdata.TCPAccessLogEntry {
		t.Helper()
		return env.als.WaitEntry(5*time.Second, pt.TCPFrom(clientPort)).TCP
	}
	checkCommon := func(t *testing.T, e *accesslogdata.TCPAccessLogEntry, clientPort uint32) {
		t.Helper()
		c := e.GetCommonProperties()
		if got := c.GetDownstreamRemoteAddress().GetSocketAddress(); got.GetAddress() != "127.0.0.1" || got.GetPortValue() != clientPort {
			t.Errorf("downstream_remote_address %v, want 127.0.0.1:%d", got, clientPort)
		}
		if got := c.GetDownstreamLocalAddress().GetSocketAddress(); net.JoinHostPort(got.GetAddress(), fmt.Sprint(got.GetPortValue())) != addr {
			t.Errorf("downstream_local_address %v, want %s", got, addr)
		}
		if st := c.GetStartTime().AsTime(); time.Since(st) > time.Minute || time.Since(st) < 0 {
			t.Errorf("start_time %v", st)
		}
		if c.GetDuration() == nil || c.GetDuration().AsDuration() <= 0 {
			t.Errorf("duration %v", c.GetDuration())
		}
		if c.GetAccessLogType() != accesslogdata.AccessLogType_TcpConnectionEnd {
			t.Errorf("access_log_type %v", c.GetAccessLogType())
		}
	}

	t.Run("allowed peer", func(t *testing.T) {
		c, cport := mtlsClient(t, addr, &frontend.TLS)
		got, err := roundTrip(c, "hello")
		c.Close()
		if err != nil || got != "hellobye" {
			t.Fatalf("got %q, %v", got, err)
		}
		e := entry(cport)
		checkCommon(t, e, cport)
		c0 := e.GetCommonProperties()
		if e.GetConnectionProperties().GetReceivedBytes() != 5 || e.GetConnectionProperties().GetSentBytes() != 8 {
			t.Errorf("connection_properties %v, want received 5, sent 8", e.GetConnectionProperties())
		}
		tp := c0.GetTlsProperties()
		if tp.GetTlsVersion() != accesslogdata.TLSProperties_TLSv1_3 {
			t.Errorf("tls_version %v", tp.GetTlsVersion())
		}
		if got := uriSANs(tp.GetPeerCertificateProperties()); len(got) != 1 || got[0] != frontendID {
			t.Errorf("peer URI SANs %v, want %s", got, frontendID)
		}
		if got := uriSANs(tp.GetLocalCertificateProperties()); len(got) != 1 || got[0] != backendID {
			t.Errorf("local URI SANs %v, want %s", got, backendID)
		}
		if got := c0.GetUpstreamRemoteAddress().GetSocketAddress(); got.GetAddress() != ip || got.GetPortValue() != port {
			t.Errorf("upstream_remote_address %v, want %s:%d", got, ip, port)
		}
		if c0.GetUpstreamLocalAddress().GetSocketAddress().GetPortValue() == 0 {
			t.Errorf("upstream_local_address %v", c0.GetUpstreamLocalAddress())
		}
		if c0.GetUpstreamCluster() != "echo" || c0.GetConnectionTerminationDetails() != "" || c0.GetDownstreamTransportFailureReason() != "" ||
			c0.GetResponseFlags() != nil {
			t.Errorf("cluster %q, termination %q, transport failure %q, flags %v: want echo and nothing else", c0.GetUpstreamCluster(),
				c0.GetConnectionTerminationDetails(), c0.GetDownstreamTransportFailureReason(), c0.GetResponseFlags())
		}
		le := env.als.WaitEntry(time.Second, pt.TCPFrom(cport))
		if le.LogName != logName || le.Node != "node-b" {
			t.Errorf("identifier node %q log %q", le.Node, le.LogName)
		}
	})

	for _, tc := range []struct {
		name   string
		cert   *tls.Certificate
		reason string
	}{
		{"expired certificate", &expired.TLS, ReasonExpired},
		{"unknown CA", &unknownCA.TLS, ReasonUnknownCA},
		{"no client certificate", nil, ReasonMalformed},
	} {
		t.Run(tc.name, func(t *testing.T) {
			before := echo.accepted.Load()
			c, cport := mtlsClient(t, addr, tc.cert)
			if !closedByProxy(t, c) {
				t.Error("the connection passed")
			}
			e := entry(cport)
			checkCommon(t, e, cport)
			c0 := e.GetCommonProperties()
			if got := c0.GetDownstreamTransportFailureReason(); got != tc.reason {
				t.Errorf("downstream_transport_failure_reason %q, want %q", got, tc.reason)
			}
			if c0.GetTlsProperties() != nil || c0.GetUpstreamRemoteAddress() != nil || e.GetConnectionProperties().GetReceivedBytes() != 0 {
				t.Errorf("a refused handshake's entry has TLS properties, an upstream or bytes: %v", e)
			}
			if echo.accepted.Load() != before {
				t.Error("the refused connection reached the upstream")
			}
			waitFor(t, 5*time.Second, "stdout line", func() bool {
				return strings.Contains(env.stdout.String(), fmt.Sprintf(`"downstream_transport_failure_reason":%q`, tc.reason))
			})
		})
	}

	t.Run("RBAC denies the peer", func(t *testing.T) {
		before := echo.accepted.Load()
		c, cport := mtlsClient(t, addr, &other.TLS)
		if !closedByProxy(t, c) {
			t.Error("a peer the policy does not allow passed")
		}
		e := entry(cport)
		checkCommon(t, e, cport)
		c0 := e.GetCommonProperties()
		if got := c0.GetConnectionTerminationDetails(); got != "rbac_access_denied_matched_policy[none]" {
			t.Errorf("connection_termination_details %q", got)
		}
		if got := uriSANs(c0.GetTlsProperties().GetPeerCertificateProperties()); len(got) != 1 || got[0] != other.ID {
			t.Errorf("peer URI SANs %v, want %s", got, other.ID)
		}
		if c0.GetDownstreamTransportFailureReason() != "" || c0.GetUpstreamRemoteAddress() != nil {
			t.Errorf("denied entry: %v", c0)
		}
		if echo.accepted.Load() != before {
			t.Error("the denied connection reached the upstream")
		}
		waitFor(t, 5*time.Second, "stdout line", func() bool {
			return strings.Contains(env.stdout.String(), `"connection_termination_details":"rbac_access_denied_matched_policy[none]"`)
		})
	})

	t.Run("upstream down", func(t *testing.T) {
		dead := freePort(t)
		env.push("node-b", res(dead))
		c, cport := mtlsClient(t, addr, &frontend.TLS)
		if !closedByProxy(t, c) {
			t.Error("the connection passed with no upstream")
		}
		e := entry(cport)
		checkCommon(t, e, cport)
		c0 := e.GetCommonProperties()
		if !c0.GetResponseFlags().GetUpstreamConnectionFailure() {
			t.Errorf("response_flags %v, want UF", c0.GetResponseFlags())
		}
		if c0.GetUpstreamTransportFailureReason() == "" {
			t.Error("no upstream_transport_failure_reason")
		}
		if got := c0.GetUpstreamRemoteAddress().GetSocketAddress(); got.GetPortValue() != dead {
			t.Errorf("upstream_remote_address %v, want port %d", got, dead)
		}
		if got := uriSANs(c0.GetTlsProperties().GetPeerCertificateProperties()); len(got) != 1 || got[0] != frontendID {
			t.Errorf("peer URI SANs %v", got)
		}
		waitFor(t, 5*time.Second, "stdout line", func() bool { return strings.Contains(env.stdout.String(), `"response_flags":"UF"`) })
	})
}

// TestNetworkRBACBeforeHCM: a chain [network RBAC, HCM] checks the
// connection once, after the TLS handshake and before any request: a
// denied peer's connection is closed without an HTTP response; an
// allowed one is served. A policy change applies to the next request of
// a keep-alive connection.
func TestNetworkRBACBeforeHCM(t *testing.T) {
	env := startL4Env(t)
	be := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { _, _ = io.WriteString(w, "ok") }))
	t.Cleanup(be.Close)
	beAP := be.Listener.Addr().(*net.TCPAddr).AddrPort()
	ca := pt.NewCA(t, meshTD)
	frontend, backend, other := ca.SVID(t, "shop", "frontend"), ca.SVID(t, "shop", "backend"), ca.SVID(t, "shop", "other")
	logs := &syncBuffer{}
	p := env.proxy("node-b", logs)
	lport := freePort(t)
	res := func(allowed string) map[resource.Type][]types.Resource {
		in := pt.TCPListener("in", "127.0.0.1", lport, nil, pt.TLSInspector)
		in.FilterChains = []*listener.FilterChain{{Name: "mtls", FilterChainMatch: &listener.FilterChainMatch{TransportProtocol: "tls"},
			TransportSocket: pt.DownstreamTLS(backendID, "bundle", nil),
			Filters: []*listener.Filter{
				pt.NetworkRBACFilter("mtls.", rbac.RBAC_ALLOW, map[string]*rbac.Policy{"peer": pt.PeerPolicy(pt.Authenticated(pt.Exact(allowed)))}),
				pt.HCMFilter(pt.HCM("r", nil)),
			}}}
		return map[resource.Type][]types.Resource{
			resource.ListenerType: {in},
			resource.RouteType:    {pt.RouteConfig("r", "be")},
			resource.ClusterType:  {pt.StaticCluster("be", pt.SocketAddress(beAP.Addr().String(), uint32(beAP.Port())))},
			resource.SecretType:   {pt.SVIDSecret(backendID, backend), pt.SPIFFESecret("bundle", map[string][]byte{meshTD: ca.CertPEM})},
		}
	}
	env.push("node-b", res(frontendID))
	addr := fmt.Sprintf("127.0.0.1:%d", lport)
	waitFor(t, 5*time.Second, "listener", func() bool { _, ok := p.ListenerAddr("in"); return ok })
	get := func(c *tls.Conn, br *bufio.Reader) (*http.Response, error) {
		_ = c.SetDeadline(time.Now().Add(5 * time.Second))
		if _, err := io.WriteString(c, "GET /x HTTP/1.1\r\nHost: backend\r\n\r\n"); err != nil {
			return nil, err
		}
		resp, err := http.ReadResponse(br, nil)
		if err != nil {
			return nil, err
		}
		_, _ = io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		return resp, nil
	}

	t.Run("allowed peer gets 200", func(t *testing.T) {
		c, _ := mtlsClient(t, addr, &frontend.TLS, "http/1.1")
		defer c.Close()
		resp, err := get(c, bufio.NewReader(c))
		if err != nil || resp.StatusCode != http.StatusOK {
			t.Fatalf("%v, %v", resp, err)
		}
	})
	t.Run("denied peer: closed without a response", func(t *testing.T) {
		c, _ := mtlsClient(t, addr, &other.TLS, "http/1.1")
		defer c.Close()
		_ = c.SetDeadline(time.Now().Add(5 * time.Second))
		_, _ = io.WriteString(c, "GET /x HTTP/1.1\r\nHost: backend\r\n\r\n")
		b, err := io.ReadAll(c)
		if len(b) != 0 || errors.Is(err, os.ErrDeadlineExceeded) {
			t.Fatalf("read %q, %v: want the connection closed without a byte", b, err)
		}
		waitFor(t, 5*time.Second, "denied stat and log", func() bool {
			return strings.Contains(adminGet(t, p, "/stats"), `nodemesh_proxy_network_rbac_total{listener="in",stat="denied",stat_prefix="mtls."} 1`) &&
				strings.Contains(logs.String(), "rbac_access_denied_matched_policy[none]")
		})
	})
	t.Run("revocation reaches a keep-alive connection", func(t *testing.T) {
		c, _ := mtlsClient(t, addr, &frontend.TLS, "http/1.1")
		defer c.Close()
		br := bufio.NewReader(c)
		if resp, err := get(c, br); err != nil || resp.StatusCode != http.StatusOK {
			t.Fatalf("%v, %v", resp, err)
		}
		env.push("node-b", res(other.ID))
		if resp, err := get(c, br); err == nil {
			t.Fatalf("after the policy no longer allows the peer: %d, want the connection reset", resp.StatusCode)
		}
	})
}
