package xds_test

import (
	"bytes"
	"net/netip"
	"slices"
	"strings"
	"testing"

	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	rbacv3 "github.com/envoyproxy/go-control-plane/envoy/config/rbac/v3"
	grpcalsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/access_loggers/grpc/v3"
	origsrcv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/listener/original_src/v3"
	hcmv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	tcpproxyv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/tcp_proxy/v3"
	"github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"

	"github.com/nodemesh/nodemesh/api"
	"github.com/nodemesh/nodemesh/policy"
	"github.com/nodemesh/nodemesh/xds"
	"github.com/nodemesh/nodemesh/xds/xdstest"
)

// testWorld: frontend and other on node-1; backend, admin and metrics on
// node-2.
const testWorld = `
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
  status: {podIP: 10.0.1.10}
- apiVersion: v1
  kind: Pod
  metadata: {name: other, namespace: default, labels: {app: other}}
  spec: {nodeName: node-1, containers: [{name: c}]}
  status: {podIP: 10.0.1.11}
- apiVersion: v1
  kind: Pod
  metadata: {name: backend, namespace: default, labels: {app: backend}}
  spec: {nodeName: node-2, containers: [{name: api, ports: [{name: http, containerPort: 80}]}]}
  status: {podIP: 10.0.2.10}
- apiVersion: v1
  kind: Pod
  metadata: {name: admin, namespace: default, labels: {app: admin}}
  spec: {nodeName: node-2, containers: [{name: c}]}
  status: {podIP: 10.0.2.11}
- apiVersion: v1
  kind: Pod
  metadata: {name: metrics, namespace: default, labels: {app: metrics}}
  spec: {nodeName: node-2, containers: [{name: c}]}
  status: {podIP: 10.0.2.12}
`

// seedPolicy is the seed's L7 rule: frontend may GET /userdata/<digits> on
// backend port 80.
const seedPolicy = `
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: frontend-backend, namespace: default}
spec:
  endpointSelector: {matchLabels: {app: backend}}
  ingress:
  - fromEndpoints: [{matchLabels: {app: frontend}}]
    toPorts:
    - ports: [{port: "80", protocol: TCP}]
      rules: {http: [{method: GET, path: "/userdata/[0-9]+"}]}
`

func engine(t *testing.T, world string, policies ...string) *policy.Engine {
	t.Helper()
	w := &api.World{}
	if err := api.DecodeWorld("world.yaml", []byte(world), w); err != nil {
		t.Fatal(err)
	}
	docs, err := api.DecodePolicies("policies.yaml", []byte(strings.Join(policies, "\n---\n")))
	if err != nil {
		t.Fatal(err)
	}
	e, err := policy.NewEngineFromWorld(w, policy.FromDocuments(docs))
	if err != nil {
		t.Fatal(err)
	}
	return e
}

// build generates node's resources and checks what every generated
// configuration must satisfy.
func build(t *testing.T, e *policy.Engine, node string) *xds.Resources {
	t.Helper()
	r, err := xds.Build(xds.InputFromEngine(e, node, xds.Config{}))
	if err != nil {
		t.Fatal(err)
	}
	checkResources(t, r)
	return r
}

