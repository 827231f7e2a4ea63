package main

import (
	"bytes"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// The test world: two namespaces, two nodes, six pods.
const testWorld = `apiVersion: v1
kind: List
items:
- apiVersion: v1
  kind: Namespace
  metadata: {name: default, labels: {team: core}}
- apiVersion: v1
  kind: Namespace
  metadata: {name: other}
- apiVersion: v1
  kind: Node
  metadata: {name: node-1}
  status:
    addresses: [{type: InternalIP, address: 10.0.0.1}]
- apiVersion: v1
  kind: Node
  metadata: {name: node-2}
  status:
    addresses: [{type: InternalIP, address: 10.0.0.2}]
- apiVersion: v1
  kind: Pod
  metadata: {name: frontend, namespace: default, labels: {app: frontend}}
  spec: {nodeName: node-1}
  status: {podIP: 10.1.0.10}
- apiVersion: v1
  kind: Pod
  metadata: {name: backend, namespace: default, labels: {app: backend}}
  spec:
    nodeName: node-1
    containers:
    - name: app
      ports:
      - {name: http, containerPort: 8080}
  status: {podIP: 10.1.0.11}
- apiVersion: v1
  kind: Pod
  metadata: {name: db, namespace: default, labels: {app: db}}
  spec: {nodeName: node-1}
  status: {podIP: 10.1.0.12}
- apiVersion: v1
  kind: Pod
  metadata: {name: open, namespace: default, labels: {app: open}}
  spec: {nodeName: node-2}
  status: {podIP: 10.1.0.13}
- apiVersion: v1
  kind: Pod
  metadata: {name: client, namespace: other, labels: {app: client}}
  spec: {nodeName: node-2}
  status: {podIP: 10.2.0.10}
- apiVersion: v1
  kind: Pod
  metadata: {name: blocked, namespace: other, labels: {app: blocked}}
  spec: {nodeName: node-2}
  status: {podIP: 10.2.0.11}
`

// Cilium policies: plain and L7 allow rules, a deny rule, authentication,
// and default deny turned off.
const testCiliumPolicies = `apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata:
  name: frontend-backend-policy
  namespace: default
spec:
  endpointSelector:
    matchLabels: {app: backend}
  ingress:
  - fromEndpoints:
    - matchLabels: {app: frontend}
    toPorts:
    - ports: [{port: "80", protocol: TCP}]
  - fromEndpoints:
    - matchLabels: {app: frontend}
    toPorts:
    - ports: [{port: "8080", protocol: TCP}]
      rules:
        http:
        - method: GET
          path: /userdata/[0-9]+
  ingressDeny:
  - fromEndpoints:
    - matchLabels: {k8s:io.kubernetes.pod.namespace: other, app: blocked}
---
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata:
  name: db-auth
  namespace: default
spec:
  endpointSelector:
    matchLabels: {app: db}
  ingress:
  - fromEndpoints:
    - matchLabels: {app: backend}
    toPorts:
    - ports: [{port: "5432", protocol: TCP}]
    authentication:
      mode: required
---
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata:
  name: open-policy
  namespace: default
spec:
  endpointSelector:
    matchLabels: {app: open}
  enableDefaultDeny:
    ingress: false
  ingress:
  - fromEndpoints:
    - matchLabels: {app: frontend}
    toPorts:
    - ports: [{port: "9999", protocol: TCP}]
`

// A NetworkPolicy isolating other/client for egress.
const testNetworkPolicies = `apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata:
  name: client-egress
  namespace: other
spec:
  podSelector:
    matchLabels: {app: client}
  policyTypes: [Egress]
  egress:
  - to:
    - ipBlock: {cidr: 10.1.0.0/16}
    ports:
    - port: 80
`

// fixture writes the test world and policies into a temporary directory and
// returns the flags that load them. Paths are relative to dir, and the test
// runs in dir, so that messages name short paths.
func fixture(t *testing.T) (dir string, base []string) {
	t.Helper()
	dir = t.TempDir()
	write(t, dir, "world.yaml", testWorld)
	write(t, dir, "policies/cilium.yaml", testCiliumPolicies)
	write(t, dir, "policies/netpol.yaml", testNetworkPolicies)
	t.Chdir(dir)
	return dir, []string{"policy", "check", "--world", "world.yaml", "--policy", "policies"}
}

func write(t *testing.T, dir, name, content string) {
	t.Helper()
	p := filepath.Join(dir, name)
	if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(p, []byte(content), 0o644); err != nil {
		t.Fatal(err)
	}
}

// runMeshctl runs meshctl in-process.
func runMeshctl(stdin string, args ...string) (code int, stdout, stderr string) {
	var out, errb bytes.Buffer
	code = run(args, strings.NewReader(stdin), &out, &errb)
	return code, out.String(), errb.String()
}

func args(base []string, more ...string) []string {
	return append(append([]string{}, base...), more...)
}

func wantAll(t *testing.T, what, got string, want []string) {
	t.Helper()
	for _, w := range want {
		if !strings.Contains(got, w) {
			t.Errorf("%s lacks %q; got:\n%s", what, w, got)
		}
	}
}

// TestCheckText covers the text explanation of every reason code.
func TestCheckText(t *testing.T) {
	_, base := fixture(t)
	tests := []struct {
		name string
		args []string
		want []string
	}{
		{
			name: "allowed-by-rule and no-policy",
			args: []string{"--from", "default/frontend", "--to", "default/backend", "--port", "80"},
			want: []string{
				"default/frontend -> default/backend TCP/80: ALLOWED\n",
				"  egress  (default/frontend): allowed — no policy selects default/frontend for egress\n",
				"  ingress (default/backend): allowed by CiliumNetworkPolicy default/frontend-backend-policy spec.ingress[0]\n",
			},
		},
		{
			name: "self",
			args: []string{"--from", "default/frontend", "--to", "default/frontend", "--port", "80"},
			want: []string{"ALLOWED", "egress  (default/frontend): allowed — a pod may always reach itself", "ingress (default/frontend): allowed — a pod may always reach itself"},
		},
		{
			name: "outside-cluster",
			args: []string{"--from", "203.0.113.5", "--to", "default/frontend", "--port", "443"},
			want: []string{"203.0.113.5 -> default/frontend TCP/443: ALLOWED", "egress  (203.0.113.5): allowed — 203.0.113.5 is outside the cluster, so no egress policy applies"},
		},
		{
			name: "not-isolated",
			args: []string{"--from", "default/frontend", "--to", "default/open", "--port", "80"},
			want: []string{"ALLOWED", "ingress (default/open): allowed — the policies that select default/open for ingress have default deny turned off"},
		},
		{
			name: "local-node from node:NAME",
			args: []string{"--from", "node:node-1", "--to", "default/db", "--port", "5432"},
			want: []string{"node:node-1(10.0.0.1) -> default/db TCP/5432: ALLOWED", "is a node, not a pod", "ingress (default/db): allowed — node:node-1(10.0.0.1) is the node default/db runs on"},
		},
		{
			name: "denied-by-rule",
			args: []string{"--from", "other/blocked", "--to", "default/backend", "--port", "80"},
			want: []string{"other/blocked -> default/backend TCP/80: DENIED", "ingress (default/backend): denied by CiliumNetworkPolicy default/frontend-backend-policy spec.ingressDeny[0]"},
		},
		{
			name: "default-deny ingress names the policy",
			args: []string{"--from", "default/frontend", "--to", "default/db", "--port", "5432"},
			want: []string{"DENIED", "ingress (default/db): denied — CiliumNetworkPolicy default/db-auth selects default/db for ingress", "default deny"},
		},
		{
			name: "default-deny egress",
			args: []string{"--from", "other/client", "--to", "default/frontend", "--port", "443"},
			want: []string{"DENIED", "egress  (other/client): denied — NetworkPolicy other/client-egress selects other/client for egress"},
		},
		{
			name: "ipBlock egress allowed",
			args: []string{"--from", "other/client", "--to", "10.1.0.10", "--port", "80"},
			want: []string{"other/client -> default/frontend TCP/80: ALLOWED", "allowed by NetworkPolicy other/client-egress spec.egress[0]"},
		},
		{
			name: "authentication required",
			args: []string{"--from", "default/backend", "--to", "default/db", "--port", "5432"},
			want: []string{"ALLOWED", "allowed by CiliumNetworkPolicy default/db-auth spec.ingress[0]; mutual authentication of both peers is required"},
		},
		{
			name: "UDP",
			args: []string{"--from", "default/frontend", "--to", "default/db", "--port", "53", "--protocol", "UDP"},
			want: []string{"default/frontend -> default/db UDP/53: DENIED"},
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			code, out, errs := runMeshctl("", args(base, tc.args...)...)
			if code != 0 || errs != "" {
				t.Fatalf("exit %d, stderr:\n%s", code, errs)
			}
			wantAll(t, "stdout", out, tc.want)
		})
	}
}

