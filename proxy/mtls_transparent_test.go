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
	rbac "github.com/envoyproxy/go-control-plane/envoy/config/rbac/v3"
	route "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	hcm "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	tlsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/tls/v3"
	dto "github.com/prometheus/client_model/go"
	"golang.org/x/sys/unix"

	pt "github.com/nodemesh/nodemesh/proxy/proxytest"
)

// TestTransparentMTLS runs the two node proxies of the mTLS design in a
// network namespace of their own, steered as the datapath steers them
// (TPROXY standing in for bpf_sk_assign): a client's SYN to a destination
// pod (10.99.0.0/24, local) goes to the source proxy's outbound listener
// (transparent, original_src mark 0xb00); that proxy's upstream — bound to
// the client's address, marked 0xb00 — goes over TLS to the pod's address,
// and its SYN is steered into the destination proxy's inbound listener
// (tls_inspector, the pod's mTLS chain, RBAC on the client's SPIFFE ID,
// original_src mark 0xa00), whose plaintext upstream (client's address,
// mark 0xa00) reaches the pod. The clients' addresses (10.98.0.0/24) are
// not local but delivered locally. The backend must see the client's
// address and mark 0xa00; both proxies pool upstream connections per
// client address.
func TestTransparentMTLS(t *testing.T) {
	if pt.InNetnsChild() {
		transparentMTLSChild(t)
		return
	}
	pt.RequireNetnsRoot(t, "creates a network namespace, local routes, policy routing and TPROXY rules", "ip", "iptables", "sysctl")
	tproxy := func(match []string, port string) []string {
		args := []string{"iptables", "-t", "mangle", "-A", "PREROUTING", "-p", "tcp", "--syn", "-d", "10.99.0.0/24"}
		args = append(args, match...)
		return append(args, "-j", "TPROXY", "--on-ip", "127.0.0.1", "--on-port", port, "--tproxy-mark", "0x200/0xf00")
	}
	pt.RunInNetns(t, "^TestTransparentMTLS$",
		[]string{"ip", "link", "set", "lo", "up"},
		[]string{"sysctl", "-qw", "net.ipv4.tcp_fwmark_accept=1"},
		[]string{"ip", "route", "add", "local", "10.99.0.0/24", "dev", "lo"},
		[]string{"ip", "rule", "add", "to", "10.98.0.0/24", "lookup", "100", "pref", "100"},
		[]string{"ip", "route", "add", "local", "10.98.0.0/24", "dev", "lo", "table", "100"},
		// From the source proxy (0xb00): into the destination's inbound listener.
		tproxy([]string{"-m", "mark", "--mark", "0xb00/0xf00"}, "15006"),
		// From a pod (no mark): into the source's outbound listener.
		tproxy([]string{"-m", "mark", "--mark", "0x0/0xf00"}, "15001"))
}

