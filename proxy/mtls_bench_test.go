package proxy

import (
	"context"
	"crypto/tls"
	"fmt"
	"io"
	"net"
	"net/http"
	"slices"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	cluster "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	listener "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	rbac "github.com/envoyproxy/go-control-plane/envoy/config/rbac/v3"
	route "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	hcm "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	tlsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/tls/v3"

	pt "github.com/nodemesh/nodemesh/proxy/proxytest"
)

// The mTLS benchmarks run on loopback with everything in one process:
// clients, both proxies and the backend share the machine's cores.
//
//	go test ./proxy -run '^$' -bench 'TLSHandshake' -benchtime 3s
//	go test ./proxy -run '^$' -bench 'MTLSPath' -benchtime 5000x
//
// BenchmarkTLSHandshake: new connections per second to a destination
// proxy's mTLS listener (SPIFFE validator, client certificate required,
// TLS 1.3, X25519), each one handshake and one request answered by the
// proxy itself; "full" without a session, "resumed" with a ticket.
//
// BenchmarkMTLSPath: requests at a fixed 1,000 per second over HTTP/1.1
// keep-alive connections, through no proxy (the baseline), through two
// proxies in plaintext, through two proxies over mTLS (TLS 1.3, RBAC on
// the peer's SPIFFE ID), and the same with L7 rules (method and path);
// between the proxies HTTP/1.1 keep-alive, the clusters' default.
// Reported: latency p50/p99 and the process's CPU (getrusage: clients,
// proxies and backend together) per 1,000 requests per second.

func benchCA(b *testing.B) (*pt.CA, *pt.SVID, *pt.SVID) {
	ca := pt.NewCA(b, meshTD)
	return ca, ca.SVID(b, "shop", "frontend"), ca.SVID(b, "shop", "backend")
}

// destination builds node-b: listener "in" (mTLS or plaintext) to the
// static cluster "backend" (or a direct response when be is "").
func destination(b *testing.B, ca *pt.CA, srv *pt.SVID, be string, mtls, rules bool) (*Proxy, string) {
	principal := pt.Authenticated(pt.Exact(frontendID))
	perm := &rbac.Permission{Rule: &rbac.Permission_Any{Any: true}}
	if rules {
		perm = pt.MethodPathPolicy("GET", "/userdata/[0-9]+").Permissions[0]
	}
	pol := &rbac.Policy{Permissions: []*rbac.Permission{perm}, Principals: []*rbac.Principal{principal}}
	if !mtls {
		pol.Principals = anyPrincipal()
	}
	h := pt.HCM("in-routes", []*hcm.HttpFilter{pt.RBACFilter(rbac.RBAC_ALLOW, map[string]*rbac.Policy{"p": pol})})
	l := pt.Listener("in", "127.0.0.1", 0, h)
	if mtls {
		pt.TLSInspector(l)
		l.FilterChains = []*listener.FilterChain{pt.TLSChain("mtls", pt.DownstreamTLS("backend-cert", "bundle", nil), h)}
	}
	rc := pt.RouteConfig("in-routes", "backend")
	var cs []*cluster.Cluster
	if be == "" {
		rc.VirtualHosts[0].Routes[0].Action = &route.Route_DirectResponse{DirectResponse: &route.DirectResponseAction{Status: 200}}
		cs = []*cluster.Cluster{pt.StaticCluster("backend", pt.SocketAddress("127.0.0.1", 9))}
	} else {
		host, port, _ := net.SplitHostPort(be)
		var n uint32
		fmt.Sscan(port, &n)
		cs = []*cluster.Cluster{pt.StaticCluster("backend", pt.SocketAddress(host, n))}
	}
	p := New(Config{NodeID: "node-b", AccessLog: io.Discard}, nil)
	b.Cleanup(p.Close)
	if err := p.applyClusters("1", cs); err != nil {
		b.Fatal(err)
	}
	if err := p.applyRoutes("1", []*route.RouteConfiguration{rc}); err != nil {
		b.Fatal(err)
	}
	if err := p.applyListeners("1", []*listener.Listener{l}); err != nil {
		b.Fatal(err)
	}
	if err := p.applySecrets("1", []*tlsv3.Secret{pt.SVIDSecret("backend-cert", srv), pt.SPIFFESecret("bundle", map[string][]byte{meshTD: ca.CertPEM})}); err != nil {
		b.Fatal(err)
	}
	ap, _ := p.ListenerAddr("in")
	return p, ap.String()
}

