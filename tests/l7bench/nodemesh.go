package l7bench

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/nodemesh/nodemesh/api"
	"github.com/nodemesh/nodemesh/policy"
	"github.com/nodemesh/nodemesh/xds"
)

// NodeName is the proxy namespace's node: the xDS node ID.
const NodeName = "l7bench"

// Namespace is the Kubernetes namespace of the benchmark's pods.
const Namespace = "bench"

// world: the client pod on another node, the server pod on the proxy's node.
var world = fmt.Sprintf(`apiVersion: v1
kind: List
items:
- {apiVersion: v1, kind: Namespace, metadata: {name: %[1]s, labels: {kubernetes.io/metadata.name: %[1]s}}}
- {apiVersion: v1, kind: Node, metadata: {name: client-node}, status: {addresses: [{type: InternalIP, address: 10.201.1.254}]}}
- {apiVersion: v1, kind: Node, metadata: {name: %[2]s}, status: {addresses: [{type: InternalIP, address: %[3]s}]}}
- apiVersion: v1
  kind: Pod
  metadata: {name: client, namespace: %[1]s, labels: {app: client}}
  spec: {nodeName: client-node, containers: [{name: wrk}]}
  status: {podIP: %[4]s}
- apiVersion: v1
  kind: Pod
  metadata: {name: server, namespace: %[1]s, labels: {app: server}}
  spec: {nodeName: %[2]s, containers: [{name: http, ports: [{name: http, containerPort: %[5]d}]}]}
  status: {podIP: %[6]s}
`, Namespace, NodeName, ProxyServerSide, ClientAddr, ServicePort, ServerAddr)

// AllowedRule is the one HTTP rule the server's ingress policy always has.
const AllowedRule = `{method: GET, path: "/userdata/[0-9]+"}`

// RuleSet says which rules the server's ingress policy has besides
// AllowedRule. None of the extra rules matches the benchmark's requests,
// and all of them sort before AllowedRule, so the proxy evaluates every one
// of them before it finds the match (the RBAC policy lists a rule set's
// rules in sorted order).
type RuleSet struct {
	Extra int
	// SharedPrefix makes the extra rules start with the request's own
	// literal prefix, /userdata/, so that nodemesh-proxy's literal-prefix
	// pre-check cannot reject them and each regex runs: the worst case.
	// Otherwise every rule has a literal prefix of its own (/svc-N/), as
	// rules for other services do.
	SharedPrefix bool
}

func (r RuleSet) String() string {
	switch {
	case r.Extra == 0:
		return "1 rule"
	case r.SharedPrefix:
		return fmt.Sprintf("%d+1 rules (shared prefix)", r.Extra)
	default:
		return fmt.Sprintf("%d+1 rules", r.Extra)
	}
}

// PolicyYAML is the server's ingress CiliumNetworkPolicy: the client may
// send AllowedRule's requests (and the extra rules') to port 80.
func PolicyYAML(r RuleSet) string {
	var b strings.Builder
	for i := range r.Extra {
		if r.SharedPrefix {
			// "(" sorts before "[": these come before AllowedRule.
			fmt.Fprintf(&b, "        - {method: GET, path: \"/userdata/([0-9]+)/item-%04d\"}\n", i)
		} else {
			fmt.Fprintf(&b, "        - {method: GET, path: \"/svc-%04d/[a-z]+/[0-9]+\"}\n", i)
		}
	}
	return fmt.Sprintf(`apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: server-l7, namespace: %s}
spec:
  endpointSelector: {matchLabels: {app: server}}
  ingress:
  - fromEndpoints: [{matchLabels: {app: client}}]
    toPorts:
    - ports: [{port: "%d", protocol: TCP}]
      rules:
        http:
%s        - %s
`, Namespace, ServicePort, b.String(), AllowedRule)
}