func transparentMTLSChild(t *testing.T) {
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
	ln, err := net.Listen("tcp4", "0.0.0.0:8080")
	if err != nil {
		t.Fatal(err)
	}
	go func() { _ = be.Serve(ln) }()
	defer be.Close()

	ca := pt.NewCA(t, meshTD)
	bundle := pt.SPIFFESecret("bundle", map[string][]byte{meshTD: ca.CertPEM})
	access := &syncBuffer{}
	// node-a: the client pod's node.
	a := New(Config{NodeID: "node-a", AccessLog: io.Discard}, nil)
	defer a.Close()
	mesh := pt.OriginalDstCluster("mesh", 0xb00, func(c *cluster.Cluster) {
		c.TransportSocket = pt.UpstreamTLS(frontendID, "bundle", []*tlsv3.SubjectAltNameMatcher{pt.URISAN(pt.Exact(backendID))},
			func(u *tlsv3.UpstreamTlsContext) { u.CommonTlsContext.AlpnProtocols = []string{meshALPN} })
	})
	must(t, a.applyClusters("1", []*cluster.Cluster{mesh}))
	must(t, a.applyRoutes("1", []*route.RouteConfiguration{pt.RouteConfig("out", "mesh")}))
	must(t, a.applyListeners("1", []*listener.Listener{pt.Listener("outbound", "0.0.0.0", 15001, pt.HCM("out", allowAll()), pt.Transparent, pt.OriginalSrc(0xb00))}))
	must(t, a.applySecrets("1", []*tlsv3.Secret{pt.SVIDSecret(frontendID, ca.SVID(t, "shop", "frontend")), bundle}))
	// node-b: the destination pod's node.
	b := New(Config{NodeID: "node-b", AccessLog: access}, nil)
	defer b.Close()
	h := pt.HCM("in", []*hcm.HttpFilter{pt.RBACFilter(rbac.RBAC_ALLOW, map[string]*rbac.Policy{
		"frontend": pt.PeerPolicy(pt.Authenticated(pt.Exact(frontendID)))})}, pt.WithAccessLog)
	in := pt.Listener("inbound", "0.0.0.0", 15006, h, pt.Transparent, pt.OriginalSrc(0xa00), pt.TLSInspector)
	chain := pt.TLSChain("pod-10.99.0.7", pt.DownstreamTLS(backendID, "bundle", nil, func(d *tlsv3.DownstreamTlsContext) {
		d.CommonTlsContext.AlpnProtocols = []string{meshALPN}
	}), h)
	chain.FilterChainMatch.PrefixRanges = cidrs("10.99.0.7/32")
	chain.FilterChainMatch.ApplicationProtocols = []string{meshALPN}
	in.FilterChains = []*listener.FilterChain{chain}
	must(t, b.applyClusters("1", []*cluster.Cluster{pt.OriginalDstCluster("od", 0xa00)}))
	must(t, b.applyRoutes("1", []*route.RouteConfiguration{pt.RouteConfig("in", "od")}))
	must(t, b.applyListeners("1", []*listener.Listener{in}))
	must(t, b.applySecrets("1", []*tlsv3.Secret{pt.SVIDSecret(backendID, ca.SVID(t, "shop", "backend")), bundle}))

	get := func(src netip.Addr, url string) string {
		t.Helper()
		d := &net.Dialer{Timeout: 5 * time.Second, LocalAddr: &net.TCPAddr{IP: src.AsSlice()},
			Control: func(_, _ string, c syscall.RawConn) error {
				var serr error
				err := c.Control(func(fd uintptr) { serr = unix.SetsockoptInt(int(fd), unix.SOL_IP, unix.IP_TRANSPARENT, 1) })
				return errors.Join(err, serr)
			}}
		cl := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{DialContext: d.DialContext, DisableKeepAlives: true}}
		resp, err := cl.Get(url)
		if err != nil {
			t.Fatalf("GET %s from %s: %v", url, src, err)
		}
		defer resp.Body.Close()
		body, _ := io.ReadAll(resp.Body)
		if resp.StatusCode != 200 {
			t.Fatalf("GET %s from %s: %d %s", url, src, resp.StatusCode, body)
		}
		return string(body)
	}
	clients := []netip.Addr{netip.MustParseAddr("10.98.0.10"), netip.MustParseAddr("10.98.0.11")}
	const rounds = 3
	for i := range rounds {
		for _, src := range clients {
			body := get(src, fmt.Sprintf("http://10.99.0.7:8080/r%d", i))
			peer, _, _ := strings.Cut(strings.TrimPrefix(body, "peer="), " ")
			if ap, err := netip.ParseAddrPort(peer); err != nil || ap.Addr() != src || !strings.HasSuffix(body, "mark=0xa00") {
				t.Fatalf("from %s the backend saw %q, want the client's address and mark 0xa00", src, body)
			}
		}
	}
	var found dto.Metric
	_ = b.metrics.tlsInspector.WithLabelValues("inbound", "tls_found").Write(&found)
	if n := found.GetCounter().GetValue(); n != float64(len(clients)) {
		t.Errorf("the destination proxy saw %v TLS connections, want %d (one pooled upstream connection per client address)", n, len(clients))
	}
	if n := (*a.clusters.Load())["mesh"].poolCount(); n != len(clients) {
		t.Errorf("the source proxy has %d pools, want one per client address", n)
	}
	var peers int
	for _, l := range access.lines() {
		if l["downstream_peer_uri_san"] == frontendID && strings.HasPrefix(l["downstream_remote"].(string), "10.98.0.1") {
			peers++
		}
	}
	if peers != rounds*len(clients) {
		t.Errorf("%d requests logged with the client's address and SPIFFE ID, want %d", peers, rounds*len(clients))
	}
	t.Logf("%d requests: client address kept across both proxies, mTLS between them, RBAC on %s, marks 0xb00 then 0xa00", rounds*len(clients), frontendID)
}

func must(t *testing.T, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}