func checkResources(t *testing.T, r *xds.Resources) {
	t.Helper()
	snap, err := r.Snapshot()
	if err != nil {
		t.Fatal(err)
	}
	if err := snap.Consistent(); err != nil {
		t.Fatal(err)
	}
	for _, typ := range xds.ResourceTypes {
		if got := snap.GetVersion(typ); got != r.TypeVersion(typ) || got == "" {
			t.Errorf("%s: snapshot version %q, resources %q", typ, got, r.TypeVersion(typ))
		}
		for name, res := range snap.GetResources(typ) {
			if err := xds.Validate(res); err != nil {
				t.Errorf("%s %s: %v", typ, name, err)
			}
		}
	}
	for _, l := range r.Listeners {
		if !l.GetTransparent().GetValue() || l.GetAddress().GetSocketAddress().GetAddress() != "0.0.0.0" {
			t.Errorf("listener %s: want transparent on 0.0.0.0: %v", l.GetName(), l.GetAddress())
		}
		d, ok := sides[l.GetName()]
		if !ok {
			t.Errorf("listener %s: unknown", l.GetName())
			continue
		}
		// original_src first (tls_inspector may follow), with the
		// direction's mark.
		fs := l.GetListenerFilters()
		if os := (&origsrcv3.OriginalSrc{}); len(fs) == 0 || fs[0].GetTypedConfig().UnmarshalTo(os) != nil || os.GetMark() != d.mark {
			t.Errorf("listener %s: want original_src with mark 0x%x first, got %v", l.GetName(), d.mark, fs)
		}
		for _, f := range fs[min(1, len(fs)):] {
			if f.GetName() != "envoy.filters.listener.tls_inspector" {
				t.Errorf("listener %s: unexpected listener filter %s", l.GetName(), f.GetName())
			}
		}
		// Upstream connections come from the client's address, with the
		// direction's mark: the filter's and the cluster's agree.
		if d.cluster != "" {
			if c := clusterByName(r, d.cluster); c != nil {
				client := xdstest.Conn{Src: netip.MustParseAddrPort("10.9.8.7:40000"), Dst: netip.MustParseAddrPort("10.0.2.10:80")}
				up, err := xdstest.UpstreamOf(l, c, client)
				if err != nil || up != (xdstest.Upstream{Src: client.Src.Addr(), Mark: d.mark}) {
					t.Errorf("listener %s: upstream %+v, %v; want from the client's address with mark 0x%x", l.GetName(), up, err, d.mark)
				}
			} else {
				t.Errorf("listener %s: no cluster %s", l.GetName(), d.cluster)
			}
		}
		for _, fc := range l.GetFilterChains() {
			last := fc.GetFilters()[len(fc.GetFilters())-1]
			if last.GetName() == "envoy.filters.network.tcp_proxy" {
				tp := &tcpproxyv3.TcpProxy{}
				cfg := &grpcalsv3.TcpGrpcAccessLogConfig{}
				if err := last.GetTypedConfig().UnmarshalTo(tp); err != nil || len(tp.GetAccessLog()) != 1 || tp.GetAccessLog()[0].GetTypedConfig().UnmarshalTo(cfg) != nil ||
					cfg.GetCommonConfig().GetLogName() != d.tcpLogName || cfg.GetCommonConfig().GetGrpcService().GetEnvoyGrpc().GetClusterName() != xds.AccessLogClusterName {
					t.Errorf("chain %s: want tcp_proxy logging to %s (tcp_grpc), got %v", fc.GetName(), d.tcpLogName, tp)
				}
				if clusterByName(r, tp.GetCluster()) == nil {
					t.Errorf("chain %s: tcp_proxy to a cluster that does not exist: %s", fc.GetName(), tp.GetCluster())
				}
				continue
			}
			hcm := &hcmv3.HttpConnectionManager{}
			if err := last.GetTypedConfig().UnmarshalTo(hcm); err != nil {
				t.Errorf("chain %s: last filter %s: %v", fc.GetName(), last.GetName(), err)
				continue
			}
			als := hcm.GetAccessLog()
			cfg := &grpcalsv3.HttpGrpcAccessLogConfig{}
			if len(als) != 1 || als[0].GetName() != "envoy.access_loggers.http_grpc" || als[0].GetTypedConfig().UnmarshalTo(cfg) != nil {
				t.Errorf("chain %s: want one http_grpc access log, got %v", fc.GetName(), als)
				continue
			}
			cc := cfg.GetCommonConfig()
			if cc.GetLogName() != d.logName || cc.GetGrpcService().GetEnvoyGrpc().GetClusterName() != xds.AccessLogClusterName ||
				cc.GetTransportApiVersion() != corev3.ApiVersion_V3 {
				t.Errorf("chain %s: access log %v, want log %s to cluster %s over V3", fc.GetName(), cc, d.logName, xds.AccessLogClusterName)
			}
		}
	}
	for _, c := range r.Clusters {
		if c.GetType() != clusterv3.Cluster_ORIGINAL_DST || c.GetLbPolicy() != clusterv3.Cluster_CLUSTER_PROVIDED {
			t.Errorf("cluster %s: want ORIGINAL_DST with CLUSTER_PROVIDED: %v %v", c.GetName(), c.GetType(), c.GetLbPolicy())
		}
		opts := c.GetUpstreamBindConfig().GetSocketOptions()
		want := xds.MarkProxyIngress
		if c.GetName() == xds.OutboundClusterName || strings.HasPrefix(c.GetName(), "nodemesh-outbound-mtls|") {
			want = xds.MarkProxyEgress
		}
		if len(opts) != 1 || opts[0].GetLevel() != 1 || opts[0].GetName() != 36 || opts[0].GetIntValue() != int64(want) {
			t.Errorf("cluster %s: want SO_MARK 0x%x, got %v", c.GetName(), want, opts)
		}
	}
}

