package bpf

import (
	"context"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/cilium/ebpf"
	"github.com/nodemesh/nodemesh/identity"
	"github.com/nodemesh/nodemesh/policy"
)

func TestConfigValidate(t *testing.T) {
	tests := []struct {
		name    string
		cfg     Config
		wantErr string
	}{
		{name: "defaults", cfg: func() Config { var c Config; c.Defaults(); return c }()},
		{name: "empty", cfg: Config{}, wantErr: "pin dir is required"},
		{name: "relative", cfg: Config{PinDir: "nodemesh/n1"}, wantErr: "absolute"},
		{name: "root", cfg: Config{PinDir: "/"}, wantErr: "must not be /"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := tt.cfg.Validate()
			if tt.wantErr == "" && err != nil {
				t.Fatalf("unexpected error: %v", err)
			}
			if tt.wantErr != "" && (err == nil || !strings.Contains(err.Error(), tt.wantErr)) {
				t.Fatalf("error %v, want one containing %q", err, tt.wantErr)
			}
		})
	}
}

func TestOpenNeedsBPFFS(t *testing.T) {
	requirePrivileges(t)
	_, err := Open(Config{PinDir: t.TempDir()})
	if err == nil || !strings.Contains(err.Error(), "not on a bpf filesystem") {
		t.Fatalf("Open on tmpfs: %v, want a bpffs error", err)
	}
}

// TestAntiSpoofing: from_pod passes only sources that are endpoints on the
// packet's interface; to_pod only destinations that are; ARP and IPv6
// neighbour discovery pass, other ethertypes and broken headers do not.
func TestAntiSpoofing(t *testing.T) {
	s := newScenario(t)
	s.expect("unknown source", egress, s.tcp("10.0.1.99", "server", 1000, 80, tcpSYN), false, ReasonSpoofedSource)
	s.expect("a remote pod's address", egress, s.tcp("10.0.2.10", "server", 1000, 80, tcpSYN), false, ReasonSpoofedSource)
	s.expect("unknown destination", ingress, s.tcp("client", "10.0.1.99", 1000, 80, tcpSYN), false, ReasonUnknownEndpoint)

	// An endpoint behind another veth.
	if err := s.d.SetEndpoint(s.addr("other"), s.ids["default/other"], loIndex(t)+1000, 300, 0); err != nil {
		t.Fatal(err)
	}
	s.expect("source of another veth", egress, s.tcp("other", "server", 1000, 80, tcpSYN), false, ReasonSpoofedSource)
	s.expect("destination of another veth", ingress, s.tcp("client", "other", 1000, 80, tcpSYN), false, ReasonUnknownEndpoint)

	arp := pkt{src: s.addr("client"), dst: s.addr("server"), ethType: 0x0806}
	s.expect("ARP", egress, arp, true, ReasonLinkControl)
	s.expect("ARP", ingress, arp, true, ReasonLinkControl)
	ll := netip.MustParseAddr("fe80::1")
	for _, typ := range []uint8{130, 131, 132, 133, 134, 135, 136, 137, 143} {
		nd := pkt{src: ll, dst: netip.MustParseAddr("ff02::1"), proto: ipprotoICMPv6, icmpType: typ, hopLimit: 255}
		if typ < 133 || typ == 143 {
			nd.hopLimit = 1 // MLD
		}
		s.expect("ND/MLD", egress, nd, true, ReasonLinkControl)
		s.expect("ND/MLD", ingress, nd, true, ReasonLinkControl)
		// With another hop limit it is not link-local: policy decides.
		nd.src, nd.dst, nd.hopLimit = s.addr("client6"), s.addr("server6"), 64
		s.expect("routable ND/MLD", egress, nd, false, ReasonDefaultDeny)
	}
	// Echo from a link-local address is not neighbour discovery.
	s.expect("link-local echo", egress, pkt{src: ll, dst: s.addr("server6"), proto: ipprotoICMPv6, icmpType: 128}, false, ReasonSpoofedSource)
	s.expect("LLDP", egress, pkt{src: s.addr("client"), dst: s.addr("server"), ethType: 0x88cc}, false, ReasonUnsupportedL3)

	trunc := s.tcp("client", "server", 1000, 80, tcpSYN).bytes()[:14+20+10]
	ret, err := s.d.objs.FromPod.Run(&ebpf.RunOptions{Data: trunc})
	if err != nil || ret != tcActShot {
		t.Fatalf("truncated TCP header: ret %d, err %v; want dropped", ret, err)
	}
	if evs := s.r.drain(); len(evs) != 1 || evs[0].Reason != ReasonMalformed {
		t.Fatalf("truncated TCP header: events %v, want one malformed", evs)
	}
}

