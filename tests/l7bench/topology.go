package l7bench

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/vishvananda/netns"
)

// Addresses inside the benchmark's namespaces. The root namespace gets no
// address or route into them.
var (
	ClientAddr      = netip.MustParseAddr("10.201.1.2") // the client namespace's eth0
	ProxyClientSide = netip.MustParseAddr("10.201.1.1") // the proxy namespace's to-cli; HAProxy binds here
	ProxyServerSide = netip.MustParseAddr("10.201.2.1") // the proxy namespace's to-srv
	ServerAddr      = netip.MustParseAddr("10.201.2.2") // the server namespace's eth0
)

// Ports. Connections from the client to ServerAddr:ServicePort are steered
// to the nodemesh-proxy's inbound listener with TPROXY; DirectPort is the
// same backend reached through plain forwarding (the no-proxy baseline);
// HAProxyPort is HAProxy's frontend on ProxyClientSide.
const (
	ServicePort = 80
	DirectPort  = 81
	HAProxyPort = 8080
	// InboundPort is the nodemesh-proxy's transparent inbound listener
	// (xds.DefaultInboundPort, the listener the datapath steers to).
	InboundPort = 15006
	// AdminPort is the nodemesh-proxy's admin endpoint on the proxy
	// namespace's loopback.
	AdminPort = 15000
)

// The TPROXY steering, as the datapath will do it with bpf_sk_assign: the
// mark the datapath sets on packets it assigns to the proxy, and the local
// routing table the mark selects (package redirect uses the same values).
const (
	tproxyMark  = "0x200/0xf00"
	tproxyTable = "2004"
)

// namePrefix starts every namespace the package creates; the owner's pid
// follows, so that Sweep can tell a dead run's leftovers from a live one's.
const namePrefix = "nml7-"

// Topology is three network namespaces on this machine:
//
//	client (eth0 10.201.1.2/24) ══ proxy (to-cli 10.201.1.1/24, to-srv 10.201.2.1/24) ══ server (eth0 10.201.2.2/24)
//
// In the proxy namespace, TCP from to-cli to ServerAddr:ServicePort is
// steered to InboundPort with TPROXY (mark 0x200/0xf00, ip rule to a local
// table), so a transparent listener there accepts it with the original
// destination as its local address; FORWARD drops that traffic, so it never
// reaches the server around the proxy. Everything else is routed.
type Topology struct {
	Client, Proxy, Server string // namespace names
	Dir                   string // scratch directory: configs, logs, sockets

	mu     sync.Mutex
	procs  []*Process
	closed bool
}

var topologySeq atomic.Int32

// live holds the open topologies so that a signal can close them.
var live struct {
	sync.Mutex
	set map[*Topology]bool
}

