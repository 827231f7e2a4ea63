package xds

// Builders of the resources of mTLS between node proxies
// (docs/ARCHITECTURE.md, "mTLS between node proxies"): SDS secrets from an
// identity snapshot, the destination proxy's filter chains per local pod
// and port (mTLS, and its plaintext twin in permissive mode), the source
// proxy's ORIGINAL_DST cluster per local workload, and the tls_inspector.
// They are pure and use only what nodemesh-proxy accepts (proxy/doc.go,
// "TLS" and "L4 chains") and upstream Envoy extensions. Build does not use
// them yet.

import (
	"fmt"
	"net/netip"
	"slices"
	"strings"
	"time"

	accesslogv3 "github.com/envoyproxy/go-control-plane/envoy/config/accesslog/v3"
	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	rbacv3 "github.com/envoyproxy/go-control-plane/envoy/config/rbac/v3"
	tlsinspectorv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/listener/tls_inspector/v3"
	hcmv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	netrbacv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/rbac/v3"
	tcpproxyv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/tcp_proxy/v3"
	tlsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/tls/v3"
	matcherv3 "github.com/envoyproxy/go-control-plane/envoy/type/matcher/v3"
	"github.com/envoyproxy/go-control-plane/pkg/wellknown"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/wrapperspb"

	"github.com/nodemesh/nodemesh/certs"
)

// Names and protocol identifiers of the mTLS resources.
const (
	// TrustBundleSecretName is the validation_context secret holding the
	// trust bundle (Envoy's SPIFFE validator, one entry per trust domain).
	// Every mTLS chain and cluster validates its peer against it.
	TrustBundleSecretName = "nodemesh-trust-bundle"
	// MTLSALPN is the ALPN protocol the source proxy offers and the
	// destination proxy's mTLS chains match on: a connection between
	// node proxies, as opposed to an application's own TLS.
	MTLSALPN = "nodemesh-mtls"
	// SPIFFEValidatorName is Envoy's SPIFFE certificate validator.
	SPIFFEValidatorName = "envoy.tls.cert_validator.spiffe"
	// outboundMTLSClusterPrefix + SPIFFE ID names a source workload's
	// mTLS cluster (OutboundMTLSClusterName).
	outboundMTLSClusterPrefix = "nodemesh-outbound-mtls|"
)

// SVIDSecretName is the name of the tls_certificate secret of the SVID of
// id: the SPIFFE ID itself ("spiffe://td/ns/n/sa/s").
func SVIDSecretName(id spiffeid.ID) string { return id.String() }

// OutboundMTLSClusterName names the source proxy's mTLS cluster of the
// workload id: "nodemesh-outbound-mtls|spiffe://td/ns/n/sa/s".
func OutboundMTLSClusterName(id spiffeid.ID) string { return outboundMTLSClusterPrefix + id.String() }

// InboundMTLSChainName names the mTLS filter chain of pod key ("ns/name")
// and port (0: its portless chain): "inbound-mtls|ns/name|80",
// "inbound-mtls|ns/name|ranges", as Build names its chains.
func InboundMTLSChainName(key string, port uint16) string {
	return "inbound-mtls|" + key + "|" + portLabel(port)
}

// InboundPlaintextChainName names the permissive-mode plaintext twin of
// InboundMTLSChainName: "inbound-plaintext|ns/name|80".
func InboundPlaintextChainName(key string, port uint16) string {
	return "inbound-plaintext|" + key + "|" + portLabel(port)
}

func portLabel(port uint16) string {
	if port == 0 {
		return "ranges"
	}
	return fmt.Sprint(port)
}

// SecretsFrom turns an identity snapshot into SDS secrets, sorted by name:
// per SVID a tls_certificate named by its SPIFFE ID (SVIDSecretName; the
// chain, leaf first, and the PKCS#8 key, inline), and, when the bundle
// has roots, the validation_context TrustBundleSecretName with the SPIFFE
// validator and each trust domain's roots. Without a bundle there is no
// validation secret, so chains and clusters naming it warm rather than
// accept peers they cannot verify. The result holds private keys: it
// must go only to the node's own proxy.
func SecretsFrom(snap *certs.Snapshot) ([]*tlsv3.Secret, error) {
	var out []*tlsv3.Secret
	if snap == nil {
		return nil, nil
	}
	if s := TrustBundleSecret(snap.Bundle); s != nil {
		out = append(out, s)
	}
	for _, v := range snap.SVIDs() {
		key, err := v.KeyPEM()
		if err != nil {
			return nil, err
		}
		out = append(out, &tlsv3.Secret{
			Name: SVIDSecretName(v.ID()),
			Type: &tlsv3.Secret_TlsCertificate{TlsCertificate: &tlsv3.TlsCertificate{
				CertificateChain: inlineBytes(v.ChainPEM()),
				PrivateKey:       inlineBytes(key),
			}},
		})
	}
	slices.SortFunc(out, func(a, b *tlsv3.Secret) int { return strings.Compare(a.GetName(), b.GetName()) })
	return out, nil
}

