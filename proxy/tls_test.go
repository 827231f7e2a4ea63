package proxy

import (
	"bufio"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"os"
	"strings"
	"testing"
	"time"

	admin "github.com/envoyproxy/go-control-plane/envoy/admin/v3"
	cluster "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	core "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	listener "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	rbac "github.com/envoyproxy/go-control-plane/envoy/config/rbac/v3"
	route "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	tlsinspector "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/listener/tls_inspector/v3"
	hcm "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	tlsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/tls/v3"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/wrapperspb"

	pt "github.com/nodemesh/nodemesh/proxy/proxytest"
)

// mtlsListener is what the control plane sends a destination node for
// mTLS: the tls_inspector and a "tls" chain.
func mtlsListener(tweaks ...func(*listener.Listener)) *listener.Listener {
	h := pt.HCM("routes", allowAll())
	l := pt.Listener("in", "127.0.0.1", 0, h, pt.TLSInspector)
	l.FilterChains = []*listener.FilterChain{pt.TLSChain("mtls", pt.DownstreamTLS("cert", "bundle",
		[]*tlsv3.SubjectAltNameMatcher{pt.URISAN(pt.Prefix("spiffe://" + meshTD + "/"))}), h)}
	for _, t := range tweaks {
		t(l)
	}
	return l
}

// withDownstream edits the first chain's DownstreamTlsContext.
func withDownstream(f func(*tlsv3.DownstreamTlsContext)) func(*listener.Listener) {
	return func(l *listener.Listener) {
		var d tlsv3.DownstreamTlsContext
		if err := l.FilterChains[0].TransportSocket.GetTypedConfig().UnmarshalTo(&d); err != nil {
			panic(err)
		}
		f(&d)
		l.FilterChains[0].TransportSocket.ConfigType = &core.TransportSocket_TypedConfig{TypedConfig: pt.Any(&d)}
	}
}

func withCommon(f func(*tlsv3.CommonTlsContext)) func(*listener.Listener) {
	return withDownstream(func(d *tlsv3.DownstreamTlsContext) { f(d.CommonTlsContext) })
}

