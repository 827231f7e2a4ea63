package bpf

import (
	"fmt"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/cilium/ebpf"
	"github.com/nodemesh/nodemesh/policy"
)

func mustAddr(s string) netip.Addr { return netip.MustParseAddr(s) }

// benchTable is client's table with about n entries: egress to server on
// n distinct TCP ports (2, 4, ..., 2n: no two merge into one range), plus
// a CIDR rule so that world addresses resolve to a policy prefix.
func benchTable(b *testing.B, n int) *policy.Table {
	b.Helper()
	ports := make([]string, n)
	for i := range ports {
		ports[i] = fmt.Sprintf(`{port: "%d", protocol: TCP}`, 2*(i+1))
	}
	text := `apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: bench, namespace: default}
spec:
  endpointSelector: {matchLabels: {app: client}}
  egress:
  - toEndpoints: [{matchLabels: {app: server}}]
    toPorts: [{ports: [` + strings.Join(ports, ", ") + `]}]
  - toCIDR: [203.0.113.0/24]
    toPorts: [{ports: [{port: "443", protocol: TCP}]}]
`
	eng := scenarioEngine(b, text)
	tbl, _, _ := eng.Table("default/client")
	return tbl
}

// BenchmarkFromPodDecision measures from_pod in the kernel (BPF test runs,
// time per packet as the kernel measures it, syscall excluded) with
// tables of 10, 1,000 and 10,000 entries:
//
//	new-allowed   the first packet of an allowed connection: endpoint,
//	              conntrack misses, ipcache, two policy lookups, conntrack
//	              entry, event
//	new-denied    a packet to a world address in a policy prefix with no
//	              matching entry: all four policy lookups, default deny,
//	              event (the ring fills during the run; emitting then fails
//	              fast)
//	established   a packet of a tracked connection: endpoint and conntrack
func BenchmarkFromPodDecision(b *testing.B) {
	requirePrivileges(b)
	for _, n := range []int{10, 1000, 10000} {
		b.Run(fmt.Sprintf("entries=%d", n), func(b *testing.B) {
			d := newTestDatapath(b)
			eng := scenarioEngine(b, "")
			ids := loadNode(b, d, eng, "node-1", loIndex(b))
			tbl := benchTable(b, n)
			if err := d.SetPolicy(ids["default/client"], tbl, ProxyPorts{}); err != nil {
				b.Fatal(err)
			}
			b.Logf("client's table: %d entries, %d map elements", tbl.Egress.Len()+tbl.Ingress.Len(), len(policyEntries(tbl, ProxyPorts{})))
			client, server := mustAddr("10.0.1.10"), mustAddr("10.0.1.20")
			mid := uint16(2 * (n/2 + 1)) // an allowed port in the middle of the table

			b.Run("new-allowed", func(b *testing.B) {
				var total time.Duration
				for i := 0; b.Loop(); i++ {
					p := pkt{src: client, dst: server, proto: ipprotoTCP, sport: uint16(1024 + i%60000), dport: mid, tcpFlags: tcpSYN}
					if i%60000 == 0 {
						flushMap(b, d.objs.Conntrack)
					}
					ret, dur, err := d.objs.FromPod.Benchmark(p.bytes(), 1, nil)
					if err != nil || ret != tcActOK {
						b.Fatalf("ret %d, err %v", ret, err)
					}
					total += dur
				}
				b.ReportMetric(float64(total.Nanoseconds())/float64(b.N), "kernel-ns/pkt")
			})
			b.Run("new-denied", func(b *testing.B) {
				p := pkt{src: client, dst: mustAddr("203.0.113.77"), proto: ipprotoTCP, sport: 999, dport: 8081, tcpFlags: tcpSYN}
				ret, dur, err := d.objs.FromPod.Benchmark(p.bytes(), b.N, b.ResetTimer)
				if err != nil || ret != tcActShot {
					b.Fatalf("ret %d, err %v", ret, err)
				}
				b.ReportMetric(float64(dur.Nanoseconds()), "kernel-ns/pkt")
			})
			b.Run("established", func(b *testing.B) {
				p := pkt{src: client, dst: server, proto: ipprotoTCP, sport: 65000, dport: mid, tcpFlags: tcpACK}
				if ret, err := d.objs.FromPod.Run(&ebpf.RunOptions{Data: p.bytes()}); err != nil || ret != tcActOK {
					b.Fatalf("ret %d, err %v", ret, err)
				}
				ret, dur, err := d.objs.FromPod.Benchmark(p.bytes(), b.N, b.ResetTimer)
				if err != nil || ret != tcActOK {
					b.Fatalf("ret %d, err %v", ret, err)
				}
				b.ReportMetric(float64(dur.Nanoseconds()), "kernel-ns/pkt")
			})
		})
	}
}

// BenchmarkSetPolicy measures a table swap: translate, create, fill and
// freeze the new map, swap it in.
func BenchmarkSetPolicy(b *testing.B) {
	requirePrivileges(b)
	for _, n := range []int{10, 1000, 10000} {
		b.Run(fmt.Sprintf("entries=%d", n), func(b *testing.B) {
			d := newTestDatapath(b)
			tbl := benchTable(b, n)
			for b.Loop() {
				if err := d.SetPolicy(1, tbl, ProxyPorts{}); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}
