package policytest

import (
	"fmt"
	"math/rand/v2"
	"strings"

	"github.com/nodemesh/nodemesh/api"
	"github.com/nodemesh/nodemesh/policy"
)

// Scale builds a cluster-sized world and policy set for benchmarks:
// pods spread over 20 namespaces and 50 applications (so identities are
// shared, as in real clusters), and policies that each select one
// application and allow a few others, by pod and namespace selectors,
// ports, CIDRs and, for one in ten, an HTTP rule.
func Scale(pods, policies int, seed uint64) (*api.World, []byte) {
	r := rand.New(rand.NewPCG(seed, 1))
	w := &api.World{}
	const namespaces, apps = 20, 50
	for n := range namespaces {
		w.Namespaces = append(w.Namespaces, api.Namespace{Metadata: api.ObjectMeta{Name: fmt.Sprintf("ns%d", n),
			Labels: map[string]string{"team": fmt.Sprintf("team%d", n%5), "env": []string{"prod", "dev"}[n%2]}}})
	}
	for n := range 4 {
		w.Nodes = append(w.Nodes, api.Node{Metadata: api.ObjectMeta{Name: fmt.Sprintf("node-%d", n)},
			Status: api.NodeStatus{Addresses: []api.NodeAddress{{Type: "InternalIP", Address: fmt.Sprintf("192.168.0.%d", n+1)}}}})
	}
	for i := range pods {
		app := r.IntN(apps)
		w.Pods = append(w.Pods, api.Pod{
			Metadata: api.ObjectMeta{Name: fmt.Sprintf("app%d-%d", app, i), Namespace: fmt.Sprintf("ns%d", app%namespaces),
				Labels: map[string]string{"app": fmt.Sprintf("app%d", app), "tier": []string{"web", "api", "db"}[app%3], "version": fmt.Sprintf("v%d", r.IntN(3)), "pod-template-hash": fmt.Sprintf("%x", i)}},
			Spec: api.PodSpec{NodeName: fmt.Sprintf("node-%d", i%4), Containers: []api.Container{{Name: "c", Ports: []api.ContainerPort{
				{Name: "http", ContainerPort: 8080}, {Name: "metrics", ContainerPort: 9090}}}}},
			Status: api.PodStatus{PodIP: fmt.Sprintf("10.%d.%d.%d", 1+i/65536, (i/256)%256, i%256)},
		})
	}
	var b strings.Builder
	for i := range policies {
		app := r.IntN(apps)
		ns := fmt.Sprintf("ns%d", app%namespaces)
		from := []int{r.IntN(apps), r.IntN(apps), r.IntN(apps)}
		if i%2 == 0 {
			fmt.Fprintf(&b, `---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: np%d, namespace: %s}
spec:
  podSelector: {matchLabels: {app: app%d}}
  policyTypes: [Ingress, Egress]
  ingress:
  - from:
    - podSelector: {matchLabels: {app: app%d}}
    - namespaceSelector: {matchLabels: {team: team%d}}
      podSelector: {matchExpressions: [{key: app, operator: In, values: [app%d, app%d]}]}
    ports: [{port: 8080}, {port: http}, {protocol: UDP, port: 53}]
  egress:
  - to: [{namespaceSelector: {}, podSelector: {matchLabels: {tier: db}}}]
    ports: [{port: 5432}, {port: 9000, endPort: 9100}]
  - to: [{ipBlock: {cidr: 172.%d.0.0/16, except: [172.%d.1.0/24]}}]
`, i, ns, app, from[0], r.IntN(5), from[1], from[2], i%32, i%32)
			continue
		}
		l7 := ""
		if i%10 == 1 {
			l7 = fmt.Sprintf("\n      rules:\n        http:\n        - {method: GET, path: \"/api/v%d/[0-9]+\"}\n        - {method: POST, path: /submit}", i%3)
		}
		fmt.Fprintf(&b, `---
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: cnp%d, namespace: %s}
spec:
  endpointSelector: {matchLabels: {app: app%d}}
  ingress:
  - fromEndpoints:
    - matchLabels: {app: app%d}
    - matchLabels: {app: app%d, k8s:io.kubernetes.pod.namespace: ns%d}
    toPorts:
    - ports: [{port: "8080", protocol: TCP}]%s
  - fromEntities: [host, remote-node]
  egress:
  - toEndpoints: [{matchLabels: {tier: api}}]
    toPorts: [{ports: [{port: "8080", protocol: TCP}]}]
  - toCIDRSet: [{cidr: 203.0.%d.0/24}]
  egressDeny:
  - toEntities: [world]
    toPorts: [{ports: [{port: "25", protocol: TCP}]}]
`, i, ns, app, from[0], from[1], from[1]%namespaces, l7, i%200)
	}
	return w, []byte(b.String())
}

// ScaleFlows returns n random flows between the world's pods, with a few to
// outside addresses, on ports its policies use.
func ScaleFlows(w *api.World, n int, seed uint64) []policy.Flow {
	r := rand.New(rand.NewPCG(seed, 2))
	ports := []uint16{8080, 9090, 5432, 9050, 53, 25, 443}
	out := make([]policy.Flow, 0, n)
	for range n {
		a, b := w.Pods[r.IntN(len(w.Pods))], w.Pods[r.IntN(len(w.Pods))]
		f := policy.Flow{From: a.Metadata.Namespace + "/" + a.Metadata.Name, To: b.Metadata.Namespace + "/" + b.Metadata.Name,
			Proto: policy.ProtoTCP, Port: ports[r.IntN(len(ports))]}
		if r.IntN(20) == 0 {
			f.To = fmt.Sprintf("203.0.%d.9", r.IntN(256))
		}
		if f.Port == 53 {
			f.Proto = policy.ProtoUDP
		}
		out = append(out, f)
	}
	return out
}
