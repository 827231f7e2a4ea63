package xds_test

import (
	"context"
	"crypto/tls"
	"io"
	"net"
	"net/netip"
	"os"
	"testing"
	"time"

	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	rbacv3 "github.com/envoyproxy/go-control-plane/envoy/config/rbac/v3"
	accesslogdatav3 "github.com/envoyproxy/go-control-plane/envoy/data/accesslog/v3"
	"github.com/envoyproxy/go-control-plane/pkg/cache/types"
	"github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/timestamppb"

	nmproxy "github.com/nodemesh/nodemesh/proxy"
	pt "github.com/nodemesh/nodemesh/proxy/proxytest"
	"github.com/nodemesh/nodemesh/xds"
)

// TCP entries as upstream Envoy's tcp_grpc logger sends them decode into
// connection events.
func TestDecodeConnEvent(t *testing.T) {
	start := time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)
	san := func(uri string) *accesslogdatav3.TLSProperties_CertificateProperties {
		return &accesslogdatav3.TLSProperties_CertificateProperties{SubjectAltName: []*accesslogdatav3.TLSProperties_CertificateProperties_SubjectAltName{
			{San: &accesslogdatav3.TLSProperties_CertificateProperties_SubjectAltName_Uri{Uri: uri}}}}
	}
	entry := func(tweak func(c *accesslogdatav3.AccessLogCommon)) *accesslogdatav3.TCPAccessLogEntry {
		c := &accesslogdatav3.AccessLogCommon{
			DownstreamRemoteAddress: sockAddr("10.0.1.10", 40000),
			DownstreamLocalAddress:  sockAddr("::ffff:10.0.2.10", 15008),
			StartTime:               timestamppb.New(start),
			Duration:                durationpb.New(1500 * time.Millisecond),
			AccessLogType:           accesslogdatav3.AccessLogType_TcpConnectionEnd,
		}
		if tweak != nil {
			tweak(c)
		}
		return &accesslogdatav3.TCPAccessLogEntry{CommonProperties: c,
			ConnectionProperties: &accesslogdatav3.ConnectionProperties{ReceivedBytes: 11, SentBytes: 22}}
	}
	src, dst := netip.MustParseAddrPort("10.0.1.10:40000"), netip.MustParseAddrPort("10.0.2.10:15008")
	base := xds.ConnEvent{Time: start, Node: "node-1", Source: src, Destination: dst, BytesReceived: 11, BytesSent: 22, Duration: 1500 * time.Millisecond}
	with := func(f func(*xds.ConnEvent)) xds.ConnEvent {
		ev := base
		f(&ev)
		return ev
	}
	for _, tc := range []struct {
		name, log string
		e         *accesslogdatav3.TCPAccessLogEntry
		want      xds.ConnEvent
	}{
		{"allowed mTLS", xds.InboundMTLSAccessLogName, entry(func(c *accesslogdatav3.AccessLogCommon) {
			c.TlsProperties = &accesslogdatav3.TLSProperties{TlsVersion: accesslogdatav3.TLSProperties_TLSv1_3,
				PeerCertificateProperties: san("spiffe://td/ns/a/sa/frontend"), LocalCertificateProperties: san("spiffe://td/ns/b/sa/backend")}
			c.UpstreamRemoteAddress = sockAddr("10.0.2.10", 8080)
		}), with(func(ev *xds.ConnEvent) {
			ev.Direction, ev.Verdict = xds.DirectionInbound, xds.VerdictAllowed
			ev.PeerID, ev.LocalID, ev.TLSVersion = "spiffe://td/ns/a/sa/frontend", "spiffe://td/ns/b/sa/backend", "TLSv1.3"
			ev.Upstream = netip.MustParseAddrPort("10.0.2.10:8080")
		})},
		{"handshake refused", xds.InboundMTLSAccessLogName, entry(func(c *accesslogdatav3.AccessLogCommon) {
			c.DownstreamTransportFailureReason = "svid-expired"
		}), with(func(ev *xds.ConnEvent) {
			ev.Direction, ev.Verdict, ev.Reason = xds.DirectionInbound, xds.VerdictDenied, "svid-expired"
		})},
		{"rbac none", xds.OutboundMTLSAccessLogName, entry(func(c *accesslogdatav3.AccessLogCommon) {
			c.ConnectionTerminationDetails = "rbac_access_denied_matched_policy[none]"
		}), with(func(ev *xds.ConnEvent) {
			ev.Direction, ev.Verdict, ev.Reason = xds.DirectionOutbound, xds.VerdictDenied, xds.ReasonRBACDenied
			ev.Details = "rbac_access_denied_matched_policy[none]"
		})},
		{"rbac deny policy", "other-log", entry(func(c *accesslogdatav3.AccessLogCommon) {
			c.ConnectionTerminationDetails = "rbac_access_denied_matched_policy[deny-db]"
		}), with(func(ev *xds.ConnEvent) {
			ev.Verdict, ev.Reason, ev.Policy = xds.VerdictDenied, xds.ReasonRBACDenied, "deny-db"
			ev.Details = "rbac_access_denied_matched_policy[deny-db]"
		})},
		{"other termination", xds.InboundAccessLogName, entry(func(c *accesslogdatav3.AccessLogCommon) {
			c.ConnectionTerminationDetails = "transport socket timeout"
		}), with(func(ev *xds.ConnEvent) {
			ev.Direction, ev.Verdict, ev.Reason, ev.Details = xds.DirectionInbound, xds.VerdictAllowed, "transport socket timeout", "transport socket timeout"
		})},
		{"upstream connect failure", xds.InboundMTLSAccessLogName, entry(func(c *accesslogdatav3.AccessLogCommon) {
			c.ResponseFlags = &accesslogdatav3.ResponseFlags{UpstreamConnectionFailure: true}
			c.UpstreamTransportFailureReason = "delayed connect error: 111"
			c.UpstreamRemoteAddress = sockAddr("10.0.2.10", 8080)
		}), with(func(ev *xds.ConnEvent) {
			ev.Direction, ev.Verdict, ev.Reason = xds.DirectionInbound, xds.VerdictAllowed, xds.ReasonUpstreamConnectFailed
			ev.UpstreamFailure, ev.Upstream = "delayed connect error: 111", netip.MustParseAddrPort("10.0.2.10:8080")
		})},
		{"no cluster", xds.InboundMTLSAccessLogName, entry(func(c *accesslogdatav3.AccessLogCommon) {
			c.ResponseFlags = &accesslogdatav3.ResponseFlags{NoClusterFound: true}
		}), with(func(ev *xds.ConnEvent) {
			ev.Direction, ev.Verdict, ev.Reason = xds.DirectionInbound, xds.VerdictAllowed, xds.ReasonNoCluster
		})},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := xds.DecodeConnEvent("node-1", tc.log, tc.e); got != tc.want {
				t.Errorf("got  %+v\nwant %+v", got, tc.want)
			}
		})
	}
}

