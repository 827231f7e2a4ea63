package proxytest

import (
	"maps"
	"slices"

	core "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	listener "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	rbac "github.com/envoyproxy/go-control-plane/envoy/config/rbac/v3"
	tlsinspector "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/listener/tls_inspector/v3"
	hcm "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	tlsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/tls/v3"
	matcher "github.com/envoyproxy/go-control-plane/envoy/type/matcher/v3"
	"google.golang.org/protobuf/types/known/wrapperspb"
)

// The resources of mTLS between node proxies, as the Nodemesh control
// plane generates them (upstream Envoy extensions only): SDS secrets over
// ADS, the tls_inspector, filter chains matched on transport_protocol
// "tls" with a DownstreamTlsContext, clusters with an UpstreamTlsContext,
// RBAC on the peer's SPIFFE ID.

// TLSInspector adds the envoy.filters.listener.tls_inspector listener
// filter.
func TLSInspector(l *listener.Listener) {
	l.ListenerFilters = append(l.ListenerFilters, &listener.ListenerFilter{Name: "envoy.filters.listener.tls_inspector",
		ConfigType: &listener.ListenerFilter_TypedConfig{TypedConfig: Any(&tlsinspector.TlsInspector{})}})
}

// ADS is the config source "this ADS stream".
func ADS() *core.ConfigSource {
	return &core.ConfigSource{ResourceApiVersion: core.ApiVersion_V3,
		ConfigSourceSpecifier: &core.ConfigSource_Ads{Ads: &core.AggregatedConfigSource{}}}
}

// SDS references a secret fetched over ADS.
func SDS(name string) *tlsv3.SdsSecretConfig {
	return &tlsv3.SdsSecretConfig{Name: name, SdsConfig: ADS()}
}

// TLS13 pins TLS 1.3.
func TLS13() *tlsv3.TlsParameters {
	return &tlsv3.TlsParameters{TlsMinimumProtocolVersion: tlsv3.TlsParameters_TLSv1_3, TlsMaximumProtocolVersion: tlsv3.TlsParameters_TLSv1_3}
}

// URISAN matches a URI SAN (a SPIFFE ID).
func URISAN(m *matcher.StringMatcher) *tlsv3.SubjectAltNameMatcher {
	return &tlsv3.SubjectAltNameMatcher{SanType: tlsv3.SubjectAltNameMatcher_URI, Matcher: m}
}

// Exact and Prefix are string matchers.
func Exact(s string) *matcher.StringMatcher {
	return &matcher.StringMatcher{MatchPattern: &matcher.StringMatcher_Exact{Exact: s}}
}

// Prefix matches strings starting with s.
func Prefix(s string) *matcher.StringMatcher {
	return &matcher.StringMatcher{MatchPattern: &matcher.StringMatcher_Prefix{Prefix: s}}
}

// combined is a combined validation context: SAN matchers as default,
// the trust anchors from the secret.
func combined(validationSecret string, sans []*tlsv3.SubjectAltNameMatcher) *tlsv3.CommonTlsContext_CombinedValidationContext {
	return &tlsv3.CommonTlsContext_CombinedValidationContext{CombinedValidationContext: &tlsv3.CommonTlsContext_CombinedCertificateValidationContext{
		DefaultValidationContext:         &tlsv3.CertificateValidationContext{MatchTypedSubjectAltNames: sans},
		ValidationContextSdsSecretConfig: SDS(validationSecret),
	}}
}

// DownstreamTLS is the transport socket of a destination proxy's mTLS
// filter chain: the destination workload's certificate, client
// certificates required and verified (validation secret, and the peer's
// URI SAN matched by sans if any), TLS 1.3, ALPN h2 and http/1.1.
func DownstreamTLS(certSecret, validationSecret string, sans []*tlsv3.SubjectAltNameMatcher, tweaks ...func(*tlsv3.DownstreamTlsContext)) *core.TransportSocket {
	d := &tlsv3.DownstreamTlsContext{
		RequireClientCertificate: wrapperspb.Bool(true),
		CommonTlsContext: &tlsv3.CommonTlsContext{
			TlsParams:                      TLS13(),
			TlsCertificateSdsSecretConfigs: []*tlsv3.SdsSecretConfig{SDS(certSecret)},
			ValidationContextType:          combined(validationSecret, sans),
			AlpnProtocols:                  []string{"h2", "http/1.1"},
		},
	}
	for _, t := range tweaks {
		t(d)
	}
	return &core.TransportSocket{Name: "envoy.transport_sockets.tls", ConfigType: &core.TransportSocket_TypedConfig{TypedConfig: Any(d)}}
}

