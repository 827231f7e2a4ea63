package agent

import (
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/nodemesh/nodemesh/api"
	"github.com/nodemesh/nodemesh/policy"
)

const tunnelWorld = `apiVersion: v1
kind: List
items:
- {apiVersion: v1, kind: Node, metadata: {name: node-1}, spec: {podCIDR: 10.0.1.0/24}, status: {addresses: [{type: InternalIP, address: 192.168.10.1}]}}
- {apiVersion: v1, kind: Node, metadata: {name: node-2}, spec: {podCIDRs: [10.0.2.0/24, "fd00:2::/64"]}, status: {addresses: [{type: InternalIP, address: 192.168.10.2}]}}
- {apiVersion: v1, kind: Node, metadata: {name: node-3}, spec: {podCIDR: 10.0.3.0/24}, status: {addresses: [{type: InternalIP, address: 192.168.10.3}]}}
- {apiVersion: v1, kind: Node, metadata: {name: node-4}, status: {addresses: [{type: InternalIP, address: 192.168.10.4}]}}
`

// TestTunnelPeers: published keys become peers allowed their node's pod
// CIDRs; a node without a key is missing (its pods are marked NoTunnel:
// dropped), a node without pod CIDRs has nothing to route; the store
// refuses unusable entries instead of trusting them.
func TestTunnelPeers(t *testing.T) {
	var w api.World
	if err := api.DecodeWorld("world.yaml", []byte(tunnelWorld), &w); err != nil {
		t.Fatal(err)
	}
	store := KeyStore{Dir: filepath.Join(t.TempDir(), "keys")}
	for _, k := range []TunnelKey{
		{Node: "node-1", PublicKey: "pub1", Endpoint: netip.MustParseAddrPort("192.168.10.1:51871")},
		{Node: "node-2", PublicKey: "pub2", Endpoint: netip.MustParseAddrPort("192.168.10.2:51871")},
	} {
		if err := store.Publish(k); err != nil {
			t.Fatal(err)
		}
	}
	if err := store.Publish(TunnelKey{Node: "../evil", PublicKey: "x", Endpoint: netip.MustParseAddrPort("1.2.3.4:1")}); err == nil {
		t.Error("published a key under a node name that escapes the directory")
	}
	// A file naming another node than its own is refused.
	if err := os.WriteFile(filepath.Join(store.Dir, "node-3.json"), []byte(`{"node":"node-1","publicKey":"forged","endpoint":"6.6.6.6:1"}`), 0o644); err != nil {
		t.Fatal(err)
	}
	keys, err := store.Read()
	if err == nil || !strings.Contains(err.Error(), "node-3.json") {
		t.Errorf("read: error %v, want one about node-3.json", err)
	}
	if len(keys) != 2 || keys["node-1"].PublicKey != "pub1" {
		t.Fatalf("keys %+v", keys)
	}
	st, err := os.Stat(filepath.Join(store.Dir, "node-2.json"))
	if err != nil || st.Mode().Perm() != 0o644 {
		t.Errorf("published file: %v %v, want 0644 (public keys only)", st.Mode(), err)
	}

	peers, missing, remote, err := tunnelPeers(&w, "node-1", keys)
	if err != nil {
		t.Fatal(err)
	}
	if len(peers) != 1 || peers[0].Node != "node-2" || peers[0].PublicKey != "pub2" || len(peers[0].AllowedIPs) != 2 ||
		peers[0].AllowedIPs[1] != netip.MustParsePrefix("fd00:2::/64") || peers[0].Endpoint.Port() != 51871 {
		t.Errorf("peers %+v: want node-2 with both pod CIDRs", peers)
	}
	if len(remote) != 3 || remote[0] != netip.MustParsePrefix("10.0.2.0/24") || remote[2] != netip.MustParsePrefix("fd00:2::/64") {
		t.Errorf("remote pod CIDRs %v: want node-2's and node-3's", remote)
	}
	if len(missing) != 1 || missing[0] != "node-3" {
		t.Errorf("missing %v: want node-3 (node-4 has no pod CIDR, node-1 is this node)", missing)
	}

	ipc := []policy.IPCacheEntry{
		{Prefix: netip.MustParsePrefix("10.0.2.7/32"), RemotePod: true},
		{Prefix: netip.MustParsePrefix("10.0.3.7/32"), RemotePod: true},
		{Prefix: netip.MustParsePrefix("10.9.9.9/32"), RemotePod: true}, // outside every pod CIDR
		{Prefix: netip.MustParsePrefix("10.0.1.7/32")},                  // local
	}
	markUntunnelled(ipc, peers)
	for i, want := range []bool{false, true, true, false} {
		if ipc[i].NoTunnel != want {
			t.Errorf("%s: NoTunnel %v, want %v", ipc[i].Prefix, ipc[i].NoTunnel, want)
		}
	}
}
