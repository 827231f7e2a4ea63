package e2e_test

import (
	"context"
	"fmt"
	"io"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/nodemesh/nodemesh/tests/e2e"
)

// TestProxyTakesAgentConfig starts nodemesh-proxy on a node whose agent
// serves an L7 rule, and checks the wiring end to end: the proxy connects to
// the agent's xDS socket, applies and ACKs the configuration (transparent
// listener bound), the agent reports the ACK, and the proxy reports ready.
// Redirecting traffic to it is the next step of issue 4.
func TestProxyTakesAgentConfig(t *testing.T) {
	h := seedCluster(t)
	ctx := context.Background()
	l7 := strings.Replace(e2e.SeedPolicies, `toPorts: [{ports: [{port: "80", protocol: TCP}, {port: "9000", protocol: TCP}]}]`,
		`toPorts: [{ports: [{port: "80", protocol: TCP}], rules: {http: [{method: GET, path: "/userdata/[0-9]+"}]}}]`, 1)
	if _, err := h.SetPolicies(ctx, l7); err != nil {
		t.Fatal(err)
	}
	proxy, err := h.StartProxy(ctx, "node-2")
	if err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(20 * time.Second)
	for {
		st, err := h.Status(ctx, "node-2")
		if err == nil && st.ProxyAcked && st.ProxyStreams > 0 && st.ProxyConfig != "" {
			t.Logf("node-2's proxy ACKed configuration %s over %d stream(s)", st.ProxyConfig, st.ProxyStreams)
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("proxy never ACKed: status %+v, %v\nproxy stderr:\n%s", st, err, proxy.Stderr())
		}
		select {
		case <-proxy.Done():
			t.Fatalf("proxy exited: %v\n%s", proxy.Wait(), proxy.Stderr())
		case <-time.After(50 * time.Millisecond):
		}
	}
	node := h.C.Node("node-2")
	if out, err := node.Run(ctx, h.Podtool, "http", "--url", "http://127.0.0.1:15000/ready", "--expect-status", "200"); err != nil {
		t.Fatalf("proxy not ready: %v %s\n%s", err, out, proxy.Stderr())
	}
	// The whole config dump, read over a socket opened in the node's netns.
	var conn net.Conn
	if err := node.InNetns(func() (err error) {
		conn, err = net.DialTimeout("tcp", "127.0.0.1:15000", 2*time.Second)
		return err
	}); err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	conn.SetDeadline(time.Now().Add(5 * time.Second))
	fmt.Fprint(conn, "GET /config_dump HTTP/1.1\r\nHost: admin\r\nConnection: close\r\n\r\n")
	out, err := io.ReadAll(conn)
	if err != nil {
		t.Fatalf("config_dump: %v", err)
	}
	for _, want := range []string{"nodemesh-inbound", "/userdata/[0-9]+"} {
		if !strings.Contains(string(out), want) {
			t.Errorf("proxy config_dump lacks %q:\n%.2000s", want, out)
		}
	}
}
