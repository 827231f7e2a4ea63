// Command demo runs the seed scenario on the virtual cluster for `make
// demo`: real agents enforce the seed policies with eBPF on real traffic
// between pods on two nodes, and each request is printed with its outcome,
// followed by the flow events the nodes recorded. It cleans up after itself.
package main

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"strings"
	"time"

	"github.com/nodemesh/nodemesh/tests/e2e"
	"github.com/nodemesh/nodemesh/tests/vcluster"
)

type request struct {
	from, to string
	port     int
	want     bool
	why      string
}

func main() {
	if why := vcluster.Unavailable(); why != "" {
		fmt.Println("demo: the virtual-cluster part needs", why, "- skipped")
		return
	}
	vcluster.CleanupOnSignal()
	code := run()
	vcluster.CloseAll()
	vcluster.RemovePodtool()
	e2e.RemoveBinaries()
	os.Exit(code)
}

func run() int {
	ctx := context.Background()
	step := func(s string) { fmt.Printf("\n== %s\n", s) }
	step("building nodemesh-agent, nodemesh-proxy, nodemesh-ca, meshctl and the pod tool; creating 2 nodes and 6 pods; mTLS permissive")
	h, err := e2e.Start(ctx, e2e.Options{
		Pods: []vcluster.PodConfig{
			{Name: "frontend", Node: "node-1", Labels: map[string]string{"app": "frontend", "role": "frontend"}, ServiceAccount: "frontend"},
			{Name: "other", Node: "node-1", Labels: map[string]string{"app": "other"}},
			{Name: "secret-a", Node: "node-1", Labels: map[string]string{"name": "secret-pods"}},
			{Name: "backend", Node: "node-2", Labels: map[string]string{"app": "backend", "role": "backend"}, ServiceAccount: "backend"},
			{Name: "backend-near", Node: "node-1", Labels: map[string]string{"app": "backend", "role": "backend"}, ServiceAccount: "backend"},
			{Name: "secret-b", Node: "node-2", Labels: map[string]string{"name": "secret-pods"}},
		},
		Serve: []string{"--tcp", "81,9000", "--http", "80,8080"},
		Log:   os.Stdout,
		// The built-in CA (nodemesh-ca) issues each workload's SVID; the
		// node proxies talk mTLS between nodes once they serve them.
		MTLS: "permissive",
	})
	if err != nil {
		fmt.Fprintln(os.Stderr, "demo:", err)
		return 1
	}
	defer h.Close()
	for _, p := range h.C.Pods() {
		fmt.Printf("  %-18s %-12s on %s\n", p.String(), p.IP, p.Node)
	}

	step("applying the seed policies (L3/L4) to both agents")
	took, err := h.SetPolicies(ctx, e2e.SeedPolicies)
	if err != nil {
		fmt.Fprintln(os.Stderr, "demo:", err)
		return 1
	}
	fmt.Printf("  enforced on both nodes %s after the file was written\n", took.Round(time.Millisecond))

	step("requests over real TCP between the pods")
	failed := 0
	for _, r := range []request{
		{"frontend", "backend", 9000, true, "seed 004 allows frontend -> backend:80 (and :9000, our load-test port)"},
		{"other", "backend", 9000, false, "backend only accepts frontend"},
		{"frontend", "backend", 81, false, "only ports 80 and 9000 are allowed"},
		{"backend", "frontend", 9000, false, "backend may not open connections (backend-no-egress)"},
		{"secret-a", "secret-b", 9000, true, "zero-trust: secret pods reach each other"},
		{"other", "secret-b", 9000, false, "zero-trust: nobody else reaches them"},
		{"secret-a", "frontend", 9000, false, "zero-trust: and they reach nobody else"},
		{"other", "frontend", 9000, true, "no policy selects frontend"},
	} {
		src, dst := h.C.Pod("default", r.from), h.C.Pod("default", r.to)
		res, err := h.Probe(ctx, src, "tcp", fmt.Sprintf("%s:%d", dst.IP, r.port), 500*time.Millisecond)
		got := err == nil && (res.OK || res.Reason == "refused")
		mark, outcome := "ok", "ALLOWED"
		if !got {
			outcome = "DROPPED"
		}
		if got != r.want {
			mark, failed = "UNEXPECTED", failed+1
		}
		fmt.Printf("  %-8s -> %-8s TCP/%-5d %-8s %-10s %s\n", r.from, r.to, r.port, outcome, mark, r.why)
	}

	meshctl, _ := e2e.MeshctlBinary()
	for _, n := range []string{"node-1", "node-2"} {
		step("meshctl observe --node " + n + " (flow events recorded by the datapath)")
		show(meshctl, "observe", "--socket", h.Socket(n), "--last", "12")
	}

	step("starting the node proxy (nodemesh-proxy) on both nodes; each takes its agent's xDS")
	for _, n := range []string{"node-1", "node-2"} {
		if _, err := h.StartProxy(ctx, n); err != nil {
			fmt.Fprintln(os.Stderr, "demo:", err)
			return 1
		}
	}
	l7 := []struct{ name, policies, enforcer, node string }{
		{"the L7 rule as seed 004+003 write it: an ingress rule of the backend", e2e.SeedL7Ingress, "the backend's node proxy", "node-2"},
		{"the same rule as an egress rule of the frontend", e2e.SeedL7Egress, "the frontend's node proxy", "node-1"},
	}
	for _, c := range l7 {
		step("applying " + c.name)
		if _, err := h.SetPolicies(ctx, c.policies); err != nil {
			fmt.Fprintln(os.Stderr, "demo:", err)
			return 1
		}
		if err := waitProxies(ctx, h); err != nil {
			fmt.Fprintln(os.Stderr, "demo:", err)
			return 1
		}
		for _, backend := range []string{"backend-near", "backend"} {
			where := "same node"
			if h.C.Pod("default", backend).Node != h.C.Pod("default", "frontend").Node {
				where = "other node"
			}
			fmt.Printf("  -- %s (%s, enforced by %s)\n", backend, where, c.enforcer)
			for _, r := range e2e.SeedL7Requests(backend) {
				failed += l7Line(ctx, h, r)
			}
		}
		time.Sleep(1500 * time.Millisecond) // the proxy's access log is sent in batches
		fmt.Printf("  $ meshctl observe --node %s --l7 --to-pod default/backend --last 3   (the proxy's access log)\n", c.node)
		show(meshctl, "observe", "--socket", h.Socket(c.node), "--l7", "--to-pod", "default/backend", "--last", "3")
	}
	step("meshctl observe --node node-1 --last 8 (the datapath's redirects to the proxy)")
	show(meshctl, "observe", "--socket", h.Socket("node-1"), "--last", "8")

	step("killing node-1's proxy: covered requests fail closed, never around the rule")
	if err := h.KillProxy("node-1"); err != nil {
		fmt.Fprintln(os.Stderr, "demo:", err)
		return 1
	}
	down := e2e.L7Request{From: "frontend", To: "backend", Method: "GET", Path: "/userdata/42", Port: 80, Want: 0, Why: "no proxy: dropped (proxy-unavailable)"}
	failed += l7Line(ctx, h, down)
	show(meshctl, "observe", "--socket", h.Socket("node-1"), "--last", "1", "--verdict", "dropped")
	step("restarting node-1's proxy (the agent keeps running)")
	if _, err := h.StartProxy(ctx, "node-1"); err != nil {
		fmt.Fprintln(os.Stderr, "demo:", err)
		return 1
	}
	up := down
	up.Want, up.Why = 200, "served again"
	failed += l7Retry(ctx, h, up, 10*time.Second)
	show(meshctl, "status", "--socket", h.Socket("node-1"))

	failed += demoMTLS(ctx, h, meshctl)

	step("cleaning up the virtual cluster")
	if failed > 0 {
		fmt.Printf("demo: %d outcomes were not as expected\n", failed)
		return 1
	}
	fmt.Println("demo: every outcome as expected")
	return 0
}