// source builds node-a: listener "out" to the ORIGINAL_DST cluster
// "mesh" (HTTP/1.1, over mTLS or plaintext).
func source(b *testing.B, ca *pt.CA, client *pt.SVID, mtls bool) string {
	c := pt.OriginalDstCluster("mesh", 0, pt.UseOriginalDstHeader)
	if mtls {
		c.TransportSocket = pt.UpstreamTLS("frontend-cert", "bundle", []*tlsv3.SubjectAltNameMatcher{pt.URISAN(pt.Exact(backendID))},
			func(u *tlsv3.UpstreamTlsContext) { u.CommonTlsContext.AlpnProtocols = []string{"http/1.1"} })
	}
	p, addr := startDirect(b, []*cluster.Cluster{c}, []*route.RouteConfiguration{pt.RouteConfig("out-routes", "mesh")},
		[]*listener.Listener{pt.Listener("out", "127.0.0.1", 0, pt.HCM("out-routes", allowAll()))})
	if mtls {
		if err := p.applySecrets("1", []*tlsv3.Secret{pt.SVIDSecret("frontend-cert", client), pt.SPIFFESecret("bundle", map[string][]byte{meshTD: ca.CertPEM})}); err != nil {
			b.Fatal(err)
		}
	}
	return addr
}

func BenchmarkTLSHandshake(b *testing.B) {
	ca, client, srv := benchCA(b)
	_, in := destination(b, ca, srv, "", true, false)
	for _, resumed := range []bool{false, true} {
		name := "full"
		var cache tls.ClientSessionCache
		if resumed {
			name, cache = "resumed", tls.NewLRUClientSessionCache(16)
		}
		b.Run(name, func(b *testing.B) {
			cfg := &tls.Config{InsecureSkipVerify: true, Certificates: []tls.Certificate{client.TLS}, ClientSessionCache: cache, //nolint:gosec // bench
				NextProtos: []string{"http/1.1"}, MinVersion: tls.VersionTLS13,
				// As the proxies' clients: Envoy's default curves.
				CurvePreferences: envoyCurves}
			once := func() bool {
				c, err := tls.Dial("tcp", in, cfg)
				if err != nil {
					b.Error(err)
					return false
				}
				defer c.Close()
				if _, err := io.WriteString(c, "GET /hs HTTP/1.1\r\nHost: b\r\nConnection: close\r\n\r\n"); err != nil {
					b.Error(err)
					return false
				}
				if _, err := io.ReadAll(c); err != nil {
					b.Error(err)
				}
				return c.ConnectionState().DidResume
			}
			if resumed {
				once() // prime the ticket
			}
			b.SetParallelism(4)
			b.ResetTimer()
			var mu sync.Mutex
			n, reused := 0, 0
			b.RunParallel(func(pb *testing.PB) {
				for pb.Next() {
					r := once()
					mu.Lock()
					n++
					if r {
						reused++
					}
					mu.Unlock()
				}
			})
			b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "handshakes/s")
			b.ReportMetric(float64(reused)/float64(n), "resumed/conn")
		})
	}
}

func BenchmarkMTLSPath(b *testing.B) {
	be := benchBackend(b)
	beAddr := be.Listener.Addr().String()
	for _, tc := range []struct {
		name        string
		proxies     bool
		mtls, rules bool
	}{
		{name: "direct"},
		{name: "two-proxies-plaintext", proxies: true},
		{name: "two-proxies-mtls", proxies: true, mtls: true},
		{name: "two-proxies-mtls-L7rules", proxies: true, mtls: true, rules: true},
	} {
		b.Run(tc.name, func(b *testing.B) {
			entry, dst := beAddr, ""
			if tc.proxies {
				ca, client, srv := benchCA(b)
				_, dst = destination(b, ca, srv, beAddr, tc.mtls, tc.rules)
				entry = source(b, ca, client, tc.mtls)
			}
			fixedRate(b, "http://"+entry+"/userdata/42", dst, 1000)
		})
	}
}

