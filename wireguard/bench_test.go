package wireguard

import (
	"bufio"
	"encoding/binary"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"golang.zx2c4.com/wireguard/wgctrl"
	"golang.zx2c4.com/wireguard/wgctrl/wgtypes"
)

// BenchmarkThroughput compares, in one run, single-stream TCP throughput
// and the request/response rate (64-byte requests and answers, one in
// flight) between two nodes' namespaces over three paths: plaintext over
// the veth, the embedded device (this package, each node's device in a
// process of its own), and Debian's wireguard-go (a process per node,
// configured through wgctrl). Paths take turns in each round; the medians
// over the rounds are reported with the ratios the issue sets targets
// for (embedded ≥ 1.5× wireguard-go, ≥ 0.5× plaintext). The load
// generator runs in the benchmark's process. Run it once:
//
//	go test ./wireguard -run '^$' -bench BenchmarkThroughput -benchtime 1x
//
// NODEMESH_WG_BENCH_ROUNDS (5) and NODEMESH_WG_BENCH_SECONDS (3) set the
// rounds and the seconds per measurement; NODEMESH_WG_BENCH_HOST_GOMAXPROCS
// sets GOMAXPROCS of the device processes (both implementations) only.
func BenchmarkThroughput(b *testing.B) {
	requireNetnsRoot(b, "throughput between network namespaces")
	wggo, err := exec.LookPath("wireguard-go")
	if err != nil {
		b.Skip("needs Debian's wireguard-go for the comparison: apt-get install --no-install-recommends wireguard-go")
	}
	rounds, secs := envInt("NODEMESH_WG_BENCH_ROUNDS", 5), envInt("NODEMESH_WG_BENCH_SECONDS", 3)
	dur := time.Duration(secs) * time.Second

	tn := newTestNet(b)
	dir := b.TempDir()
	keys := map[string]PrivateKey{}
	for _, n := range []string{"ea", "eb", "ga", "gb"} {
		k, _, err := LoadOrCreateKey(filepath.Join(dir, n+".key"))
		if err != nil {
			b.Fatal(err)
		}
		keys[n] = k
	}
	under := map[string]netip.Addr{"a": netip.MustParseAddr("192.168.77.1"), "b": netip.MustParseAddr("192.168.77.2")}
	nsOf := map[string]string{"a": tn.a, "b": tn.b}

	hosts := map[string][]int{} // path: the device processes' pids
	// The embedded device: pods 10.77.{1,2}.1 on lo, port 51871.
	for _, side := range []string{"a", "b"} {
		other := map[string]string{"a": "b", "b": "a"}[side]
		spec := hostSpec{
			Config: Config{Interface: "nme" + side + tn.id, KeyFile: filepath.Join(dir, "e"+side+".key"), Mode: ModeUserspace},
			Peers: []Peer{{
				PublicKey: keys["e"+other].PublicKey(), Name: "node-" + other,
				Endpoint:   netip.AddrPortFrom(under[other], DefaultListenPort),
				AllowedIPs: []netip.Prefix{netip.MustParsePrefix(map[string]string{"a": "10.77.1.0/24", "b": "10.77.2.0/24"}[other])},
			}},
		}
		js, _ := json.Marshal(spec)
		hosts["embedded"] = append(hosts["embedded"], startHost(b, nsOf[side], exec.Command("ip", "netns", "exec", nsOf[side], os.Args[0]), hostEnv+"="+string(js)).Process.Pid)
	}

	// wireguard-go: pods 10.78.{1,2}.1 on lo, port 51872, main table.
	wc, err := wgctrl.New()
	if err != nil {
		b.Fatal(err)
	}
	defer wc.Close()
	for _, side := range []string{"a", "b"} {
		other := map[string]string{"a": "b", "b": "a"}[side]
		name := "nmg" + side + tn.id
		hosts["wireguard-go"] = append(hosts["wireguard-go"], startHost(b, nsOf[side], exec.Command("ip", "netns", "exec", nsOf[side], wggo, "-f", name), "").Process.Pid)
		waitSocket(b, name)
		pk, port := keys["g"+side].k, 51872
		_, allowed, _ := net.ParseCIDR(map[string]string{"a": "10.78.1.0/24", "b": "10.78.2.0/24"}[other])
		if err := wc.ConfigureDevice(name, wgtypes.Config{PrivateKey: &pk, ListenPort: &port, Peers: []wgtypes.PeerConfig{{
			PublicKey: keys["g"+other].PublicKey(), Endpoint: &net.UDPAddr{IP: under[other].AsSlice(), Port: 51872},
			AllowedIPs: []net.IPNet{*allowed},
		}}}); err != nil {
			b.Fatal(err)
		}
		in := []string{"ip", "netns", "exec", nsOf[side], "ip"}
		run(b, append(in, "addr", "add", map[string]string{"a": "10.78.1.1/32", "b": "10.78.2.1/32"}[side], "dev", "lo")...)
		run(b, append(in, "link", "set", name, "mtu", strconv.Itoa(DefaultMTU), "up")...)
		run(b, append(in, "route", "add", allowed.String(), "dev", name)...)
	}

	type path struct{ name, local, remote string }
	paths := []path{
		{"plaintext", "192.168.77.1", "192.168.77.2"},
		{"embedded", "10.77.1.1", "10.77.2.1"},
		{"wireguard-go", "10.78.1.1", "10.78.2.1"},
	}
	for _, p := range paths {
		sinkServer(b, tn.b, p.remote+":5201")
		echoServer(b, tn.b, p.remote+":5202")
	}
	mbps := map[string][]float64{}
	rrps := map[string][]float64{}
	cpuPerGB := map[string][]float64{} // device processes' CPU seconds per GB streamed
	for r := range rounds {
		for i := range paths {
			p := paths[(i+r)%len(paths)]
			cpu0 := cpuSeconds(hosts[p.name])
			tp, err := streamOnce(tn.a, p.local, p.remote+":5201", dur)
			if err != nil {
				b.Fatalf("%s stream: %v", p.name, err)
			}
			if len(hosts[p.name]) > 0 {
				cpuPerGB[p.name] = append(cpuPerGB[p.name], (cpuSeconds(hosts[p.name])-cpu0)/(tp*dur.Seconds()/1e3))
			}
			rr, err := rrOnce(tn.a, p.local, p.remote+":5202", dur)
			if err != nil {
				b.Fatalf("%s request/response: %v", p.name, err)
			}
			mbps[p.name] = append(mbps[p.name], tp)
			rrps[p.name] = append(rrps[p.name], rr)
		}
	}
	var table strings.Builder
	for _, p := range paths {
		fmt.Fprintf(&table, "%-12s MB/s %v  req/s %v  device CPU s/GB %v\n", p.name, rounded(mbps[p.name]), rounded(rrps[p.name]), rounded(cpuPerGB[p.name]))
	}
	med := func(v []float64) float64 { s := slices.Clone(v); slices.Sort(s); return s[len(s)/2] }
	for _, p := range paths {
		b.ReportMetric(med(mbps[p.name]), p.name+"-MB/s")
		b.ReportMetric(med(rrps[p.name]), p.name+"-req/s")
	}
	ratio := func(m map[string][]float64, x, y string) float64 { return med(m[x]) / med(m[y]) }
	b.ReportMetric(med(cpuPerGB["embedded"]), "embedded-cpu-s/GB")
	b.ReportMetric(med(cpuPerGB["wireguard-go"]), "wireguard-go-cpu-s/GB")
	b.ReportMetric(ratio(mbps, "embedded", "wireguard-go"), "tput-embedded/wggo")
	b.ReportMetric(ratio(mbps, "embedded", "plaintext"), "tput-embedded/plain")
	b.ReportMetric(ratio(rrps, "embedded", "wireguard-go"), "rr-embedded/wggo")
	b.ReportMetric(ratio(rrps, "embedded", "plaintext"), "rr-embedded/plain")
	b.Logf("rounds, in order:\n%s", table.String())
	b.Logf("medians of %d rounds of %s: throughput embedded/wireguard-go %.2fx (target >= 1.5), embedded/plaintext %.2fx (target >= 0.5); req/s embedded/wireguard-go %.2fx, embedded/plaintext %.2fx",
		rounds, dur, ratio(mbps, "embedded", "wireguard-go"), ratio(mbps, "embedded", "plaintext"), ratio(rrps, "embedded", "wireguard-go"), ratio(rrps, "embedded", "plaintext"))
}

