package e2e_test

// The datapath benchmarks of issue 3, on the virtual cluster: pod-to-pod
// traffic across nodes with no policy, with the eBPF datapath enforcing
// policies of 10 to 10,000 rules, and with equivalent iptables chains; and
// how fast a policy or pod change is enforced on every node. Run them
// (about 6 minutes, as root) with
//
//	NODEMESH_BENCH_RESULTS=$PWD/bench/results.json \
//	  go test -run '^$' -bench 'Datapath|PolicyChange' -benchtime 1x -timeout 20m ./tests/e2e/
//
// -benchtime 1x matters: each benchmark measures everything once, in its
// own rounds, and reports median figures. Trial runs can be shortened with
// NODEMESH_BENCH_ROUNDS (default 5), NODEMESH_BENCH_DURATION (of each run,
// default 1.5s) and NODEMESH_BENCH_CONFIGS (a comma-separated
// subset of the configurations, e.g. ebpf-10000,iptables-10000; none is
// always measured). docs/benchmarks.md has the figures and how to read them.

import (
	"cmp"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"math"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nodemesh/nodemesh/agent"
	"github.com/nodemesh/nodemesh/bench/report"
	"github.com/nodemesh/nodemesh/tests/e2e"
	"github.com/nodemesh/nodemesh/tests/podtool"
	"github.com/nodemesh/nodemesh/tests/vcluster"
)

// Ports every benchmark pod serves: rr and crr use the echo port, bulk the
// sink.
const (
	benchEchoPort = 7000
	benchBulkPort = 7001
	benchNS       = "bench"
)

var benchServe = []string{"--rr", strconv.Itoa(benchEchoPort), "--bulk", strconv.Itoa(benchBulkPort)}

// benchCluster is the topology of every benchmark cluster: the client (and
// an intruder the policies do not allow) on node-1, the server on node-2.
func benchCluster() (vcluster.Config, []vcluster.PodConfig) {
	cfg := vcluster.Config{Nodes: []vcluster.NodeConfig{
		{Name: "node-1", PodCIDR: "10.0.1.0/24", IP: "192.168.10.1"},
		{Name: "node-2", PodCIDR: "10.0.2.0/24", IP: "192.168.10.2"},
	}}
	pods := []vcluster.PodConfig{
		{Namespace: benchNS, Name: "client", Node: "node-1", Labels: map[string]string{"app": "client", "role": "untrusted"}},
		{Namespace: benchNS, Name: "intruder", Node: "node-1", Labels: map[string]string{"app": "intruder"}},
		{Namespace: benchNS, Name: "server", Node: "node-2", Labels: map[string]string{"app": "server"}},
	}
	return cfg, pods
}

func envInt(b *testing.B, name string, def int) int {
	v := os.Getenv(name)
	if v == "" {
		return def
	}
	n, err := strconv.Atoi(v)
	if err != nil || n < 1 {
		b.Fatalf("%s=%q: want a positive integer", name, v)
	}
	return n
}

// ---- configurations ----

type dpKind string

const (
	kindNone     dpKind = "none"
	kindEBPF     dpKind = "ebpf"
	kindIPTables dpKind = "iptables"
)

type dpConfig struct {
	kind  dpKind
	rules int // per direction; 0 for none (and for ebpf-0: agents, no policy)
}

func (c dpConfig) String() string {
	if c.kind == kindNone {
		return "none"
	}
	return fmt.Sprintf("%s-%d", c.kind, c.rules)
}

var dpConfigs = []dpConfig{
	{kindNone, 0},
	{kindEBPF, 0}, {kindEBPF, 10}, {kindEBPF, 1000}, {kindEBPF, 10000},
	{kindIPTables, 10}, {kindIPTables, 1000}, {kindIPTables, 10000},
}

// otherPeer is the i-th outside address and port of the rules that do not
// match the benchmark's traffic: 100.64.0.0/10 (shared address space,
// never a pod or node here) and ports from 10000.
func otherPeer(i int) (netip.Addr, int) {
	v := 100<<24 | 64<<16 | uint32(i+1)
	return netip.AddrFrom4([4]byte{byte(v >> 24), byte(v >> 16), byte(v >> 8), byte(v)}), 10000 + i
}

