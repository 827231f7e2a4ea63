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
	// HCM, when set, is the chain's only network filter (L7 rules; its
	// HTTP RBAC sees the peer as authenticated). Otherwise the chain is
	// L4: network RBAC when AllowedPeers is not nil, then tcp_proxy to
	// InboundClusterName.
	HCM *hcmv3.HttpConnectionManager
	// AllowedPeers, for an L4 chain, are the SPIFFE IDs allowed to
	// connect (authenticated principal_name exact). nil: no RBAC filter,
	// any peer of the trust domain passes; empty: nobody.
	AllowedPeers []spiffeid.ID
}

// InboundMTLSFilterChain builds the mTLS chain of c: it matches the pod's
// addresses, the port, transport_protocol "tls" and ALPN MTLSALPN, and
// terminates TLS 1.3 with the pod's SVID, a client certificate required
// and verified against TrustBundleSecretName with a URI SAN in the pod's
// trust domain.
func InboundMTLSFilterChain(c InboundChain) *listenerv3.FilterChain {
	match := inboundMatch(c)
	match.TransportProtocol = "tls"
	match.ApplicationProtocols = []string{MTLSALPN}
	filters := []*listenerv3.Filter{}
	if c.HCM != nil {
		filters = append(filters, hcmFilter(c.HCM))
	} else {
		if c.AllowedPeers != nil {
			filters = append(filters, peerRBACFilter(c.AllowedPeers))
		}
		filters = append(filters, tcpProxyFilter("nodemesh_inbound_mtls"))
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

// InboundPlaintextFilterChain builds the permissive mode's twin of
// InboundMTLSFilterChain: the same match with transport_protocol
// "raw_buffer", no TLS, and c.HCM or a bare tcp_proxy to
// InboundClusterName. AllowedPeers does not apply: a plaintext peer has
// no identity to check, so what reaches this chain is what the datapath's
// L3/L4 verdict let through; strict mode has no such chain.
func InboundPlaintextFilterChain(c InboundChain) *listenerv3.FilterChain {
	match := inboundMatch(c)
	match.TransportProtocol = "raw_buffer"
	f := tcpProxyFilter("nodemesh_inbound_plaintext")
	if c.HCM != nil {
		f = hcmFilter(c.HCM)
	}
	return &listenerv3.FilterChain{
		Name:             InboundPlaintextChainName(c.Key, c.Port),
		FilterChainMatch: match,
		Filters:          []*listenerv3.Filter{f},
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

func tcpProxyFilter(statPrefix string) *listenerv3.Filter {
	return &listenerv3.Filter{
		Name: wellknown.TCPProxy,
		ConfigType: &listenerv3.Filter_TypedConfig{TypedConfig: typed(&tcpproxyv3.TcpProxy{
			StatPrefix:       statPrefix,
			ClusterSpecifier: &tcpproxyv3.TcpProxy_Cluster{Cluster: InboundClusterName},
		})},
	}
}

// peerRBACFilter allows connections whose authenticated peer is one of
// ids (exact URI SAN); one policy, "mtls-peers". No ids: nobody.
func peerRBACFilter(ids []spiffeid.ID) *listenerv3.Filter {
	rules := &rbacv3.RBAC{Action: rbacv3.RBAC_ALLOW}
	if len(ids) > 0 {
		names := make([]string, 0, len(ids))
		for _, id := range ids {
			names = append(names, id.String())
		}
		slices.Sort(names)
		names = slices.Compact(names)
		var principals []*rbacv3.Principal
		for _, n := range names {
			principals = append(principals, &rbacv3.Principal{Identifier: &rbacv3.Principal_Authenticated_{
				Authenticated: &rbacv3.Principal_Authenticated{PrincipalName: exactMatcher(n)},
			}})
		}
		rules.Policies = map[string]*rbacv3.Policy{"mtls-peers": {
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