// TrustBundleSecret is the validation_context secret TrustBundleSecretName
// of bundle: Envoy's SPIFFE validator with a trust_domains entry per trust
// domain that has roots, sorted by name; nil when there is none.
func TrustBundleSecret(bundle *certs.Bundle) *tlsv3.Secret {
	cfg := &tlsv3.SPIFFECertValidatorConfig{}
	for _, td := range bundle.TrustDomains() {
		pem := bundle.PEM(td)
		if len(pem) == 0 {
			continue
		}
		cfg.TrustDomains = append(cfg.TrustDomains, &tlsv3.SPIFFECertValidatorConfig_TrustDomain{
			Name:        td.Name(),
			TrustBundle: inlineBytes(pem),
		})
	}
	if len(cfg.TrustDomains) == 0 {
		return nil
	}
	return &tlsv3.Secret{
		Name: TrustBundleSecretName,
		Type: &tlsv3.Secret_ValidationContext{ValidationContext: &tlsv3.CertificateValidationContext{
			CustomValidatorConfig: &corev3.TypedExtensionConfig{Name: SPIFFEValidatorName, TypedConfig: typed(cfg)},
		}},
	}
}

func inlineBytes(b []byte) *corev3.DataSource {
	return &corev3.DataSource{Specifier: &corev3.DataSource_InlineBytes{InlineBytes: b}}
}

// TLSInspectorFilter is the envoy.filters.listener.tls_inspector listener
// filter, without options: it sets a connection's transport_protocol
// ("tls" or "raw_buffer") and its ALPN for filter chain selection.
func TLSInspectorFilter() *listenerv3.ListenerFilter {
	return &listenerv3.ListenerFilter{
		Name:       wellknown.TlsInspector,
		ConfigType: &listenerv3.ListenerFilter_TypedConfig{TypedConfig: typed(&tlsinspectorv3.TlsInspector{})},
	}
}

// InboundChain describes the destination proxy's chains of one local pod
// and port.
type InboundChain struct {
	// Key is the pod's "namespace/name", for the chain names.
	Key string
	// Addrs are the pod's addresses, matched as destination (/32, /128).
	Addrs []netip.Addr
	// Port is the destination port; 0 matches any port (the pod's
	// portless chain, as in Build).
	Port uint16
	// ID is the pod's SPIFFE ID: the chain presents its SVID
	// (SVIDSecretName) and accepts peers of its trust domain.
	ID spiffeid.ID
	// HCM, when set, is the chain's last network filter (L7 rules; its
	// HTTP RBAC sees the peer as authenticated). Otherwise the chain is
	// L4: tcp_proxy to InboundClusterName.
	HCM *hcmv3.HttpConnectionManager
	// Peers, when not nil, binds peer identities to addresses: a network
	// RBAC filter first in the chain admits a connection only when its
	// peer certificate's SPIFFE ID is a key of Peers and the connection
	// comes from one of that key's addresses. Empty: nobody. nil: any
	// peer of the trust domain.
	Peers map[spiffeid.ID][]netip.Addr
	// LogName, for an L4 chain, sends one entry per connection (peer,
	// bytes, and why it was refused) to the agent's access log service
	// (tcp_grpc) under this log name.
	LogName string
}

// InboundMTLSFilterChain builds the mTLS chain of c: it matches the pod's
// addresses, the port, transport_protocol "tls" and ALPN MTLSALPN, and
// terminates TLS 1.3 with the pod's SVID, a client certificate required
// and verified against TrustBundleSecretName with a URI SAN in the pod's
// trust domain; then the peer binding (Peers) and the HCM or tcp_proxy.
func InboundMTLSFilterChain(c InboundChain) *listenerv3.FilterChain {
	match := inboundMatch(c)
	match.TransportProtocol = "tls"
	match.ApplicationProtocols = []string{MTLSALPN}
	var filters []*listenerv3.Filter
	if c.Peers != nil {
		filters = append(filters, peerRBACFilter(c.Peers))
	}
	if c.HCM != nil {
		filters = append(filters, hcmFilter(c.HCM))
	} else {
		filters = append(filters, tcpProxyFilter("nodemesh_inbound_mtls", InboundClusterName, c.LogName))
	}
	return &listenerv3.FilterChain{
		Name:             InboundMTLSChainName(c.Key, c.Port),
		FilterChainMatch: match,
		TransportSocket: tlsTransportSocket(&tlsv3.DownstreamTlsContext{
			RequireClientCertificate: wrapperspb.Bool(true),
			CommonTlsContext:         mtlsCommonContext(c.ID),
		}),
		Filters: filters,
	}
}

