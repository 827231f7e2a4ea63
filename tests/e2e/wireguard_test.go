package e2e_test

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"time"

	"github.com/nodemesh/nodemesh/agent"
	"github.com/nodemesh/nodemesh/tests/e2e"
	"github.com/nodemesh/nodemesh/tests/podtool"
	"github.com/nodemesh/nodemesh/tests/vcluster"
)

// wgCluster starts frontend and backend-near on node-1, backend on node-2,
// agents with --encryption wireguard, and waits until both nodes have
// handshaked with each other.
func wgCluster(t *testing.T) *e2e.Harness {
	t.Helper()
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
	h := startCluster(t, opts)
	waitHandshakes(t, h, 20*time.Second, time.Time{})
	return h
}

// waitHandshakes waits until each node has one peer with a handshake newer
// than since.
func waitHandshakes(t *testing.T, h *e2e.Harness, wait time.Duration, since time.Time) {
	t.Helper()
	deadline := time.Now().Add(wait)
	for _, n := range []string{"node-1", "node-2"} {
		for {
			st, err := encryptionStatus(h, n)
			if err == nil && len(st.Peers) == 1 && st.Peers[0].LastHandshake.After(since) {
				t.Logf("%s: peer %s at %s, handshake %s ago", n, st.Peers[0].Node, st.Peers[0].Endpoint, time.Since(st.Peers[0].LastHandshake).Round(time.Millisecond))
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("%s: no WireGuard handshake with the other node: %+v %v", n, st, err)
			}
			time.Sleep(200 * time.Millisecond)
		}
	}
}

// TestWireGuardBetweenNodes: with --encryption wireguard each agent makes
// its key, publishes it and peers with the other node; pod traffic between
// the nodes then crosses the underlay only as WireGuard UDP — a capture of
// the switch finds no TCP between pod addresses and not the payload sent —
// and so does L7-redirected traffic the node proxies originate (the
// request line never appears). Same-node traffic is untouched.
func TestWireGuardBetweenNodes(t *testing.T) {
	h := wgCluster(t)
	ctx := context.Background()
	deadline := time.Now()
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

// TestWireGuardRotationAndRestart: while HTTP keep-alive requests run
// between the nodes, node-1 rotates its key (meshctl encryption rotate-key)
// and node-2's agent is killed and restarted (its userspace device dies
// with it: the blackholes keep the gap from leaking, and the restarted agent
// reuses its key): no request fails, node-1's public key changed, node-2's
// did not.
func TestWireGuardRotationAndRestart(t *testing.T) {
	h := wgCluster(t)
	ctx := context.Background()
	meshctl, err := e2e.MeshctlBinary()
	if err != nil {
		t.Fatal(err)
	}
	before1, err := encryptionStatus(h, "node-1")
	if err != nil {
		t.Fatal(err)
	}
	before2, err := encryptionStatus(h, "node-2")
	if err != nil {
		t.Fatal(err)
	}
	frontend, backend := h.C.Pod("default", "frontend"), h.C.Pod("default", "backend")
	start := time.Now()
	done := make(chan error, 1)
	var r podtool.RRResult
	go func() {
		out, err := frontend.Exec(ctx, h.Podtool, "hrr", "--to", fmt.Sprintf("%s:80", backend.IP), "--duration", "14s", "--conns", "2")
		if jerr := json.Unmarshal(bytes.TrimSpace(out), &r); jerr != nil && err == nil {
			err = jerr
		}
		done <- err
	}()
	time.Sleep(3 * time.Second)
	out, err := exec.Command(meshctl, "encryption", "rotate-key", "--socket", h.Socket("node-1")).CombinedOutput()
	if err != nil {
		t.Fatalf("meshctl encryption rotate-key: %v: %s", err, out)
	}
	t.Logf("%s", bytes.TrimSpace(out))
	time.Sleep(3 * time.Second)
	if err := h.KillAgent("node-2"); err != nil {
		t.Fatal(err)
	}
	if err := h.StartAgent(ctx, "node-2"); err != nil {
		t.Fatal(err)
	}
	err = <-done
	t.Logf("load during rotation and restart: %d requests, %d failed, %.0f/s, p99 %d µs", r.Requests, r.Errors, r.RPS, r.P99us)
	if err != nil || r.Errors != 0 || r.Requests == 0 {
		t.Errorf("load: %+v %v: want no failed request", r, err)
	}
	after1, err := encryptionStatus(h, "node-1")
	if err != nil {
		t.Fatal(err)
	}
	after2, err := encryptionStatus(h, "node-2")
	if err != nil {
		t.Fatal(err)
	}
	if after1.PublicKey == before1.PublicKey {
		t.Error("node-1's public key did not change with the rotation")
	}
	if after2.PublicKey != before2.PublicKey {
		t.Error("node-2's agent restart made a new key")
	}
	// Both handshaked anew after the rotation (with node-1's new key).
	waitHandshakes(t, h, 10*time.Second, start.Add(3*time.Second))
}
