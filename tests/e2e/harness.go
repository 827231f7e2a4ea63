package e2e

import (
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/nodemesh/nodemesh/agent"
	"github.com/nodemesh/nodemesh/certs/caserver"
	"github.com/nodemesh/nodemesh/tests/podtool"
	"github.com/nodemesh/nodemesh/tests/vcluster"
)

// Options describe a cluster to start.
type Options struct {
	Cluster vcluster.Config
	Pods    []vcluster.PodConfig
	// Serve is what every pod serves (podtool serve flags); default TCP and
	// UDP echo on 80 and 81, HTTP on 8080.
	Serve []string
	// Log receives progress lines; nil discards them.
	Log io.Writer
	// MTLS is the agents' --mtls-mode; with a mode, a built-in CA
	// (nodemesh-ca, CAArgs added to its flags) serves them SVIDs. Empty:
	// disabled, and no CA.
	MTLS   string
	CAArgs []string
	// WireGuard turns on encryption between nodes (embedded userspace
	// devices, keys in the harness's directory).
	WireGuard bool
}

// Harness is a running virtual cluster with an agent per node.
type Harness struct {
	C        *vcluster.Cluster
	Dir      string // the agents' inputs: world.yaml and policies/
	Podtool  string
	agentBin string
	log      io.Writer

	mtls   string
	caArgs []string
	ca     *vcluster.Process
	wg     bool

	mu      sync.Mutex
	agents  map[string]*vcluster.Process
	proxies map[string]*vcluster.Process
}

var build struct {
	once sync.Once
	dir  string
	err  error
}

// AgentBinary builds cmd/nodemesh-agent (and meshctl, see MeshctlBinary)
// once per process.
func AgentBinary() (string, error) {
	build.once.Do(func() {
		build.dir, build.err = os.MkdirTemp("", "nodemesh-e2e-bin-")
		if build.err != nil {
			return
		}
		out, err := exec.Command("go", "env", "GOMOD").Output()
		if err != nil {
			build.err = fmt.Errorf("go env GOMOD: %w", err)
			return
		}
		cmd := exec.Command("go", "build", "-o", build.dir+"/", "./cmd/nodemesh-agent", "./cmd/meshctl", "./cmd/nodemesh-proxy", "./cmd/nodemesh-ca")
		cmd.Dir = filepath.Dir(strings.TrimSpace(string(out)))
		if b, err := cmd.CombinedOutput(); err != nil {
			build.err = fmt.Errorf("build nodemesh-agent and meshctl: %w: %s", err, b)
		}
	})
	return filepath.Join(build.dir, "nodemesh-agent"), build.err
}

// MeshctlBinary returns the meshctl AgentBinary built.
func MeshctlBinary() (string, error) {
	if _, err := AgentBinary(); err != nil {
		return "", err
	}
	return filepath.Join(build.dir, "meshctl"), nil
}

// ProxyBinary returns the nodemesh-proxy AgentBinary built.
func ProxyBinary() (string, error) {
	if _, err := AgentBinary(); err != nil {
		return "", err
	}
	return filepath.Join(build.dir, "nodemesh-proxy"), nil
}

// XDSSocket is the xDS socket of a node's agent.
func (h *Harness) XDSSocket(node string) string { return filepath.Join(h.Dir, "run", node, "xds.sock") }

// StartProxy starts nodemesh-proxy on a node, connected to its agent's xDS.
func (h *Harness) StartProxy(ctx context.Context, node string) (*vcluster.Process, error) {
	bin, err := ProxyBinary()
	if err != nil {
		return nil, err
	}
	p, err := h.C.Node(node).Start(ctx, bin, "--node-id", node, "--xds-address", "unix://"+h.XDSSocket(node),
		"--admin-address", "127.0.0.1:15000")
	if err != nil {
		return nil, err
	}
	h.mu.Lock()
	h.proxies[node] = p
	h.mu.Unlock()
	return p, nil
}

// ProxyCPU is the CPU time a node's running proxy has used so far, in user
// mode and in the kernel (from /proc). The kernel part includes what the
// proxy's sends make the kernel do on the spot, which on veths is the
// receiving side's processing too.
func (h *Harness) ProxyCPU(node string) (user, sys time.Duration, err error) {
	h.mu.Lock()
	p := h.proxies[node]
	h.mu.Unlock()
	if p == nil {
		return 0, 0, fmt.Errorf("no proxy running on %s", node)
	}
	return ProcessCPU(p.Pid())
}

