package agent_test

import (
	"context"
	"net/netip"
	"sync/atomic"
	"testing"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	discovery "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	statuspb "google.golang.org/genproto/googleapis/rpc/status"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/nodemesh/nodemesh/bpf"
	"github.com/nodemesh/nodemesh/xds"
)

const frontendL7 = `apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: frontend-l7, namespace: default}
spec:
  endpointSelector: {matchLabels: {app: frontend}}
  egress:
  - toEndpoints: [{matchLabels: {app: backend}}]
    toPorts:
    - ports: [{port: "80", protocol: TCP}]
      rules: {http: [{method: GET, path: "/userdata/[0-9]+"}]}
`

// adsClient is a minimal proxy on the xDS protocol: it subscribes to what
// the agent serves for node-1 and ACKs every response, or NACKs listener
// responses while nack is set.
func adsClient(ctx context.Context, t *testing.T, socket string, nack *atomic.Bool) {
	conn, err := grpc.NewClient("unix://"+socket, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Error(err)
		return
	}
	defer conn.Close()
	stream, err := discovery.NewAggregatedDiscoveryServiceClient(conn).StreamAggregatedResources(ctx)
	if err != nil {
		return
	}
	node := &corev3.Node{Id: "node-1"}
	for _, r := range []*discovery.DiscoveryRequest{
		{Node: node, TypeUrl: resource.ClusterType},
		{Node: node, TypeUrl: resource.ListenerType},
		{Node: node, TypeUrl: resource.RouteType, ResourceNames: []string{xds.InboundRouteName, xds.OutboundRouteName}},
		{Node: node, TypeUrl: resource.SecretType},
	} {
		if err := stream.Send(r); err != nil {
			return
		}
	}
	acked := map[string]string{}
	for {
		resp, err := stream.Recv()
		if err != nil {
			return
		}
		req := &discovery.DiscoveryRequest{Node: node, TypeUrl: resp.TypeUrl, ResponseNonce: resp.Nonce, VersionInfo: resp.VersionInfo}
		if resp.TypeUrl == resource.RouteType {
			req.ResourceNames = []string{xds.InboundRouteName, xds.OutboundRouteName}
		}
		if resp.TypeUrl == resource.ListenerType && nack.Load() {
			req.VersionInfo = acked[resp.TypeUrl]
			req.ErrorDetail = &statuspb.Status{Message: "test proxy refuses listeners"}
		} else {
			acked[resp.TypeUrl] = resp.VersionInfo
		}
		if err := stream.Send(req); err != nil {
			return
		}
	}
}

// TestRedirectOnlyAfterACK: a table with L7 redirects is programmed without
// proxy ports (its covered connections drop, fail closed) while no proxy
// is connected and while the proxy NACKs; once the proxy ACKs the
// configuration, the agent reprograms it with the proxy's listeners.
func TestRedirectOnlyAfterACK(t *testing.T) {
	s := newStandalone(t, world, map[string]string{"10.0.1.10": "veth-fe"}, map[string]string{"l7.yaml": frontendL7}, nil)
	dp, cfg := s.dp, s.cfg
	fe := netip.MustParseAddr("10.0.1.10")
	ctx, c := s.run(t)
	ports := func() bpf.ProxyPorts { return dp.ProxyPortsOf(fe) }
	waitFor(t, "the agent to enforce the L7 policy", func() bool {
		st, err := c.Status(ctx)
		return err == nil && st.Generation == 1 && st.Policies == 1
	})
	if p := ports(); p != (bpf.ProxyPorts{}) {
		t.Fatalf("no proxy connected, but the table was programmed with proxy ports %+v", p)
	}

	// A proxy that refuses the listeners: still no ports; status says why.
	var nack atomic.Bool
	nack.Store(true)
	pctx, pcancel := context.WithCancel(ctx)
	defer pcancel()
	go adsClient(pctx, t, cfg.XDSSocket, &nack)
	waitFor(t, "the NACK in status", func() bool {
		st, err := c.Status(ctx)
		return err == nil && st.ProxyStreams == 1 && !st.ProxyAcked && len(st.Problems) > 0
	})
	time.Sleep(500 * time.Millisecond) // followProxy polls every 200 ms
	if p := ports(); p != (bpf.ProxyPorts{}) {
		t.Fatalf("the proxy NACKed, but the table was programmed with proxy ports %+v", p)
	}

	// A proxy that ACKs: the redirect turns on without any input change.
	pcancel()
	nack.Store(false)
	go adsClient(ctx, t, cfg.XDSSocket, &nack)
	waitFor(t, "the proxy ports after the ACK", func() bool {
		return ports() == bpf.ProxyPorts{Ingress: xds.DefaultInboundPort, Egress: xds.DefaultOutboundPort}
	})
	st, err := c.Status(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if !st.ProxyAcked || st.ProxyOutboundPort != xds.DefaultOutboundPort {
		t.Fatalf("status after the ACK: %+v", st)
	}
}
