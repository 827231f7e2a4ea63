package e2e_test

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"testing"
	"time"

	"github.com/nodemesh/nodemesh/tests/e2e"
	"github.com/nodemesh/nodemesh/tests/podtool"
	"github.com/nodemesh/nodemesh/tests/vcluster"
)

// mtlsPolicies: the seed scenario with its L7 rule on the backend's port
// 80 (e2e.SeedL7Ingress), plus plain TCP on 81 from the frontend and from
// the legacy namespace (whose pods do not take part in mTLS).
const mtlsPolicies = e2e.SeedL7Ingress + `---
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: backend-tcp-81, namespace: default}
spec:
  endpointSelector: {matchLabels: {app: backend}}
  ingress:
  - fromEndpoints: [{matchLabels: {app: frontend}}]
    toPorts: [{ports: [{port: "81", protocol: TCP}]}]
  - fromEndpoints: [{matchLabels: {k8s:io.kubernetes.pod.namespace: legacy}}]
    toPorts: [{ports: [{port: "81", protocol: TCP}]}]
`

// mtlsCluster starts frontend and other on node-1, backend on node-2 (each
// with its own service account), a client in namespace legacy (mTLS
// disabled by its label) on node-1, the built-in CA, agents in mode, and a
// proxy per node.
func mtlsCluster(t testing.TB, mode string, caArgs ...string) *e2e.Harness {
	t.Helper()
	vcluster.RequireCluster(t)
	if _, err := exec.LookPath("tcpdump"); err != nil {
		t.Fatal("tcpdump is missing: run make deps (scripts/deps.sh installs it)")
	}
	opts := e2e.Options{
		Cluster: vcluster.Config{NamespaceLabels: map[string]map[string]string{"legacy": {"mtls.nodemesh.io/mode": "disabled"}}},
		Pods: []vcluster.PodConfig{
			{Name: "frontend", Node: "node-1", Labels: map[string]string{"app": "frontend"}, ServiceAccount: "frontend"},
			{Name: "other", Node: "node-1", Labels: map[string]string{"app": "other"}, ServiceAccount: "other"},
			{Name: "backend", Node: "node-2", Labels: map[string]string{"app": "backend"}, ServiceAccount: "backend"},
			{Namespace: "legacy", Name: "legacy-client", Node: "node-1", Labels: map[string]string{"app": "legacy"}},
		},
		Serve:  []string{"--http", "80,8080", "--tcp", "81"},
		MTLS:   mode,
		CAArgs: caArgs,
	}
	if testing.Verbose() {
		opts.Log = os.Stderr
	}
	h, err := e2e.Start(context.Background(), opts)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { h.Close() })
	t.Cleanup(func() {
		if t.Failed() {
			dumpNodes(t, h)
			t.Logf("nodemesh-ca:\n%s", h.CAStderr())
		}
	})
	for _, n := range []string{"node-1", "node-2"} {
		p, err := h.StartProxy(context.Background(), n)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() {
			if t.Failed() {
				t.Logf("proxy of %s:\n%s", n, p.Stderr())
			}
		})
	}
	if _, err := h.SetPolicies(context.Background(), mtlsPolicies); err != nil {
		t.Fatal(err)
	}
	return h
}

// echo81 sends a TCP echo from a pod to the backend's port 81.
func echo81(t *testing.T, h *e2e.Harness, ns, from string) podtool.ConnectResult {
	t.Helper()
	res, err := h.Probe(context.Background(), h.C.Pod(ns, from), "tcp", fmt.Sprintf("%s:81", h.C.Pod("default", "backend").IP), time.Second)
	if err != nil {
		t.Fatal(err)
	}
	return res
}