// InboundPlaintextFilterChain builds the twin of InboundMTLSFilterChain
// for clients that do not speak mTLS between node proxies: the same match
// with transport_protocol transport ("raw_buffer", or "tls" without ALPN
// for an application's own TLS), no TLS termination, and c.HCM or a
// tcp_proxy to InboundClusterName (permissive mode). refuse (strict mode)
// puts a network RBAC that admits nobody in front: the connection is
// closed, and logged as refused under c.LogName. Peers does not apply: a
// plaintext peer has no identity to check.
func InboundPlaintextFilterChain(c InboundChain, transport string, refuse bool) *listenerv3.FilterChain {
	match := inboundMatch(c)
	match.TransportProtocol = transport
	name := InboundPlaintextChainName(c.Key, c.Port)
	if transport == "tls" {
		name = "inbound-tls-passthrough|" + c.Key + "|" + portLabel(c.Port)
	}
	var filters []*listenerv3.Filter
	if refuse {
		name = "inbound-strict-refuse|" + strings.TrimPrefix(name, "inbound-")
		filters = append(filters, refuseFilter())
	}
	if c.HCM != nil && !refuse {
		filters = append(filters, hcmFilter(c.HCM))
	} else {
		filters = append(filters, tcpProxyFilter("nodemesh_inbound_plaintext", InboundClusterName, c.LogName))
	}
	return &listenerv3.FilterChain{
		Name:             name,
		FilterChainMatch: match,
		Filters:          filters,
	}
}

func inboundMatch(c InboundChain) *listenerv3.FilterChainMatch {
	m := &listenerv3.FilterChainMatch{}
	if c.Port != 0 {
		m.DestinationPort = wrapperspb.UInt32(uint32(c.Port))
	}
	addrs := slices.Clone(c.Addrs)
	slices.SortFunc(addrs, netip.Addr.Compare)
	for _, a := range addrs {
		m.PrefixRanges = append(m.PrefixRanges, cidr(netip.PrefixFrom(a, a.BitLen())))
	}
	return m
}

func hcmFilter(h *hcmv3.HttpConnectionManager) *listenerv3.Filter {
	return &listenerv3.Filter{
		Name:       wellknown.HTTPConnectionManager,
		ConfigType: &listenerv3.Filter_TypedConfig{TypedConfig: typed(h)},
	}
}

// tcpProxyFilter proxies to cluster, logging each connection under logName
// (none when empty).
func tcpProxyFilter(statPrefix, cluster, logName string) *listenerv3.Filter {
	tp := &tcpproxyv3.TcpProxy{
		StatPrefix:       statPrefix,
		ClusterSpecifier: &tcpproxyv3.TcpProxy_Cluster{Cluster: cluster},
	}
	if logName != "" {
		tp.AccessLog = []*accesslogv3.AccessLog{tcpAccessLog(logName)}
	}
	return &listenerv3.Filter{
		Name:       wellknown.TCPProxy,
		ConfigType: &listenerv3.Filter_TypedConfig{TypedConfig: typed(tp)},
	}
}

// StrictRefusePolicy is the RBAC stat prefix of strict mode's refusal of
// plaintext clients, which access log entries carry.
const StrictRefusePolicy = "nodemesh_strict_plaintext_refused"

// refuseFilter is a network RBAC admitting nobody (ALLOW without
// policies).
func refuseFilter() *listenerv3.Filter {
	return &listenerv3.Filter{
		Name: wellknown.RoleBasedAccessControl,
		ConfigType: &listenerv3.Filter_TypedConfig{TypedConfig: typed(&netrbacv3.RBAC{
			StatPrefix: StrictRefusePolicy,
			Rules:      &rbacv3.RBAC{Action: rbacv3.RBAC_ALLOW},
		})},
	}
}

// PeerBindingPolicy is the name of the RBAC policy binding peer SPIFFE IDs
// to source addresses.
const PeerBindingPolicy = "mtls-peer-identity"

