package xds_test

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"net/http/httptrace"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"testing"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	accesslogdatav3 "github.com/envoyproxy/go-control-plane/envoy/data/accesslog/v3"
	"github.com/envoyproxy/go-control-plane/pkg/cache/types"
	"github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/protobuf/types/known/structpb"
	"google.golang.org/protobuf/types/known/timestamppb"
	"google.golang.org/protobuf/types/known/wrapperspb"

	nmproxy "github.com/nodemesh/nodemesh/proxy"
	pt "github.com/nodemesh/nodemesh/proxy/proxytest"
	"github.com/nodemesh/nodemesh/xds"
)

func sockAddr(ip string, port uint32) *corev3.Address {
	return &corev3.Address{Address: &corev3.Address_SocketAddress{SocketAddress: &corev3.SocketAddress{
		Address: ip, PortSpecifier: &corev3.SocketAddress_PortValue{PortValue: port}}}}
}

func rbacMetadata(kv ...string) *corev3.Metadata {
	f := map[string]*structpb.Value{}
	for i := 0; i < len(kv); i += 2 {
		f[kv[i]] = structpb.NewStringValue(kv[i+1])
	}
	return &corev3.Metadata{FilterMetadata: map[string]*structpb.Struct{"envoy.filters.http.rbac": {Fields: f}}}
}

// Entries as upstream Envoy sends them decode into events.
func TestDecodeL7Event(t *testing.T) {
	start := time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)
	entry := func(md *corev3.Metadata, code uint32, details string) *accesslogdatav3.HTTPAccessLogEntry {
		return &accesslogdatav3.HTTPAccessLogEntry{
			CommonProperties: &accesslogdatav3.AccessLogCommon{
				DownstreamRemoteAddress: sockAddr("10.0.1.10", 40000),
				DownstreamLocalAddress:  sockAddr("::ffff:10.0.2.10", 80),
				StartTime:               timestamppb.New(start),
				Metadata:                md,
			},
			ProtocolVersion: accesslogdatav3.HTTPAccessLogEntry_HTTP2,
			Request:         &accesslogdatav3.HTTPRequestProperties{RequestMethod: corev3.RequestMethod_GET, Path: "/userdata/42?x=1", Authority: "backend"},
			Response:        &accesslogdatav3.HTTPResponseProperties{ResponseCode: wrapperspb.UInt32(code), ResponseCodeDetails: details},
		}
	}
	base := xds.L7Event{Time: start, Node: "node-2", Direction: xds.DirectionInbound,
		Src: netip.MustParseAddrPort("10.0.1.10:40000"), Dst: netip.MustParseAddrPort("10.0.2.10:80"),
		Method: "GET", Path: "/userdata/42?x=1", Authority: "backend", Protocol: "HTTP/2"}
	with := func(f func(*xds.L7Event)) xds.L7Event { e := base; f(&e); return e }
	for _, tc := range []struct {
		name    string
		logName string
		e       *accesslogdatav3.HTTPAccessLogEntry
		want    xds.L7Event
	}{
		{"allowed", xds.InboundAccessLogName,
			entry(rbacMetadata("enforced_engine_result", "allowed", "enforced_effective_policy_id", "http-rules-1"), 200, "via_upstream"),
			with(func(e *xds.L7Event) {
				e.Status, e.Verdict, e.Rule, e.Details = 200, xds.VerdictAllowed, "http-rules-1", "via_upstream"
			})},
		{"denied", xds.InboundAccessLogName,
			entry(rbacMetadata("enforced_engine_result", "denied"), 403, "rbac_access_denied_matched_policy[none]"),
			with(func(e *xds.L7Event) {
				e.Status, e.Verdict, e.Details = 403, xds.VerdictDenied, "rbac_access_denied_matched_policy[none]"
			})},
		{"denied by a DENY policy, details only (older Envoy)", xds.OutboundAccessLogName,
			entry(nil, 403, "rbac_access_denied_matched_policy[block-admin]"),
			with(func(e *xds.L7Event) {
				e.Direction, e.Status, e.Verdict, e.Rule, e.Details = xds.DirectionOutbound, 403, xds.VerdictDenied, "block-admin", "rbac_access_denied_matched_policy[block-admin]"
			})},
		{"refused before RBAC, another log", "other",
			entry(nil, 431, "request_headers_too_large"),
			with(func(e *xds.L7Event) { e.Direction, e.Status, e.Details = "", 431, "request_headers_too_large" })},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := xds.DecodeL7Event("node-2", tc.logName, tc.e); got != tc.want {
				t.Errorf("got  %+v\nwant %+v", got, tc.want)
			}
		})
	}
}