// demoMTLS shows mTLS between the node proxies: the workloads' SVIDs, the
// frontend's requests to the backend on the other node captured on the
// underlay (TLS offering nodemesh-mtls, no request line in the clear), the
// backend node's connection events and the secrets served to a proxy
// (keys redacted). It returns the number of unexpected outcomes.
func demoMTLS(ctx context.Context, h *e2e.Harness, meshctl string) int {
	step := func(s string) { fmt.Printf("\n== %s\n", s) }
	step("mTLS between the node proxies: each workload's SVID from the built-in CA (meshctl identities)")
	for _, n := range []string{"node-1", "node-2"} {
		fmt.Printf("  $ meshctl identities --node %s\n", n)
		show(meshctl, "identities", "--socket", h.Socket(n))
	}
	step("the L7 rule back on the backend; frontend -> backend (other node) while tcpdump listens on the underlay switch")
	failed := 0
	if _, err := h.SetPolicies(ctx, e2e.SeedL7Ingress); err != nil {
		fmt.Fprintln(os.Stderr, "demo:", err)
		return 1
	}
	if err := waitProxies(ctx, h); err != nil {
		fmt.Fprintln(os.Stderr, "demo:", err)
		return 1
	}
	capture, err := h.CaptureUnderlay(ctx)
	if err != nil {
		fmt.Fprintln(os.Stderr, "demo:", err)
		return 1
	}
	for _, r := range e2e.SeedL7Requests("backend")[:3] {
		failed += l7Line(ctx, h, r)
	}
	pcap, err := capture.Stop()
	if err != nil {
		fmt.Fprintln(os.Stderr, "demo:", err)
		return 1
	}
	hellos, plain := bytes.Count(pcap, []byte("nodemesh-mtls")), bytes.Contains(pcap, []byte("/userdata"))
	mark := "ok"
	if hellos < 3 || plain {
		mark, failed = "UNEXPECTED", failed+1
	}
	fmt.Printf("  underlay: %d bytes captured; ALPN nodemesh-mtls seen %d times (TLS ClientHellos; each packet crosses two switch ports); a request line in the clear: %v   %s\n",
		len(pcap), hellos, plain, mark)
	time.Sleep(1500 * time.Millisecond) // access log entries are sent in batches
	step("meshctl observe --node node-2 --l7 --last 3 (the backend's proxy: each request with the client's SPIFFE ID)")
	show(meshctl, "observe", "--socket", h.Socket("node-2"), "--l7", "--last", "3")
	echo, err := h.Probe(ctx, h.C.Pod("default", "secret-a"), "tcp", fmt.Sprintf("%s:9000", h.C.Pod("default", "secret-b").IP), time.Second)
	if err != nil || !echo.OK {
		fmt.Printf("  secret-a -> secret-b:9000 (zero-trust allows it): %+v %v   UNEXPECTED\n", echo, err)
		failed++
	}
	time.Sleep(1500 * time.Millisecond)
	step("meshctl observe --node node-2 --mtls --last 1 (an L4 connection, secret-a -> secret-b, through both proxies: peer, TLS version, bytes)")
	show(meshctl, "observe", "--socket", h.Socket("node-2"), "--mtls", "--last", "1")
	step("meshctl envoy config --node node-1 --type secrets (SDS: certificates shown, private keys never)")
	out, _ := exec.Command(meshctl, "envoy", "config", "--socket", h.Socket("node-1"), "--type", "secrets").CombinedOutput()
	lines := strings.Split(string(out), "\n")
	for _, l := range lines[:min(len(lines), 24)] {
		fmt.Println("  " + l)
	}
	fmt.Printf("  ... (%d lines)\n", len(lines))
	if bytes.Contains(out, []byte("PRIVATE KEY")) || !bytes.Contains(out, []byte("[redacted]")) {
		fmt.Println("  UNEXPECTED: a private key in the dump, or nothing redacted")
		failed++
	}
	return failed
}

