package e2e_test

import (
	"context"
	"os"
	"os/exec"
	"regexp"
	"testing"
	"time"

	"github.com/nodemesh/nodemesh/tests/e2e"
	"github.com/nodemesh/nodemesh/tests/vcluster"
)

// l7Cluster starts frontend and other on node-1, a backend on each node
// (backend-near with the frontend, backend on node-2), HTTP on 80, and a
// proxy on each node.
func l7Cluster(t testing.TB) *e2e.Harness {
	t.Helper()
	vcluster.RequireCluster(t)
	opts := e2e.Options{
		Pods: []vcluster.PodConfig{
			{Name: "frontend", Node: "node-1", Labels: map[string]string{"app": "frontend"}},
			{Name: "other", Node: "node-1", Labels: map[string]string{"app": "other"}},
			{Name: "backend-near", Node: "node-1", Labels: map[string]string{"app": "backend"}},
			{Name: "backend", Node: "node-2", Labels: map[string]string{"app": "backend"}},
		},
		Serve: []string{"--http", "80,8080", "--tcp", "81"},
	}
	if testing.Verbose() {
		opts.Log = os.Stderr
	}
	h, err := e2e.Start(context.Background(), opts)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { h.Close() })
	t.Cleanup(func() {
		if t.Failed() {
			dumpNodes(t, h)
		}
	})
	for _, n := range []string{"node-1", "node-2"} {
		p, err := h.StartProxy(context.Background(), n)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() {
			if t.Failed() {
				t.Logf("proxy of %s:\n%s", n, p.Stderr())
			}
		})
	}
	return h
}

// dumpNodes logs what each agent says (status, recent flow events), for a
// failed test.
func dumpNodes(t testing.TB, h *e2e.Harness) {
	meshctl, err := e2e.MeshctlBinary()
	if err != nil {
		t.Log(err)
		return
	}
	for _, n := range []string{"node-1", "node-2"} {
		for _, args := range [][]string{{"status"}, {"observe", "--last", "40"}} {
			out, err := exec.Command(meshctl, append(args, "--socket", h.Socket(n))...).CombinedOutput()
			t.Logf("meshctl %s on %s (%v):\n%s", args[0], n, err, out)
		}
	}
}