func TestTranslateTLSListener(t *testing.T) {
	h := pt.HCM("routes", allowAll())
	for _, tc := range []struct {
		name    string
		l       *listener.Listener
		wantErr string
	}{
		{name: "strict", l: mtlsListener()},
		{name: "permissive", l: mtlsListener(func(l *listener.Listener) { l.FilterChains = append(l.FilterChains, pt.RawChain("plain", h)) })},
		{name: "application protocols", l: mtlsListener(func(l *listener.Listener) {
			l.FilterChains[0].FilterChainMatch.ApplicationProtocols = []string{"h2", "http/1.1"}
		})},
		{name: "validation_context_sds_secret_config", l: mtlsListener(withCommon(func(c *tlsv3.CommonTlsContext) {
			c.ValidationContextType = &tlsv3.CommonTlsContext_ValidationContextSdsSecretConfig{ValidationContextSdsSecretConfig: pt.SDS("bundle")}
		}))},
		{name: "TLS 1.2 to 1.3", l: mtlsListener(withCommon(func(c *tlsv3.CommonTlsContext) {
			c.TlsParams = &tlsv3.TlsParameters{TlsMinimumProtocolVersion: tlsv3.TlsParameters_TLSv1_2}
		}))},
		{name: "client certificate optional", l: mtlsListener(withDownstream(func(d *tlsv3.DownstreamTlsContext) { d.RequireClientCertificate = nil }))},
		{name: "tls match without the inspector", wantErr: `filter_chains[0].filter_chain_match: matching on transport_protocol "tls" or application_protocols needs the envoy.filters.listener.tls_inspector listener filter`,
			l: mtlsListener(func(l *listener.Listener) { l.ListenerFilters = nil })},
		{name: "ALPN match without the inspector", wantErr: `needs the envoy.filters.listener.tls_inspector listener filter`,
			l: mtlsListener(func(l *listener.Listener) {
				l.ListenerFilters = nil
				l.FilterChains[0].FilterChainMatch = &listener.FilterChainMatch{ApplicationProtocols: []string{"h2"}}
			})},
		{name: "inspector twice", wantErr: "listener_filters[1]: envoy.filters.listener.tls_inspector is listed twice", l: mtlsListener(pt.TLSInspector)},
		{name: "inspector with ja3", wantErr: `listener_filters[0].typed_config: field enable_ja3_fingerprinting not supported`,
			l: mtlsListener(func(l *listener.Listener) {
				l.ListenerFilters[0].ConfigType = &listener.ListenerFilter_TypedConfig{TypedConfig: pt.Any(&tlsinspector.TlsInspector{EnableJa3Fingerprinting: wrapperspb.Bool(true)})}
			})},
		{name: "server names", wantErr: "filter_chains[0].filter_chain_match: field server_names not supported",
			l: mtlsListener(func(l *listener.Listener) { l.FilterChains[0].FilterChainMatch.ServerNames = []string{"x.example"} })},
		{name: "unknown transport protocol", wantErr: `transport_protocol: "quic" is not supported`,
			l: mtlsListener(func(l *listener.Listener) { l.FilterChains[0].FilterChainMatch.TransportProtocol = "quic" })},
		{name: "duplicate tls chains", wantErr: "filter_chains[1]: filter_chain_match overlaps filter_chains[0]",
			l: mtlsListener(func(l *listener.Listener) { l.FilterChains = append(l.FilterChains, l.FilterChains[0]) })},
		{name: "another transport socket", wantErr: `filter_chains[0].transport_socket: transport socket "envoy.transport_sockets.tls" (type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext) is not supported by nodemesh-proxy`,
			l: mtlsListener(func(l *listener.Listener) {
				l.FilterChains[0].TransportSocket = pt.UpstreamTLS("cert", "bundle", nil)
			})},
		{name: "transport socket connect timeout", wantErr: "filter_chains[0]: field transport_socket_connect_timeout not supported",
			l: mtlsListener(func(l *listener.Listener) {
				l.FilterChains[0].TransportSocketConnectTimeout = durationpb.New(time.Second)
			})},
		{name: "inline certificate", wantErr: "common_tls_context: field tls_certificates not supported",
			l: mtlsListener(withCommon(func(c *tlsv3.CommonTlsContext) {
				c.TlsCertificates = []*tlsv3.TlsCertificate{{PrivateKey: &core.DataSource{Specifier: &core.DataSource_InlineString{InlineString: "secret"}}}}
			}))},
		{name: "inline validation context", wantErr: "common_tls_context: field validation_context not supported",
			l: mtlsListener(withCommon(func(c *tlsv3.CommonTlsContext) {
				c.ValidationContextType = &tlsv3.CommonTlsContext_ValidationContext{ValidationContext: &tlsv3.CertificateValidationContext{}}
			}))},
		{name: "two certificates", wantErr: "tls_certificate_sds_secret_configs: 2 certificates; nodemesh-proxy supports one",
			l: mtlsListener(withCommon(func(c *tlsv3.CommonTlsContext) {
				c.TlsCertificateSdsSecretConfigs = append(c.TlsCertificateSdsSecretConfigs, pt.SDS("cert2"))
			}))},
		{name: "no certificate", wantErr: "tls_certificate_sds_secret_configs: a server needs a certificate",
			l: mtlsListener(withCommon(func(c *tlsv3.CommonTlsContext) { c.TlsCertificateSdsSecretConfigs = nil }))},
		{name: "client certificate required without validation", wantErr: "require_client_certificate: needs a validation context",
			l: mtlsListener(withCommon(func(c *tlsv3.CommonTlsContext) { c.ValidationContextType = nil }))},
		{name: "cipher suites", wantErr: "tls_params: field cipher_suites not supported",
			l: mtlsListener(withCommon(func(c *tlsv3.CommonTlsContext) { c.TlsParams.CipherSuites = []string{"ECDHE-ECDSA-AES128-GCM-SHA256"} }))},
		{name: "TLS 1.1", wantErr: "tls_minimum_protocol_version: TLSv1_1 is not supported by nodemesh-proxy (TLSv1_2, TLSv1_3)",
			l: mtlsListener(withCommon(func(c *tlsv3.CommonTlsContext) { c.TlsParams.TlsMinimumProtocolVersion = tlsv3.TlsParameters_TLSv1_1 }))},
		{name: "minimum above maximum", wantErr: "tls_params: minimum version TLSv1_3 above maximum TLSv1_2",
			l: mtlsListener(withCommon(func(c *tlsv3.CommonTlsContext) { c.TlsParams.TlsMaximumProtocolVersion = tlsv3.TlsParameters_TLSv1_2 }))},
		{name: "static secret", wantErr: "tls_certificate_sds_secret_configs[0].sds_config: is required (static secrets are not supported",
			l: mtlsListener(withCommon(func(c *tlsv3.CommonTlsContext) { c.TlsCertificateSdsSecretConfigs[0].SdsConfig = nil }))},
		{name: "sds over a path", wantErr: "tls_certificate_sds_secret_configs[0].sds_config: field path_config_source not supported",
			l: mtlsListener(withCommon(func(c *tlsv3.CommonTlsContext) {
				c.TlsCertificateSdsSecretConfigs[0].SdsConfig = &core.ConfigSource{ConfigSourceSpecifier: &core.ConfigSource_PathConfigSource{PathConfigSource: &core.PathConfigSource{Path: "/x"}}}
			}))},
		{name: "same secret as certificate and validation", wantErr: `secret "cert" is used both as`,
			l: mtlsListener(withCommon(func(c *tlsv3.CommonTlsContext) {
				c.ValidationContextType = &tlsv3.CommonTlsContext_ValidationContextSdsSecretConfig{ValidationContextSdsSecretConfig: pt.SDS("cert")}
			}))},
		{name: "DNS SAN matcher", wantErr: "default_validation_context.match_typed_subject_alt_names[0].san_type: DNS is not supported",
			l: mtlsListener(withCommon(func(c *tlsv3.CommonTlsContext) {
				c.GetCombinedValidationContext().DefaultValidationContext.MatchTypedSubjectAltNames[0].SanType = tlsv3.SubjectAltNameMatcher_DNS
			}))},
		{name: "allow expired certificates", wantErr: "default_validation_context: field allow_expired_certificate not supported",
			l: mtlsListener(withCommon(func(c *tlsv3.CommonTlsContext) {
				c.GetCombinedValidationContext().DefaultValidationContext.AllowExpiredCertificate = true
			}))},
		{name: "certificate provider", wantErr: "combined_validation_context: field validation_context_certificate_provider_instance not supported",
			l: mtlsListener(withCommon(func(c *tlsv3.CommonTlsContext) {
				c.GetCombinedValidationContext().ValidationContextCertificateProviderInstance = &tlsv3.CommonTlsContext_CertificateProviderInstance{InstanceName: "x"}
			}))},
		{name: "session ticket keys", wantErr: "field disable_stateless_session_resumption not supported",
			l: mtlsListener(withDownstream(func(d *tlsv3.DownstreamTlsContext) {
				d.SessionTicketKeysType = &tlsv3.DownstreamTlsContext_DisableStatelessSessionResumption{DisableStatelessSessionResumption: true}
			}))},
		{name: "require SNI", wantErr: "field require_sni not supported",
			l: mtlsListener(withDownstream(func(d *tlsv3.DownstreamTlsContext) { d.RequireSni = wrapperspb.Bool(true) }))},
		{name: "empty ALPN", wantErr: "alpn_protocols[0]: must be 1 to 255 bytes",
			l: mtlsListener(withCommon(func(c *tlsv3.CommonTlsContext) { c.AlpnProtocols = []string{""} }))},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := compileListener(tc.l)
			checkErr(t, err, tc.wantErr)
		})
	}
}

func mtlsCluster(tweaks ...func(*cluster.Cluster)) *cluster.Cluster {
	return pt.OriginalDstCluster("mesh", 0xb00, append([]func(*cluster.Cluster){func(c *cluster.Cluster) {
		c.TransportSocket = pt.UpstreamTLS("cert", "bundle", []*tlsv3.SubjectAltNameMatcher{pt.URISAN(pt.Exact(backendID))})
	}}, tweaks...)...)
}