// NewTopology creates the namespaces, links, addresses, routes and the
// TPROXY steering. Close removes them; on error nothing is left behind.
func NewTopology(ctx context.Context) (_ *Topology, err error) {
	if err := Sweep(); err != nil {
		return nil, err
	}
	base := fmt.Sprintf("%s%d-%d-", namePrefix, os.Getpid(), topologySeq.Add(1))
	dir, err := ownedDir(base + "d")
	if err != nil {
		return nil, err
	}
	t := &Topology{Client: base + "c", Proxy: base + "p", Server: base + "s", Dir: dir}
	live.Lock()
	if live.set == nil {
		live.set = map[*Topology]bool{}
	}
	live.set[t] = true
	live.Unlock()
	defer func() {
		if err != nil {
			t.Close()
		}
	}()
	c, p, s := t.Client, t.Proxy, t.Server
	steps := [][]string{
		{"ip", "netns", "add", c}, {"ip", "netns", "add", p}, {"ip", "netns", "add", s},
		// Each veth is created inside its namespace: nothing ever exists
		// in the root namespace.
		{"ip", "-n", c, "link", "add", "eth0", "type", "veth", "peer", "name", "to-cli", "netns", p},
		{"ip", "-n", s, "link", "add", "eth0", "type", "veth", "peer", "name", "to-srv", "netns", p},
	}
	for _, ns := range []string{c, p, s} {
		steps = append(steps,
			sysctl(ns, "net.ipv6.conf.all.disable_ipv6", "1"),
			sysctl(ns, "net.ipv6.conf.default.disable_ipv6", "1"),
			[]string{"ip", "-n", ns, "link", "set", "lo", "up"})
	}
	steps = append(steps,
		[]string{"ip", "-n", c, "addr", "add", ClientAddr.String() + "/24", "dev", "eth0"},
		[]string{"ip", "-n", c, "link", "set", "eth0", "up"},
		[]string{"ip", "-n", c, "route", "add", "default", "via", ProxyClientSide.String()},
		[]string{"ip", "-n", s, "addr", "add", ServerAddr.String() + "/24", "dev", "eth0"},
		[]string{"ip", "-n", s, "link", "set", "eth0", "up"},
		[]string{"ip", "-n", s, "route", "add", "default", "via", ProxyServerSide.String()},
		[]string{"ip", "-n", p, "addr", "add", ProxyClientSide.String() + "/24", "dev", "to-cli"},
		[]string{"ip", "-n", p, "addr", "add", ProxyServerSide.String() + "/24", "dev", "to-srv"},
		[]string{"ip", "-n", p, "link", "set", "to-cli", "up"},
		[]string{"ip", "-n", p, "link", "set", "to-srv", "up"},
		// Routed for the direct baseline. rp_filter off: policy routing
		// delivers steered packets locally although their destination is
		// not a local address.
		sysctl(p, "net.ipv4.ip_forward", "1"),
		sysctl(p, "net.ipv4.conf.all.rp_filter", "0"),
		sysctl(p, "net.ipv4.conf.default.rp_filter", "0"),
		sysctl(p, "net.ipv4.conf.to-cli.rp_filter", "0"),
		// The steering. TPROXY drops a packet when no socket listens on
		// InboundPort, so nothing bypasses a missing proxy; the FORWARD
		// drop makes sure of it.
		[]string{"ip", "netns", "exec", p, "iptables", "-w", "-t", "mangle", "-A", "PREROUTING", "-i", "to-cli",
			"-p", "tcp", "-d", ServerAddr.String(), "--dport", strconv.Itoa(ServicePort),
			"-j", "TPROXY", "--on-port", strconv.Itoa(InboundPort), "--tproxy-mark", tproxyMark},
		// Packets of connections that already have a transparent socket
		// here get the mark too: the rest of a steered connection, and the
		// server's replies to upstream connections bound to the client's
		// address (Envoy's original_src), which would otherwise be
		// forwarded to the client.
		[]string{"ip", "netns", "exec", p, "iptables", "-w", "-t", "mangle", "-N", "DIVERT"},
		[]string{"ip", "netns", "exec", p, "iptables", "-w", "-t", "mangle", "-A", "DIVERT", "-j", "MARK", "--set-xmark", tproxyMark},
		[]string{"ip", "netns", "exec", p, "iptables", "-w", "-t", "mangle", "-A", "DIVERT", "-j", "ACCEPT"},
		[]string{"ip", "netns", "exec", p, "iptables", "-w", "-t", "mangle", "-I", "PREROUTING", "-p", "tcp",
			"-m", "socket", "--transparent", "-j", "DIVERT"},
		[]string{"ip", "netns", "exec", p, "iptables", "-w", "-A", "FORWARD", "-p", "tcp",
			"-d", ServerAddr.String(), "--dport", strconv.Itoa(ServicePort), "-j", "DROP"},
		[]string{"ip", "-n", p, "rule", "add", "fwmark", tproxyMark, "lookup", tproxyTable},
		[]string{"ip", "-n", p, "route", "add", "local", "0.0.0.0/0", "dev", "lo", "table", tproxyTable},
	)
	for _, st := range steps {
		if err := run(ctx, st...); err != nil {
			return nil, fmt.Errorf("topology: %w", err)
		}
	}
	return t, nil
}

func sysctl(ns, key, value string) []string {
	return []string{"ip", "netns", "exec", ns, "sysctl", "-q", "-w", key + "=" + value}
}

func run(ctx context.Context, args ...string) error {
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	out, err := exec.CommandContext(ctx, args[0], args[1:]...).CombinedOutput()
	if err != nil {
		return fmt.Errorf("%s: %w: %s", strings.Join(args, " "), err, bytes.TrimSpace(out))
	}
	return nil
}