// TestCheckL7 covers HTTP requests on a port with L7 rules.
func TestCheckL7(t *testing.T) {
	_, base := fixture(t)
	tests := []struct {
		name string
		args []string
		want []string
	}{
		{
			name: "request denied",
			args: []string{"--from", "default/frontend", "--to", "default/backend", "--port", "http", "--method", "GET", "--path", "/userdata/abc"},
			want: []string{
				"default/frontend -> default/backend TCP/8080 (port http): DENIED",
				"ingress (default/backend): denied — CiliumNetworkPolicy default/frontend-backend-policy spec.ingress[1] allows the connection, but only for HTTP requests that match an L7 rule",
				"  L7: GET /userdata/abc denied — no rule matches; rules: GET /userdata/[0-9]+\n",
			},
		},
		{
			name: "request allowed",
			args: []string{"--from", "default/frontend", "--to", "default/backend", "--port", "8080", "--method", "GET", "--path", "/userdata/7", "--header", "X-Team=a", "--host", "backend"},
			want: []string{"TCP/8080: ALLOWED", "  L7: GET /userdata/7 host=backend header[X-Team]=a allowed by rule GET /userdata/[0-9]+\n"},
		},
		{
			name: "method defaults to GET",
			args: []string{"--from", "default/frontend", "--to", "default/backend", "--port", "8080", "--path", "/userdata/7"},
			want: []string{"ALLOWED", "L7: GET /userdata/7 allowed"},
		},
		{
			name: "no request: the rules are listed",
			args: []string{"--from", "default/frontend", "--to", "default/backend", "--port", "8080"},
			want: []string{"ALLOWED", "L7: only HTTP requests that match a rule are allowed; rules: GET /userdata/[0-9]+"},
		},
		{
			name: "request on a port without L7 rules",
			args: []string{"--from", "default/frontend", "--to", "default/backend", "--port", "80", "--method", "DELETE", "--path", "/x"},
			want: []string{"ALLOWED", "L7: DELETE /x allowed — no L7 rule applies"},
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			code, out, errs := runMeshctl("", args(base, tc.args...)...)
			if code != 0 || errs != "" {
				t.Fatalf("exit %d, stderr:\n%s", code, errs)
			}
			wantAll(t, "stdout", out, tc.want)
		})
	}
	// The same request in JSON.
	code, out, errs := runMeshctl("", args(base, "--from", "default/frontend", "--to", "default/backend", "--port", "http", "--method", "GET", "--path", "/userdata/abc", "-o", "json")...)
	if code != 0 {
		t.Fatalf("exit %d: %s", code, errs)
	}
	var r struct {
		Verdict string
		Ingress struct{ Reason string }
		L7      struct {
			Rules   []string
			Verdict string
		}
	}
	if err := json.Unmarshal([]byte(out), &r); err != nil {
		t.Fatalf("%v:\n%s", err, out)
	}
	if r.Verdict != "denied" || r.Ingress.Reason != "l7-denied" || r.L7.Verdict != "denied" || len(r.L7.Rules) != 1 {
		t.Errorf("got %+v", r)
	}
}