func withUpstream(f func(*tlsv3.UpstreamTlsContext)) func(*cluster.Cluster) {
	return func(c *cluster.Cluster) {
		var u tlsv3.UpstreamTlsContext
		if err := c.TransportSocket.GetTypedConfig().UnmarshalTo(&u); err != nil {
			panic(err)
		}
		f(&u)
		c.TransportSocket.ConfigType = &core.TransportSocket_TypedConfig{TypedConfig: pt.Any(&u)}
	}
}

func TestTranslateTLSCluster(t *testing.T) {
	for _, tc := range []struct {
		name    string
		c       *cluster.Cluster
		wantErr string
	}{
		{name: "original dst with mTLS", c: mtlsCluster()},
		{name: "sni", c: mtlsCluster(withUpstream(func(u *tlsv3.UpstreamTlsContext) { u.Sni = "backend.shop" }))},
		{name: "static with TLS", c: func() *cluster.Cluster {
			c := pt.StaticCluster("s", pt.SocketAddress("127.0.0.1", 80))
			c.TransportSocket = pt.UpstreamTLS("cert", "bundle", nil)
			return c
		}()},
		{name: "without a client certificate", c: mtlsCluster(withUpstream(func(u *tlsv3.UpstreamTlsContext) {
			u.CommonTlsContext.TlsCertificateSdsSecretConfigs = nil
		}))},
		{name: "without validation", wantErr: `cluster "mesh".transport_socket.typed_config.common_tls_context: a validation context is required`,
			c: mtlsCluster(withUpstream(func(u *tlsv3.UpstreamTlsContext) { u.CommonTlsContext.ValidationContextType = nil }))},
		{name: "max session keys", wantErr: "field max_session_keys not supported",
			c: mtlsCluster(withUpstream(func(u *tlsv3.UpstreamTlsContext) { u.MaxSessionKeys = wrapperspb.UInt32(4) }))},
		{name: "auto host sni", wantErr: "field auto_host_sni not supported",
			c: mtlsCluster(withUpstream(func(u *tlsv3.UpstreamTlsContext) { u.AutoHostSni = true }))},
		{name: "downstream context on a cluster", wantErr: `transport socket "envoy.transport_sockets.tls" (type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext) is not supported`,
			c: mtlsCluster(func(c *cluster.Cluster) { c.TransportSocket = pt.DownstreamTLS("cert", "bundle", nil) })},
		{name: "transport socket matches", wantErr: "field transport_socket_matches not supported",
			c: mtlsCluster(func(c *cluster.Cluster) {
				c.TransportSocketMatches = []*cluster.Cluster_TransportSocketMatch{{Name: "x"}}
			})},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := compileCluster(`cluster "`+tc.c.GetName()+`"`, tc.c)
			checkErr(t, err, tc.wantErr)
		})
	}
}

