package proxy

import (
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"strings"
	"testing"
	"time"

	cluster "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	core "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	listener "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	rbac "github.com/envoyproxy/go-control-plane/envoy/config/rbac/v3"
	route "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	hcm "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/wrapperspb"

	pt "github.com/nodemesh/nodemesh/proxy/proxytest"
)

// startDirect applies resources without an xDS server and returns the
// listener's address.
func startDirect(t testing.TB, cs []*cluster.Cluster, rcs []*route.RouteConfiguration, ls []*listener.Listener) (*Proxy, string) {
	t.Helper()
	p := New(Config{NodeID: "n", AccessLog: io.Discard}, nil)
	t.Cleanup(p.Close)
	if err := p.applyClusters("1", cs); err != nil {
		t.Fatal(err)
	}
	if err := p.applyRoutes("1", rcs); err != nil {
		t.Fatal(err)
	}
	if err := p.applyListeners("1", ls); err != nil {
		t.Fatal(err)
	}
	ap, ok := p.ListenerAddr(ls[0].GetName())
	if !ok {
		t.Fatal("listener not bound")
	}
	return p, ap.String()
}

func staticTo(t testing.TB, srv *httptest.Server) *cluster.Cluster {
	ip, port := backendAddr(t, srv)
	return pt.StaticCluster("backend", pt.SocketAddress(ip, port))
}

func allowAll() []*hcm.HttpFilter {
	return []*hcm.HttpFilter{pt.RBACFilter(rbac.RBAC_ALLOW, map[string]*rbac.Policy{"all": {
		Permissions: []*rbac.Permission{{Rule: &rbac.Permission_Any{Any: true}}}, Principals: anyPrincipal()}})}
}

func TestTimeouts(t *testing.T) {
	release := make(chan struct{})
	defer close(release)
	be := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch r.URL.Path {
		case "/hang":
			select {
			case <-release:
			case <-r.Context().Done():
			}
		case "/trickle":
			// Headers at once, then silence.
			w.WriteHeader(200)
			_, _ = io.WriteString(w, "start")
			w.(http.Flusher).Flush()
			select {
			case <-release:
			case <-r.Context().Done():
			}
		}
	}))
	defer be.Close()
	rc := pt.RouteConfig("routes", "backend")
	slow := &route.Route{
		Match:  &route.RouteMatch{PathSpecifier: &route.RouteMatch_Path{Path: "/hang"}, Headers: []*route.HeaderMatcher{{Name: "x-route-timeout", HeaderMatchSpecifier: &route.HeaderMatcher_PresentMatch{PresentMatch: true}}}},
		Action: &route.Route_Route{Route: &route.RouteAction{ClusterSpecifier: &route.RouteAction_Cluster{Cluster: "backend"}, Timeout: durationpb.New(100 * time.Millisecond)}},
	}
	rc.VirtualHosts[0].Routes = append([]*route.Route{slow}, rc.VirtualHosts[0].Routes...)
	l := pt.Listener("l", "127.0.0.1", 0, pt.HCM("routes", allowAll(), pt.WithStreamIdleTimeout(300*time.Millisecond)))
	_, addr := startDirect(t, []*cluster.Cluster{staticTo(t, be)}, []*route.RouteConfiguration{rc}, []*listener.Listener{l})
	cl := &http.Client{Timeout: 5 * time.Second}

	get := func(path string, hdr ...string) (*http.Response, string, time.Duration, error) {
		req, _ := http.NewRequest("GET", "http://"+addr+path, nil)
		for i := 0; i+1 < len(hdr); i += 2 {
			req.Header.Set(hdr[i], hdr[i+1])
		}
		start := time.Now()
		resp, err := cl.Do(req)
		if err != nil {
			return nil, "", time.Since(start), err
		}
		b, err := io.ReadAll(resp.Body)
		resp.Body.Close()
		return resp, string(b), time.Since(start), err
	}
	t.Run("stream idle timeout before the response: 408", func(t *testing.T) {
		resp, body, took, err := get("/hang")
		if err != nil || resp.StatusCode != http.StatusRequestTimeout || body != "stream timeout" {
			t.Fatalf("= %v %q %v, want 408 stream timeout", resp, body, err)
		}
		if took < 250*time.Millisecond || took > 3*time.Second {
			t.Fatalf("took %s, want about 300ms", took)
		}
	})
	t.Run("stream idle timeout mid-response: reset", func(t *testing.T) {
		resp, body, _, err := get("/trickle")
		if err == nil {
			t.Fatalf("= %d %q, want the stream reset after the idle timeout", resp.StatusCode, body)
		}
	})
	t.Run("route timeout: 504", func(t *testing.T) {
		resp, body, took, err := get("/hang", "x-route-timeout", "1")
		if err != nil || resp.StatusCode != http.StatusGatewayTimeout || body != "upstream request timeout" {
			t.Fatalf("= %v %q %v, want 504 upstream request timeout", resp, body, err)
		}
		if took > 2*time.Second {
			t.Fatalf("took %s, want about 100ms", took)
		}
	})
}

