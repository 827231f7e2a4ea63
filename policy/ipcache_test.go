package policy_test

import (
	"fmt"
	"net/netip"
	"testing"

	"github.com/nodemesh/nodemesh/api"
	"github.com/nodemesh/nodemesh/identity"
	"github.com/nodemesh/nodemesh/policy"
	"github.com/nodemesh/nodemesh/policy/policytest"
)

// TestIPCacheMatchesCheck holds the datapath's one-LPM view of addresses
// (Engine.IPCache) equal to the keys Check looks up, for every node.
func TestIPCacheMatchesCheck(t *testing.T) {
	checked := 0
	for seed := range uint64(60) {
		g := policytest.NewRandom(seed)
		w := g.World(15)
		docs, err := api.DecodePolicies("p.yaml", g.Policies(w, 8))
		if err != nil {
			t.Fatal(err)
		}
		e, err := policy.NewEngineFromWorld(w, policy.FromDocuments(docs))
		if err != nil {
			t.Fatal(err)
		}
		var addrs []netip.Addr
		for _, p := range w.Pods {
			addrs = append(addrs, netip.MustParseAddr(p.Status.PodIP))
		}
		for _, s := range append(append([]string{}, policytest.ExternalIPs...), "192.168.0.1", "192.168.0.2", "192.168.0.100", "10.0.1.200", "10.0.2.1", "10.255.0.1") {
			addrs = append(addrs, netip.MustParseAddr(s))
		}
		for _, n := range w.Nodes {
			cache := e.IPCache(n.Metadata.Name)
			for _, a := range addrs {
				// Longest-prefix match over the entries, world by default.
				id, pid, best := identity.WorldIPv4, uint32(0), -1
				for _, en := range cache {
					if en.Prefix.Contains(a) && en.Prefix.Bits() > best {
						id, pid, best = en.Identity, en.PrefixID, en.Prefix.Bits()
					}
				}
				wantID, wantPID := e.Resolve(n.Metadata.Name, a)
				if id != wantID || pid != wantPID {
					t.Fatalf("seed %d node %s addr %s: ipcache says identity %v prefix %d, Check uses %v prefix %d", seed, n.Metadata.Name, a, id, pid, wantID, wantPID)
				}
				checked++
			}
		}
	}
	t.Log(fmt.Sprintf("%d address lookups agree", checked))
}