func rounded(v []float64) []float64 {
	out := make([]float64, len(v))
	for i, x := range v {
		out[i] = float64(int(x*10+0.5)) / 10
	}
	return out
}

// cpuSeconds is the user and system CPU time of the processes so far.
func cpuSeconds(pids []int) float64 {
	var ticks float64
	for _, pid := range pids {
		b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
		if err != nil {
			continue
		}
		// Fields after the command's closing parenthesis; utime and
		// stime are the 14th and 15th of the line.
		f := strings.Fields(string(b[strings.LastIndexByte(string(b), ')')+2:]))
		u, _ := strconv.ParseFloat(f[11], 64)
		s, _ := strconv.ParseFloat(f[12], 64)
		ticks += u + s
	}
	return ticks / 100 // USER_HZ
}

func envInt(name string, def int) int {
	if v, err := strconv.Atoi(os.Getenv(name)); err == nil && v > 0 {
		return v
	}
	return def
}

// startHost starts a device process in ns and waits for it to be ready:
// "ready" on stdout for the embedded host, the UAPI socket for
// wireguard-go (waitSocket). It is stopped when the benchmark ends.
func startHost(tb testing.TB, ns string, cmd *exec.Cmd, env string) *exec.Cmd {
	tb.Helper()
	cmd.Env = os.Environ()
	if env != "" {
		cmd.Env = append(cmd.Env, env)
	}
	if n := os.Getenv("NODEMESH_WG_BENCH_HOST_GOMAXPROCS"); n != "" {
		cmd.Env = append(cmd.Env, "GOMAXPROCS="+n)
	}
	stdin, err := cmd.StdinPipe()
	if err != nil {
		tb.Fatal(err)
	}
	var stderr strings.Builder
	cmd.Stderr = &stderr
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		tb.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() {
		stdin.Close()
		done := make(chan struct{})
		go func() { _ = cmd.Wait(); close(done) }()
		select {
		case <-done:
		case <-time.After(5 * time.Second):
			_ = cmd.Process.Kill() // this one process, by its pid
			<-done
		}
	})
	if env == "" {
		// wireguard-go in the foreground does not exit on stdin EOF.
		tb.Cleanup(func() { _ = cmd.Process.Signal(os.Interrupt) })
		go func() { _, _ = io.Copy(io.Discard, stdout) }()
		return cmd
	}
	line, err := bufio.NewReader(stdout).ReadString('\n')
	if strings.TrimSpace(line) != "ready" {
		tb.Fatalf("device host in %s: %q %v\n%s", ns, line, err, stderr.String())
	}
	return cmd
}

