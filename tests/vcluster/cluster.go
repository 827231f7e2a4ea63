package vcluster

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"sync"
)

// Fixed parts of the topology.
const (
	// UnderlayIfname is the node's interface on the underlay switch.
	UnderlayIfname = "eth0"
	// PodIfname is the pod's interface.
	PodIfname = "eth0"
	// BridgeName is the underlay bridge in the switch namespace.
	BridgeName = "br0"
)

// Gateway is the link-local next hop every pod routes through (Calico's).
var Gateway = netip.MustParseAddr("169.254.1.1")

// Cluster is a running virtual cluster. Its methods are safe for concurrent
// use.
type Cluster struct {
	name     string
	underlay netip.Prefix
	nsLabels map[string]map[string]string
	stateDir string
	cgDir    string // the cluster's cgroup directory (made once cgMade)
	switchNS string
	nodes    []*Node // set by New, never changed after

	// ops is held (read) by every operation that creates objects, and
	// (write) by Close, so nothing is made after Close has swept.
	ops sync.RWMutex

	mu        sync.Mutex
	pods      map[string]*Pod       // key namespace/name
	used      map[netip.Addr]string // pod addresses in use or reserved
	procs     map[*Process]*Pod     // running programs; nil pod for node programs
	netnsMade []string              // in creation order
	cgMade    bool
	bpffsMade bool
	closed    bool
	closeErr  error
}

// New creates the cluster: switch, nodes, underlay and routes. On error it
// removes whatever it made.
func New(ctx context.Context, cfg Config) (_ *Cluster, err error) {
	cfg.Defaults()
	if err := cfg.Validate(); err != nil {
		return nil, fmt.Errorf("vcluster config: %w", err)
	}
	stateDir, err := claimStateDir(cfg.Name)
	if err != nil {
		return nil, err
	}
	c := &Cluster{
		name:     cfg.Name,
		underlay: netip.MustParsePrefix(cfg.UnderlayCIDR),
		nsLabels: cfg.NamespaceLabels,
		stateDir: stateDir,
		switchNS: cfg.Name + "_sw",
		pods:     map[string]*Pod{},
		used:     map[netip.Addr]string{},
		procs:    map[*Process]*Pod{},
	}
	register(c)
	defer func() {
		if err != nil {
			err = errors.Join(fmt.Errorf("vcluster %s: %w", c.name, err), c.Close())
		}
	}()
	root, err := cgroup2Root()
	if err != nil {
		return nil, err
	}
	c.cgDir = clusterCgroup(root, c.name)
	if err := os.Mkdir(c.cgDir, 0o755); err != nil {
		return nil, fmt.Errorf("cluster cgroup: %w", err)
	}
	c.cgMade = true
	if err := c.makeSwitch(); err != nil {
		return nil, err
	}
	for _, nc := range cfg.Nodes {
		if err := ctx.Err(); err != nil {
			return nil, err
		}
		n, err := c.makeNode(nc)
		if err != nil {
			return nil, fmt.Errorf("node %s: %w", nc.Name, err)
		}
		c.nodes = append(c.nodes, n)
	}
	if err := c.routeNodes(); err != nil {
		return nil, err
	}
	return c, nil
}

// Name is the cluster's name, the prefix of every object it made.
func (c *Cluster) Name() string { return c.name }

// SwitchNetns is the name of the namespace that holds the underlay bridge.
func (c *Cluster) SwitchNetns() string { return c.switchNS }

// Underlay is the nodes' network.
func (c *Cluster) Underlay() netip.Prefix { return c.underlay }

// CgroupPath is the cluster's cgroup v2 directory; node and pod directories
// are below it.
func (c *Cluster) CgroupPath() string { return c.cgDir }

// Node returns the named node, or nil.
func (c *Cluster) Node(name string) *Node {
	for _, n := range c.nodes {
		if n.Name == name {
			return n
		}
	}
	return nil
}

// Nodes returns the nodes in configuration order.
func (c *Cluster) Nodes() []*Node { return slices.Clone(c.nodes) }

// Pod returns a pod, or nil.
func (c *Cluster) Pod(namespace, name string) *Pod {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.pods[namespace+"/"+name]
}

// Pods returns the pods sorted by namespace and name.
func (c *Cluster) Pods() []*Pod {
	c.mu.Lock()
	out := make([]*Pod, 0, len(c.pods))
	for _, p := range c.pods {
		out = append(out, p)
	}
	c.mu.Unlock()
	slices.SortFunc(out, func(a, b *Pod) int {
		return cmp.Or(cmp.Compare(a.Namespace, b.Namespace), cmp.Compare(a.Name, b.Name))
	})
	return out
}

// BPFFSDir returns the cluster's pin directory,
// /sys/fs/bpf/nodemesh-<cluster>, creating it (and mounting bpffs) on first
// use. Close removes it with everything pinned below.
func (c *Cluster) BPFFSDir() (string, error) {
	return c.bpffsDir("")
}

