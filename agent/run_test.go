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

// standalone is an agent on a fake datapath that reads a world file and a
// policy directory in a test's temporary directory.
type standalone struct {
	cfg    agent.Config
	dp     *agenttest.Datapath
	a      *agent.Agent
	polDir string
}

// newStandalone writes world and policies (file name → text), gives the
// pods at the addresses of veths their interfaces, and assembles the
// agent; extra, if set, changes the configuration first.
func newStandalone(t *testing.T, world string, veths map[string]string, policies map[string]string, extra func(*agent.Config)) *standalone {
	t.Helper()
	dir := t.TempDir()
	s := &standalone{dp: agenttest.NewDatapath(), polDir: filepath.Join(dir, "policies")}
	worldFile := filepath.Join(dir, "world.yaml")
	if err := os.WriteFile(worldFile, []byte(world), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Mkdir(s.polDir, 0o755); err != nil {
		t.Fatal(err)
	}
	for name, text := range policies {
		s.writePolicy(t, name, text)
	}
	links := agenttest.NewLinks()
	for addr, veth := range veths {
		links.Add(netip.MustParseAddr(addr), veth)
	}
	s.cfg = agent.Config{NodeName: "node-1", WorldPaths: []string{worldFile}, PolicyPaths: []string{s.polDir},
		APISocket: filepath.Join(dir, "agent.sock"), XDSSocket: filepath.Join(dir, "xds.sock")}
	if extra != nil {
		extra(&s.cfg)
	}
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	src := &agent.StandaloneSource{WorldPaths: s.cfg.WorldPaths, PolicyPaths: s.cfg.PolicyPaths, Resync: time.Second, Log: log}
	a, err := agent.New(s.cfg, "test", src, s.dp, links, log)
	if err != nil {
		t.Fatal(err)
	}
	s.a = a
	return s
}

func (s *standalone) writePolicy(t *testing.T, name, text string) {
	t.Helper()
	if err := os.WriteFile(filepath.Join(s.polDir, name), []byte(text), 0o644); err != nil {
		t.Fatal(err)
	}
}

// run runs the agent until the test ends (then checks it stopped cleanly)
// and returns a client of its API once it answers.
func (s *standalone) run(t *testing.T) (context.Context, *agent.Client) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error)
	go func() { done <- s.a.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Error(err)
		}
	})
	var c *agent.Client
	waitFor(t, "the API", func() bool {
		var err error
		c, err = agent.Dial(s.cfg.APISocket)
		return err == nil
	})
	t.Cleanup(func() { c.Close() })
	return ctx, c
}

// TestRunStandalone runs a whole agent on a fake datapath against files:
// it follows edits, refuses invalid input while keeping the last good
// state, and serves status, endpoints and flow events.
func TestRunStandalone(t *testing.T) {
	s := newStandalone(t, world, map[string]string{"10.0.1.10": "veth-fe"}, nil, func(c *agent.Config) {
		c.MetricsAddr = "unix:" + filepath.Join(filepath.Dir(c.APISocket), "metrics.sock")
	})
	write := func(name, text string) { s.writePolicy(t, name, text) }
	dp := s.dp
	ctx, c := s.run(t)
	waitFor(t, "the first state", func() bool {
		st, err := c.Status(ctx)
		return err == nil && st.Generation == 1 && st.Healthy // an empty policy directory: no policies
	})

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