func TestCompileSecret(t *testing.T) {
	ca := pt.NewCA(t, meshTD)
	svid := ca.SVID(t, "shop", "backend")
	other := ca.SVID(t, "shop", "frontend")
	p := New(Config{NodeID: "n", AccessLog: io.Discard}, nil)
	withCert := func(f func(*tlsv3.TlsCertificate)) *tlsv3.Secret {
		s := pt.SVIDSecret("cert", svid)
		f(s.GetTlsCertificate())
		return s
	}
	withValidation := func(s *tlsv3.Secret, f func(*tlsv3.CertificateValidationContext)) *tlsv3.Secret {
		f(s.GetValidationContext())
		return s
	}
	spiffe := pt.SPIFFESecret("bundle", map[string][]byte{meshTD: ca.CertPEM})
	for _, tc := range []struct {
		name    string
		s       *tlsv3.Secret
		refs    []secretRef
		wantErr string
	}{
		{name: "certificate", s: pt.SVIDSecret("cert", svid)},
		{name: "certificate as inline strings", s: withCert(func(c *tlsv3.TlsCertificate) {
			c.CertificateChain = &core.DataSource{Specifier: &core.DataSource_InlineString{InlineString: string(svid.CertPEM)}}
			c.PrivateKey = &core.DataSource{Specifier: &core.DataSource_InlineString{InlineString: string(svid.KeyPEM)}}
		})},
		{name: "key of another certificate", wantErr: `secret "cert".tls_certificate: tls: private key does not match public key`,
			s: withCert(func(c *tlsv3.TlsCertificate) {
				c.PrivateKey.Specifier = &core.DataSource_InlineBytes{InlineBytes: other.KeyPEM}
			})},
		{name: "key from a file", wantErr: `tls_certificate.private_key: field filename not supported by nodemesh-proxy (inline_bytes or inline_string)`,
			s: withCert(func(c *tlsv3.TlsCertificate) {
				c.PrivateKey.Specifier = &core.DataSource_Filename{Filename: "/etc/key.pem"}
			})},
		{name: "key password", wantErr: "tls_certificate: field password not supported",
			s: withCert(func(c *tlsv3.TlsCertificate) { c.Password = &core.DataSource{} })},
		{name: "trusted_ca", s: pt.CASecret("bundle", ca.CertPEM)},
		{name: "trusted_ca with two roots", s: pt.CASecret("bundle", ca.CertPEM, pt.NewCA(t, meshTD).CertPEM)},
		{name: "trusted_ca not PEM", wantErr: "validation_context.trusted_ca: no PEM certificate", s: pt.CASecret("bundle", []byte("nope"))},
		{name: "trusted_ca with a key", wantErr: `validation_context.trusted_ca: PEM block "PRIVATE KEY" is not supported (certificates only)`,
			s: pt.CASecret("bundle", ca.CertPEM, svid.KeyPEM)},
		{name: "SPIFFE validator", s: spiffe},
		{name: "SPIFFE validator, two trust domains", s: pt.SPIFFESecret("bundle", map[string][]byte{meshTD: ca.CertPEM, "other.test": pt.NewCA(t, "other.test").CertPEM})},
		{name: "SPIFFE trust domain twice", wantErr: `trust_domains[1].name: trust domain "nodemesh.test" is listed twice`,
			s: withValidation(pt.SPIFFESecret("bundle", map[string][]byte{meshTD: ca.CertPEM}), func(v *tlsv3.CertificateValidationContext) {
				var c tlsv3.SPIFFECertValidatorConfig
				_ = v.CustomValidatorConfig.TypedConfig.UnmarshalTo(&c)
				c.TrustDomains = append(c.TrustDomains, c.TrustDomains[0])
				v.CustomValidatorConfig.TypedConfig = pt.Any(&c)
			})},
		{name: "SPIFFE bundle map", wantErr: "custom_validator_config.typed_config: field trust_bundles not supported",
			s: withValidation(pt.SPIFFESecret("bundle", map[string][]byte{meshTD: ca.CertPEM}), func(v *tlsv3.CertificateValidationContext) {
				v.CustomValidatorConfig.TypedConfig = pt.Any(&tlsv3.SPIFFECertValidatorConfig{TrustBundles: &core.DataSource{}})
			})},
		{name: "another validator", wantErr: `custom_validator_config: certificate validator "envoy.tls.cert_validator.default" is not supported by nodemesh-proxy`,
			s: withValidation(pt.CASecret("bundle", ca.CertPEM), func(v *tlsv3.CertificateValidationContext) {
				v.CustomValidatorConfig = &core.TypedExtensionConfig{Name: "envoy.tls.cert_validator.default", TypedConfig: pt.Any(&tlsv3.CertificateValidationContext{})}
			})},
		{name: "CRL", wantErr: "validation_context: field crl not supported",
			s: withValidation(pt.CASecret("bundle", ca.CertPEM), func(v *tlsv3.CertificateValidationContext) { v.Crl = &core.DataSource{} })},
		{name: "generic secret", wantErr: `secret "g": field generic_secret not supported`,
			s: &tlsv3.Secret{Name: "g", Type: &tlsv3.Secret_GenericSecret{GenericSecret: &tlsv3.GenericSecret{}}}},
		{name: "empty", wantErr: `secret "e": tls_certificate or validation_context is required`, s: &tlsv3.Secret{Name: "e"}},
		{name: "SAN matchers alone, used alone", wantErr: "trusted_ca or the envoy.tls.cert_validator.spiffe validator is required",
			s: &tlsv3.Secret{Name: "bundle", Type: &tlsv3.Secret_ValidationContext{ValidationContext: &tlsv3.CertificateValidationContext{
				MatchTypedSubjectAltNames: []*tlsv3.SubjectAltNameMatcher{pt.URISAN(pt.Exact(frontendID))}}}},
			refs: []secretRef{{kind: kindValidation, ctx: &tlsContext{valSecret: "bundle"}, user: "cluster x"}}},
		{name: "SAN matchers completing a default with trusted_ca",
			s: &tlsv3.Secret{Name: "bundle", Type: &tlsv3.Secret_ValidationContext{ValidationContext: &tlsv3.CertificateValidationContext{
				MatchTypedSubjectAltNames: []*tlsv3.SubjectAltNameMatcher{pt.URISAN(pt.Exact(frontendID))}}}},
			refs: []secretRef{{kind: kindValidation, ctx: &tlsContext{valSecret: "bundle", defaultVal: pt.CASecret("x", ca.CertPEM).GetValidationContext()}, user: "cluster x"}}},
		{name: "used as the other kind", wantErr: `secret "bundle": is a validation_context, but listener "in" chain "mtls" uses it as tls_certificate`,
			s: spiffe, refs: []secretRef{{kind: kindCertificate, ctx: &tlsContext{}, user: `listener "in" chain "mtls"`}}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			path := fmt.Sprintf("secret %q", tc.s.GetName())
			s, err := p.compileSecret(path, tc.s)
			if err == nil {
				err = p.checkSecretUse(path, s, tc.refs)
			}
			checkErr(t, err, tc.wantErr)
			if err != nil && strings.Contains(err.Error(), "PRIVATE KEY-----") {
				t.Fatalf("the error shows key material: %v", err)
			}
		})
	}
}

func TestSVIDVerifier(t *testing.T) {
	ca := pt.NewCA(t, meshTD)
	other := pt.NewCA(t, meshTD)
	bundles := map[string][]*x509.Certificate{meshTD: {ca.Cert}}
	roots := func(td string) []*x509.Certificate { return bundles[td] }
	now := time.Now()
	for _, tc := range []struct {
		name   string
		svid   *pt.SVID
		reason string
	}{
		{"valid", ca.SVID(t, "shop", "frontend"), ""},
		{"expired", ca.SVID(t, "shop", "frontend", pt.Expired), ReasonExpired},
		{"not yet valid", ca.SVID(t, "shop", "frontend", pt.NotYetValid), ReasonNotYetValid},
		{"wrong trust domain", ca.Issue(t, pt.SPIFFEID("other.test", "shop", "frontend")), ReasonWrongTrustDomain},
		{"unknown CA", other.SVID(t, "shop", "frontend"), ReasonUnknownCA},
		{"two URI SANs", ca.SVID(t, "shop", "frontend", pt.ExtraURI("spiffe://nodemesh.test/ns/shop/sa/admin")), ReasonMultipleURISANs},
		{"CA leaf", ca.SVID(t, "shop", "frontend", pt.CALeaf), ReasonLeafIsCA},
		{"no URI SAN", ca.SVID(t, "shop", "frontend", func(c *x509.Certificate) { c.URIs = nil; c.DNSNames = []string{"frontend"} }), ReasonNoSPIFFEID},
		{"not a SPIFFE ID", ca.Issue(t, "https://frontend.shop/"), ReasonNoSPIFFEID},
		{"upper-case trust domain", ca.Issue(t, "spiffe://Nodemesh.test/ns/shop/sa/frontend"), ReasonNoSPIFFEID},
		{"keyCertSign on a leaf", ca.SVID(t, "shop", "frontend", func(c *x509.Certificate) { c.KeyUsage |= x509.KeyUsageCertSign }), ReasonBadKeyUsage},
		{"no digitalSignature", ca.SVID(t, "shop", "frontend", func(c *x509.Certificate) { c.KeyUsage = x509.KeyUsageKeyEncipherment }), ReasonBadKeyUsage},
		{"expired from an unknown CA: expiry first", other.SVID(t, "shop", "frontend", pt.Expired), ReasonExpired},
		{"expired in a foreign trust domain: trust domain first", ca.Issue(t, pt.SPIFFEID("other.test", "shop", "x"), pt.Expired), ReasonWrongTrustDomain},
	} {
		t.Run(tc.name, func(t *testing.T) {
			id, err := X509SVIDVerifier{}.VerifySVID([]*x509.Certificate{tc.svid.Cert}, roots, now)
			if tc.reason == "" {
				if err != nil || id != tc.svid.ID {
					t.Fatalf("= %q, %v; want %s", id, err, tc.svid.ID)
				}
				return
			}
			var se *SVIDError
			if !errors.As(err, &se) || se.Reason != tc.reason || SVIDReason(err) != tc.reason {
				t.Fatalf("error %v, want reason %s", err, tc.reason)
			}
		})
	}
	if _, err := (X509SVIDVerifier{}).VerifySVID(nil, roots, now); SVIDReason(err) != ReasonMalformed {
		t.Errorf("no certificate: %v", err)
	}
}

