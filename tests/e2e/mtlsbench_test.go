package e2e_test

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"testing"
	"time"

	"github.com/nodemesh/nodemesh/bench/report"
	"github.com/nodemesh/nodemesh/tests/e2e"
	"github.com/nodemesh/nodemesh/tests/podtool"
)

// mtlsBenchPolicies: the seed scenario with its L7 rule on the backend's
// port 80, and 8080 open to the frontend without L7 rules.
const mtlsBenchPolicies = e2e.SeedL7Ingress + `---
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: backend-http-8080, namespace: default}
spec:
  endpointSelector: {matchLabels: {app: backend}}
  ingress: [{fromEndpoints: [{matchLabels: {app: frontend}}], toPorts: [{ports: [{port: "8080", protocol: TCP}]}]}]
`

// BenchmarkMTLSPath measures, on the virtual cluster, HTTP keep-alive
// requests from the frontend to the backend on the other node at a fixed
// rate (NODEMESH_BENCH_RATE, default 1,000/s, 4 connections): direct
// (mTLS disabled for the namespace), through both node proxies over mTLS
// without L7 rules (8080), and with the L7 rule (80). It reports p50/p99
// and the added latency against direct, and the CPU both node proxies
// used per 1,000 requests/s (from /proc). Rounds are interleaved
// (NODEMESH_BENCH_ROUNDS, default 3, of NODEMESH_BENCH_DURATION seconds,
// default 5); the medians are reported.
func BenchmarkMTLSPath(b *testing.B) {
	rounds := envInt(b, "NODEMESH_BENCH_ROUNDS", 3)
	dur := time.Duration(envInt(b, "NODEMESH_BENCH_DURATION", 5)) * time.Second
	rate := envInt(b, "NODEMESH_BENCH_RATE", 1000)
	h := mtlsCluster(b, "permissive")
	ctx := context.Background()
	if _, err := h.SetPolicies(ctx, mtlsBenchPolicies); err != nil {
		b.Fatal(err)
	}
	backend := h.C.Pod("default", "backend")
	configs := []struct {
		name, mode, target string
	}{
		{"direct", "disabled", fmt.Sprintf("%s:8080", backend.IP)},
		{"mtls", "permissive", fmt.Sprintf("%s:8080", backend.IP)},
		{"mtls-l7", "permissive", fmt.Sprintf("%s:80", backend.IP)},
	}
	type sample struct {
		r        podtool.RRResult
		cpu, sys float64 // vCPU of both proxies per 1,000 req/s: in all, in the kernel
	}
	for b.Loop() {
		res := map[string][]sample{}
		for round := range rounds {
			for _, c := range configs {
				setMode(b, h, c.mode)
				beforeUser, beforeSys := proxiesCPU(b, h)
				start := time.Now()
				var r podtool.RRResult
				err := podtoolJSON(ctx, h.Podtool, h.C.Pod("default", "frontend"), &r, "hrr", "--to", c.target, "--path", "/userdata/1",
					"--duration", dur.String(), "--conns", "4", "--rate", fmt.Sprint(rate))
				user, sys := proxiesCPU(b, h)
				user, sys = user-beforeUser, sys-beforeSys
				if err != nil || !r.OK {
					b.Fatalf("%s round %d: %+v %v", c.name, round+1, r, err)
				}
				per1k := func(d time.Duration) float64 { return d.Seconds() / time.Since(start).Seconds() * 1000 / r.RPS }
				s := sample{r: r, cpu: per1k(user + sys), sys: per1k(sys)}
				fmt.Fprintf(os.Stderr, "  %-8s round %d/%d: %6.0f req/s  p50 %4d µs  p99 %5d µs  proxies %.3f vCPU per 1,000 req/s (%.3f in the kernel)  (load %s)\n",
					c.name, round+1, rounds, r.RPS, r.P50us, r.P99us, s.cpu, s.sys, loadavg())
				res[c.name] = append(res[c.name], s)
			}
		}
		// Each figure's own median over the rounds.
		med := func(name string) sample {
			var p50, p99, rps, cpu, sys []float64
			for _, s := range res[name] {
				p50, p99 = append(p50, float64(s.r.P50us)), append(p99, float64(s.r.P99us))
				rps, cpu, sys = append(rps, s.r.RPS), append(cpu, s.cpu), append(sys, s.sys)
			}
			return sample{r: podtool.RRResult{P50us: int64(median(p50)), P99us: int64(median(p99)), RPS: median(rps)}, cpu: median(cpu), sys: median(sys)}
		}
		base := med("direct")
		b.ReportMetric(float64(base.r.P50us), "direct-p50-µs")
		b.ReportMetric(float64(base.r.P99us), "direct-p99-µs")
		p50 := report.New("mtls/vcluster/direct/p50", float64(base.r.P50us), "us")
		p99 := report.New("mtls/vcluster/direct/p99", float64(base.r.P99us), "us")
		results := []report.Result{p50, p99}
		for _, c := range configs[1:] {
			m := med(c.name)
			fmt.Fprintf(os.Stderr, "%s at %d req/s: p50 %d µs (+%d), p99 %d µs (+%d) vs direct; both proxies %.3f vCPU per 1,000 req/s (%.3f of it in the kernel)\n",
				c.name, rate, m.r.P50us, m.r.P50us-base.r.P50us, m.r.P99us, m.r.P99us-base.r.P99us, m.cpu, m.sys)
			b.ReportMetric(float64(m.r.P50us-base.r.P50us), c.name+"-p50-added-µs")
			b.ReportMetric(float64(m.r.P99us-base.r.P99us), c.name+"-p99-added-µs")
			b.ReportMetric(m.cpu, c.name+"-proxies-vCPU-per-1k-rps")
			b.ReportMetric(m.sys, c.name+"-proxies-kernel-vCPU-per-1k-rps")
			results = append(results,
				report.Against("mtls/vcluster/"+c.name+"/p50", float64(m.r.P50us), "us", p50),
				report.Against("mtls/vcluster/"+c.name+"/p99", float64(m.r.P99us), "us", p99),
				report.New("mtls/vcluster/"+c.name+"/proxies_vcpu_per_1k_rps", m.cpu, "vCPU"),
				report.New("mtls/vcluster/"+c.name+"/proxies_kernel_vcpu_per_1k_rps", m.sys, "vCPU"))
		}
		if err := report.MergeEnv(results); err != nil {
			b.Fatal(err)
		}
	}
}