// ProcessCPU is a process's CPU time in user mode and in the kernel, from
// /proc/PID/stat.
func ProcessCPU(pid int) (user, sys time.Duration, err error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0, 0, err
	}
	// The fields after the command name (which may hold spaces, in
	// parentheses): state is field 3, utime 14 and stime 15.
	f := strings.Fields(string(b[strings.LastIndexByte(string(b), ')')+1:]))
	if len(f) < 13 {
		return 0, 0, fmt.Errorf("/proc/%d/stat: %d fields", pid, len(f))
	}
	var ticks [2]int64
	for i, s := range f[11:13] {
		if _, err := fmt.Sscan(s, &ticks[i]); err != nil {
			return 0, 0, fmt.Errorf("/proc/%d/stat: %w", pid, err)
		}
	}
	return time.Duration(ticks[0]) * time.Second / clockTicks, time.Duration(ticks[1]) * time.Second / clockTicks, nil
}

// clockTicks is USER_HZ, the unit of /proc's CPU times: 100 on every Linux
// architecture Go supports.
const clockTicks = 100

// KillProxy kills a node's proxy with SIGKILL, as a crash would.
func (h *Harness) KillProxy(node string) error {
	h.mu.Lock()
	p := h.proxies[node]
	delete(h.proxies, node)
	h.mu.Unlock()
	if p == nil {
		return fmt.Errorf("no proxy running on %s", node)
	}
	h.logf("proxy on %s: SIGKILL", node)
	syscall.Kill(-p.Pid(), syscall.SIGKILL)
	<-p.Done()
	return nil
}

// RemoveBinaries deletes what AgentBinary built.
func RemoveBinaries() {
	if build.dir != "" {
		os.RemoveAll(build.dir)
	}
}

func (h *Harness) logf(format string, args ...any) {
	if h.log != nil {
		fmt.Fprintf(h.log, format+"\n", args...)
	}
}

// Start creates the cluster, starts a server in every pod and an agent on
// every node, and waits until every agent enforces every local pod.
func Start(ctx context.Context, opts Options) (_ *Harness, err error) {
	h := &Harness{log: opts.Log, agents: map[string]*vcluster.Process{}, proxies: map[string]*vcluster.Process{}, mtls: opts.MTLS, caArgs: opts.CAArgs, wg: opts.WireGuard}
	if h.agentBin, err = AgentBinary(); err != nil {
		return nil, err
	}
	if h.Podtool, err = vcluster.PodtoolPath(); err != nil {
		return nil, err
	}
	if h.Dir, err = os.MkdirTemp("", "nodemesh-e2e-"); err != nil {
		return nil, err
	}
	if err := os.Mkdir(filepath.Join(h.Dir, "policies"), 0o755); err != nil {
		return nil, err
	}
	h.logf("creating the virtual cluster")
	if h.C, err = vcluster.New(ctx, opts.Cluster); err != nil {
		return nil, err
	}
	h.logf("starting %d pods on %d nodes, each with a server", len(opts.Pods), len(h.C.Nodes()))
	defer func() {
		if err != nil {
			h.Close()
		}
	}()
	serve := opts.Serve
	if serve == nil {
		serve = []string{"--tcp", "80,81", "--udp", "80,81", "--http", "8080"}
	}
	for _, pc := range opts.Pods {
		p, err := h.C.AddPod(ctx, pc)
		if err != nil {
			return nil, err
		}
		proc, err := p.Start(ctx, append([]string{h.Podtool, "serve"}, serve...)...)
		if err != nil {
			return nil, err
		}
		wctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		err = proc.WaitReady(wctx)
		cancel()
		if err != nil {
			return nil, fmt.Errorf("server in %s: %w: %s", p, err, proc.Stderr())
		}
	}
	if err := h.WriteWorld(); err != nil {
		return nil, err
	}
	if h.mtls != "" {
		if err := h.startCA(ctx); err != nil {
			return nil, err
		}
	}
	for _, n := range h.C.Nodes() {
		if err := h.StartAgent(ctx, n.Name); err != nil {
			return nil, err
		}
	}
	return h, nil
}

// WriteWorld writes the cluster's pods and nodes for the agents.
func (h *Harness) WriteWorld() error {
	return writeAtomic(filepath.Join(h.Dir, "world.yaml"), h.C.WorldYAML())
}

func writeAtomic(path string, data []byte) error {
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, data, 0o644); err != nil {
		return err
	}
	return os.Rename(tmp, path)
}

// CADir is the socket directory of the built-in CA (Options.MTLS).
func (h *Harness) CADir() string { return filepath.Join(h.Dir, "ca") }