// TestValidator covers the validation contexts around the SVID rules:
// trusted_ca for every trust domain, the SPIFFE validator per trust
// domain, URI SAN matchers, Envoy's verify modes, the memo of verified
// chains, and a pluggable SVIDVerifier.
func TestValidator(t *testing.T) {
	ca := pt.NewCA(t, meshTD)
	ca2 := pt.NewCA(t, "other.test")
	front := ca.SVID(t, "shop", "frontend")
	foreign := ca2.SVID(t, "shop", "frontend")
	compile := func(s *tlsv3.Secret, sv SVIDVerifier) *validator {
		t.Helper()
		v, err := compileValidation("v", s.GetValidationContext(), sv, false)
		if err != nil {
			t.Fatal(err)
		}
		return v
	}
	check := func(v *validator, s *pt.SVID, wantStat, wantReason string) {
		t.Helper()
		_, err := v.verify([]*x509.Certificate{s.Cert}, time.Now())
		var ve *verifyError
		switch {
		case wantStat == "" && err != nil:
			t.Errorf("%s refused: %v", s.ID, err)
		case wantStat != "" && (!errors.As(err, &ve) || ve.stat != wantStat || ve.reason != wantReason):
			t.Errorf("%s: %v, want %s/%s", s.ID, err, wantStat, wantReason)
		}
	}
	// trusted_ca: any trust domain whose chain ends there.
	v := compile(pt.CASecret("b", ca.CertPEM, ca2.CertPEM), X509SVIDVerifier{})
	check(v, front, "", "")
	check(v, foreign, "", "")
	if v.requireCert {
		t.Error("trusted_ca alone makes the client certificate mandatory (Envoy: optional)")
	}
	// The SPIFFE validator: each trust domain its own bundle.
	v = compile(pt.SPIFFESecret("b", map[string][]byte{meshTD: ca.CertPEM, "other.test": ca.CertPEM}), X509SVIDVerifier{})
	check(v, front, "", "")
	check(v, foreign, statFailVerifyError, ReasonUnknownCA)
	if !v.requireCert {
		t.Error("the SPIFFE validator must require a certificate")
	}
	// SAN matchers after the chain.
	s := pt.CASecret("b", ca.CertPEM)
	s.GetValidationContext().MatchTypedSubjectAltNames = []*tlsv3.SubjectAltNameMatcher{pt.URISAN(pt.Prefix("spiffe://" + meshTD + "/ns/shop/sa/front"))}
	v = compile(s, X509SVIDVerifier{})
	check(v, front, "", "")
	check(v, ca.SVID(t, "shop", "backend"), statFailVerifySAN, ReasonNotAllowed)
	if _, err := v.verify(nil, time.Now()); err == nil {
		t.Error("no certificate accepted")
	}
	// A pluggable verifier sees the chain and the bundles, and its
	// reason is reported; results are memoized per chain.
	calls := 0
	fake := svidFunc(func(chain []*x509.Certificate, roots func(string) []*x509.Certificate, _ time.Time) (string, error) {
		calls++
		if len(roots(meshTD)) == 0 {
			return "", &SVIDError{Reason: ReasonWrongTrustDomain, Err: errors.New("no bundle")}
		}
		if chain[0].URIs[0].String() == frontendID {
			return frontendID, nil
		}
		return "", &SVIDError{Reason: "svid-revoked", Err: errors.New("revoked")}
	})
	v = compile(pt.SPIFFESecret("b", map[string][]byte{meshTD: ca.CertPEM}), fake)
	check(v, front, "", "")
	check(v, front, "", "")
	check(v, ca.SVID(t, "shop", "backend"), statFailVerifyError, "svid-revoked")
	if calls != 2 {
		t.Errorf("the verifier ran %d times, want 2 (the second check of the same chain is memoized)", calls)
	}
}

type svidFunc func([]*x509.Certificate, func(string) []*x509.Certificate, time.Time) (string, error)

func (f svidFunc) VerifySVID(c []*x509.Certificate, r func(string) []*x509.Certificate, now time.Time) (string, error) {
	return f(c, r, now)
}

