package xds_test

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"io"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"testing"
	"time"

	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	rbacv3 "github.com/envoyproxy/go-control-plane/envoy/config/rbac/v3"
	hcmv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	netrbacv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/rbac/v3"
	tcpproxyv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/tcp_proxy/v3"
	tlsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/tls/v3"
	discoveryv3 "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"github.com/envoyproxy/go-control-plane/pkg/cache/types"
	"github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"google.golang.org/protobuf/proto"

	"github.com/nodemesh/nodemesh/certs"
	"github.com/nodemesh/nodemesh/certs/certstest"
	nmproxy "github.com/nodemesh/nodemesh/proxy"
	pt "github.com/nodemesh/nodemesh/proxy/proxytest"
	"github.com/nodemesh/nodemesh/xds"
)

const mtlsTD = "cluster.local"

var (
	backendID  = spiffeid.RequireFromString("spiffe://cluster.local/ns/default/sa/backend")
	frontendID = spiffeid.RequireFromString("spiffe://cluster.local/ns/default/sa/frontend")
)

func mtlsSnapshot(t *testing.T) (*certs.Snapshot, *certstest.Authority) {
	t.Helper()
	ca := certstest.NewAuthority(t, mtlsTD)
	other := certstest.NewAuthority(t, "other.example")
	snap := certs.NewSnapshot(1, ca.Bundle(other),
		ca.MintSVID(t, frontendID.String()), ca.MintSVID(t, backendID.String()))
	return snap, ca
}

func validate(t *testing.T, m proto.Message) {
	t.Helper()
	if err := xds.Validate(m); err != nil {
		t.Errorf("%T %v is invalid: %v", m, m, err)
	}
}

func TestSecretsFrom(t *testing.T) {
	snap, _ := mtlsSnapshot(t)
	secrets, err := xds.SecretsFrom(snap)
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, s := range secrets {
		validate(t, s)
		names = append(names, s.GetName())
	}
	want := []string{xds.TrustBundleSecretName, backendID.String(), frontendID.String()}
	slices.Sort(want)
	if !slices.Equal(names, want) {
		t.Fatalf("secret names %q, want %q", names, want)
	}
	for _, s := range secrets {
		switch s.GetName() {
		case xds.TrustBundleSecretName:
			vc := s.GetValidationContext()
			cv := vc.GetCustomValidatorConfig()
			if cv.GetName() != "envoy.tls.cert_validator.spiffe" || vc.GetTrustedCa() != nil {
				t.Errorf("validation secret %v", vc)
			}
			cfg := &tlsv3.SPIFFECertValidatorConfig{}
			if err := cv.GetTypedConfig().UnmarshalTo(cfg); err != nil {
				t.Fatal(err)
			}
			var tds []string
			for _, td := range cfg.GetTrustDomains() {
				tds = append(tds, td.GetName())
				if got, want := td.GetTrustBundle().GetInlineBytes(), snap.Bundle.PEM(spiffeid.RequireTrustDomainFromString(td.GetName())); len(want) == 0 || string(got) != string(want) {
					t.Errorf("trust domain %s: bundle %q, want %q", td.GetName(), got, want)
				}
			}
			if !slices.Equal(tds, []string{mtlsTD, "other.example"}) {
				t.Errorf("trust domains %q", tds)
			}
		default:
			id := spiffeid.RequireFromString(s.GetName())
			v, _ := snap.SVID(id)
			tc := s.GetTlsCertificate()
			if string(tc.GetCertificateChain().GetInlineBytes()) != string(v.ChainPEM()) {
				t.Errorf("%s: chain differs", id)
			}
			key, _ := v.KeyPEM()
			if string(tc.GetPrivateKey().GetInlineBytes()) != string(key) {
				t.Errorf("%s: key differs", id)
			}
			if _, err := tls.X509KeyPair(tc.GetCertificateChain().GetInlineBytes(), tc.GetPrivateKey().GetInlineBytes()); err != nil {
				t.Errorf("%s: %v", id, err)
			}
		}
	}

	// No bundle: no validation secret, so nothing validates against an
	// empty one. No snapshot: nothing.
	noBundle := certs.NewSnapshot(2, nil, snap.SVIDs()...)
	if secrets, err := xds.SecretsFrom(noBundle); err != nil || len(secrets) != 2 || secrets[0].GetTlsCertificate() == nil {
		t.Errorf("without a bundle: %v, %v", secrets, err)
	}
	if secrets, err := xds.SecretsFrom(nil); err != nil || len(secrets) != 0 {
		t.Errorf("nil snapshot: %v, %v", secrets, err)
	}
}