// TestFragments: a later fragment passes when its datagram's first
// fragment passed the same program, and only then.
func TestFragments(t *testing.T) {
	s := newScenario(t)
	for _, names := range [][2]string{{"client", "server"}, {"client6", "server6"}} {
		first := s.udp(names[0], names[1], s.nextPort(), 53)
		first.fragFirst, first.fragID, first.payload = true, 4242, 100
		later := first
		later.fragFirst, later.fragLater = false, true
		s.expect("later fragment before the first", ingress, later, false, ReasonFragmentUnknown)
		s.expect("first fragment", ingress, first, true, ReasonAllowed)
		s.expect("later fragment", ingress, later, true, ReasonFragment)
		other := later
		other.fragID = 4243
		s.expect("later fragment of another datagram", ingress, other, false, ReasonFragmentUnknown)
		s.expect("later fragment in the other program", egress, later, false, ReasonFragmentUnknown)

		denied := s.udp(names[0], names[1], s.nextPort(), 54)
		denied.fragFirst, denied.fragID = true, 5000
		s.expect("denied first fragment", ingress, denied, false, ReasonDefaultDeny)
		denied.fragFirst, denied.fragLater = false, true
		s.expect("its later fragment", ingress, denied, false, ReasonFragmentUnknown)
	}
}

// TestPolicyStates: no policy map, L7-only allow, auth-required allow,
// local node.
func TestPolicyStates(t *testing.T) {
	s := newScenario(t)
	s.expect("L7-only allow", ingress, s.tcp("client", "web", s.nextPort(), 8080, tcpSYN), false, ReasonProxyUnavailable)
	s.expect("web, another port", ingress, s.tcp("client", "web", s.nextPort(), 8081, tcpSYN), false, ReasonDefaultDeny)
	s.expect("host to client", ingress, s.tcp("192.168.0.1", "client", s.nextPort(), 8081, tcpSYN), true, ReasonLocalNode)
	s.expect("other node to client", ingress, s.tcp("192.168.0.2", "client", s.nextPort(), 8081, tcpSYN), false, ReasonDefaultDeny)
	s.expect("self", ingress, s.tcp("client", "client", s.nextPort(), 8081, tcpSYN), true, ReasonSelf)

	if err := s.d.DeletePolicy(s.ids["default/server"]); err != nil {
		t.Fatal(err)
	}
	s.expect("endpoint without policy", ingress, s.tcp("client", "server", s.nextPort(), 80, tcpSYN), false, ReasonPolicyMissing)
	if err := s.d.DeletePolicy(s.ids["default/server"]); err != nil {
		t.Fatalf("deleting an absent policy: %v", err)
	}

	// Auth-required allows (mTLS comes later), and says so.
	docs := `apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: auth, namespace: default}
spec:
  endpointSelector: {matchLabels: {app: server}}
  ingress:
  - fromEndpoints: [{matchLabels: {app: client}}]
    authentication: {mode: required}
`
	tbl := tableFor(t, docs, "default/server")
	if err := s.d.SetPolicy(s.ids["default/server"], tbl, ProxyPorts{}); err != nil {
		t.Fatal(err)
	}
	evs := s.expect("auth required", ingress, s.tcp("client", "server", s.nextPort(), 443, tcpSYN), true, ReasonAllowed)
	if !evs[0].AuthRequired || evs[0].Entry == 0 {
		t.Fatalf("event %+v: want auth required and the deciding entry", evs[0])
	}
}