// TestAuthenticatedPrincipal holds Envoy's semantics: not on plaintext;
// without principal_name any TLS peer; with it the URI SANs, then the
// DNS SANs, then the subject.
func TestAuthenticatedPrincipal(t *testing.T) {
	peer := &tlsInfo{peerURIs: []string{frontendID}, peerDNS: []string{"frontend.shop.svc"}, peerSubj: "CN=frontend,O=shop"}
	noCert := &tlsInfo{}
	for _, tc := range []struct {
		name string
		m    *rbac.Principal
		tls  *tlsInfo
		want bool
	}{
		{"plaintext", pt.Authenticated(nil), nil, false},
		{"any TLS peer", pt.Authenticated(nil), peer, true},
		{"TLS without a client certificate", pt.Authenticated(nil), noCert, true},
		{"URI SAN exact", pt.Authenticated(pt.Exact(frontendID)), peer, true},
		{"URI SAN prefix (trust domain)", pt.Authenticated(pt.Prefix("spiffe://" + meshTD + "/")), peer, true},
		{"URI SAN regex", pt.Authenticated(pt.Regex(`spiffe://nodemesh\.test/ns/shop/sa/[a-z]+`)), peer, true},
		{"another SPIFFE ID", pt.Authenticated(pt.Exact(backendID)), peer, false},
		{"DNS SAN", pt.Authenticated(pt.Exact("frontend.shop.svc")), peer, true},
		{"subject", pt.Authenticated(pt.Exact("CN=frontend,O=shop")), peer, true},
		{"plaintext never matches a name", pt.Authenticated(pt.Exact(frontendID)), nil, false},
		{"not_id of another identity", &rbac.Principal{Identifier: &rbac.Principal_NotId{NotId: pt.Authenticated(pt.Exact(backendID))}}, peer, true},
		{"and_ids with a source address", &rbac.Principal{Identifier: &rbac.Principal_AndIds{AndIds: &rbac.Principal_Set{Ids: []*rbac.Principal{
			pt.Authenticated(pt.Exact(frontendID)),
			{Identifier: &rbac.Principal_DirectRemoteIp{DirectRemoteIp: cidrs("10.0.0.0/8")[0]}},
		}}}}, peer, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			m, err := compilePrincipal("p", tc.m)
			if err != nil {
				t.Fatal(err)
			}
			a := &requestAttrs{remote: netip.MustParseAddrPort("10.1.2.3:4444"), tls: tc.tls}
			if got := m(httptest.NewRequest("GET", "/", nil), a); got != tc.want {
				t.Fatalf("= %v, want %v", got, tc.want)
			}
		})
	}
}

func TestSelectChainTLS(t *testing.T) {
	h := pt.HCM("routes", allowAll())
	chain := func(name, transport string, alpn ...string) *listener.FilterChain {
		return &listener.FilterChain{Name: name, Filters: []*listener.Filter{pt.HCMFilter(h)},
			FilterChainMatch: &listener.FilterChainMatch{TransportProtocol: transport, ApplicationProtocols: alpn}}
	}
	l := pt.Listener("l", "127.0.0.1", 0, h, pt.TLSInspector)
	l.FilterChains = []*listener.FilterChain{
		chain("tls", "tls"),
		chain("tls-h2", "tls", "h2"),
		chain("tls-h1", "tls", "http/1.1"),
		chain("raw", "raw_buffer"),
		chain("any", ""),
	}
	lc, err := compileListener(l)
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name string
		h    *helloInfo
		want string
	}{
		{"plaintext", &helloInfo{transport: transportRawBytes}, "raw"},
		{"no inspector result", nil, "raw"},
		{"TLS without ALPN", &helloInfo{transport: transportTLS}, "tls"},
		{"the client's first protocol a chain lists", &helloInfo{transport: transportTLS, alpn: []string{"http/1.1", "h2"}}, "tls-h1"},
		{"h2 first", &helloInfo{transport: transportTLS, alpn: []string{"h2", "http/1.1"}}, "tls-h2"},
		{"an unlisted protocol falls to the chain without one", &helloInfo{transport: transportTLS, alpn: []string{"spdy/3"}}, "tls"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			fc := lc.selectChain(netip.MustParseAddrPort("10.0.0.1:80"), netip.MustParseAddrPort("10.0.0.2:5555"), tc.h)
			if fc == nil || fc.name != tc.want {
				t.Fatalf("chain %v, want %s", fc, tc.want)
			}
		})
	}
	// Without a catch-all, an unknown transport finds nothing.
	l.FilterChains = l.FilterChains[:3]
	lc, err = compileListener(l)
	if err != nil {
		t.Fatal(err)
	}
	if fc := lc.selectChain(netip.MustParseAddrPort("10.0.0.1:80"), netip.MustParseAddrPort("10.0.0.2:5555"), &helloInfo{transport: transportRawBytes}); fc != nil {
		t.Fatalf("plaintext on a TLS-only listener got chain %s", fc.name)
	}
}

func TestInspectTLS(t *testing.T) {
	ca := pt.NewCA(t, meshTD)
	srvCert := ca.SVID(t, "shop", "backend")
	pair := func() (client, server net.Conn) {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		defer ln.Close()
		c, err := net.Dial("tcp", ln.Addr().String())
		if err != nil {
			t.Fatal(err)
		}
		s, err := ln.Accept()
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close(); s.Close() })
		return c, s
	}
	t.Run("TLS: SNI and ALPN, then the real handshake", func(t *testing.T) {
		c, s := pair()
		done := make(chan error, 1)
		go func() {
			tc := tls.Client(c, &tls.Config{ServerName: "backend.shop", NextProtos: []string{"h2", "http/1.1"}, InsecureSkipVerify: true}) //nolint:gosec // test
			if err := tc.Handshake(); err != nil {
				done <- err
				return
			}
			_, err := io.WriteString(tc, "ping")
			done <- err
		}()
		h, replay, err := inspectTLS(s, 5*time.Second)
		if err != nil || h.transport != transportTLS || h.sni != "backend.shop" || strings.Join(h.alpn, ",") != "h2,http/1.1" {
			t.Fatalf("inspect = %+v, %v", h, err)
		}
		ts := tls.Server(replay, &tls.Config{Certificates: []tls.Certificate{srvCert.TLS}})
		if err := ts.Handshake(); err != nil {
			t.Fatalf("handshake after inspection: %v", err)
		}
		buf := make([]byte, 4)
		if _, err := io.ReadFull(ts, buf); err != nil || string(buf) != "ping" {
			t.Fatalf("read %q %v", buf, err)
		}
		if err := <-done; err != nil {
			t.Fatal(err)
		}
	})
	t.Run("plaintext HTTP: raw_buffer, bytes replayed", func(t *testing.T) {
		c, s := pair()
		go func() { _, _ = io.WriteString(c, "GET / HTTP/1.1\r\nHost: x\r\n\r\n") }()
		h, replay, err := inspectTLS(s, 5*time.Second)
		if err != nil || h.transport != transportRawBytes {
			t.Fatalf("inspect = %+v, %v", h, err)
		}
		req, err := http.ReadRequest(bufio.NewReader(replay))
		if err != nil || req.Host != "x" {
			t.Fatalf("replayed request %v, %v", req, err)
		}
	})
	t.Run("a handshake record that is no ClientHello", func(t *testing.T) {
		c, s := pair()
		go func() { _, _ = c.Write([]byte{0x16, 0x03, 0x01, 0x00, 0x04, 0x02, 0x00, 0x00, 0x00}) }()
		h, _, err := inspectTLS(s, 5*time.Second)
		if err != nil || h.transport != transportRawBytes {
			t.Fatalf("inspect = %+v, %v", h, err)
		}
	})
	t.Run("silent client: timeout", func(t *testing.T) {
		_, s := pair()
		start := time.Now()
		_, _, err := inspectTLS(s, 100*time.Millisecond)
		if !errors.Is(err, os.ErrDeadlineExceeded) || time.Since(start) > 2*time.Second {
			t.Fatalf("err %v after %s, want a deadline error", err, time.Since(start))
		}
	})
	t.Run("client gone mid-hello", func(t *testing.T) {
		c, s := pair()
		go func() {
			_, _ = c.Write([]byte{0x16, 0x03, 0x01, 0x02, 0x00, 0x01})
			c.Close()
		}()
		if _, _, err := inspectTLS(s, 5*time.Second); err == nil {
			t.Fatal("no error for a connection closed mid-ClientHello")
		}
	})
}

