package proxy

import (
	"bytes"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"testing"

	cluster "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	listener "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	rbac "github.com/envoyproxy/go-control-plane/envoy/config/rbac/v3"
	route "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	rbacfilter "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/rbac/v3"
	hcm "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"

	pt "github.com/nodemesh/nodemesh/proxy/proxytest"
)

// The benchmarks send GET /userdata/42 through the proxy over HTTP/1.1
// keep-alive connections (16 concurrent clients) to a loopback backend
// answering 1 KiB, and report requests per second. Client, proxy and
// backend share the machine's cores.

func BenchmarkProxyRBAC(b *testing.B) {
	benchProxy(b, map[string]*rbac.Policy{"userdata": pt.MethodPathPolicy("GET", "/userdata/[0-9]+")})
}

// BenchmarkProxyRBAC1000Regex puts 1,000 non-matching regex policies
// before the matching one (policies are evaluated in name order).
func BenchmarkProxyRBAC1000Regex(b *testing.B) {
	pols := map[string]*rbac.Policy{"zz-userdata": pt.MethodPathPolicy("GET", "/userdata/[0-9]+")}
	for i := range 1000 {
		pols[fmt.Sprintf("svc-%04d", i)] = pt.MethodPathPolicy("GET", fmt.Sprintf("/svc-%d/[a-z]+/[0-9]+", i))
	}
	benchProxy(b, pols)
}

// BenchmarkProxyRBACGRPCAccessLog adds the http_grpc access log, with
// an access log service on a unix socket receiving every entry.
func BenchmarkProxyRBACGRPCAccessLog(b *testing.B) {
	dir := b.TempDir()
	als := pt.StartAccessLog(b, dir, "als.sock")
	be := benchBackend(b)
	h := pt.HCM("routes", []*hcm.HttpFilter{pt.RBACFilter(rbac.RBAC_ALLOW, map[string]*rbac.Policy{
		"userdata": pt.MethodPathPolicy("GET", "/userdata/[0-9]+")})}, pt.WithGRPCAccessLog("als", "bench"))
	p := New(Config{NodeID: "n", AccessLog: io.Discard, GRPCClusters: map[string]string{"als": als.Address()}}, nil)
	b.Cleanup(p.Close)
	if err := p.applyClusters("1", []*cluster.Cluster{staticTo(b, be)}); err != nil {
		b.Fatal(err)
	}
	if err := p.applyRoutes("1", []*route.RouteConfiguration{pt.RouteConfig("routes", "backend")}); err != nil {
		b.Fatal(err)
	}
	if err := p.applyListeners("1", []*listener.Listener{pt.Listener("bench", "127.0.0.1", 0, h)}); err != nil {
		b.Fatal(err)
	}
	addr, _ := p.ListenerAddr("bench")
	benchClient(b, addr.String())
	b.StopTimer()
	p.Close()
	b.ReportMetric(float64(len(als.Entries()))/float64(b.N), "logged/req")
}

// BenchmarkBackendDirect is the baseline: the same client and backend
// without the proxy.
func BenchmarkBackendDirect(b *testing.B) {
	be := benchBackend(b)
	benchClient(b, be.Listener.Addr().String())
}

func benchBackend(b *testing.B) *httptest.Server {
	body := bytes.Repeat([]byte("x"), 1024)
	be := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "application/octet-stream")
		_, _ = w.Write(body)
	}))
	b.Cleanup(be.Close)
	return be
}

func benchProxy(b *testing.B, pols map[string]*rbac.Policy) {
	be := benchBackend(b)
	h := pt.HCM("routes", []*hcm.HttpFilter{pt.RBACFilter(rbac.RBAC_ALLOW, pols)})
	_, addr := startDirect(b, []*cluster.Cluster{staticTo(b, be)}, []*route.RouteConfiguration{pt.RouteConfig("routes", "backend")},
		[]*listener.Listener{pt.Listener("bench", "127.0.0.1", 0, h)})
	benchClient(b, addr)
}

func benchClient(b *testing.B, addr string) {
	tr := &http.Transport{MaxIdleConnsPerHost: 64, DisableCompression: true}
	b.Cleanup(tr.CloseIdleConnections)
	cl := &http.Client{Transport: tr}
	url := "http://" + addr + "/userdata/42"
	b.SetParallelism(8)
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			resp, err := cl.Get(url)
			if err != nil {
				b.Error(err)
				return
			}
			n, _ := io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
			if resp.StatusCode != 200 || n != 1024 {
				b.Errorf("status %d, %d bytes", resp.StatusCode, n)
				return
			}
		}
	})
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "req/s")
}

// BenchmarkRBACEvaluate measures the RBAC filter alone on one request:
// the matching policy after 1,000 non-matching regex policies.
func BenchmarkRBACEvaluate1000Regex(b *testing.B) {
	pols := map[string]*rbac.Policy{"zz-userdata": pt.MethodPathPolicy("GET", "/userdata/[0-9]+")}
	for i := range 1000 {
		pols[fmt.Sprintf("svc-%04d", i)] = pt.MethodPathPolicy("GET", fmt.Sprintf("/svc-%d/[a-z]+/[0-9]+", i))
	}
	f, err := compileRBAC("rbac", filterRBAC, pt.Any(&rbacfilter.RBAC{Rules: &rbac.RBAC{Policies: pols}}))
	if err != nil {
		b.Fatal(err)
	}
	r := httptest.NewRequest("GET", "/userdata/42", nil)
	b.ResetTimer()
	for b.Loop() {
		var a requestAttrs
		if ok, _ := f.evaluate(r, &a); !ok {
			b.Fatal("denied")
		}
	}
}
