package agent_test

import (
	"context"
	"io"
	"log/slog"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/nodemesh/nodemesh/agent"
	"github.com/nodemesh/nodemesh/agent/agenttest"
	"github.com/nodemesh/nodemesh/api"
)

const world = `apiVersion: v1
kind: List
items:
- {apiVersion: v1, kind: Namespace, metadata: {name: default}}
- {apiVersion: v1, kind: Node, metadata: {name: node-1}, status: {addresses: [{type: InternalIP, address: 192.168.10.1}]}}
- {apiVersion: v1, kind: Node, metadata: {name: node-2}, status: {addresses: [{type: InternalIP, address: 192.168.10.2}]}}
- {apiVersion: v1, kind: Pod, metadata: {name: frontend, namespace: default, labels: {app: frontend}}, spec: {nodeName: node-1}, status: {podIP: 10.0.1.10}}
- {apiVersion: v1, kind: Pod, metadata: {name: other, namespace: default, labels: {app: other}}, spec: {nodeName: node-1}, status: {podIP: 10.0.1.11}}
- {apiVersion: v1, kind: Pod, metadata: {name: backend, namespace: default, labels: {app: backend}}, spec: {nodeName: node-2}, status: {podIP: 10.0.2.10}}
`

const backendPolicy = `apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: backend, namespace: default}
spec:
  endpointSelector: {matchLabels: {app: backend}}
  ingress:
  - fromEndpoints: [{matchLabels: {app: frontend}}]
    toPorts: [{ports: [{port: "80", protocol: TCP}]}]
`

const frontendEgress = `apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: frontend-egress, namespace: default}
spec:
  endpointSelector: {matchLabels: {app: frontend}}
  egress:
  - toEndpoints: [{matchLabels: {app: backend}}]
`

func snapshot(t *testing.T, gen int, policies ...string) agent.Snapshot {
	t.Helper()
	var w api.World
	if err := api.DecodeWorld("world.yaml", []byte(world), &w); err != nil {
		t.Fatal(err)
	}
	s := agent.Snapshot{World: &w, Generation: gen}
	for _, p := range policies {
		docs, err := api.DecodePolicies("p.yaml", []byte(p))
		if err != nil {
			t.Fatal(err)
		}
		s.Policies = append(s.Policies, docs...)
	}
	return s
}

func newAgent(t *testing.T, dp *agenttest.Datapath, links *agenttest.Links) *agent.Agent {
	t.Helper()
	cfg := agent.Config{NodeName: "node-1", WorldPaths: []string{"w"}, PolicyPaths: []string{"p"},
		APISocket: filepath.Join(t.TempDir(), "agent.sock")}
	a, err := agent.New(cfg, "test", nil, dp, links, slog.New(slog.NewTextHandler(io.Discard, nil)))
	if err != nil {
		t.Fatal(err)
	}
	return a
}

func index(calls []string, prefix string) int {
	return slices.IndexFunc(calls, func(c string) bool { return strings.HasPrefix(c, prefix) })
}

