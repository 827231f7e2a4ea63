package vcluster_test

import (
	"context"
	"encoding/json"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nodemesh/nodemesh/api"
	"github.com/nodemesh/nodemesh/tests/podtool"
	"github.com/nodemesh/nodemesh/tests/vcluster"
)

// fourPods is 2 nodes × 2 pods in two namespaces.
var fourPods = []vcluster.PodConfig{
	{Namespace: "default", Name: "a", Node: "node-1", Labels: map[string]string{"app": "a"},
		Ports: []vcluster.Port{{Name: "http", Port: httpPort}, {Name: "echo", Port: tcpPort}}, ServiceAccount: "sa-a"},
	{Namespace: "default", Name: "b", Node: "node-2", Labels: map[string]string{"app": "b"},
		Ports: []vcluster.Port{{Name: "http", Port: httpPort}, {Name: "dns", Port: udpPort, Protocol: "UDP"}}},
	{Namespace: "other", Name: "c", Node: "node-1", Labels: map[string]string{"app": "c"}},
	{Namespace: "other", Name: "d", Node: "node-2", Labels: map[string]string{"app": "d"}},
}

func TestConnectivity(t *testing.T) {
	c := vcluster.NewForTest(t, vcluster.Config{NamespaceLabels: map[string]map[string]string{"other": {"team": "other"}}})
	tool := vcluster.BuildPodtool(t)
	var pods []*vcluster.Pod
	for _, pc := range fourPods {
		pods = append(pods, vcluster.AddPodForTest(t, c, pc))
	}
	for _, p := range pods {
		serve(t, tool, p)
	}
	for _, n := range c.Nodes() {
		proc, err := n.Start(context.Background(), tool, "serve", "--tcp", fmt.Sprint(tcpPort), "--max-lifetime", "2m")
		if err != nil {
			t.Fatal(err)
		}
		if err := proc.WaitReady(context.Background()); err != nil {
			t.Fatal(err)
		}
	}

	t.Run("mesh", func(t *testing.T) {
		for _, src := range pods {
			for _, dst := range pods {
				if src == dst {
					continue
				}
				t.Run(src.String()+"->"+dst.String(), func(t *testing.T) {
					t.Parallel()
					for _, proto := range []string{"tcp", "udp"} {
						port := map[string]int{"tcp": tcpPort, "udp": udpPort}[proto]
						if res := connect(t, tool, src, proto, addr(dst.IP, port), "--count", "3"); !res.OK || res.Rounds != 3 {
							t.Errorf("%s to %s: %+v", proto, dst, res)
						}
					}
					res := httpGet(t, tool, src, fmt.Sprintf("http://%s/hello", addr(dst.IP, httpPort)))
					if res.Status != 200 || res.Pod != dst.Name || res.Body != fmt.Sprintf("pod=%s method=GET path=/hello from=%s\n", dst.Name, src.IP) {
						t.Errorf("http to %s: %+v", dst, res)
					}
				})
			}
		}
	})

	t.Run("pod to node underlay", func(t *testing.T) {
		for _, p := range pods {
			for _, n := range c.Nodes() {
				if res := connect(t, tool, p, "tcp", addr(n.IP, tcpPort)); !res.OK {
					t.Errorf("%s to node %s (%s): %+v", p, n.Name, n.IP, res)
				}
			}
		}
	})

	t.Run("node to pod", func(t *testing.T) {
		for _, n := range c.Nodes() {
			for _, p := range pods {
				if res := connect(t, tool, nodeExec{n}, "tcp", addr(p.IP, tcpPort)); !res.OK {
					t.Errorf("node %s to %s: %+v", n.Name, p, res)
				}
			}
		}
	})

	t.Run("failures are told apart", func(t *testing.T) {
		a, b := pods[0], pods[1]
		for _, tc := range []struct {
			name, proto, to, want string
		}{
			{"closed TCP port", "tcp", addr(b.IP, 7999), podtool.ReasonRefused},
			{"closed UDP port", "udp", addr(b.IP, 7999), podtool.ReasonRefused},
			{"no pod at the address", "tcp", addr(netip.MustParseAddr("10.0.2.250"), tcpPort), podtool.ReasonUnreachable},
			{"outside every pod CIDR", "tcp", addr(netip.MustParseAddr("10.99.0.1"), tcpPort), podtool.ReasonUnreachable},
		} {
			if res := connect(t, tool, a, tc.proto, tc.to); res.OK || res.Reason != tc.want {
				t.Errorf("%s: got %+v, want reason %q", tc.name, res, tc.want)
			}
		}
	})

	t.Run("rr and bulk across nodes", func(t *testing.T) {
		a, d := pods[0], pods[3]
		var wg sync.WaitGroup
		var rrOut, bulkOut []byte
		var rrErr, bulkErr error
		wg.Add(2)
		go func() {
			defer wg.Done()
			rrOut, rrErr = a.Exec(context.Background(), tool, "rr", "--to", addr(d.IP, rrPort), "--duration", "1s", "--conns", "4")
		}()
		go func() {
			defer wg.Done()
			bulkOut, bulkErr = pods[2].Exec(context.Background(), tool, "bulk", "--to", addr(pods[1].IP, bulkPort), "--duration", "1s")
		}()
		wg.Wait()
		var rr podtool.RRResult
		if err := json.Unmarshal(rrOut, &rr); rrErr != nil || err != nil || !rr.OK || rr.RPS < 100 || rr.P50us <= 0 || rr.P99us < rr.P50us {
			t.Errorf("rr: %s %v %v", rrOut, rrErr, err)
		}
		var bulk podtool.BulkResult
		if err := json.Unmarshal(bulkOut, &bulk); bulkErr != nil || err != nil || !bulk.OK || bulk.BitsPerS < 1e6 {
			t.Errorf("bulk: %s %v %v", bulkOut, bulkErr, err)
		}
		t.Logf("rr %s\nbulk %s", strings.TrimSpace(string(rrOut)), strings.TrimSpace(string(bulkOut)))
	})

	t.Run("sctp", func(t *testing.T) {
		res := connect(t, tool, pods[0], "sctp", addr(pods[1].IP, sctpPort))
		if res.Reason == podtool.ReasonUnsupported {
			if podtool.SCTPSupported() {
				t.Fatalf("the kernel has SCTP here but not in the pod: %+v", res)
			}
			t.Skip("kernel without SCTP (CONFIG_IP_SCTP): serve skipped the port, connect exits 3")
		}
		if !res.OK {
			t.Errorf("sctp: %+v", res)
		}
	})

	t.Run("programs run in their cgroup", func(t *testing.T) {
		check := func(who string, e execer, dir string) {
			out, err := e.Exec(context.Background(), "cat", "/proc/self/cgroup")
			if err != nil {
				t.Fatal(err)
			}
			rel, _ := filepath.Rel(vcluster.Cgroup2Mount, dir)
			if want := "0::/" + rel; !strings.Contains(string(out), want+"\n") {
				t.Errorf("%s: /proc/self/cgroup has no %q:\n%s", who, want, out)
			}
		}
		for _, p := range pods {
			check(p.String(), p, p.CgroupPath)
			if filepath.Dir(p.CgroupPath) != c.Node(p.Node).CgroupPath {
				t.Errorf("pod %s cgroup %s is not below its node's %s", p, p.CgroupPath, c.Node(p.Node).CgroupPath)
			}
		}
		for _, n := range c.Nodes() {
			check("node "+n.Name, nodeExec{n}, n.HostCgroupPath)
		}
	})

	t.Run("root namespace untouched", func(t *testing.T) {
		requireRootClean(t, c)
	})
}