// capture runs f while capturing the underlay and returns the capture.
func capture(t *testing.T, h *e2e.Harness, f func()) []byte {
	t.Helper()
	c, err := h.CaptureUnderlay(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	f()
	b, err := c.Stop()
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("capture: %d bytes; tcpdump: %s", len(b), c.Log())
	return b
}

// TestMTLSPermissive: with mTLS permissive, the seed scenario's outcomes
// between nodes are unchanged (the L7 rule still sees the frontend, by its
// address and now by its SPIFFE ID), while the underlay carries no request
// line in plaintext — only TLS offering ALPN nodemesh-mtls; a client whose
// namespace disables mTLS still reaches the backend in plaintext
// (permissive); and with the frontend's namespace switched to disabled, the
// same requests do cross the underlay in plaintext (the capture would see
// them).
func TestMTLSPermissive(t *testing.T) {
	h := mtlsCluster(t, "permissive")
	good := e2e.L7Request{From: "frontend", To: "backend", Method: "GET", Path: "/userdata/42", Port: 80, Want: 200}
	// SVIDs are issued after the agents start: until the frontend's is
	// served, its requests go in plaintext (permissive); wait for mTLS.
	waitMTLS(t, h, 20*time.Second)

	pcap := capture(t, h, func() {
		for _, r := range e2e.SeedL7Requests("backend") {
			expectL7(t, h, r, 5*time.Second)
		}
		if res := echo81(t, h, "default", "frontend"); !res.OK {
			t.Errorf("frontend -> backend:81 over mTLS: %+v", res)
		}
	})
	if bytes.Contains(pcap, []byte("GET /userdata")) || bytes.Contains(pcap, []byte("POST /userdata")) {
		t.Error("the underlay carried an HTTP request line in plaintext between mTLS peers")
	}
	if n := bytes.Count(pcap, []byte("nodemesh-mtls")); n < 3 {
		t.Errorf("the underlay shows %d TLS ClientHellos offering nodemesh-mtls, want one per connection (at least 3)", n)
	}
	if res := echo81(t, h, "legacy", "legacy-client"); !res.OK {
		t.Errorf("permissive: plaintext client legacy/legacy-client -> backend:81: %+v, want the echo", res)
	}

	// Control: the capture does see plaintext when mTLS is off.
	h.C.SetNamespaceLabels("default", map[string]string{"mtls.nodemesh.io/mode": "disabled"})
	if err := h.WriteWorld(); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(10 * time.Second)
	for {
		pcap = capture(t, h, func() { expectL7(t, h, good, 5*time.Second) })
		if bytes.Contains(pcap, []byte("GET /userdata/42")) || time.Now().After(deadline) {
			break
		}
	}
	if !bytes.Contains(pcap, []byte("GET /userdata/42")) {
		t.Error("mTLS disabled for default: the capture never showed the request line (the capture method would not see plaintext)")
	}
}

// TestMTLSStrict: in strict mode mesh pods still talk (over mTLS), while a
// plaintext client on another node — a pod whose namespace disables mTLS —
// is refused by the backend's proxy, with the reason in the flow events.
func TestMTLSStrict(t *testing.T) {
	h := mtlsCluster(t, "strict")
	waitMTLS(t, h, 20*time.Second)
	for _, r := range e2e.SeedL7Requests("backend") {
		expectL7(t, h, r, 5*time.Second)
	}
	if res := echo81(t, h, "default", "frontend"); !res.OK {
		t.Errorf("strict: frontend -> backend:81: %+v", res)
	}
	if res := echo81(t, h, "legacy", "legacy-client"); res.OK {
		t.Errorf("strict: plaintext client legacy/legacy-client -> backend:81 got the echo: %+v", res)
	} else {
		t.Logf("strict: legacy/legacy-client -> backend:81: %s (%s)", res.Reason, res.Error)
	}
}

// waitMTLS waits until the frontend's requests to the backend cross the
// underlay as mTLS.
func waitMTLS(t *testing.T, h *e2e.Harness, wait time.Duration) {
	t.Helper()
	good := e2e.L7Request{From: "frontend", To: "backend", Method: "GET", Path: "/userdata/42", Port: 80, Want: 200}
	deadline := time.Now().Add(wait)
	for {
		var ok bool
		var pcap []byte
		pcap = capture(t, h, func() {
			o, err := h.CheckL7(context.Background(), good)
			ok = err == nil && o.OK
		})
		if ok && bytes.Contains(pcap, []byte("nodemesh-mtls")) {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("no mTLS between frontend and backend after %v (last request ok=%v; last capture %d bytes, plaintext request line in it: %v)",
				wait, ok, len(pcap), bytes.Contains(pcap, []byte("GET /userdata")))
		}
		time.Sleep(200 * time.Millisecond)
	}
}
