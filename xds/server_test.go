package xds_test

import (
	"bytes"
	"context"
	"errors"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	adminv3 "github.com/envoyproxy/go-control-plane/envoy/admin/v3"
	bootstrapv3 "github.com/envoyproxy/go-control-plane/envoy/config/bootstrap/v3"
	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	hcmv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	discovery "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	"github.com/prometheus/client_golang/prometheus"
	statuspb "google.golang.org/genproto/googleapis/rpc/status"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/types/known/anypb"

	"github.com/nodemesh/nodemesh/xds"
)

// response is a discovery response of either protocol.
type response struct {
	typ, version, nonce string
	resources           []*anypb.Any
	removed             []string
}

// adsClient is one ADS stream speaking as Envoy does.
type adsClient interface {
	subscribe(typ string, names []string) error
	recv() (response, error)
	ack(r response) error
	nack(r response, msg string) error
}

type sotwClient struct {
	s     discovery.AggregatedDiscoveryService_StreamAggregatedResourcesClient
	node  *corev3.Node
	acked map[string]string   // type → last accepted version
	names map[string][]string // type → subscribed names
}

func (c *sotwClient) send(req *discovery.DiscoveryRequest) error {
	req.Node, c.node = c.node, nil // only the first request carries the node
	return c.s.Send(req)
}

func (c *sotwClient) subscribe(typ string, names []string) error {
	c.names[typ] = names
	return c.send(&discovery.DiscoveryRequest{TypeUrl: typ, ResourceNames: names, VersionInfo: c.acked[typ]})
}

func (c *sotwClient) recv() (response, error) {
	r, err := c.s.Recv()
	if err != nil {
		return response{}, err
	}
	return response{typ: r.GetTypeUrl(), version: r.GetVersionInfo(), nonce: r.GetNonce(), resources: r.GetResources()}, nil
}

func (c *sotwClient) ack(r response) error {
	c.acked[r.typ] = r.version
	return c.send(&discovery.DiscoveryRequest{TypeUrl: r.typ, ResourceNames: c.names[r.typ], VersionInfo: r.version, ResponseNonce: r.nonce})
}

func (c *sotwClient) nack(r response, msg string) error {
	return c.send(&discovery.DiscoveryRequest{TypeUrl: r.typ, ResourceNames: c.names[r.typ], VersionInfo: c.acked[r.typ],
		ResponseNonce: r.nonce, ErrorDetail: &statuspb.Status{Code: 3, Message: msg}})
}

type deltaClient struct {
	s    discovery.AggregatedDiscoveryService_DeltaAggregatedResourcesClient
	node *corev3.Node
}

func (c *deltaClient) send(req *discovery.DeltaDiscoveryRequest) error {
	req.Node, c.node = c.node, nil
	return c.s.Send(req)
}

func (c *deltaClient) subscribe(typ string, names []string) error {
	return c.send(&discovery.DeltaDiscoveryRequest{TypeUrl: typ, ResourceNamesSubscribe: names})
}

func (c *deltaClient) recv() (response, error) {
	r, err := c.s.Recv()
	if err != nil {
		return response{}, err
	}
	out := response{typ: r.GetTypeUrl(), version: r.GetSystemVersionInfo(), nonce: r.GetNonce(), removed: r.GetRemovedResources()}
	for _, res := range r.GetResources() {
		out.resources = append(out.resources, res.GetResource())
	}
	return out, nil
}

func (c *deltaClient) ack(r response) error {
	return c.send(&discovery.DeltaDiscoveryRequest{TypeUrl: r.typ, ResponseNonce: r.nonce})
}

func (c *deltaClient) nack(r response, msg string) error {
	return c.send(&discovery.DeltaDiscoveryRequest{TypeUrl: r.typ, ResponseNonce: r.nonce, ErrorDetail: &statuspb.Status{Code: 3, Message: msg}})
}

// proxy is a connected adsClient whose responses arrive on a channel, so
// that a test can also check that none arrives.
type proxy struct {
	adsClient
	in chan received
}

type received struct {
	r   response
	err error
}