// startCA starts nodemesh-ca (in the first node's network namespace; it
// serves unix sockets only) and waits for every node's socket.
func (h *Harness) startCA(ctx context.Context) error {
	bin := filepath.Join(filepath.Dir(h.agentBin), "nodemesh-ca")
	args := append([]string{bin, "--world", filepath.Join(h.Dir, "world.yaml"), "--socket-dir", h.CADir(), "--resync", "1s"}, h.caArgs...)
	p, err := h.C.Nodes()[0].Start(context.Background(), args...)
	if err != nil {
		return err
	}
	h.ca = p
	h.logf("nodemesh-ca: started (pid %d), waiting for the nodes' sockets", p.Pid())
	deadline := time.Now().Add(20 * time.Second)
	for _, n := range h.C.Nodes() {
		for {
			if _, err := os.Stat(caserver.NodeSocket(h.CADir(), n.Name)); err == nil {
				break
			}
			select {
			case <-p.Done():
				return fmt.Errorf("nodemesh-ca exited: %v\n%s", p.Wait(), p.Stderr())
			case <-ctx.Done():
				return ctx.Err()
			case <-time.After(20 * time.Millisecond):
			}
			if time.Now().After(deadline) {
				return fmt.Errorf("nodemesh-ca: no socket for node %s after 20s\n%s", n.Name, p.Stderr())
			}
		}
	}
	return nil
}

// AgentStderr is what a node's agent logged so far.
func (h *Harness) AgentStderr(node string) string {
	h.mu.Lock()
	defer h.mu.Unlock()
	if p := h.agents[node]; p != nil {
		return p.Stderr()
	}
	return ""
}

// CAStderr is what nodemesh-ca logged so far.
func (h *Harness) CAStderr() string {
	if h.ca == nil {
		return ""
	}
	return h.ca.Stderr()
}

// Socket is the API socket of a node's agent.
func (h *Harness) Socket(node string) string { return filepath.Join(h.Dir, "run", node, "agent.sock") }

// MetricsSocket is the unix socket of a node's agent's Prometheus metrics.
func (h *Harness) MetricsSocket(node string) string {
	return filepath.Join(h.Dir, "run", node, "metrics.sock")
}

// StartAgent starts (or restarts) the agent of a node and waits until it
// has loaded its input and programmed every local pod.
func (h *Harness) StartAgent(ctx context.Context, node string) error {
	n := h.C.Node(node)
	pins, err := n.BPFFSDir()
	if err != nil {
		return err
	}
	args := []string{h.agentBin, "--node-name", node,
		"--world", filepath.Join(h.Dir, "world.yaml"), "--policies", filepath.Join(h.Dir, "policies"),
		"--bpf-pin-dir", pins, "--api-socket", h.Socket(node), "--metrics-addr", "unix:" + h.MetricsSocket(node),
		"--xds-socket", h.XDSSocket(node), "--resync", "1s", "--mtls-mode", cmp.Or(h.mtls, "disabled"),
		"--ca-socket", caserver.NodeSocket(h.CADir(), node), "--svid-retry-min", "200ms", "--svid-retry-max", "2s"}
	if h.wg {
		// /var/run/wireguard is shared by the nodes: one interface name each.
		args = append(args, "--encryption", "wireguard", "--wireguard-key-store", filepath.Join(h.Dir, "wireguard-keys"),
			"--wireguard-key-file", filepath.Join(h.Dir, "wireguard", node+".key"), "--wireguard-interface", "nmwg-"+node)
	}
	proc, err := n.Start(context.Background(), args...)
	if err != nil {
		return err
	}
	h.mu.Lock()
	h.agents[node] = proc
	h.mu.Unlock()
	h.logf("agent on %s: started (pid %d), waiting until it enforces its pods", node, proc.Pid())
	return h.waitAgent(ctx, node, proc, func(st *agent.Status, eps *agent.EndpointList) bool {
		for _, e := range eps.Endpoints {
			if e.State != "ready" {
				return false
			}
		}
		return st.Generation > 0 && len(eps.Endpoints) == len(h.podsOn(node))
	})
}

func (h *Harness) podsOn(node string) []*vcluster.Pod {
	var out []*vcluster.Pod
	for _, p := range h.C.Pods() {
		if p.Node == node {
			out = append(out, p)
		}
	}
	return out
}

// waitAgent polls an agent's API until cond holds.
func (h *Harness) waitAgent(ctx context.Context, node string, proc *vcluster.Process, cond func(*agent.Status, *agent.EndpointList) bool) error {
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	var last string
	for {
		select {
		case <-proc.Done():
			return fmt.Errorf("agent on %s exited: %v\n%s", node, proc.Wait(), proc.Stderr())
		case <-ctx.Done():
			return fmt.Errorf("agent on %s: %w (last state: %s)\n%s", node, ctx.Err(), last, proc.Stderr())
		case <-time.After(20 * time.Millisecond):
		}
		c, err := agent.Dial(h.Socket(node))
		if err != nil {
			last = err.Error()
			continue
		}
		st, err1 := c.Status(ctx)
		eps, err2 := c.Endpoints(ctx)
		c.Close()
		if err := errors.Join(err1, err2); err != nil {
			last = err.Error()
			continue
		}
		b, _ := json.Marshal(struct {
			S *agent.Status
			E *agent.EndpointList
		}{st, eps})
		last = string(b)
		if cond(st, eps) {
			return nil
		}
	}
}

