package proxy

import (
	"bufio"
	"context"
	"crypto/tls"
	"encoding/base64"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	admin "github.com/envoyproxy/go-control-plane/envoy/admin/v3"
	cluster "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	core "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	listener "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	rbac "github.com/envoyproxy/go-control-plane/envoy/config/rbac/v3"
	accesslogdata "github.com/envoyproxy/go-control-plane/envoy/data/accesslog/v3"
	hcm "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	tlsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/tls/v3"
	upstreamhttp "github.com/envoyproxy/go-control-plane/envoy/extensions/upstreams/http/v3"
	discovery "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"github.com/envoyproxy/go-control-plane/pkg/cache/types"
	"github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/types/known/anypb"
	"google.golang.org/protobuf/types/known/durationpb"

	pt "github.com/nodemesh/nodemesh/proxy/proxytest"
)

// The mTLS scenario on loopback: a client calls the source node's proxy
// (node-a, listener "out", plaintext); its ORIGINAL_DST cluster "mesh"
// connects over TLS 1.3 (ALPN nodemesh-mtls, HTTP/2) with the client
// workload's SVID (frontend) to the destination node's proxy (node-b,
// listener "in": tls_inspector, a chain matching "tls" and the ALPN that
// presents the destination workload's SVID (backend) and requires a client
// certificate, RBAC on the peer's SPIFFE ID), which forwards in plaintext
// to the backend. On loopback the original
// destination comes from x-envoy-original-dst-host; in a node, the
// datapath steers the connection to the destination pod's address into
// node-b's transparent listener.

const (
	meshTD   = "nodemesh.test"
	meshALPN = "nodemesh-mtls" // the ALPN of mesh connections between proxies
)

var (
	frontendID = pt.SPIFFEID(meshTD, "shop", "frontend")
	backendID  = pt.SPIFFEID(meshTD, "shop", "backend")
)

type mesh struct {
	t        *testing.T
	cp       *pt.ControlPlane
	als      *pt.AccessLogServer
	be       *httptest.Server
	ca       *pt.CA
	a, b     *Proxy
	aLog     *syncBuffer // node-a's and node-b's log lines
	bLog     *syncBuffer
	bAccess  *syncBuffer // node-b's stdout access log
	versions map[string]int

	mu sync.Mutex // guards the desired state below
	// node-b
	frontendOnly bool // RBAC: only frontendID (else any authenticated peer)
	allowed      string
	permissive   bool
	backendSVID  *pt.SVID
	bBundle      map[string][]byte
	inIdle       time.Duration // node-b's HCM idle timeout, 0: default
	// node-a
	frontendSVID *pt.SVID
	aBundle      map[string][]byte
	serverSAN    *tlsv3.SubjectAltNameMatcher
}

func startMesh(t *testing.T) *mesh {
	t.Helper()
	dir, err := os.MkdirTemp("", "nmmtls")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	m := &mesh{t: t, cp: pt.Start(t, dir), als: pt.StartAccessLog(t, dir, "als.sock"), ca: pt.NewCA(t, meshTD),
		aLog: &syncBuffer{}, bLog: &syncBuffer{}, bAccess: &syncBuffer{}, versions: map[string]int{}}
	m.be = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if xfcc := r.Header.Get("X-Forwarded-Client-Cert"); xfcc != "" {
			http.Error(w, "forwarded client cert: "+xfcc, http.StatusTeapot)
			return
		}
		fmt.Fprintf(w, "backend %s proto=%s", r.URL.Path, r.Header.Get("X-Forwarded-Proto"))
	}))
	t.Cleanup(m.be.Close)
	m.frontendSVID = m.ca.SVID(t, "shop", "frontend")
	m.backendSVID = m.ca.SVID(t, "shop", "backend")
	m.aBundle = map[string][]byte{meshTD: m.ca.CertPEM}
	m.bBundle = map[string][]byte{meshTD: m.ca.CertPEM}
	m.allowed = frontendID
	m.serverSAN = pt.URISAN(pt.Prefix("spiffe://" + meshTD + "/"))
	m.a = m.startProxy("node-a", m.aLog, io.Discard)
	m.b = m.startProxy("node-b", m.bLog, m.bAccess)
	m.push()
	return m
}

