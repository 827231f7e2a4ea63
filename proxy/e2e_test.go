package proxy

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	admin "github.com/envoyproxy/go-control-plane/envoy/admin/v3"
	cluster "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	listener "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	rbac "github.com/envoyproxy/go-control-plane/envoy/config/rbac/v3"
	route "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	hcm "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	"github.com/envoyproxy/go-control-plane/pkg/cache/types"
	"github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	"google.golang.org/protobuf/encoding/protojson"

	pt "github.com/nodemesh/nodemesh/proxy/proxytest"
)

// syncBuffer is an access log sink safe for concurrent writes and reads.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) lines() []map[string]any {
	s.mu.Lock()
	defer s.mu.Unlock()
	var out []map[string]any
	for _, l := range strings.Split(strings.TrimSpace(s.b.String()), "\n") {
		var m map[string]any
		if json.Unmarshal([]byte(l), &m) == nil {
			out = append(out, m)
		}
	}
	return out
}

// backend is the test's upstream service on loopback: /userdata/N
// answers "user N", /upload counts the body it streams in.
func backend(t testing.TB) *httptest.Server {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch {
		case r.URL.Path == "/upload":
			n, err := io.Copy(io.Discard, r.Body)
			if err != nil {
				http.Error(w, err.Error(), http.StatusBadRequest)
				return
			}
			fmt.Fprintf(w, "got %d bytes", n)
		case strings.HasPrefix(r.URL.Path, "/userdata/"):
			w.Header().Set("X-Backend-Local", r.Context().Value(http.LocalAddrContextKey).(net.Addr).String())
			fmt.Fprintf(w, "user %s", strings.TrimPrefix(r.URL.Path, "/userdata/"))
		default:
			http.NotFound(w, r)
		}
	}))
	t.Cleanup(srv.Close)
	return srv
}

func backendAddr(t testing.TB, srv *httptest.Server) (string, uint32) {
	host, port, err := net.SplitHostPort(srv.Listener.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	n, _ := strconv.Atoi(port)
	return host, uint32(n)
}

// e2eResources is the control plane's snapshot: listener "http" on
// 127.0.0.1 (port 0: the proxy picks), RBAC from policies, routes to the
// static cluster "backend", /od/ to an ORIGINAL_DST cluster that honours
// x-envoy-original-dst-host.
func e2eResources(t testing.TB, be *httptest.Server, policies map[string]*rbac.Policy, tweakHCM ...func(*hcm.HttpConnectionManager)) map[resource.Type][]types.Resource {
	ip, port := backendAddr(t, be)
	h := pt.HCM("local_route", []*hcm.HttpFilter{pt.RBACFilter(rbac.RBAC_ALLOW, policies)}, append([]func(*hcm.HttpConnectionManager){pt.WithAccessLog}, tweakHCM...)...)
	rc := pt.RouteConfig("local_route", "backend")
	rc.VirtualHosts[0].Routes = append([]*route.Route{{
		Match:  &route.RouteMatch{PathSpecifier: &route.RouteMatch_Prefix{Prefix: "/od/"}},
		Action: &route.Route_Route{Route: &route.RouteAction{ClusterSpecifier: &route.RouteAction_Cluster{Cluster: "origdst"}}},
	}}, rc.VirtualHosts[0].Routes...)
	return map[resource.Type][]types.Resource{
		resource.ListenerType: {pt.Listener("http", "127.0.0.1", 0, h)},
		resource.RouteType:    {rc},
		resource.ClusterType: {
			pt.StaticCluster("backend", pt.SocketAddress(ip, port)),
			// No SO_MARK here: setting it needs CAP_NET_ADMIN, and this
			// test runs unprivileged (the transparent test covers it).
			pt.OriginalDstCluster("origdst", 0, pt.UseOriginalDstHeader),
		},
	}
}

func userdataPolicies() map[string]*rbac.Policy {
	return map[string]*rbac.Policy{
		"userdata": pt.MethodPathPolicy("GET", "/userdata/[0-9]+"),
		"upload":   pt.MethodPathPolicy("POST", "/upload"),
		"od":       pt.MethodPathPolicy("GET", "/od/.*"),
	}
}

type e2e struct {
	t      *testing.T
	cp     *pt.ControlPlane
	p      *Proxy
	access *syncBuffer
	be     *httptest.Server
	cancel context.CancelFunc
	done   chan error
}

func startE2E(t *testing.T) *e2e {
	t.Helper()
	dir, err := os.MkdirTemp("", "nmproxy") // short: unix socket paths are limited
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	e := &e2e{t: t, cp: pt.Start(t, dir), access: &syncBuffer{}, be: backend(t), done: make(chan error, 1)}
	logger := slog.New(slog.NewTextHandler(testWriter{t}, &slog.HandlerOptions{Level: slog.LevelInfo}))
	e.p = New(Config{NodeID: "node-1", XDSAddress: e.cp.Address(), AdminAddress: "127.0.0.1:0", AccessLog: e.access,
		BackoffMin: 20 * time.Millisecond, BackoffMax: 200 * time.Millisecond, DrainTimeout: 5 * time.Second}, logger)
	ctx, cancel := context.WithCancel(context.Background())
	e.cancel = cancel
	go func() { e.done <- e.p.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		select {
		case err := <-e.done:
			if err != nil {
				t.Errorf("proxy Run: %v", err)
			}
		case <-time.After(10 * time.Second):
			t.Errorf("proxy Run did not return")
		}
	})
	waitFor(t, 5*time.Second, "admin endpoint", func() bool { return e.p.AdminAddr() != nil })
	return e
}