// loopbackWorld has the frontend and backend pods on loopback addresses,
// so that a test can be each of them without privileges.
const loopbackWorld = `
apiVersion: v1
kind: List
items:
- {apiVersion: v1, kind: Namespace, metadata: {name: default, labels: {kubernetes.io/metadata.name: default}}}
- {apiVersion: v1, kind: Node, metadata: {name: node-1}, status: {addresses: [{type: InternalIP, address: 192.168.10.1}]}}
- {apiVersion: v1, kind: Node, metadata: {name: node-2}, status: {addresses: [{type: InternalIP, address: 192.168.10.2}]}}
- apiVersion: v1
  kind: Pod
  metadata: {name: frontend, namespace: default, labels: {app: frontend}}
  spec: {nodeName: node-1, containers: [{name: web}]}
  status: {podIP: 127.0.10.10}
- apiVersion: v1
  kind: Pod
  metadata: {name: other, namespace: default, labels: {app: other}}
  spec: {nodeName: node-1, containers: [{name: c}]}
  status: {podIP: 127.0.10.11}
- apiVersion: v1
  kind: Pod
  metadata: {name: backend, namespace: default, labels: {app: backend}}
  spec: {nodeName: node-2, containers: [{name: api, ports: [{name: http, containerPort: 80}]}]}
  status: {podIP: 127.0.20.10}
`

// alsAgent is an xds.Server serving on a unix socket, restartable.
type alsAgent struct {
	t      *testing.T
	s      *xds.Server
	path   string
	events chan xds.L7Event
	cancel context.CancelFunc
	done   chan error
}

func startAgent(t *testing.T, dir string) *alsAgent {
	a := &alsAgent{t: t, s: xds.NewServer(slog.New(slog.DiscardHandler), prometheus.NewRegistry()),
		path: filepath.Join(dir, "agent.sock"), events: make(chan xds.L7Event, 10000)}
	a.s.OnL7Event(func(e xds.L7Event) { a.events <- e })
	a.start()
	t.Cleanup(a.stop)
	return a
}