// sides are what each listener's direction must use.
var sides = map[string]struct {
	cluster, logName, tcpLogName string // cluster "": one per chain
	mark                         uint32
}{
	xds.InboundListenerName:      {xds.InboundClusterName, xds.InboundAccessLogName, xds.InboundMTLSAccessLogName, xds.MarkProxyIngress},
	xds.OutboundListenerName:     {xds.OutboundClusterName, xds.OutboundAccessLogName, "", xds.MarkProxyEgress},
	xds.InboundMTLSListenerName:  {xds.InboundClusterName, "", xds.InboundMTLSAccessLogName, xds.MarkProxyIngress},
	xds.OutboundMTLSListenerName: {"", "", xds.OutboundMTLSAccessLogName, xds.MarkProxyEgress},
}

func clusterByName(r *xds.Resources, name string) *clusterv3.Cluster {
	for _, c := range r.Clusters {
		if c.GetName() == name {
			return c
		}
	}
	return nil
}

func listener(r *xds.Resources, name string) *listenerv3.Listener {
	for _, l := range r.Listeners {
		if l.GetName() == name {
			return l
		}
	}
	return nil
}

func conn(src, dst string) xdstest.Conn {
	return xdstest.Conn{Src: netip.MustParseAddrPort(src), Dst: netip.MustParseAddrPort(dst)}
}

// decide runs a connection and a request through a listener as Envoy
// would: "no-chain" (connection closed), "allow" or "deny" (403).
func decide(t *testing.T, l *listenerv3.Listener, c xdstest.Conn, req xdstest.Request) string {
	t.Helper()
	if l == nil {
		return "no-listener"
	}
	fc, err := xdstest.FindFilterChain(l, c)
	if err != nil {
		t.Fatal(err)
	}
	if fc == nil {
		return "no-chain"
	}
	ok, _, err := xdstest.Authorize(fc, c, req)
	if err != nil {
		t.Fatal(err)
	}
	if ok {
		return "allow"
	}
	return "deny"
}

func rbacOf(t *testing.T, fc *listenerv3.FilterChain) *rbacv3.RBAC {
	t.Helper()
	_, f, err := xdstest.ChainRBAC(fc)
	if err != nil || f == nil {
		t.Fatalf("chain %s: rbac %v %v", fc.GetName(), f, err)
	}
	return f.GetRules()
}

func get(path string) xdstest.Request {
	return xdstest.Request{Method: "GET", Path: path, Host: "backend"}
}

