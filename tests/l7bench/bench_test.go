package l7bench_test

// BenchmarkL7Proxy measures nodemesh-proxy against HAProxy (issue 4 §7) on
// the package's three-namespace topology. Run it (as root, about 7
// minutes) with
//
//	make bench-proxy
//	NODEMESH_BENCH_RESULTS=$PWD/bench/results.json make bench-proxy   # also record the figures
//
// which is
//
//	go test -run '^$' -bench L7Proxy -benchtime 1x -timeout 30m ./tests/l7bench/
//
// Phases, each in rounds whose order rotates (so no configuration always
// runs first or last on this noisy machine):
//
//   - "1core": nodemesh-proxy (GOMAXPROCS=1) and HAProxy (nbthread 1), each
//     pinned to the last CPU; wrk and the backend pinned to the others;
//     plus "direct", the client to the backend with no proxy, as the
//     ceiling the load generator and backend allow.
//   - "2core": the proxies on the last two CPUs (GOMAXPROCS=2, nbthread 2),
//     wrk and the backend on all CPUs (on a 2-CPU machine, shared).
//   - "rules": nodemesh-proxy pinned as in 1core with the policy's one rule,
//     with 1,000 more rules (each with a literal prefix of its own), and
//     with 1,000 more rules sharing the request's prefix (see RuleSet).
//   - "latency": as 1core, but with one connection: the latency of a
//     request through an idle proxy. With 32 connections the proxies are
//     saturated and a request's latency is mostly its wait in the queue
//     (p50 ≈ connections / rate), so those latencies restate the rates.
//
// Knobs: NODEMESH_BENCH_ROUNDS (default 7), NODEMESH_BENCH_DURATION (each
// run, default 4s), NODEMESH_L7BENCH_CONNS (wrk connections, default 32),
// NODEMESH_L7BENCH_PHASES (comma-separated subset, or none), and
// NODEMESH_L7BENCH_PROFILE=DIR, which afterwards runs package proxy in
// this binary with a CPU profile under the same load (1 rule, then 1,000
// shared-prefix rules) and writes DIR/cpu-*.pprof.

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/nodemesh/nodemesh/bench/report"
	"github.com/nodemesh/nodemesh/tests/l7bench"
)

type layout struct {
	name      string
	proxyCPUs string // taskset list for the proxy under test
	loadCPUs  string // wrk, the backend and this process (the agent's part)
	procs     int    // GOMAXPROCS / nbthread
}