// mtlsHCM is the inbound connection manager Build generates for the seed.
func mtlsHCM(t *testing.T) (*hcmv3.HttpConnectionManager, *xds.Resources) {
	t.Helper()
	r := build(t, engine(t, testWorld, seedPolicy), "node-2")
	h := &hcmv3.HttpConnectionManager{}
	if err := listener(r, xds.InboundListenerName).GetFilterChains()[0].GetFilters()[0].GetTypedConfig().UnmarshalTo(h); err != nil {
		t.Fatal(err)
	}
	return h, r
}

func checkCommon(t *testing.T, what string, c *tlsv3.CommonTlsContext, id spiffeid.ID) {
	t.Helper()
	p := c.GetTlsParams()
	if p.GetTlsMinimumProtocolVersion() != tlsv3.TlsParameters_TLSv1_3 || p.GetTlsMaximumProtocolVersion() != tlsv3.TlsParameters_TLSv1_3 {
		t.Errorf("%s: tls_params %v", what, p)
	}
	if s := c.GetTlsCertificateSdsSecretConfigs(); len(s) != 1 || s[0].GetName() != id.String() || s[0].GetSdsConfig().GetAds() == nil {
		t.Errorf("%s: certificate %v", what, s)
	}
	cv := c.GetCombinedValidationContext()
	sans := cv.GetDefaultValidationContext().GetMatchTypedSubjectAltNames()
	if len(sans) != 1 || sans[0].GetSanType() != tlsv3.SubjectAltNameMatcher_URI || sans[0].GetMatcher().GetPrefix() != "spiffe://"+mtlsTD+"/" {
		t.Errorf("%s: SAN matchers %v", what, sans)
	}
	if s := cv.GetValidationContextSdsSecretConfig(); s.GetName() != xds.TrustBundleSecretName || s.GetSdsConfig().GetAds() == nil {
		t.Errorf("%s: validation secret %v", what, s)
	}
	if !slices.Equal(c.GetAlpnProtocols(), []string{"nodemesh-mtls"}) {
		t.Errorf("%s: alpn %q", what, c.GetAlpnProtocols())
	}
}