func TestWorldYAML(t *testing.T) {
	c := vcluster.NewForTest(t, vcluster.Config{NamespaceLabels: map[string]map[string]string{"other": {"team": "other"}, "empty": nil}})
	for _, pc := range fourPods {
		vcluster.AddPodForTest(t, c, pc)
	}
	y := c.WorldYAML()
	var w api.World
	if err := api.DecodeWorld("world.yaml", y, &w); err != nil {
		t.Fatalf("%v\n%s", err, y)
	}
	if err := w.Check(); err != nil {
		t.Fatal(err)
	}
	f := filepath.Join(t.TempDir(), "world.yaml")
	if err := os.WriteFile(f, y, 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := api.LoadWorld(f); err != nil {
		t.Fatalf("LoadWorld: %v", err)
	}
	if len(w.Namespaces) != 3 || len(w.Nodes) != 2 || len(w.Pods) != 4 {
		t.Fatalf("decoded %d namespaces, %d nodes, %d pods:\n%s", len(w.Namespaces), len(w.Nodes), len(w.Pods), y)
	}
	for _, ns := range w.Namespaces {
		if ns.Metadata.Labels["kubernetes.io/metadata.name"] != ns.Metadata.Name {
			t.Errorf("namespace %s labels %v", ns.Metadata.Name, ns.Metadata.Labels)
		}
		if ns.Metadata.Name == "other" && ns.Metadata.Labels["team"] != "other" {
			t.Errorf("namespace other lost its labels: %v", ns.Metadata.Labels)
		}
	}
	for _, n := range w.Nodes {
		cn := c.Node(n.Metadata.Name)
		if cn == nil || n.Spec.PodCIDR != cn.PodCIDR.String() || len(n.Spec.PodCIDRs) != 1 ||
			len(n.Status.Addresses) == 0 || n.Status.Addresses[0] != (api.NodeAddress{Type: "InternalIP", Address: cn.IP.String()}) {
			t.Errorf("node %+v", n)
		}
	}
	for _, p := range w.Pods {
		cp := c.Pod(p.Metadata.Namespace, p.Metadata.Name)
		if cp == nil {
			t.Errorf("pod %s/%s is not in the cluster", p.Metadata.Namespace, p.Metadata.Name)
			continue
		}
		if p.Spec.NodeName != cp.Node || p.Status.PodIP != cp.IP.String() || p.Metadata.Labels["app"] != cp.Labels["app"] ||
			p.Spec.ServiceAccountName != cp.ServiceAccount {
			t.Errorf("pod %s: %+v", cp, p)
		}
		var ports []vcluster.Port
		for _, ctr := range p.Spec.Containers {
			for _, cport := range ctr.Ports {
				ports = append(ports, vcluster.Port{Name: cport.Name, Port: uint16(cport.ContainerPort), Protocol: cport.Protocol})
			}
		}
		if len(ports) != len(cp.Ports) {
			t.Errorf("pod %s ports %v, want %v", cp, ports, cp.Ports)
			continue
		}
		for i := range ports {
			want := cp.Ports[i]
			if want.Protocol == "" {
				want.Protocol = "TCP"
			}
			if ports[i] != want {
				t.Errorf("pod %s port %d: %v, want %v", cp, i, ports[i], want)
			}
		}
	}
}

func TestCloseRemovesEverything(t *testing.T) {
	vcluster.RequireCluster(t)
	tool := vcluster.BuildPodtool(t)
	c, err := vcluster.New(context.Background(), vcluster.Config{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	inodes := map[uint64]string{}
	var pids []int
	for _, pc := range fourPods {
		p := vcluster.AddPodForTest(t, c, pc)
		pids = append(pids, serve(t, tool, p).Pid())
		inodes[netnsInode(t, p.NetnsPath)] = p.NetnsName
	}
	for _, n := range c.Nodes() {
		inodes[netnsInode(t, n.NetnsPath)] = n.NetnsName
		dir, err := n.BPFFSDir()
		if err != nil {
			t.Fatal(err)
		}
		if want := filepath.Join(vcluster.BPFFSMount, "nodemesh-"+c.Name(), n.Name); dir != want {
			t.Errorf("BPFFSDir %s, want %s", dir, want)
		}
		if err := os.Mkdir(filepath.Join(dir, "pins"), 0o755); err != nil {
			t.Fatal(err)
		}
		proc, err := n.Start(context.Background(), "sleep", "60")
		if err != nil {
			t.Fatal(err)
		}
		pids = append(pids, proc.Pid())
	}
	inodes[netnsInode(t, filepath.Join("/run/netns", c.SwitchNetns()))] = c.SwitchNetns()
	if got := len(objects(t, c.Name())); got != 1+2+4+3 { // switch, nodes, pods; cgroup, bpffs, state
		t.Fatalf("before Close: %d objects: %v", got, objects(t, c.Name()))
	}
	if len(tasksInNetns(inodes)) == 0 {
		t.Fatal("no task found in the cluster's namespaces before Close: the check after it would prove nothing")
	}

	start := time.Now()
	if err := c.Close(); err != nil {
		t.Fatal(err)
	}
	t.Logf("Close took %v", time.Since(start))
	requireGone(t, c.Name())
	for _, pid := range pids {
		if alive(pid) {
			t.Errorf("process %d still runs", pid)
		}
	}
	if left := tasksInNetns(inodes); len(left) > 0 {
		t.Errorf("tasks still in the cluster's namespaces: %v", left)
	}
	requireRootClean(t, c)
	if err := c.Close(); err != nil {
		t.Errorf("second Close: %v", err)
	}
	if _, err := c.AddPod(context.Background(), vcluster.PodConfig{Name: "late", Node: "node-1"}); err == nil {
		t.Error("AddPod after Close succeeded")
	}
	requireGone(t, c.Name())
}

func TestConcurrentClusters(t *testing.T) {
	vcluster.RequireCluster(t)
	tool := vcluster.BuildPodtool(t)
	base := vcluster.RandomName()
	names := []string{base + "-x", base + "-y"}
	clusters := make([]*vcluster.Cluster, 2)
	errs := make([]error, 2)
	var wg sync.WaitGroup
	for i, name := range names {
		wg.Add(1)
		go func() {
			defer wg.Done()
			// Same nodes, pod CIDRs and pod addresses in both: only the
			// namespaces keep them apart.
			c, err := vcluster.New(context.Background(), vcluster.Config{Name: name})
			if err != nil {
				errs[i] = err
				return
			}
			clusters[i] = c
			for _, pc := range []vcluster.PodConfig{
				{Name: "client", Node: "node-1"},
				{Name: "server-" + name[len(name)-1:], Node: "node-2", IP: netip.MustParseAddr("10.0.2.7")},
			} {
				if _, err := c.AddPod(context.Background(), pc); err != nil {
					errs[i] = err
					return
				}
			}
		}()
	}
	wg.Wait()
	for i, c := range clusters {
		if c != nil {
			t.Cleanup(func() { c.Close() })
		}
		if errs[i] != nil {
			t.Fatal(errs[i])
		}
	}
	check := func(c *vcluster.Cluster, want string) {
		t.Helper()
		res := httpGet(t, tool, c.Pod("default", "client"), "http://10.0.2.7:8080/")
		if res.Status != 200 || res.Pod != want {
			t.Errorf("cluster %s: client reached %+v, want pod %s", c.Name(), res, want)
		}
	}
	for _, c := range clusters {
		for _, p := range c.Pods() {
			if strings.HasPrefix(p.Name, "server") {
				serve(t, tool, p)
			}
		}
	}
	check(clusters[0], "server-x")
	check(clusters[1], "server-y")
	if err := clusters[0].Close(); err != nil {
		t.Fatal(err)
	}
	requireGone(t, names[0])
	check(clusters[1], "server-y")
	if len(objects(t, names[1])) == 0 {
		t.Error("closing one cluster removed the other")
	}
}

func TestDeletePod(t *testing.T) {
	c := vcluster.NewForTest(t, vcluster.Config{})
	tool := vcluster.BuildPodtool(t)
	client := vcluster.AddPodForTest(t, c, vcluster.PodConfig{Name: "client", Node: "node-1"})
	p := vcluster.AddPodForTest(t, c, vcluster.PodConfig{Name: "victim", Node: "node-2", Labels: map[string]string{"app": "v"}})
	srv := serve(t, tool, p)
	if res := connect(t, tool, client, "tcp", addr(p.IP, tcpPort)); !res.OK {
		t.Fatalf("before delete: %+v", res)
	}
	node := c.Node("node-2")
	if node.HostVeth(p) != p.HostIfname || len(p.HostIfname) > 15 || c.Node("node-1").HostVeth(p) != "" {
		t.Fatalf("host veth %q (node-2 says %q)", p.HostIfname, node.HostVeth(p))
	}

	if err := c.DeletePod(context.Background(), "default", "victim"); err != nil {
		t.Fatal(err)
	}
	select {
	case <-srv.Done():
	case <-time.After(5 * time.Second):
		t.Fatal("the pod's server still runs")
	}
	if _, err := os.Lstat(p.NetnsPath); !os.IsNotExist(err) {
		t.Errorf("netns %s: %v", p.NetnsPath, err)
	}
	if _, err := os.Lstat(p.CgroupPath); !os.IsNotExist(err) {
		t.Errorf("cgroup %s: %v", p.CgroupPath, err)
	}
	h, err := node.Netlink()
	if err != nil {
		t.Fatal(err)
	}
	defer h.Close()
	if l, err := h.LinkByName(p.HostIfname); err == nil {
		t.Errorf("host veth %s still in node-2: %v", p.HostIfname, l.Attrs())
	}
	if c.Pod("default", "victim") != nil || len(c.Pods()) != 1 {
		t.Errorf("pods after delete: %v", c.Pods())
	}
	if res := connect(t, tool, client, "tcp", addr(p.IP, tcpPort)); res.OK || res.Reason != podtool.ReasonUnreachable {
		t.Errorf("deleted pod's address: %+v, want unreachable", res)
	}
	if err := c.DeletePod(context.Background(), "default", "victim"); err == nil {
		t.Error("deleting twice succeeded")
	}

	again := vcluster.AddPodForTest(t, c, vcluster.PodConfig{Name: "victim", Node: "node-2"})
	if again.IP != p.IP {
		t.Errorf("re-created pod got %s, want the freed %s", again.IP, p.IP)
	}
	serve(t, tool, again)
	if res := connect(t, tool, client, "tcp", addr(again.IP, tcpPort)); !res.OK {
		t.Errorf("re-created pod: %+v", res)
	}
}

func TestAddPodErrors(t *testing.T) {
	c := vcluster.NewForTest(t, vcluster.Config{Nodes: []vcluster.NodeConfig{{Name: "n1", PodCIDR: "10.1.0.0/30"}}})
	vcluster.AddPodForTest(t, c, vcluster.PodConfig{Name: "a", Node: "n1"})
	for _, tc := range []struct {
		name    string
		pc      vcluster.PodConfig
		wantErr string
	}{
		{"unknown node", vcluster.PodConfig{Name: "x", Node: "nope"}, `no node "nope"`},
		{"duplicate", vcluster.PodConfig{Name: "a", Node: "n1"}, "pod exists"},
		{"address outside the node", vcluster.PodConfig{Name: "x", Node: "n1", IP: netip.MustParseAddr("10.2.0.1")}, "not a host address"},
		{"address taken", vcluster.PodConfig{Name: "x", Node: "n1", IP: netip.MustParseAddr("10.1.0.1")}, "is pod default/a's"},
		{"bad name", vcluster.PodConfig{Name: "X_1", Node: "n1"}, "not a DNS-1123 label"},
		{"bad protocol", vcluster.PodConfig{Name: "x", Node: "n1", Ports: []vcluster.Port{{Port: 1, Protocol: "ICMP"}}}, "not TCP, UDP or SCTP"},
	} {
		_, err := c.AddPod(context.Background(), tc.pc)
		if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
			t.Errorf("%s: got %v, want %q", tc.name, err, tc.wantErr)
		}
	}
	vcluster.AddPodForTest(t, c, vcluster.PodConfig{Name: "b", Node: "n1"}) // 10.1.0.2, the last host address
	if _, err := c.AddPod(context.Background(), vcluster.PodConfig{Name: "c", Node: "n1"}); err == nil || !strings.Contains(err.Error(), "is full") {
		t.Errorf("full CIDR: %v", err)
	}
	if got := len(c.Pods()); got != 2 {
		t.Errorf("%d pods after failed adds, want 2", got)
	}
	if left, _ := filepath.Glob(filepath.Join("/run/netns", c.Name()+"_pod_*")); len(left) != 2 {
		t.Errorf("failed adds left namespaces: %v", left)
	}
}
