package wireguard

import (
	"bytes"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
)

// syncBuffer is a log destination shared by goroutines.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

type node struct {
	ns, iface, keyFile string
	dev                *Device
	log                *syncBuffer
	underlay           netip.Addr
	pod                netip.Prefix
}

// openNode opens a userspace device in the node's namespace with debug
// logging into n.log.
func openNode(t *testing.T, n *node) {
	t.Helper()
	if n.log == nil {
		n.log = &syncBuffer{}
	}
	cfg := Config{
		Interface: n.iface, KeyFile: n.keyFile, Mode: ModeUserspace,
		Logger: slog.New(slog.NewTextHandler(n.log, &slog.HandlerOptions{Level: slog.LevelDebug})),
	}
	mustInNS(t, n.ns, func() (err error) { n.dev, err = Open(cfg); return err })
	t.Cleanup(func() { n.dev.Close() })
}

func (n *node) peer() Peer {
	k, _, err := LoadOrCreateKey(n.keyFile)
	if err != nil {
		panic(err)
	}
	return Peer{PublicKey: k.PublicKey(), Endpoint: netip.AddrPortFrom(n.underlay, DefaultListenPort), AllowedIPs: []netip.Prefix{n.pod}, Name: n.ns}
}

func setPeers(t *testing.T, n *node, peers ...Peer) {
	t.Helper()
	if err := n.dev.SetPeers(peers); err != nil {
		t.Fatal(err)
	}
}

// tableRoutes lists the destinations of the routes in the device's table,
// with their link.
func tableRoutes(t *testing.T, n *node) []string {
	t.Helper()
	h, err := netlink.NewHandleAt(mustNS(t, n.ns))
	if err != nil {
		t.Fatal(err)
	}
	defer h.Close()
	rs, err := h.RouteListFiltered(netlink.FAMILY_V4, &netlink.Route{Table: DefaultRouteTable}, netlink.RT_FILTER_TABLE)
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, r := range rs {
		l, _ := h.LinkByIndex(r.LinkIndex)
		name := "?"
		if l != nil {
			name = l.Attrs().Name
		}
		out = append(out, r.Dst.String()+" dev "+name)
	}
	return out
}

func newNodes(t *testing.T) (*testNet, *node, *node) {
	tn := newTestNet(t)
	dir := t.TempDir()
	a := &node{ns: tn.a, iface: "nmwa" + tn.id, keyFile: filepath.Join(dir, "a", "wireguard.key"),
		underlay: netip.MustParseAddr("192.168.77.1"), pod: netip.MustParsePrefix("10.77.1.0/24")}
	b := &node{ns: tn.b, iface: "nmwb" + tn.id, keyFile: filepath.Join(dir, "b", "wireguard.key"),
		underlay: netip.MustParseAddr("192.168.77.2"), pod: netip.MustParsePrefix("10.77.2.0/24")}
	openNode(t, a)
	openNode(t, b)
	return tn, a, b
}

