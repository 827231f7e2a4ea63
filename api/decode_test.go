package api_test

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/nodemesh/nodemesh/api"
)

const cnpHeader = `apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata:
  name: p
  namespace: default
`

func TestDecodePoliciesErrors(t *testing.T) {
	tests := []struct {
		name    string
		yaml    string
		wantErr []string // substrings, all required
	}{
		{
			name: "port out of range in the second document",
			yaml: cnpHeader + `spec:
  endpointSelector: {}
  ingress: [{}]
---
` + cnpHeader + `spec:
  endpointSelector: {}
  ingress:
  - toPorts:
    - ports:
      - port: "99999"
`,
			wantErr: []string{`a.yaml: document 2: spec.ingress[0].toPorts[0].ports[0].port: "99999" is not a valid port (line 20)`},
		},
		{
			name: "NetworkPolicy port out of range",
			yaml: `apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: np}
spec:
  podSelector: {}
  ingress:
  - ports:
    - port: 99999
`,
			wantErr: []string{`document 1: spec.ingress[0].ports[0].port: "99999" is not a valid port`},
		},
		{
			name:    "unknown field with a suggestion",
			yaml:    cnpHeader + "spec:\n  endpointSelector: {}\n  ingress:\n  - fromEndpoint: [{}]\n",
			wantErr: []string{`spec.ingress[0].fromEndpoint: unknown field (did you mean "fromEndpoints"?)`},
		},
		{
			name: "a list written as a mapping (seed 001)",
			yaml: cnpHeader + `spec:
  endpointSelector:
    matchLabels: {app: frontend}
  ingress:
  - fromEndpoints:
      matchLabels:
        app: backend
`,
			wantErr: []string{"spec.ingress[0].fromEndpoints: must be a list, but is a mapping", `"- matchLabels: ..."`},
		},
		{
			name:    "missing endpointSelector (seed 001 zero-trust)",
			yaml:    cnpHeader + "spec:\n  ingress:\n  - fromEndpoints: [{matchLabels: {name: secret-pods}}]\n",
			wantErr: []string{"spec.endpointSelector: required", "endpointSelector: {}"},
		},
		{
			name:    "wrong apiVersion (seed 004)",
			yaml:    "apiVersion: cilium.io/v1alpha1\nkind: CiliumNetworkPolicy\nmetadata: {name: p}\nspec: {endpointSelector: {}, ingress: [{}]}\n",
			wantErr: []string{`apiVersion: "cilium.io/v1alpha1" does not serve CiliumNetworkPolicy; use apiVersion: cilium.io/v2`},
		},
		{
			name:    "not a policy kind (seed 004 CiliumConfig)",
			yaml:    "apiVersion: cilium.io/v1.12\nkind: CiliumConfig\nmetadata: {name: c}\nspec: {enable-encryption: true}\n",
			wantErr: []string{`kind: "CiliumConfig" (apiVersion "cilium.io/v1.12") is not a policy kind`},
		},
		{
			name:    "missing kind",
			yaml:    "metadata: {name: x}\n",
			wantErr: []string{"kind: missing"},
		},
		{
			name:    "YAML syntax",
			yaml:    "apiVersion: v1\nkind: [\n",
			wantErr: []string{"document 1: not valid YAML"},
		},
		{
			name:    "duplicate key (lost indentation)",
			yaml:    "apiVersion: cilium.io/v2\nkind: CiliumNetworkPolicy\napp: a\napp: b\n",
			wantErr: []string{"app: defined twice (first at line 3)", "indent it again"},
		},
		{
			name:    "CIDR with host bits",
			yaml:    cnpHeader + "spec:\n  endpointSelector: {}\n  egress:\n  - toCIDR: [10.1.2.3/8]\n",
			wantErr: []string{`spec.egress[0].toCIDR[0]: "10.1.2.3/8" has host bits set; did you mean 10.0.0.0/8?`},
		},
		{
			name:    "except outside the CIDR",
			yaml:    "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: np}\nspec:\n  podSelector: {}\n  egress:\n  - to:\n    - ipBlock: {cidr: 10.0.0.0/16, except: [10.1.0.0/24]}\n",
			wantErr: []string{"spec.egress[0].to[0].ipBlock.except[0]: 10.1.0.0/24 is not inside 10.0.0.0/16"},
		},
		{
			name:    "invalid regular expression",
			yaml:    cnpHeader + "spec:\n  endpointSelector: {}\n  ingress:\n  - toPorts:\n    - ports: [{port: \"80\", protocol: TCP}]\n      rules:\n        http: [{method: GET, path: \"/userdata/[0-9+\"}]\n",
			wantErr: []string{`spec.ingress[0].toPorts[0].rules.http[0].path: "/userdata/[0-9+" is not a valid regular expression`},
		},
		{
			name:    "HTTP rules on UDP",
			yaml:    cnpHeader + "spec:\n  endpointSelector: {}\n  ingress:\n  - toPorts:\n    - ports: [{port: \"53\", protocol: UDP}]\n      rules: {http: [{method: GET}]}\n",
			wantErr: []string{"spec.ingress[0].toPorts[0].ports[0].protocol: UDP cannot carry HTTP rules"},
		},
		{
			name:    "unsupported field is refused, not ignored",
			yaml:    cnpHeader + "spec:\n  endpointSelector: {}\n  egress:\n  - toFQDNs: [{matchName: example.com}]\n",
			wantErr: []string{"spec.egress[0].toFQDNs: toFQDNs (DNS-based policy) is not supported"},
		},
		{
			name:    "protocol case",
			yaml:    "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: np}\nspec:\n  podSelector: {}\n  ingress:\n  - ports: [{protocol: tcp, port: 80}]\n",
			wantErr: []string{`spec.ingress[0].ports[0].protocol: "tcp" is not supported; use TCP, UDP or SCTP (did you mean "TCP"?)`},
		},
		{
			name:    "bad operator and missing values",
			yaml:    "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: np}\nspec:\n  podSelector:\n    matchExpressions:\n    - {key: app, operator: in}\n    - {key: app, operator: In}\n",
			wantErr: []string{`spec.podSelector.matchExpressions[0].operator: "in" is not an operator`, "spec.podSelector.matchExpressions[1].values: must not be empty for operator In"},
		},
		{
			name:    "every problem is reported",
			yaml:    cnpHeader + "spec:\n  endpointSelector: {}\n  ingress:\n  - fromEntities: [everyone]\n    toPorts:\n    - ports: [{port: \"70000\"}]\n",
			wantErr: []string{`fromEntities[0]: "everyone" is not an entity`, `ports[0].port: "70000" is not a valid port`},
		},
		{
			name:    "label value must be a string",
			yaml:    "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: np}\nspec:\n  podSelector:\n    matchLabels: {enabled: true}\n",
			wantErr: []string{`spec.podSelector.matchLabels.enabled: must be a string, got the boolean true; quote it: "true"`},
		},
		{
			name:    "empty deny rule",
			yaml:    cnpHeader + "spec:\n  endpointSelector: {}\n  ingressDeny: [{}]\n",
			wantErr: []string{"spec.ingressDeny[0]: an empty deny rule denies nothing"},
		},
		{
			name:    "ipBlock mixed with a selector",
			yaml:    "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: np}\nspec:\n  podSelector: {}\n  ingress:\n  - from: [{ipBlock: {cidr: 10.0.0.0/8}, podSelector: {}}]\n",
			wantErr: []string{"spec.ingress[0].from[0]: ipBlock may not be combined"},
		},
		{
			name:    "namespace on a cluster-wide policy",
			yaml:    "apiVersion: nodemesh.io/v1\nkind: MeshClusterwideNetworkPolicy\nmetadata: {name: c, namespace: x}\nspec: {endpointSelector: {}, ingress: [{}]}\n",
			wantErr: []string{"metadata.namespace: must not be set on a cluster-wide policy"},
		},
		{
			name:    "List items are numbered",
			yaml:    "apiVersion: v1\nkind: List\nitems:\n- apiVersion: networking.k8s.io/v1\n  kind: NetworkPolicy\n  metadata: {name: ok}\n  spec: {podSelector: {}}\n- apiVersion: networking.k8s.io/v1\n  kind: NetworkPolicy\n  metadata: {name: bad}\n  spec: {podSelector: {}, policyTypes: [Both]}\n",
			wantErr: []string{`document 1: items[1].spec.policyTypes[0]: "Both" is not a policy type`},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			docs, err := api.DecodePolicies("a.yaml", []byte(tt.yaml))
			if err == nil {
				t.Fatalf("accepted (%d documents), want an error", len(docs))
			}
			if docs != nil {
				t.Errorf("returned %d documents with an error; want none (nothing half-applied)", len(docs))
			}
			for _, w := range tt.wantErr {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error\n%v\ndoes not contain\n%s", err, w)
				}
			}
		})
	}
}

