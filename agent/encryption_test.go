package agent_test

import (
	"encoding/json"
	"net/netip"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/nodemesh/nodemesh/agent"
	"github.com/nodemesh/nodemesh/agent/agenttest"
)

const encWorld = `apiVersion: v1
kind: List
items:
- {apiVersion: v1, kind: Namespace, metadata: {name: default}}
- {apiVersion: v1, kind: Node, metadata: {name: node-1}, spec: {podCIDR: 10.0.1.0/24}, status: {addresses: [{type: InternalIP, address: 192.168.10.1}]}}
- {apiVersion: v1, kind: Node, metadata: {name: node-2}, spec: {podCIDR: 10.0.2.0/24}, status: {addresses: [{type: InternalIP, address: 192.168.10.2}]}}
- {apiVersion: v1, kind: Pod, metadata: {name: frontend, namespace: default}, spec: {nodeName: node-1}, status: {podIP: 10.0.1.10}}
- {apiVersion: v1, kind: Pod, metadata: {name: backend, namespace: default}, spec: {nodeName: node-2}, status: {podIP: 10.0.2.10}}
`

// TestEncryptionPeers: with a tunnel, the agent publishes its node's key
// and endpoint; until node-2 publishes one, node-2's pods are marked for
// the datapath's drop (never plaintext); once it does, node-2 becomes a
// peer allowed its pod CIDR and the mark goes; meshctl's status shows it.
func TestEncryptionPeers(t *testing.T) {
	s := newStandalone(t, encWorld, map[string]string{"10.0.1.10": "veth-fe"}, nil, func(c *agent.Config) { c.Resync = 200 * time.Millisecond })
	store := agent.KeyStore{Dir: filepath.Join(t.TempDir(), "keys")}
	tun := &agenttest.Tunnel{Key: "node-1-public", Port: 51871}
	s.a.SetTunnel(tun, store)
	ctx, c := s.run(t)
	noTunnel := func(addr string) bool {
		for _, e := range s.dp.IPCacheNow() {
			if e.Prefix.Addr() == netip.MustParseAddr(addr) {
				return e.NoTunnel
			}
		}
		t.Fatalf("%s not in the ipcache", addr)
		return false
	}
	waitFor(t, "the agent to publish its key", func() bool {
		b, err := os.ReadFile(filepath.Join(store.Dir, "node-1.json"))
		var k agent.TunnelKey
		return err == nil && json.Unmarshal(b, &k) == nil && k.PublicKey == "node-1-public" && k.Endpoint.String() == "192.168.10.1:51871"
	})
	waitFor(t, "node-2's pods to be marked untunnelled", func() bool { return noTunnel("10.0.2.10") })
	if len(tun.Peers()) != 0 {
		t.Fatalf("peers %+v before node-2 published a key", tun.Peers())
	}
	st, err := c.Encryption(ctx)
	if err != nil || !st.Enabled || len(st.Missing) != 1 || st.Missing[0] != "node-2" || st.Endpoint != "192.168.10.1:51871" {
		t.Fatalf("status %+v %v: want node-2 missing", st, err)
	}

	if err := store.Publish(agent.TunnelKey{Node: "node-2", PublicKey: "node-2-public", Endpoint: netip.MustParseAddrPort("192.168.10.2:51871")}); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "node-2 as a peer", func() bool {
		ps := tun.Peers()
		return len(ps) == 1 && ps[0].Node == "node-2" && ps[0].PublicKey == "node-2-public" && ps[0].AllowedIPs[0] == netip.MustParsePrefix("10.0.2.0/24")
	})
	waitFor(t, "node-2's pods reachable", func() bool { return !noTunnel("10.0.2.10") })
	st, err = c.Encryption(ctx)
	if err != nil || len(st.Peers) != 1 || st.Peers[0].Node != "node-2" || len(st.Missing) != 0 {
		t.Fatalf("status %+v %v", st, err)
	}
	if noTunnel("10.0.1.10") {
		t.Error("a local pod was marked untunnelled")
	}

	// Rotation: the new public key is published at once.
	res, err := c.RotateEncryptionKey(ctx)
	if err != nil || res.OldPublicKey != "node-1-public" || res.PublicKey != "node-1-public-rotated" {
		t.Fatalf("rotate: %+v %v", res, err)
	}
	keys, err := store.Read()
	if err != nil || keys["node-1"].PublicKey != "node-1-public-rotated" {
		t.Errorf("published after rotation: %+v %v", keys["node-1"], err)
	}
}

func TestRotateEveryValidation(t *testing.T) {
	for _, d := range []time.Duration{-time.Minute, 30 * time.Second} {
		cfg := agent.Config{NodeName: "n", WorldPaths: []string{"w"}, PolicyPaths: []string{"p"}, RotateKeyEvery: d}
		cfg.Defaults()
		if err := cfg.Validate(); err == nil {
			t.Errorf("--wireguard-rotate-every %s accepted", d)
		}
	}
	cfg := agent.Config{NodeName: "n", WorldPaths: []string{"w"}, PolicyPaths: []string{"p"}, RotateKeyEvery: 24 * time.Hour}
	cfg.Defaults()
	if err := cfg.Validate(); err != nil {
		t.Errorf("a day refused: %v", err)
	}
}