// benchPolicies is a CiliumNetworkPolicy pair with n rules in each
// direction: the server's ingress allows n-1 outside /32s, each on its own
// port, and last the client on the echo and bulk ports; the client's egress
// allows n-1 outside /32s on their ports and last the server. Each rule
// compiles to one table entry (7000-7001 is one aligned port block), so the
// server's and the client's tables hold n entries each.
func benchPolicies(n int) string {
	if n == 0 {
		return ""
	}
	var in, eg strings.Builder
	for i := range n - 1 {
		a, port := otherPeer(i)
		fmt.Fprintf(&in, "  - {fromCIDR: [%s/32], toPorts: [{ports: [{port: \"%d\", protocol: TCP}]}]}\n", a, port)
		fmt.Fprintf(&eg, "  - {toCIDR: [%s/32], toPorts: [{ports: [{port: \"%d\", protocol: TCP}]}]}\n", a, port)
	}
	ports := fmt.Sprintf(`toPorts: [{ports: [{port: "%d", endPort: %d, protocol: TCP}]}]`, benchEchoPort, benchBulkPort)
	return fmt.Sprintf(`apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: server-ingress, namespace: %[1]s}
spec:
  endpointSelector: {matchLabels: {app: server}}
  ingress:
%[2]s  - {fromEndpoints: [{matchLabels: {app: client}}], %[4]s}
---
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: client-egress, namespace: %[1]s}
spec:
  endpointSelector: {matchLabels: {app: client}}
  egress:
%[3]s  - {toEndpoints: [{matchLabels: {app: server}}], %[4]s}
`, benchNS, in.String(), eg.String(), ports)
}

// iptablesRules is the stateful iptables equivalent of benchPolicies for
// one node: established and related first, then n-1 rules for the other
// peers, the client's rule last (the worst case for a linear walk), then a
// drop for whatever else is to the server (ingress, on the server's node)
// or from the client (egress, on the client's node).
func iptablesRules(n int, ingress bool, client, server netip.Addr) string {
	var s strings.Builder
	s.WriteString("*filter\n:INPUT ACCEPT [0:0]\n:FORWARD ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\n")
	s.WriteString("-A FORWARD -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT\n")
	for i := range n - 1 {
		a, port := otherPeer(i)
		if ingress {
			fmt.Fprintf(&s, "-A FORWARD -s %s/32 -d %s/32 -p tcp -m tcp --dport %d -j ACCEPT\n", a, server, port)
		} else {
			fmt.Fprintf(&s, "-A FORWARD -s %s/32 -d %s/32 -p tcp -m tcp --dport %d -j ACCEPT\n", client, a, port)
		}
	}
	fmt.Fprintf(&s, "-A FORWARD -s %s/32 -d %s/32 -p tcp -m tcp --dport %d:%d -j ACCEPT\n", client, server, benchEchoPort, benchBulkPort)
	if ingress {
		fmt.Fprintf(&s, "-A FORWARD -d %s/32 -j DROP\n", server)
	} else {
		fmt.Fprintf(&s, "-A FORWARD -s %s/32 -j DROP\n", client)
	}
	s.WriteString("COMMIT\n")
	return s.String()
}

// ---- running podtool in pods ----

// podtoolJSON runs a podtool client in a pod and decodes its JSON line,
// whatever the exit code.
func podtoolJSON(ctx context.Context, tool string, p *vcluster.Pod, v any, args ...string) error {
	out, err := p.Exec(ctx, append([]string{tool}, args...)...)
	if jerr := json.Unmarshal([]byte(strings.TrimSpace(string(out))), v); jerr != nil {
		return fmt.Errorf("podtool %s in %s: %v (output %q)", args[0], p, err, out)
	}
	return nil
}

func benchProbe(ctx context.Context, tool string, from, to *vcluster.Pod, timeout time.Duration) (podtool.ConnectResult, error) {
	var res podtool.ConnectResult
	err := podtoolJSON(ctx, tool, from, &res, "connect", "--to", fmt.Sprintf("%s:%d", to.IP, benchEchoPort), "--timeout", timeout.String())
	return res, err
}

