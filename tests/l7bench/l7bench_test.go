package l7bench_test

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"os/signal"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/nodemesh/nodemesh/tests/l7bench"
)

func TestMain(m *testing.M) {
	l7bench.RunRole() // the backend and the profiled proxy are this binary
	sigc := make(chan os.Signal, 1)
	signal.Notify(sigc, syscall.SIGINT, syscall.SIGTERM)
	go func() {
		s := <-sigc
		fmt.Fprintf(os.Stderr, "l7bench: %v: removing namespaces and processes\n", s)
		l7bench.CloseAll()
		l7bench.RemoveProxyBinary()
		signal.Reset()
		_ = syscall.Kill(os.Getpid(), s.(syscall.Signal))
	}()
	code := m.Run()
	l7bench.CloseAll()
	l7bench.RemoveProxyBinary()
	os.Exit(code)
}

// requireRoot skips unless the test can build the topology: root, and the
// tools it runs. haproxy and wrk are checked by their users.
func requireRoot(tb testing.TB) {
	tb.Helper()
	if os.Geteuid() != 0 {
		tb.Skip("needs root: network namespaces, veths, iptables TPROXY (CI runs as root)")
	}
	for _, bin := range []string{"ip", "iptables", "taskset", "sysctl"} {
		if _, err := exec.LookPath(bin); err != nil {
			// Root without these means a broken setup, not an unsupported one.
			tb.Fatalf("%s not found: run 'make deps' (scripts/deps.sh installs iproute2, iptables, util-linux, procps)", bin)
		}
	}
}

func requireTool(tb testing.TB, bin string) {
	tb.Helper()
	if _, err := exec.LookPath(bin); err != nil {
		tb.Skipf("%s is not installed: run 'make deps' (scripts/deps.sh installs haproxy and wrk)", bin)
	}
}

// setup is the topology with the xDS control plane (and the backend, when
// newSetup is given its CPUs).
type setup struct {
	t  *l7bench.Topology
	cp *l7bench.ControlPlane
}

func newSetup(tb testing.TB, ctx context.Context, backend bool, backendCPUs string) *setup {
	tb.Helper()
	topo, err := l7bench.NewTopology(ctx)
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() {
		if err := topo.Close(); err != nil {
			tb.Errorf("cleanup: %v", err)
		}
	})
	if backend {
		if _, err := topo.StartBackend(ctx, backendCPUs); err != nil {
			tb.Fatal(err)
		}
	}
	cp, err := l7bench.StartControlPlane(ctx, topo.Dir, l7bench.RuleSet{})
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(cp.Close)
	return &setup{t: topo, cp: cp}
}