func TestBuildSeed(t *testing.T) {
	e := engine(t, testWorld, seedPolicy)
	r := build(t, e, "node-2")
	if len(r.Listeners) != 1 || len(r.Routes) != 1 || len(r.Clusters) != 1 {
		t.Fatalf("want only the inbound side, got %d listeners, %d routes, %d clusters", len(r.Listeners), len(r.Routes), len(r.Clusters))
	}
	in := listener(r, xds.InboundListenerName)
	if in == nil || in.GetAddress().GetSocketAddress().GetPortValue() != xds.DefaultInboundPort {
		t.Fatalf("inbound listener: %v", in)
	}
	if len(in.GetFilterChains()) != 1 {
		t.Fatalf("want one chain, got %d", len(in.GetFilterChains()))
	}
	fc := in.GetFilterChains()[0]
	m := fc.GetFilterChainMatch()
	if m.GetDestinationPort().GetValue() != 80 || len(m.GetPrefixRanges()) != 1 ||
		m.GetPrefixRanges()[0].GetAddressPrefix() != "10.0.2.10" || m.GetPrefixRanges()[0].GetPrefixLen().GetValue() != 32 {
		t.Fatalf("chain match: %v", m)
	}
	rules := rbacOf(t, fc)
	if rules.GetAction() != rbacv3.RBAC_ALLOW || len(rules.GetPolicies()) != 1 {
		t.Fatalf("rbac: %v", rules)
	}
	for _, p := range rules.GetPolicies() {
		want := `{"permissions":[{"andRules":{"rules":[` +
			`{"header":{"name":":method","stringMatch":{"safeRegex":{"regex":"GET"}}}},` +
			`{"urlPath":{"path":{"safeRegex":{"regex":"/userdata/[0-9]+"}}}}]}}],` +
			`"principals":[{"directRemoteIp":{"addressPrefix":"10.0.1.10","prefixLen":32}}]}`
		if got := compactJSON(t, p); got != want {
			t.Errorf("policy:\n got %s\nwant %s", got, want)
		}
	}
	for _, tc := range []struct {
		src, dst string
		req      xdstest.Request
		want     string
	}{
		{"10.0.1.10:40000", "10.0.2.10:80", get("/userdata/42"), "allow"},
		{"10.0.1.10:40000", "10.0.2.10:80", get("/userdata/42?x=1"), "allow"},
		{"10.0.1.10:40000", "10.0.2.10:80", get("/userdata/42abc"), "deny"},
		{"10.0.1.10:40000", "10.0.2.10:80", get("/userdata/abc"), "deny"},
		{"10.0.1.10:40000", "10.0.2.10:80", xdstest.Request{Method: "POST", Path: "/userdata/1"}, "deny"},
		{"10.0.1.11:40000", "10.0.2.10:80", get("/userdata/42"), "deny"}, // other is not frontend
		{"10.0.1.10:40000", "10.0.2.10:81", get("/userdata/42"), "no-chain"},
		{"10.0.1.10:40000", "10.0.2.11:80", get("/userdata/42"), "no-chain"},
	} {
		if got := decide(t, in, conn(tc.src, tc.dst), tc.req); got != tc.want {
			t.Errorf("%s -> %s %s %s: %s, want %s", tc.src, tc.dst, tc.req.Method, tc.req.Path, got, tc.want)
		}
	}
	// The frontend's node redirects nothing: no resources at all.
	if r1 := build(t, e, "node-1"); len(r1.Listeners)+len(r1.Routes)+len(r1.Clusters) != 0 {
		t.Errorf("node-1: want no resources, got %d listeners", len(r1.Listeners))
	}
}

func compactJSON(t *testing.T, m proto.Message) string {
	t.Helper()
	b, err := protojson.Marshal(m)
	if err != nil {
		t.Fatal(err)
	}
	var out bytes.Buffer
	for _, c := range string(b) { // protojson adds random spaces
		if c != ' ' {
			out.WriteRune(c)
		}
	}
	return out.String()
}