// ---- the datapath benchmark ----

// dpTarget is one configuration on a cluster of its own, so that every
// configuration stays ready and the runs can alternate between them with
// no reconfiguration in between.
type dpTarget struct {
	cfg                      dpConfig
	client, intruder, server *vcluster.Pod
	// ebpf: the agents, the policy entries the agents compiled for the
	// server and the client, and how long loading the policies took: until
	// every agent reported them, and the agents' own reconcile (compile and
	// program, parsing excluded; the slower node).
	h                   *e2e.Harness
	entries             [2]int
	loadMS, reconcileMS float64
	// iptables: the FORWARD rules on the server's and the client's node.
	rules [2]int
}

// setupTarget builds the cluster of a configuration: with agents for
// ebpf, without for none and iptables.
func setupTarget(ctx context.Context, b *testing.B, tool string, cfg dpConfig) *dpTarget {
	b.Helper()
	t := &dpTarget{cfg: cfg}
	ccfg, pods := benchCluster()
	var c *vcluster.Cluster
	if cfg.kind == kindEBPF {
		opts := e2e.Options{Cluster: ccfg, Pods: pods, Serve: benchServe}
		if testing.Verbose() {
			opts.Log = os.Stderr
		}
		h, err := e2e.Start(ctx, opts)
		if err != nil {
			b.Fatal(err)
		}
		b.Cleanup(func() { h.Close() })
		t.h, c = h, h.C
	} else {
		c = vcluster.NewForTest(b, ccfg)
		for _, pc := range pods {
			p := vcluster.AddPodForTest(b, c, pc)
			proc, err := p.Start(ctx, append([]string{tool, "serve"}, benchServe...)...)
			if err != nil {
				b.Fatal(err)
			}
			wctx, cancel := context.WithTimeout(ctx, 10*time.Second)
			err = proc.WaitReady(wctx)
			cancel()
			if err != nil {
				b.Fatalf("server in %s: %v: %s", p, err, proc.Stderr())
			}
		}
	}
	t.client, t.intruder, t.server = c.Pod(benchNS, "client"), c.Pod(benchNS, "intruder"), c.Pod(benchNS, "server")
	switch {
	case cfg.kind == kindEBPF && cfg.rules > 0:
		d, err := t.h.SetPolicies(ctx, benchPolicies(cfg.rules))
		if err != nil {
			b.Fatalf("%s: %v", cfg, err)
		}
		t.loadMS = ms(d)
		for i, p := range []*vcluster.Pod{t.server, t.client} {
			st, err := t.h.Status(ctx, p.Node)
			if err != nil {
				b.Fatal(err)
			}
			t.reconcileMS = max(t.reconcileMS, ms(st.Reconcile))
			ac, err := agent.Dial(t.h.Socket(p.Node))
			if err != nil {
				b.Fatal(err)
			}
			eps, err := ac.Endpoints(ctx)
			ac.Close()
			if err != nil {
				b.Fatal(err)
			}
			for _, ep := range eps.Endpoints {
				if ep.Namespace == p.Namespace && ep.Name == p.Name {
					t.entries[i] = ep.PolicyEntries
				}
			}
		}
		// Each rule is one entry of the selected direction.
		if t.entries[0] < cfg.rules || t.entries[1] < cfg.rules {
			b.Fatalf("%s: the agents compiled %d entries for the server and %d for the client, want %d each", cfg, t.entries[0], t.entries[1], cfg.rules)
		}
	case cfg.kind == kindIPTables:
		dir := b.TempDir()
		for i, n := range []*vcluster.Node{c.Node(t.server.Node), c.Node(t.client.Node)} {
			path := filepath.Join(dir, n.Name+".rules")
			if err := os.WriteFile(path, []byte(iptablesRules(cfg.rules, i == 0, t.client.IP, t.server.IP)), 0o644); err != nil {
				b.Fatal(err)
			}
			if _, err := n.Run(ctx, "iptables-restore", path); err != nil {
				b.Fatalf("%s on %s: %v", cfg, n.Name, err)
			}
			out, err := n.Run(ctx, "iptables", "-S", "FORWARD")
			if err != nil {
				b.Fatal(err)
			}
			t.rules[i] = strings.Count(string(out), "\n-A FORWARD")
			if t.rules[i] != cfg.rules+2 {
				b.Fatalf("%s on %s: %d FORWARD rules, want %d", cfg, n.Name, t.rules[i], cfg.rules+2)
			}
		}
	}
	return t
}