// TestThroughTPROXY is the benchmark's setup in one short round: a
// connection from the client namespace to the server's address is steered
// by TPROXY to nodemesh-proxy's transparent listener, which sees the
// original destination (its filter chain matches the server's address and
// port) and enforces the policy's one HTTP rule; HAProxy with the
// equivalent ACL answers the same; and a 2-second wrk run through each
// completes with only 200s. It keeps the benchmark from rotting; `make
// bench-proxy` measures.
func TestThroughTPROXY(t *testing.T) {
	requireRoot(t)
	ctx := context.Background()
	bin, err := l7bench.ProxyBinary()
	if err != nil {
		t.Fatal(err)
	}
	s := newSetup(t, ctx, true, "")

	// The backend itself answers 404 to what the proxies must refuse, so
	// a 403 below can only come from a proxy.
	if code, _, err := l7bench.Request(s.t.Client, l7bench.DirectAddr(), "GET", "/other"); err != nil || code != 404 {
		t.Fatalf("backend, direct: GET /other = %d, %v; want 404", code, err)
	}
	if code, body, err := l7bench.Request(s.t.Client, l7bench.DirectAddr(), "GET", "/userdata/42"); err != nil || code != 200 || len(body) != l7bench.BodySize {
		t.Fatalf("backend, direct: GET /userdata/42 = %d (%d bytes), %v", code, len(body), err)
	}
	// Without a proxy listening, TPROXY drops the steered SYN (and
	// FORWARD would too): nothing reaches the server around the proxy.
	if c, err := l7bench.DialIn(s.t.Client, l7bench.ServiceAddr(), 300*time.Millisecond); err == nil {
		c.Close()
		t.Fatal("connected to the service port with no proxy listening: the steering leaks")
	}

	load := l7bench.Load{Threads: 1, Conns: 8, Duration: 2 * time.Second, Path: "/userdata/42"}
	t.Run("nodemesh-proxy", func(t *testing.T) {
		p, err := s.t.StartNodemeshProxy(ctx, s.cp, 1, "", nil, bin)
		if err != nil {
			t.Fatal(err)
		}
		defer p.Stop()
		if err := s.t.CheckPolicy(l7bench.ServiceAddr()); err != nil {
			t.Fatal(err)
		}
		if _, body, _ := l7bench.Request(s.t.Client, l7bench.ServiceAddr(), "GET", "/other"); body != "RBAC: access denied" {
			t.Errorf("denied body %q, want Envoy's \"RBAC: access denied\"", body)
		}
		stats := adminStats(t, s.t)
		if !strings.Contains(stats, `nodemesh_proxy_rbac_requests_total{listener="nodemesh-inbound",verdict="denied"}`) {
			t.Errorf("the inbound listener's RBAC did not count the denials:\n%s", grep(stats, "rbac"))
		}
		requireTool(t, "wrk")
		runWrk(t, s.t, l7bench.ServiceAddr(), load)
		if err := p.Exited(); err != nil {
			t.Fatal(err)
		}
		if u, k, err := p.CPUTime(); err != nil || u+k == 0 {
			t.Errorf("nodemesh-proxy's CPU time: %v %v, %v; want some after a wrk run", u, k, err)
		}
	})
	t.Run("haproxy", func(t *testing.T) {
		requireTool(t, "haproxy")
		p, err := s.t.StartHAProxy(ctx, 1, "")
		if err != nil {
			t.Fatal(err)
		}
		defer p.Stop()
		if err := s.t.CheckPolicy(l7bench.HAProxyAddr()); err != nil {
			t.Fatal(err)
		}
		requireTool(t, "wrk")
		runWrk(t, s.t, l7bench.HAProxyAddr(), load)
	})
	t.Run("rules", func(t *testing.T) {
		// The 1,000-rule configurations compile, are ACKed and still
		// decide alike.
		p, err := s.t.StartNodemeshProxy(ctx, s.cp, 1, "", nil, bin)
		if err != nil {
			t.Fatal(err)
		}
		defer p.Stop()
		for _, r := range []l7bench.RuleSet{{Extra: 1000}, {Extra: 1000, SharedPrefix: true}} {
			if err := s.cp.Apply(ctx, r); err != nil {
				t.Fatal(err)
			}
			if err := s.t.CheckPolicy(l7bench.ServiceAddr()); err != nil {
				t.Errorf("%s: %v", r, err)
			}
		}
	})
}

func runWrk(t *testing.T, topo *l7bench.Topology, addr string, l l7bench.Load) {
	t.Helper()
	r, err := topo.Wrk(context.Background(), addr, l)
	if err != nil {
		t.Fatal(err)
	}
	if err := r.Check(); err != nil {
		t.Fatal(err)
	}
	if r.P50 <= 0 || r.P99 < r.P50 {
		t.Fatalf("latencies p50 %v p99 %v: not parsed\n%s", r.P50, r.P99, r.Output)
	}
	t.Logf("%s: %.0f req/s, p50 %v, p99 %v over %d requests", addr, r.RPS, r.P50, r.P99, r.Requests)
}

// adminStats reads nodemesh-proxy's /stats on the proxy namespace's loopback.
func adminStats(t *testing.T, topo *l7bench.Topology) string {
	t.Helper()
	code, body, err := l7bench.Request(topo.Proxy, fmt.Sprintf("127.0.0.1:%d", l7bench.AdminPort), "GET", "/stats")
	if err != nil || code != 200 {
		t.Fatalf("admin /stats: %d %v", code, err)
	}
	return body
}

func grep(s, sub string) string {
	var out []string
	for _, l := range strings.Split(s, "\n") {
		if strings.Contains(l, sub) {
			out = append(out, l)
		}
	}
	return strings.Join(out, "\n")
}
