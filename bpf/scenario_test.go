package bpf

import (
	"fmt"
	"net/netip"
	"os"
	"testing"
	"time"

	"github.com/nodemesh/nodemesh/api"
	"github.com/nodemesh/nodemesh/policy"
)

// scenario is node-1 of testdata/world.yaml under testdata/policies.yaml,
// loaded into a fresh datapath.
type scenario struct {
	t   *testing.T
	d   *Datapath
	r   *runner
	eng *policy.Engine
	w   *api.World
	ids map[string]uint32 // endpoint IDs by "ns/pod"
	// port hands out fresh source ports.
	port uint16
}

func newScenario(t *testing.T) *scenario {
	t.Helper()
	d := newTestDatapath(t)
	text, err := os.ReadFile("testdata/policies.yaml")
	if err != nil {
		t.Fatal(err)
	}
	eng := scenarioEngine(t, string(text))
	s := &scenario{t: t, d: d, r: newRunner(t, d), eng: eng, w: scenarioWorld(t), port: 30000}
	s.ids = loadNode(t, d, eng, "node-1", loIndex(t))
	return s
}

func scenarioWorld(t testing.TB) *api.World {
	t.Helper()
	w, err := api.LoadWorld("testdata/world.yaml")
	if err != nil {
		t.Fatal(err)
	}
	return w
}

// scenarioEngine compiles policies (YAML) against the scenario world.
func scenarioEngine(t testing.TB, policies string) *policy.Engine {
	t.Helper()
	docs, err := api.DecodePolicies("policies.yaml", []byte(policies))
	if err != nil {
		t.Fatal(err)
	}
	eng, err := policy.NewEngineFromWorld(scenarioWorld(t), policy.FromDocuments(docs))
	if err != nil {
		t.Fatal(err)
	}
	return eng
}

// addr is a pod's address ("client", "client6" for its IPv6 one) or a
// literal address.
func (s *scenario) addr(name string) netip.Addr {
	s.t.Helper()
	if a, err := netip.ParseAddr(name); err == nil {
		return a
	}
	v6 := false
	if n := len(name); n > 1 && name[n-1] == '6' {
		name, v6 = name[:n-1], true
	}
	for _, p := range s.w.Pods {
		if p.Metadata.Name == name {
			for _, a := range p.Addresses() {
				if a.Is6() == v6 {
					return a
				}
			}
		}
	}
	s.t.Fatalf("no address %q in the scenario", name)
	return netip.Addr{}
}

func (s *scenario) nextPort() uint16 {
	s.port++
	return s.port
}

// tcp, udp and echo build packets between named ends.
func (s *scenario) tcp(from, to string, sport, dport uint16, flags uint8) pkt {
	return pkt{src: s.addr(from), dst: s.addr(to), proto: ipprotoTCP, sport: sport, dport: dport, tcpFlags: flags}
}

func (s *scenario) udp(from, to string, sport, dport uint16) pkt {
	return pkt{src: s.addr(from), dst: s.addr(to), proto: ipprotoUDP, sport: sport, dport: dport}
}

// echo is an ICMP echo request (reply false) or reply with identifier id.
func (s *scenario) echo(from, to string, id uint16, reply bool) pkt {
	p := pkt{src: s.addr(from), dst: s.addr(to), proto: ipprotoICMP, sport: id, icmpType: 8}
	if p.src.Is6() {
		p.proto, p.icmpType = ipprotoICMPv6, 128
	}
	if reply {
		p.icmpType = 0
		if p.src.Is6() {
			p.icmpType = 129
		}
	}
	return p
}

// expect runs from_pod (egress) or to_pod on p and checks the verdict and
// the reason, which it takes from the counters (every packet counts) and,
// when the packet made one, the event (new connections and drops).
func (s *scenario) expect(what string, egress bool, p pkt, pass bool, reason Reason) []FlowEvent {
	s.t.Helper()
	before := s.counters()
	got := s.r.run(egress, p)
	after := s.counters()
	var moved []counterKey
	for k, n := range after {
		if n != before[k] {
			moved = append(moved, k)
		}
	}
	prog := "to_pod"
	if egress {
		prog = "from_pod"
	}
	if len(moved) != 1 {
		s.t.Fatalf("%s: %s %s -> %s: counters moved %v, want exactly one", what, prog, p.src, p.dst, moved)
	}
	gotReason := moved[0].reason
	if got.pass != pass || gotReason != reason {
		s.t.Fatalf("%s: %s %s:%d -> %s:%d: passed=%v reason %s, want passed=%v reason %s (events %v)",
			what, prog, p.src, p.sport, p.dst, p.dport, got.pass, gotReason, pass, reason, got.events)
	}
	wantEvent := !pass || !noEventReasons[reason]
	if wantEvent && (len(got.events) != 1 || got.events[0].Reason != reason) {
		s.t.Fatalf("%s: %s: events %v, want one with reason %s", what, prog, got.events, reason)
	}
	if !wantEvent && len(got.events) != 0 {
		s.t.Fatalf("%s: %s: events %v, want none (%s)", what, prog, got.events, reason)
	}
	return got.events
}

// noEventReasons pass packets of known connections: no event.
var noEventReasons = map[Reason]bool{ReasonEstablished: true, ReasonReply: true, ReasonRelated: true, ReasonFragment: true, ReasonLinkControl: true}

type counterKey struct {
	dir    policy.Direction
	reason Reason
}

func (s *scenario) counters() map[counterKey]uint64 {
	s.t.Helper()
	cs, err := s.d.Counters()
	if err != nil {
		s.t.Fatal(err)
	}
	out := map[counterKey]uint64{}
	for _, c := range cs {
		out[counterKey{c.Direction, c.Reason}] = c.Packets
	}
	return out
}

func (k counterKey) String() string { return fmt.Sprintf("%s/%s", k.dir, k.reason) }

// ctEntry finds the conntrack entry of a packet's tuple created by from_pod
// (egress) or to_pod.
func (s *scenario) ctEntry(p pkt, egress bool) (datapathCtKey, datapathCtEntry, bool) {
	s.t.Helper()
	k := datapathCtKey{Saddr: p.src.As16(), Daddr: p.dst.As16(), Sport: hton16(p.sport), Dport: hton16(p.dport), Proto: p.proto}
	if p.proto == ipprotoICMP || p.proto == ipprotoICMPv6 {
		k.Dport = 0 // an echo request: the identifier is the source port
	}
	if egress {
		k.Dir = uint8(policy.Egress)
	}
	var v datapathCtEntry
	if err := s.d.objs.Conntrack.Lookup(&k, &v); err != nil {
		return k, v, false
	}
	return k, v, true
}

// age moves a conntrack entry's last packet back in time by by.
func (s *scenario) age(p pkt, egress bool, by time.Duration) {
	s.t.Helper()
	k, v, ok := s.ctEntry(p, egress)
	if !ok {
		s.t.Fatalf("no conntrack entry for %s -> %s", p.src, p.dst)
	}
	v.LastSeenNs -= uint64(by)
	if err := s.d.objs.Conntrack.Put(&k, &v); err != nil {
		s.t.Fatal(err)
	}
}