func TestConnectFailure(t *testing.T) {
	be := httptest.NewServer(http.NotFoundHandler())
	c := staticTo(t, be)
	be.Close() // nothing listens there now
	p, addr := startDirect(t, []*cluster.Cluster{c}, []*route.RouteConfiguration{pt.RouteConfig("routes", "backend")},
		[]*listener.Listener{pt.Listener("l", "127.0.0.1", 0, pt.HCM("routes", allowAll()))})
	resp, err := http.Get("http://" + addr + "/")
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 503 || !strings.Contains(string(b), "reset reason: connection failure") {
		t.Fatalf("= %d %q, want 503 connection failure", resp.StatusCode, b)
	}
	rec := httptest.NewRecorder()
	p.AdminHandler().ServeHTTP(rec, httptest.NewRequest("GET", "/stats", nil))
	if !strings.Contains(rec.Body.String(), `nodemesh_proxy_upstream_connect_failures_total{cluster="backend"} 1`) {
		t.Fatalf("/stats lacks the connect failure")
	}
}

// TestOriginalDstPick: the upstream of an ORIGINAL_DST cluster is the
// connection's original destination (with a transparent listener, the
// accepted socket's local address), optionally with the port overridden
// or the header's address; a non-transparent listener's own address is
// refused (it would loop).
func TestOriginalDstPick(t *testing.T) {
	orig := netip.MustParseAddrPort("10.99.0.7:8080")
	own := netip.MustParseAddrPort("127.0.0.1:15006")
	for _, tc := range []struct {
		name    string
		tweaks  []func(*cluster.Cluster)
		ci      *connInfo
		header  string
		want    string
		wantErr string
	}{
		{name: "transparent: the local address", ci: &connInfo{local: orig, origDst: orig, restored: true}, want: "10.99.0.7:8080"},
		{name: "port override", ci: &connInfo{local: orig, origDst: orig, restored: true}, want: "10.99.0.7:9090",
			tweaks: []func(*cluster.Cluster){pt.UseOriginalDstHeader, func(c *cluster.Cluster) { c.GetOriginalDstLbConfig().UpstreamPortOverride = wrapperspb.UInt32(9090) }}},
		{name: "header override", ci: &connInfo{local: own, origDst: own}, header: "127.0.0.1:8081", want: "127.0.0.1:8081",
			tweaks: []func(*cluster.Cluster){pt.UseOriginalDstHeader}},
		{name: "bad header", ci: &connInfo{local: own, origDst: own}, header: "backend:80", wantErr: "not an IP:port",
			tweaks: []func(*cluster.Cluster){pt.UseOriginalDstHeader}},
		{name: "header ignored unless enabled", ci: &connInfo{local: orig, origDst: orig, restored: true}, header: "127.0.0.1:1", want: "10.99.0.7:8080"},
		{name: "own listener", ci: &connInfo{local: own, origDst: own}, wantErr: "own listener"},
		{name: "SO_ORIGINAL_DST restored", ci: &connInfo{local: own, origDst: orig, restored: true}, want: "10.99.0.7:8080"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			u, err := compileCluster("c", pt.OriginalDstCluster("od", 0xb00, tc.tweaks...))
			if err != nil {
				t.Fatal(err)
			}
			r := httptest.NewRequest("GET", "/", nil)
			if tc.header != "" {
				r.Header.Set("x-envoy-original-dst-host", tc.header)
			}
			got, err := u.pick(r, tc.ci)
			checkErr(t, err, tc.wantErr)
			if err == nil && got.String() != tc.want {
				t.Fatalf("upstream = %s, want %s", got, tc.want)
			}
		})
	}
}

