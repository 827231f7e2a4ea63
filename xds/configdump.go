package xds

import (
	"fmt"
	"strings"
	"time"

	udpa "github.com/cncf/xds/go/udpa/annotations"
	adminv3 "github.com/envoyproxy/go-control-plane/envoy/admin/v3"
	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	tlsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/tls/v3"
	"github.com/envoyproxy/go-control-plane/pkg/cache/v3"
	"github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"
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
//
// Key material never appears in the dump, as in Envoy's: every resource,
// wherever it is shown (the active state and an error_state's
// failed_configuration alike), is redacted first (see Redact).
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
		items = append(items, typed(Redact(res)))
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
		// Secrets hold the SVIDs' private keys: items are redacted.
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

// Redacted replaces key material in dumped resources, as in Envoy's admin
// output.
const Redacted = "[redacted]"

// Redact returns a copy of m, an xDS resource, fit to be shown: the key
// material of SDS secrets replaced as Envoy's secret manager does in its
// config_dump (a tls_certificate's private_key, password and pkcs12, a
// session ticket key, a generic secret: inline_string "[redacted]", unless
// the data source is a file name), and then, as Envoy's config_dump does
// for every resource, every field annotated udpa.annotations.sensitive
// (and everything below one) redacted: strings and bytes become
// "[redacted]", other values are cleared, and data sources are redacted as
// secrets' are (a TLS context's inline key in a listener or cluster). Resources packed in Any fields
// (typed_config) are unpacked, redacted and packed again; an Any of an
// unknown type under a sensitive field is emptied. m itself is not
// changed.
func Redact(m proto.Message) proto.Message {
	if m == nil {
		return nil
	}
	m = proto.Clone(m)
	if s, ok := m.(*tlsv3.Secret); ok {
		redactSecret(s)
	}
	redactSensitive(m.ProtoReflect(), false)
	return m
}

// redactSecret is Envoy's redaction of dumped SDS secrets
// (source/common/secret/secret_manager_impl.cc, redactSecret), with pkcs12
// added: a PKCS#12 bundle holds the key too.
func redactSecret(s *tlsv3.Secret) {
	switch t := s.GetType().(type) {
	case *tlsv3.Secret_TlsCertificate:
		c := t.TlsCertificate
		redactDataSource(c.GetPrivateKey())
		redactDataSource(c.GetPassword())
		redactDataSource(c.GetPkcs12())
	case *tlsv3.Secret_SessionTicketKeys:
		for _, k := range t.SessionTicketKeys.GetKeys() {
			redactDataSource(k)
		}
	case *tlsv3.Secret_GenericSecret:
		redactDataSource(t.GenericSecret.GetSecret())
		for _, v := range t.GenericSecret.GetSecrets() {
			redactDataSource(v)
		}
	}
}

func redactDataSource(d *corev3.DataSource) {
	if d == nil {
		return
	}
	if _, file := d.GetSpecifier().(*corev3.DataSource_Filename); file {
		return
	}
	d.Specifier = &corev3.DataSource_InlineString{InlineString: Redacted}
}

var (
	anyName        = (&anypb.Any{}).ProtoReflect().Descriptor().FullName()
	dataSourceName = (&corev3.DataSource{}).ProtoReflect().Descriptor().FullName()
)

// redactSensitive is Envoy's MessageUtil::redact: below a field annotated
// sensitive, strings and bytes become "[redacted]" and other scalars are
// cleared; except that a sensitive data source is redacted as the secret
// manager does (inline_string "[redacted]", a file name kept), so that
// every redacted key reads the same.
func redactSensitive(m protoreflect.Message, sensitive bool) {
	switch m.Descriptor().FullName() {
	case anyName:
		redactAny(m, sensitive)
		return
	case dataSourceName:
		if ds, ok := m.Interface().(*corev3.DataSource); ok && sensitive {
			redactDataSource(ds) // as the secret manager does: inline_string, file names kept
			return
		}
	}
	var fields []protoreflect.FieldDescriptor
	m.Range(func(fd protoreflect.FieldDescriptor, _ protoreflect.Value) bool {
		fields = append(fields, fd)
		return true
	})
	for _, fd := range fields {
		s := sensitive || isSensitive(fd)
		switch {
		case fd.IsMap():
			mp := m.Mutable(fd).Map()
			if fd.MapValue().Message() != nil {
				mp.Range(func(_ protoreflect.MapKey, v protoreflect.Value) bool {
					redactSensitive(v.Message(), s)
					return true
				})
			} else if s {
				var keys []protoreflect.MapKey
				mp.Range(func(k protoreflect.MapKey, _ protoreflect.Value) bool {
					keys = append(keys, k)
					return true
				})
				for _, k := range keys {
					if v, ok := redactedScalar(fd.MapValue()); ok {
						mp.Set(k, v)
					} else {
						mp.Clear(k)
					}
				}
			}
		case fd.IsList():
			l := m.Mutable(fd).List()
			if fd.Message() != nil {
				for i := 0; i < l.Len(); i++ {
					redactSensitive(l.Get(i).Message(), s)
				}
			} else if s {
				if v, ok := redactedScalar(fd); ok {
					for i := 0; i < l.Len(); i++ {
						l.Set(i, v)
					}
				} else {
					m.Clear(fd)
				}
			}
		case fd.Message() != nil:
			redactSensitive(m.Mutable(fd).Message(), s)
		case s:
			if v, ok := redactedScalar(fd); ok {
				m.Set(fd, v)
			} else {
				m.Clear(fd)
			}
		}
	}
}

func isSensitive(fd protoreflect.FieldDescriptor) bool {
	opts := fd.Options()
	if opts == nil {
		return false
	}
	b, _ := proto.GetExtension(opts, udpa.E_Sensitive).(bool)
	return b
}

// redactedScalar is "[redacted]" for a string or bytes field.
func redactedScalar(fd protoreflect.FieldDescriptor) (protoreflect.Value, bool) {
	switch fd.Kind() {
	case protoreflect.StringKind:
		return protoreflect.ValueOfString(Redacted), true
	case protoreflect.BytesKind:
		return protoreflect.ValueOfBytes([]byte(Redacted)), true
	}
	return protoreflect.Value{}, false
}

// redactAny redacts the message an Any packs. One that cannot be unpacked
// is kept, unless it is sensitive: then its contents are dropped.
func redactAny(m protoreflect.Message, sensitive bool) {
	a, ok := m.Interface().(*anypb.Any)
	if !ok {
		return
	}
	inner, err := a.UnmarshalNew()
	if err != nil {
		if sensitive {
			a.Value = nil
		}
		return
	}
	redactSensitive(inner.ProtoReflect(), sensitive)
	b, err := deterministic.Marshal(inner)
	if err != nil {
		a.Value = nil
		return
	}
	a.Value = b
}
