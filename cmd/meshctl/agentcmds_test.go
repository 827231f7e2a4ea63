package main

import (
	"bytes"
	"context"
	"io"
	"log/slog"
	"net/netip"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/nodemesh/nodemesh/agent"
	"github.com/nodemesh/nodemesh/agent/agenttest"
	"github.com/nodemesh/nodemesh/api"
)

// startFakeAgent serves an agent on a fake datapath and returns its socket.
func startFakeAgent(t *testing.T) string {
	t.Helper()
	dp, links := agenttest.NewDatapath(), agenttest.NewLinks()
	links.Add(netip.MustParseAddr("10.0.1.10"), "veth-fe")
	sock := filepath.Join(t.TempDir(), "agent.sock")
	cfg := agent.Config{NodeName: "node-1", WorldPaths: []string{"w"}, PolicyPaths: []string{"p"}, APISocket: sock}
	a, err := agent.New(cfg, "test", nil, dp, links, slog.New(slog.NewTextHandler(io.Discard, nil)))
	if err != nil {
		t.Fatal(err)
	}
	world, err := api.LoadWorld("../../examples/world.yaml")
	if err != nil {
		t.Fatal(err)
	}
	docs, err := api.LoadPolicies("../../examples/policies")
	if err != nil {
		t.Fatal(err)
	}
	a.Apply(agent.Snapshot{World: world, Policies: docs, Generation: 1})
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	go agent.Serve(ctx, sock, a)
	go dp.ReadEvents(ctx, func(agent.FlowEvent) {})
	deadline := time.Now().Add(5 * time.Second)
	for {
		if c, err := agent.Dial(sock); err == nil {
			if _, err := c.Status(ctx); err == nil {
				c.Close()
				return sock
			}
			c.Close()
		}
		if time.Now().After(deadline) {
			t.Fatal("fake agent did not come up")
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func TestAgentCommands(t *testing.T) {
	sock := startFakeAgent(t)
	tests := []struct {
		name     string
		args     []string
		wantCode int
		want     []string
	}{
		{"status", []string{"status", "--socket", sock}, 0, []string{"Node:        node-1", "Enforcing:   3 policies", "endpoints", "default-deny"}},
		{"status json", []string{"status", "--socket", sock, "-o", "json"}, 0, []string{`"node": "node-1"`, `"generation": 1`}},
		{"endpoints", []string{"endpoints", "--socket", sock}, 0, []string{"default/frontend", "10.0.1.10", "veth-fe", "ready", "default/other", "waiting-for-interface"}},
		{"observe nothing yet", []string{"observe", "--socket", sock}, 0, nil},
		{"bad verdict", []string{"observe", "--socket", sock, "--verdict", "maybe"}, 2, []string{"--verdict \"maybe\""}},
		{"no agent", []string{"status", "--socket", filepath.Join(t.TempDir(), "none.sock")}, 2, []string{"is the agent running on this node?"}},
		{"bad output", []string{"endpoints", "--socket", sock, "-o", "yaml"}, 2, []string{"--output \"yaml\""}},
		{"envoy config", []string{"envoy", "config", "--socket", sock}, 0, []string{`"configs"`, "ListenersConfigDump"}},
		{"envoy config yaml", []string{"envoy", "config", "--socket", sock, "--type", "clusters", "-o", "yaml"}, 0, []string{"configs:"}},
		{"envoy config bad type", []string{"envoy", "config", "--socket", sock, "--type", "pods"}, 2, []string{"--type \"pods\""}},
		{"envoy bootstrap", []string{"envoy", "bootstrap", "--node", "node-7"}, 0, []string{`"node-7"`, "/run/nodemesh/node-7/xds.sock", "ads"}},
		{"envoy bootstrap needs a node", []string{"envoy", "bootstrap"}, 2, []string{"--node is required"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var out, errb bytes.Buffer
			code := run(tt.args, nil, &out, &errb)
			if code != tt.wantCode {
				t.Fatalf("exit %d, want %d; stderr: %s", code, tt.wantCode, errb.String())
			}
			all := out.String() + errb.String()
			for _, w := range tt.want {
				if !strings.Contains(all, w) {
					t.Errorf("output lacks %q:\n%s", w, all)
				}
			}
		})
	}
}