func newProxy(c adsClient) *proxy {
	p := &proxy{adsClient: c, in: make(chan received, 16)}
	go func() {
		for {
			r, err := c.recv()
			p.in <- received{r, err}
			if err != nil {
				return
			}
		}
	}()
	return p
}

func (p *proxy) next(t *testing.T) response {
	t.Helper()
	select {
	case x := <-p.in:
		if x.err != nil {
			t.Fatalf("recv: %v", x.err)
		}
		return x.r
	case <-time.After(10 * time.Second):
		t.Fatal("no response within 10s")
	}
	return response{}
}

func (p *proxy) quiet(t *testing.T, d time.Duration) {
	t.Helper()
	select {
	case x := <-p.in:
		t.Fatalf("unexpected response %s version %s (%v)", x.r.typ, x.r.version, x.err)
	case <-time.After(d):
	}
}

// routeNames lists the RDS names of listeners.
func routeNames(t *testing.T, rs []*anypb.Any) []string {
	t.Helper()
	var names []string
	for _, a := range rs {
		l := &listenerv3.Listener{}
		if err := a.UnmarshalTo(l); err != nil {
			t.Fatal(err)
		}
		for _, fc := range l.GetFilterChains() {
			for _, f := range fc.GetFilters() {
				h := &hcmv3.HttpConnectionManager{}
				if err := f.GetTypedConfig().UnmarshalTo(h); err != nil {
					t.Fatal(err)
				}
				if n := h.GetRds().GetRouteConfigName(); !slices.Contains(names, n) {
					names = append(names, n)
				}
			}
		}
	}
	slices.Sort(names)
	return names
}

// envoySync receives and ACKs responses until one of each type in want has
// arrived, subscribing to the routes listeners name as Envoy does.
func envoySync(t *testing.T, c *proxy, want ...string) map[string]response {
	t.Helper()
	got := map[string]response{}
	for len(got) < len(want) {
		r := c.next(t)
		if slices.Contains(want, r.typ) {
			got[r.typ] = r
		}
		if err := c.ack(r); err != nil {
			t.Fatal(err)
		}
		if r.typ == resource.ListenerType && len(r.resources) > 0 {
			if err := c.subscribe(resource.RouteType, routeNames(t, r.resources)); err != nil {
				t.Fatal(err)
			}
		}
	}
	return got
}

// logBuffer collects the server's log lines.
type logBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *logBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *logBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

func startServer(t *testing.T) (*xds.Server, string, *logBuffer) {
	t.Helper()
	logs := &logBuffer{}
	s := xds.NewServer(slog.New(slog.NewTextHandler(logs, nil)), prometheus.NewRegistry())
	path := filepath.Join(t.TempDir(), "xds.sock")
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- s.Serve(ctx, path) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Error(err)
		}
	})
	for i := 0; ; i++ { // until the socket is there
		if fi, err := os.Stat(path); err == nil && fi.Mode().Type() == os.ModeSocket {
			break
		}
		if i > 500 {
			t.Fatal("xds socket never appeared")
		}
		time.Sleep(10 * time.Millisecond)
	}
	return s, path, logs
}

