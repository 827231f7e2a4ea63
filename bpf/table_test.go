package bpf

import (
	"fmt"
	"math/rand/v2"
	"net/netip"
	"os"
	"regexp"
	"strconv"
	"testing"
	"unsafe"

	"github.com/nodemesh/nodemesh/api"
	"github.com/nodemesh/nodemesh/policy"
	"github.com/nodemesh/nodemesh/policy/policytest"
)

// coveredBy finds, as the LPM trie does, the longest prefix containing
// port; ok is false when none does.
func coveredBy(ps []portPrefix, port uint16) (portPrefix, bool) {
	best, ok := portPrefix{}, false
	for _, p := range ps {
		size := uint32(1) << (16 - p.Bits)
		if uint32(port) >= uint32(p.Port) && uint32(port) < uint32(p.Port)+size && (!ok || p.Bits > best.Bits) {
			best, ok = p, true
		}
	}
	return best, ok
}

func TestPortPrefixes(t *testing.T) {
	tests := []struct {
		lo, hi uint16
		want   []portPrefix
	}{
		{0, 65535, []portPrefix{{0, 0}}},
		{80, 80, []portPrefix{{80, 16}}},
		{0, 0, []portPrefix{{0, 16}}},
		{65535, 65535, []portPrefix{{65535, 16}}},
		{0, 1, []portPrefix{{0, 15}}},
		{1, 65535, []portPrefix{{1, 16}, {2, 15}, {4, 14}, {8, 13}, {16, 12}, {32, 11}, {64, 10}, {128, 9}, {256, 8}, {512, 7}, {1024, 6}, {2048, 5}, {4096, 4}, {8192, 3}, {16384, 2}, {32768, 1}}},
		{0, 65534, []portPrefix{{0, 1}, {32768, 2}, {49152, 3}, {57344, 4}, {61440, 5}, {63488, 6}, {64512, 7}, {65024, 8}, {65280, 9}, {65408, 10}, {65472, 11}, {65504, 12}, {65520, 13}, {65528, 14}, {65532, 15}, {65534, 16}}},
		{32768, 65535, []portPrefix{{32768, 1}}},
		{8080, 8090, []portPrefix{{8080, 13}, {8088, 15}, {8090, 16}}},
		{1024, 2047, []portPrefix{{1024, 6}}},
	}
	for _, tt := range tests {
		t.Run(fmt.Sprintf("%d-%d", tt.lo, tt.hi), func(t *testing.T) {
			got := portPrefixes(tt.lo, tt.hi)
			if fmt.Sprint(got) != fmt.Sprint(tt.want) {
				t.Fatalf("portPrefixes(%d, %d) = %v, want %v", tt.lo, tt.hi, got, tt.want)
			}
		})
	}
}

// TestPortPrefixesExact checks, for every port, that a lookup finds a
// prefix exactly when the port is in the range, on the range edges and
// random ranges, and that no split takes more than 30 prefixes.
func TestPortPrefixesExact(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	ranges := [][2]uint16{{0, 65535}, {0, 0}, {65535, 65535}, {0, 1}, {65534, 65535}, {1, 65534}, {1, 65535}, {0, 65534}, {32767, 32768}, {80, 80}, {53, 1052}}
	for range 200 {
		a, b := uint16(rng.IntN(65536)), uint16(rng.IntN(65536))
		if a > b {
			a, b = b, a
		}
		ranges = append(ranges, [2]uint16{a, b})
	}
	for _, r := range ranges {
		ps := portPrefixes(r[0], r[1])
		if len(ps) > 30 {
			t.Fatalf("[%d, %d]: %d prefixes", r[0], r[1], len(ps))
		}
		for _, p := range ps {
			if uint32(p.Port)&(uint32(1)<<(16-p.Bits)-1) != 0 {
				t.Fatalf("[%d, %d]: prefix %v not aligned", r[0], r[1], p)
			}
		}
		for port := range 65536 {
			_, ok := coveredBy(ps, uint16(port))
			in := uint16(port) >= r[0] && uint16(port) <= r[1]
			if ok != in {
				t.Fatalf("[%d, %d] split into %v: port %d covered=%v", r[0], r[1], ps, port, ok)
			}
		}
	}
}