// check makes sure the configuration lets the client through and, when it
// has a policy, drops the intruder.
func (t *dpTarget) check(ctx context.Context, b *testing.B, tool string) {
	b.Helper()
	res, err := benchProbe(ctx, tool, t.client, t.server, 2*time.Second)
	if err != nil || !res.OK {
		b.Fatalf("%s: client -> server: %+v %v", t.cfg, res, err)
	}
	res, err = benchProbe(ctx, tool, t.intruder, t.server, 300*time.Millisecond)
	if err != nil {
		b.Fatal(err)
	}
	if enforced := t.cfg.rules > 0; enforced != (res.Reason == podtool.ReasonTimeout) || (!enforced && !res.OK) {
		b.Fatalf("%s: intruder -> server: %+v (want dropped: %v)", t.cfg, res, enforced)
	}
}

// dpLoads are the three loads, each run from the client to the server.
var dpLoads = []string{"rr", "crr", "bulk"}

// run runs one load for d and returns its figures by metric key.
func (t *dpTarget) run(ctx context.Context, b *testing.B, tool, load string, d time.Duration) map[string]float64 {
	b.Helper()
	echo := fmt.Sprintf("%s:%d", t.server.IP, benchEchoPort)
	switch load {
	case "rr":
		var r podtool.RRResult
		if err := podtoolJSON(ctx, tool, t.client, &r, "rr", "--to", echo, "--conns", "4", "--duration", d.String()); err != nil || !r.OK {
			b.Fatalf("%s: rr: %+v %v", t.cfg, r, err)
		}
		return map[string]float64{"rr_rate": r.RPS, "rr_p50": float64(r.P50us), "rr_p99": float64(r.P99us)}
	case "crr":
		// RST closes: a FIN close leaves every connection in TIME_WAIT on
		// the client for 60 s, and the client would run out of ports.
		var r podtool.CRRResult
		if err := podtoolJSON(ctx, tool, t.client, &r, "crr", "--to", echo, "--conns", "4", "--duration", d.String(), "--reset"); err != nil || !r.OK {
			b.Fatalf("%s: crr: %+v %v", t.cfg, r, err)
		}
		return map[string]float64{"crr_rate": r.RPS, "crr_p50": float64(r.P50us), "crr_p99": float64(r.P99us)}
	default:
		var r podtool.BulkResult
		if err := podtoolJSON(ctx, tool, t.client, &r, "bulk", "--to", fmt.Sprintf("%s:%d", t.server.IP, benchBulkPort), "--duration", d.String()); err != nil || !r.OK {
			b.Fatalf("%s: bulk: %+v %v", t.cfg, r, err)
		}
		return map[string]float64{"bulk_throughput": r.BitsPerS / 1e9}
	}
}

// loadavg is the machine's one-minute load average, for the log: the
// machine may be shared, and a busy minute shows in the figures.
func loadavg() string {
	b, err := os.ReadFile("/proc/loadavg")
	if err != nil {
		return "?"
	}
	return strings.Fields(string(b))[0]
}

func median(v []float64) float64 {
	s := slices.Clone(v)
	slices.Sort(s)
	n := len(s)
	if n == 0 {
		return math.NaN()
	}
	if n%2 == 1 {
		return s[n/2]
	}
	return (s[n/2-1] + s[n/2]) / 2
}

// medianPair picks, of the runs of a configuration (xs) and the none runs
// paired with them (ns), the pair whose ratio x/n is the median ratio (the
// upper one of an even count), and returns it with the lowest and highest
// ratio.
func medianPair(xs, ns []float64) (x, n, lo, hi float64) {
	idx := make([]int, len(xs))
	for i := range idx {
		idx[i] = i
	}
	slices.SortFunc(idx, func(a, b int) int { return cmp.Compare(xs[a]/ns[a], xs[b]/ns[b]) })
	m := idx[len(idx)/2]
	first, last := idx[0], idx[len(idx)-1]
	return xs[m], ns[m], xs[first] / ns[first], xs[last] / ns[last]
}