// fixedRate sends b.N requests at rate per second (open loop: a request
// starts on schedule, whether the previous ones finished or not) and
// reports latency percentiles and CPU.
func fixedRate(b *testing.B, url, originalDst string, rate int) {
	tr := &http.Transport{MaxIdleConnsPerHost: 256, DisableCompression: true}
	b.Cleanup(tr.CloseIdleConnections)
	cl := &http.Client{Transport: tr, Timeout: 10 * time.Second}
	do := func() (time.Duration, error) {
		req, _ := http.NewRequest("GET", url, nil)
		if originalDst != "" {
			req.Header.Set("x-envoy-original-dst-host", originalDst)
		}
		start := time.Now()
		resp, err := cl.Do(req)
		if err != nil {
			return 0, err
		}
		n, _ := io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		if resp.StatusCode != 200 || n != 1024 {
			return 0, fmt.Errorf("status %d, %d bytes", resp.StatusCode, n)
		}
		return time.Since(start), nil
	}
	// Warm up: connections, TLS sessions, pools.
	for range 50 {
		if _, err := do(); err != nil {
			b.Fatal(err)
		}
	}
	lat := make([]time.Duration, b.N)
	var failed int
	var mu sync.Mutex
	var wg sync.WaitGroup
	interval := time.Second / time.Duration(rate)
	ru0 := rusage(b)
	b.ResetTimer()
	start := time.Now()
	for i := range b.N {
		if d := time.Until(start.Add(time.Duration(i) * interval)); d > 0 {
			time.Sleep(d)
		}
		wg.Go(func() {
			d, err := do()
			mu.Lock()
			defer mu.Unlock()
			if err != nil {
				failed++
				return
			}
			lat[i] = d
		})
	}
	wg.Wait()
	b.StopTimer()
	wall := time.Since(start)
	cpu := rusage(b) - ru0
	if failed > 0 {
		b.Fatalf("%d of %d requests failed", failed, b.N)
	}
	slices.Sort(lat)
	pct := func(p float64) float64 { return float64(lat[int(float64(len(lat)-1)*p)].Microseconds()) / 1000 }
	achieved := float64(b.N) / wall.Seconds()
	b.ReportMetric(pct(0.50), "p50-ms")
	b.ReportMetric(pct(0.99), "p99-ms")
	b.ReportMetric(achieved, "req/s")
	b.ReportMetric(cpu.Seconds()/wall.Seconds()*1000/achieved, "vCPU/1k-rps")
}

func rusage(b *testing.B) time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		b.Fatal(err)
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// BenchmarkTLSHandshakeOnly measures the handshakes alone, both sides
// the proxy's own (a destination chain's server side, a cluster's client
// side with its session cache), over loopback TCP connections without
// HTTP. "full" uses a new session key each time, "resumed" one key.
func BenchmarkTLSHandshakeOnly(b *testing.B) {
	ca, client, srv := benchCA(b)
	p := New(Config{NodeID: "n", AccessLog: io.Discard}, nil)
	b.Cleanup(p.Close)
	secrets := map[string]*secret{}
	for _, s := range []*tlsv3.Secret{pt.SVIDSecret("backend-cert", srv), pt.SVIDSecret("frontend-cert", client), pt.SPIFFESecret("bundle", map[string][]byte{meshTD: ca.CertPEM})} {
		cs, err := p.compileSecret("s", s)
		if err != nil {
			b.Fatal(err)
		}
		secrets[s.GetName()] = cs
	}
	p.secrets.Store(&secrets)
	sctx, err := compileDownstreamTLS("l", pt.DownstreamTLS("backend-cert", "bundle", nil))
	if err != nil {
		b.Fatal(err)
	}
	cctx, err := compileUpstreamTLS("c", pt.UpstreamTLS("frontend-cert", "bundle", []*tlsv3.SubjectAltNameMatcher{pt.URISAN(pt.Exact(backendID))}))
	if err != nil {
		b.Fatal(err)
	}
	d := p.newDownstreamTLS("in", "mtls", sctx)
	u := &upstreamTLS{p: p, ctx: cctx, cluster: "mesh"}
	ct, err := u.current()
	if err != nil {
		b.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				if tc, err := d.handshake(c, 5*time.Second); err == nil {
					_, _ = tc.Write([]byte{1})
					_, _ = tc.Read(make([]byte, 1))
				}
			}()
		}
	}()
	var keys atomic.Int64
	for _, resumed := range []bool{false, true} {
		name := "full"
		if resumed {
			name = "resumed"
		}
		b.Run(name, func(b *testing.B) {
			var reused atomic.Int64
			once := func(key string) {
				c, err := net.Dial("tcp", ln.Addr().String())
				if err != nil {
					b.Error(err)
					return
				}
				defer c.Close()
				tc, err := ct.handshake(context.Background(), u, c, key, "h2")
				if err != nil {
					b.Error(err)
					return
				}
				if _, err := io.ReadFull(tc, make([]byte, 1)); err != nil { // the ticket comes first
					b.Error(err)
					return
				}
				_, _ = tc.Write([]byte{1})
				if tc.ConnectionState().DidResume {
					reused.Add(1)
				}
			}
			once("primed")
			reused.Store(0)
			b.SetParallelism(4)
			b.ResetTimer()
			b.RunParallel(func(pb *testing.PB) {
				for pb.Next() {
					key := "primed"
					if !resumed {
						key = fmt.Sprint("k", keys.Add(1))
					}
					once(key)
				}
			})
			b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "handshakes/s")
			b.ReportMetric(float64(reused.Load())/float64(b.N), "resumed/conn")
		})
	}
}
