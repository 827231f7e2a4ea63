package proxy

import (
	"bufio"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	cluster "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	core "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	listener "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	route "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	hcm "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	upstreamhttp "github.com/envoyproxy/go-control-plane/envoy/extensions/upstreams/http/v3"
	"google.golang.org/protobuf/types/known/anypb"
	"google.golang.org/protobuf/types/known/wrapperspb"

	pt "github.com/nodemesh/nodemesh/proxy/proxytest"
)

// The shapes the Nodemesh control plane generates beyond the basics: an
// HCM that leaves the application's headers alone and allows websocket
// upgrades, clusters that speak the downstream's protocol upstream, and
// listeners with an additional IPv6 address.

func transparentHCM(h *hcm.HttpConnectionManager) {
	h.CodecType = hcm.HttpConnectionManager_AUTO
	h.NormalizePath = wrapperspb.Bool(false)
	h.PathWithEscapedSlashesAction = hcm.HttpConnectionManager_KEEP_UNCHANGED
	h.GenerateRequestId = wrapperspb.Bool(false)
	h.ServerHeaderTransformation = hcm.HttpConnectionManager_PASS_THROUGH
	h.UpgradeConfigs = []*hcm.HttpConnectionManager_UpgradeConfig{{UpgradeType: "websocket"}}
}

func downstreamProtocol(c *cluster.Cluster) {
	c.TypedExtensionProtocolOptions = map[string]*anypb.Any{upstreamHTTPOptions: pt.Any(&upstreamhttp.HttpProtocolOptions{
		UpstreamProtocolOptions: &upstreamhttp.HttpProtocolOptions_UseDownstreamProtocolConfig{
			UseDownstreamProtocolConfig: &upstreamhttp.HttpProtocolOptions_UseDownstreamHttpConfig{
				HttpProtocolOptions: &core.Http1ProtocolOptions{}, Http2ProtocolOptions: &core.Http2ProtocolOptions{}}}})}
}

func TestTranslateControlPlaneShapes(t *testing.T) {
	for _, tc := range []struct {
		name    string
		l       *listener.Listener
		c       *cluster.Cluster
		wantErr string
	}{
		{name: "transparent HCM", l: testListener(withHCM(transparentHCM))},
		{name: "additional address", l: testListener(func(l *listener.Listener) {
			l.AdditionalAddresses = []*listener.AdditionalAddress{{Address: pt.SocketAddress("::1", 0)}}
		})},
		{name: "overlapping additional address", wantErr: "additional_addresses[0].address: 0.0.0.0:15006 overlaps 0.0.0.0:15006",
			l: testListener(func(l *listener.Listener) {
				l.Address = pt.SocketAddress("0.0.0.0", 15006)
				l.AdditionalAddresses = []*listener.AdditionalAddress{{Address: pt.SocketAddress("0.0.0.0", 15006)}}
			})},
		{name: "CONNECT upgrade", wantErr: "upgrade_configs[0].upgrade_type: CONNECT is not supported",
			l: testListener(withHCM(func(h *hcm.HttpConnectionManager) {
				h.UpgradeConfigs = []*hcm.HttpConnectionManager_UpgradeConfig{{UpgradeType: "CONNECT"}}
			}))},
		{name: "upgrade filters", wantErr: "upgrade_configs[0]: field filters not supported",
			l: testListener(withHCM(func(h *hcm.HttpConnectionManager) {
				h.UpgradeConfigs = []*hcm.HttpConnectionManager_UpgradeConfig{{UpgradeType: "websocket", Filters: []*hcm.HttpFilter{{Name: "x"}}}}
			}))},
		{name: "downstream protocol cluster", c: pt.OriginalDstCluster("od", 0xb00, downstreamProtocol)},
		{name: "explicit h2c cluster", c: pt.OriginalDstCluster("od", 0xb00, func(c *cluster.Cluster) {
			c.TypedExtensionProtocolOptions = map[string]*anypb.Any{upstreamHTTPOptions: pt.Any(&upstreamhttp.HttpProtocolOptions{
				UpstreamProtocolOptions: &upstreamhttp.HttpProtocolOptions_ExplicitHttpConfig_{ExplicitHttpConfig: &upstreamhttp.HttpProtocolOptions_ExplicitHttpConfig{
					ProtocolConfig: &upstreamhttp.HttpProtocolOptions_ExplicitHttpConfig_Http2ProtocolOptions{Http2ProtocolOptions: &core.Http2ProtocolOptions{}}}}})}
		})},
		{name: "h2 window tuning", wantErr: "http2_protocol_options: field initial_stream_window_size not supported",
			c: pt.OriginalDstCluster("od", 0xb00, func(c *cluster.Cluster) {
				c.TypedExtensionProtocolOptions = map[string]*anypb.Any{upstreamHTTPOptions: pt.Any(&upstreamhttp.HttpProtocolOptions{
					UpstreamProtocolOptions: &upstreamhttp.HttpProtocolOptions_ExplicitHttpConfig_{ExplicitHttpConfig: &upstreamhttp.HttpProtocolOptions_ExplicitHttpConfig{
						ProtocolConfig: &upstreamhttp.HttpProtocolOptions_ExplicitHttpConfig_Http2ProtocolOptions{Http2ProtocolOptions: &core.Http2ProtocolOptions{InitialStreamWindowSize: wrapperspb.UInt32(1 << 20)}}}}})}
			})},
		{name: "auto protocol cluster", wantErr: "field auto_config not supported",
			c: pt.OriginalDstCluster("od", 0xb00, func(c *cluster.Cluster) {
				c.TypedExtensionProtocolOptions = map[string]*anypb.Any{upstreamHTTPOptions: pt.Any(&upstreamhttp.HttpProtocolOptions{
					UpstreamProtocolOptions: &upstreamhttp.HttpProtocolOptions_AutoConfig{AutoConfig: &upstreamhttp.HttpProtocolOptions_AutoHttpConfig{}}})}
			})},
		{name: "tcp protocol options", wantErr: `protocol options "envoy.extensions.upstreams.tcp.v3.TcpProtocolOptions" are not supported`,
			c: pt.OriginalDstCluster("od", 0xb00, func(c *cluster.Cluster) {
				c.TypedExtensionProtocolOptions = map[string]*anypb.Any{"envoy.extensions.upstreams.tcp.v3.TcpProtocolOptions": pt.Any(&core.Http1ProtocolOptions{})}
			})},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var err error
			if tc.l != nil {
				_, err = compileListener(tc.l)
			} else {
				_, err = compileCluster(`cluster "od"`, tc.c)
			}
			checkErr(t, err, tc.wantErr)
		})
	}
}

