package e2e_test

import (
	"context"
	"fmt"
	"os"
	"testing"
	"time"

	"github.com/nodemesh/nodemesh/bench/report"
	"github.com/nodemesh/nodemesh/tests/e2e"
	"github.com/nodemesh/nodemesh/tests/podtool"
	"github.com/nodemesh/nodemesh/tests/vcluster"
)

// BenchmarkWireGuardPath measures pod to pod across nodes on two virtual
// clusters started side by side: one without encryption, one whose agents
// run --encryption wireguard (the embedded userspace device). Rounds
// alternate between them (NODEMESH_BENCH_ROUNDS, default 3, of
// NODEMESH_BENCH_DURATION seconds, default 5): single-stream TCP
// throughput and request/response rate (4 connections), medians, and the
// ratio WireGuard / plaintext. (Debian's wireguard-go is compared at the
// device level: go test ./wireguard -bench Throughput.)
func BenchmarkWireGuardPath(b *testing.B) {
	vcluster.RequireCluster(b)
	rounds := envInt(b, "NODEMESH_BENCH_ROUNDS", 3)
	dur := time.Duration(envInt(b, "NODEMESH_BENCH_DURATION", 5)) * time.Second
	ctx := context.Background()
	start := func(wg bool) *e2e.Harness {
		opts := e2e.Options{
			Pods: []vcluster.PodConfig{
				{Name: "client", Node: "node-1"},
				{Name: "server", Node: "node-2"},
			},
			Serve:     benchServe,
			WireGuard: wg,
			Log:       os.Stderr,
		}
		h, err := e2e.Start(ctx, opts)
		if err != nil {
			b.Fatal(err)
		}
		b.Cleanup(func() { h.Close() })
		return h
	}
	clusters := []struct {
		name string
		h    *e2e.Harness
	}{{"plaintext", start(false)}, {"wireguard", start(true)}}
	for b.Loop() {
		tput, rps := map[string][]float64{}, map[string][]float64{}
		for round := range rounds {
			for _, c := range clusters {
				client, server := c.h.C.Pod("default", "client"), c.h.C.Pod("default", "server")
				var bulk podtool.BulkResult
				if err := podtoolJSON(ctx, c.h.Podtool, client, &bulk, "bulk", "--to", fmt.Sprintf("%s:%d", server.IP, benchBulkPort), "--duration", dur.String()); err != nil || !bulk.OK {
					b.Fatalf("%s bulk: %+v %v", c.name, bulk, err)
				}
				var rr podtool.RRResult
				if err := podtoolJSON(ctx, c.h.Podtool, client, &rr, "rr", "--to", fmt.Sprintf("%s:%d", server.IP, benchEchoPort), "--conns", "4", "--duration", dur.String()); err != nil || !rr.OK {
					b.Fatalf("%s rr: %+v %v", c.name, rr, err)
				}
				fmt.Fprintf(os.Stderr, "  %-9s round %d/%d: %6.2f Gbit/s  %7.0f req/s  (load %s)\n", c.name, round+1, rounds, bulk.BitsPerS/1e9, rr.RPS, loadavg())
				tput[c.name] = append(tput[c.name], bulk.BitsPerS/1e9)
				rps[c.name] = append(rps[c.name], rr.RPS)
			}
		}
		pt, prr := report.New("wireguard/vcluster/plaintext/throughput", median(tput["plaintext"]), "Gbit/s"), report.New("wireguard/vcluster/plaintext/rr_rate", median(rps["plaintext"]), "req/s")
		wt, wrr := report.Against("wireguard/vcluster/embedded/throughput", median(tput["wireguard"]), "Gbit/s", pt), report.Against("wireguard/vcluster/embedded/rr_rate", median(rps["wireguard"]), "req/s", prr)
		fmt.Fprintf(os.Stderr, "wireguard vs plaintext: throughput %.2f / %.2f Gbit/s = %.2fx; request/response %.0f / %.0f req/s = %.2fx\n",
			wt.Value, pt.Value, *wt.Ratio, wrr.Value, prr.Value, *wrr.Ratio)
		b.ReportMetric(*wt.Ratio, "throughput-ratio")
		b.ReportMetric(*wrr.Ratio, "rr-ratio")
		if err := report.MergeEnv([]report.Result{pt, prr, wt, wrr}); err != nil {
			b.Fatal(err)
		}
	}
}