// TestPolicyEntries checks the translation of a table: the flags entries,
// and one element per port prefix carrying the entry's action, auth flag
// and index; a lookup of each entry's edges finds it.
func TestPolicyEntries(t *testing.T) {
	eng := scenarioEngine(t, `apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: p, namespace: default}
spec:
  endpointSelector: {matchLabels: {app: server}}
  ingress:
  - fromEndpoints: [{matchLabels: {app: client}}]
    toPorts: [{ports: [{port: "8080", endPort: 8090, protocol: TCP}]}]
    authentication: {mode: required}
  - fromCIDRSet: [{cidr: 203.0.113.0/24}]
    toPorts: [{ports: [{port: "0", protocol: UDP}], rules: null}]
  ingressDeny:
  - fromEntities: [world]
    toPorts: [{ports: [{port: "53", protocol: UDP}]}]
`)
	tbl, _, _ := eng.Table("default/server")
	kvs := policyEntries(tbl, ProxyPorts{})
	type flagsOf struct {
		dir   uint8
		flags uint8
	}
	var flags []flagsOf
	byEntry := map[uint32][]policyKV{}
	for _, kv := range kvs {
		if kv.Key.Kind == peerDirFlags {
			if kv.Key.Prefixlen != policyKeyFullBits || kv.Key.PeerId != 0 || kv.Key.Port != 0 || kv.Key.Proto != 0 {
				t.Fatalf("flags key %+v", kv.Key)
			}
			flags = append(flags, flagsOf{kv.Key.Dir, kv.Value.Flags})
			continue
		}
		if kv.Key.Dir != uint8(policy.Ingress) {
			t.Fatalf("egress element %+v: server has no egress policy", kv)
		}
		byEntry[kv.Value.Rule] = append(byEntry[kv.Value.Rule], kv)
	}
	if fmt.Sprint(flags) != fmt.Sprint([]flagsOf{{0, dirSelected | dirEnforced}, {1, 0}}) {
		t.Fatalf("flags entries %v: want ingress selected+enforced, egress neither", flags)
	}
	entries := tbl.Ingress.Entries()
	if len(byEntry) != len(entries) {
		t.Fatalf("%d entries with elements, table has %d:\n%v", len(byEntry), len(entries), tbl)
	}
	for i, e := range entries {
		els := byEntry[uint32(i+1)]
		if len(els) != len(portPrefixes(e.Lo, e.Hi)) {
			t.Fatalf("entry %d %+v: %d elements", i, e, len(els))
		}
		for _, kv := range els {
			if kv.Key.Kind != uint8(e.Peer.Kind) || kv.Key.PeerId != hton32(e.Peer.ID) || kv.Key.Proto != uint8(e.Proto) ||
				kv.Value.Action != uint8(e.Action) || (kv.Value.Flags&entryAuthRequired != 0) != (e.AuthRequired && e.Action != policy.ActionDeny) {
				t.Fatalf("entry %d %+v: element %+v", i, e, kv)
			}
		}
		var ps []portPrefix
		for _, kv := range els {
			ps = append(ps, portPrefix{ntoh16(kv.Key.Port), int(kv.Key.Prefixlen) - policyKeyFixedBits})
		}
		for _, port := range []uint16{e.Lo, e.Hi} {
			if _, ok := coveredBy(ps, port); !ok {
				t.Fatalf("entry %d %+v: port %d not covered by %v", i, e, port, ps)
			}
		}
	}
	// The peer ID is big-endian in memory, as the program builds it.
	for _, kv := range kvs {
		if kv.Key.Kind == uint8(policy.PeerIdentity) && kv.Key.PeerId != 0 {
			b := (*[4]byte)(unsafe.Pointer(&kv.Key.PeerId))
			if id := uint32(b[0])<<24 | uint32(b[1])<<16 | uint32(b[2])<<8 | uint32(b[3]); id < 256 && id != 9 && id != 10 && id != 2 {
				t.Fatalf("peer id bytes %v", b)
			}
		}
	}
}

// TestPolicyEntriesUnique: on random worlds and policies, no two elements
// of a table share a key (the map is filled in batches that would
// silently keep the last of two).
func TestPolicyEntriesUnique(t *testing.T) {
	tables := 0
	for seed := range uint64(40) {
		g := policytest.NewRandom(seed)
		w := g.World(20)
		docs, err := api.DecodePolicies("p.yaml", g.Policies(w, 10))
		if err != nil {
			t.Fatal(err)
		}
		eng, err := policy.NewEngineFromWorld(w, policy.FromDocuments(docs))
		if err != nil {
			t.Fatal(err)
		}
		for _, ep := range eng.Endpoints() {
			tbl, _, _ := eng.Table(ep.Key())
			seen := map[datapathPolicyKey]bool{}
			for _, kv := range policyEntries(tbl, ProxyPorts{}) {
				if seen[kv.Key] {
					t.Fatalf("seed %d %s: key %+v twice\n%v", seed, ep.Key(), kv.Key, tbl)
				}
				seen[kv.Key] = true
			}
			tables++
		}
	}
	t.Logf("%d tables, no duplicate key", tables)
}