// dpMetric is one figure of a load, as reported.
type dpMetric struct{ key, unit string }

var dpMetrics = []dpMetric{
	{"rr_rate", "req/s"}, {"rr_p50", "us"}, {"rr_p99", "us"},
	{"crr_rate", "conn/s"}, {"crr_p50", "us"}, {"crr_p99", "us"},
	{"bulk_throughput", "Gbit/s"},
}

// BenchmarkDatapath measures pod-to-pod traffic across nodes (client on
// node-1, server on node-2) in each configuration of dpConfigs, each on a
// cluster of its own: request/response over 4 persistent connections (rr),
// a new connection per request from 4 workers (crr) and one bulk stream.
//
// The machine is noisy (shared, virtual), and its speed drifts from one
// second to the next; so every run of a configuration is paired with a run
// of none just before or after it (the order alternates by round), and the
// configurations take turns in a rotated order. A configuration's figure is
// the pair whose ratio (configuration / none) is the median over the
// rounds: value, baseline value and ratio all come from that pair. The
// none row is the median of all none runs.
func BenchmarkDatapath(b *testing.B) {
	vcluster.RequireCluster(b)
	rounds := envInt(b, "NODEMESH_BENCH_ROUNDS", 5)
	d := 1500 * time.Millisecond
	if v := os.Getenv("NODEMESH_BENCH_DURATION"); v != "" {
		var err error
		if d, err = time.ParseDuration(v); err != nil || d <= 0 {
			b.Fatalf("NODEMESH_BENCH_DURATION=%q: want a positive duration", v)
		}
	}
	ctx := context.Background()
	tool, err := vcluster.PodtoolPath()
	if err != nil {
		b.Fatal(err)
	}
	configs := dpConfigs
	if only := os.Getenv("NODEMESH_BENCH_CONFIGS"); only != "" {
		names := strings.Split(only, ",")
		configs = slices.DeleteFunc(slices.Clone(dpConfigs), func(c dpConfig) bool {
			return c.kind != kindNone && !slices.Contains(names, c.String())
		})
	}
	var none *dpTarget
	var others []*dpTarget
	for _, c := range configs {
		t := setupTarget(ctx, b, tool, c)
		t.check(ctx, b, tool)
		if c.kind == kindNone {
			none = t
		} else {
			others = append(others, t)
		}
		b.Logf("%-14s ready: policy entries %v, iptables rules %v, policy load %.0f ms (agents' reconcile %.0f ms)", c, t.entries, t.rules, t.loadMS, t.reconcileMS)
	}

	// samples[config][metric]; paired[config][metric] are the none runs
	// paired with config's.
	samples, paired := map[string]map[string][]float64{}, map[string]map[string][]float64{}
	add := func(m map[string]map[string][]float64, cfg string, figs map[string]float64) {
		if m[cfg] == nil {
			m[cfg] = map[string][]float64{}
		}
		for k, v := range figs {
			m[cfg][k] = append(m[cfg][k], v)
		}
	}
	b.ResetTimer()
	for round := range rounds {
		for _, load := range dpLoads {
			for i := range others {
				t := others[(i+round)%len(others)]
				var figs, base map[string]float64
				if round%2 == 0 {
					base = none.run(ctx, b, tool, load, d)
					figs = t.run(ctx, b, tool, load, d)
				} else {
					figs = t.run(ctx, b, tool, load, d)
					base = none.run(ctx, b, tool, load, d)
				}
				add(samples, t.cfg.String(), figs)
				add(paired, t.cfg.String(), base)
				add(samples, "none", base)
				key := load + "_rate"
				if load == "bulk" {
					key = "bulk_throughput"
				}
				b.Logf("round %d load %5s | %-4s %-14s %9.2f vs none %9.2f: x%.3f", round+1, loadavg(), load, t.cfg, figs[key], base[key], figs[key]/base[key])
			}
		}
	}
	b.StopTimer()
	for _, t := range append([]*dpTarget{none}, others...) {
		t.check(ctx, b, tool) // still as configured at the end
	}

	var results []report.Result
	values, ratios := map[string]map[string]float64{}, map[string]map[string]float64{}
	for _, c := range configs {
		name := c.String()
		values[name], ratios[name] = map[string]float64{}, map[string]float64{}
		for _, m := range dpMetrics {
			if c.kind == kindNone {
				values[name][m.key] = median(samples[name][m.key])
				results = append(results, report.New("datapath/none/"+m.key, values[name][m.key], m.unit))
				continue
			}
			x, n, lo, hi := medianPair(samples[name][m.key], paired[name][m.key])
			values[name][m.key] = x
			r := report.Against("datapath/"+name+"/"+m.key, x, m.unit, report.New("datapath/none/"+m.key, n, m.unit))
			if r.Ratio != nil {
				ratios[name][m.key] = *r.Ratio
				b.Logf("%-14s %-15s %10.2f %-6s vs none %10.2f: x%.3f (pairs x%.3f-x%.3f)", name, m.key, x, m.unit, n, *r.Ratio, lo, hi)
			}
			results = append(results, r)
		}
	}
	for _, t := range others {
		name := t.cfg.String()
		switch t.cfg.kind {
		case kindEBPF:
			results = append(results,
				report.New("datapath/"+name+"/policy_entries_server", float64(t.entries[0]), "entries"),
				report.New("datapath/"+name+"/policy_entries_client", float64(t.entries[1]), "entries"))
			if t.cfg.rules > 0 {
				results = append(results,
					report.New("datapath/"+name+"/policy_load", t.loadMS, "ms"),
					report.New("datapath/"+name+"/policy_load_reconcile", t.reconcileMS, "ms"))
			}
		case kindIPTables:
			results = append(results,
				report.New("datapath/"+name+"/iptables_rules_server_node", float64(t.rules[0]), "rules"),
				report.New("datapath/"+name+"/iptables_rules_client_node", float64(t.rules[1]), "rules"))
		}
	}
	for _, c := range configs {
		b.Run(c.String(), func(b *testing.B) {
			b.ReportMetric(0, "ns/op")
			for _, m := range dpMetrics {
				b.ReportMetric(values[c.String()][m.key], m.key+"_"+m.unit)
				if r, ok := ratios[c.String()][m.key]; ok {
					b.ReportMetric(r, m.key+"_x_none")
				}
			}
		})
	}
	if err := report.MergeEnv(results); err != nil {
		b.Error(err)
	}
}