func (m *mesh) startProxy(node string, logs, access io.Writer) *Proxy {
	t := m.t
	log := slog.New(slog.NewTextHandler(io.MultiWriter(logs, testWriter{t}), &slog.HandlerOptions{Level: slog.LevelInfo}))
	p := New(Config{NodeID: node, XDSAddress: m.cp.Address(), AdminAddress: "127.0.0.1:0", AccessLog: access,
		GRPCClusters: map[string]string{"als": m.als.Address()},
		BackoffMin:   20 * time.Millisecond, BackoffMax: 200 * time.Millisecond, DrainTimeout: 2 * time.Second}, log.With("node", node))
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- p.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		select {
		case err := <-done:
			if err != nil {
				t.Errorf("%s Run: %v", node, err)
			}
		case <-time.After(10 * time.Second):
			t.Errorf("%s Run did not return", node)
		}
	})
	waitFor(t, 5*time.Second, node+" admin", func() bool { return p.AdminAddr() != nil })
	return p
}

func (m *mesh) update(f func(m *mesh)) {
	m.mu.Lock()
	f(m)
	m.mu.Unlock()
	m.push()
}

// bResources is node-b's configuration.
func (m *mesh) bResources() map[resource.Type][]types.Resource {
	ip, port := backendAddr(m.t, m.be)
	principal := pt.Authenticated(nil)
	if m.allowed != "" {
		principal = pt.Authenticated(pt.Exact(m.allowed))
	}
	tweaks := []func(*hcm.HttpConnectionManager){pt.WithAccessLog, pt.WithGRPCAccessLog("als", "inbound", pt.FlushInterval(20*time.Millisecond))}
	if m.inIdle > 0 {
		tweaks = append(tweaks, func(h *hcm.HttpConnectionManager) {
			h.CommonHttpProtocolOptions = &core.HttpProtocolOptions{IdleTimeout: durationpb.New(m.inIdle)}
		})
	}
	h := pt.HCM("in-routes", []*hcm.HttpFilter{pt.RBACFilter(rbac.RBAC_ALLOW, map[string]*rbac.Policy{"frontend": pt.PeerPolicy(principal)})}, tweaks...)
	l := pt.Listener("in", "127.0.0.1", 0, h, pt.TLSInspector)
	// As docs/ARCHITECTURE.md designs it: the chain of the destination
	// pod matches TLS with the mesh's ALPN and presents that pod's SVID
	// (a secret named by its SPIFFE ID).
	mtls := pt.TLSChain("mtls", pt.DownstreamTLS(backendID, "bundle", nil, func(d *tlsv3.DownstreamTlsContext) {
		d.CommonTlsContext.AlpnProtocols = []string{meshALPN}
	}), h)
	mtls.FilterChainMatch.ApplicationProtocols = []string{meshALPN}
	l.FilterChains = []*listener.FilterChain{mtls}
	if m.permissive {
		l.FilterChains = append(l.FilterChains, pt.RawChain("plaintext", pt.HCM("in-routes", allowAll(), pt.WithAccessLog)))
	}
	return map[resource.Type][]types.Resource{
		resource.ListenerType: {l},
		resource.RouteType:    {pt.RouteConfig("in-routes", "backend")},
		resource.ClusterType:  {pt.StaticCluster("backend", pt.SocketAddress(ip, port))},
		resource.SecretType:   {pt.SVIDSecret(backendID, m.backendSVID), pt.SPIFFESecret("bundle", m.bBundle)},
	}
}

// http2Upstream makes a cluster speak HTTP/2 (over TLS: ALPN h2).
func http2Upstream(c *cluster.Cluster) {
	c.TypedExtensionProtocolOptions = map[string]*anypb.Any{upstreamHTTPOptions: pt.Any(&upstreamhttp.HttpProtocolOptions{
		UpstreamProtocolOptions: &upstreamhttp.HttpProtocolOptions_ExplicitHttpConfig_{ExplicitHttpConfig: &upstreamhttp.HttpProtocolOptions_ExplicitHttpConfig{
			ProtocolConfig: &upstreamhttp.HttpProtocolOptions_ExplicitHttpConfig_Http2ProtocolOptions{Http2ProtocolOptions: &core.Http2ProtocolOptions{}}}}})}
}

