package proxy

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	cluster "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	listener "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	route "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	"golang.org/x/sys/unix"

	pt "github.com/nodemesh/nodemesh/proxy/proxytest"
)

// TestTransparentOriginalSrc runs a transparent listener with the
// original_src listener filter in a network namespace of its own, where
// the backends' addresses (10.99.0.0/24, fd00:99::/64) are local and
// TPROXY steers new TCP flows to them into the listener unless marked
// 0xa00, and the clients' addresses (10.98.0.0/24, fd00:98::/64) are not
// local — binding them needs IP_TRANSPARENT — yet delivered locally, as
// the datapath would deliver replies to the proxy. Each client binds its
// own address and connects to a backend; the backend must see the
// client's address as its peer, the connection carrying the mark (the
// namespace reflects a SYN's mark into the accepted socket:
// tcp_fwmark_accept). Upstream connections are pooled per client address,
// never shared across; and when the filter and the cluster both set a
// mark, the cluster's wins (Envoy's order).
func TestTransparentOriginalSrc(t *testing.T) {
	if pt.InNetnsChild() {
		originalSrcChild(t)
		return
	}
	pt.RequireNetnsRoot(t, "creates a network namespace, local routes, policy routing and TPROXY rules", "ip", "iptables", "ip6tables", "sysctl")
	tproxy := func(cmd, dst, onIP string) []string {
		return []string{cmd, "-t", "mangle", "-A", "PREROUTING", "-p", "tcp", "--syn", "-d", dst,
			"-m", "mark", "!", "--mark", "0xa00/0xf00", "-j", "TPROXY", "--on-ip", onIP, "--on-port", "15006", "--tproxy-mark", "0x200/0xf00"}
	}
	pt.RunInNetns(t, "^TestTransparentOriginalSrc$",
		[]string{"ip", "link", "set", "lo", "up"},
		[]string{"sysctl", "-qw", "net.ipv4.tcp_fwmark_accept=1"},
		[]string{"ip", "route", "add", "local", "10.99.0.0/24", "dev", "lo"},
		[]string{"ip", "-6", "route", "add", "local", "fd00:99::/64", "dev", "lo"},
		[]string{"ip", "rule", "add", "to", "10.98.0.0/24", "lookup", "100", "pref", "100"},
		[]string{"ip", "route", "add", "local", "10.98.0.0/24", "dev", "lo", "table", "100"},
		[]string{"ip", "-6", "rule", "add", "to", "fd00:98::/64", "lookup", "100", "pref", "100"},
		[]string{"ip", "-6", "route", "add", "local", "fd00:98::/64", "dev", "lo", "table", "100"},
		tproxy("iptables", "10.99.0.0/24", "127.0.0.1"),
		tproxy("ip6tables", "fd00:99::/64", "::1"))
}

// seen is what the backend observed of one request.
type seen struct {
	peer netip.AddrPort
	mark int
}