const testFlows = `{"from":"default/frontend","to":"default/backend","port":80}

{"from":"other/client","to":"default/frontend","port":443,"protocol":"TCP"}
{"from":"default/frontend","to":"default/backend","port":"http","http":{"method":"GET","path":"/userdata/7","headers":{"k":"v"}}}
   
{"from":"node:node-2","to":"default/open","port":53,"protocol":"UDP"}
{"from":"default/frontend","to":"default/backend","port":"8080","http":{"method":"GET","path":"/userdata/abc"}}
`

// testFlowsWant is the from, to and verdict of each flow of testFlows.
var testFlowsWant = [][3]string{
	{"default/frontend", "default/backend", "allowed"},
	{"other/client", "default/frontend", "denied"},
	{"default/frontend", "default/backend", "allowed"},
	{"node:node-2(10.0.0.2)", "default/open", "allowed"},
	{"default/frontend", "default/backend", "denied"},
}

// TestCheckJSONL checks the shape: exactly one line per input flow, in order.
func TestCheckJSONL(t *testing.T) {
	dir, base := fixture(t)
	write(t, dir, "flows.jsonl", testFlows)
	for _, src := range []struct{ name, file, stdin string }{
		{"file", "flows.jsonl", ""},
		{"stdin", "-", testFlows},
	} {
		t.Run(src.name, func(t *testing.T) {
			code, out, errs := runMeshctl(src.stdin, args(base, "--flows", src.file, "-o", "jsonl")...)
			if code != 0 || errs != "" {
				t.Fatalf("exit %d, stderr:\n%s", code, errs)
			}
			lines := strings.Split(strings.TrimSuffix(out, "\n"), "\n")
			if len(lines) != len(testFlowsWant) {
				t.Fatalf("%d lines, want %d:\n%s", len(lines), len(testFlowsWant), out)
			}
			for i, l := range lines {
				var m map[string]json.RawMessage
				if err := json.Unmarshal([]byte(l), &m); err != nil {
					t.Fatalf("line %d: %v: %s", i+1, err, l)
				}
				for _, k := range []string{"verdict", "from", "to", "protocol", "port", "egress", "ingress"} {
					if _, ok := m[k]; !ok {
						t.Errorf("line %d lacks %q: %s", i+1, k, l)
					}
				}
				var r struct {
					Verdict, From, To string
					Egress, Ingress   map[string]json.RawMessage
				}
				json.Unmarshal([]byte(l), &r)
				if got := [3]string{r.From, r.To, r.Verdict}; got != testFlowsWant[i] {
					t.Errorf("line %d: got %v, want %v", i+1, got, testFlowsWant[i])
				}
				for _, d := range []map[string]json.RawMessage{r.Egress, r.Ingress} {
					for _, k := range []string{"verdict", "reason", "policies"} {
						if _, ok := d[k]; !ok {
							t.Errorf("line %d: a direction lacks %q: %s", i+1, k, l)
						}
					}
				}
			}
		})
	}
}