// aResources is node-a's configuration.
func (m *mesh) aResources() map[resource.Type][]types.Resource {
	meshCluster := pt.OriginalDstCluster("mesh", 0, pt.UseOriginalDstHeader, http2Upstream, func(c *cluster.Cluster) {
		c.TransportSocket = pt.UpstreamTLS(frontendID, "bundle", []*tlsv3.SubjectAltNameMatcher{m.serverSAN},
			func(u *tlsv3.UpstreamTlsContext) { u.CommonTlsContext.AlpnProtocols = []string{meshALPN} })
	})
	return map[resource.Type][]types.Resource{
		resource.ListenerType: {pt.Listener("out", "127.0.0.1", 0, pt.HCM("out-routes", allowAll()))},
		resource.RouteType:    {pt.RouteConfig("out-routes", "mesh")},
		resource.ClusterType:  {meshCluster},
		resource.SecretType:   {pt.SVIDSecret(frontendID, m.frontendSVID), pt.SPIFFESecret("bundle", m.aBundle)},
	}
}

// push sets both nodes' snapshots and waits until each proxy ACKed every
// type of them.
func (m *mesh) push() {
	m.t.Helper()
	m.mu.Lock()
	res := map[string]map[resource.Type][]types.Resource{"node-a": m.aResources(), "node-b": m.bResources()}
	m.mu.Unlock()
	for _, node := range []string{"node-a", "node-b"} {
		m.versions[node]++
		v := fmt.Sprintf("%s-v%d", node, m.versions[node])
		m.cp.Set(node, v, res[node])
		for _, typ := range []string{resource.ClusterType, resource.ListenerType, resource.RouteType, resource.SecretType} {
			m.cp.WaitRequest(10*time.Second, ackFrom(node, typ, v))
		}
	}
}

func ackFrom(node, typ, version string) func(*discovery.DiscoveryRequest) bool {
	ack := pt.IsACK(typ, version)
	return func(r *discovery.DiscoveryRequest) bool { return r.GetNode().GetId() == node && ack(r) }
}

func (m *mesh) addr(p *Proxy, name string) string {
	m.t.Helper()
	var a string
	waitFor(m.t, 5*time.Second, "listener "+name, func() bool {
		ap, ok := p.ListenerAddr(name)
		a = ap.String()
		return ok
	})
	return a
}

// client sends requests through node-a to node-b's listener.
func (m *mesh) client() func(path string, hdr ...string) (int, string, error) {
	out, in := m.addr(m.a, "out"), m.addr(m.b, "in")
	tr := &http.Transport{MaxIdleConnsPerHost: 16}
	m.t.Cleanup(tr.CloseIdleConnections)
	cl := &http.Client{Transport: tr, Timeout: 10 * time.Second}
	return func(path string, hdr ...string) (int, string, error) {
		req, _ := http.NewRequest("GET", "http://"+out+path, nil)
		req.Header.Set("x-envoy-original-dst-host", in)
		for i := 0; i+1 < len(hdr); i += 2 {
			req.Header.Set(hdr[i], hdr[i+1])
		}
		resp, err := cl.Do(req)
		if err != nil {
			return 0, "", err
		}
		defer resp.Body.Close()
		b, err := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b), err
	}
}

// directTLS connects to node-b's listener as a client workload presenting
// cert would, sends one request and returns the status, or the error of
// the handshake or of reading the answer (TLS 1.3: a refused client
// certificate shows on the first read).
func (m *mesh) directTLS(cert *tls.Certificate, cache tls.ClientSessionCache) (int, *tls.ConnectionState, error) {
	cfg := &tls.Config{InsecureSkipVerify: true, NextProtos: []string{meshALPN}, ClientSessionCache: cache, MinVersion: tls.VersionTLS13} //nolint:gosec // the test checks what the server presents
	if cert != nil {
		cfg.Certificates = []tls.Certificate{*cert}
	}
	c, err := tls.DialWithDialer(&net.Dialer{Timeout: 5 * time.Second}, "tcp", m.addr(m.b, "in"), cfg)
	if err != nil {
		return 0, nil, err
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(5 * time.Second))
	if _, err := io.WriteString(c, "GET /direct HTTP/1.1\r\nHost: backend\r\n\r\n"); err != nil {
		return 0, nil, err
	}
	resp, err := http.ReadResponse(bufio.NewReader(c), nil)
	if err != nil {
		return 0, nil, err
	}
	_, _ = io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	cs := c.ConnectionState()
	return resp.StatusCode, &cs, nil
}

