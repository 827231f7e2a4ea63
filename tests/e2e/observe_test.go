package e2e_test

import (
	"context"
	"io"
	"net"
	"net/http"
	"os/exec"
	"regexp"
	"strconv"
	"strings"
	"testing"

	"github.com/nodemesh/nodemesh/tests/e2e"
)

// TestObservability drives allowed and denied flows through the seed
// policies and reads them back the ways users do: meshctl observe, status
// and endpoints against the real agents, and the agents' Prometheus metrics.
func TestObservability(t *testing.T) {
	h := seedCluster(t)
	expectSeedPolicy(t, h) // 2 allowed flows, 3 denied
	meshctl, err := e2e.MeshctlBinary()
	if err != nil {
		t.Fatal(err)
	}
	run := func(args ...string) string {
		t.Helper()
		out, err := exec.Command(meshctl, args...).CombinedOutput()
		if err != nil {
			t.Fatalf("meshctl %s: %v\n%s", strings.Join(args, " "), err, out)
		}
		return string(out)
	}

	// The destination's node recorded the ingress drop with pod names.
	out := run("observe", "--socket", h.Socket("node-2"), "--last", "-1", "--verdict", "dropped", "--to-pod", "default/backend")
	if !regexp.MustCompile(`default/other:\d+ -> default/backend:80 TCP\s+ingress DROPPED \(default-deny\)`).MatchString(out) {
		t.Errorf("observe on node-2 lacks the drop of other -> backend:80:\n%s", out)
	}
	if strings.Contains(out, "FORWARDED") {
		t.Errorf("--verdict dropped printed a forwarded event:\n%s", out)
	}
	// The source's node recorded backend's egress drop... on node-2 too
	// (backend is there), and node-1 the allowed new connections.
	out = run("observe", "--socket", h.Socket("node-1"), "--last", "-1", "--from-pod", "default/frontend", "-o", "json")
	if !strings.Contains(out, `"verdict":"forwarded"`) || !strings.Contains(out, `"pod":"backend"`) {
		t.Errorf("observe -o json on node-1 lacks frontend's forwarded connection to backend:\n%s", out)
	}
	out = run("endpoints", "--socket", h.Socket("node-2"))
	if !regexp.MustCompile(`default/backend\s+\S+\s+\d+\s+lxc\w+\s+ready\s+enforced\(1\)\s+enforced\(1\)`).MatchString(out) {
		t.Errorf("endpoints on node-2:\n%s", out)
	}
	out = run("status", "--socket", h.Socket("node-2"))
	for _, want := range []string{`\(healthy\)`, `3 policies, 1 local endpoints`, `ingress\s+dropped\s+default-deny\s+[1-9]`, `conntrack\s+[1-9]`} {
		if !regexp.MustCompile(want).MatchString(out) {
			t.Errorf("status on node-2 lacks %s:\n%s", want, out)
		}
	}

	// With seed 003's L7 rule, node-2's proxy configuration carries it.
	l7 := strings.Replace(seedPolicies, `toPorts: [{ports: [{port: "80", protocol: TCP}, {port: "9000", protocol: TCP}]}]`,
		`toPorts: [{ports: [{port: "80", protocol: TCP}], rules: {http: [{method: GET, path: "/userdata/[0-9]+"}]}}]`, 1)
	if _, err := h.SetPolicies(context.Background(), l7); err != nil {
		t.Fatal(err)
	}
	out = run("envoy", "config", "--socket", h.Socket("node-2"), "--type", "listeners")
	for _, want := range []string{`"nodemesh-inbound"`, `/userdata/[0-9]+`, `"transparent": true`} {
		if !strings.Contains(out, want) {
			t.Errorf("envoy config of node-2 lacks %s:\n%s", want, out)
		}
	}

	// Prometheus metrics, from the agent's metrics socket.
	client := &http.Client{Transport: &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
		return (&net.Dialer{}).DialContext(ctx, "unix", h.MetricsSocket("node-2"))
	}}}
	resp, err := client.Get("http://agent/metrics")
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	m := regexp.MustCompile(`nodemesh_datapath_packets_total\{direction="ingress",reason="default-deny",verdict="dropped"\} (\d+)`).FindStringSubmatch(string(body))
	if m == nil {
		t.Fatalf("metrics lack the ingress default-deny drop counter:\n%s", body)
	}
	if n, _ := strconv.Atoi(m[1]); n < 2 {
		t.Errorf("ingress default-deny drops: %d, want at least 2 (other and frontend:81 were denied)", n)
	}
	for _, want := range []string{"nodemesh_map_entries{map=\"ipcache\"}", "nodemesh_reconcile_duration_seconds_count", "nodemesh_endpoints{state=\"ready\"} 1"} {
		if !strings.Contains(string(body), want) {
			t.Errorf("metrics lack %s", want)
		}
	}
}
