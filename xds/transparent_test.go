package xds_test

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"golang.org/x/sys/unix"

	nmproxy "github.com/nodemesh/nodemesh/proxy"
	pt "github.com/nodemesh/nodemesh/proxy/proxytest"
	"github.com/nodemesh/nodemesh/xds"
)

// adminEgress is an egress L7 rule of node-2's admin pod: GET /public/...
// on the frontend's port 8080.
const adminEgress = `
apiVersion: nodemesh.io/v1
kind: MeshNetworkPolicy
metadata: {name: admin-out, namespace: default}
spec:
  endpointSelector: {matchLabels: {app: admin}}
  egress:
  - toEndpoints: [{matchLabels: {app: frontend}}]
    toPorts:
    - ports: [{port: "8080", protocol: TCP}]
      rules: {http: [{method: GET, path: "/public/.*"}]}
`

// TestL7Transparent runs node-2 of testWorld as the system would, in a
// network namespace of its own: the agent's xds.Server serves the
// configuration Build generates and receives the access logs on one
// socket, nodemesh-proxy takes both from there, and TPROXY stands in for
// the datapath's bpf_sk_assign, steering new flows to node-2's pods
// (10.0.2.0/24, local) into the inbound listener and flows from them to
// node-1's pods (10.0.1.0/24: not local, but delivered locally, as the
// datapath must deliver replies to the proxy) into the outbound one,
// unless they carry the proxy's marks. Requests of the frontend to the
// backend (ingress L7) and of admin to the frontend (egress L7) are
// allowed or denied as the policies say; the servers see the client's
// address and the direction's mark; every request is an L7Event with the
// client, the original destination, the direction, the verdict and the
// rule.
func TestL7Transparent(t *testing.T) {
	if pt.InNetnsChild() {
		l7TransparentChild(t)
		return
	}
	if os.Geteuid() != 0 {
		t.Skip("needs root: creates a network namespace, local routes, policy routing and TPROXY rules (CI runs as root)")
	}
	for _, tool := range []string{"ip", "iptables", "sysctl"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Fatalf("%s is missing (scripts/deps.sh installs iproute2, iptables and procps): %v", tool, err)
		}
	}
	tproxy := func(dst string, mark uint32, port uint16) []string {
		return []string{"iptables", "-t", "mangle", "-A", "PREROUTING", "-p", "tcp", "--syn", "-d", dst,
			"-m", "mark", "!", "--mark", fmt.Sprintf("0x%x/0x%x", mark, xds.MarkMask), "-j", "TPROXY",
			"--on-ip", "127.0.0.1", "--on-port", fmt.Sprint(port), "--tproxy-mark", "0x200/0xf00"}
	}
	pt.RunInNetns(t, "^TestL7Transparent$",
		[]string{"ip", "link", "set", "lo", "up"},
		[]string{"sysctl", "-qw", "net.ipv4.tcp_fwmark_accept=1"},
		[]string{"ip", "route", "add", "local", "10.0.2.0/24", "dev", "lo"},
		[]string{"ip", "rule", "add", "to", "10.0.1.0/24", "lookup", "100", "pref", "100"},
		[]string{"ip", "route", "add", "local", "10.0.1.0/24", "dev", "lo", "table", "100"},
		tproxy("10.0.2.0/24", xds.MarkProxyIngress, xds.DefaultInboundPort),
		tproxy("10.0.1.0/24", xds.MarkProxyEgress, xds.DefaultOutboundPort))
}