// Close stops the processes the topology started and deletes its
// namespaces, and with them their links, addresses, routes, rules and
// iptables rules. It is idempotent.
func (t *Topology) Close() error {
	t.mu.Lock()
	if t.closed {
		t.mu.Unlock()
		return nil
	}
	t.closed = true
	procs := t.procs
	t.mu.Unlock()
	var errs []error
	for _, p := range procs {
		p.Stop()
	}
	for _, ns := range []string{t.Client, t.Proxy, t.Server} {
		errs = append(errs, deleteNetns(ns))
	}
	errs = append(errs, os.RemoveAll(t.Dir))
	live.Lock()
	delete(live.set, t)
	live.Unlock()
	return errors.Join(errs...)
}

// CloseAll closes every open topology (for signal handlers).
func CloseAll() {
	live.Lock()
	var ts []*Topology
	for t := range live.set {
		ts = append(ts, t)
	}
	live.Unlock()
	for _, t := range ts {
		t.Close()
	}
}

// deleteNetns kills what still runs in ns and deletes it; a missing ns is
// not an error.
func deleteNetns(ns string) error {
	if _, err := os.Stat("/run/netns/" + ns); errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if out, err := exec.Command("ip", "netns", "pids", ns).Output(); err == nil {
		for _, f := range strings.Fields(string(out)) {
			if pid, err := strconv.Atoi(f); err == nil {
				_ = syscall.Kill(pid, syscall.SIGKILL)
			}
		}
	}
	return run(context.Background(), "ip", "netns", "delete", ns)
}

var ownedName = regexp.MustCompile(`^` + namePrefix + `(\d+)-\w+-[cpsd]$`)

// ownedDir creates a scratch directory named after this process, in the
// system's temporary directory, for Sweep to find if the process dies.
func ownedDir(name string) (string, error) {
	dir := filepath.Join(os.TempDir(), name)
	if err := os.RemoveAll(dir); err != nil {
		return "", err
	}
	return dir, os.Mkdir(dir, 0o700)
}

// Sweep deletes the namespaces, processes and scratch directories of runs
// that died without cleaning up (a SIGKILL, a go test -timeout panic):
// those whose owner process is gone.
func Sweep() error {
	var errs []error
	dirs, _ := filepath.Glob(filepath.Join(os.TempDir(), namePrefix+"*"))
	for _, d := range dirs {
		if m := ownedName.FindStringSubmatch(filepath.Base(d)); m != nil {
			if pid, _ := strconv.Atoi(m[1]); !ownerAlive(pid) {
				errs = append(errs, os.RemoveAll(d))
			}
		}
	}
	out, err := exec.Command("ip", "netns", "list").Output()
	if err != nil {
		return fmt.Errorf("ip netns list: %w", err)
	}
	for _, line := range strings.Split(string(out), "\n") {
		f := strings.Fields(line)
		if len(f) == 0 {
			continue
		}
		m := ownedName.FindStringSubmatch(f[0])
		if m == nil {
			continue
		}
		pid, _ := strconv.Atoi(m[1])
		if ownerAlive(pid) {
			continue
		}
		errs = append(errs, deleteNetns(f[0]))
	}
	return errors.Join(errs...)
}

// ownerAlive says whether process pid exists. A reused pid only delays
// the sweep of a dead run's leftovers; deleting a live run's namespaces
// would be worse.
func ownerAlive(pid int) bool {
	err := syscall.Kill(pid, 0)
	return err == nil || errors.Is(err, syscall.EPERM)
}

// ---- processes ----

// Process is a program started in one of the topology's namespaces, in its
// own process group.
type Process struct {
	Name    string
	LogPath string
	cmd     *exec.Cmd
	done    chan struct{}
	err     error
	stopped atomic.Bool
}