func TestCheckJSON(t *testing.T) {
	dir, base := fixture(t)
	write(t, dir, "flows.jsonl", testFlows)

	// --flows: an array, one element per flow.
	code, out, errs := runMeshctl("", args(base, "--flows", "flows.jsonl", "-o", "json")...)
	if code != 0 {
		t.Fatalf("exit %d: %s", code, errs)
	}
	var arr []struct{ Verdict, From, To string }
	if err := json.Unmarshal([]byte(out), &arr); err != nil {
		t.Fatalf("%v:\n%s", err, out)
	}
	if len(arr) != len(testFlowsWant) {
		t.Fatalf("%d elements, want %d", len(arr), len(testFlowsWant))
	}
	for i, r := range arr {
		if got := [3]string{r.From, r.To, r.Verdict}; got != testFlowsWant[i] {
			t.Errorf("element %d: got %v, want %v", i, got, testFlowsWant[i])
		}
	}

	// A single flow: one object.
	code, out, errs = runMeshctl("", args(base, "--from", "default/frontend", "--to", "default/db", "--port", "5432", "-o", "json")...)
	if code != 0 {
		t.Fatalf("exit %d: %s", code, errs)
	}
	var one struct {
		Verdict string
		Ingress struct {
			Reason   string
			Policies []string
		}
	}
	if err := json.Unmarshal([]byte(out), &one); err != nil {
		t.Fatalf("%v:\n%s", err, out)
	}
	if one.Verdict != "denied" || one.Ingress.Reason != "default-deny" || len(one.Ingress.Policies) != 1 || one.Ingress.Policies[0] != "CiliumNetworkPolicy default/db-auth" {
		t.Errorf("got %+v", one)
	}

	// An empty flows file: an empty array.
	write(t, dir, "empty.jsonl", "\n\n")
	code, out, _ = runMeshctl("", args(base, "--flows", "empty.jsonl", "-o", "json")...)
	if code != 0 || strings.TrimSpace(out) != "[]" {
		t.Errorf("empty flows: exit %d, output %q", code, out)
	}
}