// TestConnEventsEndToEnd: nodemesh-proxy's tcp_proxy, with a tcp_grpc
// logger named InboundMTLSAccessLogName pointed at the agent's xDS
// server, reports each connection of its mTLS chain as a ConnEvent:
// allowed, refused by the TLS handshake, denied by the network RBAC, and
// failed upstream.
func TestConnEventsEndToEnd(t *testing.T) {
	dir, err := os.MkdirTemp("", "nmxds") // short: unix socket paths are limited
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	agent := startAgent(t, dir)
	events := make(chan xds.ConnEvent, 100)
	agent.s.OnConnEvent(func(ev xds.ConnEvent) { events <- ev })

	echo, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { echo.Close() })
	go func() {
		for {
			c, err := echo.Accept()
			if err != nil {
				return
			}
			go func() { defer c.Close(); _, _ = io.Copy(c, c) }()
		}
	}()
	echoAP := echo.Addr().(*net.TCPAddr).AddrPort()

	const td = "nodemesh.test"
	ca := pt.NewCA(t, td)
	frontend, backend, other := ca.SVID(t, "shop", "frontend"), ca.SVID(t, "shop", "backend"), ca.SVID(t, "shop", "other")
	expired := ca.SVID(t, "shop", "frontend", pt.Expired)
	in := pt.TCPListener("in", "127.0.0.1", 0, nil, pt.TLSInspector)
	in.FilterChains = []*listenerv3.FilterChain{{Name: "mtls", FilterChainMatch: &listenerv3.FilterChainMatch{TransportProtocol: "tls"},
		TransportSocket: pt.DownstreamTLS(backend.ID, "bundle", nil),
		Filters: []*listenerv3.Filter{
			pt.NetworkRBACFilter("mtls.", rbacv3.RBAC_ALLOW, map[string]*rbacv3.Policy{"frontend": pt.PeerPolicy(pt.Authenticated(pt.Exact(frontend.ID)))}),
			pt.TCPProxyFilter("in", "echo", pt.WithTCPAccessLogs(pt.TCPGRPCAccessLog(xds.AccessLogClusterName, xds.InboundMTLSAccessLogName,
				pt.FlushInterval(20*time.Millisecond)))),
		}}}
	res := func(port uint16) map[resource.Type][]types.Resource {
		return map[resource.Type][]types.Resource{
			resource.ListenerType: {in},
			resource.ClusterType:  {pt.StaticCluster("echo", sockAddr("127.0.0.1", uint32(port)))},
			resource.SecretType:   {pt.SVIDSecret(backend.ID, backend), pt.SPIFFESecret("bundle", map[string][]byte{td: ca.CertPEM})},
		}
	}

	cp := pt.Start(t, dir)
	p := nmproxy.New(nmproxy.Config{NodeID: "node-2", XDSAddress: cp.Address(), AccessLog: io.Discard,
		GRPCClusters: map[string]string{xds.AccessLogClusterName: "unix://" + agent.path},
		BackoffMin:   20 * time.Millisecond, BackoffMax: 200 * time.Millisecond}, nil)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- p.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Error(err)
		}
	})
	cp.Set("node-2", "v1", res(echoAP.Port()))
	cp.WaitRequest(5*time.Second, pt.IsACK(resource.ListenerType, "v1"))
	var addr netip.AddrPort
	for i := 0; ; i++ {
		var ok bool
		if addr, ok = p.ListenerAddr("in"); ok {
			break
		}
		if i > 500 {
			t.Fatal("listener never bound")
		}
		time.Sleep(10 * time.Millisecond)
	}

	// conn runs one connection with cert, writing msg and reading until
	// the proxy closes (the echo answers, a refused connection ends at
	// once); it returns the client's address.
	conn := func(cert *tls.Certificate, msg string) netip.AddrPort {
		t.Helper()
		raw, err := net.DialTimeout("tcp", addr.String(), 5*time.Second)
		if err != nil {
			t.Fatal(err)
		}
		c := tls.Client(raw, &tls.Config{InsecureSkipVerify: true, MinVersion: tls.VersionTLS13, Certificates: []tls.Certificate{*cert}}) //nolint:gosec // test client
		_ = c.SetDeadline(time.Now().Add(5 * time.Second))
		if _, err := io.WriteString(c, msg); err == nil {
			_, _ = io.ReadFull(c, make([]byte, len(msg)))
		}
		c.Close()
		return raw.LocalAddr().(*net.TCPAddr).AddrPort()
	}
	wait := func(src netip.AddrPort) xds.ConnEvent {
		t.Helper()
		deadline := time.After(10 * time.Second)
		for {
			select {
			case ev := <-events:
				if ev.Source == src {
					return ev
				}
			case <-deadline:
				t.Fatalf("no connection event from %s", src)
			}
		}
	}

	t.Run("allowed", func(t *testing.T) {
		src := conn(&frontend.TLS, "hello")
		ev := wait(src)
		if ev.Node != "node-2" || ev.Direction != xds.DirectionInbound || ev.Verdict != xds.VerdictAllowed || ev.Reason != "" ||
			ev.PeerID != frontend.ID || ev.LocalID != backend.ID || ev.TLSVersion != "TLSv1.3" ||
			ev.BytesReceived != 5 || ev.BytesSent != 5 || ev.Destination != addr || ev.Upstream != echoAP ||
			ev.Duration <= 0 || time.Since(ev.Time) > time.Minute {
			t.Errorf("event %+v", ev)
		}
	})
	t.Run("expired certificate", func(t *testing.T) {
		ev := wait(conn(&expired.TLS, "hello"))
		if ev.Verdict != xds.VerdictDenied || ev.Reason != nmproxy.ReasonExpired || ev.PeerID != "" || ev.BytesReceived != 0 {
			t.Errorf("event %+v", ev)
		}
	})
	t.Run("RBAC denied", func(t *testing.T) {
		ev := wait(conn(&other.TLS, "hello"))
		if ev.Verdict != xds.VerdictDenied || ev.Reason != xds.ReasonRBACDenied || ev.Policy != "" || ev.PeerID != other.ID ||
			ev.Details != "rbac_access_denied_matched_policy[none]" {
			t.Errorf("event %+v", ev)
		}
	})
	t.Run("upstream down", func(t *testing.T) {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		dead := ln.Addr().(*net.TCPAddr).AddrPort()
		ln.Close()
		cp.Set("node-2", "v2", res(dead.Port()))
		cp.WaitRequest(5*time.Second, pt.IsACK(resource.ClusterType, "v2"))
		ev := wait(conn(&frontend.TLS, "hello"))
		if ev.Verdict != xds.VerdictAllowed || ev.Reason != xds.ReasonUpstreamConnectFailed || ev.UpstreamFailure == "" || ev.Upstream != dead {
			t.Errorf("event %+v", ev)
		}
	})
}
