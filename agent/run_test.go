package agent_test

import (
	"context"
	"io"
	"log/slog"
	"net/netip"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/nodemesh/nodemesh/agent"
	"github.com/nodemesh/nodemesh/agent/agenttest"
)

func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// TestRunStandalone runs a whole agent on a fake datapath against files:
// it follows edits, refuses invalid input while keeping the last good
// state, and serves status, endpoints and flow events.
func TestRunStandalone(t *testing.T) {
	dir := t.TempDir()
	worldFile, polDir := filepath.Join(dir, "world.yaml"), filepath.Join(dir, "policies")
	if err := os.WriteFile(worldFile, []byte(world), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Mkdir(polDir, 0o755); err != nil {
		t.Fatal(err)
	}
	write := func(name, s string) {
		if err := os.WriteFile(filepath.Join(polDir, name), []byte(s), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	dp, links := agenttest.NewDatapath(), agenttest.NewLinks()
	links.Add(netip.MustParseAddr("10.0.1.10"), "veth-fe")
	cfg := agent.Config{NodeName: "node-1", WorldPaths: []string{worldFile}, PolicyPaths: []string{polDir},
		APISocket: filepath.Join(dir, "agent.sock"), XDSSocket: filepath.Join(dir, "xds.sock"), MetricsAddr: "unix:" + filepath.Join(dir, "metrics.sock")}
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	src := &agent.StandaloneSource{WorldPaths: cfg.WorldPaths, PolicyPaths: cfg.PolicyPaths, Resync: time.Second, Log: log}
	a, err := agent.New(cfg, "test", src, dp, links, log)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error)
	go func() { done <- a.Run(ctx) }()
	defer func() {
		cancel()
		if err := <-done; err != nil {
			t.Error(err)
		}
	}()

	var c *agent.Client
	waitFor(t, "the API", func() bool {
		var err error
		c, err = agent.Dial(cfg.APISocket)
		if err != nil {
			return false
		}
		st, err := c.Status(ctx)
		return err == nil && st.Generation == 1 && st.Healthy // an empty policy directory: no policies
	})
	defer c.Close()

	write("backend.yaml", backendPolicy)
	waitFor(t, "the first policy", func() bool {
		st, err := c.Status(ctx)
		return err == nil && st.Generation == 2 && st.Policies == 1
	})

	// An edit is picked up.
	write("frontend.yaml", frontendEgress)
	waitFor(t, "the new policy", func() bool {
		eps, err := c.Endpoints(ctx)
		return err == nil && len(eps.Endpoints) > 0 && eps.Endpoints[0].EgressEnforced
	})

	// An invalid edit is refused; the state stays.
	write("broken.yaml", "apiVersion: cilium.io/v2\nkind: CiliumNetworkPolicy\nmetadata: {name: x}\nspec: {endpointSelector: {}, ingress: [{fromEntities: [nobody]}]}\n")
	waitFor(t, "the refusal", func() bool {
		st, err := c.Status(ctx)
		return err == nil && st.LastError != "" && !st.Healthy
	})
	eps, _ := c.Endpoints(ctx)
	if !eps.Endpoints[0].EgressEnforced {
		t.Fatal("an invalid input undid the last good state")
	}

	// Flow events, recorded and followed, with pod names filled in.
	dp.EventsIn <- agent.FlowEvent{Src: agent.Peer{IP: "10.0.1.10"}, Dst: agent.Peer{IP: "10.0.2.10"}, DstPort: 80, Proto: "TCP", Direction: "egress", Verdict: "dropped", Reason: "default-deny"}
	var got []*agent.FlowEvent
	waitFor(t, "the recorded event", func() bool {
		got = nil
		_ = c.Observe(ctx, &agent.ObserveRequest{Last: -1}, func(e *agent.FlowEvent) error { got = append(got, e); return nil })
		return len(got) == 1
	})
	if got[0].Src.Pod != "frontend" || got[0].Dst.Pod != "backend" || got[0].Node != "node-1" {
		t.Fatalf("event not enriched: %+v", got[0])
	}
	fctx, fcancel := context.WithCancel(ctx)
	followed := make(chan *agent.FlowEvent, 1)
	go c.Observe(fctx, &agent.ObserveRequest{Follow: true, Verdict: "forwarded"}, func(e *agent.FlowEvent) error { followed <- e; return nil })
	time.Sleep(100 * time.Millisecond)
	dp.EventsIn <- agent.FlowEvent{Src: agent.Peer{IP: "10.0.1.10"}, Dst: agent.Peer{IP: "10.0.2.10"}, DstPort: 80, Verdict: "dropped"}
	dp.EventsIn <- agent.FlowEvent{Src: agent.Peer{IP: "10.0.1.10"}, Dst: agent.Peer{IP: "10.0.2.10"}, DstPort: 81, Verdict: "forwarded"}
	select {
	case e := <-followed:
		if e.DstPort != 81 {
			t.Fatalf("filter let through %+v", e)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("followed event never arrived")
	}
	fcancel()
}