func (a *alsAgent) start() {
	ctx, cancel := context.WithCancel(context.Background())
	a.cancel, a.done = cancel, make(chan error, 1)
	go func() { a.done <- a.s.Serve(ctx, a.path) }()
	for i := 0; ; i++ {
		if fi, err := os.Stat(a.path); err == nil && fi.Mode().Type() == os.ModeSocket {
			return
		}
		if i > 500 {
			a.t.Fatal("xds socket never appeared")
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func (a *alsAgent) stop() {
	if a.cancel == nil {
		return
	}
	a.cancel()
	if err := <-a.done; err != nil {
		a.t.Error(err)
	}
	a.cancel = nil
}

// wait waits for the events of paths (entries are flushed every second).
func (a *alsAgent) wait(paths ...string) map[string]xds.L7Event {
	a.t.Helper()
	got := map[string]xds.L7Event{}
	deadline := time.After(10 * time.Second)
	for len(got) < len(paths) {
		select {
		case e := <-a.events:
			if slices.Contains(paths, e.Path) {
				got[e.Path] = e
			}
		case <-deadline:
			a.t.Fatalf("%d of the events of %v within 10s", len(got), paths)
		}
	}
	return got
}

// client is a keep-alive HTTP/1.1 client bound to a source address.
func client(src string) *http.Client {
	d := &net.Dialer{Timeout: 5 * time.Second, LocalAddr: &net.TCPAddr{IP: net.ParseIP(src)}}
	return &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{DialContext: d.DialContext}}
}

func fetch(t *testing.T, c *http.Client, url string) (int, netip.AddrPort) {
	t.Helper()
	var local netip.AddrPort
	req, _ := http.NewRequest("GET", url, nil)
	req = req.WithContext(withLocal(req.Context(), &local))
	resp, err := c.Do(req)
	if err != nil {
		t.Fatalf("GET %s: %v", url, err)
	}
	_, _ = io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	return resp.StatusCode, local
}

// TestAccessLogEndToEnd: the HTTP connection manager Build generates —
// RBAC and the http_grpc access log — served by a go-control-plane ADS
// server to nodemesh-proxy on a loopback listener, with the agent's
// access log service (xds.Server) on its socket: allowed and denied
// requests become L7Events with the request's fields, the verdict and the
// generated policy's name; while the agent is away requests are served,
// and when it is back the events (queued meanwhile) arrive.
func TestAccessLogEndToEnd(t *testing.T) {
	e := engine(t, loopbackWorld, seedPolicy)
	r := build(t, e, "node-2")
	in := listener(r, xds.InboundListenerName)
	if in == nil || len(in.GetFilterChains()) != 1 {
		t.Fatalf("want one inbound chain: %v", in)
	}
	policyName := ""
	for n := range rbacOf(t, in.GetFilterChains()[0]).GetPolicies() {
		policyName = n
	}
	be := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { fmt.Fprint(w, "ok") }))
	t.Cleanup(be.Close)
	beAddr := netip.MustParseAddrPort(be.Listener.Addr().String())

	// The generated chain (connection manager as generated) on a
	// loopback listener, its cluster pointed at the backend: no
	// transparent socket, no mark, no privileges.
	chain := in.GetFilterChains()[0]
	chain.FilterChainMatch = nil
	lo := &listenerv3.Listener{Name: "loopback", Address: sockAddr("127.0.0.1", 0), FilterChains: []*listenerv3.FilterChain{chain}}
	static := pt.StaticCluster(xds.InboundClusterName, sockAddr(beAddr.Addr().String(), uint32(beAddr.Port())))
	static.TypedExtensionProtocolOptions = clusterByName(r, xds.InboundClusterName).GetTypedExtensionProtocolOptions()

	dir, err := os.MkdirTemp("", "nmxds") // short: unix socket paths are limited
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	agent := startAgent(t, dir)
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
	cp.Set("node-2", "v1", map[resource.Type][]types.Resource{
		resource.ListenerType: {lo}, resource.RouteType: {r.Routes[0]}, resource.ClusterType: {static},
	})
	cp.WaitRequest(5*time.Second, pt.IsACK(resource.ListenerType, "v1"))
	var addr netip.AddrPort
	for i := 0; ; i++ {
		var ok bool
		if addr, ok = p.ListenerAddr("loopback"); ok {
			break
		}
		if i > 500 {
			t.Fatal("listener never bound")
		}
		time.Sleep(10 * time.Millisecond)
	}
	url := "http://" + addr.String()
	frontend, other := client("127.0.10.10"), client("127.0.10.11")

	want := func(ev xds.L7Event, src netip.AddrPort, status int, verdict, rule string) {
		t.Helper()
		if ev.Node != "node-2" || ev.Direction != xds.DirectionInbound || ev.Src != src || ev.Dst != addr ||
			ev.Method != "GET" || ev.Authority != addr.String() || ev.Protocol != "HTTP/1.1" || ev.Status != status ||
			ev.Verdict != verdict || ev.Rule != rule || time.Since(ev.Time) > time.Minute || ev.Duration <= 0 {
			t.Errorf("event %+v\nwant from %s, status %d, %s by %q", ev, src, status, verdict, rule)
		}
	}
	code, src1 := fetch(t, frontend, url+"/userdata/42")
	if code != 200 {
		t.Fatalf("frontend GET /userdata/42 = %d", code)
	}
	code, src2 := fetch(t, frontend, url+"/userdata/abc")
	if code != 403 {
		t.Fatalf("frontend GET /userdata/abc = %d", code)
	}
	code, src3 := fetch(t, other, url+"/userdata/42?from=other")
	if code != 403 {
		t.Fatalf("other GET /userdata/42 = %d", code)
	}
	evs := agent.wait("/userdata/42", "/userdata/abc", "/userdata/42?from=other")
	want(evs["/userdata/42"], src1, 200, xds.VerdictAllowed, policyName)
	want(evs["/userdata/abc"], src2, 403, xds.VerdictDenied, "")
	want(evs["/userdata/42?from=other"], src3, 403, xds.VerdictDenied, "")
	if d := evs["/userdata/42?from=other"].Details; d != "rbac_access_denied_matched_policy[none]" {
		t.Errorf("details %q", d)
	}
	if d := evs["/userdata/42"].Details; d != "via_upstream" {
		t.Errorf("details %q", d)
	}

	// The agent goes away: requests are served; their events wait.
	agent.stop()
	var gone []string
	for i := range 20 {
		path := fmt.Sprintf("/userdata/%d", 100+i)
		if code, _ := fetch(t, frontend, url+path); code != 200 {
			t.Fatalf("without the agent: GET %s = %d", path, code)
		}
		gone = append(gone, path)
	}
	agent.start()
	for path, e := range agent.wait(gone...) {
		if e.Verdict != xds.VerdictAllowed || e.Status != 200 {
			t.Errorf("%s: %+v", path, e)
		}
	}
	if code, _ := fetch(t, frontend, url+"/userdata/7"); code != 200 {
		t.Fatal(code)
	}
	agent.wait("/userdata/7")
	t.Logf("events: allowed and denied as generated (policy %s); %d requests served while the agent was away, their events delivered when it came back", policyName, len(gone))
}

// withLocal records the local address of the connection a request uses.
func withLocal(ctx context.Context, local *netip.AddrPort) context.Context {
	return httptrace.WithClientTrace(ctx, &httptrace.ClientTrace{GotConn: func(ci httptrace.GotConnInfo) {
		*local = netip.MustParseAddrPort(ci.Conn.LocalAddr().String())
	}})
}