// UpstreamTLS is the transport socket of a source proxy's mTLS cluster:
// the source workload's certificate, the server verified (validation
// secret, its URI SAN matched by sans), TLS 1.3, ALPN h2 and http/1.1.
func UpstreamTLS(certSecret, validationSecret string, sans []*tlsv3.SubjectAltNameMatcher, tweaks ...func(*tlsv3.UpstreamTlsContext)) *core.TransportSocket {
	u := &tlsv3.UpstreamTlsContext{
		CommonTlsContext: &tlsv3.CommonTlsContext{
			TlsParams:                      TLS13(),
			TlsCertificateSdsSecretConfigs: []*tlsv3.SdsSecretConfig{SDS(certSecret)},
			ValidationContextType:          combined(validationSecret, sans),
			AlpnProtocols:                  []string{"h2", "http/1.1"},
		},
	}
	for _, t := range tweaks {
		t(u)
	}
	return &core.TransportSocket{Name: "envoy.transport_sockets.tls", ConfigType: &core.TransportSocket_TypedConfig{TypedConfig: Any(u)}}
}

// TLSChain is a filter chain for connections the tls_inspector found to
// be TLS, terminated with ts.
func TLSChain(name string, ts *core.TransportSocket, h *hcm.HttpConnectionManager) *listener.FilterChain {
	return &listener.FilterChain{Name: name, TransportSocket: ts,
		FilterChainMatch: &listener.FilterChainMatch{TransportProtocol: "tls"},
		Filters:          []*listener.Filter{HCMFilter(h)}}
}

// RawChain is a filter chain for plaintext connections (the permissive
// mode's second chain).
func RawChain(name string, h *hcm.HttpConnectionManager) *listener.FilterChain {
	return &listener.FilterChain{Name: name,
		FilterChainMatch: &listener.FilterChainMatch{TransportProtocol: "raw_buffer"},
		Filters:          []*listener.Filter{HCMFilter(h)}}
}

// CertSecret is a tls_certificate secret: a certificate chain and its
// private key, inline.
func CertSecret(name string, certPEM, keyPEM []byte) *tlsv3.Secret {
	return &tlsv3.Secret{Name: name, Type: &tlsv3.Secret_TlsCertificate{TlsCertificate: &tlsv3.TlsCertificate{
		CertificateChain: &core.DataSource{Specifier: &core.DataSource_InlineBytes{InlineBytes: certPEM}},
		PrivateKey:       &core.DataSource{Specifier: &core.DataSource_InlineBytes{InlineBytes: keyPEM}},
	}}}
}

// SVIDSecret is the tls_certificate secret of an SVID.
func SVIDSecret(name string, s *SVID) *tlsv3.Secret { return CertSecret(name, s.CertPEM, s.KeyPEM) }

// CASecret is a validation_context secret trusting the roots (PEM
// concatenated: several roots overlap during a CA rotation).
func CASecret(name string, rootsPEM ...[]byte) *tlsv3.Secret {
	var all []byte
	for _, r := range rootsPEM {
		all = append(all, r...)
	}
	return &tlsv3.Secret{Name: name, Type: &tlsv3.Secret_ValidationContext{ValidationContext: &tlsv3.CertificateValidationContext{
		TrustedCa: &core.DataSource{Specifier: &core.DataSource_InlineBytes{InlineBytes: all}},
	}}}
}

// SPIFFESecret is a validation_context secret with Envoy's SPIFFE
// certificate validator: a bundle per trust domain.
func SPIFFESecret(name string, bundles map[string][]byte) *tlsv3.Secret {
	cfg := &tlsv3.SPIFFECertValidatorConfig{}
	for _, td := range slices.Sorted(maps.Keys(bundles)) {
		cfg.TrustDomains = append(cfg.TrustDomains, &tlsv3.SPIFFECertValidatorConfig_TrustDomain{Name: td,
			TrustBundle: &core.DataSource{Specifier: &core.DataSource_InlineBytes{InlineBytes: bundles[td]}}})
	}
	return &tlsv3.Secret{Name: name, Type: &tlsv3.Secret_ValidationContext{ValidationContext: &tlsv3.CertificateValidationContext{
		CustomValidatorConfig: &core.TypedExtensionConfig{Name: "envoy.tls.cert_validator.spiffe", TypedConfig: Any(cfg)},
	}}}
}

// Authenticated is the principal of requests whose peer certificate's
// URI SAN (or DNS SAN, or subject) matches m; nil m: any TLS peer.
func Authenticated(m *matcher.StringMatcher) *rbac.Principal {
	return &rbac.Principal{Identifier: &rbac.Principal_Authenticated_{Authenticated: &rbac.Principal_Authenticated{PrincipalName: m}}}
}

// PeerPolicy allows any request from the principals.
func PeerPolicy(principals ...*rbac.Principal) *rbac.Policy {
	return &rbac.Policy{Permissions: []*rbac.Permission{{Rule: &rbac.Permission_Any{Any: true}}}, Principals: principals}
}
