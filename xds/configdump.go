package xds

import (
	"fmt"
	"strings"
	"time"

	adminv3 "github.com/envoyproxy/go-control-plane/envoy/admin/v3"
	"github.com/envoyproxy/go-control-plane/pkg/cache/v3"
	"github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"
	"google.golang.org/protobuf/types/known/timestamppb"
)

// dumpTypes maps the names ConfigDump accepts to type URLs.
var dumpTypes = map[string]resource.Type{
	"listeners": resource.ListenerType, "listener": resource.ListenerType,
	"clusters": resource.ClusterType, "cluster": resource.ClusterType,
	"routes": resource.RouteType, "route": resource.RouteType,
	"secrets": resource.SecretType, "secret": resource.SecretType,
}

// ConfigDump returns what the server serves node's proxy in the JSON form
// of Envoy's admin /config_dump (envoy.admin.v3.ConfigDump): for typ
// "" (every type), "listeners", "clusters", "routes", "secrets" or a type
// URL. Each resource is a dynamic active one carrying the version the
// server serves, when that version was set (last_updated), and the proxy's
// answer: client_status ACKED or NACKED, and on a NACK newer than the last
// ACK, error_state with the proxy's error_detail.
func (s *Server) ConfigDump(node, typ string) ([]byte, error) {
	want := ResourceTypes
	if typ != "" && typ != "all" {
		t, ok := dumpTypes[strings.ToLower(typ)]
		if !ok && strings.HasPrefix(typ, resource.APITypePrefix) {
			t, ok = typ, true
		}
		if !ok || !containsType(t) {
			return nil, fmt.Errorf("config dump: unknown resource type %q (want listeners, clusters, routes, secrets or a type URL)", typ)
		}
		want = []resource.Type{t}
	}
	s.mu.Lock()
	ns, ok := s.nodes[node]
	if !ok || ns.cur == nil {
		s.mu.Unlock()
		return nil, fmt.Errorf("config dump: node %s: %w", node, ErrUnknownNode)
	}
	r := ns.cur
	states := map[resource.Type]TypeStatus{}
	for _, t := range want {
		if ts, ok := ns.types[t]; ok {
			states[t] = *ts
		}
	}
	s.mu.Unlock()

	dump := &adminv3.ConfigDump{}
	for _, t := range []resource.Type{resource.ClusterType, resource.ListenerType, resource.RouteType, resource.SecretType} {
		if !containsTypeIn(want, t) {
			continue
		}
		section, err := dumpSection(t, r, states[t])
		if err != nil {
			return nil, fmt.Errorf("config dump: node %s: %w", node, err)
		}
		dump.Configs = append(dump.Configs, typed(section))
	}
	return protojson.MarshalOptions{Multiline: true, Indent: "  "}.Marshal(dump)
}

func containsType(t resource.Type) bool { return containsTypeIn(ResourceTypes, t) }

func containsTypeIn(ts []resource.Type, t resource.Type) bool {
	for _, x := range ts {
		if x == t {
			return true
		}
	}
	return false
}

// resourceState is the dump's view of one resource type's status.
type resourceState struct {
	version string
	updated *timestamppb.Timestamp
	status  adminv3.ClientResourceStatus
	failure *adminv3.UpdateFailureState
}

func stateOf(r *Resources, t resource.Type, ts TypeStatus) resourceState {
	version := r.TypeVersion(t)
	st := resourceState{version: version, updated: timestamp(ts.Updated)}
	switch {
	case ts.Acked == version:
		st.status = adminv3.ClientResourceStatus_ACKED
	case ts.NACK != nil && ts.NACK.Version == version:
		st.status = adminv3.ClientResourceStatus_NACKED
	}
	if ts.NACK != nil && ts.NACK.Time.After(ts.AckedAt) {
		st.failure = &adminv3.UpdateFailureState{
			LastUpdateAttempt: timestamp(ts.NACK.Time),
			Details:           ts.NACK.Message,
			VersionInfo:       ts.NACK.Version,
		}
	}
	return st
}

func timestamp(t time.Time) *timestamppb.Timestamp {
	if t.IsZero() {
		return nil
	}
	return timestamppb.New(t)
}

func dumpSection(t resource.Type, r *Resources, ts TypeStatus) (proto.Message, error) {
	st := stateOf(r, t, ts)
	var items []*anypb.Any
	for _, res := range r.ByType(t) {
		items = append(items, typed(res))
	}
	name := func(i int) string { return cache.GetResourceName(r.ByType(t)[i]) }
	failed := func(a *anypb.Any) *adminv3.UpdateFailureState {
		if st.failure == nil {
			return nil
		}
		f := proto.Clone(st.failure).(*adminv3.UpdateFailureState)
		if st.failure.VersionInfo == st.version {
			f.FailedConfiguration = a
		}
		return f
	}
	switch t {
	case resource.ListenerType:
		d := &adminv3.ListenersConfigDump{VersionInfo: ts.Acked}
		for i, a := range items {
			d.DynamicListeners = append(d.DynamicListeners, &adminv3.ListenersConfigDump_DynamicListener{
				Name:         name(i),
				ActiveState:  &adminv3.ListenersConfigDump_DynamicListenerState{VersionInfo: st.version, Listener: a, LastUpdated: st.updated},
				ErrorState:   failed(a),
				ClientStatus: st.status,
			})
		}
		return d, nil
	case resource.ClusterType:
		d := &adminv3.ClustersConfigDump{VersionInfo: ts.Acked}
		for _, a := range items {
			d.DynamicActiveClusters = append(d.DynamicActiveClusters, &adminv3.ClustersConfigDump_DynamicCluster{
				VersionInfo: st.version, Cluster: a, LastUpdated: st.updated, ErrorState: failed(a), ClientStatus: st.status,
			})
		}
		return d, nil
	case resource.RouteType:
		d := &adminv3.RoutesConfigDump{}
		for _, a := range items {
			d.DynamicRouteConfigs = append(d.DynamicRouteConfigs, &adminv3.RoutesConfigDump_DynamicRouteConfig{
				VersionInfo: st.version, RouteConfig: a, LastUpdated: st.updated, ErrorState: failed(a), ClientStatus: st.status,
			})
		}
		return d, nil
	case resource.SecretType:
		// Secrets (SDS, issue 5) will be dumped with their private keys
		// redacted, as Envoy does.
		d := &adminv3.SecretsConfigDump{}
		for i, a := range items {
			d.DynamicActiveSecrets = append(d.DynamicActiveSecrets, &adminv3.SecretsConfigDump_DynamicSecret{
				Name: name(i), VersionInfo: st.version, LastUpdated: st.updated, Secret: a, ErrorState: failed(a), ClientStatus: st.status,
			})
		}
		return d, nil
	}
	return nil, fmt.Errorf("unknown resource type %s", t)
}