// setMode sets the default namespace's mTLS mode and waits until the
// frontend's requests to the backend show it on the underlay: TLS offering
// nodemesh-mtls, or the request line in the clear.
func setMode(b *testing.B, h *e2e.Harness, mode string) {
	b.Helper()
	labels := map[string]string{}
	if mode == "disabled" {
		labels["mtls.nodemesh.io/mode"] = "disabled"
	}
	h.C.SetNamespaceLabels("default", labels)
	if err := h.WriteWorld(); err != nil {
		b.Fatal(err)
	}
	ctx := context.Background()
	url := fmt.Sprintf("http://%s:8080/userdata/1", h.C.Pod("default", "backend").IP)
	deadline := time.Now().Add(20 * time.Second)
	for {
		c, err := h.CaptureUnderlay(ctx)
		if err != nil {
			b.Fatal(err)
		}
		res, err := h.HTTP(ctx, h.C.Pod("default", "frontend"), "GET", url, time.Second)
		pcap, cerr := c.Stop()
		if cerr != nil {
			b.Fatal(cerr)
		}
		tls, plain := bytes.Contains(pcap, []byte("nodemesh-mtls")), bytes.Contains(pcap, []byte("GET /userdata/1"))
		if err == nil && res.Status == 200 && ((mode == "disabled" && plain && !tls) || (mode != "disabled" && tls && !plain)) {
			return
		}
		if time.Now().After(deadline) {
			b.Fatalf("mode %s not in force after 20s (last: %+v %v; tls %v, plaintext %v)", mode, res, err, tls, plain)
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// proxiesCPU is both node proxies' CPU time so far, in user mode and in
// the kernel.
func proxiesCPU(b *testing.B, h *e2e.Harness) (user, sys time.Duration) {
	b.Helper()
	for _, n := range []string{"node-1", "node-2"} {
		u, s, err := h.ProxyCPU(n)
		if err != nil {
			b.Fatal(err)
		}
		user, sys = user+u, sys+s
	}
	return user, sys
}
