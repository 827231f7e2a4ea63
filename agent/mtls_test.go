package agent_test

import (
	"net/netip"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/nodemesh/nodemesh/bpf"
	"github.com/nodemesh/nodemesh/certs"
	"github.com/nodemesh/nodemesh/certs/certstest"
	"github.com/nodemesh/nodemesh/xds"
)

// mtlsWorld has a pod per mode on node-1 (default: the mesh's permissive;
// legacy and vault: their namespace labels) and pods on node-2.
const mtlsWorld = `apiVersion: v1
kind: List
items:
- {apiVersion: v1, kind: Namespace, metadata: {name: default}}
- {apiVersion: v1, kind: Namespace, metadata: {name: legacy, labels: {mtls.nodemesh.io/mode: disabled}}}
- {apiVersion: v1, kind: Namespace, metadata: {name: vault, labels: {mtls.nodemesh.io/mode: strict}}}
- {apiVersion: v1, kind: Node, metadata: {name: node-1}, status: {addresses: [{type: InternalIP, address: 192.168.10.1}]}}
- {apiVersion: v1, kind: Node, metadata: {name: node-2}, status: {addresses: [{type: InternalIP, address: 192.168.10.2}]}}
- {apiVersion: v1, kind: Pod, metadata: {name: frontend, namespace: default}, spec: {nodeName: node-1, serviceAccountName: frontend}, status: {podIP: 10.0.1.10}}
- {apiVersion: v1, kind: Pod, metadata: {name: old, namespace: legacy}, spec: {nodeName: node-1}, status: {podIP: 10.0.1.11}}
- {apiVersion: v1, kind: Pod, metadata: {name: safe, namespace: vault}, spec: {nodeName: node-1}, status: {podIP: 10.0.1.12}}
- {apiVersion: v1, kind: Pod, metadata: {name: backend, namespace: default}, spec: {nodeName: node-2}, status: {podIP: 10.0.2.10}}
- {apiVersion: v1, kind: Pod, metadata: {name: old-remote, namespace: legacy}, spec: {nodeName: node-2}, status: {podIP: 10.0.2.11}}
`

// TestMTLSModes: each pod's datapath flags follow its mode — strict ones
// originate and accept from the start (their mTLS flows drop until the
// proxy serves them), permissive ones not before the proxy ACKed its mTLS
// listeners (accept) and their SVID (originate), disabled ones never — the
// mTLS ports are programmed only after the ACK, and the ipcache marks
// exactly the remote pods whose proxies accept mTLS.
func TestMTLSModes(t *testing.T) {
	s := newStandalone(t, mtlsWorld, map[string]string{"10.0.1.10": "veth-fe", "10.0.1.11": "veth-old", "10.0.1.12": "veth-safe"}, nil, nil)
	dp, cfg := s.dp, s.cfg
	fe, old, safe := netip.MustParseAddr("10.0.1.10"), netip.MustParseAddr("10.0.1.11"), netip.MustParseAddr("10.0.1.12")
	ca := certstest.NewCA(t, certs.CAConfig{}, nil)
	m, err := certs.NewManager(certs.ManagerConfig{NodeName: "node-1", TrustDomain: "cluster.local"}, ca)
	if err != nil {
		t.Fatal(err)
	}
	s.a.SetIdentities(m, m)
	ctx, c := s.run(t)
	waitFor(t, "the agent to enforce its pods and have their SVIDs", func() bool {
		st, err := c.Status(ctx)
		return err == nil && st.Generation == 1 && st.Endpoints == 3 && st.MTLS.SVIDs == 2
	})
	const both = bpf.EndpointMTLSOriginate | bpf.EndpointMTLSAccept
	check := func(when string, want map[netip.Addr]bpf.EndpointFlags, ports [2]uint16) {
		t.Helper()
		for addr, f := range want {
			if got := dp.Flags(addr); got != f {
				t.Errorf("%s: flags of %s = %#x, want %#x", when, addr, got, f)
			}
		}
		if got := dp.MTLSPortsNow(); got != ports {
			t.Errorf("%s: mTLS ports %v, want %v", when, got, ports)
		}
	}
	check("no proxy", map[netip.Addr]bpf.EndpointFlags{fe: 0, old: 0, safe: both}, [2]uint16{})

	var nack atomic.Bool
	go adsClient(ctx, t, cfg.XDSSocket, &nack)
	waitFor(t, "the mTLS ports after the proxy's ACK", func() bool {
		return dp.MTLSPortsNow() == [2]uint16{xds.DefaultMTLSInboundPort, xds.DefaultMTLSOutboundPort}
	})
	check("proxy ACKed", map[netip.Addr]bpf.EndpointFlags{fe: both, old: 0, safe: both},
		[2]uint16{xds.DefaultMTLSInboundPort, xds.DefaultMTLSOutboundPort})

	ipc := dp.IPCacheNow()
	peers := map[string]bool{}
	for _, e := range ipc {
		peers[e.Prefix.Addr().String()] = e.MTLSPeer
	}
	if !peers["10.0.2.10"] || peers["10.0.2.11"] || peers["10.0.1.10"] {
		t.Errorf("ipcache mTLS peers %v: want the remote default pod only (not the remote legacy pod, not local pods)", peers)
	}
	st, err := c.Status(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if st.MTLS.Mode != "permissive" || st.MTLS.Namespaces["legacy"] != "disabled" || st.MTLS.Namespaces["vault"] != "strict" || st.MTLS.TrustDomain != "cluster.local" {
		t.Errorf("status mTLS %+v", st.MTLS)
	}
	// The proxy is served the SVIDs of the pods that take part (frontend,
	// vault/default), never legacy's, and the bundle.
	dump, err := c.EnvoyConfig(ctx, "secrets")
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"spiffe://cluster.local/ns/default/sa/frontend", "spiffe://cluster.local/ns/vault/sa/default", xds.TrustBundleSecretName} {
		if !strings.Contains(string(dump.ConfigDump), want) {
			t.Errorf("secrets served to the proxy lack %s", want)
		}
	}
	if strings.Contains(string(dump.ConfigDump), "ns/legacy") || strings.Contains(string(dump.ConfigDump), "PRIVATE KEY") {
		t.Errorf("secrets dump has legacy's SVID or a private key:\n%s", dump.ConfigDump)
	}
}