func TestDecodePoliciesAccepts(t *testing.T) {
	tests := []struct {
		name  string
		yaml  string
		count int
	}{
		{"JSON", `{"apiVersion":"networking.k8s.io/v1","kind":"NetworkPolicy","metadata":{"name":"j","namespace":"x"},"spec":{"podSelector":{}}}`, 1},
		{"kubectl export metadata", "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata:\n  name: e\n  namespace: x\n  uid: 7d2b4c1e-0b6f-4c1e-9a53-3f1c2a9d8e11\n  resourceVersion: \"5\"\n  generation: 2\n  creationTimestamp: \"2026-01-01T00:00:00Z\"\n  managedFields: [{manager: kubectl}]\nspec: {podSelector: {}}\nstatus: {}\n", 1},
		{"specs list form and port as a number", cnpHeader + "specs:\n- endpointSelector: {}\n  ingress: [{toPorts: [{ports: [{port: 80}]}]}]\n- endpointSelector: {}\n  egress: [{toEntities: [world]}]\n", 1},
		{"List and empty documents", "---\n---\napiVersion: v1\nkind: List\nitems:\n- apiVersion: nodemesh.io/v1\n  kind: MeshNetworkPolicy\n  metadata: {name: a}\n  spec: {endpointSelector: {}, ingress: [{}]}\n- apiVersion: nodemesh.io/v1\n  kind: MeshClusterwideNetworkPolicy\n  metadata: {name: b}\n  spec: {endpointSelector: {}, egress: [{}]}\n", 2},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			docs, err := api.DecodePolicies("ok.yaml", []byte(tt.yaml))
			if err != nil {
				t.Fatal(err)
			}
			if len(docs) != tt.count {
				t.Fatalf("got %d documents, want %d", len(docs), tt.count)
			}
		})
	}
}