func layouts(b *testing.B) (one, two layout) {
	var set unix.CPUSet
	if err := unix.SchedGetaffinity(0, &set); err != nil {
		b.Fatal(err)
	}
	var cpus []string
	for i := range 1024 {
		if set.IsSet(i) {
			cpus = append(cpus, strconv.Itoa(i))
		}
	}
	if len(cpus) < 2 {
		b.Skipf("needs at least 2 CPUs (the proxy on one, the load on another); this process may use %v", cpus)
	}
	n := len(cpus)
	one = layout{name: "1core", proxyCPUs: cpus[n-1], loadCPUs: strings.Join(cpus[:n-1], ","), procs: 1}
	two = layout{name: "2core", proxyCPUs: strings.Join(cpus[n-2:], ","), procs: 2}
	if n > 2 {
		two.loadCPUs = strings.Join(cpus[:n-2], ",")
	} else {
		two.loadCPUs = strings.Join(cpus, ",") // shared with the proxy
	}
	return one, two
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

// bench is one run of the benchmark.
type bench struct {
	b       *testing.B
	ctx     context.Context
	s       *setup
	bin     string
	rounds  int
	dur     time.Duration
	conns   int
	start   time.Time
	results []report.Result
	table   []string
	procs   []*l7bench.Process // running proxies and backend of the phase
}

// loadavg is the machine's load average (1, 5, 15 minutes): the benchmark
// shares the machine, and the figures mean less the busier it is.
func loadavg() string {
	b, err := os.ReadFile("/proc/loadavg")
	if err != nil {
		return "?"
	}
	f := strings.Fields(string(b))
	if len(f) < 3 {
		return "?"
	}
	return strings.Join(f[:3], " ")
}

func (e *bench) logf(format string, args ...any) {
	fmt.Fprintf(os.Stderr, "l7bench %6.1fs: %s\n", time.Since(e.start).Seconds(), fmt.Sprintf(format, args...))
}

// target is one configuration measured in a phase.
type target struct {
	name   string
	addr   string
	proc   *l7bench.Process // the proxy, whose CPU time is measured; nil for none
	before func() error     // run before each of its runs (e.g. set the rules)
}

func BenchmarkL7Proxy(b *testing.B) {
	if b.N > 1 {
		b.Fatal("run with -benchtime 1x: the benchmark measures in rounds of its own")
	}
	requireRoot(b)
	requireTool(b, "haproxy")
	requireTool(b, "wrk")
	one, two := layouts(b)
	ctx := context.Background()
	e := &bench{
		b: b, ctx: ctx, start: time.Now(),
		rounds: envInt(b, "NODEMESH_BENCH_ROUNDS", 7),
		dur:    4 * time.Second,
		conns:  envInt(b, "NODEMESH_L7BENCH_CONNS", 32),
	}
	if d := os.Getenv("NODEMESH_BENCH_DURATION"); d != "" {
		v, err := time.ParseDuration(d)
		if err != nil || v < time.Second {
			b.Fatalf("NODEMESH_BENCH_DURATION=%q: want a duration of at least 1s", d)
		}
		e.dur = v
	}
	phases := []string{"1core", "2core", "rules", "latency"}
	if p := os.Getenv("NODEMESH_L7BENCH_PHASES"); p != "" {
		phases = strings.Split(p, ",")
	}
	var err error
	e.logf("building nodemesh-proxy (go build ./cmd/nodemesh-proxy, or $%s)", l7bench.ProxyBinaryEnv)
	if e.bin, err = l7bench.ProxyBinary(); err != nil {
		b.Fatal(err)
	}
	e.logf("tree %s; %d rounds of %v per configuration, wrk 1 thread %d connections, GET /userdata/42", revision(), e.rounds, e.dur, e.conns)
	e.s = newSetup(b, ctx, false, "") // each phase starts its backend
	b.Cleanup(func() { pinSelf(b, "") })

	for _, ph := range phases {
		switch ph {
		case "1core":
			e.proxyPhase(one, one.name, e.conns)
		case "2core":
			e.proxyPhase(two, two.name, e.conns)
		case "latency":
			e.proxyPhase(one, "latency", 1)
		case "rules":
			e.rulesPhase(one)
		case "none": // e.g. only the profile
		default:
			b.Fatalf("NODEMESH_L7BENCH_PHASES: unknown phase %q (1core, 2core, rules, latency, none)", ph)
		}
	}
	if dir := os.Getenv("NODEMESH_L7BENCH_PROFILE"); dir != "" {
		e.profile(one, dir)
	}
	e.logf("done; load average %s", loadavg())
	fmt.Fprintf(os.Stderr, "\nl7bench: results (value of the median-ratio round; ratio: median of the per-round ratios (lowest–highest))\n%s\n", strings.Join(e.table, "\n"))
	if err := report.MergeEnv(e.results); err != nil {
		b.Fatal(err)
	}
	if p := os.Getenv(report.EnvResults); p != "" {
		e.logf("results merged into %s", p)
	}
}

// revision names the code measured: the commit and whether the proxy's
// and the control plane's packages had uncommitted changes.
func revision() string {
	out, err := exec.Command("git", "describe", "--always", "--dirty").Output()
	if err != nil {
		return "unknown"
	}
	rev := strings.TrimSpace(string(out))
	if st, err := exec.Command("git", "status", "--short", "--", "../../proxy", "../../xds", "../../cmd/nodemesh-proxy").Output(); err == nil && len(st) > 0 {
		rev += fmt.Sprintf(" (%d uncommitted changes in proxy/, xds/, cmd/nodemesh-proxy: measured as they are)", strings.Count(string(st), "\n"))
	}
	return rev
}

// pinSelf pins every thread of this process (the xDS server, the
// agent's part) to cpus; "" undoes it.
func pinSelf(b *testing.B, cpus string) {
	if cpus == "" {
		cpus = fmt.Sprintf("0-%d", runtimeCPUs()-1)
	}
	if out, err := exec.Command("taskset", "-a", "-p", "-c", cpus, strconv.Itoa(os.Getpid())).CombinedOutput(); err != nil {
		b.Fatalf("taskset -a -p %s: %v: %s", cpus, err, out)
	}
}

func runtimeCPUs() int {
	b, err := os.ReadFile("/sys/devices/system/cpu/online")
	if err != nil {
		return 1
	}
	s := strings.TrimSpace(string(b))
	if i := strings.LastIndexAny(s, "-,"); i >= 0 {
		s = s[i+1:]
	}
	n, _ := strconv.Atoi(s)
	return n + 1
}

func (e *bench) stopPhase() {
	for _, p := range e.procs {
		p.Stop()
	}
	e.procs = nil
}

// startPhase starts the backend on the layout's load CPUs and pins this
// process there too.
func (e *bench) startPhase(l layout) {
	e.stopPhase()
	pinSelf(e.b, l.loadCPUs)
	be, err := e.s.t.StartBackend(e.ctx, l.loadCPUs)
	if err != nil {
		e.b.Fatal(err)
	}
	e.procs = append(e.procs, be)
}

func (e *bench) startNodemesh(l layout) *l7bench.Process {
	p, err := e.s.t.StartNodemeshProxy(e.ctx, e.s.cp, l.procs, l.proxyCPUs, nil, e.bin)
	if err != nil {
		e.b.Fatal(err)
	}
	e.procs = append(e.procs, p)
	return p
}

func (e *bench) proxyPhase(l layout, phase string, conns int) {
	e.logf("phase %s: proxies on CPU %s (GOMAXPROCS / nbthread %d), wrk (%d connections) and backend on CPU %s; load average %s",
		phase, l.proxyCPUs, l.procs, conns, l.loadCPUs, loadavg())
	e.startPhase(l)
	if _, err := e.s.cp.Set(l7bench.RuleSet{}); err != nil { // ACKed when the proxy starts
		e.b.Fatal(err)
	}
	nm := e.startNodemesh(l)
	hap, err := e.s.t.StartHAProxy(e.ctx, l.procs, l.proxyCPUs)
	if err != nil {
		e.b.Fatal(err)
	}
	e.procs = append(e.procs, hap)
	for _, addr := range []string{l7bench.ServiceAddr(), l7bench.HAProxyAddr()} {
		if err := e.s.t.CheckPolicy(addr); err != nil {
			e.b.Fatal(err)
		}
	}
	targets := []target{
		{name: "nodemesh", addr: l7bench.ServiceAddr(), proc: nm},
		{name: "haproxy", addr: l7bench.HAProxyAddr(), proc: hap},
		{name: "direct", addr: l7bench.DirectAddr()},
	}
	res := e.runRounds(phase, l, conns, targets)
	prefix := "l7proxy/" + phase
	e.table = append(e.table, fmt.Sprintf("%s (proxy CPUs %s, load CPUs %s, %d connections):", phase, l.proxyCPUs, l.loadCPUs, conns))
	e.report(prefix, "haproxy", true, res["haproxy"], nil, "")
	e.report(prefix, "direct", false, res["direct"], nil, "")
	e.report(prefix, "nodemesh", true, res["nodemesh"], res["haproxy"], "haproxy")
	e.stopPhase()
}

func (e *bench) rulesPhase(l layout) {
	e.logf("phase rules: nodemesh-proxy on CPU %s (GOMAXPROCS 1), wrk and backend on CPU %s; load average %s", l.proxyCPUs, l.loadCPUs, loadavg())
	e.startPhase(l)
	if _, err := e.s.cp.Set(l7bench.RuleSet{}); err != nil { // ACKed when the proxy starts
		e.b.Fatal(err)
	}
	nm := e.startNodemesh(l)
	sets := []struct {
		name string
		r    l7bench.RuleSet
	}{
		{"nodemesh-1", l7bench.RuleSet{}},
		{"nodemesh-1000", l7bench.RuleSet{Extra: 1000}},
		{"nodemesh-1000-shared", l7bench.RuleSet{Extra: 1000, SharedPrefix: true}},
	}
	var targets []target
	for _, s := range sets {
		targets = append(targets, target{name: s.name, addr: l7bench.ServiceAddr(), proc: nm, before: func() error {
			if err := e.s.cp.Apply(e.ctx, s.r); err != nil {
				return err
			}
			return e.s.t.CheckPolicy(l7bench.ServiceAddr())
		}})
	}
	res := e.runRounds("rules", l, e.conns, targets)
	e.table = append(e.table, fmt.Sprintf("rules (nodemesh-proxy on CPU %s, load CPUs %s, %d connections):", l.proxyCPUs, l.loadCPUs, e.conns))
	e.report("l7proxy/rules", "nodemesh-1", true, res["nodemesh-1"], nil, "")
	e.report("l7proxy/rules", "nodemesh-1000", true, res["nodemesh-1000"], res["nodemesh-1"], "nodemesh-1")
	e.report("l7proxy/rules", "nodemesh-1000-shared", true, res["nodemesh-1000-shared"], res["nodemesh-1"], "nodemesh-1")
	e.stopPhase()
}

// runRounds warms every target up, then runs them in e.rounds rounds,
// rotating their order.
func (e *bench) runRounds(phase string, l layout, conns int, targets []target) map[string][]l7bench.Run {
	load := l7bench.Load{Threads: 1, Conns: conns, Duration: e.dur, CPUs: l.loadCPUs, Path: "/userdata/42"}
	warm := load
	warm.Duration = 2 * time.Second
	for _, tg := range targets {
		e.logf("%s: warm-up %s (%v)", phase, tg.name, warm.Duration)
		e.run(tg, warm)
	}
	res := map[string][]l7bench.Run{}
	for r := range e.rounds {
		for i := range targets {
			tg := targets[(i+r)%len(targets)] // rotated: A,B,C; B,C,A; ...
			w := e.run(tg, load)
			res[tg.name] = append(res[tg.name], w)
			cpu := ""
			if tg.proc != nil {
				cpu = fmt.Sprintf("  proxy CPU %v/req", w.CPUPerRequest().Round(100*time.Nanosecond))
			}
			e.logf("%s round %d/%d: %-20s %8.0f req/s  p50 %7v  p99 %7v%s", phase, r+1, e.rounds, tg.name, w.RPS, w.P50, w.P99, cpu)
		}
	}
	return res
}

func (e *bench) run(tg target, load l7bench.Load) l7bench.Run {
	if tg.before != nil {
		if err := tg.before(); err != nil {
			e.b.Fatalf("%s: %v", tg.name, err)
		}
	}
	var u0, s0 time.Duration
	var err error
	if tg.proc != nil {
		if u0, s0, err = tg.proc.CPUTime(); err != nil {
			e.b.Fatal(err)
		}
	}
	w, err := e.s.t.Wrk(e.ctx, tg.addr, load)
	if err == nil {
		err = w.Check()
	}
	if err != nil {
		e.b.Fatalf("%s: %v", tg.name, err)
	}
	run := l7bench.Run{WrkResult: w}
	if tg.proc != nil {
		u1, s1, err := tg.proc.CPUTime()
		if err != nil {
			e.b.Fatal(err)
		}
		run.ProxyUser, run.ProxySys = u1-u0, s1-s0
	}
	for _, p := range e.procs {
		if err := p.Exited(); err != nil {
			e.b.Fatal(err)
		}
	}
	return run
}

// report records a configuration's figures: medians, or, against a
// baseline measured in the same rounds, the round of the median ratio and
// the spread of the ratios.
func (e *bench) report(prefix, name string, proxy bool, rs, base []l7bench.Run, baseName string) {
	line := fmt.Sprintf("  %-22s", name)
	for _, m := range l7bench.Metrics {
		if m.ProxyOnly && !proxy {
			continue
		}
		vals := make([]float64, len(rs))
		for i, r := range rs {
			vals[i] = m.Value(r)
		}
		key := prefix + "/" + name + "/" + m.Name
		if base == nil {
			v := l7bench.Median(vals)
			e.results = append(e.results, report.New(key, v, m.Unit))
			line += fmt.Sprintf("  %s %s %-5s (runs %s)", m.Name, num(v), m.Unit, spread(vals))
			continue
		}
		bvals := make([]float64, len(base))
		for i, r := range base {
			bvals[i] = m.Value(r)
		}
		p := l7bench.Pair(vals, bvals)
		baseKey := prefix + "/" + baseName + "/" + m.Name
		r := report.Against(key, p.Value, m.Unit, report.New(baseKey, p.Base, m.Unit))
		e.results = append(e.results, r,
			report.New(key+"_ratio_lo", p.Lo, "x"), report.New(key+"_ratio_hi", p.Hi, "x"))
		line += fmt.Sprintf("  %s %s %-5s vs %s %s: %.2fx (%.2f-%.2f)", m.Name, num(p.Value), m.Unit, baseName, num(p.Base), p.Ratio, p.Lo, p.Hi)
		if m.Name == "rps" {
			e.b.ReportMetric(p.Ratio, strings.ReplaceAll(strings.TrimPrefix(prefix, "l7proxy/")+"-"+name+"/"+baseName+"-rps", "/", "_"))
		}
	}
	e.table = append(e.table, line)
}

func spread(vs []float64) string {
	if len(vs) == 0 {
		return "-"
	}
	return strings.TrimSpace(num(slices.Min(vs))) + "-" + strings.TrimSpace(num(slices.Max(vs)))
}

// num formats a figure with a decimal when it is small.
func num(v float64) string {
	if v < 100 {
		return fmt.Sprintf("%7.1f", v)
	}
	return fmt.Sprintf("%7.0f", v)
}

// profile runs package proxy in this binary with a CPU profile, under the
// benchmark's load, with the policy's one rule and with 1,000
// shared-prefix rules.
func (e *bench) profile(l layout, dir string) {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		e.b.Fatal(err)
	}
	self, err := os.Executable()
	if err != nil {
		e.b.Fatal(err)
	}
	for _, s := range []struct {
		name string
		r    l7bench.RuleSet
	}{{"1rule", l7bench.RuleSet{}}, {"1000shared", l7bench.RuleSet{Extra: 1000, SharedPrefix: true}}} {
		e.startPhase(l)
		if _, err := e.s.cp.Set(s.r); err != nil {
			e.b.Fatal(err)
		}
		path, _ := filepath.Abs(filepath.Join(dir, "cpu-"+s.name+".pprof"))
		p, err := e.s.t.StartNodemeshProxy(e.ctx, e.s.cp, l.procs, l.proxyCPUs,
			[]string{l7bench.RoleEnv + "=proxy", l7bench.ProfileEnv + "=" + path}, self)
		if err != nil {
			e.b.Fatal(err)
		}
		e.procs = append(e.procs, p)
		load := l7bench.Load{Threads: 1, Conns: e.conns, Duration: 10 * time.Second, CPUs: l.loadCPUs, Path: "/userdata/42"}
		e.logf("profile %s: package proxy in this binary, %v of load", s.name, load.Duration)
		w := e.run(target{name: "profiled-" + s.name, addr: l7bench.ServiceAddr(), proc: p}, load)
		e.logf("profile %s: %.0f req/s, p50 %v, p99 %v, %v CPU/req; wrote %s (go tool pprof -top %s)", s.name, w.RPS, w.P50, w.P99, w.CPUPerRequest(), path, path)
		e.stopPhase()
	}
}