func TestBuildEgress(t *testing.T) {
	e := engine(t, testWorld, `
apiVersion: nodemesh.io/v1
kind: MeshNetworkPolicy
metadata: {name: frontend-out, namespace: default}
spec:
  endpointSelector: {matchLabels: {app: frontend}}
  egress:
  - toEndpoints: [{matchLabels: {app: backend}}]
    toPorts:
    - ports: [{port: "80", protocol: TCP}]
      rules: {http: [{method: GET, path: "/public/.*"}, {method: POST, path: /submit, headers: ["X-Token: s3cret"]}, {host: 'api\.example\.com', headers: [X-Debug]}, {method: OPTIONS, host: '.*'}]}
`)
	r := build(t, e, "node-1")
	if listener(r, xds.InboundListenerName) != nil {
		t.Error("an inbound listener without ingress L7 rules")
	}
	out := listener(r, xds.OutboundListenerName)
	if out == nil || out.GetAddress().GetSocketAddress().GetPortValue() != xds.DefaultOutboundPort || len(out.GetFilterChains()) != 1 {
		t.Fatalf("outbound listener: %v", out)
	}
	m := out.GetFilterChains()[0].GetFilterChainMatch()
	if m.GetDestinationPort().GetValue() != 80 || len(m.GetPrefixRanges()) != 0 ||
		len(m.GetSourcePrefixRanges()) != 1 || m.GetSourcePrefixRanges()[0].GetAddressPrefix() != "10.0.1.10" {
		t.Fatalf("chain match: %v", m)
	}
	for _, p := range rbacOf(t, out.GetFilterChains()[0]).GetPolicies() {
		if len(p.GetPrincipals()) != 1 || !p.GetPrincipals()[0].GetAny() {
			t.Errorf("outbound principals: %v", p.GetPrincipals())
		}
		if js := compactJSON(t, p); !strings.Contains(js, `"destinationIp":{"addressPrefix":"10.0.2.10","prefixLen":32}`) {
			t.Errorf("outbound policy does not check the destination: %s", js)
		}
	}
	token := map[string]string{"x-token": "s3cret"}
	for _, tc := range []struct {
		src, dst string
		req      xdstest.Request
		want     string
	}{
		{"10.0.1.10:40000", "10.0.2.10:80", get("/public/a/b"), "allow"},
		{"10.0.1.10:40000", "10.0.2.10:80", xdstest.Request{Method: "POST", Path: "/public/a"}, "deny"},
		{"10.0.1.10:40000", "10.0.2.10:80", xdstest.Request{Method: "POST", Path: "/submit", Headers: token}, "allow"},
		{"10.0.1.10:40000", "10.0.2.10:80", xdstest.Request{Method: "POST", Path: "/submit", Headers: map[string]string{"X-Token": "x"}}, "deny"},
		{"10.0.1.10:40000", "10.0.2.10:80", xdstest.Request{Method: "PUT", Path: "/x", Host: "api.example.com", Headers: map[string]string{"x-debug": ""}}, "allow"},
		{"10.0.1.10:40000", "10.0.2.10:80", xdstest.Request{Method: "PUT", Path: "/x", Host: "api.example.com"}, "deny"},
		{"10.0.1.10:40000", "10.0.2.10:80", xdstest.Request{Method: "PUT", Path: "/x", Host: "api.example.com.evil", Headers: map[string]string{"x-debug": "1"}}, "deny"},
		{"10.0.1.10:40000", "10.0.2.10:80", xdstest.Request{Method: "OPTIONS", Path: "/"}, "allow"}, // no host is an empty one, as in l7policy
		{"10.0.1.10:40000", "10.0.2.11:80", get("/public/a"), "deny"},                               // admin is not backend
		{"10.0.1.11:40000", "10.0.2.10:80", get("/public/a"), "no-chain"},
	} {
		if got := decide(t, out, conn(tc.src, tc.dst), tc.req); got != tc.want {
			t.Errorf("%s -> %s %+v: %s, want %s", tc.src, tc.dst, tc.req, got, tc.want)
		}
	}
}