func dial(t *testing.T, path string, delta bool, node string) *proxy {
	t.Helper()
	conn, err := grpc.NewClient("unix://"+path, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	t.Cleanup(func() { cancel(); conn.Close() })
	ads := discovery.NewAggregatedDiscoveryServiceClient(conn)
	n := &corev3.Node{Id: node, Cluster: "nodemesh"}
	if delta {
		s, err := ads.DeltaAggregatedResources(ctx)
		if err != nil {
			t.Fatal(err)
		}
		return newProxy(&deltaClient{s: s, node: n})
	}
	s, err := ads.StreamAggregatedResources(ctx)
	if err != nil {
		t.Fatal(err)
	}
	return newProxy(&sotwClient{s: s, node: n, acked: map[string]string{}, names: map[string][]string{}})
}

const extraRule = `
apiVersion: nodemesh.io/v1
kind: MeshNetworkPolicy
metadata: {name: extra, namespace: default}
spec:
  endpointSelector: {matchLabels: {app: backend}}
  ingress:
  - fromEndpoints: [{matchLabels: {app: other}}]
    toPorts:
    - ports: [{port: "80", protocol: TCP}]
      rules: {http: [{method: GET, path: /health}]}
`

func waitCtx(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	t.Cleanup(cancel)
	return ctx
}

func dump(t *testing.T, s *xds.Server, node, typ string) *adminv3.ConfigDump {
	t.Helper()
	b, err := s.ConfigDump(node, typ)
	if err != nil {
		t.Fatal(err)
	}
	d := &adminv3.ConfigDump{}
	if err := protojson.Unmarshal(b, d); err != nil {
		t.Fatalf("config dump is not envoy.admin.v3.ConfigDump JSON: %v\n%s", err, b)
	}
	return d
}

func listenersDump(t *testing.T, s *xds.Server, node string) *adminv3.ListenersConfigDump {
	t.Helper()
	d := dump(t, s, node, "listeners")
	if len(d.GetConfigs()) != 1 {
		t.Fatalf("want one section, got %d", len(d.GetConfigs()))
	}
	ld := &adminv3.ListenersConfigDump{}
	if err := d.GetConfigs()[0].UnmarshalTo(ld); err != nil {
		t.Fatal(err)
	}
	return ld
}

func TestServerADS(t *testing.T) {
	for _, delta := range []bool{false, true} {
		name := "state-of-the-world"
		if delta {
			name = "delta"
		}
		t.Run(name, func(t *testing.T) { testServer(t, delta) })
	}
}

func testServer(t *testing.T, delta bool) {
	const node = "node-2"
	s, path, logs := startServer(t)
	input := func(policies ...string) xds.Input {
		return xds.InputFromEngine(engine(t, testWorld, policies...), node, xds.Config{})
	}
	v1, err := s.SetNode(node, input(seedPolicy))
	if err != nil {
		t.Fatal(err)
	}
	if again, err := s.SetNode(node, input(seedPolicy)); err != nil || again != v1 {
		t.Fatalf("same input: version %s, %v; want %s", again, err, v1)
	}
	if err := s.WaitAcked(waitCtx(t), "node-9", v1); !errors.Is(err, xds.ErrUnknownNode) {
		t.Errorf("unknown node: %v", err)
	}
	short, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	if err := s.WaitAcked(short, node, v1); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("no proxy yet: want a timeout, got %v", err)
	}

	// The proxy connects and takes the configuration as Envoy does.
	c := dial(t, path, delta, node)
	if err := c.subscribe(resource.ClusterType, nil); err != nil {
		t.Fatal(err)
	}
	if err := c.subscribe(resource.ListenerType, nil); err != nil {
		t.Fatal(err)
	}
	got := envoySync(t, c, resource.ClusterType, resource.ListenerType, resource.RouteType)
	res1 := s.Resources(node)
	for typ, r := range got {
		if r.version != res1.TypeVersion(typ) || len(r.resources) != 1 {
			t.Errorf("%s: version %s with %d resources, want %s with 1", typ, r.version, len(r.resources), res1.TypeVersion(typ))
		}
	}
	if err := s.WaitAcked(waitCtx(t), node, v1); err != nil {
		t.Fatalf("WaitAcked(%s): %v", v1, err)
	}
	st := s.Status(node)
	if !st.Acked || st.Version != v1 || st.Streams != 1 {
		t.Errorf("status after ACK: %+v", st)
	}
	for _, typ := range []string{resource.ClusterType, resource.ListenerType, resource.RouteType} {
		if ts := st.Types[typ]; ts.Acked != res1.TypeVersion(typ) || ts.Sent != ts.Acked || ts.AckedAt.IsZero() {
			t.Errorf("%s status: %+v", typ, ts)
		}
	}
	ld := listenersDump(t, s, node)
	if len(ld.GetDynamicListeners()) != 1 || ld.GetDynamicListeners()[0].GetClientStatus() != adminv3.ClientResourceStatus_ACKED ||
		ld.GetDynamicListeners()[0].GetActiveState().GetVersionInfo() != res1.TypeVersion(resource.ListenerType) ||
		ld.GetDynamicListeners()[0].GetActiveState().GetLastUpdated() == nil {
		t.Errorf("listeners dump after ACK: %v", ld)
	}
	// The dump shows the listener as served: original_src and the
	// access log inside, typed configs resolved.
	if l := (&listenerv3.Listener{}); ld.GetDynamicListeners()[0].GetActiveState().GetListener().UnmarshalTo(l) != nil ||
		len(l.GetListenerFilters()) != 1 || l.GetListenerFilters()[0].GetTypedConfig().GetTypeUrl() != "type.googleapis.com/envoy.extensions.filters.listener.original_src.v3.OriginalSrc" {
		t.Errorf("dumped listener lacks original_src: %v", l)
	}
	if b, err := s.ConfigDump(node, "listeners"); err != nil || !strings.Contains(string(b), "envoy.extensions.access_loggers.grpc.v3.HttpGrpcAccessLogConfig") {
		t.Errorf("listeners dump lacks the access log: %v", err)
	}
	if d := dump(t, s, node, ""); len(d.GetConfigs()) != 4 {
		t.Errorf("full dump: %d sections, want clusters, listeners, routes, secrets", len(d.GetConfigs()))
	}
	if d := dump(t, s, node, resource.ClusterType); len(d.GetConfigs()) != 1 ||
		d.GetConfigs()[0].GetTypeUrl() != "type.googleapis.com/envoy.admin.v3.ClustersConfigDump" {
		t.Errorf("cluster dump: %v", d)
	}
	if _, err := s.ConfigDump(node, "endpoints"); err == nil {
		t.Error("a dump of a type the server does not serve")
	}
	if _, err := s.ConfigDump("node-9", ""); !errors.Is(err, xds.ErrUnknownNode) {
		t.Errorf("dump of an unknown node: %v", err)
	}

	// A listener the proxy rejects: WaitAcked reports the NACK.
	v2, err := s.SetNode(node, input(seedPolicy, extraRule))
	if err != nil {
		t.Fatal(err)
	}
	r := c.next(t)
	if r.typ != resource.ListenerType {
		t.Fatalf("want the changed listener alone, got %s", r.typ)
	}
	if err := c.nack(r, "boom: invalid listener"); err != nil {
		t.Fatal(err)
	}
	c.quiet(t, 200*time.Millisecond) // the rejected version is not sent again
	err = s.WaitAcked(waitCtx(t), node, v2)
	var nack *xds.NACKError
	if !errors.As(err, &nack) || nack.Message != "boom: invalid listener" || nack.TypeURL != resource.ListenerType ||
		nack.Version != s.Resources(node).TypeVersion(resource.ListenerType) || nack.Node != node {
		t.Fatalf("WaitAcked after a NACK: %v", err)
	}
	if ts := s.Status(node).Types[resource.ListenerType]; ts.NACK == nil || ts.Acked != res1.TypeVersion(resource.ListenerType) {
		t.Errorf("listener status after NACK: %+v", ts)
	}
	if !strings.Contains(logs.String(), "boom: invalid listener") {
		t.Errorf("the NACK was not logged:\n%s", logs)
	}
	ld = listenersDump(t, s, node)
	if dl := ld.GetDynamicListeners()[0]; dl.GetClientStatus() != adminv3.ClientResourceStatus_NACKED ||
		dl.GetErrorState().GetDetails() != "boom: invalid listener" || dl.GetErrorState().GetFailedConfiguration() == nil {
		t.Errorf("listeners dump after NACK: %v", dl)
	}

	// A fixed version: WaitAcked blocks until the proxy ACKs it.
	v3, err := s.SetNode(node, input(seedPolicy, strings.ReplaceAll(extraRule, "/health", "/healthz")))
	if err != nil {
		t.Fatal(err)
	}
	waited := make(chan error, 1)
	go func() { waited <- s.WaitAcked(waitCtx(t), node, v3) }()
	select {
	case err := <-waited:
		t.Fatalf("WaitAcked returned %v before the proxy ACKed", err)
	case <-time.After(100 * time.Millisecond):
	}
	envoySync(t, c, resource.ListenerType)
	if err := <-waited; err != nil {
		t.Fatalf("WaitAcked(%s) after ACK: %v", v3, err)
	}
	if err := s.WaitAcked(waitCtx(t), node, v2); !errors.Is(err, xds.ErrSuperseded) {
		t.Errorf("WaitAcked of the rejected version after a newer one was ACKed: %v", err)
	}
	if dl := listenersDump(t, s, node).GetDynamicListeners()[0]; dl.GetClientStatus() != adminv3.ClientResourceStatus_ACKED || dl.GetErrorState() != nil {
		t.Errorf("listeners dump after a new ACK: %v", dl)
	}

	// No redirect left: the proxy must drop its listeners and clusters.
	v4, err := s.SetNode(node, input())
	if err != nil {
		t.Fatal(err)
	}
	got = envoySync(t, c, resource.ClusterType, resource.ListenerType)
	if delta && (len(got[resource.ListenerType].removed) != 1 || len(got[resource.ClusterType].removed) != 1) {
		t.Errorf("delta: want the listener and cluster removed: %+v", got)
	}
	if !delta && (len(got[resource.ListenerType].resources) != 0 || len(got[resource.ClusterType].resources) != 0) {
		t.Errorf("want empty listener and cluster lists: %+v", got)
	}
	if err := s.WaitAcked(waitCtx(t), node, v4); err != nil {
		t.Fatalf("WaitAcked(%s) of the empty configuration: %v", v4, err)
	}

	s.RemoveNode(node)
	if err := s.WaitAcked(waitCtx(t), node, v4); !errors.Is(err, xds.ErrUnknownNode) {
		t.Errorf("WaitAcked after RemoveNode: %v", err)
	}
}