// Status asks a node's agent for its status.
func (h *Harness) Status(ctx context.Context, node string) (*agent.Status, error) {
	c, err := agent.Dial(h.Socket(node))
	if err != nil {
		return nil, err
	}
	defer c.Close()
	return c.Status(ctx)
}

// KillAgent kills a node's agent with SIGKILL, as a crash would.
func (h *Harness) KillAgent(node string) error {
	h.mu.Lock()
	proc := h.agents[node]
	delete(h.agents, node)
	h.mu.Unlock()
	if proc == nil {
		return fmt.Errorf("no agent running on %s", node)
	}
	h.logf("agent on %s: SIGKILL", node)
	if err := proc.Stop(0); err != nil && !strings.Contains(err.Error(), "killed") {
		return err
	}
	return nil
}

// SetWorld replaces the agents' world file (unless unchanged) and waits
// until every agent has loaded it.
func (h *Harness) SetWorld(ctx context.Context, yaml []byte) (time.Duration, error) {
	return h.setInput(ctx, filepath.Join(h.Dir, "world.yaml"), yaml)
}

// SetPolicies replaces every policy with the given YAML (unless unchanged)
// and waits until every agent has loaded it; it returns how long that took.
func (h *Harness) SetPolicies(ctx context.Context, yaml string) (time.Duration, error) {
	return h.setInput(ctx, filepath.Join(h.Dir, "policies", "policies.yaml"), []byte(yaml))
}

func (h *Harness) setInput(ctx context.Context, path string, data []byte) (time.Duration, error) {
	if old, err := os.ReadFile(path); err == nil && string(old) == string(data) {
		return 0, nil
	}
	gens := map[string]int{}
	for _, n := range h.C.Nodes() {
		st, err := h.Status(ctx, n.Name)
		if err != nil {
			return 0, err
		}
		gens[n.Name] = st.Generation
	}
	start := time.Now()
	if err := writeAtomic(path, data); err != nil {
		return 0, err
	}
	for _, n := range h.C.Nodes() {
		h.mu.Lock()
		proc := h.agents[n.Name]
		h.mu.Unlock()
		err := h.waitAgent(ctx, n.Name, proc, func(st *agent.Status, _ *agent.EndpointList) bool {
			return st.Generation > gens[n.Name] || st.LastError != ""
		})
		if err != nil {
			return 0, err
		}
		if st, _ := h.Status(ctx, n.Name); st != nil && st.LastError != "" {
			return 0, fmt.Errorf("agent on %s refused %s: %s", n.Name, filepath.Base(path), st.LastError)
		}
	}
	return time.Since(start), nil
}

// Probe tries one connection from a pod to an address and says whether it
// got through. A refused connection counts as through: policy drops, it does
// not refuse.
func (h *Harness) Probe(ctx context.Context, from *vcluster.Pod, proto, to string, timeout time.Duration) (podtool.ConnectResult, error) {
	out, err := from.Exec(ctx, h.Podtool, "connect", "--proto", proto, "--to", to, "--timeout", timeout.String())
	var res podtool.ConnectResult
	if jerr := json.Unmarshal([]byte(strings.TrimSpace(string(out))), &res); jerr != nil {
		return res, fmt.Errorf("probe %s -> %s: %v (output %q)", from, to, errors.Join(err, jerr), out)
	}
	return res, nil
}

// HTTP sends one request from a pod (podtool http, no keep-alive) and
// returns what came back: a status, or why none did.
func (h *Harness) HTTP(ctx context.Context, from *vcluster.Pod, method, url string, timeout time.Duration) (podtool.HTTPResult, error) {
	out, err := from.Exec(ctx, h.Podtool, "http", "--method", method, "--url", url, "--timeout", timeout.String())
	var res podtool.HTTPResult
	if jerr := json.Unmarshal([]byte(strings.TrimSpace(string(out))), &res); jerr != nil {
		return res, fmt.Errorf("http %s %s from %s: %v (output %q)", method, url, from, errors.Join(err, jerr), out)
	}
	return res, nil
}

// Close stops the agents, removes the cluster (and with it the pinned
// state) and the agents' inputs.
func (h *Harness) Close() error {
	h.mu.Lock()
	for _, p := range h.agents {
		p.Stop(2 * time.Second)
	}
	h.agents = map[string]*vcluster.Process{}
	h.mu.Unlock()
	var err error
	if h.C != nil {
		err = h.C.Close()
	}
	if h.Dir != "" {
		os.RemoveAll(h.Dir)
	}
	return err
}