func TestIPCacheKey(t *testing.T) {
	tests := []struct {
		prefix string
		bits   uint32
	}{
		{"10.0.1.0/24", 120},
		{"10.0.1.7/32", 128},
		{"0.0.0.0/0", 96},
		{"fd00::/64", 64},
		{"fd00::1/128", 128},
		{"10.0.1.7/24", 120}, // masked
	}
	for _, tt := range tests {
		p := netip.MustParsePrefix(tt.prefix)
		k := ipcacheKey(p)
		if k.Prefixlen != tt.bits || prefixFromKey(k) != p.Masked() {
			t.Fatalf("%s: key %+v, back %s", tt.prefix, k, prefixFromKey(k))
		}
	}
}

// TestConstants holds include/datapath.h and the Go side equal: reasons
// (values and names), peer kinds, actions, directions and flags.
func TestConstants(t *testing.T) {
	h, err := os.ReadFile("include/datapath.h")
	if err != nil {
		t.Fatal(err)
	}
	reasons := regexp.MustCompile(`NM_REASON_[A-Z0-9_]+[A-Z0-9] = (\d+),\s*/\* ([a-z0-9-]+)(?::| \*/)`).FindAllSubmatch(h, -1)
	if len(reasons) != numReasons-1 {
		t.Fatalf("%d named reasons in the header, %d in Go", len(reasons), numReasons-1)
	}
	for _, m := range reasons {
		n, _ := strconv.Atoi(string(m[1]))
		if Reason(n).String() != string(m[2]) {
			t.Errorf("reason %d is %q in C, %q in Go", n, m[2], Reason(n))
		}
	}
	def := func(name string) int {
		m := regexp.MustCompile(`(?m)(?:#define\s+` + name + `\s+|\b` + name + ` = )(0x[0-9a-f]+|\d+)`).FindSubmatch(h)
		if m == nil {
			t.Fatalf("%s not in the header", name)
		}
		v, err := strconv.ParseInt(string(m[1]), 0, 64)
		if err != nil {
			t.Fatal(err)
		}
		return int(v)
	}
	for name, want := range map[string]int{
		"NM_DIR_INGRESS": int(policy.Ingress), "NM_DIR_EGRESS": int(policy.Egress),
		"NM_PEER_IDENTITY": int(policy.PeerIdentity), "NM_PEER_CIDR": int(policy.PeerCIDR), "NM_PEER_WORLD_CIDR": int(policy.PeerWorldCIDR),
		"NM_PEER_DIR_FLAGS": peerDirFlags,
		"NM_ACTION_ALLOW":   int(policy.ActionAllow), "NM_ACTION_DENY": int(policy.ActionDeny), "NM_ACTION_REDIRECT": int(policy.ActionRedirect),
		"NM_ENTRY_AUTH_REQUIRED": entryAuthRequired, "NM_DIR_SELECTED": dirSelected, "NM_DIR_ENFORCED": dirEnforced,
		"NM_POLICY_KEY_FULL": policyKeyFullBits, "NM_REASON_MAX": reasonSlots,
		"NM_VERDICT_FORWARDED": int(Forwarded), "NM_VERDICT_DROPPED": int(Dropped),
	} {
		if got := def(name); got != want {
			t.Errorf("%s = %d in C, %d in Go", name, got, want)
		}
	}
	for r := range Reason(numReasons) {
		if got, ok := ParseReason(r.String()); !ok || got != r {
			t.Errorf("ParseReason(%q) = %v, %v", r, got, ok)
		}
	}
	// The reasons shared with package policy carry its names.
	for _, name := range []string{policy.ReasonAllowed, policy.ReasonDenied, policy.ReasonDefaultDeny, policy.ReasonNoPolicy,
		policy.ReasonNotIsolated, policy.ReasonLocalNode, policy.ReasonSelf} {
		if _, ok := ParseReason(name); !ok {
			t.Errorf("policy reason %q has no datapath reason", name)
		}
	}
}