func TestLoadPolicies(t *testing.T) {
	dir := t.TempDir()
	np := "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: same, namespace: x}\nspec: {podSelector: {}}\n"
	write := func(name, s string) {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(s), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	write("a.yaml", np)
	write("notes.txt", "ignored")
	docs, err := api.LoadPolicies(dir)
	if err != nil || len(docs) != 1 {
		t.Fatalf("LoadPolicies: %d docs, %v", len(docs), err)
	}
	write("b.yml", np)
	if _, err := api.LoadPolicies(dir); err == nil || !strings.Contains(err.Error(), "NetworkPolicy x/same is defined twice") {
		t.Fatalf("duplicate not reported: %v", err)
	}
	if _, err := api.LoadPolicies(filepath.Join(dir, "missing.yaml")); err == nil || !strings.Contains(err.Error(), "missing.yaml") {
		t.Fatalf("missing file: %v", err)
	}
}

func TestDecodeWorld(t *testing.T) {
	in := `apiVersion: v1
kind: List
items:
- apiVersion: v1
  kind: Namespace
  metadata: {name: x, labels: {team: a}}
  spec: {finalizers: [kubernetes]}
- apiVersion: v1
  kind: Pod
  metadata: {name: a, namespace: x, labels: {app: web}}
  spec:
    nodeName: n1
    serviceAccountName: web
    dnsPolicy: ClusterFirst
    containers:
    - name: c
      image: nginx
      ports: [{name: http, containerPort: 80}]
  status: {podIP: 10.0.0.1, podIPs: [{ip: 10.0.0.1}, {ip: "fd00::1"}], conditions: []}
- apiVersion: v1
  kind: Service
  metadata: {name: ignored}
- apiVersion: v1
  kind: Endpoints
  metadata: {name: kubernetes, namespace: default}
  subsets: [{addresses: [{ip: 192.168.0.100}]}]
`
	var w api.World
	if err := api.DecodeWorld("w.yaml", []byte(in), &w); err != nil {
		t.Fatal(err)
	}
	if len(w.Namespaces) != 1 || len(w.Pods) != 1 || len(w.APIServerIPs) != 1 {
		t.Fatalf("decoded %d namespaces, %d pods, %d apiserver IPs", len(w.Namespaces), len(w.Pods), len(w.APIServerIPs))
	}
	p := w.Pods[0]
	if got := p.Addresses(); len(got) != 2 || p.ServiceAccountName() != "web" || p.Spec.Containers[0].Ports[0].ContainerPort != 80 {
		t.Fatalf("pod decoded wrong: %+v", p)
	}
	bad := "apiVersion: v1\nkind: Pod\nmetadata: {name: b}\nstatus: {podIP: 10.0.0.300}\n"
	if err := api.DecodeWorld("w.yaml", []byte(bad), &w); err == nil || !strings.Contains(err.Error(), `w.yaml: document 1: status.podIP: "10.0.0.300" is not an IP address`) {
		t.Fatalf("bad pod IP: %v", err)
	}
	dup := api.World{Pods: []api.Pod{w.Pods[0], w.Pods[0]}}
	if err := dup.Check(); err == nil || !strings.Contains(err.Error(), "pod x/a is listed twice") {
		t.Fatalf("duplicate pod: %v", err)
	}
}
