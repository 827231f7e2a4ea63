package proxy

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/netip"
	"os"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	admin "github.com/envoyproxy/go-control-plane/envoy/admin/v3"
	cluster "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	accesslogdata "github.com/envoyproxy/go-control-plane/envoy/data/accesslog/v3"
	"github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	"google.golang.org/protobuf/encoding/protojson"

	pt "github.com/nodemesh/nodemesh/proxy/proxytest"
)

// TestGRPCAccessLog runs the proxy against an ADS server and an access
// log service on loopback: allowed and denied requests reach the service
// as Envoy's http_grpc logger would send them; when the service is gone
// or stuck, requests are served as before and the entries beyond the
// queue are dropped and counted; when it is back, entries flow again; a
// logger naming a cluster the proxy does not have is NACKed.
func TestGRPCAccessLog(t *testing.T) {
	dir, err := os.MkdirTemp("", "nmals")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	cp := pt.Start(t, dir)
	als := pt.StartAccessLog(t, dir, "als.sock")
	be := backend(t)
	const queue = 32
	p := New(Config{NodeID: "node-1", Cluster: "nodemesh", XDSAddress: cp.Address(), AdminAddress: "127.0.0.1:0", AccessLog: io.Discard,
		GRPCClusters: map[string]string{DefaultAccessLogCluster: als.Address()}, AccessLogQueue: queue,
		BackoffMin: 20 * time.Millisecond, BackoffMax: 200 * time.Millisecond, DrainTimeout: time.Second},
		slog.New(slog.NewTextHandler(testWriter{t}, &slog.HandlerOptions{Level: slog.LevelInfo})))
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- p.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("proxy Run: %v", err)
		}
	})
	withALS := pt.WithGRPCAccessLog(DefaultAccessLogCluster, "nodemesh-inbound", pt.FlushInterval(20*time.Millisecond))
	cp.Set("node-1", "v1", e2eResources(t, be, userdataPolicies(), withALS))
	cp.WaitRequest(5*time.Second, pt.IsACK(resource.ListenerType, "v1"))
	waitFor(t, 5*time.Second, "admin", func() bool { return p.AdminAddr() != nil })
	var addr string
	waitFor(t, 5*time.Second, "listener", func() bool {
		ap, ok := p.ListenerAddr("http")
		addr = ap.String()
		return ok
	})
	stat := func(name string) float64 {
		t.Helper()
		resp, err := http.Get("http://" + p.AdminAddr().String() + "/stats")
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		m := regexp.MustCompile(`(?m)^` + regexp.QuoteMeta(name) + ` (\S+)$`).FindSubmatch(b)
		if m == nil {
			return 0
		}
		v, _ := strconv.ParseFloat(string(m[1]), 64)
		return v
	}
	labels := `{cluster="nodemesh-als",log_name="nodemesh-inbound"`
	written := func() float64 {
		return stat("nodemesh_proxy_grpc_access_log_entries_total" + labels + `,result="written"}`)
	}
	dropped := func() float64 {
		return stat("nodemesh_proxy_grpc_access_log_entries_total" + labels + `,result="dropped"}`)
	}
	logged := 0 // requests made through the listener

	t.Run("entries as Envoy fills them", func(t *testing.T) {
		c := dialH1(t, addr)
		if code, _ := c.do("GET", "/userdata/42?x=1", nil); code != 200 {
			t.Fatalf("allowed request: %d", code)
		}
		if code, _ := c.do("GET", "/userdata/abc", nil); code != 403 {
			t.Fatalf("denied request: %d", code)
		}
		logged += 2
		client := netip.MustParseAddrPort(c.c.LocalAddr().String())
		beAddr := netip.MustParseAddrPort(be.Listener.Addr().String())

		ok := als.WaitEntry(5*time.Second, pt.Path("/userdata/42?x=1"))
		if ok.Node != "node-1" || ok.LogName != "nodemesh-inbound" {
			t.Errorf("identifier: node %q log %q", ok.Node, ok.LogName)
		}
		e := ok.Entry
		cm := e.GetCommonProperties()
		checkAddr(t, "downstream_remote_address", cm.GetDownstreamRemoteAddress().GetSocketAddress(), client)
		checkAddr(t, "downstream_direct_remote_address", cm.GetDownstreamDirectRemoteAddress().GetSocketAddress(), client)
		checkAddr(t, "downstream_local_address", cm.GetDownstreamLocalAddress().GetSocketAddress(), netip.MustParseAddrPort(addr))
		checkAddr(t, "upstream_remote_address", cm.GetUpstreamRemoteAddress().GetSocketAddress(), beAddr)
		if ul := cm.GetUpstreamLocalAddress().GetSocketAddress(); ul.GetAddress() != "127.0.0.1" || ul.GetPortValue() == 0 {
			t.Errorf("upstream_local_address = %v", ul)
		}
		rbacMD := cm.GetMetadata().GetFilterMetadata()["envoy.filters.http.rbac"].GetFields()
		if cm.GetUpstreamCluster() != "backend" || rbacMD["enforced_engine_result"].GetStringValue() != "allowed" ||
			rbacMD["enforced_effective_policy_id"].GetStringValue() != "userdata" || cm.GetStartTime() == nil || cm.GetDuration() == nil ||
			cm.GetAccessLogType() != accesslogdata.AccessLogType_DownstreamEnd {
			t.Errorf("allowed entry common properties: %v", cm)
		}
		if r := e.GetRequest(); r.GetRequestMethod().String() != "GET" || r.GetAuthority() != "svc.test" || r.GetScheme() != "http" || r.GetRequestHeadersBytes() == 0 {
			t.Errorf("allowed entry request: %v", r)
		}
		if r := e.GetResponse(); r.GetResponseCode().GetValue() != 200 || r.GetResponseCodeDetails() != "via_upstream" || r.GetResponseBodyBytes() != uint64(len("user 42")) {
			t.Errorf("allowed entry response: %v", r)
		}
		if e.GetProtocolVersion() != accesslogdata.HTTPAccessLogEntry_HTTP11 {
			t.Errorf("protocol %v", e.GetProtocolVersion())
		}

		d := als.WaitEntry(5*time.Second, pt.Path("/userdata/abc")).Entry
		dm := d.GetCommonProperties().GetMetadata().GetFilterMetadata()["envoy.filters.http.rbac"].GetFields()
		if d.GetResponse().GetResponseCode().GetValue() != 403 || d.GetResponse().GetResponseCodeDetails() != "rbac_access_denied_matched_policy[none]" ||
			dm["enforced_engine_result"].GetStringValue() != "denied" || dm["enforced_effective_policy_id"] != nil ||
			d.GetCommonProperties().GetUpstreamRemoteAddress() != nil || d.GetCommonProperties().GetUpstreamCluster() != "" {
			t.Errorf("denied entry: %v", d)
		}
	})

	t.Run("stats and config_dump", func(t *testing.T) {
		waitFor(t, 5*time.Second, "written entries", func() bool { return written() == float64(logged) })
		if v := stat("nodemesh_proxy_grpc_access_log_stream_up" + labels + "}"); v != 1 {
			t.Errorf("stream_up = %v", v)
		}
		resp, err := http.Get("http://" + p.AdminAddr().String() + "/config_dump")
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		var cd admin.ConfigDump
		var clusters admin.ClustersConfigDump
		var static cluster.Cluster
		if err := protojson.Unmarshal(b, &cd); err != nil || cd.GetConfigs()[0].UnmarshalTo(&clusters) != nil ||
			len(clusters.GetStaticClusters()) != 1 || clusters.GetStaticClusters()[0].GetCluster().UnmarshalTo(&static) != nil {
			t.Fatalf("/config_dump: %v\n%s", err, b)
		}
		if static.GetName() != DefaultAccessLogCluster || static.GetType() != cluster.Cluster_STATIC ||
			static.GetLoadAssignment().GetEndpoints()[0].GetLbEndpoints()[0].GetEndpoint().GetAddress().GetPipe().GetPath() != als.Socket {
			t.Errorf("static cluster in /config_dump: %v", &static)
		}
		if !strings.Contains(string(b), "envoy.extensions.access_loggers.grpc.v3.HttpGrpcAccessLogConfig") {
			t.Error("/config_dump lacks the listener's access log")
		}
	})

	t.Run("agent gone: requests served, entries beyond the queue dropped", func(t *testing.T) {
		als.Stop()
		waitFor(t, 5*time.Second, "stream down", func() bool { return stat("nodemesh_proxy_grpc_access_log_stream_up"+labels+"}") == 0 })
		before := len(als.Entries())
		c := dialH1(t, addr)
		const n = 3 * queue
		start := time.Now()
		for i := range n {
			if code, _ := c.do("GET", fmt.Sprintf("/userdata/%d", 1000+i), nil); code != 200 {
				t.Fatalf("request %d without the agent: %d", i, code)
			}
		}
		logged += n
		t.Logf("%d requests without the access log service in %v", n, time.Since(start))
		if got := dropped(); got < n-queue-1 {
			t.Errorf("dropped = %v, want at least %d of %d (queue %d)", got, n-queue-1, n, queue)
		}
		als.Restart()
		// The queued entries go first; then new ones.
		waitFor(t, 5*time.Second, "stream up", func() bool { return stat("nodemesh_proxy_grpc_access_log_stream_up"+labels+"}") == 1 })
		if code, _ := c.do("GET", "/userdata/7", nil); code != 200 {
			t.Fatal(code)
		}
		logged++
		als.WaitEntry(10*time.Second, pt.Path("/userdata/7"))
		// Every entry was sent once or dropped, and what was sent arrived.
		waitFor(t, 5*time.Second, "all accounted for", func() bool { return written()+dropped() == float64(logged) })
		if got := len(als.Entries()); float64(got) != written() || got-before < queue/2 {
			t.Errorf("received %d entries (%d after the restart), written %v, dropped %v, logged %d", got, got-before, written(), dropped(), logged)
		}
	})

	t.Run("agent stuck: requests not held up", func(t *testing.T) {
		als.Hold()
		c := dialH1(t, addr)
		droppedBefore := dropped()
		const n = 1500 // well beyond the stream's flow-control window and the queue
		start := time.Now()
		for i := range n {
			if code, _ := c.do("GET", fmt.Sprintf("/userdata/%d", 5000+i), nil); code != 200 {
				t.Fatalf("request %d with a stuck agent: %d", i, code)
			}
		}
		logged += n
		took := time.Since(start)
		t.Logf("%d requests with a stuck access log service in %v; %v dropped", n, took, dropped()-droppedBefore)
		if dropped() == droppedBefore {
			t.Error("nothing dropped: the stuck service absorbed everything?")
		}
		als.Release()
		// The held and queued entries go first; then new ones.
		waitFor(t, 10*time.Second, "the queue drained", func() bool { return written()+dropped() == float64(logged) })
		if code, _ := c.do("GET", "/userdata/8", nil); code != 200 {
			t.Fatal(code)
		}
		logged++
		als.WaitEntry(10*time.Second, pt.Path("/userdata/8"))
		waitFor(t, 5*time.Second, "all accounted for", func() bool { return written()+dropped() == float64(logged) })
		if got := len(als.Entries()); float64(got) != written() {
			t.Errorf("received %d entries, written %v", got, written())
		}
	})

	t.Run("unknown cluster is NACKed", func(t *testing.T) {
		cp.Set("node-1", "v2", e2eResources(t, be, userdataPolicies(), withALS, pt.WithGRPCAccessLog("nosuch", "x")))
		nack := cp.WaitRequest(5*time.Second, pt.IsNACK(resource.ListenerType))
		want := `listener "http".filter_chains[0].filters[0].typed_config.access_log[2].typed_config.common_config.grpc_service.envoy_grpc.cluster_name: "nosuch" is not a static gRPC cluster of the proxy (nodemesh-als;`
		if msg := nack.GetErrorDetail().GetMessage(); !strings.Contains(msg, want) {
			t.Errorf("NACK %q\nwant %q", msg, want)
		}
		// v1 still serves and logs.
		c := dialH1(t, addr)
		if code, _ := c.do("GET", "/userdata/9", nil); code != 200 {
			t.Fatal(code)
		}
		logged++
		als.WaitEntry(5*time.Second, pt.Path("/userdata/9"))
	})
}

func checkAddr(t *testing.T, field string, sa interface {
	GetAddress() string
	GetPortValue() uint32
}, want netip.AddrPort) {
	t.Helper()
	if sa.GetAddress() != want.Addr().String() || sa.GetPortValue() != uint32(want.Port()) {
		t.Errorf("%s = %s:%d, want %s", field, sa.GetAddress(), sa.GetPortValue(), want)
	}
}