// Start runs argv in namespace ns, pinned to cpus (taskset list syntax,
// "" for no pinning), with env added to this process's environment;
// output goes to a log file in t.Dir.
func (t *Topology) Start(name, ns, cpus string, env []string, argv ...string) (*Process, error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.closed {
		return nil, errors.New("topology closed")
	}
	args := []string{"netns", "exec", ns}
	if cpus != "" {
		args = append(args, "taskset", "-c", cpus)
	}
	args = append(args, argv...)
	logPath := fmt.Sprintf("%s/%s.%d.log", t.Dir, name, len(t.procs))
	logf, err := os.Create(logPath)
	if err != nil {
		return nil, err
	}
	defer logf.Close()
	cmd := exec.Command("ip", args...)
	cmd.Env = append(os.Environ(), env...)
	cmd.Stdout, cmd.Stderr = logf, logf
	// No Pdeathsig: it fires when the forking thread exits, and inNetns
	// ends threads. A run that dies leaves processes that Sweep kills.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("start %s: %w", name, err)
	}
	p := &Process{Name: name, LogPath: logPath, cmd: cmd, done: make(chan struct{})}
	go func() { p.err = cmd.Wait(); close(p.done) }()
	t.procs = append(t.procs, p)
	return p, nil
}

// Done is closed when the process has exited.
func (p *Process) Done() <-chan struct{} { return p.done }

// Exited reports an exit that Stop did not cause.
func (p *Process) Exited() error {
	select {
	case <-p.done:
		if p.stopped.Load() {
			return nil
		}
		return fmt.Errorf("%s exited: %v\n%s", p.Name, p.err, p.Log())
	default:
		return nil
	}
}

// CPUTime is the CPU time the process (all its threads) has used so far,
// in user mode and in the kernel. ip netns exec and taskset exec the
// program, so the process is the program itself.
func (p *Process) CPUTime() (user, sys time.Duration, err error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", p.cmd.Process.Pid))
	if err != nil {
		return 0, 0, err
	}
	// Fields after the parenthesised command name; utime and stime are
	// the 14th and 15th fields of the line, in clock ticks.
	s := string(b)
	f := strings.Fields(s[strings.LastIndexByte(s, ')')+1:])
	if len(f) < 13 {
		return 0, 0, fmt.Errorf("/proc/%d/stat: %q", p.cmd.Process.Pid, s)
	}
	const tick = 10 * time.Millisecond // USER_HZ is 100 on Linux
	u, err1 := strconv.ParseInt(f[11], 10, 64)
	k, err2 := strconv.ParseInt(f[12], 10, 64)
	if err := errors.Join(err1, err2); err != nil {
		return 0, 0, err
	}
	return time.Duration(u) * tick, time.Duration(k) * tick, nil
}

// Log returns the end of the process's output.
func (p *Process) Log() string {
	b, _ := os.ReadFile(p.LogPath)
	if len(b) > 4000 {
		b = b[len(b)-4000:]
	}
	return string(b)
}

// Stop sends SIGTERM to the process group, then SIGKILL after 5 s. It is
// idempotent.
func (p *Process) Stop() {
	p.stopped.Store(true)
	pgid := p.cmd.Process.Pid
	select {
	case <-p.done:
		return
	default:
	}
	_ = syscall.Kill(-pgid, syscall.SIGTERM)
	select {
	case <-p.done:
	case <-time.After(5 * time.Second):
		_ = syscall.Kill(-pgid, syscall.SIGKILL)
		<-p.done
	}
}

// ---- sockets in a namespace ----

// DialIn opens a TCP connection from inside namespace ns. The socket stays
// in that namespace; the calling goroutine's thread is restored.
func DialIn(ns, addr string, timeout time.Duration) (net.Conn, error) {
	var conn net.Conn
	err := inNetns(ns, func() (err error) {
		conn, err = net.DialTimeout("tcp", addr, timeout)
		return err
	})
	return conn, err
}

// inNetns runs f on a thread in namespace name. It runs on a goroutine of
// its own that ends with its thread locked, so the thread, having changed
// namespace, is never reused for other goroutines.
func inNetns(name string, f func() error) error {
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread() // never unlocked: the thread exits with the goroutine
		target, err := netns.GetFromName(name)
		if err != nil {
			errc <- fmt.Errorf("netns %s: %w", name, err)
			return
		}
		defer target.Close()
		if err := netns.Set(target); err != nil {
			errc <- fmt.Errorf("enter netns %s: %w", name, err)
			return
		}
		errc <- f()
	}()
	return <-errc
}