func TestCheckTextFlows(t *testing.T) {
	dir, base := fixture(t)
	write(t, dir, "flows.jsonl", testFlows)
	code, out, errs := runMeshctl("", args(base, "--flows", "flows.jsonl")...)
	if code != 0 {
		t.Fatalf("exit %d: %s", code, errs)
	}
	if n := strings.Count(out, ": ALLOWED\n") + strings.Count(out, ": DENIED\n"); n != len(testFlowsWant) {
		t.Errorf("%d flows explained, want %d:\n%s", n, len(testFlowsWant), out)
	}
	wantAll(t, "stdout", out, []string{"node:node-2(10.0.0.2) -> default/open UDP/53: ALLOWED", "L7: GET /userdata/7 header[k]=v allowed by rule GET /userdata/[0-9]+"})
}

func TestCheckMatrix(t *testing.T) {
	_, base := fixture(t)
	tests := []struct {
		name string
		args []string
		want []string
	}{
		{
			name: "TCP/80",
			args: []string{"--matrix"},
			// 36 pairs. Denied: into default/backend from all but frontend
			// (4), into default/db from all but itself (5), other/client to
			// other/blocked (its egress allows 10.1.0.0/16 only).
			want: []string{"TCP/80\n", "from\\to", "default/backend", "other/client", "26 of 36 pairs allowed\n"},
		},
		{
			name: "TCP/5432",
			args: []string{"--matrix", "--port", "5432"},
			want: []string{"TCP/5432\n", "of 36 pairs allowed\n"},
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			code, out, errs := runMeshctl("", args(base, tc.args...)...)
			if code != 0 || errs != "" {
				t.Fatalf("exit %d, stderr:\n%s", code, errs)
			}
			wantAll(t, "stdout", out, tc.want)
			lines := strings.Split(out, "\n")
			// Header, "from\to" row, six pod rows, count line.
			if len(lines) < 9 || !strings.HasPrefix(lines[1], "from\\to") {
				t.Errorf("not a matrix:\n%s", out)
			}
		})
	}

	// JSON form.
	code, out, errs := runMeshctl("", args(base, "--matrix", "-o", "json")...)
	if code != 0 {
		t.Fatalf("exit %d: %s", code, errs)
	}
	var m struct {
		Pods     []string
		Protocol string
		Port     int
		Allowed  [][]bool
	}
	if err := json.Unmarshal([]byte(out), &m); err != nil {
		t.Fatalf("%v:\n%s", err, out)
	}
	if len(m.Pods) != 6 || m.Protocol != "TCP" || m.Port != 80 || len(m.Allowed) != 6 || len(m.Allowed[0]) != 6 {
		t.Fatalf("got %+v", m)
	}
	idx := map[string]int{}
	for i, p := range m.Pods {
		idx[p] = i
	}
	if m.Allowed[idx["other/blocked"]][idx["default/backend"]] || !m.Allowed[idx["default/frontend"]][idx["default/backend"]] {
		t.Errorf("wrong cells: %+v", m)
	}
}

// TestCheckMatrixNetpolWorld runs the matrix on the shared netpol test world
// with a default-deny policy in namespace x.
func TestCheckMatrixNetpolWorld(t *testing.T) {
	world, err := filepath.Abs("../../policy/testdata/netpol/world.yaml")
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	write(t, dir, "deny.yaml", `apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: deny-all, namespace: x}
spec:
  podSelector: {}
  policyTypes: [Ingress]
`)
	code, out, errs := runMeshctl("", "policy", "check", "--world", world, "--policy", filepath.Join(dir, "deny.yaml"), "--matrix", "--port", "81")
	if code != 0 {
		t.Fatalf("exit %d: %s", code, errs)
	}
	// 81 pairs; into x, only each pod itself: 9*3 - 3 denied.
	wantAll(t, "stdout", out, []string{"TCP/81\n", "x/a .   X   X", "57 of 81 pairs allowed\n"})
}