// waitHandshake waits until a has handshaked with its peer b. Both greet
// the other at once (persistent keepalive). When the greetings cross, each
// answers the other's and drops the answer to its own: WireGuard retries
// after REKEY_TIMEOUT (5 s + up to 1/3 s of jitter), hence 8 s.
func waitHandshake(t *testing.T, a, b *node) {
	t.Helper()
	began := time.Now()
	deadline := began.Add(8 * time.Second)
	defer func() { t.Logf("handshake after %v", time.Since(began).Round(time.Millisecond)) }()
	for {
		st, err := a.dev.Status()
		if err != nil {
			t.Fatal(err)
		}
		if len(st.Peers) == 1 && !st.Peers[0].LastHandshake.IsZero() {
			return
		}
		if time.Now().After(deadline) {
			stb, _ := b.dev.Status()
			t.Fatalf("no handshake 8s after the nodes learned each other: a %+v, b %+v\na's log:\n%s\nb's log:\n%s", st.Peers, stb.Peers, a.log, b.log)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// TestTunnel is the device's life between two nodes: pod traffic flows
// encrypted, Status reports it, SetPeers is idempotent, removing the peer
// stops the traffic and its route, a key rotation keeps an established
// connection once the peer learns the new key, and no private key shows
// in any log.
func TestTunnel(t *testing.T) {
	requireNetnsRoot(t, "two nodes' devices between network namespaces")
	_, a, b := newNodes(t)

	for _, n := range []*node{a, b} {
		st, err := n.dev.Status()
		if err != nil {
			t.Fatal(err)
		}
		if st.Kind != KindUserspace || st.ListenPort != DefaultListenPort || st.FirewallMark != DefaultFirewallMark || len(st.Peers) != 0 {
			t.Fatalf("%s status before peers = %+v, want userspace, port %d, mark 0x%x, no peers", n.ns, st, DefaultListenPort, DefaultFirewallMark)
		}
		if _, err := os.Stat("/var/run/wireguard/" + n.iface + ".sock"); err != nil {
			t.Fatalf("the UAPI socket for wg(8) is missing: %v", err)
		}
	}
	setPeers(t, a, b.peer())
	setPeers(t, b, a.peer())
	t.Run("peers handshake before any traffic", func(t *testing.T) {
		waitHandshake(t, a, b)
	})
	echoServer(t, b.ns, "10.77.2.1:7777")
	echoServer(t, b.ns, "192.168.77.2:7778") // plaintext, for the capture's control

	secret := []byte("NODEMESH-SECRET-" + hex.EncodeToString(randBytes(t, 16)))
	msg := bytes.Repeat(secret, 64)

	t.Run("capture sees plaintext payload on the underlay", func(t *testing.T) {
		// The control: without it, a capture that saw nothing would pass
		// the next test.
		capt := startCapture(t, a.ns, "veth0")
		c, err := dial(a.ns, "", "192.168.77.2:7778", 2*time.Second)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		if err := echo(c, msg, 5*time.Second); err != nil {
			t.Fatal(err)
		}
		time.Sleep(100 * time.Millisecond)
		if n := countContaining(capt.stop(), secret); n == 0 {
			t.Fatal("the capture never saw the plaintext payload: it cannot show that the tunnel hides it")
		}
	})

	var conn net.Conn
	defer func() {
		if conn != nil {
			conn.Close()
		}
	}()
	t.Run("pod traffic is encrypted on the underlay", func(t *testing.T) {
		capt := startCapture(t, a.ns, "veth0")
		var err error
		conn, err = dial(a.ns, "10.77.1.1", "10.77.2.1:7777", 5*time.Second)
		if err != nil {
			t.Fatalf("pod 10.77.1.1 -> 10.77.2.1 through the tunnel: %v", err)
		}
		for range 20 {
			if err := echo(conn, msg, 5*time.Second); err != nil {
				t.Fatalf("echo through the tunnel: %v", err)
			}
		}
		time.Sleep(100 * time.Millisecond)
		frames := capt.stop()
		if n := countContaining(frames, secret); n != 0 {
			t.Errorf("%d frames on the underlay carry the payload in plaintext", n)
		}
		kinds := map[string]int{}
		for _, f := range frames {
			s := summarize(f)
			switch s.kind {
			case "arp", "ipv6":
			case "udp":
				if s.src.Port() != DefaultListenPort || s.dst.Port() != DefaultListenPort {
					t.Errorf("UDP frame %s > %s is not between the listen ports", s.src, s.dst)
				}
			default:
				t.Errorf("%s frame %s > %s on the underlay: only WireGuard UDP should carry pod traffic", s.kind, s.src, s.dst)
			}
			kinds[s.kind]++
		}
		if kinds["udp"] < 20 {
			t.Errorf("only %d UDP frames on the underlay for 20 round trips of %d bytes", kinds["udp"], len(msg))
		}
		t.Logf("underlay frames: %v", kinds)
	})
	if conn == nil {
		t.FailNow()
	}

	var before Status
	t.Run("status shows the handshake and bytes both ways", func(t *testing.T) {
		st, err := a.dev.Status()
		if err != nil {
			t.Fatal(err)
		}
		bp := b.peer()
		if len(st.Peers) != 1 {
			t.Fatalf("peers = %+v, want node b", st.Peers)
		}
		p := st.Peers[0]
		if p.Name != b.ns || p.PublicKey != bp.PublicKey || p.Endpoint != bp.Endpoint || len(p.AllowedIPs) != 1 || p.AllowedIPs[0] != b.pod {
			t.Errorf("peer = %+v, want %+v", p, bp)
		}
		if p.LastHandshake.IsZero() || time.Since(p.LastHandshake) > time.Minute {
			t.Errorf("last handshake %v: want a recent one", p.LastHandshake)
		}
		if min := int64(20 * len(msg)); p.TransmitBytes < min || p.ReceiveBytes < min {
			t.Errorf("rx %d tx %d bytes: want at least %d each way", p.ReceiveBytes, p.TransmitBytes, min)
		}
		before = st
		if got, want := tableRoutes(t, a), []string{"10.77.2.0/24 dev " + a.iface}; !equal(got, want) {
			t.Errorf("table %d = %v, want %v", DefaultRouteTable, got, want)
		}
	})

	t.Run("SetPeers again changes nothing", func(t *testing.T) {
		setPeers(t, a, b.peer())
		setPeers(t, a, b.peer())
		st, err := a.dev.Status()
		if err != nil {
			t.Fatal(err)
		}
		if len(st.Peers) != 1 || !st.Peers[0].LastHandshake.Equal(before.Peers[0].LastHandshake) || st.Peers[0].TransmitBytes < before.Peers[0].TransmitBytes {
			t.Errorf("after the same SetPeers: %+v, before %+v: the session must continue", st.Peers, before.Peers)
		}
		if err := echo(conn, msg, 5*time.Second); err != nil {
			t.Errorf("the established connection after the same SetPeers: %v", err)
		}
		if got, want := tableRoutes(t, a), []string{"10.77.2.0/24 dev " + a.iface}; !equal(got, want) {
			t.Errorf("table %d = %v, want %v", DefaultRouteTable, got, want)
		}
	})

	t.Run("removing the peer stops traffic and removes its route", func(t *testing.T) {
		setPeers(t, a)
		if got := tableRoutes(t, a); len(got) != 0 {
			t.Errorf("table %d after removing the peer = %v, want empty", DefaultRouteTable, got)
		}
		if st, _ := a.dev.Status(); len(st.Peers) != 0 {
			t.Errorf("peers after removal = %+v", st.Peers)
		}
		if c, err := dial(a.ns, "10.77.1.1", "10.77.2.1:7777", time.Second); err == nil {
			c.Close()
			t.Error("a new connection to the removed peer's pod succeeded")
		}
		if err := echo(conn, []byte("after removal"), time.Second); err == nil {
			t.Error("the established connection still carries data after the peer was removed")
		}
		setPeers(t, a, b.peer())
		// The bytes written above are still in flight: TCP delivers them
		// first once the peer is back.
		want := append([]byte("after removal"), msg...)
		if err := echoExpect(conn, msg, want, 10*time.Second); err != nil {
			t.Errorf("the connection after the peer came back: %v", err)
		}
	})

	t.Run("key rotation keeps the connection once the peer has the new key", func(t *testing.T) {
		oldPub := a.peer().PublicKey
		k, err := GeneratePrivateKey()
		if err != nil {
			t.Fatal(err)
		}
		if err := StoreKey(a.keyFile, k); err != nil {
			t.Fatal(err)
		}
		if err := a.dev.SetPrivateKey(k); err != nil {
			t.Fatal(err)
		}
		st, _ := a.dev.Status()
		if st.PublicKey != k.PublicKey() || st.PublicKey == oldPub {
			t.Fatalf("public key after rotation = %s, want %s", st.PublicKey, k.PublicKey())
		}
		stalled := echo(conn, []byte("during rotation"), time.Second)
		t.Logf("echo while b still has the old key: %v", stalled)
		learned := time.Now()
		setPeers(t, b, a.peer()) // a.peer() reads the stored, new key
		want := msg
		if stalled != nil {
			want = append([]byte("during rotation"), msg...)
		}
		// b greets the new peer at once (persistent keepalive): no wait
		// for a's next handshake attempt (REKEY_TIMEOUT, 5 s).
		if err := echoExpect(conn, msg, want, 3*time.Second); err != nil {
			t.Fatalf("the established connection within 3s of b learning a's new key: %v", err)
		}
		t.Logf("data flowed again %v after b learned the new key", time.Since(learned).Round(time.Millisecond))
		if stalled == nil {
			t.Log("sessions were not dropped by SetPrivateKey")
		}
	})

	t.Run("node IPs in AllowedIPs: host traffic is encrypted, the tunnel's own packets do not loop", func(t *testing.T) {
		// The device marks its UDP packets, and the rule skips marked
		// packets: without that, packets to b's endpoint would route
		// into the tunnel itself.
		pa, pb := a.peer(), b.peer()
		pa.AllowedIPs = append(pa.AllowedIPs, netip.PrefixFrom(a.underlay, 32))
		pb.AllowedIPs = append(pb.AllowedIPs, netip.PrefixFrom(b.underlay, 32))
		setPeers(t, a, pb)
		setPeers(t, b, pa)
		defer func() {
			setPeers(t, a, b.peer())
			setPeers(t, b, a.peer())
		}()
		capt := startCapture(t, a.ns, "veth0")
		c, err := dial(a.ns, "", "192.168.77.2:7778", 5*time.Second)
		if err != nil {
			t.Fatalf("node a -> node b's IP through the tunnel: %v", err)
		}
		defer c.Close()
		if err := echo(c, msg, 5*time.Second); err != nil {
			t.Fatalf("host traffic through the tunnel: %v", err)
		}
		if err := echo(conn, msg, 5*time.Second); err != nil {
			t.Fatalf("pod traffic with node IPs in AllowedIPs: %v", err)
		}
		frames := capt.stop()
		if n := countContaining(frames, secret); n != 0 {
			t.Errorf("%d frames carry the host traffic's payload in plaintext", n)
		}
		for _, f := range frames {
			if s := summarize(f); s.kind == "tcp" {
				t.Errorf("plaintext TCP %s > %s on the underlay", s.src, s.dst)
			}
		}
	})

	t.Run("no private key in logs", func(t *testing.T) {
		for _, n := range []*node{a, b} {
			k, _, err := LoadOrCreateKey(n.keyFile)
			if err != nil {
				t.Fatal(err)
			}
			logs := n.log.String()
			if !strings.Contains(logs, k.PublicKey().String()) {
				t.Errorf("%s's log never names its public key: is the log captured?", n.ns)
			}
			for _, enc := range []string{k.k.String(), hex.EncodeToString(k.k[:])} {
				if strings.Contains(logs, enc) {
					t.Errorf("%s's log contains its private key", n.ns)
				}
			}
		}
		// a's first key too.
	})

	t.Run("close removes a userspace device, its routes and rule", func(t *testing.T) {
		if err := a.dev.Close(); err != nil {
			t.Fatal(err)
		}
		h, err := netlink.NewHandleAt(mustNS(t, a.ns))
		if err != nil {
			t.Fatal(err)
		}
		defer h.Close()
		if _, err := h.LinkByName(a.iface); err == nil {
			t.Error("the link is still there after Close")
		}
		rules, _ := h.RuleList(netlink.FAMILY_V4)
		for _, r := range rules {
			if r.Table == DefaultRouteTable {
				t.Errorf("rule %v still there after Close", r)
			}
		}
		if got := tableRoutes(t, a); len(got) != 0 {
			t.Errorf("table %d after Close = %v", DefaultRouteTable, got)
		}
		if _, err := os.Stat("/var/run/wireguard/" + a.iface + ".sock"); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("UAPI socket after Close: %v", err)
		}
		if _, err := a.dev.Status(); err == nil {
			t.Error("Status of a closed device succeeded")
		}
	})
}

// echoExpect writes msg and waits for want (what was in flight before,
// then msg).
func echoExpect(c net.Conn, msg, want []byte, timeout time.Duration) error {
	_ = c.SetDeadline(time.Now().Add(timeout))
	defer c.SetDeadline(time.Time{})
	if _, err := c.Write(msg); err != nil {
		return err
	}
	got := make([]byte, len(want))
	if _, err := readFull(c, got); err != nil {
		return err
	}
	if !bytes.Equal(got, want) {
		return errors.New("the bytes that came back differ from what was sent")
	}
	return nil
}

func countContaining(frames [][]byte, s []byte) int {
	n := 0
	for _, f := range frames {
		if bytes.Contains(f, s) {
			n++
		}
	}
	return n
}

func randBytes(t testing.TB, n int) []byte {
	b := make([]byte, n)
	if _, err := rand.Read(b); err != nil {
		t.Fatal(err)
	}
	return b
}

func equal(a, b []string) bool { return strings.Join(a, ",") == strings.Join(b, ",") }

// TestOpenModes: "kernel" works exactly where "auto" picks the kernel, and
// says what to do where it cannot; a name held by a live device is
// refused, not taken over.
func TestOpenModes(t *testing.T) {
	requireNetnsRoot(t, "opening devices in a network namespace")
	tn := newTestNet(t)
	dir := t.TempDir()
	open := func(mode, iface string) (*Device, error) {
		var d *Device
		err := inNS(tn.a, func() (err error) {
			d, err = Open(Config{Interface: iface, KeyFile: filepath.Join(dir, "k"), Mode: mode, ListenPort: 51900})
			return err
		})
		if d != nil {
			t.Cleanup(func() { d.Close() })
		}
		return d, err
	}
	kd, kerr := open(ModeKernel, "nmk"+tn.id)
	switch {
	case kerr == nil && kd.Kind() != KindKernel:
		t.Fatalf("mode kernel gave a %s device", kd.Kind())
	case kerr != nil && !errors.Is(kerr, ErrKernelUnsupported):
		t.Fatalf("mode kernel: %v", kerr)
	case kerr != nil && !strings.Contains(kerr.Error(), "--wireguard-mode=auto or userspace"):
		t.Errorf("the error does not say what to do: %v", kerr)
	}
	if kd != nil {
		kd.Close()
	}
	ad, err := open(ModeAuto, "nmu"+tn.id)
	if err != nil {
		t.Fatal(err)
	}
	want := KindUserspace
	if kerr == nil {
		want = KindKernel
	}
	if ad.Kind() != want {
		t.Errorf("mode auto gave a %s device; mode kernel said %v", ad.Kind(), kerr)
	}
	t.Logf("kernel mode: %v; auto: %s", kerr, ad.Kind())
	if ad.Kind() == KindUserspace {
		if _, err := open(ModeUserspace, "nmu"+tn.id); err == nil || !strings.Contains(err.Error(), "held by another process") {
			t.Errorf("opening a name a live userspace device holds: %v, want a refusal", err)
		}
		// and the first device is unharmed
		if _, err := ad.Status(); err != nil {
			t.Errorf("the first device after the refused Open: %v", err)
		}
	}
}

// TestRestart is an agent restart with the userspace device: the process
// dies (SIGKILL, so nothing is cleaned up), the tunnel stops; the next
// process keeps the key, so the peer needs no change, and a connection
// established before the restart carries data again.
func TestRestart(t *testing.T) {
	requireNetnsRoot(t, "restarting a device's process in a network namespace")
	tn := newTestNet(t)
	dir := t.TempDir()
	b := &node{ns: tn.b, iface: "nmrb" + tn.id, keyFile: filepath.Join(dir, "b.key"),
		underlay: netip.MustParseAddr("192.168.77.2"), pod: netip.MustParsePrefix("10.77.2.0/24")}
	a := &node{ns: tn.a, iface: "nmra" + tn.id, keyFile: filepath.Join(dir, "a.key"),
		underlay: netip.MustParseAddr("192.168.77.1"), pod: netip.MustParsePrefix("10.77.1.0/24")}
	openNode(t, b)
	spec, _ := json.Marshal(hostSpec{Config: Config{Interface: a.iface, KeyFile: a.keyFile, Mode: ModeUserspace}, Peers: []Peer{b.peer()}})
	start := func() *exec.Cmd {
		return startHost(t, a.ns, exec.Command("ip", "netns", "exec", a.ns, os.Args[0]), hostEnv+"="+string(spec))
	}
	host := start()
	firstKey := a.peer().PublicKey
	setPeers(t, b, a.peer())
	echoServer(t, b.ns, "10.77.2.1:7777")
	conn, err := dial(a.ns, "10.77.1.1", "10.77.2.1:7777", 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	if err := echo(conn, []byte("before the restart"), 5*time.Second); err != nil {
		t.Fatal(err)
	}

	if err := host.Process.Kill(); err != nil { // SIGKILL to the one process
		t.Fatal(err)
	}
	_ = host.Wait()
	if err := echo(conn, []byte("agent away"), time.Second); err == nil {
		t.Fatal("data went through while the device's process was dead")
	}
	if got := tableRoutes(t, a); len(got) != 0 {
		t.Errorf("routes left while the device's process is dead: %v", got)
	}

	began := time.Now()
	start()
	if k := a.peer().PublicKey; k != firstKey {
		t.Fatalf("public key after restart %s, before %s: a restart must keep the key", k, firstKey)
	}
	want := append([]byte("agent away"), []byte("after the restart")...)
	if err := echoExpect(conn, []byte("after the restart"), want, 15*time.Second); err != nil {
		t.Fatalf("the connection from before the restart: %v", err)
	}
	t.Logf("data flowed again %v after the new process started", time.Since(began).Round(time.Millisecond))
	h, err := netlink.NewHandleAt(mustNS(t, a.ns))
	if err != nil {
		t.Fatal(err)
	}
	defer h.Close()
	n := 0
	rules, _ := h.RuleList(netlink.FAMILY_V4)
	for _, r := range rules {
		if r.Table == DefaultRouteTable {
			n++
		}
	}
	if n != 1 {
		t.Errorf("%d rules look up table %d after the restart, want 1", n, DefaultRouteTable)
	}
}