func TestBuildMergedRules(t *testing.T) {
	second := `
apiVersion: nodemesh.io/v1
kind: MeshNetworkPolicy
metadata: {name: second, namespace: default}
spec:
  endpointSelector: {matchLabels: {app: backend}}
  ingress:
  - fromEndpoints: [{matchLabels: {app: frontend}}]
    toPorts:
    - ports: [{port: "80", protocol: TCP}]
      rules: {http: [{method: POST, path: /submit}]}
  - fromEndpoints: [{matchLabels: {app: other}}]
    toPorts:
    - ports: [{port: "80", protocol: TCP}]
      rules: {http: [{method: GET, path: /health}]}
`
	e := engine(t, testWorld, seedPolicy, second)
	r := build(t, e, "node-2")
	in := listener(r, xds.InboundListenerName)
	if in == nil || len(in.GetFilterChains()) != 1 {
		t.Fatalf("want one inbound chain: %v", in)
	}
	policies := rbacOf(t, in.GetFilterChains()[0]).GetPolicies()
	if len(policies) != 2 {
		t.Fatalf("want a policy per rule set (frontend: two rules merged; other: one), got %d", len(policies))
	}
	sizes := []int{}
	for _, p := range policies {
		sizes = append(sizes, len(p.GetPermissions()))
	}
	slices.Sort(sizes)
	if !slices.Equal(sizes, []int{1, 2}) {
		t.Errorf("permissions per policy: %v, want [1 2]", sizes)
	}
	for _, tc := range []struct {
		src  string
		req  xdstest.Request
		want string
	}{
		{"10.0.1.10:1", get("/userdata/7"), "allow"},
		{"10.0.1.10:1", xdstest.Request{Method: "POST", Path: "/submit"}, "allow"},
		{"10.0.1.10:1", get("/health"), "deny"},
		{"10.0.1.11:1", get("/health"), "allow"},
		{"10.0.1.11:1", get("/userdata/7"), "deny"},
		{"10.0.1.11:1", xdstest.Request{Method: "POST", Path: "/submit"}, "deny"},
	} {
		if got := decide(t, in, conn(tc.src, "10.0.2.10:80"), tc.req); got != tc.want {
			t.Errorf("%s %s %s: %s, want %s", tc.src, tc.req.Method, tc.req.Path, got, tc.want)
		}
	}
}

func TestBuildL4WideningHasNoRedirect(t *testing.T) {
	e := engine(t, testWorld, seedPolicy, `
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: l4, namespace: default}
spec:
  podSelector: {matchLabels: {app: backend}}
  ingress:
  - from: [{podSelector: {matchLabels: {app: frontend}}}]
    ports: [{port: 80, protocol: TCP}]
`)
	r := build(t, e, "node-2")
	if len(r.Listeners)+len(r.Routes)+len(r.Clusters) != 0 {
		t.Fatalf("an L4 allow widens the L7 rule to every request: want no proxy configuration, got %d listeners", len(r.Listeners))
	}
}

// Envoy picks a chain by destination port before addresses and never
// backtracks: a pod whose port range covers a port another pod has an exact
// chain for needs an exact chain too.
func TestBuildPortRangesAndExactPorts(t *testing.T) {
	e := engine(t, testWorld, seedPolicy, `
apiVersion: nodemesh.io/v1
kind: MeshNetworkPolicy
metadata: {name: admin-range, namespace: default}
spec:
  endpointSelector: {matchLabels: {app: admin}}
  ingress:
  - fromEndpoints: [{matchLabels: {app: frontend}}]
    toPorts:
    - ports: [{port: "70", endPort: 90, protocol: TCP}]
      rules: {http: [{method: GET}]}
`)
	r := build(t, e, "node-2")
	in := listener(r, xds.InboundListenerName)
	var names []string
	for _, fc := range in.GetFilterChains() {
		names = append(names, fc.GetName())
	}
	want := []string{"inbound|default/admin|80", "inbound|default/admin|ranges", "inbound|default/backend|80"}
	if !slices.Equal(names, want) {
		t.Fatalf("chains %v, want %v", names, want)
	}
	for _, tc := range []struct {
		dst, want string
		req       xdstest.Request
	}{
		{"10.0.2.11:80", "allow", get("/x")},
		{"10.0.2.11:80", "deny", xdstest.Request{Method: "POST", Path: "/x"}},
		{"10.0.2.11:70", "allow", get("/x")},
		{"10.0.2.11:90", "allow", get("/x")},
		{"10.0.2.11:91", "deny", get("/x")}, // reaches the range chain, refused by its port check
		{"10.0.2.10:80", "allow", get("/userdata/1")},
		{"10.0.2.10:80", "deny", get("/x")},
		{"10.0.2.10:85", "no-chain", get("/x")},
	} {
		if got := decide(t, in, conn("10.0.1.10:1", tc.dst), tc.req); got != tc.want {
			t.Errorf("-> %s %s %s: %s, want %s", tc.dst, tc.req.Method, tc.req.Path, got, tc.want)
		}
	}
}