// TestCheckBadInput: bad flags and bad input exit 2, print nothing on stdout,
// and name the file, line and field of every problem on stderr.
func TestCheckBadInput(t *testing.T) {
	dir, base := fixture(t)
	write(t, dir, "bad-policies/a.yaml", `apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: ok, namespace: default}
spec:
  podSelector: {}
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: bad, namespace: default}
spec:
  podSelector: {}
  ingress:
  - ports:
    - port: 99999
`)
	write(t, dir, "bad-policies/b.yaml", "apiVersion: cilium.io/v2\nkind: CiliumNetworkPolicy\nmetadata: {name: x, namespace: default}\nspec:\n  endpointSelector: {}\n  ingres: []\n")
	write(t, dir, "tabs.yaml", "apiVersion: v1\nkind: Pod\nmetadata:\n\tname: x\n")
	write(t, dir, "badworld.yaml", "apiVersion: v1\nkind: Pod\nmetadata: {name: p, namespace: default}\nstatus: {podIP: 10.0.0.300}\n")
	write(t, dir, "flows.jsonl", `{"from":"default/frontend","to":"default/backend","port":80}
{"from":"default/frontend","to":"default/nope","port":80}
{"from":"default/frontend","to":"default/backend","port":70000}

{"from":"default/frontend","to":"default/backend","port":80,"prot":"TCP"}
{"from":"default/frontend","to":"default/backend","port":80,"http":{"meth":"GET"}}
{"from":"default/frontend","to":"default/backend","port":80
{"from":1,"to":"default/backend","port":80}
{"from":"default/frontend","to":"default/db","port":"http"}
{"from":"default/frontend","to":"default/backend"}
{"from":"default/frontend","to":"default/backend","port":80,"protocol":"XTP"}
{"from":"default/frontend","to":"default/backend","port":80,"protocol":"UDP","http":{}}
{"from":"default/frontend","to":"default/backend","port":80} {}
`)
	write(t, dir, "one-bad.jsonl", `{"from":"default/frontend","to":"default/backend","port":80}
{"from":"default/frontend","to":"default/backend","port":80}
{"from":"default/frontend","to":"nowhere/x","port":80}
`)
	flow := []string{"--from", "default/frontend", "--to", "default/backend", "--port", "80"}
	tests := []struct {
		name string
		args []string // after "policy check"
		want []string
	}{
		{"unreadable world", append([]string{"--world", "missing.yaml", "--policy", "policies"}, flow...), []string{"missing.yaml", "no such file"}},
		{"unreadable policy", append([]string{"--world", "world.yaml", "--policy", "nope/"}, flow...), []string{"nope", "no such file"}},
		{"invalid world", append([]string{"--world", "badworld.yaml", "--policy", "policies"}, flow...), []string{"badworld.yaml: document 1: status.podIP", "10.0.0.300"}},
		{"YAML with tabs", append([]string{"--world", "tabs.yaml", "--policy", "policies"}, flow...), []string{"tabs.yaml: document 1: not valid YAML", "tabs"}},
		{"invalid policies, every problem", append([]string{"--world", "world.yaml", "--policy", "bad-policies"}, flow...), []string{
			"bad-policies/a.yaml: document 2: spec.ingress[0].ports[0].port", "(line 14)",
			"bad-policies/b.yaml: document 1: spec.ingres: unknown field", "(line 6)",
		}},
		{"flows: every problem with file and line", args(base[2:], "--flows", "flows.jsonl"), []string{
			"flows.jsonl: line 2: to: \"default/nope\": no such pod",
			"flows.jsonl: line 3: port: 70000 is not a valid port",
			"flows.jsonl: line 5: unknown field \"prot\" (did you mean \"protocol\"?)",
			"flows.jsonl: line 6: http: unknown field \"meth\"",
			"flows.jsonl: line 7: not valid JSON",
			"flows.jsonl: line 8: from: must be a string, got a number",
			"flows.jsonl: line 9: port \"http\": pod default/db declares no TCP port of that name",
			"flows.jsonl: line 10: missing port",
			"flows.jsonl: line 11: protocol: \"XTP\" is not a protocol",
			"flows.jsonl: line 12: http: an HTTP request needs protocol TCP",
			"flows.jsonl: line 13: unexpected \"{}\" after the flow object",
		}},
		{"flows: one bad line, no partial output", args(base[2:], "--flows", "one-bad.jsonl", "-o", "jsonl"), []string{"one-bad.jsonl: line 3: to: \"nowhere/x\": no such pod"}},
		{"flows: missing file", args(base[2:], "--flows", "nope.jsonl"), []string{"nope.jsonl", "no such file"}},
		{"unknown pod", args(base[2:], "--from", "default/nobody", "--to", "default/backend", "--port", "80"), []string{"--from: \"default/nobody\": no such pod in the world"}},
		{"unknown node", args(base[2:], "--from", "node:node-9", "--to", "default/backend", "--port", "80"), []string{"--from: \"node:node-9\": no node node-9"}},
		{"not a peer", args(base[2:], "--from", "default/frontend", "--to", "frontend", "--port", "80"), []string{"--to: \"frontend\" is neither namespace/pod nor an IP address"}},
		{"port out of range", args(base[2:], "--from", "default/frontend", "--to", "default/backend", "--port", "99999"), []string{"--port: 99999 is not a valid port"}},
		{"port zero", args(base[2:], "--from", "default/frontend", "--to", "default/backend", "--port", "0"), []string{"--port: 0 is not a valid port"}},
		{"bad port name", args(base[2:], "--from", "default/frontend", "--to", "default/backend", "--port", "a b"), []string{"--port: \"a b\" is neither a port number"}},
		{"undeclared port name", args(base[2:], "--from", "default/frontend", "--to", "default/db", "--port", "http"), []string{"--port \"http\": pod default/db declares no TCP port of that name"}},
		{"bad protocol", args(base[2:], "--from", "default/frontend", "--to", "default/backend", "--port", "80", "--protocol", "HTTP"), []string{"--protocol: \"HTTP\" is not a protocol"}},
		{"bad header", args(base[2:], "--from", "default/frontend", "--to", "default/backend", "--port", "80", "--header", "novalue"), []string{"--header \"novalue\": want NAME=VALUE"}},
		{"HTTP over UDP", args(base[2:], "--from", "default/frontend", "--to", "default/backend", "--port", "80", "--protocol", "UDP", "--path", "/"), []string{"HTTP request needs protocol TCP"}},
		{"missing --to and --port", args(base[2:], "--from", "default/frontend"), []string{"missing --to, --port"}},
		{"nothing to check", base[2:], []string{"nothing to check: give a flow (--from, --to, --port), --flows FILE or --matrix"}},
		{"--port alone", args(base[2:], "--port", "80"), []string{"missing --from and --to"}},
		{"flow and --flows", args(base[2:], "--from", "default/frontend", "--to", "default/backend", "--port", "80", "--flows", "flows.jsonl"), []string{"--from/--to and --flows cannot be combined"}},
		{"--flows and --matrix", args(base[2:], "--flows", "flows.jsonl", "--matrix"), []string{"--flows and --matrix cannot be combined"}},
		{"--flows with --port", args(base[2:], "--flows", "flows.jsonl", "--port", "80"), []string{"with --flows each line gives its own port"}},
		{"--flows with --method", args(base[2:], "--flows", "flows.jsonl", "--method", "GET"), []string{"--method, --path, --host and --header are for a single flow"}},
		{"--matrix with a port name", args(base[2:], "--matrix", "--port", "http"), []string{"--matrix needs a port number"}},
		{"bad output format", args(base[2:], "--matrix", "-o", "yaml"), []string{`-o "yaml": want text, json or jsonl`}},
		{"no --world", []string{"--policy", "policies", "--matrix"}, []string{"missing --world FILE"}},
		{"no --policy", []string{"--world", "world.yaml", "--matrix"}, []string{"missing --policy PATH"}},
		{"two readers of stdin", []string{"--world", "-", "--policy", "policies", "--flows", "-"}, []string{"only one of --world, --policy and --flows can read standard input"}},
		{"unknown flag", args(base[2:], "--matrix", "--bogus"), []string{"unknown flag: --bogus", "meshctl policy check --help"}},
		{"positional argument", args(base[2:], "--matrix", "extra"), []string{`unknown command "extra"`}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			code, out, errs := runMeshctl("", append([]string{"policy", "check"}, tc.args...)...)
			if code != 2 {
				t.Errorf("exit %d, want 2", code)
			}
			if out != "" {
				t.Errorf("stdout not empty:\n%s", out)
			}
			wantAll(t, "stderr", errs, tc.want)
			if strings.Contains(tc.name, "every problem") {
				if n, want := strings.Count(errs, "\n"), len(tc.want); n < want/2 {
					t.Errorf("%d lines on stderr; want one per problem:\n%s", n, errs)
				}
			}
		})
	}
}

