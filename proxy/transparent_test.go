package proxy

import (
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"

	cluster "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	listener "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	rbac "github.com/envoyproxy/go-control-plane/envoy/config/rbac/v3"
	route "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	hcm "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"

	pt "github.com/nodemesh/nodemesh/proxy/proxytest"
)

// TestTransparentOriginalDst runs the proxy with a transparent listener
// in a network namespace of its own, where 10.99.0.0/24 is local
// (AnyIP) and TPROXY steers new TCP flows toward it to the listener unless the
// packet carries the proxy's mark 0xb00 — the part of the datapath that
// bpf_sk_assign does in production. A client dials 10.99.0.7:8080; the
// proxy must see that as the original destination, enforce RBAC, and
// connect its ORIGINAL_DST upstream (marked) to 10.99.0.7:8080, where the
// backend answers. The test re-runs itself inside the namespace, so every
// socket of the scenario lives there.
func TestTransparentOriginalDst(t *testing.T) {
	if pt.InNetnsChild() {
		transparentChild(t)
		return
	}
	pt.RequireNetnsRoot(t, "creates a network namespace, a local route and a TPROXY rule", "ip", "iptables")
	// Only SYNs need steering: later packets find the accepted socket in
	// the established table. (Steering every packet would also catch the
	// listener's SYN-ACK, which loops back through lo here, unlike on a
	// node where it leaves through a device.)
	pt.RunInNetns(t, "^TestTransparentOriginalDst$",
		[]string{"ip", "link", "set", "lo", "up"},
		[]string{"ip", "route", "add", "local", "10.99.0.0/24", "dev", "lo"},
		[]string{"iptables", "-t", "mangle", "-A", "PREROUTING", "-p", "tcp", "--syn", "-d", "10.99.0.0/24",
			"-m", "mark", "!", "--mark", "0xb00/0xf00", "-j", "TPROXY", "--on-ip", "127.0.0.1", "--on-port", "15006", "--tproxy-mark", "0x200/0xf00"})
}

func transparentChild(t *testing.T) {
	var hits int
	be := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		hits++
		local := r.Context().Value(http.LocalAddrContextKey).(net.Addr).String()
		fmt.Fprintf(w, "%s served at %s", r.URL.Path, local)
	}), ReadHeaderTimeout: 5 * time.Second}
	bln, err := net.Listen("tcp", "0.0.0.0:8080")
	if err != nil {
		t.Fatal(err)
	}
	go func() { _ = be.Serve(bln) }()
	defer be.Close()

	access := &syncBuffer{}
	p := New(Config{NodeID: "n", AccessLog: access}, slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug})))
	defer p.Close()
	h := pt.HCM("routes", []*hcm.HttpFilter{pt.RBACFilter(rbac.RBAC_ALLOW, map[string]*rbac.Policy{
		"userdata": pt.MethodPathPolicy("GET", "/userdata/[0-9]+")})}, pt.WithAccessLog)
	if err := p.applyClusters("1", []*cluster.Cluster{pt.OriginalDstCluster("original-dst", 0xb00)}); err != nil {
		t.Fatal(err)
	}
	if err := p.applyRoutes("1", []*route.RouteConfiguration{pt.RouteConfig("routes", "original-dst")}); err != nil {
		t.Fatal(err)
	}
	if err := p.applyListeners("1", []*listener.Listener{pt.Listener("inbound", "0.0.0.0", 15006, h, pt.Transparent)}); err != nil {
		t.Fatalf("transparent listener: %v", err)
	}

	cl := &http.Client{Timeout: 5 * time.Second}
	get := func(url string) (int, string) {
		t.Helper()
		resp, err := cl.Get(url)
		if err != nil {
			t.Fatalf("GET %s: %v", url, err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b)
	}
	if code, body := get("http://10.99.0.7:8080/userdata/42"); code != 200 || body != "/userdata/42 served at 10.99.0.7:8080" {
		t.Fatalf("GET 10.99.0.7:8080/userdata/42 = %d %q, want 200 from the backend at the original destination", code, body)
	}
	if code, body := get("http://10.99.0.7:8080/userdata/abc"); code != 403 || body != rbacDeniedBody {
		t.Fatalf("GET /userdata/abc = %d %q, want the proxy's 403", code, body)
	}
	if hits != 1 {
		t.Fatalf("backend hits = %d, want 1 (the denied request must not reach it)", hits)
	}
	var found bool
	for _, l := range access.lines() {
		if l["path"] == "/userdata/42" {
			found = l["original_dst"] == "10.99.0.7:8080" && l["upstream"] == "10.99.0.7:8080"
			if !found {
				b, _ := json.Marshal(l)
				t.Errorf("access log: %s, want original_dst and upstream 10.99.0.7:8080", b)
			}
		}
	}
	if !found {
		t.Fatal("no access log line for /userdata/42")
	}
}

const noNetAdminChildEnv = "NODEMESH_PROXY_TEST_NO_NET_ADMIN"

// TestTransparentNeedsCapNetAdmin: without CAP_NET_ADMIN a transparent
// listener is refused (a NACK) with an error that says what is missing.
// As root the test re-runs itself with the capability dropped (setpriv).
func TestTransparentNeedsCapNetAdmin(t *testing.T) {
	if os.Geteuid() == 0 && os.Getenv(noNetAdminChildEnv) == "" {
		setpriv, err := exec.LookPath("setpriv")
		if err != nil {
			t.Fatalf("setpriv (util-linux, installed by scripts/deps.sh) is missing: %v", err)
		}
		cmd := exec.Command(setpriv, "--inh-caps=-net_admin,-net_raw", "--bounding-set=-net_admin,-net_raw", os.Args[0],
			"-test.run", "^TestTransparentNeedsCapNetAdmin$", "-test.count", "1", "-test.v")
		cmd.Env = append(os.Environ(), noNetAdminChildEnv+"=1")
		out, err := cmd.CombinedOutput()
		t.Logf("without CAP_NET_ADMIN:\n%s", out)
		if err != nil || !strings.Contains(string(out), "--- PASS: TestTransparentNeedsCapNetAdmin") {
			t.Fatalf("the check without CAP_NET_ADMIN failed: %v", err)
		}
		return
	}
	p := New(Config{NodeID: "n"}, nil)
	defer p.Close()
	h := pt.HCM("routes", nil)
	err := p.applyListeners("1", []*listener.Listener{pt.Listener("inbound", "127.0.0.1", 0, h, pt.Transparent)})
	checkErr(t, err, `listener "inbound": listen on 127.0.0.1:0: set IP_TRANSPARENT: operation not permitted (needs CAP_NET_ADMIN or CAP_NET_RAW)`)
	if _, ok := p.ListenerAddr("inbound"); ok {
		t.Fatal("the refused transparent listener is bound")
	}
}