// A Cilium CIDR selects only addresses outside the cluster, and its
// exceptions are holes: the principals must leave out pods, nodes and the
// exceptions inside the range.
func TestBuildCIDRPeers(t *testing.T) {
	e := engine(t, testWorld, `
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: cidr, namespace: default}
spec:
  endpointSelector: {matchLabels: {app: backend}}
  ingress:
  - fromCIDRSet: [{cidr: 10.0.0.0/8, except: [10.9.0.0/16]}]
    toPorts:
    - ports: [{port: "80", protocol: TCP}]
      rules: {http: [{method: GET}]}
  - fromEntities: [host]
    toPorts:
    - ports: [{port: "80", protocol: TCP}]
      rules: {http: [{path: /healthz}]}
`)
	r := build(t, e, "node-2")
	in := listener(r, xds.InboundListenerName)
	for _, tc := range []struct {
		src  string
		req  xdstest.Request
		want string
	}{
		{"10.5.5.5:1", get("/x"), "allow"},
		{"10.9.1.1:1", get("/x"), "deny"},    // the exception
		{"10.0.1.10:1", get("/x"), "deny"},   // a pod: inside the cluster
		{"10.0.2.11:1", get("/x"), "deny"},   // a local pod
		{"10.0.1.200:1", get("/x"), "allow"}, // no pod there: outside the cluster
		{"11.0.0.1:1", get("/x"), "deny"},
		{"192.168.10.2:1", get("/healthz"), "allow"}, // the local node
		{"192.168.10.2:1", get("/x"), "deny"},
		{"192.168.10.1:1", get("/healthz"), "deny"}, // a remote node is not host
	} {
		if got := decide(t, in, conn(tc.src, "10.0.2.10:80"), tc.req); got != tc.want {
			t.Errorf("%s %s %s: %s, want %s", tc.src, tc.req.Method, tc.req.Path, got, tc.want)
		}
	}
}

func TestBuildDeterministic(t *testing.T) {
	pols := []string{seedPolicy, `
apiVersion: cilium.io/v2
kind: CiliumClusterwideNetworkPolicy
metadata: {name: wide}
spec:
  endpointSelector: {}
  ingress:
  - fromEndpoints: [{matchLabels: {app: frontend}}, {matchLabels: {app: other}}]
    toPorts:
    - ports: [{port: "8080", protocol: TCP}, {port: "9000", endPort: 9010, protocol: TCP}]
      rules: {http: [{method: GET|HEAD}, {path: "/a", headers: [X-A, "X-B: 1"]}]}
  egress:
  - toCIDRSet: [{cidr: 0.0.0.0/0, except: [10.0.0.0/8]}]
    toPorts:
    - ports: [{port: "443", protocol: TCP}]
      rules: {http: [{}]}
`}
	marshal := func(r *xds.Resources) []byte {
		var b []byte
		for _, typ := range xds.ResourceTypes {
			for _, res := range r.ByType(typ) {
				x, err := proto.MarshalOptions{Deterministic: true}.Marshal(res)
				if err != nil {
					t.Fatal(err)
				}
				b = append(b, x...)
			}
		}
		return b
	}
	r1 := build(t, engine(t, testWorld, pols...), "node-2")
	in := xds.InputFromEngine(engine(t, testWorld, pols[1], pols[0]), "node-2", xds.Config{})
	slices.Reverse(in.Endpoints)
	slices.Reverse(in.IPCache)
	r2, err := xds.Build(in)
	if err != nil {
		t.Fatal(err)
	}
	if r1.Version != r2.Version || !bytes.Equal(marshal(r1), marshal(r2)) {
		t.Fatalf("same policies, different resources: versions %s, %s", r1.Version, r2.Version)
	}
	if len(r1.Listeners) != 2 {
		t.Fatalf("want inbound and outbound listeners, got %d", len(r1.Listeners))
	}
	r3 := build(t, engine(t, testWorld, pols[0]), "node-2")
	if r3.Version == r1.Version {
		t.Fatal("different policies, same version")
	}
	if r3.TypeVersion(resource.ClusterType) == r1.TypeVersion(resource.ClusterType) {
		t.Error("cluster sets differ but their versions do not")
	}
	if r3.TypeVersion(resource.SecretType) != r1.TypeVersion(resource.SecretType) {
		t.Error("no secrets either way, yet the secret versions differ")
	}
}