func TestCheckFailOnDeny(t *testing.T) {
	dir, base := fixture(t)
	write(t, dir, "flows.jsonl", testFlows)
	write(t, dir, "allowed.jsonl", `{"from":"default/frontend","to":"default/backend","port":80}`+"\n")
	tests := []struct {
		name     string
		args     []string
		wantCode int
		want     []string
	}{
		{"denied flow, no flag", []string{"--from", "default/frontend", "--to", "default/db", "--port", "5432"}, 0, []string{"DENIED"}},
		{"denied flow", []string{"--from", "default/frontend", "--to", "default/db", "--port", "5432", "--fail-on-deny"}, 1, []string{"DENIED"}},
		{"allowed flow", []string{"--from", "default/frontend", "--to", "default/backend", "--port", "80", "--fail-on-deny"}, 0, []string{"ALLOWED"}},
		{"flows, one denied", []string{"--flows", "flows.jsonl", "-o", "jsonl", "--fail-on-deny"}, 1, []string{`"verdict":"denied"`}},
		{"flows, all allowed", []string{"--flows", "allowed.jsonl", "-o", "jsonl", "--fail-on-deny"}, 0, []string{`"verdict":"allowed"`}},
		{"matrix with denied cells", []string{"--matrix", "--fail-on-deny"}, 1, []string{"26 of 36 pairs allowed"}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			code, out, errs := runMeshctl("", args(base, tc.args...)...)
			if code != tc.wantCode {
				t.Errorf("exit %d, want %d; stderr:\n%s", code, tc.wantCode, errs)
			}
			if errs != "" {
				t.Errorf("stderr not empty:\n%s", errs)
			}
			// The results are printed whatever the exit status.
			wantAll(t, "stdout", out, tc.want)
		})
	}
}