// expectL7 sends r and checks its outcome; within wait it retries while
// the outcome is wrong (a proxy may still be starting).
func expectL7(t *testing.T, h *e2e.Harness, r e2e.L7Request, wait time.Duration) {
	t.Helper()
	deadline := time.Now().Add(wait)
	for {
		o, err := h.CheckL7(context.Background(), r)
		if err != nil {
			t.Fatal(err)
		}
		if o.OK {
			t.Logf("%s -> %s:%d %s %s: %s", r.From, r.To, r.Port, r.Method, r.Path, o)
			return
		}
		if time.Now().After(deadline) {
			t.Errorf("%s -> %s:%d %s %s: got %s %q, want %d (%s)", r.From, r.To, r.Port, r.Method, r.Path, o, o.Body, r.Want, r.Why)
			return
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// TestL7SeedScenario runs the seed scenario on the virtual cluster with the
// L7 rule as an ingress rule of the backend and as an egress rule of the
// frontend, to a backend on the same node and on another node: frontend GET
// /userdata/42 → 200 (from the frontend's own address), /userdata/abc and
// POST → 403 from the proxy, another pod → dropped, backend → frontend new
// connections dropped.
func TestL7SeedScenario(t *testing.T) {
	h := l7Cluster(t)
	for _, c := range []struct{ name, policies string }{{"ingress", e2e.SeedL7Ingress}, {"egress", e2e.SeedL7Egress}} {
		t.Run(c.name, func(t *testing.T) {
			if _, err := h.SetPolicies(context.Background(), c.policies); err != nil {
				t.Fatal(err)
			}
			for _, backend := range []string{"backend-near", "backend"} {
				t.Run(backend, func(t *testing.T) {
					for _, r := range e2e.SeedL7Requests(backend) {
						expectL7(t, h, r, 10*time.Second)
					}
					// The enforcing proxy's access log reached its agent.
					node := h.C.Pod("default", backend).Node
					if c.name == "egress" {
						node = h.C.Pod("default", "frontend").Node
					}
					expectL7Events(t, h, node, backend)
				})
			}
		})
	}
}

// TestL7ProxyKilled kills the proxy that enforces the L7 rule (the backend's
// node for the ingress rule, the frontend's for the egress rule): covered
// requests then get no answer at all, never one that bypassed the rule, and
// the datapath counts them as proxy-unavailable; a new proxy, with the agent
// left running, serves them again.
func TestL7ProxyKilled(t *testing.T) {
	h := l7Cluster(t)
	ctx := context.Background()
	for _, c := range []struct{ name, policies, node string }{
		{"ingress", e2e.SeedL7Ingress, "node-2"},
		{"egress", e2e.SeedL7Egress, "node-1"},
	} {
		t.Run(c.name, func(t *testing.T) {
			if _, err := h.SetPolicies(ctx, c.policies); err != nil {
				t.Fatal(err)
			}
			good := e2e.L7Request{From: "frontend", To: "backend", Method: "GET", Path: "/userdata/42", Port: 80, Want: 200}
			bad := good
			bad.Path, bad.Want = "/userdata/abc", 403
			expectL7(t, h, good, 10*time.Second)
			before := proxyUnavailable(t, h, c.node)
			if err := h.KillProxy(c.node); err != nil {
				t.Fatal(err)
			}
			for _, r := range []e2e.L7Request{good, bad, good} {
				r.Want = 0
				o, err := h.CheckL7(ctx, r)
				if err != nil {
					t.Fatal(err)
				}
				if !o.OK {
					t.Errorf("proxy of %s down: %s %s got %s %q, want no answer", c.node, r.Method, r.Path, o, o.Body)
				}
			}
			if after := proxyUnavailable(t, h, c.node); after <= before {
				t.Errorf("%s counted %d proxy-unavailable drops before the proxy died and %d after: want more", c.node, before, after)
			}
			if _, err := h.StartProxy(ctx, c.node); err != nil {
				t.Fatal(err)
			}
			expectL7(t, h, good, 10*time.Second)
			expectL7(t, h, bad, 2*time.Second)
		})
	}
}

// proxyUnavailable is a node's count of packets dropped as proxy-unavailable.
func proxyUnavailable(t *testing.T, h *e2e.Harness, node string) uint64 {
	t.Helper()
	st, err := h.Status(context.Background(), node)
	if err != nil {
		t.Fatal(err)
	}
	var n uint64
	for _, c := range st.Counters {
		if c.Reason == "proxy-unavailable" {
			n += c.Packets
		}
	}
	return n
}

// expectL7Events checks that meshctl observe --l7 on node shows the seed
// scenario's requests to backend with their method, path, status, verdict
// and, for the allowed one, the rule.
func expectL7Events(t *testing.T, h *e2e.Harness, node, backend string) {
	t.Helper()
	meshctl, err := e2e.MeshctlBinary()
	if err != nil {
		t.Fatal(err)
	}
	want := []*regexp.Regexp{
		regexp.MustCompile(`default/frontend:\d+ -> default/` + backend + `:80 HTTP\s+\w+\s+FORWARDED \(l7-allowed\)  GET /userdata/42 -> 200  rule CiliumNetworkPolicy default/frontend-(backend-policy spec\.ingress|userdata-only spec\.egress)\[0\] #[0-9a-f]{8}`),
		regexp.MustCompile(`default/frontend:\d+ -> default/` + backend + `:80 HTTP\s+\w+\s+DROPPED \(l7-denied\)  GET /userdata/abc -> 403`),
		regexp.MustCompile(`default/frontend:\d+ -> default/` + backend + `:80 HTTP\s+\w+\s+DROPPED \(l7-denied\)  POST /userdata/1 -> 403`),
	}
	deadline := time.Now().Add(5 * time.Second) // the proxy's log is buffered
	for {
		out, err := exec.Command(meshctl, "observe", "--socket", h.Socket(node), "--last", "-1", "--l7", "--to-pod", "default/"+backend).CombinedOutput()
		if err != nil {
			t.Fatalf("meshctl observe: %v\n%s", err, out)
		}
		var missing []string
		for _, re := range want {
			if !re.Match(out) {
				missing = append(missing, re.String())
			}
		}
		if len(missing) == 0 {
			return
		}
		if time.Now().After(deadline) {
			t.Errorf("meshctl observe --l7 on %s lacks %q:\n%s", node, missing, out)
			return
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// TestL7AgentKilled kills the agent of the node whose proxy enforces the L7
// rule: the datapath (pinned) and the proxy (its last configuration) go on
// enforcing it, allowed and denied requests alike; a restarted agent takes
// over without disturbing them.
func TestL7AgentKilled(t *testing.T) {
	h := l7Cluster(t)
	ctx := context.Background()
	if _, err := h.SetPolicies(ctx, e2e.SeedL7Ingress); err != nil {
		t.Fatal(err)
	}
	reqs := e2e.SeedL7Requests("backend")
	for _, r := range reqs {
		expectL7(t, h, r, 10*time.Second)
	}
	if err := h.KillAgent("node-2"); err != nil {
		t.Fatal(err)
	}
	for _, r := range reqs {
		expectL7(t, h, r, 0)
	}
	if err := h.StartAgent(ctx, "node-2"); err != nil {
		t.Fatal(err)
	}
	for _, r := range reqs {
		expectL7(t, h, r, 0)
	}
}