func TestApplyOrderAndIncrementalUpdates(t *testing.T) {
	dp, links := agenttest.NewDatapath(), agenttest.NewLinks()
	links.Add(netip.MustParseAddr("10.0.1.10"), "veth-fe")
	links.Add(netip.MustParseAddr("10.0.1.11"), "veth-other")
	a := newAgent(t, dp, links)

	a.Apply(snapshot(t, 1, backendPolicy))
	calls := dp.TakeCalls()
	// Tables first, then the ipcache, then the endpoint entries.
	if p, c, at, e := index(calls, "SetPolicy"), index(calls, "SyncIPCache"), index(calls, "Attach"), index(calls, "SetEndpoint"); !(p >= 0 && p < c && c < at && at < e) {
		t.Fatalf("programming order wrong (want tables, ipcache, attach, endpoint): %v", calls)
	}
	if len(dp.EPs) != 2 {
		t.Fatalf("local endpoints programmed: %v (want frontend and other only: backend is on node-2)", dp.EPs)
	}

	// A policy selecting frontend: only frontend's table is swapped.
	a.Apply(snapshot(t, 2, backendPolicy, frontendEgress))
	calls = dp.TakeCalls()
	fe := dp.EPs[netip.MustParseAddr("10.0.1.10")]
	want := []string{"SetPolicy " + itoa(fe), "SyncIPCache"}
	if !slices.Equal(calls, want) {
		t.Fatalf("after adding a frontend policy: calls %v, want %v", calls, want)
	}
	if !dp.Policies[fe].Egress.Enforced {
		t.Fatal("frontend egress not enforced")
	}

	// An invalid input leaves everything as it was.
	bad := snapshot(t, 2, backendPolicy, frontendEgress)
	bad.Err = os.ErrInvalid
	a.Apply(bad)
	if calls := dp.TakeCalls(); len(calls) > 1 || (len(calls) == 1 && calls[0] != "SyncIPCache") {
		t.Fatalf("invalid input reprogrammed the datapath: %v", calls)
	}
	st, _ := a.Status(context.Background())
	if st.Healthy || st.LastError == "" {
		t.Fatalf("status after an invalid input: %+v", st)
	}

	// Removing the policy swaps frontend's table back.
	a.Apply(snapshot(t, 3, backendPolicy))
	if dp.Policies[fe].Egress.Enforced {
		t.Fatal("frontend egress still enforced after the policy was removed")
	}

	// A restarted agent keeps the endpoint IDs of the datapath.
	a2 := newAgent(t, dp, links)
	a2.Apply(snapshot(t, 1, backendPolicy))
	if dp.EPs[netip.MustParseAddr("10.0.1.10")] != fe {
		t.Fatal("endpoint ID changed across a restart")
	}
}

func TestPodWithoutInterfaceWaits(t *testing.T) {
	dp, links := agenttest.NewDatapath(), agenttest.NewLinks()
	a := newAgent(t, dp, links)
	a.Apply(snapshot(t, 1))
	if len(dp.EPs) != 0 {
		t.Fatalf("endpoint programmed without an interface: %v", dp.EPs)
	}
	eps, _ := a.Endpoints(context.Background())
	if len(eps.Endpoints) != 2 || eps.Endpoints[0].State != "waiting-for-interface" {
		t.Fatalf("endpoints: %+v", eps.Endpoints)
	}
	links.Add(netip.MustParseAddr("10.0.1.10"), "veth-fe")
	a.Apply(snapshot(t, 2, backendPolicy))
	if _, ok := dp.EPs[netip.MustParseAddr("10.0.1.10")]; !ok {
		t.Fatal("endpoint not programmed once its interface appeared")
	}
}

func TestAPI(t *testing.T) {
	dp, links := agenttest.NewDatapath(), agenttest.NewLinks()
	links.Add(netip.MustParseAddr("10.0.1.10"), "veth-fe")
	a := newAgent(t, dp, links)
	a.Apply(snapshot(t, 1, frontendEgress))
	sock := filepath.Join(t.TempDir(), "a.sock")
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go agent.Serve(ctx, sock, a)
	go dp.ReadEvents(ctx, func(e agent.FlowEvent) {})
	var c *agent.Client
	deadline := time.Now().Add(5 * time.Second)
	for {
		var err error
		if c, err = agent.Dial(sock); err == nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal(err)
		}
		time.Sleep(20 * time.Millisecond)
	}
	defer c.Close()
	st, err := c.Status(ctx)
	if err != nil || st.Node != "node-1" || st.Endpoints != 2 || st.Policies != 1 || len(st.Counters) != 1 {
		t.Fatalf("status %+v, %v", st, err)
	}
	eps, err := c.Endpoints(ctx)
	if err != nil || len(eps.Endpoints) != 2 || !eps.Endpoints[0].EgressEnforced || eps.Endpoints[0].EgressPolicies[0] != "CiliumNetworkPolicy default/frontend-egress" ||
		eps.Endpoints[0].State != "ready" || eps.Endpoints[1].State != "waiting-for-interface" {
		t.Fatalf("endpoints %+v, %v", eps, err)
	}
}

func itoa(i uint32) string { return strconv.FormatUint(uint64(i), 10) }