func TestCheckReference(t *testing.T) {
	dir, base := fixture(t)
	write(t, dir, "flows.jsonl", testFlows)
	_, compiled, _ := runMeshctl("", args(base, "--flows", "flows.jsonl", "-o", "jsonl")...)
	code, reference, errs := runMeshctl("", args(base, "--flows", "flows.jsonl", "-o", "jsonl", "--reference")...)
	if code != 0 {
		t.Fatalf("exit %d: %s", code, errs)
	}
	if compiled != reference {
		t.Errorf("compiled and reference checkers differ:\n%s\nvs\n%s", compiled, reference)
	}
}

func TestHelpAndVersion(t *testing.T) {
	tests := []struct {
		name string
		args []string
		want []string
	}{
		{"root", []string{"--help"}, []string{"sidecarless service mesh", "Examples:", "policy", "version"}},
		{"bare", nil, []string{"sidecarless service mesh", "Available Commands:"}},
		{"policy", []string{"policy", "--help"}, []string{"check", "Examples:"}},
		{"policy check", []string{"policy", "check", "--help"}, []string{"--world", "--policy", "--flows", "--matrix", "--fail-on-deny", "--reference", "jsonl", "Examples:", "--from default/frontend"}},
		{"version", []string{"version"}, []string{"meshctl dev\n"}},
		{"--version", []string{"--version"}, []string{"meshctl dev\n"}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			code, out, errs := runMeshctl("", tc.args...)
			if code != 0 || errs != "" {
				t.Fatalf("exit %d, stderr:\n%s", code, errs)
			}
			wantAll(t, "stdout", out, tc.want)
		})
	}
	if code, _, errs := runMeshctl("", "nosuch"); code != 2 || !strings.Contains(errs, `unknown command "nosuch"`) {
		t.Errorf("unknown command: exit %d, stderr %q", code, errs)
	}
	if code, _, errs := runMeshctl("", "policy", "nosuch"); code != 2 || !strings.Contains(errs, `unknown command "nosuch"`) {
		t.Errorf("unknown policy command: exit %d, stderr %q", code, errs)
	}
}