// TestMaps: endpoints, ipcache sync, map usage, counters and the event
// reader, through the API.
func TestMaps(t *testing.T) {
	s := newScenario(t)
	eps, err := s.d.Endpoints()
	if err != nil {
		t.Fatal(err)
	}
	if len(eps) != 6 || eps[s.addr("client6")] != s.ids["default/client"] {
		t.Fatalf("endpoints %v: want the 6 addresses of node-1's 4 pods", eps)
	}
	if err := s.d.DeleteEndpoint(s.addr("other")); err != nil {
		t.Fatal(err)
	}
	if err := s.d.DeleteEndpoint(s.addr("other")); err != nil {
		t.Fatalf("deleting an absent endpoint: %v", err)
	}
	s.expect("deleted endpoint", egress, s.tcp("other", "server", 1, 80, tcpSYN), false, ReasonSpoofedSource)

	// The ipcache becomes exactly what it is told.
	cache := []policy.IPCacheEntry{
		{Prefix: netip.MustParsePrefix("10.0.1.10/32"), Identity: 256},
		{Prefix: netip.MustParsePrefix("203.0.113.0/24"), Identity: identity.WorldIPv4, PrefixID: 7},
		{Prefix: netip.MustParsePrefix("fd00::/64"), Identity: 300},
	}
	if err := s.d.SyncIPCache(cache); err != nil {
		t.Fatal(err)
	}
	got := map[netip.Prefix]datapathIpcacheValue{}
	var k datapathIpcacheKey
	var v datapathIpcacheValue
	it := s.d.objs.Ipcache.Iterate()
	for it.Next(&k, &v) {
		got[prefixFromKey(k)] = v
	}
	if len(got) != 3 || got[netip.MustParsePrefix("203.0.113.0/24")].PrefixId != 7 || got[netip.MustParsePrefix("fd00::/64")].Identity != 300 {
		t.Fatalf("ipcache %v after sync, want %v", got, cache)
	}
	// An unknown address is the world.
	evs := s.expect("to the world", egress, s.udp("client", "198.51.100.1", 5, 9999), true, ReasonAllowed)
	if evs[0].DstIdentity != identity.WorldIPv4 {
		t.Fatalf("unknown IPv4 address resolved to %v", evs[0].DstIdentity)
	}
	evs = s.expect("to the world", egress, s.udp("client6", "2001:db8::9", 5, 9999), true, ReasonAllowed)
	if evs[0].DstIdentity != identity.WorldIPv6 {
		t.Fatalf("unknown IPv6 address resolved to %v", evs[0].DstIdentity)
	}

	usage, err := s.d.MapUsage()
	if err != nil {
		t.Fatal(err)
	}
	byName := map[string]MapUsage{}
	for _, u := range usage {
		byName[u.Name] = u
	}
	if byName["endpoints"].Entries != 5 || byName["ipcache"].Entries != 3 || byName["policy"].Entries != 4 ||
		byName["conntrack"].Entries != 2 || byName["policy-entries"].Entries == 0 || byName["policy-entries"].Entries != byName["policy-entries"].MaxEntries {
		t.Fatalf("map usage %+v", usage)
	}

	cs, err := s.d.Counters()
	if err != nil {
		t.Fatal(err)
	}
	var allowed uint64
	for _, c := range cs {
		if c.Direction == policy.Egress && c.Reason == ReasonAllowed {
			allowed = c.Packets
		}
		if c.Verdict != c.Reason.Verdict() || c.Bytes < c.Packets*14 {
			t.Fatalf("counter %+v", c)
		}
	}
	if allowed != 2 {
		t.Fatalf("egress allowed-by-rule counter %d, want 2 (%+v)", allowed, cs)
	}
}

// TestReadEvents: the reader loop delivers decoded events with wall-clock
// times and returns nil when its context ends.
func TestReadEvents(t *testing.T) {
	d := newTestDatapath(t)
	ctx, cancel := context.WithCancel(context.Background())
	got := make(chan FlowEvent, 16)
	done := make(chan error, 1)
	go func() { done <- d.ReadEvents(ctx, func(e FlowEvent) { got <- e }) }()
	time.Sleep(50 * time.Millisecond)
	p := pkt{src: netip.MustParseAddr("10.9.9.9"), dst: netip.MustParseAddr("10.0.0.1"), proto: ipprotoTCP, sport: 1234, dport: 80, tcpFlags: tcpSYN}
	if _, err := d.objs.FromPod.Run(&ebpf.RunOptions{Data: p.bytes()}); err != nil {
		t.Fatal(err)
	}
	select {
	case e := <-got:
		if e.Reason != ReasonSpoofedSource || e.Verdict != Dropped || e.Src != p.src || e.SrcPort != 1234 || e.DstPort != 80 ||
			e.Proto != policy.ProtoTCP || e.Direction != policy.Egress || time.Since(e.Time).Abs() > time.Minute {
			t.Fatalf("event %+v", e)
		}
		if !strings.Contains(e.String(), "spoofed-source") {
			t.Fatalf("event string %q", e)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("no event within 5 s")
	}
	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("ReadEvents: %v", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("ReadEvents did not return after its context ended")
	}
}

// TestRemove: Remove leaves nothing pinned.
func TestRemove(t *testing.T) {
	root := bpffsDir(t)
	dir := filepath.Join(root, "node-x")
	d, err := Open(Config{PinDir: dir})
	requireFeature(t, "open", err)
	if err := d.Remove(); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(dir); !os.IsNotExist(err) {
		ents, _ := os.ReadDir(dir)
		t.Fatalf("pin dir after Remove: %v (%v)", err, ents)
	}
}

// tableFor compiles policies (YAML) against the scenario world and returns
// a pod's table.
func tableFor(t *testing.T, policies, pod string) *policy.Table {
	t.Helper()
	eng := scenarioEngine(t, policies)
	tbl, _, ok := eng.Table(pod)
	if !ok {
		t.Fatalf("no pod %s", pod)
	}
	return tbl
}