func originalSrcChild(t *testing.T) {
	// The backend, on both families, reports its peer and the mark the
	// connection's SYN carried.
	type markKey struct{}
	var mu sync.Mutex
	var log []seen
	be := &http.Server{
		ReadHeaderTimeout: 5 * time.Second,
		ConnContext: func(ctx context.Context, c net.Conn) context.Context {
			mark := -1
			if rc, err := c.(*net.TCPConn).SyscallConn(); err == nil {
				_ = rc.Control(func(fd uintptr) { mark, _ = unix.GetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_MARK) })
			}
			return context.WithValue(ctx, markKey{}, mark)
		},
		Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			s := seen{peer: netip.MustParseAddrPort(r.RemoteAddr), mark: r.Context().Value(markKey{}).(int)}
			mu.Lock()
			log = append(log, s)
			mu.Unlock()
			fmt.Fprintf(w, "peer=%s mark=0x%x", s.peer, s.mark)
		}),
	}
	for _, a := range []struct{ network, addr string }{{"tcp4", "0.0.0.0:8080"}, {"tcp6", "[::]:8080"}} {
		ln, err := net.Listen(a.network, a.addr)
		if err != nil {
			t.Fatal(err)
		}
		go func() { _ = be.Serve(ln) }()
	}
	defer be.Close()

	access := &syncBuffer{}
	p := New(Config{NodeID: "n", AccessLog: access}, nil)
	defer p.Close()
	inbound := func(mark uint32) *listener.Listener {
		return pt.Listener("inbound", "0.0.0.0", 15006, pt.HCM("routes", allowAll(), pt.WithAccessLog), pt.Transparent, pt.OriginalSrc(mark),
			func(l *listener.Listener) {
				l.AdditionalAddresses = []*listener.AdditionalAddress{{Address: pt.SocketAddress("::", 15006)}}
			})
	}
	apply := func(clusterMark int64, filterMark uint32) {
		t.Helper()
		if err := p.applyClusters("1", []*cluster.Cluster{pt.OriginalDstCluster("od", clusterMark)}); err != nil {
			t.Fatal(err)
		}
		if err := p.applyRoutes("1", []*route.RouteConfiguration{pt.RouteConfig("routes", "od")}); err != nil {
			t.Fatal(err)
		}
		if err := p.applyListeners("1", []*listener.Listener{inbound(filterMark)}); err != nil {
			t.Fatalf("transparent listener with original_src: %v", err)
		}
	}

	// A client bound to its own (non-local) address; each request on a
	// new downstream connection.
	get := func(src netip.Addr, url string) string {
		t.Helper()
		d := &net.Dialer{Timeout: 5 * time.Second, LocalAddr: &net.TCPAddr{IP: src.AsSlice()},
			Control: func(_, _ string, c syscall.RawConn) error {
				var serr error
				err := c.Control(func(fd uintptr) {
					if src.Is4() {
						serr = unix.SetsockoptInt(int(fd), unix.SOL_IP, unix.IP_TRANSPARENT, 1)
					} else {
						serr = unix.SetsockoptInt(int(fd), unix.SOL_IPV6, unix.IPV6_TRANSPARENT, 1)
					}
				})
				return errors.Join(err, serr)
			}}
		cl := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{DialContext: d.DialContext, DisableKeepAlives: true}}
		resp, err := cl.Get(url)
		if err != nil {
			t.Fatalf("GET %s from %s: %v", url, src, err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		if resp.StatusCode != 200 {
			t.Fatalf("GET %s from %s: %d %s", url, src, resp.StatusCode, b)
		}
		return string(b)
	}

	// The clients' addresses are not local: a plain bind fails, so the
	// proxy's upstream bind below needs IP_TRANSPARENT.
	for _, a := range []string{"10.98.0.10:0", "[fd00:98::10]:0"} {
		if ln, err := net.Listen("tcp", a); err == nil {
			ln.Close()
			t.Fatalf("bind %s without IP_TRANSPARENT worked: the client address is local, the test proves nothing", a)
		}
	}

	type client struct {
		src netip.Addr
		url string
	}
	clients := []client{
		{netip.MustParseAddr("10.98.0.10"), "http://10.99.0.7:8080/a"},
		{netip.MustParseAddr("10.98.0.11"), "http://10.99.0.7:8080/b"},
		{netip.MustParseAddr("fd00:98::10"), "http://[fd00:99::7]:8080/c"},
		{netip.MustParseAddr("fd00:98::11"), "http://[fd00:99::7]:8080/d"},
	}
	phase := func(name string, wantMark int) {
		t.Helper()
		mu.Lock()
		log = nil
		mu.Unlock()
		const rounds = 4
		for range rounds {
			for _, c := range clients { // interleaved: pools of different sources live side by side
				body := get(c.src, c.url)
				peer, _, _ := strings.Cut(strings.TrimPrefix(body, "peer="), " ")
				if ap, err := netip.ParseAddrPort(peer); err != nil || ap.Addr() != c.src {
					t.Fatalf("%s: %s from %s: backend saw %q, want the client's address as the peer", name, c.url, c.src, body)
				}
			}
		}
		mu.Lock()
		defer mu.Unlock()
		ports := map[netip.Addr]map[uint16]bool{}
		for _, s := range log {
			if s.mark != wantMark {
				t.Errorf("%s: upstream connection from %s marked 0x%x, want 0x%x", name, s.peer, s.mark, wantMark)
			}
			if ports[s.peer.Addr()] == nil {
				ports[s.peer.Addr()] = map[uint16]bool{}
			}
			ports[s.peer.Addr()][s.peer.Port()] = true
		}
		for _, c := range clients {
			// rounds downstream connections of one client, one after the
			// other: one pooled upstream connection.
			if n := len(ports[c.src]); n != 1 {
				t.Errorf("%s: %d requests from %s over %d upstream connections, want 1 (pooled per source): %v", name, rounds, c.src, n, ports[c.src])
			}
		}
		u := (*p.clusters.Load())["od"]
		if n := u.poolCount(); n != len(clients) {
			t.Errorf("%s: %d upstream pools, want one per client address (%d)", name, n, len(clients))
		}
		t.Logf("%s: %d requests from %d client addresses; the backend saw each client's address, mark 0x%x, one pooled connection per client",
			name, len(log), len(clients), wantMark)
	}

	apply(0, 0xa00)
	phase("filter mark only", 0xa00)
	// Both mark: the cluster's options come after the filter's. A filter
	// mark winning would send the upstream SYN back into the listener.
	apply(0xa00, 0xc00)
	phase("cluster and filter mark", 0xa00)

	var found bool
	for _, l := range access.lines() {
		if l["path"] == "/a" {
			found = true
			if ul, _ := l["upstream_local"].(string); !strings.HasPrefix(ul, "10.98.0.10:") {
				t.Errorf("access log upstream_local = %v, want the client's address", l["upstream_local"])
			}
		}
	}
	if !found {
		t.Error("no access log line for /a")
	}
}