func (c *Cluster) bpffsDir(sub string) (string, error) {
	c.ops.RLock()
	defer c.ops.RUnlock()
	c.mu.Lock()
	if c.closed {
		c.mu.Unlock()
		return "", errClosed
	}
	c.bpffsMade = true
	c.mu.Unlock()
	if err := ensureBPFFS(); err != nil {
		return "", err
	}
	dir := filepath.Join(clusterBPFFS(c.name), sub)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return "", fmt.Errorf("bpffs dir: %w", err)
	}
	return dir, nil
}

var errClosed = errors.New("cluster is closed")

// Close kills every program the cluster started and removes its namespaces
// (with their links), cgroups, bpffs pins and state. It is idempotent and
// returns the first call's result.
func (c *Cluster) Close() error {
	c.ops.Lock()
	defer c.ops.Unlock()
	c.mu.Lock()
	if c.closed {
		c.mu.Unlock()
		return c.closeErr
	}
	c.closed = true
	procs := make([]*Process, 0, len(c.procs))
	for p := range c.procs {
		procs = append(procs, p)
	}
	c.mu.Unlock()

	var errs []error
	for _, p := range procs {
		p.kill()
	}
	if c.cgMade {
		if err := killCgroup(c.cgDir); err != nil {
			errs = append(errs, fmt.Errorf("kill cgroup %s: %w", c.cgDir, err))
		}
	}
	// Pods first, the switch last: deleting a namespace deletes the veths
	// in it and their peers.
	for _, ns := range slices.Backward(c.netnsMade) {
		if err := deleteNetns(ns); err != nil {
			errs = append(errs, err)
		}
	}
	if c.cgMade {
		if err := removeCgroupTree(c.cgDir); err != nil {
			errs = append(errs, err)
		}
	}
	if c.bpffsMade {
		if err := os.RemoveAll(clusterBPFFS(c.name)); err != nil {
			errs = append(errs, fmt.Errorf("bpffs: %w", err))
		}
	}
	// The state dir goes last and only when all else went: it is how a
	// later Sweep finds what this Close could not remove.
	if len(errs) == 0 {
		if err := os.RemoveAll(c.stateDir); err != nil {
			errs = append(errs, fmt.Errorf("state dir: %w", err))
		}
	}
	unregister(c)
	c.mu.Lock()
	c.closeErr = errors.Join(errs...)
	if c.closeErr != nil {
		c.closeErr = fmt.Errorf("close vcluster %s: %w", c.name, c.closeErr)
	}
	c.mu.Unlock()
	return c.closeErr
}

// newNetns creates a namespace and records it for Close.
func (c *Cluster) newNetns(name string) error {
	c.mu.Lock()
	c.netnsMade = append(c.netnsMade, name)
	c.mu.Unlock()
	return createNetns(name)
}

// forgetNetns drops a namespace DeletePod removed.
func (c *Cluster) forgetNetns(name string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.netnsMade = slices.DeleteFunc(c.netnsMade, func(s string) bool { return s == name })
}

// spawn starts a program and tracks it until it exits.
func (c *Cluster) spawn(ctx context.Context, spec runSpec, pod *Pod, args []string) (*Process, error) {
	c.ops.RLock()
	defer c.ops.RUnlock()
	c.mu.Lock()
	closed := c.closed || (pod != nil && pod.deleted)
	c.mu.Unlock()
	if closed {
		return nil, errClosed
	}
	p, err := startProcess(ctx, spec, args)
	if err != nil {
		return nil, err
	}
	c.mu.Lock()
	c.procs[p] = pod
	c.mu.Unlock()
	go func() {
		<-p.Done()
		c.mu.Lock()
		delete(c.procs, p)
		c.mu.Unlock()
	}()
	return p, nil
}

// run starts a program and waits for it (see runProcess).
func (c *Cluster) run(ctx context.Context, spec runSpec, pod *Pod, args []string) ([]byte, error) {
	p, err := c.spawn(ctx, spec, pod, args)
	if err != nil {
		return nil, err
	}
	err = p.Wait()
	out := p.stdout.bytes()
	if err != nil {
		return out, fmt.Errorf("%s in %s: %w: %s", args[0], spec.netns, err, trimOutput(p.Stderr()))
	}
	return out, nil
}

func trimOutput(s string) string {
	const max = 2000
	if len(s) > max {
		s = s[:max] + "..."
	}
	return s
}

// killPodProcs kills the programs started in a pod.
func (c *Cluster) killPodProcs(pod *Pod) {
	c.mu.Lock()
	var procs []*Process
	for p, owner := range c.procs {
		if owner == pod {
			procs = append(procs, p)
		}
	}
	c.mu.Unlock()
	for _, p := range procs {
		p.kill()
	}
}