// peerRBACFilter admits a connection whose authenticated peer is a key of
// peers connecting from one of its addresses; one policy,
// PeerBindingPolicy. No peers: nobody.
func peerRBACFilter(peers map[spiffeid.ID][]netip.Addr) *listenerv3.Filter {
	rules := &rbacv3.RBAC{Action: rbacv3.RBAC_ALLOW}
	ids := make([]spiffeid.ID, 0, len(peers))
	for id := range peers {
		ids = append(ids, id)
	}
	slices.SortFunc(ids, func(a, b spiffeid.ID) int { return strings.Compare(a.String(), b.String()) })
	var principals []*rbacv3.Principal
	for _, id := range ids {
		addrs := slices.Clone(peers[id])
		slices.SortFunc(addrs, netip.Addr.Compare)
		addrs = slices.Compact(addrs)
		var from []*rbacv3.Principal
		for _, a := range addrs {
			from = append(from, &rbacv3.Principal{Identifier: &rbacv3.Principal_DirectRemoteIp{DirectRemoteIp: cidr(netip.PrefixFrom(a, a.BitLen()))}})
		}
		if len(from) == 0 {
			continue
		}
		authn := &rbacv3.Principal{Identifier: &rbacv3.Principal_Authenticated_{
			Authenticated: &rbacv3.Principal_Authenticated{PrincipalName: exactMatcher(id.String())},
		}}
		src := from[0]
		if len(from) > 1 {
			src = &rbacv3.Principal{Identifier: &rbacv3.Principal_OrIds{OrIds: &rbacv3.Principal_Set{Ids: from}}}
		}
		principals = append(principals, &rbacv3.Principal{Identifier: &rbacv3.Principal_AndIds{AndIds: &rbacv3.Principal_Set{Ids: []*rbacv3.Principal{authn, src}}}})
	}
	if len(principals) > 0 {
		rules.Policies = map[string]*rbacv3.Policy{PeerBindingPolicy: {
			Permissions: []*rbacv3.Permission{{Rule: &rbacv3.Permission_Any{Any: true}}},
			Principals:  principals,
		}}
	}
	return &listenerv3.Filter{
		Name: wellknown.RoleBasedAccessControl,
		ConfigType: &listenerv3.Filter_TypedConfig{TypedConfig: typed(&netrbacv3.RBAC{
			StatPrefix: "nodemesh_inbound_mtls",
			Rules:      rules,
		})},
	}
}

func exactMatcher(s string) *matcherv3.StringMatcher {
	return &matcherv3.StringMatcher{MatchPattern: &matcherv3.StringMatcher_Exact{Exact: s}}
}

// OutboundMTLSCluster builds the source proxy's cluster of the local
// workload id: Build's outbound ORIGINAL_DST cluster (CLUSTER_PROVIDED,
// SO_MARK MarkProxyEgress, the downstream's HTTP protocol) named
// OutboundMTLSClusterName(id), whose upstream connections are TLS 1.3
// with id's SVID, ALPN MTLSALPN, and a server certificate verified
// against TrustBundleSecretName with a URI SAN in id's trust domain (the
// destination's identity is not known per connection, only its trust
// domain).
func OutboundMTLSCluster(id spiffeid.ID, connectTimeout time.Duration) *clusterv3.Cluster {
	var out direction
	for _, d := range directions(Config{}) {
		if d.name == "outbound" {
			out = d
		}
	}
	c := makeCluster(out, connectTimeout)
	c.Name = OutboundMTLSClusterName(id)
	c.TransportSocket = tlsTransportSocket(&tlsv3.UpstreamTlsContext{CommonTlsContext: mtlsCommonContext(id)})
	return c
}

// mtlsCommonContext presents id's SVID and verifies the peer against the
// trust bundle, requiring a URI SAN in id's trust domain; TLS 1.3 only;
// ALPN MTLSALPN.
func mtlsCommonContext(id spiffeid.ID) *tlsv3.CommonTlsContext {
	return &tlsv3.CommonTlsContext{
		TlsParams: &tlsv3.TlsParameters{
			TlsMinimumProtocolVersion: tlsv3.TlsParameters_TLSv1_3,
			TlsMaximumProtocolVersion: tlsv3.TlsParameters_TLSv1_3,
		},
		TlsCertificateSdsSecretConfigs: []*tlsv3.SdsSecretConfig{sdsSecret(SVIDSecretName(id))},
		ValidationContextType: &tlsv3.CommonTlsContext_CombinedValidationContext{
			CombinedValidationContext: &tlsv3.CommonTlsContext_CombinedCertificateValidationContext{
				DefaultValidationContext: &tlsv3.CertificateValidationContext{
					MatchTypedSubjectAltNames: []*tlsv3.SubjectAltNameMatcher{{
						SanType: tlsv3.SubjectAltNameMatcher_URI,
						Matcher: &matcherv3.StringMatcher{MatchPattern: &matcherv3.StringMatcher_Prefix{
							Prefix: "spiffe://" + id.TrustDomain().Name() + "/",
						}},
					}},
				},
				ValidationContextSdsSecretConfig: sdsSecret(TrustBundleSecretName),
			},
		},
		AlpnProtocols: []string{MTLSALPN},
	}
}

func sdsSecret(name string) *tlsv3.SdsSecretConfig {
	return &tlsv3.SdsSecretConfig{Name: name, SdsConfig: adsConfigSource()}
}

func tlsTransportSocket(ctx proto.Message) *corev3.TransportSocket {
	return &corev3.TransportSocket{
		Name:       wellknown.TransportSocketTls,
		ConfigType: &corev3.TransportSocket_TypedConfig{TypedConfig: typed(ctx)},
	}
}