func show(bin string, args ...string) {
	out, err := exec.Command(bin, args...).CombinedOutput()
	for _, l := range strings.Split(strings.TrimRight(string(out), "\n"), "\n") {
		fmt.Println("  " + l)
	}
	if err != nil {
		fmt.Println("  (", err, ")")
	}
}

// l7Line sends one request of the L7 scenario and prints it with its
// outcome; it returns 1 when the outcome is not the wanted one.
func l7Line(ctx context.Context, h *e2e.Harness, r e2e.L7Request) int {
	o, err := h.CheckL7(ctx, r)
	mark := "ok"
	if err != nil || !o.OK {
		mark = "UNEXPECTED"
	}
	fmt.Printf("  %-12s -> %-12s %-4s %-14s %-22s %-10s %s\n", r.From, r.To+":"+fmt.Sprint(r.Port), r.Method, r.Path, o.String(), mark, r.Why)
	if mark != "ok" {
		return 1
	}
	return 0
}

// l7Retry is l7Line retried for up to wait (a proxy starting up).
func l7Retry(ctx context.Context, h *e2e.Harness, r e2e.L7Request, wait time.Duration) int {
	deadline := time.Now().Add(wait)
	for {
		if o, err := h.CheckL7(ctx, r); (err == nil && o.OK) || time.Now().After(deadline) {
			return l7Line(ctx, h, r)
		}
		fmt.Printf("  waiting for the proxy (%s)...\n", time.Until(deadline).Round(time.Second))
		time.Sleep(500 * time.Millisecond)
	}
}

// waitProxies waits until both nodes' proxies have ACKed the configuration
// in force and the agents redirect to them.
func waitProxies(ctx context.Context, h *e2e.Harness) error {
	deadline := time.Now().Add(15 * time.Second)
	for _, n := range []string{"node-1", "node-2"} {
		for {
			st, err := h.Status(ctx, n)
			if err == nil && st.ProxyAcked && st.ProxyInboundPort != 0 {
				fmt.Printf("  %s: proxy ACKed configuration %s; redirecting to :%d/:%d\n", n, st.ProxyConfig, st.ProxyInboundPort, st.ProxyOutboundPort)
				break
			}
			if time.Now().After(deadline) {
				return fmt.Errorf("the proxy of %s has not ACKed its configuration: %+v %v", n, st, err)
			}
			time.Sleep(100 * time.Millisecond)
		}
	}
	return nil
}