// TestHeadersAndUpgrades: Envoy's defaults (x-request-id added,
// "server: envoy") and the transparent settings (neither), a websocket
// upgrade allowed by upgrade_configs and refused (403) without it, and
// h2c downstream → h2c upstream with use_downstream_protocol_config.
func TestHeadersAndUpgrades(t *testing.T) {
	be := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if strings.EqualFold(r.Header.Get("Upgrade"), "websocket") {
			c, brw, err := http.NewResponseController(w).Hijack()
			if err != nil {
				return
			}
			defer c.Close()
			_, _ = io.WriteString(brw, "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n")
			_ = brw.Flush()
			line, _ := brw.ReadString('\n')
			_, _ = io.WriteString(c, "echo "+line)
			return
		}
		w.Header().Set("Server", "backend")
		fmt.Fprintf(w, "%s request-id=%q", r.Proto, r.Header.Get("X-Request-Id"))
	}))
	var protos http.Protocols
	protos.SetHTTP1(true)
	protos.SetUnencryptedHTTP2(true)
	be.Config.Protocols = &protos
	be.Start()
	defer be.Close()

	bc := staticTo(t, be)
	downstreamProtocol(bc)
	defaults := pt.Listener("defaults", "127.0.0.1", 0, pt.HCM("routes", allowAll()))
	transparent := pt.Listener("transparent", "127.0.0.1", 0, pt.HCM("routes", allowAll(), transparentHCM),
		func(l *listener.Listener) {
			l.AdditionalAddresses = []*listener.AdditionalAddress{{Address: pt.SocketAddress("::1", 0)}}
		})
	p, defAddr := startDirect(t, []*cluster.Cluster{bc}, []*route.RouteConfiguration{pt.RouteConfig("routes", "backend")},
		[]*listener.Listener{defaults, transparent})
	trAddrs := p.listeners["transparent"].rt.order
	var trV4, trV6 string
	for _, b := range trAddrs {
		a := p.listeners["transparent"].rt.socks[b].Addr().String()
		if b.ap.Addr().Is4() {
			trV4 = a
		} else {
			trV6 = a
		}
	}

	get := func(cl *http.Client, addr string) (*http.Response, string) {
		t.Helper()
		resp, err := cl.Get("http://" + addr + "/x")
		if err != nil {
			t.Fatalf("GET %s: %v", addr, err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp, string(b)
	}
	resp, body := get(http.DefaultClient, defAddr)
	if resp.Header.Get("Server") != "envoy" || !strings.HasPrefix(body, "HTTP/1.1 request-id=") || strings.HasSuffix(body, `""`) {
		t.Errorf("defaults: server %q, body %q; want server envoy and a generated x-request-id", resp.Header.Get("Server"), body)
	}
	for _, a := range []string{trV4, trV6} {
		resp, body = get(http.DefaultClient, a)
		if resp.Header.Get("Server") != "backend" || body != `HTTP/1.1 request-id=""` {
			t.Errorf("transparent on %s: server %q, body %q; want the backend's headers untouched", a, resp.Header.Get("Server"), body)
		}
	}
	var h2 http.Protocols
	h2.SetUnencryptedHTTP2(true)
	h2c := &http.Client{Transport: &http.Transport{Protocols: &h2}, Timeout: 5 * time.Second}
	if _, body = get(h2c, trV4); body != `HTTP/2.0 request-id=""` {
		t.Errorf("h2c downstream: backend saw %q, want HTTP/2.0 upstream", body)
	}

	upgrade := func(addr string) string {
		c, err := net.DialTimeout("tcp", addr, 2*time.Second)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		_ = c.SetDeadline(time.Now().Add(5 * time.Second))
		_, _ = io.WriteString(c, "GET /ws HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n")
		br := bufio.NewReader(c)
		resp, err := http.ReadResponse(br, nil)
		if err != nil {
			t.Fatalf("upgrade via %s: %v", addr, err)
		}
		if resp.StatusCode != http.StatusSwitchingProtocols {
			return resp.Status
		}
		_, _ = io.WriteString(c, "hello\n")
		line, _ := br.ReadString('\n')
		return resp.Status + " " + strings.TrimSpace(line)
	}
	if got := upgrade(trV4); got != "101 Switching Protocols echo hello" {
		t.Errorf("websocket upgrade with upgrade_configs = %q", got)
	}
	if got := upgrade(defAddr); got != "403 Forbidden" {
		t.Errorf("websocket upgrade without upgrade_configs = %q, want 403", got)
	}
}