// ---- the policy change benchmark ----

// latStats are the statistics of a set of latencies.
type latStats struct {
	N                   int
	P50, P99, Max, Mean time.Duration
}

func latencyStats(v []time.Duration) latStats {
	s := slices.Clone(v)
	slices.Sort(s)
	st := latStats{N: len(s)}
	if len(s) == 0 {
		return st
	}
	rank := func(p float64) time.Duration { return s[max(0, int(math.Ceil(p*float64(len(s))))-1)] }
	st.P50, st.P99, st.Max = rank(0.50), rank(0.99), s[len(s)-1]
	var sum time.Duration
	for _, x := range s {
		sum += x
	}
	st.Mean = sum / time.Duration(len(s))
	return st
}

func ms(d time.Duration) float64 { return float64(d.Microseconds()) / 1000 }

// firstSuccess tries TCP echoes from the client's namespace, each over a
// new connection, about every interval from now until one succeeds or limit
// passes, and returns when the first success completed. workers threads
// stay inside the namespace (no thread is made per attempt); each attempt
// waits at most workers×interval, so a dropped SYN is retried by the next
// attempt, never by the kernel's 1 s retransmission.
func firstSuccess(from *vcluster.Pod, to string, interval time.Duration, workers int, limit time.Duration) (time.Time, bool) {
	var (
		mu    sync.Mutex
		first time.Time
		done  atomic.Bool
		wg    sync.WaitGroup
	)
	timeout := time.Duration(workers) * interval
	stop := time.Now().Add(limit)
	attempt := func() {
		c, err := (&net.Dialer{Timeout: timeout}).Dial("tcp", to)
		if err != nil {
			return
		}
		defer c.Close()
		c.SetDeadline(time.Now().Add(timeout))
		msg := []byte("nodemesh")
		if _, err := c.Write(msg); err != nil {
			return
		}
		if _, err := io.ReadFull(c, msg); err != nil {
			return
		}
		now := time.Now()
		mu.Lock()
		if first.IsZero() || now.Before(first) {
			first = now
		}
		mu.Unlock()
		done.Store(true)
	}
	for i := range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			time.Sleep(time.Duration(i) * interval) // stagger the workers
			from.InNetns(func() error {
				for !done.Load() && time.Now().Before(stop) {
					t0 := time.Now()
					attempt()
					// Keep to one attempt per worker per timeout: a refused or
					// fast attempt does not spin.
					time.Sleep(timeout - time.Since(t0))
				}
				return nil
			})
		}()
	}
	wg.Wait()
	return first, !first.IsZero()
}