type testWriter struct{ t *testing.T }

func (w testWriter) Write(p []byte) (int, error) {
	w.t.Log(strings.TrimSpace(string(p)))
	return len(p), nil
}

func waitFor(t testing.TB, timeout time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %s waiting for %s", timeout, what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func (e *e2e) admin(path string) (int, string) {
	e.t.Helper()
	resp, err := http.Get("http://" + e.p.AdminAddr().String() + path)
	if err != nil {
		e.t.Fatalf("admin %s: %v", path, err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

func (e *e2e) listenerAddr() string {
	e.t.Helper()
	var a string
	waitFor(e.t, 5*time.Second, "listener http", func() bool {
		ap, ok := e.p.ListenerAddr("http")
		a = ap.String()
		return ok
	})
	return a
}

// h1 is one HTTP/1.1 keep-alive connection, driven by hand so the test
// knows every request used it.
type h1 struct {
	t  *testing.T
	c  net.Conn
	br *bufio.Reader
}

func dialH1(t *testing.T, addr string) *h1 {
	c, err := net.DialTimeout("tcp", addr, 2*time.Second)
	if err != nil {
		t.Fatalf("dial %s: %v", addr, err)
	}
	t.Cleanup(func() { c.Close() })
	return &h1{t: t, c: c, br: bufio.NewReader(c)}
}

func (h *h1) do(method, target string, hdr map[string]string) (int, string) {
	h.t.Helper()
	_ = h.c.SetDeadline(time.Now().Add(10 * time.Second))
	var b strings.Builder
	fmt.Fprintf(&b, "%s %s HTTP/1.1\r\nHost: svc.test\r\n", method, target)
	for k, v := range hdr {
		fmt.Fprintf(&b, "%s: %s\r\n", k, v)
	}
	if method == http.MethodPost {
		b.WriteString("Content-Length: 0\r\n")
	}
	b.WriteString("\r\n")
	if _, err := io.WriteString(h.c, b.String()); err != nil {
		h.t.Fatalf("%s %s: write: %v", method, target, err)
	}
	resp, err := http.ReadResponse(h.br, nil)
	if err != nil {
		h.t.Fatalf("%s %s: read response: %v", method, target, err)
	}
	body, err := io.ReadAll(resp.Body)
	resp.Body.Close()
	if err != nil {
		h.t.Fatalf("%s %s: read body: %v", method, target, err)
	}
	if resp.Close {
		h.t.Fatalf("%s %s: the proxy closed the keep-alive connection", method, target)
	}
	return resp.StatusCode, string(body)
}

func TestEndToEnd(t *testing.T) {
	e := startE2E(t)

	// Before any configuration: not ready.
	if code, body := e.admin("/ready"); code != http.StatusServiceUnavailable {
		t.Fatalf("/ready before config = %d %q, want 503", code, body)
	}

	e.cp.Set("node-1", "v1", e2eResources(t, e.be, userdataPolicies()))
	for _, typ := range []string{resource.ClusterType, resource.ListenerType, resource.RouteType} {
		e.cp.WaitRequest(5*time.Second, pt.IsACK(typ, "v1"))
	}
	waitFor(t, 5*time.Second, "ready", e.p.Ready)
	if code, body := e.admin("/ready"); code != http.StatusOK || body != "LIVE\n" {
		t.Fatalf("/ready = %d %q, want 200 LIVE", code, body)
	}
	addr := e.listenerAddr()

	t.Run("http1 keep-alive", func(t *testing.T) {
		c := dialH1(t, addr)
		for _, tc := range []struct {
			method, target string
			want           int
			body           string
		}{
			{"GET", "/userdata/42", 200, "user 42"},
			{"GET", "/userdata/abc", 403, "RBAC: access denied"},
			{"POST", "/userdata/42", 403, "RBAC: access denied"},
			{"GET", "/userdata/42?x=1", 200, "user 42"},
			{"GET", "/userdata/42abc", 403, "RBAC: access denied"},
			{"GET", "/other", 403, "RBAC: access denied"},
			{"GET", "/userdata/7", 200, "user 7"},
		} {
			code, body := c.do(tc.method, tc.target, nil)
			if code != tc.want || body != tc.body {
				t.Errorf("%s %s = %d %q, want %d %q", tc.method, tc.target, code, body, tc.want, tc.body)
			}
		}
	})

	t.Run("h2c prior knowledge", func(t *testing.T) {
		var protos http.Protocols
		protos.SetUnencryptedHTTP2(true)
		tr := &http.Transport{Protocols: &protos}
		defer tr.CloseIdleConnections()
		cl := &http.Client{Transport: tr, Timeout: 10 * time.Second}
		for _, tc := range []struct {
			method, path string
			want         int
			body         string
		}{
			{"GET", "/userdata/42", 200, "user 42"},
			{"GET", "/userdata/abc", 403, "RBAC: access denied"},
			{"POST", "/userdata/42", 403, "RBAC: access denied"},
			{"GET", "/userdata/43", 200, "user 43"},
		} {
			req, _ := http.NewRequest(tc.method, "http://"+addr+tc.path, nil)
			resp, err := cl.Do(req)
			if err != nil {
				t.Fatalf("%s %s: %v", tc.method, tc.path, err)
			}
			b, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			if resp.ProtoMajor != 2 {
				t.Errorf("%s %s: protocol %s, want HTTP/2", tc.method, tc.path, resp.Proto)
			}
			if resp.StatusCode != tc.want || string(b) != tc.body {
				t.Errorf("%s %s = %d %q, want %d %q", tc.method, tc.path, resp.StatusCode, b, tc.want, tc.body)
			}
		}
	})

	t.Run("original destination from header", func(t *testing.T) {
		c := dialH1(t, addr)
		beIP, bePort := backendAddr(t, e.be)
		// The proxy's own listener is the local address of a
		// non-transparent listener: forwarding there would loop.
		if code, _ := c.do("GET", "/od/x", nil); code != http.StatusServiceUnavailable {
			t.Errorf("ORIGINAL_DST to the listener itself = %d, want 503", code)
		}
		code, body := c.do("GET", "/od/x", map[string]string{"x-envoy-original-dst-host": net.JoinHostPort(beIP, fmt.Sprint(bePort))})
		if code != http.StatusNotFound || !strings.Contains(body, "404 page not found") {
			t.Errorf("ORIGINAL_DST with header = %d %q, want the backend's 404", code, body)
		}
	})

	t.Run("header limit", func(t *testing.T) {
		c := dialH1(t, addr)
		code, _ := c.do("GET", "/userdata/1", map[string]string{"X-Big": strings.Repeat("a", 61*1024)})
		if code != http.StatusRequestHeaderFieldsTooLarge {
			t.Errorf("61 KiB header = %d, want 431", code)
		}
	})

	t.Run("config change mid-stream", func(t *testing.T) {
		c := dialH1(t, addr)
		if code, _ := c.do("GET", "/userdata/1", nil); code != 200 {
			t.Fatalf("before the change: %d", code)
		}
		// A slow upload on a second connection.
		pr, pw := io.Pipe()
		type result struct {
			code int
			body string
			err  error
		}
		res := make(chan result, 1)
		go func() {
			req, _ := http.NewRequest("POST", "http://"+addr+"/upload", pr)
			req.ContentLength = -1
			resp, err := (&http.Client{Timeout: 20 * time.Second}).Do(req)
			if err != nil {
				res <- result{err: err}
				return
			}
			b, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			res <- result{code: resp.StatusCode, body: string(b)}
		}()
		chunk := bytes.Repeat([]byte("x"), 1024)
		for i := 0; i < 5; i++ {
			if _, err := pw.Write(chunk); err != nil {
				t.Fatal(err)
			}
			time.Sleep(20 * time.Millisecond)
		}
		// v2: /userdata is no longer allowed; uploads still are.
		pols := userdataPolicies()
		delete(pols, "userdata")
		e.cp.Set("node-1", "v2", e2eResources(t, e.be, pols))
		e.cp.WaitRequest(5*time.Second, pt.IsACK(resource.ListenerType, "v2"))
		for i := 0; i < 5; i++ {
			if _, err := pw.Write(chunk); err != nil {
				t.Fatal(err)
			}
			time.Sleep(20 * time.Millisecond)
		}
		pw.Close()
		r := <-res
		if r.err != nil || r.code != 200 || r.body != "got 10240 bytes" {
			t.Fatalf("upload across the change = %d %q %v, want 200 \"got 10240 bytes\"", r.code, r.body, r.err)
		}
		// The keep-alive connection survived and sees the new policy.
		if code, body := c.do("GET", "/userdata/1", nil); code != 403 || body != rbacDeniedBody {
			t.Fatalf("after the change on the old connection = %d %q, want 403", code, body)
		}
	})

	t.Run("NACK keeps the last good config", func(t *testing.T) {
		res := e2eResources(t, e.be, userdataPolicies())
		l := res[resource.ListenerType][0].(*listener.Listener)
		h := pt.HCM("local_route", []*hcm.HttpFilter{{Name: "envoy.filters.http.lua"}})
		l.FilterChains[0].Filters[0] = pt.HCMFilter(h)
		res[resource.ClusterType] = append(res[resource.ClusterType], &cluster.Cluster{Name: "dns", ClusterDiscoveryType: &cluster.Cluster_Type{Type: cluster.Cluster_LOGICAL_DNS}})
		e.cp.Set("node-1", "v3", res)
		nack := e.cp.WaitRequest(5*time.Second, pt.IsNACK(resource.ListenerType))
		if msg := nack.GetErrorDetail().GetMessage(); !strings.Contains(msg, `listener "http"`) || !strings.Contains(msg, `http filter "envoy.filters.http.lua" is not supported`) {
			t.Errorf("LDS NACK error_detail = %q", msg)
		}
		if nack.GetVersionInfo() != "v2" {
			t.Errorf("LDS NACK version_info = %q, want the last good v2", nack.GetVersionInfo())
		}
		cnack := e.cp.WaitRequest(5*time.Second, pt.IsNACK(resource.ClusterType))
		if msg := cnack.GetErrorDetail().GetMessage(); !strings.Contains(msg, `cluster "dns"`) || !strings.Contains(msg, "LOGICAL_DNS is not supported") {
			t.Errorf("CDS NACK error_detail = %q", msg)
		}
		// Still v2: uploads allowed, userdata denied.
		c := dialH1(t, addr)
		if code, _ := c.do("GET", "/userdata/1", nil); code != 403 {
			t.Errorf("after NACK: GET /userdata/1 = %d, want 403 (v2)", code)
		}
		_, dump := e.admin("/config_dump")
		if !strings.Contains(dump, "envoy.filters.http.lua") || !strings.Contains(dump, "errorState") {
			t.Errorf("/config_dump does not show the refused update in error_state")
		}
	})

	t.Run("fail closed without a filter chain", func(t *testing.T) {
		res := e2eResources(t, e.be, userdataPolicies())
		closed := pt.Listener("closed", "127.0.0.1", 0, pt.HCM("local_route", nil))
		closed.FilterChains[0].FilterChainMatch = &listener.FilterChainMatch{SourcePrefixRanges: cidrs("192.0.2.0/24")}
		res[resource.ListenerType] = append(res[resource.ListenerType], closed)
		e.cp.Set("node-1", "v4", res)
		e.cp.WaitRequest(5*time.Second, pt.IsACK(resource.ListenerType, "v4"))
		ap, ok := e.p.ListenerAddr("closed")
		if !ok {
			t.Fatal("listener closed not bound")
		}
		c, err := net.Dial("tcp", ap.String())
		if err != nil {
			// On loopback the reset can beat connect's completion.
			if !errors.Is(err, syscall.ECONNRESET) {
				t.Fatal(err)
			}
			return
		}
		defer c.Close()
		_ = c.SetDeadline(time.Now().Add(5 * time.Second))
		_, _ = io.WriteString(c, "GET / HTTP/1.1\r\nHost: x\r\n\r\n")
		if n, err := c.Read(make([]byte, 64)); err == nil {
			t.Fatalf("connection without a filter chain got %d bytes, want a reset", n)
		}
	})

	t.Run("agent gone: keeps serving, reconnects", func(t *testing.T) {
		e.cp.Stop()
		waitFor(t, 5*time.Second, "xds disconnected", func() bool {
			_, stats := e.admin("/stats")
			return strings.Contains(stats, "nodemesh_proxy_xds_connected 0")
		})
		c := dialH1(t, addr)
		if code, body := c.do("POST", "/upload", nil); code != 200 || body != "got 0 bytes" {
			t.Errorf("without the agent: POST /upload = %d %q", code, body)
		}
		if code, _ := c.do("GET", "/userdata/2", nil); code != 200 {
			t.Errorf("without the agent: GET /userdata/2 = %d, want 200 (v4)", code)
		}
		e.cp.Restart()
		pols := userdataPolicies()
		delete(pols, "userdata")
		e.cp.Set("node-1", "v5", e2eResources(t, e.be, pols))
		e.cp.WaitRequest(10*time.Second, pt.IsACK(resource.ListenerType, "v5"))
		if code, _ := c.do("GET", "/userdata/2", nil); code != 403 {
			t.Errorf("after reconnect (v5): GET /userdata/2 = %d, want 403", code)
		}
	})

	t.Run("config_dump", func(t *testing.T) {
		_, body := e.admin("/config_dump")
		var cd admin.ConfigDump
		if err := protojson.Unmarshal([]byte(body), &cd); err != nil {
			t.Fatalf("/config_dump is not an envoy.admin.v3.ConfigDump: %v", err)
		}
		var ld admin.ListenersConfigDump
		var cdump admin.ClustersConfigDump
		var rd admin.RoutesConfigDump
		if len(cd.Configs) != 4 || cd.Configs[0].UnmarshalTo(&cdump) != nil || cd.Configs[1].UnmarshalTo(&ld) != nil || cd.Configs[2].UnmarshalTo(&rd) != nil {
			t.Fatalf("/config_dump configs = %v", cd.Configs)
		}
		if ld.VersionInfo != "v5" || len(ld.DynamicListeners) != 1 || ld.DynamicListeners[0].GetActiveState().GetVersionInfo() != "v5" {
			t.Errorf("listeners dump = %v", &ld)
		}
		if cdump.VersionInfo != "v5" || len(cdump.DynamicActiveClusters) != 2 {
			t.Errorf("clusters dump = %v", &cdump)
		}
		if len(rd.DynamicRouteConfigs) != 1 || rd.DynamicRouteConfigs[0].GetVersionInfo() == "" {
			t.Errorf("routes dump = %v", &rd)
		}
	})

	t.Run("stats", func(t *testing.T) {
		_, stats := e.admin("/stats")
		for _, want := range []string{
			`nodemesh_proxy_http_requests_total{listener="http",status="200"}`,
			`nodemesh_proxy_http_requests_total{listener="http",status="403"}`,
			`nodemesh_proxy_rbac_requests_total{listener="http",verdict="allowed"}`,
			`nodemesh_proxy_rbac_requests_total{listener="http",verdict="denied"}`,
			`nodemesh_proxy_xds_updates_total{result="ack",type="lds"}`,
			`nodemesh_proxy_xds_updates_total{result="nack",type="lds"}`,
			`nodemesh_proxy_xds_updates_total{result="nack",type="cds"}`,
			`nodemesh_proxy_config_version_info{type="lds",version="v5"} 1`,
			`nodemesh_proxy_no_filter_chain_total{listener="closed"} 1`,
			`nodemesh_proxy_xds_connected 1`,
		} {
			if !strings.Contains(stats, want) {
				t.Errorf("/stats lacks %s", want)
			}
		}
	})

	t.Run("access log", func(t *testing.T) {
		var denied, allowed bool
		for _, l := range e.access.lines() {
			if l["path"] == "/userdata/abc" && l["status"] == float64(403) && l["rbac"] == "denied" && l["original_dst"] == addr {
				denied = true
			}
			if l["path"] == "/userdata/42" && l["status"] == float64(200) && l["rbac"] == "allowed" && l["policy"] == "userdata" && l["method"] == "GET" {
				allowed = true
			}
			for _, k := range []string{"time", "downstream_remote", "duration_ms"} {
				if _, ok := l[k]; !ok {
					t.Errorf("access log line lacks %s: %v", k, l)
				}
			}
		}
		if !denied || !allowed {
			t.Errorf("access log lacks the denied (%v) or allowed (%v) line", denied, allowed)
		}
	})
}
