package proxy

import (
	"maps"
	"net"
	"net/http"
	"slices"
	"strconv"
	"strings"

	admin "github.com/envoyproxy/go-control-plane/envoy/admin/v3"
	cluster "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	core "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	endpoint "github.com/envoyproxy/go-control-plane/envoy/config/endpoint/v3"
	upstreamhttp "github.com/envoyproxy/go-control-plane/envoy/extensions/upstreams/http/v3"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"
	"google.golang.org/protobuf/types/known/timestamppb"
)

// AdminHandler serves Envoy's admin endpoints that the agent and tests
// use: /config_dump (envoy.admin.v3.ConfigDump as JSON), /ready, /stats
// (Prometheus text; also at /stats/prometheus).
func (p *Proxy) AdminHandler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /config_dump", func(w http.ResponseWriter, _ *http.Request) {
		b, err := protojson.MarshalOptions{Multiline: true, Indent: "  "}.Marshal(p.ConfigDump())
		if err != nil {
			http.Error(w, "config dump: "+err.Error(), http.StatusInternalServerError)
			return
		}
		w.Header().Set("Content-Type", "application/json")
		_, _ = w.Write(b)
	})
	mux.HandleFunc("GET /ready", func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "text/plain")
		if p.Ready() {
			_, _ = w.Write([]byte("LIVE\n"))
			return
		}
		w.WriteHeader(http.StatusServiceUnavailable)
		_, _ = w.Write([]byte("PRE_INITIALIZING\n"))
	})
	stats := promhttp.HandlerFor(p.metrics.reg, promhttp.HandlerOpts{})
	mux.Handle("GET /stats", stats)
	mux.Handle("GET /stats/prometheus", stats)
	return mux
}

// ConfigDump returns the configuration in Envoy's admin format: clusters
// (the static gRPC clusters, as Envoy shows its bootstrap's, and the
// dynamic ones, active and warming), listeners (active, warming, and the
// last refused update), route configurations, secrets. Sensitive fields
// (private keys) are redacted everywhere, refused updates included.
func (p *Proxy) ConfigDump() *admin.ConfigDump {
	p.mu.Lock()
	defer p.mu.Unlock()
	cd := &admin.ClustersConfigDump{VersionInfo: p.versions[typeCluster]}
	for _, name := range slices.Sorted(maps.Keys(p.cfg.GRPCClusters)) {
		cd.StaticClusters = append(cd.StaticClusters, &admin.ClustersConfigDump_StaticCluster{
			Cluster: mustAny(staticGRPCCluster(name, p.cfg.GRPCClusters[name]))})
	}
	for _, name := range slices.Sorted(maps.Keys(p.clusterStates)) {
		st := p.clusterStates[name]
		if st.raw != nil {
			cd.DynamicActiveClusters = append(cd.DynamicActiveClusters, &admin.ClustersConfigDump_DynamicCluster{
				VersionInfo: st.version, Cluster: mustAny(redacted(st.raw)), LastUpdated: timestamppb.New(st.updated),
				ErrorState: redactFailure(st.failed)})
		}
	}
	for _, name := range slices.Sorted(maps.Keys(p.pendingClusters)) {
		st := p.pendingClusters[name].state
		cd.DynamicWarmingClusters = append(cd.DynamicWarmingClusters, &admin.ClustersConfigDump_DynamicCluster{
			VersionInfo: st.version, Cluster: mustAny(redacted(st.raw)), LastUpdated: timestamppb.New(st.updated)})
	}
	ld := &admin.ListenersConfigDump{VersionInfo: p.versions[typeListener]}
	for _, name := range slices.Sorted(maps.Keys(p.listeners)) {
		st := p.listeners[name]
		dl := &admin.ListenersConfigDump_DynamicListener{Name: name, ErrorState: redactFailure(st.failed)}
		if st.rt != nil {
			if lc := st.rt.cfg.Load(); lc != nil {
				dl.ActiveState = &admin.ListenersConfigDump_DynamicListenerState{VersionInfo: lc.version, Listener: mustAny(redacted(lc.raw)), LastUpdated: timestamppb.New(lc.updated)}
			}
			st.rt.mu.Lock()
			if pc := st.rt.pending; pc != nil {
				dl.WarmingState = &admin.ListenersConfigDump_DynamicListenerState{VersionInfo: pc.version, Listener: mustAny(redacted(pc.raw)), LastUpdated: timestamppb.New(pc.updated)}
			}
			st.rt.mu.Unlock()
		}
		ld.DynamicListeners = append(ld.DynamicListeners, dl)
	}
	rd := &admin.RoutesConfigDump{}
	for _, name := range slices.Sorted(maps.Keys(p.routeStates)) {
		st := p.routeStates[name]
		if st.raw != nil {
			rd.DynamicRouteConfigs = append(rd.DynamicRouteConfigs, &admin.RoutesConfigDump_DynamicRouteConfig{
				VersionInfo: st.version, RouteConfig: mustAny(redacted(st.raw)), LastUpdated: timestamppb.New(st.updated),
				ErrorState: redactFailure(st.failed)})
		}
	}
	return &admin.ConfigDump{Configs: []*anypb.Any{mustAny(cd), mustAny(ld), mustAny(rd), mustAny(p.secretsDumpLocked())}}
}

func mustAny(m proto.Message) *anypb.Any {
	a, err := anypb.New(m)
	if err != nil {
		panic(err) // only for messages the proxy built or decoded
	}
	return a
}

// dumpable reports whether protojson can print a (every nested Any type
// is known to this binary); a refused resource may name unknown types.
func dumpable(a *anypb.Any) bool {
	_, err := protojson.Marshal(a)
	return err == nil
}

// staticGRPCCluster describes a static gRPC cluster as Envoy's bootstrap
// would: HTTP/2 to a unix socket or a host:port.
func staticGRPCCluster(name, target string) *cluster.Cluster {
	addr := &core.Address{}
	if path, ok := strings.CutPrefix(target, "unix://"); ok {
		addr.Address = &core.Address_Pipe{Pipe: &core.Pipe{Path: path}}
	} else if host, port, err := net.SplitHostPort(target); err == nil {
		n, _ := strconv.ParseUint(port, 10, 16)
		addr.Address = &core.Address_SocketAddress{SocketAddress: &core.SocketAddress{
			Address: host, PortSpecifier: &core.SocketAddress_PortValue{PortValue: uint32(n)}}}
	}
	return &cluster.Cluster{
		Name:                 name,
		ClusterDiscoveryType: &cluster.Cluster_Type{Type: cluster.Cluster_STATIC},
		LoadAssignment: &endpoint.ClusterLoadAssignment{ClusterName: name, Endpoints: []*endpoint.LocalityLbEndpoints{{
			LbEndpoints: []*endpoint.LbEndpoint{{HostIdentifier: &endpoint.LbEndpoint_Endpoint{Endpoint: &endpoint.Endpoint{Address: addr}}}},
		}}},
		TypedExtensionProtocolOptions: map[string]*anypb.Any{upstreamHTTPOptions: mustAny(&upstreamhttp.HttpProtocolOptions{
			UpstreamProtocolOptions: &upstreamhttp.HttpProtocolOptions_ExplicitHttpConfig_{ExplicitHttpConfig: &upstreamhttp.HttpProtocolOptions_ExplicitHttpConfig{
				ProtocolConfig: &upstreamhttp.HttpProtocolOptions_ExplicitHttpConfig_Http2ProtocolOptions{Http2ProtocolOptions: &core.Http2ProtocolOptions{}},
			}},
		})},
	}
}
