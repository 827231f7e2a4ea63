package e2e_test

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/nodemesh/nodemesh/agent"
	"github.com/nodemesh/nodemesh/tests/e2e"
	"github.com/nodemesh/nodemesh/tests/vcluster"
)

// TestWireGuardBetweenNodes: with --encryption wireguard each agent makes
// its key, publishes it and peers with the other node; pod traffic between
// the nodes then crosses the underlay only as WireGuard UDP — a capture of
// the switch finds no TCP between pod addresses and not the payload sent —
// and so does L7-redirected traffic the node proxies originate (the
// request line never appears). Same-node traffic is untouched.
func TestWireGuardBetweenNodes(t *testing.T) {
	vcluster.RequireCluster(t)
	opts := e2e.Options{
		Pods: []vcluster.PodConfig{
			{Name: "frontend", Node: "node-1", Labels: map[string]string{"app": "frontend"}},
			{Name: "backend", Node: "node-2", Labels: map[string]string{"app": "backend"}},
			{Name: "backend-near", Node: "node-1", Labels: map[string]string{"app": "backend"}},
		},
		Serve:     []string{"--http", "80", "--tcp", "81"},
		WireGuard: true,
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
			for _, n := range []string{"node-1", "node-2"} {
				t.Logf("agent of %s:\n%s", n, h.AgentStderr(n))
			}
		}
	})
	ctx := context.Background()
	// Both nodes peer and handshake.
	deadline := time.Now().Add(20 * time.Second)
	for _, n := range []string{"node-1", "node-2"} {
		for {
			st, err := encryptionStatus(h, n)
			if err == nil && len(st.Peers) == 1 && !st.Peers[0].LastHandshake.IsZero() {
				t.Logf("%s: peer %s at %s, handshake %s ago", n, st.Peers[0].Node, st.Peers[0].Endpoint, time.Since(st.Peers[0].LastHandshake).Round(time.Millisecond))
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("%s: no WireGuard handshake with the other node: %+v %v", n, st, err)
			}
			time.Sleep(200 * time.Millisecond)
		}
	}

	frontend, backend, near := h.C.Pod("default", "frontend"), h.C.Pod("default", "backend"), h.C.Pod("default", "backend-near")
	secret := fmt.Sprintf("nodemesh-wg-secret-%d", time.Now().UnixNano())
	var far, local bool
	tcp := capture(t, h, func() {
		res, err := frontend.Exec(ctx, h.Podtool, "connect", "--proto", "tcp", "--to", fmt.Sprintf("%s:81", backend.IP), "--payload", secret, "--count", "5")
		far = err == nil
		t.Logf("frontend -> backend:81 (other node): %s %v", bytes.TrimSpace(res), err)
		res, err = frontend.Exec(ctx, h.Podtool, "connect", "--proto", "tcp", "--to", fmt.Sprintf("%s:81", near.IP), "--payload", secret, "--count", "5")
		local = err == nil
		t.Logf("frontend -> backend-near:81 (same node): %s %v", bytes.TrimSpace(res), err)
	})
	if !far || !local {
		t.Fatalf("echo between pods failed: other node %v, same node %v", far, local)
	}
	if bytes.Contains(tcp, []byte(secret)) {
		t.Error("the payload crossed the underlay in plaintext")
	}
	if bytes.Contains(tcp, backend.IP.AsSlice()) {
		t.Error("a TCP packet with the backend pod's address crossed the underlay (outside the tunnel)")
	}
	wgCap, err := h.CaptureUnderlayFilter(ctx, "udp port 51871")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := frontend.Exec(ctx, h.Podtool, "connect", "--proto", "tcp", "--to", fmt.Sprintf("%s:81", backend.IP), "--payload", secret); err != nil {
		t.Fatal(err)
	}
	udp, err := wgCap.Stop()
	if err != nil {
		t.Fatal(err)
	}
	if len(udp) < 500 {
		t.Errorf("only %d bytes of WireGuard UDP on the underlay while pods talked across nodes", len(udp))
	}

	// A node whose key is not known: pod traffic to it is dropped, with
	// its reason, not sent in plaintext; once the key is back, it flows.
	keyFile := filepath.Join(h.Dir, "wireguard-keys", "node-2.json")
	saved, err := os.ReadFile(keyFile)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.Remove(keyFile); err != nil {
		t.Fatal(err)
	}
	deadline = time.Now().Add(10 * time.Second)
	for {
		st, err := encryptionStatus(h, "node-1")
		if err == nil && len(st.Missing) == 1 && st.Missing[0] == "node-2" {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("node-1 did not notice node-2's key was gone: %+v %v", st, err)
		}
		time.Sleep(100 * time.Millisecond)
	}
	res, err := h.Probe(ctx, frontend, "tcp", fmt.Sprintf("%s:81", backend.IP), 500*time.Millisecond)
	if err != nil || res.OK || res.Reason != "timeout" {
		t.Errorf("frontend -> backend without node-2's key: %+v %v, want dropped (timeout)", res, err)
	}
	expectDropReason(t, h, "node-1", frontend.IP.String(), "encryption-unavailable")
	if err := os.WriteFile(keyFile, saved, 0o644); err != nil {
		t.Fatal(err)
	}
	deadline = time.Now().Add(10 * time.Second)
	for {
		res, err := h.Probe(ctx, frontend, "tcp", fmt.Sprintf("%s:81", backend.IP), 500*time.Millisecond)
		if err == nil && res.OK {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("frontend -> backend after node-2's key came back: %+v %v", res, err)
		}
		time.Sleep(200 * time.Millisecond)
	}

	// Traffic the node proxies originate is in the tunnel too.
	for _, n := range []string{"node-1", "node-2"} {
		if _, err := h.StartProxy(ctx, n); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := h.SetPolicies(ctx, e2e.SeedL7Egress); err != nil {
		t.Fatal(err)
	}
	good := e2e.L7Request{From: "frontend", To: "backend", Method: "GET", Path: "/userdata/42", Port: 80, Want: 200}
	expectL7(t, h, good, 15*time.Second)
	l7 := capture(t, h, func() { expectL7(t, h, good, 5*time.Second) })
	if bytes.Contains(l7, []byte("/userdata/42")) {
		t.Error("the egress proxy's upstream request crossed the underlay in plaintext")
	}
}

// expectDropReason waits for a dropped flow event on node from src with
// reason.
func expectDropReason(t *testing.T, h *e2e.Harness, node, src, reason string) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	var seen []string
	for time.Now().Before(deadline) {
		c, err := agent.Dial(h.Socket(node))
		if err != nil {
			t.Fatal(err)
		}
		seen = nil
		found := false
		err = c.Observe(context.Background(), &agent.ObserveRequest{Last: 200, Verdict: "dropped"}, func(e *agent.FlowEvent) error {
			if e.Src.IP == src {
				seen = append(seen, e.Reason)
				found = found || e.Reason == reason
			}
			return nil
		})
		c.Close()
		if err != nil {
			t.Fatal(err)
		}
		if found {
			return
		}
		time.Sleep(200 * time.Millisecond)
	}
	t.Errorf("%s: no dropped event from %s with reason %s (saw %q)", node, src, reason, seen)
}

func encryptionStatus(h *e2e.Harness, node string) (*agent.EncryptionStatus, error) {
	c, err := agent.Dial(h.Socket(node))
	if err != nil {
		return nil, err
	}
	defer c.Close()
	return c.Encryption(context.Background())
}