func TestMTLSBuilders(t *testing.T) {
	h, _ := mtlsHCM(t)
	pod := xds.InboundChain{Key: "default/backend", Addrs: []netip.Addr{netip.MustParseAddr("fd00::10"), netip.MustParseAddr("10.0.2.10")},
		Port: 80, ID: backendID, Peers: map[spiffeid.ID][]netip.Addr{frontendID: {netip.MustParseAddr("10.0.1.5"), netip.MustParseAddr("10.0.1.5")}}}

	l4 := xds.InboundMTLSFilterChain(pod)
	if l4.GetName() != "inbound-mtls|default/backend|80" {
		t.Errorf("name %q", l4.GetName())
	}
	m := l4.GetFilterChainMatch()
	if m.GetDestinationPort().GetValue() != 80 || m.GetTransportProtocol() != "tls" || !slices.Equal(m.GetApplicationProtocols(), []string{"nodemesh-mtls"}) ||
		len(m.GetPrefixRanges()) != 2 || m.GetPrefixRanges()[0].GetAddressPrefix() != "10.0.2.10" || m.GetPrefixRanges()[0].GetPrefixLen().GetValue() != 32 ||
		m.GetPrefixRanges()[1].GetAddressPrefix() != "fd00::10" || m.GetPrefixRanges()[1].GetPrefixLen().GetValue() != 128 {
		t.Errorf("match %v", m)
	}
	if ts := l4.GetTransportSocket(); ts.GetName() != "envoy.transport_sockets.tls" {
		t.Errorf("transport socket %v", ts)
	}
	dtc := &tlsv3.DownstreamTlsContext{}
	if err := l4.GetTransportSocket().GetTypedConfig().UnmarshalTo(dtc); err != nil {
		t.Fatal(err)
	}
	if !dtc.GetRequireClientCertificate().GetValue() {
		t.Error("client certificate not required")
	}
	checkCommon(t, "downstream", dtc.GetCommonTlsContext(), backendID)
	if fs := l4.GetFilters(); len(fs) != 2 || fs[0].GetName() != "envoy.filters.network.rbac" || fs[1].GetName() != "envoy.filters.network.tcp_proxy" {
		t.Fatalf("filters %v", fs)
	}
	rb := &netrbacv3.RBAC{}
	if err := l4.GetFilters()[0].GetTypedConfig().UnmarshalTo(rb); err != nil {
		t.Fatal(err)
	}
	pol := rb.GetRules().GetPolicies()[xds.PeerBindingPolicy]
	if rb.GetRules().GetAction() != rbacv3.RBAC_ALLOW || len(pol.GetPrincipals()) != 1 {
		t.Fatalf("rbac %v", rb)
	}
	// The peer's SPIFFE ID and the connection's source address together.
	and := pol.GetPrincipals()[0].GetAndIds().GetIds()
	if len(and) != 2 || and[0].GetAuthenticated().GetPrincipalName().GetExact() != frontendID.String() ||
		and[1].GetDirectRemoteIp().GetAddressPrefix() != "10.0.1.5" || and[1].GetDirectRemoteIp().GetPrefixLen().GetValue() != 32 {
		t.Errorf("binding principal %v", pol.GetPrincipals()[0])
	}
	tp := &tcpproxyv3.TcpProxy{}
	if err := l4.GetFilters()[1].GetTypedConfig().UnmarshalTo(tp); err != nil || tp.GetCluster() != xds.InboundClusterName {
		t.Errorf("tcp_proxy %v %v", tp, err)
	}

	noRBAC := pod
	noRBAC.Peers = nil
	if fs := xds.InboundMTLSFilterChain(noRBAC).GetFilters(); len(fs) != 1 || fs[0].GetName() != "envoy.filters.network.tcp_proxy" {
		t.Errorf("nil Peers: filters %v", fs)
	}
	nobody := pod
	nobody.Peers, nobody.Port = map[spiffeid.ID][]netip.Addr{}, 0
	nb := xds.InboundMTLSFilterChain(nobody)
	if nb.GetName() != "inbound-mtls|default/backend|ranges" || nb.GetFilterChainMatch().GetDestinationPort() != nil {
		t.Errorf("portless chain %v", nb)
	}
	rb = &netrbacv3.RBAC{}
	if err := nb.GetFilters()[0].GetTypedConfig().UnmarshalTo(rb); err != nil || len(rb.GetRules().GetPolicies()) != 0 || rb.GetRules().GetAction() != rbacv3.RBAC_ALLOW {
		t.Errorf("empty Peers: %v %v", rb, err)
	}

	l7 := pod
	l7.HCM = h
	hc := xds.InboundMTLSFilterChain(l7)
	if fs := hc.GetFilters(); len(fs) != 2 || fs[0].GetName() != "envoy.filters.network.rbac" || fs[1].GetName() != "envoy.filters.network.http_connection_manager" {
		t.Errorf("L7 filters %v", fs)
	}

	plain := xds.InboundPlaintextFilterChain(pod, "raw_buffer", false)
	pm := plain.GetFilterChainMatch()
	if plain.GetName() != "inbound-plaintext|default/backend|80" || plain.GetTransportSocket() != nil || pm.GetTransportProtocol() != "raw_buffer" ||
		len(pm.GetApplicationProtocols()) != 0 || pm.GetDestinationPort().GetValue() != 80 || len(pm.GetPrefixRanges()) != 2 {
		t.Errorf("plaintext chain %v", plain)
	}
	if fs := plain.GetFilters(); len(fs) != 1 || fs[0].GetName() != "envoy.filters.network.tcp_proxy" {
		t.Errorf("plaintext filters %v", fs)
	}
	if fs := xds.InboundPlaintextFilterChain(l7, "raw_buffer", false).GetFilters(); len(fs) != 1 || fs[0].GetName() != "envoy.filters.network.http_connection_manager" {
		t.Errorf("plaintext L7 filters %v", fs)
	}
	strict := xds.InboundPlaintextFilterChain(l7, "tls", true)
	if fs := strict.GetFilters(); strict.GetName() != "inbound-strict-refuse|tls-passthrough|default/backend|80" || strict.GetFilterChainMatch().GetTransportProtocol() != "tls" ||
		len(fs) != 2 || fs[0].GetName() != "envoy.filters.network.rbac" || fs[1].GetName() != "envoy.filters.network.tcp_proxy" {
		t.Errorf("strict refusal chain %v", strict)
	}

	c := xds.OutboundMTLSCluster(frontendID, 2*time.Second)
	if c.GetName() != "nodemesh-outbound-mtls|"+frontendID.String() || c.GetType() != clusterv3.Cluster_ORIGINAL_DST || c.GetLbPolicy() != clusterv3.Cluster_CLUSTER_PROVIDED {
		t.Errorf("cluster %v", c)
	}
	if so := c.GetUpstreamBindConfig().GetSocketOptions(); len(so) != 1 || so[0].GetIntValue() != int64(xds.MarkProxyEgress) || so[0].GetName() != 36 || so[0].GetLevel() != 1 {
		t.Errorf("socket options %v", so)
	}
	utc := &tlsv3.UpstreamTlsContext{}
	if err := c.GetTransportSocket().GetTypedConfig().UnmarshalTo(utc); err != nil || c.GetTransportSocket().GetName() != "envoy.transport_sockets.tls" {
		t.Fatalf("upstream %v %v", c.GetTransportSocket(), err)
	}
	checkCommon(t, "upstream", utc.GetCommonTlsContext(), frontendID)

	insp := xds.TLSInspectorFilter()
	if insp.GetName() != "envoy.filters.listener.tls_inspector" {
		t.Errorf("inspector %v", insp)
	}

	l := &listenerv3.Listener{Name: "in", Address: sockAddr("0.0.0.0", 15001),
		ListenerFilters: []*listenerv3.ListenerFilter{insp},
		FilterChains:    []*listenerv3.FilterChain{l4, plain, nb}}
	for _, msg := range []proto.Message{l, hc, c} {
		validate(t, msg)
	}

	// Deterministic.
	if !proto.Equal(xds.InboundMTLSFilterChain(pod), l4) || !proto.Equal(xds.OutboundMTLSCluster(frontendID, 2*time.Second), c) {
		t.Error("builders are not deterministic")
	}
}