func TestServerRefusesStreamWithoutNode(t *testing.T) {
	_, path, _ := startServer(t)
	c := dial(t, path, false, "")
	if err := c.subscribe(resource.ListenerType, nil); err != nil {
		t.Fatal(err)
	}
	if x := <-c.in; x.err == nil || !strings.Contains(x.err.Error(), "without node id") {
		t.Fatalf("want the stream refused, got %+v", x)
	}
}

func TestBootstrap(t *testing.T) {
	b, err := xds.Bootstrap("node-2", "/run/nodemesh/node-2/xds.sock")
	if err != nil {
		t.Fatal(err)
	}
	bs := &bootstrapv3.Bootstrap{}
	if err := protojson.Unmarshal(b, bs); err != nil {
		t.Fatalf("%v\n%s", err, b)
	}
	if err := bs.ValidateAll(); err != nil {
		t.Fatal(err)
	}
	ads := bs.GetDynamicResources().GetAdsConfig()
	if bs.GetNode().GetId() != "node-2" || ads.GetApiType() != corev3.ApiConfigSource_GRPC ||
		ads.GetGrpcServices()[0].GetEnvoyGrpc().GetClusterName() != xds.XDSClusterName ||
		bs.GetDynamicResources().GetLdsConfig().GetAds() == nil || bs.GetDynamicResources().GetCdsConfig().GetAds() == nil {
		t.Errorf("bootstrap: %s", b)
	}
	// ADS and the access log service share the agent's socket; the
	// access log cluster must be static (Envoy refuses a gRPC service on
	// a dynamic one), and be the one the generated listeners name.
	cl := bs.GetStaticResources().GetClusters()
	if len(cl) != 2 || cl[0].GetName() != xds.XDSClusterName || cl[1].GetName() != xds.AccessLogClusterName {
		t.Fatalf("static clusters: %v", cl)
	}
	for _, c := range cl {
		if c.GetType() != clusterv3.Cluster_STATIC || c.GetLoadAssignment().GetEndpoints()[0].GetLbEndpoints()[0].GetEndpoint().GetAddress().GetPipe().GetPath() != "/run/nodemesh/node-2/xds.sock" {
			t.Errorf("cluster %s: want STATIC on the agent's socket: %v", c.GetName(), c)
		}
	}
	for _, tc := range []struct{ node, path, wantErr string }{
		{"", "/x.sock", "empty node name"},
		{"n", "x.sock", "absolute path"},
	} {
		if _, err := xds.Bootstrap(tc.node, tc.path); err == nil || !strings.Contains(err.Error(), tc.wantErr) {
			t.Errorf("Bootstrap(%q, %q): %v, want %q", tc.node, tc.path, err, tc.wantErr)
		}
	}
}
