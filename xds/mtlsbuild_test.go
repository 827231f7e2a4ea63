package xds_test

import (
	"net/netip"
	"slices"
	"testing"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/nodemesh/nodemesh/certs"
	"github.com/nodemesh/nodemesh/certs/certstest"
	"github.com/nodemesh/nodemesh/xds"
)

// frontendEgressL7 puts the seed's L7 rule on the frontend's egress.
const frontendEgressL7 = `
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: frontend-userdata, namespace: default}
spec:
  endpointSelector: {matchLabels: {app: frontend}}
  egress:
  - toEndpoints: [{matchLabels: {app: backend}}]
    toPorts:
    - ports: [{port: "80", protocol: TCP}]
      rules: {http: [{method: GET, path: "/userdata/[0-9]+"}]}
`

// TestBuildMTLS: node-1 has frontend (permissive, with its SVID and an
// egress L7 rule) and other (strict, no SVID yet); backend on node-2 is an
// mTLS peer. The configuration is consistent (every named route, cluster
// and secret exists, and nothing else), only the SVID in use is served,
// and the chains say what each mode means.
func TestBuildMTLS(t *testing.T) {
	e := engine(t, testWorld, frontendEgressL7)
	ca := certstest.NewAuthority(t, mtlsTD)
	feID := spiffeid.RequireFromString("spiffe://cluster.local/ns/default/sa/frontend")
	otherID := spiffeid.RequireFromString("spiffe://cluster.local/ns/default/sa/other")
	unused := spiffeid.RequireFromString("spiffe://cluster.local/ns/default/sa/gone")
	in := xds.InputFromEngine(e, "node-1", xds.Config{})
	for i := range in.Endpoints {
		switch in.Endpoints[i].Key {
		case "default/frontend":
			in.Endpoints[i].ID, in.Endpoints[i].Mode = feID, xds.MTLSPermissive
		case "default/other":
			in.Endpoints[i].ID, in.Endpoints[i].Mode = otherID, xds.MTLSStrict
		}
	}
	in.MTLS = &xds.MTLSInput{
		Identities: certs.NewSnapshot(1, ca.Bundle(), ca.MintSVID(t, feID.String()), ca.MintSVID(t, unused.String())),
		Peers:      map[netip.Addr]spiffeid.ID{netip.MustParseAddr("10.0.2.10"): spiffeid.RequireFromString("spiffe://cluster.local/ns/default/sa/backend")},
	}
	r, err := xds.Build(in)
	if err != nil {
		t.Fatal(err)
	}
	checkResources(t, r)

	names := func(n int, name func(int) string) []string {
		var out []string
		for i := range n {
			out = append(out, name(i))
		}
		return out
	}
	if got := names(len(r.Secrets), func(i int) string { return r.Secrets[i].GetName() }); !slices.Equal(got, []string{xds.TrustBundleSecretName, feID.String()}) {
		t.Errorf("secrets %q: want the bundle and the frontend's SVID only", got)
	}
	if got := names(len(r.Routes), func(i int) string { return r.Routes[i].GetName() }); !slices.Equal(got, []string{xds.OutboundRouteName, xds.OutboundMTLSRouteName(feID)}) {
		t.Errorf("routes %q", got)
	}
	if clusterByName(r, xds.OutboundMTLSClusterName(feID)) == nil || clusterByName(r, xds.OutboundMTLSClusterName(otherID)) != nil {
		t.Error("want the frontend's mTLS cluster and none for other (no SVID)")
	}
	in15008 := listener(r, xds.InboundMTLSListenerName)
	if in15008 == nil || in15008.GetAddress().GetSocketAddress().GetPortValue() != xds.DefaultMTLSInboundPort {
		t.Fatalf("inbound mTLS listener %v", in15008)
	}
	chains := map[string]bool{}
	for _, c := range in15008.GetFilterChains() {
		chains[c.GetName()] = true
	}
	for _, want := range []string{
		"inbound-mtls|default/frontend|ranges",                       // terminates with frontend's SVID
		"inbound-plaintext|default/frontend|ranges",                  // permissive: plaintext passes
		"inbound-tls-passthrough|default/frontend|ranges",            // ... and the application's own TLS
		"inbound-strict-refuse|plaintext|default/other|ranges",       // strict: refused
		"inbound-strict-refuse|tls-passthrough|default/other|ranges", // ... TLS without our ALPN too
	} {
		if !chains[want] {
			t.Errorf("inbound mTLS listener lacks chain %s (has %v)", want, chains)
		}
	}
	if chains["inbound-mtls|default/other|ranges"] {
		t.Error("other has no SVID: it cannot have an mTLS chain")
	}
	out15002 := listener(r, xds.OutboundMTLSListenerName)
	if out15002 == nil || len(out15002.GetFilterChains()) != 1 || out15002.GetFilterChains()[0].GetName() != "outbound-mtls|default/frontend" {
		t.Errorf("outbound mTLS listener %v: want the frontend's chain only", out15002)
	}
	// The egress L7 chain has a twin for mTLS peers, routed to the
	// frontend's mTLS cluster.
	var twin bool
	for _, c := range listener(r, xds.OutboundListenerName).GetFilterChains() {
		if c.GetName() == "mtls-peers|outbound|default/frontend|80" {
			twin = len(c.GetFilterChainMatch().GetPrefixRanges()) == 1 && c.GetFilterChainMatch().GetPrefixRanges()[0].GetAddressPrefix() == "10.0.2.10"
		}
	}
	if !twin {
		t.Error("the frontend's egress L7 chain has no twin for the mTLS peer 10.0.2.10")
	}

	// Without mTLS input: none of it.
	in.MTLS = nil
	r, err = xds.Build(in)
	if err != nil {
		t.Fatal(err)
	}
	if len(r.Secrets) != 0 || listener(r, xds.InboundMTLSListenerName) != nil || listener(r, xds.OutboundMTLSListenerName) != nil {
		t.Error("mTLS resources without mTLS input")
	}
}
