package e2e_test

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/nodemesh/nodemesh/agent"
	"github.com/nodemesh/nodemesh/tests/e2e"
	"github.com/nodemesh/nodemesh/tests/podtool"
	"github.com/nodemesh/nodemesh/tests/vcluster"
)

// seedPolicies are the seed scenario's policies (e2e.SeedPolicies).
const seedPolicies = e2e.SeedPolicies

// seedCluster: frontend and other on node-1, backend on node-2.
func seedCluster(t *testing.T) *e2e.Harness {
	t.Helper()
	vcluster.RequireCluster(t)
	opts := e2e.Options{
		Pods: []vcluster.PodConfig{
			{Name: "frontend", Node: "node-1", Labels: map[string]string{"app": "frontend"}},
			{Name: "other", Node: "node-1", Labels: map[string]string{"app": "other"}},
			{Name: "backend", Node: "node-2", Labels: map[string]string{"app": "backend"}},
		},
		Serve: []string{"--tcp", "80,81", "--udp", "80", "--rr", "9000", "--http", "8080"},
	}
	if testing.Verbose() {
		opts.Log = os.Stderr
	}
	h, err := e2e.Start(context.Background(), opts)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { h.Close() })
	if _, err := h.SetPolicies(context.Background(), seedPolicies); err != nil {
		t.Fatal(err)
	}
	return h
}

// expectReach probes from → to:port over TCP and fails the test unless the
// outcome is want.
func expectReach(t *testing.T, h *e2e.Harness, from, to string, port int, want bool) {
	t.Helper()
	src, dst := h.C.Pod("default", from), h.C.Pod("default", to)
	res, err := h.Probe(context.Background(), src, "tcp", fmt.Sprintf("%s:%d", dst.IP, port), 500*time.Millisecond)
	if err != nil {
		t.Fatal(err)
	}
	if got := res.OK || res.Reason == "refused"; got != want {
		t.Errorf("%s -> %s:%d: reached=%v, want %v (%+v)", from, to, port, got, want, res)
	}
}

func expectSeedPolicy(t *testing.T, h *e2e.Harness) {
	t.Helper()
	expectReach(t, h, "frontend", "backend", 80, true)
	expectReach(t, h, "other", "backend", 80, false)
	expectReach(t, h, "frontend", "backend", 81, false)
	expectReach(t, h, "backend", "frontend", 80, false)
	expectReach(t, h, "other", "frontend", 80, true)
}

// TestAgentKilledUnderTraffic kills both agents with SIGKILL while a
// request/response load runs over established connections, checks that
// enforcement goes on without them, restarts them, and checks that the load
// saw no error and that the restart kept every verdict.
func TestAgentKilledUnderTraffic(t *testing.T) {
	h := seedCluster(t)
	expectSeedPolicy(t, h)

	fe, be := h.C.Pod("default", "frontend"), h.C.Pod("default", "backend")
	load, err := fe.Start(context.Background(), h.Podtool, "rr", "--to", be.IP.String()+":9000", "--duration", "6s", "--conns", "4")
	if err != nil {
		t.Fatal(err)
	}
	time.Sleep(1500 * time.Millisecond)
	for _, n := range []string{"node-1", "node-2"} {
		if err := h.KillAgent(n); err != nil {
			t.Fatal(err)
		}
	}
	// No agent: the pinned programs and maps enforce the last state.
	expectSeedPolicy(t, h)
	for _, n := range []string{"node-1", "node-2"} {
		if err := h.StartAgent(context.Background(), n); err != nil {
			t.Fatal(err)
		}
	}
	expectSeedPolicy(t, h)

	if err := load.Wait(); err != nil {
		t.Fatalf("load: %v: %s", err, load.Stderr())
	}
	var rr podtool.RRResult
	if err := json.Unmarshal([]byte(strings.TrimSpace(load.Stdout())), &rr); err != nil {
		t.Fatalf("load result %q: %v", load.Stdout(), err)
	}
	if !rr.OK || rr.Errors != 0 || rr.Requests == 0 {
		t.Fatalf("established connections broke across the agent restart: %+v", rr)
	}
	t.Logf("load across the SIGKILL and restart: %d requests, %d errors, p99 %d µs", rr.Requests, rr.Errors, rr.P99us)
}

// TestPolicyChangesUnderTraffic changes policies over and over while a pod
// that every version of the policy denies keeps trying to connect: not one
// of its connections may get through, and the datapath must not have
// forwarded a single packet of it.
func TestPolicyChangesUnderTraffic(t *testing.T) {
	h := seedCluster(t)
	ctx := context.Background()
	other, be := h.C.Pod("default", "other"), h.C.Pod("default", "backend")
	done := make(chan struct{})
	attempts, through := 0, 0
	go func() {
		defer close(done)
		deadline := time.Now().Add(8 * time.Second)
		for time.Now().Before(deadline) {
			res, err := h.Probe(ctx, other, "tcp", be.IP.String()+":80", 100*time.Millisecond)
			if err != nil {
				t.Error(err)
				return
			}
			attempts++
			if res.OK || res.Reason == "refused" {
				through++
			}
		}
	}()
	variants := []string{
		seedPolicies,
		strings.Replace(seedPolicies, `{port: "9000", protocol: TCP}`, `{port: "9001", protocol: TCP}`, 1),
		seedPolicies + "---\napiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: frontend-in, namespace: default}\nspec:\n  podSelector: {matchLabels: {app: frontend}}\n  ingress: [{from: [{podSelector: {}}]}]\n",
		strings.Replace(seedPolicies, "app: frontend}}]\n    toPorts", "app: frontend}}, {matchLabels: {app: ghost}}]\n    toPorts", 1),
	}
	changes := 0
	for i := 0; ; i++ {
		select {
		case <-done:
			goto checked
		default:
		}
		if _, err := h.SetPolicies(ctx, variants[(i+1)%len(variants)]); err != nil {
			t.Fatal(err)
		}
		changes++
	}
checked:
	if attempts < 20 || changes < 10 {
		t.Fatalf("too little happened: %d attempts, %d policy changes", attempts, changes)
	}
	if through != 0 {
		t.Fatalf("%d of %d denied connections got through during %d policy changes", through, attempts, changes)
	}
	// The datapath's own record: no forwarded event from other to backend.
	c, err := agent.Dial(h.Socket("node-2"))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	var forwarded, dropped int
	err = c.Observe(ctx, &agent.ObserveRequest{Last: -1, FromPod: "default/other", ToPod: "default/backend"}, func(e *agent.FlowEvent) error {
		if e.Verdict == "forwarded" {
			forwarded++
		} else {
			dropped++
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if forwarded != 0 || dropped == 0 {
		t.Fatalf("node-2 flow events other -> backend: %d forwarded, %d dropped", forwarded, dropped)
	}
	t.Logf("%d policy changes under traffic: %d denied connection attempts, 0 through; node-2 recorded %d drops, 0 forwards", changes, attempts, dropped)
}
