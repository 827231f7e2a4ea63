// Command demo runs the seed scenario on the virtual cluster for `make
// demo`: real agents enforce the seed policies with eBPF on real traffic
// between pods on two nodes, and each request is printed with its outcome,
// followed by the flow events the nodes recorded. It cleans up after itself.
package main

import (
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
	step("building nodemesh-agent, meshctl and the pod tool; creating 2 nodes and 5 pods")
	h, err := e2e.Start(ctx, e2e.Options{
		Pods: []vcluster.PodConfig{
			{Name: "frontend", Node: "node-1", Labels: map[string]string{"app": "frontend", "role": "frontend"}},
			{Name: "other", Node: "node-1", Labels: map[string]string{"app": "other"}},
			{Name: "secret-a", Node: "node-1", Labels: map[string]string{"name": "secret-pods"}},
			{Name: "backend", Node: "node-2", Labels: map[string]string{"app": "backend", "role": "backend"}},
			{Name: "secret-b", Node: "node-2", Labels: map[string]string{"name": "secret-pods"}},
		},
		Log: os.Stdout,
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
		{"frontend", "backend", 80, true, "seed 004 allows frontend -> backend:80"},
		{"other", "backend", 80, false, "backend only accepts frontend"},
		{"frontend", "backend", 81, false, "only port 80 is allowed"},
		{"backend", "frontend", 80, false, "backend may not open connections (backend-no-egress)"},
		{"secret-a", "secret-b", 80, true, "zero-trust: secret pods reach each other"},
		{"other", "secret-b", 80, false, "zero-trust: nobody else reaches them"},
		{"secret-a", "frontend", 80, false, "zero-trust: and they reach nobody else"},
		{"other", "frontend", 80, true, "no policy selects frontend"},
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
		fmt.Printf("  %-8s -> %-8s TCP/%d  %-8s %-10s %s\n", r.from, r.to, r.port, outcome, mark, r.why)
	}

	meshctl, _ := e2e.MeshctlBinary()
	for _, n := range []string{"node-1", "node-2"} {
		step("meshctl observe --node " + n + " (flow events recorded by the datapath)")
		show(meshctl, "observe", "--socket", h.Socket(n), "--last", "-1")
	}
	step("meshctl endpoints --node node-2")
	show(meshctl, "endpoints", "--socket", h.Socket("node-2"))

	step("the L7 rule of seed 003 (GET /userdata/[0-9]+) needs the node proxy (issue 4)")
	l7 := strings.Replace(e2e.SeedPolicies, `toPorts: [{ports: [{port: "80", protocol: TCP}, {port: "9000", protocol: TCP}]}]`,
		`toPorts: [{ports: [{port: "80", protocol: TCP}], rules: {http: [{method: GET, path: "/userdata/[0-9]+"}]}}]`, 1)
	if _, err := h.SetPolicies(ctx, l7); err != nil {
		fmt.Fprintln(os.Stderr, "demo:", err)
		return 1
	}
	fe, be := h.C.Pod("default", "frontend"), h.C.Pod("default", "backend")
	res, err := h.Probe(ctx, fe, "tcp", be.IP.String()+":80", 500*time.Millisecond)
	dropped := err == nil && !res.OK && res.Reason != "refused"
	fmt.Printf("  frontend -> backend TCP/80 with an L7 rule and no proxy yet: dropped=%v (fail closed: never around the L7 rule)\n", dropped)
	if !dropped {
		failed++
	}
	show(meshctl, "observe", "--socket", h.Socket("node-2"), "--last", "3", "--to-pod", "default/backend")

	step("cleaning up the virtual cluster")
	if failed > 0 {
		fmt.Printf("demo: %d outcomes were not as expected\n", failed)
		return 1
	}
	fmt.Println("demo: every outcome as expected")
	return 0
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
