package e2e

import (
	"context"
	"fmt"
	"strings"
	"time"
)

// backendNoEgress is what seed 004's prose says and its YAML lacks: the
// backend starts no connections.
const backendNoEgress = `apiVersion: nodemesh.io/v1
kind: MeshNetworkPolicy
metadata: {name: backend-no-egress, namespace: default}
spec:
  endpointSelector: {matchLabels: {app: backend}}
  egress: [{}]
`

// SeedPolicies are the seed texts' policies at L3/L4, as the demo and the
// end-to-end tests apply them: seed 004 (backend accepts frontend on TCP 80;
// 9000 too, for load tests), the egress rule seed 004's prose asks for but
// its YAML lacks, and seed 001's zero-trust policy with the endpointSelector
// it lacked.
const SeedPolicies = `apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: frontend-backend-policy, namespace: default}
spec:
  endpointSelector: {matchLabels: {app: backend}}
  ingress:
  - fromEndpoints: [{matchLabels: {app: frontend}}]
    toPorts: [{ports: [{port: "80", protocol: TCP}, {port: "9000", protocol: TCP}]}]
---
` + backendNoEgress + `---
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: zero-trust, namespace: default}
spec:
  endpointSelector: {matchLabels: {name: secret-pods}}
  egress: [{toEndpoints: [{matchLabels: {name: secret-pods}}]}]
  ingress: [{fromEndpoints: [{matchLabels: {name: secret-pods}}]}]
`

// The seed scenario's L7 rule (seed 003) on seed 004's policy, written as an
// ingress rule of the backend and, in SeedL7Egress, as an egress rule of the
// frontend; both keep seed 004's prose: the backend initiates nothing.
const SeedL7Ingress = `apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: frontend-backend-policy, namespace: default}
spec:
  endpointSelector: {matchLabels: {app: backend}}
  ingress:
  - fromEndpoints: [{matchLabels: {app: frontend}}]
    toPorts:
    - ports: [{port: "80", protocol: TCP}]
      rules:
        http: [{method: GET, path: "/userdata/[0-9]+"}]
---
` + backendNoEgress

// SeedL7Egress: see SeedL7Ingress.
const SeedL7Egress = `apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: frontend-backend-policy, namespace: default}
spec:
  endpointSelector: {matchLabels: {app: backend}}
  ingress:
  - fromEndpoints: [{matchLabels: {app: frontend}}]
    toPorts: [{ports: [{port: "80", protocol: TCP}]}]
---
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: frontend-userdata-only, namespace: default}
spec:
  endpointSelector: {matchLabels: {app: frontend}}
  egress:
  - toEndpoints: [{matchLabels: {app: backend}}]
    toPorts:
    - ports: [{port: "80", protocol: TCP}]
      rules:
        http: [{method: GET, path: "/userdata/[0-9]+"}]
---
` + backendNoEgress

// L7Request is one request of the seed scenario and what must come of it.
type L7Request struct {
	From, To     string // pods of namespace default
	Method, Path string
	Port         int
	Want         int    // the status, or 0: no connection at all (dropped)
	Why          string // what the policies say about it
}

// SeedL7Requests are the seed scenario's requests toward a backend pod.
func SeedL7Requests(backend string) []L7Request {
	return []L7Request{
		{"frontend", backend, "GET", "/userdata/42", 80, 200, "the L7 rule allows GET /userdata/[0-9]+"},
		{"frontend", backend, "GET", "/userdata/abc", 80, 403, "no L7 rule matches the path"},
		{"frontend", backend, "POST", "/userdata/1", 80, 403, "no L7 rule allows POST"},
		{"other", backend, "GET", "/userdata/42", 80, 0, "only frontend may reach backend:80 (L3)"},
		{backend, "frontend", "GET", "/", 8080, 0, "backend starts no connections (backend-no-egress)"},
	}
}

// L7Outcome is what came of a request.
type L7Outcome struct {
	OK     bool   // as wanted
	Status int    // 0: no answer
	Reason string // without an answer: why (timeout, refused, ...)
	Body   string
}

func (o L7Outcome) String() string {
	if o.Status == 0 {
		return "no answer (" + o.Reason + ")"
	}
	return fmt.Sprint(o.Status)
}

// CheckL7 sends r once and says whether the outcome is the wanted one: a 200
// must show the client's own address at the backend (the proxy keeps the
// original source), a 403 must be the proxy's RBAC denial, and a drop must be
// silence (a timeout, not a refusal or a reset).
func (h *Harness) CheckL7(ctx context.Context, r L7Request) (L7Outcome, error) {
	src, dst := h.C.Pod("default", r.From), h.C.Pod("default", r.To)
	url := fmt.Sprintf("http://%s:%d%s", dst.IP, r.Port, r.Path)
	timeout := time.Second
	if r.Want == 0 {
		timeout = 500 * time.Millisecond
	}
	res, err := h.HTTP(ctx, src, r.Method, url, timeout)
	if err != nil {
		return L7Outcome{}, err
	}
	o := L7Outcome{Status: res.Status, Reason: res.Reason, Body: res.Body}
	switch r.Want {
	case 0:
		o.OK = !res.OK && res.Reason == "timeout"
	case 200:
		o.OK = res.Status == 200 && strings.Contains(res.Body, "from="+src.IP.String()+"\n")
	case 403:
		o.OK = res.Status == 403 && strings.Contains(res.Body, "RBAC: access denied")
	default:
		o.OK = res.Status == r.Want
	}
	return o, nil
}