func waitSocket(tb testing.TB, name string) {
	tb.Helper()
	for range 100 {
		if _, err := os.Stat("/var/run/wireguard/" + name + ".sock"); err == nil {
			return
		}
		time.Sleep(50 * time.Millisecond)
	}
	tb.Fatalf("wireguard-go did not create /var/run/wireguard/%s.sock", name)
}

// sinkServer reads each connection to its end and answers with the byte
// count, so throughput is measured at the receiver.
func sinkServer(tb testing.TB, ns, addr string) {
	tb.Helper()
	var l net.Listener
	mustInNS(tb, ns, func() (err error) { l, err = net.Listen("tcp4", addr); return err })
	tb.Cleanup(func() { l.Close() })
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				n, _ := io.Copy(io.Discard, c)
				_ = binary.Write(c, binary.BigEndian, n)
			}()
		}
	}()
}

// streamOnce sends for d and returns MB/s as the receiver counted them.
func streamOnce(ns, local, remote string, d time.Duration) (float64, error) {
	c, err := dial(ns, local, remote, 5*time.Second)
	if err != nil {
		return 0, err
	}
	defer c.Close()
	buf := make([]byte, 128<<10)
	start := time.Now()
	_ = c.SetWriteDeadline(start.Add(d))
	for {
		if _, err := c.Write(buf); err != nil {
			if ne, ok := err.(net.Error); ok && ne.Timeout() {
				break
			}
			return 0, err
		}
	}
	_ = c.SetWriteDeadline(time.Time{})
	_ = c.(*net.TCPConn).CloseWrite()
	_ = c.SetReadDeadline(time.Now().Add(30 * time.Second))
	var n int64
	if err := binary.Read(c, binary.BigEndian, &n); err != nil {
		return 0, fmt.Errorf("read the receiver's count: %w", err)
	}
	return float64(n) / time.Since(start).Seconds() / 1e6, nil
}

// rrOnce runs 64-byte request/response transactions for d and returns
// their rate.
func rrOnce(ns, local, remote string, d time.Duration) (float64, error) {
	c, err := dial(ns, local, remote, 5*time.Second)
	if err != nil {
		return 0, err
	}
	defer c.Close()
	_ = c.(*net.TCPConn).SetNoDelay(true)
	req, resp := make([]byte, 64), make([]byte, 64)
	start := time.Now()
	_ = c.SetDeadline(start.Add(d + 5*time.Second))
	n := 0
	for time.Since(start) < d {
		if _, err := c.Write(req); err != nil {
			return 0, err
		}
		if _, err := io.ReadFull(c, resp); err != nil {
			return 0, err
		}
		n++
	}
	return float64(n) / time.Since(start).Seconds(), nil
}