func (m *mesh) stats(p *Proxy) string {
	m.t.Helper()
	resp, err := http.Get("http://" + p.AdminAddr().String() + "/stats")
	if err != nil {
		m.t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return string(b)
}

// counter reads one series of /stats, 0 when absent.
func (m *mesh) counter(p *Proxy, series string) float64 {
	m.t.Helper()
	for _, l := range strings.Split(m.stats(p), "\n") {
		if v, ok := strings.CutPrefix(l, series+" "); ok {
			var f float64
			fmt.Sscan(v, &f)
			return f
		}
	}
	return 0
}

func TestMTLS(t *testing.T) {
	m := startMesh(t)
	get := m.client()

	t.Run("allowed", func(t *testing.T) {
		code, body, err := get("/hello", "X-Forwarded-Client-Cert", "By=spiffe://forged")
		// x-forwarded-proto is the first hop's (plaintext to node-a):
		// node-b keeps it, as Envoy without use_remote_address.
		if err != nil || code != 200 || body != "backend /hello proto=http" {
			t.Fatalf("GET /hello = %d %q %v, want 200 from the backend, x-forwarded-proto http, no client cert header", code, body, err)
		}
		if code, _, err := m.directTLS(&m.frontendSVID.TLS, nil); err != nil || code != 200 {
			t.Fatalf("the frontend's SVID directly: %d %v", code, err)
		}
		e := m.als.WaitEntry(5*time.Second, pt.Path("/hello"))
		tp := e.Entry.GetCommonProperties().GetTlsProperties()
		if tp.GetTlsVersion() != accesslogdata.TLSProperties_TLSv1_3 ||
			len(tp.GetPeerCertificateProperties().GetSubjectAltName()) != 1 || tp.GetPeerCertificateProperties().GetSubjectAltName()[0].GetUri() != frontendID ||
			len(tp.GetLocalCertificateProperties().GetSubjectAltName()) != 1 || tp.GetLocalCertificateProperties().GetSubjectAltName()[0].GetUri() != backendID ||
			tp.GetTlsCipherSuite() == nil {
			t.Errorf("access log tls_properties = %v, want TLSv1_3, peer %s, local %s, a cipher suite", tp, frontendID, backendID)
		}
		if e.Entry.GetRequest().GetScheme() != "https" {
			t.Errorf("access log scheme %q, want https", e.Entry.GetRequest().GetScheme())
		}
		if md := e.Entry.GetCommonProperties().GetMetadata().GetFilterMetadata()[filterRBAC].GetFields(); md["enforced_effective_policy_id"].GetStringValue() != "frontend" {
			t.Errorf("RBAC metadata %v, want policy frontend", md)
		}
		var line map[string]any
		for _, l := range m.bAccess.lines() {
			if l["path"] == "/hello" {
				line = l
			}
		}
		if line["downstream_peer_uri_san"] != frontendID || line["downstream_tls_version"] != "TLSv1.3" {
			t.Errorf("stdout access log line %v, want the peer's SPIFFE ID and TLSv1.3", line)
		}
		if n := m.counter(m.b, `nodemesh_proxy_ssl_total{name="in",scope="listener",stat="handshake"}`); n < 1 {
			t.Errorf("node-b counted %v handshakes", n)
		}
		if n := m.counter(m.a, `nodemesh_proxy_ssl_total{name="mesh",scope="cluster",stat="handshake"}`); n < 1 {
			t.Errorf("node-a counted %v handshakes", n)
		}
	})

	t.Run("RBAC denies another principal", func(t *testing.T) {
		m.update(func(m *mesh) { m.allowed = pt.SPIFFEID(meshTD, "shop", "checkout") })
		code, body, err := get("/denied")
		if err != nil || code != 403 || body != rbacDeniedBody {
			t.Fatalf("GET /denied = %d %q %v, want 403 RBAC: access denied", code, body, err)
		}
		m.update(func(m *mesh) { m.allowed = frontendID })
		if code, _, err := get("/again"); code != 200 {
			t.Fatalf("allowed again: %d %v", code, err)
		}
	})

	t.Run("strict refuses plaintext", func(t *testing.T) {
		before := m.counter(m.b, `nodemesh_proxy_no_filter_chain_total{listener="in"}`)
		if err := dialH1Raw(t, m.addr(m.b, "in")); err == nil {
			t.Fatal("a plaintext request was answered by a strict listener")
		}
		if m.counter(m.b, `nodemesh_proxy_no_filter_chain_total{listener="in"}`) != before+1 {
			t.Error("the refused plaintext connection was not counted as no_filter_chain")
		}
	})

	t.Run("permissive accepts both", func(t *testing.T) {
		m.update(func(m *mesh) { m.permissive = true })
		if err := dialH1Raw(t, m.addr(m.b, "in")); err != nil {
			t.Fatalf("plaintext on a permissive listener: %v", err)
		}
		if code, _, err := get("/tls-too"); code != 200 {
			t.Fatalf("TLS on a permissive listener: %d %v", code, err)
		}
		m.update(func(m *mesh) { m.permissive = false })
	})

	t.Run("bad client certificates", func(t *testing.T) {
		other := pt.NewCA(t, meshTD)
		for _, tc := range []struct {
			name, reason string
			svid         *pt.SVID
		}{
			{"expired", ReasonExpired, m.ca.SVID(t, "shop", "frontend", pt.Expired)},
			{"not yet valid", ReasonNotYetValid, m.ca.SVID(t, "shop", "frontend", pt.NotYetValid)},
			{"wrong trust domain", ReasonWrongTrustDomain, m.ca.Issue(t, pt.SPIFFEID("other.test", "shop", "frontend"))},
			{"unknown CA", ReasonUnknownCA, other.SVID(t, "shop", "frontend")},
			{"two URI SANs", ReasonMultipleURISANs, m.ca.SVID(t, "shop", "frontend", pt.ExtraURI(pt.SPIFFEID(meshTD, "shop", "admin")))},
			{"CA leaf", ReasonLeafIsCA, m.ca.SVID(t, "shop", "frontend", pt.CALeaf)},
			{"no certificate", ReasonMalformed, nil},
		} {
			t.Run(tc.name, func(t *testing.T) {
				series := fmt.Sprintf(`nodemesh_proxy_ssl_fail_verify_reasons_total{name="in",reason=%q,scope="listener"}`, tc.reason)
				before := m.counter(m.b, series)
				var cert *tls.Certificate
				if tc.svid != nil {
					cert = &tc.svid.TLS
				}
				code, _, err := m.directTLS(cert, nil)
				if err == nil {
					t.Fatalf("answered %d, want the handshake refused", code)
				}
				// The server counts once its handshake returned, maybe
				// after the client saw the alert.
				waitFor(t, 2*time.Second, series, func() bool { return m.counter(m.b, series) == before+1 })
				waitFor(t, 2*time.Second, "log line", func() bool {
					return strings.Contains(m.bLog.String(), "reason="+tc.reason)
				})
			})
		}
		if n := m.counter(m.b, `nodemesh_proxy_ssl_total{name="in",scope="listener",stat="fail_verify_error"}`); n < 6 {
			t.Errorf("fail_verify_error = %v, want at least 6", n)
		}
		if n := m.counter(m.b, `nodemesh_proxy_ssl_total{name="in",scope="listener",stat="fail_verify_no_cert"}`); n < 1 {
			t.Errorf("fail_verify_no_cert = %v", n)
		}
		if code, _, err := m.directTLS(&m.frontendSVID.TLS, nil); err != nil || code != 200 {
			t.Fatalf("the valid SVID directly: %d %v", code, err)
		}
	})

	t.Run("client refuses a server with another SPIFFE ID", func(t *testing.T) {
		m.update(func(m *mesh) { m.serverSAN = pt.URISAN(pt.Exact(pt.SPIFFEID(meshTD, "shop", "payments"))) })
		code, body, _ := get("/wrong-server")
		if code != http.StatusServiceUnavailable {
			t.Fatalf("GET through a cluster expecting another server = %d %q, want 503", code, body)
		}
		if n := m.counter(m.a, `nodemesh_proxy_ssl_total{name="mesh",scope="cluster",stat="fail_verify_san"}`); n < 1 {
			t.Errorf("node-a fail_verify_san = %v", n)
		}
		m.update(func(m *mesh) { m.serverSAN = pt.URISAN(pt.Exact(backendID)) })
		if code, _, err := get("/right-server"); code != 200 {
			t.Fatalf("after the fix: %d %v", code, err)
		}
	})

	t.Run("session resumption", func(t *testing.T) {
		cache := tls.NewLRUClientSessionCache(4)
		if _, cs, err := m.directTLS(&m.frontendSVID.TLS, cache); err != nil || cs.DidResume {
			t.Fatalf("first connection: resumed %v, %v", cs != nil && cs.DidResume, err)
		}
		_, cs, err := m.directTLS(&m.frontendSVID.TLS, cache)
		if err != nil || !cs.DidResume {
			t.Fatalf("second connection did not resume: %v", err)
		}
		// node-a's pooled connection closes when node-b's idle timeout
		// fires; the next one resumes.
		m.update(func(m *mesh) { m.inIdle = 100 * time.Millisecond })
		before := m.counter(m.a, `nodemesh_proxy_ssl_total{name="mesh",scope="cluster",stat="session_reused"}`)
		for i := 0; i < 3; i++ {
			if code, _, err := get("/resume"); code != 200 {
				t.Fatalf("GET /resume: %d %v", code, err)
			}
			time.Sleep(300 * time.Millisecond)
		}
		if n := m.counter(m.a, `nodemesh_proxy_ssl_total{name="mesh",scope="cluster",stat="session_reused"}`); n < before+1 {
			t.Errorf("node-a resumed %v sessions, want more than %v", n, before)
		}
		m.update(func(m *mesh) { m.inIdle = 0 })
	})

	t.Run("rotation under load", func(t *testing.T) {
		var ok, failed atomic.Int64
		var firstErr atomic.Value
		stop := make(chan struct{})
		var stopOnce sync.Once
		var wg sync.WaitGroup
		for w := 0; w < 4; w++ {
			wg.Go(func() {
				for {
					select {
					case <-stop:
						return
					default:
					}
					code, body, err := get("/load")
					if err != nil || code != 200 {
						failed.Add(1)
						firstErr.CompareAndSwap(nil, fmt.Sprintf("%d %q %v", code, body, err))
						continue
					}
					ok.Add(1)
				}
			})
		}
		halt := func() {
			stopOnce.Do(func() { close(stop) })
			wg.Wait()
		}
		defer halt()
		time.Sleep(200 * time.Millisecond)
		// Workload certificates rotate.
		newBackend := m.ca.SVID(t, "shop", "backend")
		m.update(func(m *mesh) { m.backendSVID, m.frontendSVID = newBackend, m.ca.SVID(t, "shop", "frontend") })
		_, cs, err := m.directTLS(&m.frontendSVID.TLS, nil)
		if err != nil || cs.PeerCertificates[0].SerialNumber.Cmp(newBackend.Cert.SerialNumber) != 0 {
			t.Errorf("a new handshake after the rotation does not get the new certificate: %v", err)
		}
		time.Sleep(200 * time.Millisecond)
		// CA rotation: both roots trusted, certificates from the new CA,
		// then the old root dropped.
		ca2 := pt.NewCA(t, meshTD)
		both := append(append([]byte{}, m.ca.CertPEM...), ca2.CertPEM...)
		oldClient := m.frontendSVID
		m.update(func(m *mesh) {
			m.aBundle, m.bBundle = map[string][]byte{meshTD: both}, map[string][]byte{meshTD: both}
		})
		time.Sleep(200 * time.Millisecond)
		m.update(func(m *mesh) {
			m.backendSVID, m.frontendSVID = ca2.SVID(t, "shop", "backend"), ca2.SVID(t, "shop", "frontend")
		})
		if code, _, err := m.directTLS(&oldClient.TLS, nil); err != nil || code != 200 {
			t.Errorf("with both roots trusted, a certificate of the old CA: %d %v", code, err)
		}
		if code, _, err := m.directTLS(&m.frontendSVID.TLS, nil); err != nil || code != 200 {
			t.Errorf("with both roots trusted, a certificate of the new CA: %d %v", code, err)
		}
		time.Sleep(200 * time.Millisecond)
		m.update(func(m *mesh) {
			m.aBundle, m.bBundle = map[string][]byte{meshTD: ca2.CertPEM}, map[string][]byte{meshTD: ca2.CertPEM}
		})
		time.Sleep(300 * time.Millisecond)
		if _, _, err := m.directTLS(&oldClient.TLS, nil); err == nil {
			t.Error("the old CA's certificate is still accepted after its root was dropped")
		}
		halt()
		if failed.Load() != 0 || ok.Load() < 50 {
			t.Fatalf("under load: %d ok, %d failed (first: %v)", ok.Load(), failed.Load(), firstErr.Load())
		}
		t.Logf("rotation under load: %d requests, 0 failed", ok.Load())
		m.ca = ca2
	})

	t.Run("config_dump redacts private keys", func(t *testing.T) {
		// A refused secret (key of another certificate) lands in
		// error_state with its key redacted too.
		bad := pt.CertSecret(backendID, m.backendSVID.CertPEM, m.frontendSVID.KeyPEM)
		res := m.bResources()
		res[resource.SecretType][0] = bad
		m.cp.Set("node-b", "node-b-bad", res)
		nack := m.cp.WaitRequest(10*time.Second, func(r *discovery.DiscoveryRequest) bool {
			return r.GetNode().GetId() == "node-b" && pt.IsNACK(resource.SecretType)(r)
		})
		if msg := nack.GetErrorDetail().GetMessage(); !strings.Contains(msg, `secret "`+backendID+`".tls_certificate: tls: private key does not match public key`) ||
			strings.Contains(msg, "PRIVATE KEY") {
			t.Errorf("SDS NACK %q", msg)
		}
		for _, p := range []*Proxy{m.a, m.b} {
			resp, err := http.Get("http://" + p.AdminAddr().String() + "/config_dump")
			if err != nil {
				t.Fatal(err)
			}
			body, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			dump := string(body)
			for _, s := range []*pt.SVID{m.frontendSVID, m.backendSVID} {
				if leaksKey(dump, s.KeyPEM) {
					t.Fatal("/config_dump shows a private key")
				}
			}
			var cd admin.ConfigDump
			if err := protojson.Unmarshal(body, &cd); err != nil {
				t.Fatal(err)
			}
			var sd admin.SecretsConfigDump
			if len(cd.Configs) != 4 || cd.Configs[3].UnmarshalTo(&sd) != nil {
				t.Fatalf("no SecretsConfigDump in %v", cd.Configs)
			}
			if len(sd.DynamicActiveSecrets) != 2 {
				t.Fatalf("active secrets %v, want 2", sd.DynamicActiveSecrets)
			}
			for _, ds := range sd.DynamicActiveSecrets {
				var s tlsv3.Secret
				if err := ds.GetSecret().UnmarshalTo(&s); err != nil {
					t.Fatal(err)
				}
				if c := s.GetTlsCertificate(); c != nil {
					if string(c.GetPrivateKey().GetInlineBytes()) != "[redacted]" || len(c.GetCertificateChain().GetInlineBytes()) == 0 {
						t.Errorf("secret %s: private key %q, chain %d bytes: want [redacted] and the chain", ds.Name, c.GetPrivateKey().GetInlineBytes(), len(c.GetCertificateChain().GetInlineBytes()))
					}
				}
				if ds.VersionInfo == "" || ds.LastUpdated == nil {
					t.Errorf("secret %s without version or last_updated", ds.Name)
				}
			}
			if p == m.b {
				var failed *admin.UpdateFailureState
				for _, ds := range sd.DynamicActiveSecrets {
					if ds.Name == backendID {
						failed = ds.ErrorState
					}
				}
				var s tlsv3.Secret
				if failed == nil || failed.GetFailedConfiguration().UnmarshalTo(&s) != nil || string(s.GetTlsCertificate().GetPrivateKey().GetInlineBytes()) != "[redacted]" {
					t.Errorf("node-b's refused secret: error_state %v, want its failed configuration with the key redacted", failed)
				}
			}
		}
		// The last good certificate still serves.
		if code, _, err := get("/after-nack"); code != 200 {
			t.Fatalf("after the NACK: %d %v", code, err)
		}
	})
}

// dialH1Raw sends a plaintext request and reports whether an answer came.
func dialH1Raw(t *testing.T, addr string) error {
	c, err := net.DialTimeout("tcp", addr, 2*time.Second)
	if err != nil {
		return err
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(5 * time.Second))
	if _, err := io.WriteString(c, "GET /plain HTTP/1.1\r\nHost: backend\r\n\r\n"); err != nil {
		return err
	}
	resp, err := http.ReadResponse(bufio.NewReader(c), nil)
	if err != nil {
		return err
	}
	resp.Body.Close()
	if resp.StatusCode != 200 {
		return fmt.Errorf("status %d", resp.StatusCode)
	}
	return nil
}

// leaksKey reports whether a JSON dump shows a PEM private key, as text
// (inline_string) or base64 (inline_bytes), or the key's own base64 body.
func leaksKey(dump string, keyPEM []byte) bool {
	body := strings.Split(string(keyPEM), "\n")[1]
	return strings.Contains(dump, "PRIVATE KEY") || strings.Contains(dump, body) ||
		strings.Contains(dump, base64.StdEncoding.EncodeToString([]byte("-----BEGIN PRIVATE KEY"))[:28])
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}