// BenchmarkPolicyChange measures how long a change takes to be enforced on
// every node, from the moment its input file is written:
//
//	policy          100 policy changes, alternately allowing and denying
//	                the client at the server, until every agent reports
//	                the generation as programmed
//	policy-traffic  20 more changes that allow the (denied) client, until
//	                a new connection from it first gets through
//	pod             40 relabels of the client (20 into the identity a rule
//	                allows, 20 back), until every agent reports it
//	pod-traffic     the 20 relabels that allow the client, until a new
//	                connection first gets through
//
// The target is p99 < 100 ms.
func BenchmarkPolicyChange(b *testing.B) {
	vcluster.RequireCluster(b)
	ctx := context.Background()
	cfg, pods := benchCluster()
	opts := e2e.Options{Cluster: cfg, Pods: pods, Serve: benchServe}
	if testing.Verbose() {
		opts.Log = os.Stderr
	}
	h, err := e2e.Start(ctx, opts)
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { h.Close() })
	w, err := h.Watch()
	if err != nil {
		b.Fatal(err)
	}
	defer w.Close()
	client, intruder, server := h.C.Pod(benchNS, "client"), h.C.Pod(benchNS, "intruder"), h.C.Pod(benchNS, "server")
	echo := fmt.Sprintf("%s:%d", server.IP, benchEchoPort)
	const poll = 5 * time.Millisecond

	// The server always admits the intruder, so its ingress stays
	// enforced; the client is allowed and denied in turn.
	policyFor := func(peers ...string) string {
		var rules []string
		for _, sel := range peers {
			rules = append(rules, fmt.Sprintf("  - {fromEndpoints: [{matchLabels: {%s}}], toPorts: [{ports: [{port: \"%d\", protocol: TCP}]}]}", sel, benchEchoPort))
		}
		return fmt.Sprintf("apiVersion: cilium.io/v2\nkind: CiliumNetworkPolicy\nmetadata: {name: server-ingress, namespace: %s}\nspec:\n  endpointSelector: {matchLabels: {app: server}}\n  ingress:\n%s\n",
			benchNS, strings.Join(rules, "\n"))
	}
	deny, allow := policyFor("app: intruder"), policyFor("app: intruder", "app: client")
	tool, err := vcluster.PodtoolPath()
	if err != nil {
		b.Fatal(err)
	}
	mustDenied := func(what string) {
		res, err := benchProbe(ctx, tool, client, server, 200*time.Millisecond)
		if err != nil || res.Reason != podtool.ReasonTimeout {
			b.Fatalf("%s: the client should be dropped: %+v %v", what, res, err)
		}
	}
	set := func(yaml string) e2e.ChangeTiming {
		ct, err := w.SetPolicies(ctx, yaml, poll)
		if err != nil {
			b.Fatal(err)
		}
		return ct
	}
	set(deny)
	mustDenied("start")
	if res, err := benchProbe(ctx, tool, intruder, server, time.Second); err != nil || !res.OK {
		b.Fatalf("intruder -> server: %+v %v", res, err)
	}

	b.ResetTimer()
	// 1. 100 policy changes, each real: allow, deny, allow, ...
	var policyLat, policySeen []time.Duration
	for i := range 100 {
		ct := set(map[bool]string{true: allow, false: deny}[i%2 == 0])
		policyLat, policySeen = append(policyLat, ct.Latency()), append(policySeen, ct.SeenLatency())
		time.Sleep(20 * time.Millisecond)
	}
	// 100 is even: the client is denied again.
	mustDenied("after 100 changes")

	// 2. 20 changes that allow the client, timed by traffic.
	var trafficLat, trafficStatus []time.Duration
	for i := range 20 {
		if i > 0 {
			set(deny)
			mustDenied(fmt.Sprintf("policy-traffic %d", i))
		}
		var ct e2e.ChangeTiming
		var first time.Time
		var ok bool
		var wg sync.WaitGroup
		wg.Add(1)
		go func() {
			defer wg.Done()
			first, ok = firstSuccess(client, echo, time.Millisecond, 25, 3*time.Second)
		}()
		time.Sleep(5 * time.Millisecond) // attempts are failing before the write
		ct = set(allow)
		wg.Wait()
		if !ok {
			b.Fatalf("policy-traffic %d: the client never got through after the allow", i)
		}
		trafficLat, trafficStatus = append(trafficLat, first.Sub(ct.Written)), append(trafficStatus, ct.Latency())
	}

	// 3. Pod changes: the policy allows role=trusted; the client is
	// relabelled in and out of that identity.
	set(policyFor("app: intruder", "role: trusted"))
	mustDenied("role policy")
	var podLat, podTraffic []time.Duration
	relabel := func(role string) e2e.ChangeTiming {
		client.Labels["role"] = role // the cluster's own record: WorldYAML reads it
		ct, err := w.SetWorld(ctx, h.C.WorldYAML(), poll)
		if err != nil {
			b.Fatal(err)
		}
		return ct
	}
	for i := range 20 {
		var first time.Time
		var ok bool
		var wg sync.WaitGroup
		wg.Add(1)
		go func() {
			defer wg.Done()
			first, ok = firstSuccess(client, echo, time.Millisecond, 25, 3*time.Second)
		}()
		time.Sleep(5 * time.Millisecond)
		ct := relabel("trusted")
		wg.Wait()
		if !ok {
			b.Fatalf("pod change %d: the relabelled client never got through", i)
		}
		podLat, podTraffic = append(podLat, ct.Latency()), append(podTraffic, first.Sub(ct.Written))
		ct = relabel("untrusted")
		podLat = append(podLat, ct.Latency())
		mustDenied(fmt.Sprintf("pod change %d", i))
	}
	b.StopTimer()
	var deltas []string
	for i := range trafficLat {
		deltas = append(deltas, fmt.Sprintf("%+.1f", ms(trafficLat[i]-trafficStatus[i])))
	}
	b.Logf("policy-traffic minus status, per change (ms): %s", strings.Join(deltas, " "))

	sets := []struct {
		name string
		lat  []time.Duration
	}{
		{"policy", policyLat},
		{"policy-seen", policySeen},
		{"policy-traffic", trafficLat},
		{"policy-traffic-status", trafficStatus},
		{"pod", podLat},
		{"pod-traffic", podTraffic},
	}
	var results []report.Result
	for _, s := range sets {
		st := latencyStats(s.lat)
		b.Logf("%-22s n=%3d p50 %6.1f ms  p99 %6.1f ms  max %6.1f ms  mean %6.1f ms", s.name, st.N, ms(st.P50), ms(st.P99), ms(st.Max), ms(st.Mean))
		results = append(results,
			report.New("policy_change/"+s.name+"/p50", ms(st.P50), "ms"),
			report.New("policy_change/"+s.name+"/p99", ms(st.P99), "ms"),
			report.New("policy_change/"+s.name+"/max", ms(st.Max), "ms"),
			report.New("policy_change/"+s.name+"/count", float64(st.N), "changes"))
		b.Run(s.name, func(b *testing.B) {
			b.ReportMetric(0, "ns/op")
			b.ReportMetric(ms(st.P50), "p50_ms")
			b.ReportMetric(ms(st.P99), "p99_ms")
			b.ReportMetric(ms(st.Max), "max_ms")
			b.ReportMetric(float64(st.N), "changes")
		})
	}
	if err := report.MergeEnv(results); err != nil {
		b.Error(err)
	}
}