func TestBuildInput(t *testing.T) {
	e := engine(t, testWorld, seedPolicy)
	tbl, _, _ := e.Table("default/backend")
	good := func() xds.Input {
		return xds.Input{Endpoints: []xds.Endpoint{{Key: "default/backend", Addrs: []netip.Addr{netip.MustParseAddr("10.0.2.10"), netip.MustParseAddr("fd00::10")}, Table: tbl}},
			IPCache: e.IPCache("node-2")}
	}
	tests := []struct {
		name    string
		tweak   func(*xds.Input)
		wantErr string
	}{
		{"ok", func(*xds.Input) {}, ""},
		{"ports", func(in *xds.Input) { in.Config.InboundPort, in.Config.OutboundPort = 9000, 9000 }, "both 9000"},
		{"twice", func(in *xds.Input) { in.Endpoints = append(in.Endpoints, in.Endpoints[0]) }, "listed twice"},
		{"no table", func(in *xds.Input) { in.Endpoints[0].Table = nil }, "no table"},
		{"bad address", func(in *xds.Input) { in.Endpoints[0].Addrs[0] = netip.MustParseAddr("::ffff:10.0.2.10") }, "plain IPv4 or IPv6"},
		{"ipcache", func(in *xds.Input) { in.IPCache = append(in.IPCache, in.IPCache[0]) }, "duplicate prefix"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			in := good()
			tt.tweak(&in)
			r, err := xds.Build(in)
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("error %v, want %q", err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			checkResources(t, r)
			l := listener(r, xds.InboundListenerName)
			if a := l.GetAdditionalAddresses(); len(a) != 1 || a[0].GetAddress().GetSocketAddress().GetAddress() != "::" {
				t.Errorf("an IPv6 endpoint needs the listener on ::, got %v", a)
			}
			if got := decide(t, l, conn("[fd00::1]:1", "[fd00::10]:80"), get("/userdata/1")); got != "deny" {
				t.Errorf("IPv6 from an unknown address: %s", got)
			}
			if got := decide(t, l, conn("10.0.1.10:1", "10.0.2.10:80"), get("/userdata/1")); got != "allow" {
				t.Errorf("IPv4: %s", got)
			}
		})
	}
}

// Validate must look into typed_config, which ValidateAll does not.
func TestValidateLooksIntoAny(t *testing.T) {
	r := build(t, engine(t, testWorld, seedPolicy), "node-2")
	l := proto.Clone(r.Listeners[0]).(*listenerv3.Listener)
	f := l.GetFilterChains()[0].GetFilters()[0]
	if err := l.ValidateAll(); err != nil {
		t.Fatal(err)
	}
	hcm := &hcmv3.HttpConnectionManager{}
	if err := f.GetTypedConfig().UnmarshalTo(hcm); err != nil {
		t.Fatal(err)
	}
	hcm.StatPrefix = ""
	f.ConfigType = &listenerv3.Filter_TypedConfig{TypedConfig: mustAny(t, hcm)}
	if err := l.ValidateAll(); err != nil {
		t.Fatalf("ValidateAll looked into the Any after all: %v", err)
	}
	if err := xds.Validate(l); err == nil || !strings.Contains(err.Error(), "StatPrefix") {
		t.Errorf("an empty stat_prefix inside typed_config: %v", err)
	}
	f.GetTypedConfig().TypeUrl = "type.googleapis.com/envoy.extensions.filters.network.nosuch.v3.Filter"
	if err := xds.Validate(l); err == nil {
		t.Error("an unknown type URL passed")
	}
}

func mustAny(t *testing.T, m proto.Message) *anypb.Any {
	t.Helper()
	a, err := anypb.New(m)
	if err != nil {
		t.Fatal(err)
	}
	return a
}