// TestTLSWarming: a listener or cluster whose secrets have not arrived
// warms — the listener does not accept, the cluster is not routed to —
// and activates when they come; /config_dump shows both warming, and the
// secrets waited for. A refused listener that carried an inline private
// key is dumped with it redacted.
func TestTLSWarming(t *testing.T) {
	ca := pt.NewCA(t, meshTD)
	be := backend(t)
	p := New(Config{NodeID: "n", AccessLog: testWriter{t}}, slog.New(slog.NewTextHandler(testWriter{t}, nil)))
	t.Cleanup(p.Close)
	rc := pt.RouteConfig("routes", "backend")
	rc.VirtualHosts[0].Routes = append([]*route.Route{{
		Match:  &route.RouteMatch{PathSpecifier: &route.RouteMatch_Prefix{Prefix: "/mesh/"}},
		Action: &route.Route_Route{Route: &route.RouteAction{ClusterSpecifier: &route.RouteAction_Cluster{Cluster: "mesh"}}},
	}}, rc.VirtualHosts[0].Routes...)
	if err := p.applyClusters("1", []*cluster.Cluster{staticTo(t, be), mtlsCluster(pt.UseOriginalDstHeader)}); err != nil {
		t.Fatal(err)
	}
	// "in" routes to the backend only: /mesh/ through it would loop.
	if err := p.applyRoutes("1", []*route.RouteConfiguration{rc, pt.RouteConfig("in-routes", "backend")}); err != nil {
		t.Fatal(err)
	}
	plain := pt.Listener("plain", "127.0.0.1", 0, pt.HCM("routes", allowAll(), pt.WithAccessLog))
	in := mtlsListener(func(l *listener.Listener) {
		l.FilterChains[0].Filters[0] = pt.HCMFilter(pt.HCM("in-routes", allowAll()))
	})
	if err := p.applyListeners("1", []*listener.Listener{plain, in}); err != nil {
		t.Fatal(err)
	}
	if got := p.sdsNames(); strings.Join(got, ",") != "bundle,cert" {
		t.Fatalf("SDS subscription %v, want bundle,cert", got)
	}
	inAddr, _ := p.ListenerAddr("in")
	plainAddr, _ := p.ListenerAddr("plain")
	client := ca.SVID(t, "shop", "frontend")
	dial := func(timeout time.Duration) error {
		d := &net.Dialer{Timeout: timeout}
		c, err := tls.DialWithDialer(d, "tcp", inAddr.String(), &tls.Config{InsecureSkipVerify: true, Certificates: []tls.Certificate{client.TLS}}) //nolint:gosec // test
		if err != nil {
			return err
		}
		return c.Close()
	}
	get := func(path string) int {
		req, _ := http.NewRequest("GET", "http://"+plainAddr.String()+path, nil)
		req.Header.Set("x-envoy-original-dst-host", inAddr.String())
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		return resp.StatusCode
	}
	if err := dial(300 * time.Millisecond); err == nil {
		t.Fatal("a warming listener completed a handshake")
	}
	if code := get("/mesh/x"); code != http.StatusServiceUnavailable {
		t.Fatalf("request to a warming cluster = %d, want 503 (no cluster)", code)
	}
	cd := p.ConfigDump()
	var ld admin.ListenersConfigDump
	var cdump admin.ClustersConfigDump
	var sd admin.SecretsConfigDump
	_ = cd.Configs[0].UnmarshalTo(&cdump)
	_ = cd.Configs[1].UnmarshalTo(&ld)
	_ = cd.Configs[3].UnmarshalTo(&sd)
	if len(cdump.DynamicWarmingClusters) != 1 || len(sd.DynamicWarmingSecrets) != 2 || len(sd.DynamicActiveSecrets) != 0 {
		t.Fatalf("dump: warming clusters %v, secrets %v", cdump.DynamicWarmingClusters, sd.DynamicWarmingSecrets)
	}
	for _, dl := range ld.DynamicListeners {
		if dl.Name == "in" && (dl.WarmingState == nil || dl.ActiveState != nil) {
			t.Fatalf("listener in: %v, want warming only", dl)
		}
	}
	if p.Ready() {
		t.Fatal("ready while a cluster and a listener warm")
	}

	srv := ca.SVID(t, "shop", "backend")
	if err := p.applySecrets("s1", []*tlsv3.Secret{pt.SVIDSecret("cert", srv), pt.SPIFFESecret("bundle", map[string][]byte{meshTD: ca.CertPEM})}); err != nil {
		t.Fatal(err)
	}
	if err := dial(5 * time.Second); err != nil {
		t.Fatalf("after the secrets: %v", err)
	}
	if code := get("/mesh/x"); code != http.StatusNotFound {
		// Through the cluster, TLS to the listener, the backend's 404.
		t.Fatalf("request through the activated cluster = %d, want the backend's 404", code)
	}

	// A listener with an inline key is refused, and dumped redacted.
	leaky := mtlsListener(withCommon(func(c *tlsv3.CommonTlsContext) {
		c.TlsCertificateSdsSecretConfigs = nil
		c.TlsCertificates = []*tlsv3.TlsCertificate{{
			CertificateChain: &core.DataSource{Specifier: &core.DataSource_InlineBytes{InlineBytes: srv.CertPEM}},
			PrivateKey:       &core.DataSource{Specifier: &core.DataSource_InlineBytes{InlineBytes: srv.KeyPEM}},
		}}
	}))
	if err := p.applyListeners("2", []*listener.Listener{plain, leaky}); err == nil {
		t.Fatal("an inline certificate was accepted")
	}
	cd = p.ConfigDump()
	_ = cd.Configs[1].UnmarshalTo(&ld)
	var failed *listener.Listener
	for _, dl := range ld.DynamicListeners {
		if dl.Name == "in" && dl.ErrorState != nil {
			failed = &listener.Listener{}
			if err := dl.ErrorState.FailedConfiguration.UnmarshalTo(failed); err != nil {
				t.Fatal(err)
			}
		}
	}
	if failed == nil {
		t.Fatal("no error_state for the refused listener")
	}
	var d tlsv3.DownstreamTlsContext
	if err := failed.FilterChains[0].TransportSocket.GetTypedConfig().UnmarshalTo(&d); err != nil {
		t.Fatal(err)
	}
	if k := d.CommonTlsContext.TlsCertificates[0].GetPrivateKey().GetInlineBytes(); string(k) != "[redacted]" {
		t.Fatalf("refused listener's private key dumped as %q", k)
	}
	if c := d.CommonTlsContext.TlsCertificates[0].GetCertificateChain().GetInlineBytes(); len(c) == 0 {
		t.Fatal("the certificate chain was redacted too")
	}
	if k := leaky.FilterChains[0].TransportSocket.GetTypedConfig(); !proto.Equal(k, leaky.FilterChains[0].TransportSocket.GetTypedConfig()) {
		t.Fatal("redaction changed the stored resource")
	}
}