// Input compiles the world and the policy with the policy engine and
// returns what the agent would hand the xDS server for the proxy's node.
func Input(r RuleSet) (xds.Input, error) {
	w := &api.World{}
	if err := api.DecodeWorld("l7bench-world.yaml", []byte(world), w); err != nil {
		return xds.Input{}, err
	}
	docs, err := api.DecodePolicies("l7bench-policy.yaml", []byte(PolicyYAML(r)))
	if err != nil {
		return xds.Input{}, err
	}
	e, err := policy.NewEngineFromWorld(w, policy.FromDocuments(docs))
	if err != nil {
		return xds.Input{}, err
	}
	in := xds.InputFromEngine(e, NodeName, xds.Config{InboundPort: InboundPort})
	if len(in.Endpoints) != 1 {
		return xds.Input{}, fmt.Errorf("want the server as the node's one endpoint, got %d", len(in.Endpoints))
	}
	return in, nil
}

// ControlPlane is the agent's xDS server, serving the proxy namespace's
// node on a unix socket (reachable from every network namespace).
type ControlPlane struct {
	Server *xds.Server
	Socket string
	cancel context.CancelFunc
	done   chan error
}

// StartControlPlane serves xDS on a socket in dir with rules r.
func StartControlPlane(ctx context.Context, dir string, r RuleSet) (*ControlPlane, error) {
	cp := &ControlPlane{
		Server: xds.NewServer(slog.New(slog.DiscardHandler), nil),
		Socket: filepath.Join(dir, "xds.sock"),
		done:   make(chan error, 1),
	}
	if _, err := cp.Set(r); err != nil {
		return nil, err
	}
	sctx, cancel := context.WithCancel(context.Background())
	cp.cancel = cancel
	go func() { cp.done <- cp.Server.Serve(sctx, cp.Socket) }()
	deadline := time.Now().Add(5 * time.Second)
	for {
		if c, err := net.Dial("unix", cp.Socket); err == nil {
			c.Close()
			return cp, nil
		}
		select {
		case err := <-cp.done:
			return nil, fmt.Errorf("xds server: %w", err)
		case <-ctx.Done():
			cp.Close()
			return nil, ctx.Err()
		case <-time.After(10 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			cp.Close()
			return nil, errors.New("xds server: socket not up after 5s")
		}
	}
}

// Set serves rules r to the node; it returns the version to wait for.
func (cp *ControlPlane) Set(r RuleSet) (string, error) {
	in, err := Input(r)
	if err != nil {
		return "", err
	}
	return cp.Server.SetNode(NodeName, in)
}

// Apply serves rules r and waits until the proxy has ACKed them.
func (cp *ControlPlane) Apply(ctx context.Context, r RuleSet) error {
	v, err := cp.Set(r)
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	if err := cp.Server.WaitAcked(ctx, NodeName, v); err != nil {
		return fmt.Errorf("proxy did not ACK %s (%s): %w", v, r, err)
	}
	return nil
}

// Close stops serving.
func (cp *ControlPlane) Close() {
	if cp.cancel != nil {
		cp.cancel()
		<-cp.done
		cp.cancel = nil
	}
}

// ProxyArgs are nodemesh-proxy's flags for the topology's node.
func (cp *ControlPlane) ProxyArgs() []string {
	return []string{"--node-id", NodeName, "--xds-address", "unix://" + cp.Socket,
		"--admin-address", net.JoinHostPort("127.0.0.1", strconv.Itoa(AdminPort)), "--drain-timeout", "1s"}
}

// ServiceAddr is the server's address as the client dials it; the proxy
// namespace steers it to nodemesh-proxy.
func ServiceAddr() string { return net.JoinHostPort(ServerAddr.String(), strconv.Itoa(ServicePort)) }

// DirectAddr is the server reached without any proxy.
func DirectAddr() string { return net.JoinHostPort(ServerAddr.String(), strconv.Itoa(DirectPort)) }

// StartNodemeshProxy runs argv (nodemesh-proxy, or a stand-in taking the
// same flags) in the proxy namespace with GOMAXPROCS=procs, pinned to cpus,
// and waits until it has ACKed the current configuration and its
// transparent listener accepts steered connections.
func (t *Topology) StartNodemeshProxy(ctx context.Context, cp *ControlPlane, procs int, cpus string, env []string, argv ...string) (*Process, error) {
	env = append([]string{"GOMAXPROCS=" + strconv.Itoa(procs)}, env...)
	p, err := t.Start(fmt.Sprintf("nodemesh-proxy-%dp", procs), t.Proxy, cpus, env, append(argv, cp.ProxyArgs()...)...)
	if err != nil {
		return nil, err
	}
	st := cp.Server.Status(NodeName)
	wctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	ackc := make(chan error, 1)
	go func() { ackc <- cp.Server.WaitAcked(wctx, NodeName, st.Version) }()
	select {
	case err = <-ackc:
	case <-p.Done():
		err = p.Exited()
	}
	if err != nil {
		p.Stop()
		return nil, fmt.Errorf("nodemesh-proxy: %w\n%s", err, p.Log())
	}
	if err := t.waitAccepting(ctx, p, t.Client, ServiceAddr()); err != nil {
		p.Stop()
		return nil, err
	}
	return p, nil
}

// StartBackend runs the backend on ServicePort and DirectPort in the
// server namespace, pinned to cpus, by running this test binary again in
// the backend role (see RunRole).
func (t *Topology) StartBackend(ctx context.Context, cpus string) (*Process, error) {
	self, err := os.Executable()
	if err != nil {
		return nil, err
	}
	addrs := net.JoinHostPort(ServerAddr.String(), strconv.Itoa(ServicePort)) + "," + DirectAddr()
	p, err := t.Start("backend", t.Server, cpus, []string{RoleEnv + "=backend", backendAddrsEnv + "=" + addrs}, self)
	if err != nil {
		return nil, err
	}
	// From the client, only the direct port is reachable without a proxy.
	if err := t.waitAccepting(ctx, p, t.Client, DirectAddr()); err != nil {
		p.Stop()
		return nil, err
	}
	return p, nil
}

// ---- the nodemesh-proxy binary ----

var proxyBuild struct {
	once sync.Once
	dir  string
	path string
	err  error
}

// ProxyBinaryEnv names a prebuilt nodemesh-proxy to use instead of building.
const ProxyBinaryEnv = "NODEMESH_PROXY"

// ProxyBinary returns a nodemesh-proxy binary: $NODEMESH_PROXY, or a build
// of ./cmd/nodemesh-proxy made once per process (RemoveProxyBinary removes
// it).
func ProxyBinary() (string, error) {
	if p := os.Getenv(ProxyBinaryEnv); p != "" {
		return filepath.Abs(p)
	}
	proxyBuild.once.Do(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
		defer cancel()
		gomod, err := exec.CommandContext(ctx, "go", "env", "GOMOD").Output()
		if err != nil {
			proxyBuild.err = fmt.Errorf("build nodemesh-proxy: go env GOMOD: %w", err)
			return
		}
		mod := strings.TrimSpace(string(gomod))
		if mod == "" || mod == os.DevNull {
			proxyBuild.err = fmt.Errorf("build nodemesh-proxy: not inside the nodemesh module (or set %s)", ProxyBinaryEnv)
			return
		}
		if proxyBuild.dir, err = ownedDir(fmt.Sprintf("%s%d-bin-d", namePrefix, os.Getpid())); err != nil {
			proxyBuild.err = err
			return
		}
		out := filepath.Join(proxyBuild.dir, "nodemesh-proxy")
		cmd := exec.CommandContext(ctx, "go", "build", "-o", out, "./cmd/nodemesh-proxy")
		cmd.Dir = filepath.Dir(mod)
		if b, err := cmd.CombinedOutput(); err != nil {
			proxyBuild.err = fmt.Errorf("go build ./cmd/nodemesh-proxy: %w: %s", err, b)
			return
		}
		proxyBuild.path = out
	})
	return proxyBuild.path, proxyBuild.err
}

// RemoveProxyBinary removes the build ProxyBinary made, if any.
func RemoveProxyBinary() {
	if proxyBuild.dir != "" {
		os.RemoveAll(proxyBuild.dir)
	}
}