// TestMTLSAcceptedByProxy: nodemesh-proxy ACKs the built secrets, chains
// and clusters over ADS, activates the listener once the secrets arrived,
// and its mTLS chain completes a TLS 1.3 handshake with ALPN
// nodemesh-mtls presenting the destination pod's SVID to a client
// presenting another workload's.
func TestMTLSAcceptedByProxy(t *testing.T) {
	snap, ca := mtlsSnapshot(t)
	secrets, err := xds.SecretsFrom(snap)
	if err != nil {
		t.Fatal(err)
	}
	h, r := mtlsHCM(t)
	lo := []netip.Addr{netip.MustParseAddr("127.0.0.1")}
	chains := []*listenerv3.FilterChain{}
	for _, c := range []xds.InboundChain{
		{Key: "default/backend", Addrs: lo, ID: backendID, Peers: map[spiffeid.ID][]netip.Addr{frontendID: lo}},
		{Key: "default/l7", Addrs: []netip.Addr{netip.MustParseAddr("127.0.0.2"), netip.MustParseAddr("::2")}, Port: 80, ID: backendID, HCM: h},
		{Key: "default/nobody", Addrs: []netip.Addr{netip.MustParseAddr("127.0.0.3")}, ID: frontendID, Peers: map[spiffeid.ID][]netip.Addr{}},
		{Key: "default/any", Addrs: []netip.Addr{netip.MustParseAddr("127.0.0.4")}, Port: 8080, ID: frontendID},
	} {
		chains = append(chains, xds.InboundMTLSFilterChain(c), xds.InboundPlaintextFilterChain(c, "raw_buffer", false))
	}
	l := &listenerv3.Listener{Name: "mtls-in", Address: sockAddr("127.0.0.1", 0),
		ListenerFilters: []*listenerv3.ListenerFilter{xds.TLSInspectorFilter()}, FilterChains: chains}
	clusters := []types.Resource{
		pt.OriginalDstCluster(xds.InboundClusterName, int64(xds.MarkProxyIngress)),
		xds.OutboundMTLSCluster(frontendID, time.Second),
		xds.OutboundMTLSCluster(backendID, time.Second),
	}
	res := map[resource.Type][]types.Resource{
		resource.ListenerType: {l},
		resource.RouteType:    {r.Routes[0]},
		resource.ClusterType:  clusters,
	}
	for _, s := range secrets {
		res[resource.SecretType] = append(res[resource.SecretType], s)
	}
	validate(t, l)

	dir, err := os.MkdirTemp("", "nmmtls") // short: unix socket paths are limited
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	cp := pt.Start(t, dir)
	p := nmproxy.New(nmproxy.Config{NodeID: "node-2", XDSAddress: cp.Address(), AccessLog: io.Discard,
		GRPCClusters: map[string]string{xds.AccessLogClusterName: "unix://" + filepath.Join(dir, "none.sock")},
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
	cp.Set("node-2", "v1", res)
	for _, typ := range []resource.Type{resource.ClusterType, resource.ListenerType, resource.RouteType, resource.SecretType} {
		if req := cp.WaitRequest(10*time.Second, func(req *discoveryv3.DiscoveryRequest) bool {
			return pt.IsACK(typ, "v1")(req) || pt.IsNACK(typ)(req)
		}); req == nil || req.GetErrorDetail() != nil {
			t.Fatalf("%s: %v", typ, req)
		}
	}
	var addr netip.AddrPort
	for i := 0; ; i++ {
		var ok bool
		if addr, ok = p.ListenerAddr("mtls-in"); ok {
			break
		}
		if i > 500 {
			t.Fatal("listener never became active")
		}
		time.Sleep(10 * time.Millisecond)
	}

	client := ca.MintSVID(t, frontendID.String())
	roots := x509.NewCertPool()
	roots.AddCert(ca.Root())
	var peer string
	conn, err := tls.DialWithDialer(&net.Dialer{Timeout: 5 * time.Second}, "tcp", addr.String(), &tls.Config{
		Certificates: []tls.Certificate{client.TLSCertificate()},
		NextProtos:   []string{"nodemesh-mtls"},
		MinVersion:   tls.VersionTLS13,
		// The SVID has no DNS name: verify the chain and read its URI.
		InsecureSkipVerify: true,
		VerifyPeerCertificate: func(raw [][]byte, _ [][]*x509.Certificate) error {
			leaf, err := x509.ParseCertificate(raw[0])
			if err != nil {
				return err
			}
			inter := x509.NewCertPool()
			for _, b := range raw[1:] {
				c, _ := x509.ParseCertificate(b)
				inter.AddCert(c)
			}
			if _, err := leaf.Verify(x509.VerifyOptions{Roots: roots, Intermediates: inter, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}}); err != nil {
				return err
			}
			if len(leaf.URIs) != 1 {
				return errors.New("not one URI SAN")
			}
			peer = leaf.URIs[0].String()
			return nil
		},
	})
	if err != nil {
		t.Fatalf("mTLS handshake: %v", err)
	}
	defer conn.Close()
	st := conn.ConnectionState()
	if st.Version != tls.VersionTLS13 || st.NegotiatedProtocol != "nodemesh-mtls" || peer != backendID.String() {
		t.Errorf("TLS %x, ALPN %q, server %q", st.Version, st.NegotiatedProtocol, peer)
	}
}