// TestResumptionKeys: tickets a chain issued resume only into that chain
// (another chain of the proxy, with another certificate, does a full
// handshake), and across listener updates that keep the chain.
func TestResumptionKeys(t *testing.T) {
	ca := pt.NewCA(t, meshTD)
	p := New(Config{NodeID: "n", AccessLog: io.Discard}, nil)
	t.Cleanup(p.Close)
	tc := &tlsContext{server: true, certSecret: "cert", minVersion: tls.VersionTLS13, maxVersion: tls.VersionTLS13}
	other := &tlsContext{server: true, certSecret: "cert2", minVersion: tls.VersionTLS13, maxVersion: tls.VersionTLS13}
	secrets := map[string]*secret{
		"cert":  {kind: kindCertificate, cert: &ca.SVID(t, "shop", "a").TLS},
		"cert2": {kind: kindCertificate, cert: &ca.SVID(t, "shop", "b").TLS},
	}
	p.secrets.Store(&secrets)
	serve := func(d *downstreamTLS) string {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { ln.Close() })
		go func() {
			for {
				c, err := ln.Accept()
				if err != nil {
					return
				}
				go func() {
					defer c.Close()
					if tc, err := d.handshake(c, time.Second); err == nil {
						_, _ = io.WriteString(tc, "x")
					}
				}()
			}
		}()
		return ln.Addr().String()
	}
	a1 := serve(p.newDownstreamTLS("l", "c", tc))
	a2 := serve(p.newDownstreamTLS("l", "c", tc)) // the same chain after an update
	b := serve(p.newDownstreamTLS("l", "other", other))
	cache := tls.NewLRUClientSessionCache(8)
	connect := func(addr string) bool {
		c, err := tls.Dial("tcp", addr, &tls.Config{InsecureSkipVerify: true, ClientSessionCache: cache, ServerName: "x"}) //nolint:gosec // test
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		_, _ = io.ReadFull(c, make([]byte, 1)) // the ticket comes first
		return c.ConnectionState().DidResume
	}
	if connect(a1) {
		t.Fatal("first connection resumed")
	}
	if !connect(a1) || !connect(a2) {
		t.Fatal("the chain's tickets did not resume (same chain, or the chain after an update)")
	}
	if connect(b) {
		t.Fatal("a session resumed into another chain")
	}
}

// TestTLSResourcesAreValidEnvoyConfig: what proxytest builds for mTLS
// passes go-control-plane's validation, typed configs included.
func TestTLSResourcesAreValidEnvoyConfig(t *testing.T) {
	ca := pt.NewCA(t, meshTD)
	type validator interface{ ValidateAll() error }
	msgs := []validator{
		mtlsListener(), mtlsCluster(),
		pt.SVIDSecret("cert", ca.SVID(t, "shop", "a")), pt.CASecret("ca", ca.CertPEM),
		pt.SPIFFESecret("bundle", map[string][]byte{meshTD: ca.CertPEM}),
		&rbac.Policy{Permissions: []*rbac.Permission{{Rule: &rbac.Permission_Any{Any: true}}}, Principals: []*rbac.Principal{pt.Authenticated(pt.Exact(frontendID))}},
	}
	var d tlsv3.DownstreamTlsContext
	var u tlsv3.UpstreamTlsContext
	var ti tlsinspector.TlsInspector
	var sc tlsv3.SPIFFECertValidatorConfig
	_ = mtlsListener().FilterChains[0].TransportSocket.GetTypedConfig().UnmarshalTo(&d)
	_ = mtlsCluster().TransportSocket.GetTypedConfig().UnmarshalTo(&u)
	_ = mtlsListener().ListenerFilters[0].GetTypedConfig().UnmarshalTo(&ti)
	_ = pt.SPIFFESecret("b", map[string][]byte{meshTD: ca.CertPEM}).GetValidationContext().GetCustomValidatorConfig().GetTypedConfig().UnmarshalTo(&sc)
	var h hcm.HttpConnectionManager
	_ = mtlsListener().FilterChains[0].Filters[0].GetTypedConfig().UnmarshalTo(&h)
	msgs = append(msgs, &d, &u, &ti, &sc, &h)
	for i, m := range msgs {
		if err := m.ValidateAll(); err != nil {
			t.Errorf("resource %d (%T): %v", i, m, err)
		}
	}
}
