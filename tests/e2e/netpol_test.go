package e2e_test

import (
	"context"
	"encoding/json"
	"fmt"
	"net/netip"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nodemesh/nodemesh/api"
	"github.com/nodemesh/nodemesh/policy"
	"github.com/nodemesh/nodemesh/policy/policytest"
	"github.com/nodemesh/nodemesh/tests/e2e"
	"github.com/nodemesh/nodemesh/tests/vcluster"
)

func TestMain(m *testing.M) {
	code := vcluster.RunTests(m)
	e2e.RemoveBinaries()
	os.Exit(code)
}

// netpolCluster is the netpol scenarios' world on 2 nodes: namespace x on
// node-1, y and z on node-2, at the addresses the scenarios' ipBlocks name.
func netpolCluster(t *testing.T, scenarios []*policytest.Scenario) *e2e.Harness {
	t.Helper()
	vcluster.RequireCluster(t)
	base := scenarios[0].BuildWorld()
	opts := e2e.Options{Cluster: vcluster.Config{
		Nodes: []vcluster.NodeConfig{
			{Name: "node-1", PodCIDR: "10.244.0.0/23", IP: "192.168.10.1"},
			{Name: "node-2", PodCIDR: "10.244.2.0/23", IP: "192.168.10.2"},
		},
		NamespaceLabels: map[string]map[string]string{},
	}}
	if testing.Verbose() {
		opts.Log = os.Stderr
	}
	for _, ns := range base.Namespaces {
		opts.Cluster.NamespaceLabels[ns.Metadata.Name] = ns.Metadata.Labels
	}
	for _, p := range base.Pods {
		node := "node-2"
		if p.Metadata.Namespace == "x" {
			node = "node-1"
		}
		pc := vcluster.PodConfig{Namespace: p.Metadata.Namespace, Name: p.Metadata.Name, Node: node,
			IP: netip.MustParseAddr(p.Status.PodIP), Labels: p.Metadata.Labels}
		for _, c := range p.Spec.Containers {
			for _, cp := range c.Ports {
				pc.Ports = append(pc.Ports, vcluster.Port{Name: cp.Name, Port: uint16(cp.ContainerPort), Protocol: cp.Protocol})
			}
		}
		opts.Pods = append(opts.Pods, pc)
	}
	h, err := e2e.Start(context.Background(), opts)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { h.Close() })
	return h
}

// worldFor is a scenario's world with the cluster's nodes and placement.
func worldFor(t *testing.T, h *e2e.Harness, s *policytest.Scenario) []byte {
	t.Helper()
	w := s.BuildWorld()
	var items []any
	for _, ns := range w.Namespaces {
		ns.APIVersion, ns.Kind = "v1", "Namespace"
		items = append(items, ns)
	}
	for _, n := range h.C.Nodes() {
		items = append(items, api.Node{TypeMeta: api.TypeMeta{APIVersion: "v1", Kind: "Node"}, Metadata: api.ObjectMeta{Name: n.Name},
			Spec:   api.NodeSpec{PodCIDR: n.PodCIDR.String(), PodCIDRs: []string{n.PodCIDR.String()}},
			Status: api.NodeStatus{Addresses: []api.NodeAddress{{Type: "InternalIP", Address: n.IP.String()}}}})
	}
	for _, p := range w.Pods {
		p.APIVersion, p.Kind = "v1", "Pod"
		p.Spec.NodeName = h.C.Pod(p.Metadata.Namespace, p.Metadata.Name).Node
		items = append(items, p)
	}
	b, err := json.Marshal(map[string]any{"apiVersion": "v1", "kind": "List", "items": items})
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// observed probes every pair of pods concurrently. A probe that times out
// where want says allowed is tried once more (and logged), so that a loaded
// machine's lost SYN is not mistaken for a drop; a real drop drops both.
func observed(ctx context.Context, t *testing.T, h *e2e.Harness, pods []string, proto string, port uint16, want *policy.Matrix) *policy.Matrix {
	m := policy.NewMatrix(pods, policy.Denied)
	var wg sync.WaitGroup
	var mu sync.Mutex
	for _, from := range pods {
		for _, to := range pods {
			if from == to {
				m.Set(from, to, policy.Allowed) // a pod reaching itself never crosses the datapath
				continue
			}
			wg.Add(1)
			go func() {
				defer wg.Done()
				fns, fname, _ := strings.Cut(from, "/")
				tns, tname, _ := strings.Cut(to, "/")
				src, dst := h.C.Pod(fns, fname), h.C.Pod(tns, tname)
				addr := fmt.Sprintf("%s:%d", dst.IP, port)
				res, err := h.Probe(ctx, src, strings.ToLower(proto), addr, 500*time.Millisecond)
				if err == nil && !res.OK && res.Reason != "refused" && want.Get(from, to) == policy.Allowed {
					t.Logf("%s -> %s %s/%d: %s; trying once more", from, to, proto, port, res.Reason)
					res, err = h.Probe(ctx, src, strings.ToLower(proto), addr, time.Second)
				}
				if err != nil {
					t.Error(err)
					return
				}
				v := policy.Denied
				if res.OK || res.Reason == "refused" {
					v = policy.Allowed
				}
				mu.Lock()
				m.Set(from, to, v)
				mu.Unlock()
			}()
		}
	}
	wg.Wait()
	return m
}

// TestNetpolScenariosOnDatapath runs the Kubernetes NetworkPolicy e2e
// scenarios over real TCP and UDP traffic between pods on two nodes, and
// compares the observed reachability with the reference evaluator's.
func TestNetpolScenariosOnDatapath(t *testing.T) {
	scenarios, err := policytest.Load("../../policy/testdata/netpol")
	if err != nil {
		t.Fatal(err)
	}
	h := netpolCluster(t, scenarios)
	ctx := context.Background()
	cells, checked := 0, 0
	for _, s := range scenarios {
		var cases []policytest.MatrixCase
		for _, mc := range s.Matrix {
			if mc.Protocol == "TCP" || mc.Protocol == "UDP" { // SCTP: the podtool probe needs the kernel's SCTP module
				cases = append(cases, mc)
			}
		}
		if len(cases) == 0 {
			continue
		}
		t.Run(s.Name, func(t *testing.T) {
			if _, err := h.SetWorld(ctx, worldFor(t, h, s)); err != nil {
				t.Fatal(err)
			}
			if _, err := h.SetPolicies(ctx, s.Policies); err != nil {
				t.Fatal(err)
			}
			w := s.BuildWorld()
			docs, err := s.PolicyDocs()
			if err != nil {
				t.Fatal(err)
			}
			ref := policy.NewEvaluator(policy.NewWorld(w), policy.FromDocuments(docs))
			pods := policytest.Pods(w)
			for _, mc := range cases {
				proto, _ := policy.ParseProto(mc.Protocol)
				want, err := policytest.ObservedMatrix(ref, pods, proto, mc.Port)
				if err != nil {
					t.Fatal(err)
				}
				got := observed(ctx, t, h, pods, mc.Protocol, mc.Port, want)
				cells += len(pods) * len(pods)
				if d := want.Diff(got); len(d) > 0 {
					t.Errorf("%s/%d: datapath differs from the reference evaluator in %d cells:\n%s\nreference:\n%s\ndatapath:\n%s",
						mc.Protocol, mc.Port, len(d), strings.Join(d, "\n"), want, got)
				}
			}
			checked++
		})
	}
	t.Logf("%d scenarios, %d cells probed over real traffic", checked, cells)
}
