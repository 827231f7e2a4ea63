package main

import (
	"bytes"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// Size of the generated benchmark cluster.
const (
	benchNamespaces  = 20
	benchPodsPerNS   = 50 // 1,000 pods
	benchNodes       = 10
	benchPolicyPerNS = 25 // 500 policies
	benchFlows       = 100_000
)

var (
	benchTiers = []string{"frontend", "backend", "db"}
	benchTeams = []string{"payments", "search", "identity", "ads", "infra"}
)

func benchPodIP(ns, i int) string { return fmt.Sprintf("10.%d.%d.%d", 100+ns, i/200, i%200+1) }

// genBenchWorld writes namespaces, nodes and pods as a v1 List.
func genBenchWorld(w io.Writer) {
	fmt.Fprintln(w, "apiVersion: v1\nkind: List\nitems:")
	for ns := range benchNamespaces {
		env := "prod"
		if ns%2 == 1 {
			env = "staging"
		}
		fmt.Fprintf(w, "- apiVersion: v1\n  kind: Namespace\n  metadata:\n    name: ns-%02d\n    labels: {team: %s, env: %s}\n", ns, benchTeams[ns%len(benchTeams)], env)
	}
	for n := range benchNodes {
		fmt.Fprintf(w, "- apiVersion: v1\n  kind: Node\n  metadata: {name: node-%d}\n  status:\n    addresses: [{type: InternalIP, address: 10.0.0.%d}]\n", n, n+1)
	}
	for ns := range benchNamespaces {
		for i := range benchPodsPerNS {
			fmt.Fprintf(w, `- apiVersion: v1
  kind: Pod
  metadata:
    name: pod-%02d
    namespace: ns-%02d
    labels: {app: app-%d, tier: %s, version: v%d, pod-template-hash: h%d}
  spec:
    nodeName: node-%d
    serviceAccountName: sa-%d
    containers:
    - name: main
      ports:
      - {name: http, containerPort: 8080}
      - {name: metrics, containerPort: 9090}
      - {name: dns, containerPort: 53, protocol: UDP}
  status:
    podIP: %s
`, i, ns, i%10, benchTiers[i%3], i%2, i, (ns*benchPodsPerNS+i)%benchNodes, i%4, benchPodIP(ns, i))
		}
	}
}

// genBenchPolicies writes one multi-document file per namespace: a mix of
// NetworkPolicies (pod and namespace selectors, ports, ranges, named ports,
// ipBlocks) and CiliumNetworkPolicies (endpoint selectors, CIDRs, entities,
// deny rules, L7 HTTP rules, authentication).
func genBenchPolicies(dir string) error {
	for ns := range benchNamespaces {
		var b strings.Builder
		for k := range benchPolicyPerNS {
			if k > 0 {
				b.WriteString("---\n")
			}
			app := fmt.Sprintf("app-%d", k%10)
			other := (ns + 1 + k) % benchNamespaces
			switch k % 5 {
			case 0: // NetworkPolicy, ingress: pods, namespaces, ports, a range, a named port
				fmt.Fprintf(&b, `apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: pol-%02d, namespace: ns-%02d}
spec:
  podSelector:
    matchLabels: {app: %s}
  policyTypes: [Ingress]
  ingress:
  - from:
    - podSelector:
        matchLabels: {tier: frontend}
    - namespaceSelector:
        matchLabels: {team: %s}
    ports:
    - {protocol: TCP, port: 80}
    - {protocol: TCP, port: http}
    - {protocol: TCP, port: 9000, endPort: 9100}
  - from:
    - ipBlock: {cidr: 203.0.113.0/24, except: [203.0.113.128/25]}
    ports:
    - {protocol: TCP, port: 443}
`, k, ns, app, benchTeams[k%len(benchTeams)])
			case 1: // NetworkPolicy, egress: namespace expressions, UDP, an ipBlock with except
				fmt.Fprintf(&b, `apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: pol-%02d, namespace: ns-%02d}
spec:
  podSelector:
    matchLabels: {app: %s, tier: frontend}
  policyTypes: [Egress]
  egress:
  - to:
    - namespaceSelector:
        matchExpressions:
        - {key: env, operator: In, values: [prod]}
      podSelector:
        matchExpressions:
        - {key: tier, operator: NotIn, values: [db]}
    ports:
    - {protocol: TCP, port: 80}
    - {protocol: TCP, port: 8080}
  - ports:
    - {protocol: UDP, port: 53}
  - to:
    - ipBlock: {cidr: 10.0.0.0/8, except: [10.%d.0.0/16]}
    ports:
    - {protocol: TCP, port: 443}
`, k, ns, app, 100+ns)
			case 2: // CiliumNetworkPolicy, ingress with L7 HTTP rules
				fmt.Fprintf(&b, `apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: pol-%02d, namespace: ns-%02d}
spec:
  endpointSelector:
    matchLabels: {app: %s}
  ingress:
  - fromEndpoints:
    - matchLabels: {tier: frontend}
    - matchLabels: {k8s:io.kubernetes.pod.namespace: ns-%02d}
    toPorts:
    - ports: [{port: "8080", protocol: TCP}]
      rules:
        http:
        - {method: GET, path: "/api/v[0-9]+/items/.*"}
        - {method: POST, path: /api/v1/orders, headers: [X-Team]}
  - fromEntities: [host, remote-node]
    toPorts:
    - ports: [{port: "9090", protocol: TCP}]
`, k, ns, app, other)
			case 3: // CiliumNetworkPolicy, egress: endpoints, CIDRs, entities, a deny rule
				fmt.Fprintf(&b, `apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: pol-%02d, namespace: ns-%02d}
spec:
  endpointSelector:
    matchLabels: {app: %s, tier: backend}
  egress:
  - toEndpoints:
    - matchLabels: {tier: db}
    toPorts:
    - ports: [{port: "5432", protocol: TCP}]
  - toCIDR: [192.168.0.0/16]
  - toCIDRSet:
    - {cidr: 0.0.0.0/0, except: [10.0.0.0/8]}
    toPorts:
    - ports: [{port: "443", protocol: TCP}]
  - toEntities: [kube-apiserver, cluster]
    toPorts:
    - ports: [{port: "53", protocol: UDP}, {port: "80", protocol: TCP}]
  egressDeny:
  - toEndpoints:
    - matchLabels: {k8s:io.kubernetes.pod.namespace: ns-%02d}
    toPorts:
    - ports: [{port: "80", protocol: TCP}]
`, k, ns, app, other)
			case 4: // CiliumNetworkPolicy, ingress with authentication and a deny rule
				fmt.Fprintf(&b, `apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: pol-%02d, namespace: ns-%02d}
spec:
  endpointSelector:
    matchLabels: {tier: db, version: v%d}
  ingress:
  - fromEndpoints:
    - matchLabels: {tier: backend}
    toPorts:
    - ports: [{port: "5432", protocol: TCP}]
    authentication: {mode: required}
  ingressDeny:
  - fromEndpoints:
    - matchLabels: {k8s:io.cilium.k8s.namespace.labels.env: staging, k8s:io.kubernetes.pod.namespace: ns-%02d}
`, k, ns, k%2, other)
			}
		}
		if err := os.WriteFile(filepath.Join(dir, fmt.Sprintf("ns-%02d.yaml", ns)), []byte(b.String()), 0o644); err != nil {
			return err
		}
	}
	return nil
}

// genBenchFlows writes n flows as JSON Lines.
func genBenchFlows(w io.Writer, n int) {
	r := rand.New(rand.NewPCG(1, 2))
	pod := func() string {
		return fmt.Sprintf("ns-%02d/pod-%02d", r.IntN(benchNamespaces), r.IntN(benchPodsPerNS))
	}
	for range n {
		from, to := pod(), pod()
		if r.IntN(2) == 0 { // most traffic stays within a namespace
			to = from[:len("ns-00/")] + to[len("ns-00/"):]
		}
		switch x := r.IntN(100); {
		case x < 4:
			from = fmt.Sprintf("203.0.113.%d", r.IntN(256))
		case x < 6:
			from = fmt.Sprintf("node:node-%d", r.IntN(benchNodes))
		case x < 9:
			to = benchPodIP(r.IntN(benchNamespaces), r.IntN(benchPodsPerNS))
		}
		switch x := r.IntN(100); {
		case x < 30:
			fmt.Fprintf(w, `{"from":%q,"to":%q,"port":80}`+"\n", from, to)
		case x < 40:
			fmt.Fprintf(w, `{"from":%q,"to":%q,"port":8080,"protocol":"TCP","http":{"method":"GET","path":"/api/v%d/items/%d"}}`+"\n", from, to, r.IntN(3), r.IntN(1000))
		case x < 45:
			fmt.Fprintf(w, `{"from":%q,"to":%q,"port":8080,"http":{"method":"DELETE","path":"/api/v1/items/%d"}}`+"\n", from, to, r.IntN(1000))
		case x < 55:
			fmt.Fprintf(w, `{"from":%q,"to":%q,"port":"http","http":{"method":"POST","path":"/api/v1/orders","headers":{"x-team":"a"}}}`+"\n", from, to)
		case x < 65:
			fmt.Fprintf(w, `{"from":%q,"to":%q,"port":5432}`+"\n", from, to)
		case x < 75:
			fmt.Fprintf(w, `{"from":%q,"to":%q,"port":53,"protocol":"UDP"}`+"\n", from, to)
		case x < 85:
			fmt.Fprintf(w, `{"from":%q,"to":%q,"port":443}`+"\n", from, to)
		case x < 95:
			fmt.Fprintf(w, `{"from":%q,"to":%q,"port":%d}`+"\n", from, to, 9000+r.IntN(200))
		default:
			fmt.Fprintf(w, `{"from":%q,"to":%q,"port":"metrics"}`+"\n", from, to)
		}
	}
}

// genBench writes the world, policies and flows into dir.
func genBench(tb testing.TB, dir string, flows int) (world, policies, flowsFile string) {
	tb.Helper()
	world = filepath.Join(dir, "world.yaml")
	policies = filepath.Join(dir, "policies")
	flowsFile = filepath.Join(dir, "flows.jsonl")
	var wb bytes.Buffer
	genBenchWorld(&wb)
	if err := os.WriteFile(world, wb.Bytes(), 0o644); err != nil {
		tb.Fatal(err)
	}
	if err := os.Mkdir(policies, 0o755); err != nil {
		tb.Fatal(err)
	}
	if err := genBenchPolicies(policies); err != nil {
		tb.Fatal(err)
	}
	var fb bytes.Buffer
	genBenchFlows(&fb, flows)
	if err := os.WriteFile(flowsFile, fb.Bytes(), 0o644); err != nil {
		tb.Fatal(err)
	}
	return world, policies, flowsFile
}

// TestBenchFixture checks the generated benchmark input on a few flows, so
// that the benchmark measures real work, not an early error.
func TestBenchFixture(t *testing.T) {
	world, policies, flows := genBench(t, t.TempDir(), 2000)
	var out, errb bytes.Buffer
	// The reference evaluator, to keep the test quick; the benchmark runs both.
	code := run([]string{"policy", "check", "--world", world, "--policy", policies, "--flows", flows, "-o", "jsonl", "--reference"}, nil, &out, &errb)
	if code != 0 {
		t.Fatalf("exit %d: %s", code, errb.String())
	}
	lines := strings.Count(out.String(), "\n")
	if lines != 2000 {
		t.Fatalf("%d lines of output, want 2000", lines)
	}
	// The mix must exercise both verdicts and the interesting reasons.
	for _, want := range []string{`"verdict":"allowed"`, `"verdict":"denied"`, `"reason":"default-deny"`, `"reason":"allowed-by-rule"`,
		`"reason":"l7-denied"`, `"reason":"denied-by-rule"`, `"reason":"outside-cluster"`, `"authRequired":true`} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("no result has %s", want)
		}
	}
}

// BenchmarkPolicyCheck100kFlows runs the whole command — load 1,000 pods and
// 500 policies, build the checker, read 100,000 flows, check them, write JSON
// Lines — as users run it, with the default (compiled) checker and with
// --reference.
func BenchmarkPolicyCheck100kFlows(b *testing.B) {
	world, policies, flows := genBench(b, b.TempDir(), benchFlows)
	for _, bc := range []struct {
		name  string
		extra []string
	}{
		{"compiled", nil},
		{"reference", []string{"--reference"}},
	} {
		b.Run(bc.name, func(b *testing.B) {
			args := append([]string{"policy", "check", "--world", world, "--policy", policies, "--flows", flows, "-o", "jsonl"}, bc.extra...)
			var errb bytes.Buffer
			b.ReportAllocs()
			start := time.Now()
			for b.Loop() {
				errb.Reset()
				if code := run(args, nil, io.Discard, &errb); code != 0 {
					b.Fatalf("exit %d: %s", code, errb.String())
				}
			}
			elapsed := time.Since(start)
			b.ReportMetric(float64(benchFlows)*float64(b.N)/elapsed.Seconds(), "flows/s")
		})
	}
}