// TestConnectionSettings covers the HCM settings applied per connection
// or per request other than the stream timeouts: idle_timeout closes an
// idle keep-alive connection, request_timeout answers 408 to a request
// whose body does not arrive in time, max_request_headers_kb answers 431.
func TestConnectionSettings(t *testing.T) {
	be := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_, _ = io.Copy(io.Discard, r.Body)
		_, _ = io.WriteString(w, "ok")
	}))
	defer be.Close()
	h := pt.HCM("routes", allowAll(), func(h *hcm.HttpConnectionManager) {
		h.CommonHttpProtocolOptions = &core.HttpProtocolOptions{IdleTimeout: durationpb.New(200 * time.Millisecond)}
		h.RequestTimeout = durationpb.New(200 * time.Millisecond)
		h.MaxRequestHeadersKb = wrapperspb.UInt32(2)
	})
	_, addr := startDirect(t, []*cluster.Cluster{staticTo(t, be)}, []*route.RouteConfiguration{pt.RouteConfig("routes", "backend")},
		[]*listener.Listener{pt.Listener("l", "127.0.0.1", 0, h)})

	t.Run("idle_timeout", func(t *testing.T) {
		c := dialH1(t, addr)
		if code, body := c.do("GET", "/", nil); code != 200 || body != "ok" {
			t.Fatalf("= %d %q", code, body)
		}
		time.Sleep(500 * time.Millisecond)
		_ = c.c.SetReadDeadline(time.Now().Add(2 * time.Second))
		if n, err := c.c.Read(make([]byte, 1)); err != io.EOF {
			t.Fatalf("after idle_timeout: read %d, %v; want EOF (closed by the proxy)", n, err)
		}
	})
	t.Run("request_timeout", func(t *testing.T) {
		c := dialH1(t, addr)
		_, _ = io.WriteString(c.c, "POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n\r\nabc")
		_ = c.c.SetReadDeadline(time.Now().Add(5 * time.Second))
		resp, err := http.ReadResponse(c.br, nil)
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(resp.Body)
		if resp.StatusCode != http.StatusRequestTimeout || string(b) != "request timeout" {
			t.Fatalf("= %d %q, want 408 request timeout", resp.StatusCode, b)
		}
	})
	t.Run("max_request_headers_kb", func(t *testing.T) {
		c := dialH1(t, addr)
		if code, _ := c.do("GET", "/", map[string]string{"X-Big": strings.Repeat("a", 2048)}); code != http.StatusRequestHeaderFieldsTooLarge {
			t.Fatalf("2 KiB header with a 2 KiB limit = %d, want 431", code)
		}
		if code, _ := c.do("GET", "/", map[string]string{"X-Small": strings.Repeat("a", 1500)}); code != 200 {
			t.Fatalf("1.5 KiB header with a 2 KiB limit = %d, want 200", code)
		}
	})
}

// TestListenerRemovalDrains: removing a listener stops new connections
// at once, while a request in flight on it finishes.
func TestListenerRemovalDrains(t *testing.T) {
	be := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		n, _ := io.Copy(io.Discard, r.Body)
		fmt.Fprintf(w, "got %d bytes", n)
	}))
	defer be.Close()
	p, addr := startDirect(t, []*cluster.Cluster{staticTo(t, be)}, []*route.RouteConfiguration{pt.RouteConfig("routes", "backend")},
		[]*listener.Listener{pt.Listener("l", "127.0.0.1", 0, pt.HCM("routes", allowAll()))})
	pr, pw := io.Pipe()
	res := make(chan string, 1)
	go func() {
		req, _ := http.NewRequest("POST", "http://"+addr+"/upload", pr)
		resp, err := (&http.Client{Timeout: 10 * time.Second}).Do(req)
		if err != nil {
			res <- err.Error()
			return
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		res <- fmt.Sprintf("%d %s", resp.StatusCode, b)
	}()
	_, _ = pw.Write(make([]byte, 1000))
	time.Sleep(50 * time.Millisecond)
	if err := p.applyListeners("2", nil); err != nil {
		t.Fatal(err)
	}
	if c, err := net.DialTimeout("tcp", addr, time.Second); err == nil {
		c.Close()
		t.Error("the removed listener still accepts connections")
	}
	_, _ = pw.Write(make([]byte, 1000))
	pw.Close()
	if got := <-res; got != "200 got 2000 bytes" {
		t.Fatalf("in-flight request across the removal = %q, want 200 got 2000 bytes", got)
	}
}
