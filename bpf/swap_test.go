package bpf

import (
	"context"
	"fmt"
	"math/rand/v2"
	"net/netip"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/cilium/ebpf"
	"github.com/nodemesh/nodemesh/policy"
)

// swapPolicies returns two policies for server over the same 59 port
// ranges (about 600 map elements each): old allows client on them, new
// denies it. Both select server's ingress with default deny, so a table
// seen half-written (a range missing, or the flags entry) gives
// default-deny or policy-missing: neither table's verdict.
func swapPolicies() (allow, deny string) {
	var ports []string
	for i := range 59 {
		lo := 1000 + 1000*i
		ports = append(ports, fmt.Sprintf(`{port: "%d", endPort: %d, protocol: TCP}`, lo, lo+998))
	}
	head := "apiVersion: cilium.io/v2\nkind: CiliumNetworkPolicy\nmetadata: {name: swap, namespace: default}\nspec:\n  endpointSelector: {matchLabels: {app: server}}\n"
	rule := "  - fromEndpoints: [{matchLabels: {app: client}}]\n    toPorts: [{ports: [" + strings.Join(ports, ", ") + "]}]\n"
	return head + "  ingress:\n" + rule, head + "  ingress: [{}]\n  ingressDeny:\n" + rule
}

// TestPolicySwapIsAtomic runs packets through to_pod on every CPU while
// server's table is swapped back and forth between the allowing and the
// denying one: every packet must get one table's verdict
// (allowed-by-rule or denied-by-rule), never a half-written table's.
func TestPolicySwapIsAtomic(t *testing.T) {
	s := newScenario(t)
	allowText, denyText := swapPolicies()
	tables := [2]*policy.Table{tableFor(t, allowText, "default/server"), tableFor(t, denyText, "default/server")}
	srv := s.ids["default/server"]
	if err := s.d.SetPolicy(srv, tables[0], ProxyPorts{}); err != nil {
		t.Fatal(err)
	}
	clientID, _, _ := s.eng.Identity("default/client")
	k := ipcacheKey(netip.MustParsePrefix("10.7.0.0/16"))
	if err := s.d.objs.Ipcache.Put(&k, &datapathIpcacheValue{Identity: uint32(clientID)}); err != nil {
		t.Fatal(err)
	}
	// Drain events meanwhile so the ring never fills; check each.
	ctx, cancel := context.WithCancel(context.Background())
	var badEvent atomic.Value
	readerDone := make(chan error, 1)
	go func() {
		readerDone <- s.d.ReadEvents(ctx, func(e FlowEvent) {
			if e.Reason != ReasonAllowed && e.Reason != ReasonDenied {
				badEvent.Store(e)
			}
		})
	}()

	before := s.counters()
	swaps := 400
	if testing.Short() {
		swaps = 100
	}
	var stop atomic.Bool
	var sent atomic.Int64
	var wg sync.WaitGroup
	var runErr atomic.Value
	for w := range 2 * runtime.NumCPU() {
		wg.Add(1)
		go func() {
			defer wg.Done()
			rng := rand.New(rand.NewPCG(uint64(w), 1))
			for n := 0; !stop.Load(); n++ {
				// A fresh tuple per packet: the source address and port
				// walk 10.7.0.0/16, which resolves to client's identity.
				i := rng.IntN(59)
				p := s.tcp("client", "server", uint16(1024+n%60000), uint16(1000+1000*i+rng.IntN(999)), tcpSYN)
				p.src = netip.AddrFrom4([4]byte{10, 7, byte(w), byte(n / 60000)})
				ret, err := s.d.objs.ToPod.Run(&ebpf.RunOptions{Data: p.bytes()})
				if err != nil || (ret != tcActOK && ret != tcActShot) {
					runErr.Store(fmt.Sprintf("run: ret %d, err %v", ret, err))
					return
				}
				sent.Add(1)
			}
		}()
	}
	for i := range swaps {
		if err := s.d.SetPolicy(srv, tables[(i+1)%2], ProxyPorts{}); err != nil {
			t.Error(err)
			break
		}
	}
	stop.Store(true)
	wg.Wait()
	time.Sleep(100 * time.Millisecond) // let the reader catch up
	cancel()
	if err := <-readerDone; err != nil {
		t.Fatal(err)
	}
	if e := runErr.Load(); e != nil {
		t.Fatal(e)
	}
	after := s.counters()
	moved := map[string]uint64{}
	for k, n := range after {
		if d := n - before[k]; d > 0 {
			moved[k.String()] = d
		}
	}
	allowed, denied := moved["ingress/allowed-by-rule"], moved["ingress/denied-by-rule"]
	if allowed+denied != uint64(sent.Load()) || len(moved) != 2 {
		t.Fatalf("%d packets during %d swaps: verdicts %v; want only ingress/allowed-by-rule and ingress/denied-by-rule", sent.Load(), swaps, moved)
	}
	if e := badEvent.Load(); e != nil {
		t.Fatalf("event with a half-written table's verdict: %v", e)
	}
	t.Logf("%d packets on %d goroutines during %d table swaps (%d elements each): %d allowed-by-rule, %d denied-by-rule, 0 other verdicts",
		sent.Load(), 2*runtime.NumCPU(), swaps, len(policyEntries(tables[0], ProxyPorts{})), allowed, denied)
	if allowed == 0 || denied == 0 {
		t.Fatalf("the packets saw only one table (allowed %d, denied %d): the test did not interleave", allowed, denied)
	}
}

// TestHalfWrittenTableIsDetected is the swap test's control: a table
// missing its rules, as a packet could see one if a live map were
// rewritten in place, gives a verdict the swap test refuses.
func TestHalfWrittenTableIsDetected(t *testing.T) {
	s := newScenario(t)
	allowText, _ := swapPolicies()
	kvs := policyEntries(tableFor(t, allowText, "default/server"), ProxyPorts{})
	spec := s.d.innerSpec.Copy()
	spec.MaxEntries = uint32(len(kvs))
	half, err := ebpf.NewMap(spec)
	if err != nil {
		t.Fatal(err)
	}
	defer half.Close()
	for _, kv := range kvs[:len(kvs)/2] { // the flags entries and the lower ranges
		if err := half.Put(&kv.Key, &kv.Value); err != nil {
			t.Fatal(err)
		}
	}
	if err := s.d.objs.Policy.Put(s.ids["default/server"], half); err != nil {
		t.Fatal(err)
	}
	s.expect("half-written table", ingress, s.tcp("client", "server", 1, 58500, tcpSYN), false, ReasonDefaultDeny)
	s.expect("half-written table", ingress, s.tcp("client", "server", 2, 1500, tcpSYN), true, ReasonAllowed)
}