func l7TransparentChild(t *testing.T) {
	// The pods' servers report the peer and the mark of the connection.
	type markKey struct{}
	srv := &http.Server{
		ReadHeaderTimeout: 5 * time.Second,
		ConnContext: func(ctx context.Context, c net.Conn) context.Context {
			mark := -1
			if rc, err := c.(*net.TCPConn).SyscallConn(); err == nil {
				_ = rc.Control(func(fd uintptr) { mark, _ = unix.GetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_MARK) })
			}
			return context.WithValue(ctx, markKey{}, mark)
		},
		Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			local := r.Context().Value(http.LocalAddrContextKey).(net.Addr).String()
			fmt.Fprintf(w, "%s peer=%s mark=0x%x", local, r.RemoteAddr, r.Context().Value(markKey{}).(int))
		}),
	}
	// The frontend's address is not local here (node-1's pod): its server
	// needs IP_TRANSPARENT to answer for it.
	for _, a := range []string{"0.0.0.0:80", "0.0.0.0:8080"} { // backend, frontend
		ln, err := (&net.ListenConfig{Control: transparent}).Listen(context.Background(), "tcp4", a)
		if err != nil {
			t.Fatal(err)
		}
		go func() { _ = srv.Serve(ln) }()
	}
	defer srv.Close()

	// The agent's side: configuration and access logs on one socket.
	dir, err := os.MkdirTemp("", "nml7")
	if err != nil {
		t.Fatal(err)
	}
	defer os.RemoveAll(dir)
	sock := filepath.Join(dir, "xds.sock")
	s := xds.NewServer(slog.New(slog.DiscardHandler), prometheus.NewRegistry())
	var mu sync.Mutex
	events := map[string]xds.L7Event{}
	s.OnL7Event(func(e xds.L7Event) {
		mu.Lock()
		defer mu.Unlock()
		events[e.Path] = e
	})
	e := engine(t, testWorld, seedPolicy, adminEgress)
	r := build(t, e, "node-2")
	version, err := s.SetNode("node-2", xds.InputFromEngine(e, "node-2", xds.Config{}))
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	served := make(chan error, 1)
	go func() { served <- s.Serve(ctx, sock) }()
	defer func() {
		cancel()
		if err := <-served; err != nil {
			t.Error(err)
		}
	}()

	// The proxy, as the node runs it: only the node name and the socket.
	p := nmproxy.New(nmproxy.Config{NodeID: "node-2", XDSAddress: "unix://" + sock, AccessLog: io.Discard, AdminAddress: ""},
		slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn})))
	pctx, pcancel := context.WithCancel(context.Background())
	pdone := make(chan error, 1)
	go func() { pdone <- p.Run(pctx) }()
	defer func() {
		pcancel()
		if err := <-pdone; err != nil {
			t.Error(err)
		}
	}()
	wctx, wcancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer wcancel()
	if err := s.WaitAcked(wctx, "node-2", version); err != nil {
		t.Fatalf("the proxy did not ACK %s: %v", version, err)
	}

	get := func(src, url string) (int, string, netip.AddrPort) {
		t.Helper()
		var local netip.AddrPort
		d := &net.Dialer{Timeout: 5 * time.Second, LocalAddr: &net.TCPAddr{IP: net.ParseIP(src)}, Control: transparent}
		cl := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{DialContext: d.DialContext, DisableKeepAlives: true}}
		req, _ := http.NewRequest("GET", url, nil)
		req = req.WithContext(withLocal(req.Context(), &local))
		resp, err := cl.Do(req)
		if err != nil {
			t.Fatalf("GET %s from %s: %v", url, src, err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b), local
	}
	inPolicy, outPolicy := "", ""
	for n := range rbacOf(t, listener(r, xds.InboundListenerName).GetFilterChains()[0]).GetPolicies() {
		inPolicy = n
	}
	for n := range rbacOf(t, listener(r, xds.OutboundListenerName).GetFilterChains()[0]).GetPolicies() {
		outPolicy = n
	}
	type want struct {
		code      int
		body      string // from the server; "" for the proxy's 403
		dir       string
		dst       string
		verdict   string
		rule      string
		src, path string
	}
	cases := []want{
		{200, "10.0.2.10:80 peer=10.0.1.10:* mark=0xa00", xds.DirectionInbound, "10.0.2.10:80", xds.VerdictAllowed, inPolicy, "10.0.1.10", "/userdata/42"},
		{403, "", xds.DirectionInbound, "10.0.2.10:80", xds.VerdictDenied, "", "10.0.1.10", "/userdata/abc"},
		{403, "", xds.DirectionInbound, "10.0.2.10:80", xds.VerdictDenied, "", "10.0.1.11", "/userdata/43"}, // other is not frontend
		{200, "10.0.1.10:8080 peer=10.0.2.11:* mark=0xb00", xds.DirectionOutbound, "10.0.1.10:8080", xds.VerdictAllowed, outPolicy, "10.0.2.11", "/public/x"},
		{403, "", xds.DirectionOutbound, "10.0.1.10:8080", xds.VerdictDenied, "", "10.0.2.11", "/private"},
	}
	srcs := map[string]netip.AddrPort{}
	for _, c := range cases {
		code, body, local := get(c.src, "http://"+c.dst+c.path)
		srcs[c.path] = local
		if code != c.code {
			t.Errorf("GET %s%s from %s = %d %q, want %d", c.dst, c.path, c.src, code, body, c.code)
			continue
		}
		if c.body != "" {
			var gotLocal, peer string
			var mark int
			if _, err := fmt.Sscanf(body, "%s peer=%s mark=0x%x", &gotLocal, &peer, &mark); err != nil {
				t.Errorf("GET %s%s: body %q: %v", c.dst, c.path, body, err)
				continue
			}
			ap, err := netip.ParseAddrPort(peer)
			if want := fmt.Sprintf("%s peer=%s:* mark=0x%x", gotLocal, ap.Addr(), mark); err != nil || want != c.body {
				t.Errorf("GET %s%s from %s: the server saw %q, want %q (the client's address, the direction's mark)", c.dst, c.path, c.src, body, c.body)
			}
		}
	}
	deadline := time.Now().Add(10 * time.Second)
	for {
		mu.Lock()
		n := len(events)
		mu.Unlock()
		if n >= len(cases) || time.Now().After(deadline) {
			break
		}
		time.Sleep(50 * time.Millisecond)
	}
	mu.Lock()
	defer mu.Unlock()
	for _, c := range cases {
		e, ok := events[c.path]
		if !ok {
			t.Errorf("no L7 event for %s", c.path)
			continue
		}
		if e.Node != "node-2" || e.Direction != c.dir || e.Src != srcs[c.path] || e.Dst.String() != c.dst || e.Method != "GET" ||
			e.Status != c.code || e.Verdict != c.verdict || e.Rule != c.rule {
			t.Errorf("event of %s: %+v\nwant %s from %s to %s, %d %s by %q", c.path, e, c.dir, srcs[c.path], c.dst, c.code, c.verdict, c.rule)
		}
		t.Logf("%-9s %-16s %s -> %s %s %d %s %s", e.Direction, e.Src, e.Method, e.Dst, e.Path, e.Status, e.Verdict, e.Rule)
	}
}

// transparent sets IP_TRANSPARENT: the test's pods of node-1 bind
// addresses that are not local in the namespace.
func transparent(_, _ string, c syscall.RawConn) error {
	var serr error
	err := c.Control(func(fd uintptr) { serr = unix.SetsockoptInt(int(fd), unix.SOL_IP, unix.IP_TRANSPARENT, 1) })
	return errors.Join(err, serr)
}
