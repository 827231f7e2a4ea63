package caserver_test

import (
	"context"
	"crypto/x509"
	"errors"
	"log/slog"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/nodemesh/nodemesh/api"
	"github.com/nodemesh/nodemesh/certs"
	"github.com/nodemesh/nodemesh/certs/caserver"
	"github.com/nodemesh/nodemesh/certs/certstest"
	"github.com/nodemesh/nodemesh/certs/worldauth"
)

var td = spiffeid.RequireTrustDomainFromString("cluster.local")

func pod(ns, name, node, sa string) api.Pod {
	return api.Pod{Metadata: api.ObjectMeta{Namespace: ns, Name: name}, Spec: api.PodSpec{NodeName: node, ServiceAccountName: sa}}
}

func testWorld() *api.World {
	return &api.World{
		Nodes: []api.Node{{Metadata: api.ObjectMeta{Name: "node-a"}}, {Metadata: api.ObjectMeta{Name: "node-b"}}},
		Pods: []api.Pod{
			pod("prod", "web-1", "node-a", "web"),
			pod("prod", "api-1", "node-a", "api"),
			pod("prod", "web-b", "node-b", "web"),
		},
	}
}

// shortDir returns a temporary directory with a short path: unix socket
// paths are limited to 107 bytes.
func shortDir(t *testing.T) string {
	t.Helper()
	d, err := os.MkdirTemp("", "ca")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(d) })
	return d
}

type testServer struct {
	ca   *certs.CA
	srv  *caserver.Server
	logs *syncBuffer
	stop func() // stops the server and waits for Run to return
}

type syncBuffer struct {
	mu sync.Mutex
	b  strings.Builder
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// startServer runs a CA server with a fresh CA on dir, knowing w.
func startServer(t *testing.T, dir string, w *api.World) *testServer {
	t.Helper()
	authz := worldauth.New(nil)
	ca := certstest.NewCA(t, certs.CAConfig{TrustDomain: td.Name()}, authz)
	logs := &syncBuffer{}
	srv, err := caserver.New(caserver.Config{Dir: dir, CA: ca, Authorizer: authz, Log: slog.New(slog.NewTextHandler(logs, nil))})
	if err != nil {
		t.Fatal(err)
	}
	if err := srv.SetWorld(w); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- srv.Run(ctx) }()
	var once sync.Once
	ts := &testServer{ca: ca, srv: srv, logs: logs, stop: func() {
		once.Do(func() {
			cancel()
			if err := <-done; err != nil {
				t.Errorf("Run: %v", err)
			}
		})
	}}
	t.Cleanup(ts.stop)
	return ts
}

func newClient(t *testing.T, dir, node string) *caserver.Client {
	t.Helper()
	c := caserver.NewClient(caserver.NodeSocket(dir, node), caserver.WithBackoff(20*time.Millisecond, 200*time.Millisecond))
	t.Cleanup(func() { c.Close() })
	return c
}

func TestManagerGetsSVIDsThroughSocket(t *testing.T) {
	dir := shortDir(t)
	ts := startServer(t, dir, testWorld())
	client := newClient(t, dir, "node-a")
	m, err := certs.NewManager(certs.ManagerConfig{NodeName: "node-a", TrustDomain: td.Name(), RetryMin: 20 * time.Millisecond, RetryMax: 200 * time.Millisecond}, client)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	runErr := make(chan error, 1)
	go func() { runErr <- m.Run(ctx) }()
	workloads := []certs.Workload{
		{Namespace: "prod", Pod: "web-1", ServiceAccount: "web"},
		{Namespace: "prod", Pod: "api-1", ServiceAccount: "api"},
	}
	if err := m.SetWorkloads(workloads); err != nil {
		t.Fatal(err)
	}
	snap := certstest.WaitForSnapshot(t, m, "two SVIDs", func(s *certs.Snapshot) bool { return s.Len() == 2 })
	if !snap.Bundle.SameRoots(ts.ca.Bundle()) {
		t.Errorf("manager's bundle differs from the CA's")
	}
	for _, w := range workloads {
		id, _ := certs.WorkloadID(td, w)
		svid, ok := snap.SVID(id)
		if !ok {
			t.Fatalf("no SVID for %s", id)
		}
		got, err := certs.VerifySVID(svid.Chain(), ts.ca.Bundle(), time.Now())
		if err != nil || got != id {
			t.Errorf("SVID for %s: verified as %s, %v", id, got, err)
		}
	}
	cancel()
	if err := <-runErr; err != nil {
		t.Errorf("manager Run: %v", err)
	}
}

func TestSignRefusals(t *testing.T) {
	dir := shortDir(t)
	ts := startServer(t, dir, testWorld())
	client := newClient(t, dir, "node-a")
	sign := func(node string, w certs.Workload, tweak ...func(*x509.CertificateRequest)) error {
		id, err := certs.WorkloadID(td, w)
		if err != nil {
			t.Fatal(err)
		}
		_, csr := certstest.NewCSR(t, id.URL(), tweak...)
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		_, err = client.Sign(ctx, certs.SignRequest{Node: node, Workload: w, CSR: csr})
		return err
	}
	denied := func(t *testing.T, err error, want certs.DenyReason, text ...string) {
		t.Helper()
		var d *certs.DeniedError
		if !errors.As(err, &d) || d.Reason != want {
			t.Fatalf("error %v, want a denial %s", err, want)
		}
		for _, s := range text {
			if !strings.Contains(err.Error(), s) {
				t.Errorf("error %q lacks %q", err, s)
			}
		}
	}
	t.Run("own pod", func(t *testing.T) {
		if err := sign("node-a", certs.Workload{Namespace: "prod", Pod: "web-1", ServiceAccount: "web"}); err != nil {
			t.Fatal(err)
		}
	})
	t.Run("pod on other node, body claims that node", func(t *testing.T) {
		err := sign("node-b", certs.Workload{Namespace: "prod", Pod: "web-b", ServiceAccount: "web"})
		denied(t, err, certs.DenyPodOnOtherNode, "runs on node node-b, not on node node-a", "PermissionDenied")
	})
	t.Run("pod on other node, body names no node", func(t *testing.T) {
		err := sign("", certs.Workload{Namespace: "prod", Pod: "web-b", ServiceAccount: "web"})
		denied(t, err, certs.DenyPodOnOtherNode)
	})
	t.Run("unknown pod", func(t *testing.T) {
		denied(t, sign("node-a", certs.Workload{Namespace: "prod", Pod: "ghost", ServiceAccount: "web"}), certs.DenyUnknownPod, "no pod prod/ghost")
	})
	t.Run("wrong service account", func(t *testing.T) {
		denied(t, sign("node-a", certs.Workload{Namespace: "prod", Pod: "web-1", ServiceAccount: "api"}), certs.DenyWrongServiceAccount)
	})
	t.Run("CSR asks for more", func(t *testing.T) {
		err := sign("node-a", certs.Workload{Namespace: "prod", Pod: "web-1", ServiceAccount: "web"}, func(r *x509.CertificateRequest) {
			r.DNSNames = []string{"evil.example"}
		})
		if !errors.Is(err, certs.ErrInvalidCSR) || !strings.Contains(err.Error(), "evil.example") {
			t.Fatalf("error %v, want invalid CSR naming evil.example", err)
		}
	})
	t.Run("CSR for another ID", func(t *testing.T) {
		err := sign("node-a", certs.Workload{Namespace: "prod", Pod: "web-1", ServiceAccount: "web"}, func(r *x509.CertificateRequest) {
			r.URIs = []*url.URL{{Scheme: "spiffe", Host: td.Name(), Path: "/ns/prod/sa/admin"}}
		})
		if !errors.Is(err, certs.ErrInvalidCSR) {
			t.Fatalf("error %v, want invalid CSR", err)
		}
	})
	t.Run("garbage CSR", func(t *testing.T) {
		_, err := client.Sign(context.Background(), certs.SignRequest{Node: "node-a",
			Workload: certs.Workload{Namespace: "prod", Pod: "web-1", ServiceAccount: "web"}, CSR: &x509.CertificateRequest{Raw: []byte("junk")}})
		if !errors.Is(err, certs.ErrInvalidCSR) {
			t.Fatalf("error %v, want invalid CSR", err)
		}
	})
	t.Run("no service account", func(t *testing.T) {
		_, csr := certstest.NewCSR(t, td.ID().URL())
		_, err := client.Sign(context.Background(), certs.SignRequest{Workload: certs.Workload{Namespace: "prod", Pod: "web-1"}, CSR: csr})
		if err == nil || !strings.Contains(err.Error(), "InvalidArgument") {
			t.Fatalf("error %v, want InvalidArgument", err)
		}
	})
	t.Run("logs", func(t *testing.T) {
		logs := ts.logs.String()
		for _, want := range []string{
			`msg="svid issued" node=node-a pod=prod/web-1 service_account=web id=spiffe://cluster.local/ns/prod/sa/web serial=`,
			`msg="request claims another node; the socket's node counts" node=node-a pod=prod/web-b service_account=web claimed_node=node-b`,
			`msg="svid refused" node=node-a pod=prod/web-b service_account=web kind=denied reason=pod-on-other-node`,
			`kind=invalid-csr`,
		} {
			if !strings.Contains(logs, want) {
				t.Errorf("logs lack %q:\n%s", want, logs)
			}
		}
		if strings.Contains(logs, "PRIVATE KEY") || strings.Contains(logs, "BEGIN") {
			t.Errorf("logs show PEM:\n%s", logs)
		}
	})
	t.Run("no such node socket", func(t *testing.T) {
		c := newClient(t, dir, "node-z")
		_, csr := certstest.NewCSR(t, td.ID().URL())
		_, err := c.Sign(context.Background(), certs.SignRequest{Workload: certs.Workload{Namespace: "prod", Pod: "web-1", ServiceAccount: "web"}, CSR: csr})
		if err == nil || !strings.Contains(err.Error(), "Unavailable") {
			t.Fatalf("error %v, want Unavailable", err)
		}
	})
}

// bundles collects what a WatchBundle passes on.
func watchBundles(t *testing.T, c *caserver.Client) (<-chan *certs.Bundle, func()) {
	t.Helper()
	ch := make(chan *certs.Bundle, 16)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- c.WatchBundle(ctx, func(b *certs.Bundle) { ch <- b }) }()
	var once sync.Once
	stop := func() { once.Do(func() { stopWatch(t, cancel, done) }) }
	t.Cleanup(stop)
	return ch, stop
}

func stopWatch(t *testing.T, cancel func(), done <-chan error) {
	{
		cancel()
		select {
		case err := <-done:
			if err != nil {
				t.Errorf("WatchBundle returned %v", err)
			}
		case <-time.After(10 * time.Second):
			t.Error("WatchBundle did not return when its context ended")
		}
	}
}

func nextBundle(t *testing.T, ch <-chan *certs.Bundle, what string) *certs.Bundle {
	t.Helper()
	select {
	case b := <-ch:
		return b
	case <-time.After(15 * time.Second):
		t.Fatalf("timed out waiting for %s", what)
		return nil
	}
}

func TestBundleWatchRotationAndRestart(t *testing.T) {
	dir := shortDir(t)
	ts := startServer(t, dir, testWorld())
	client := newClient(t, dir, "node-a")
	ch, stop := watchBundles(t, client)

	b1 := nextBundle(t, ch, "the first bundle")
	if !b1.SameRoots(ts.ca.Bundle()) || len(b1.Roots(td)) != 1 || b1.Version() != 1 {
		t.Fatalf("first bundle: version %d, %d roots", b1.Version(), len(b1.Roots(td)))
	}

	admin, err := caserver.DialAdmin(caserver.AdminSocket(dir))
	if err != nil {
		t.Fatal(err)
	}
	defer admin.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	rot, err := admin.RotateRoot(ctx, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	if rot.Added.State != "pending" || len(rot.Roots.Roots) != 2 || rot.Roots.Roots[0].State != "active" {
		t.Fatalf("rotation: %+v", rot)
	}
	if d := time.Until(rot.Added.ActivateAt); d < 59*time.Minute || d > time.Hour {
		t.Errorf("new root activates in %s, want 1h", d)
	}
	if _, err := admin.RotateRoot(ctx, -time.Second); err == nil {
		t.Error("negative activation delay accepted")
	}
	b2 := nextBundle(t, ch, "the bundle with two roots")
	if len(b2.Roots(td)) != 2 || b2.Version() != 2 || !b2.SameRoots(ts.ca.Bundle()) {
		t.Fatalf("after rotation: version %d, %d roots", b2.Version(), len(b2.Roots(td)))
	}

	// The CA restarts with a new CA, so a new root: the watch reconnects
	// and passes on the new bundle, with a version still growing.
	ts.stop()
	for _, p := range []string{caserver.NodeSocket(dir, "node-a"), caserver.AdminSocket(dir)} {
		if _, err := os.Stat(p); !os.IsNotExist(err) {
			t.Errorf("%s left behind after the server stopped: %v", p, err)
		}
	}
	time.Sleep(100 * time.Millisecond) // let the client notice and retry
	ts2 := startServer(t, dir, testWorld())
	b3 := nextBundle(t, ch, "the restarted CA's bundle")
	if !b3.SameRoots(ts2.ca.Bundle()) || b3.Version() != 3 {
		t.Fatalf("after restart: version %d, same roots as the new CA: %v", b3.Version(), b3.SameRoots(ts2.ca.Bundle()))
	}
	svid := certstest.IssueSVID(t, client, "node-a", td, certs.Workload{Namespace: "prod", Pod: "web-1", ServiceAccount: "web"})
	if _, err := certs.VerifySVID(svid.Chain(), b3, time.Now()); err != nil {
		t.Errorf("SVID of the restarted CA: %v", err)
	}
	stop()
	select {
	case b := <-ch:
		t.Errorf("unexpected bundle version %d", b.Version())
	default:
	}
}

func TestNodeSocketsFollowWorld(t *testing.T) {
	dir := shortDir(t)
	worldDir := t.TempDir()
	worldFile := filepath.Join(worldDir, "world.yaml")
	write := func(nodes ...string) {
		var b strings.Builder
		b.WriteString("apiVersion: v1\nkind: List\nitems:\n")
		for _, n := range nodes {
			b.WriteString("- {apiVersion: v1, kind: Node, metadata: {name: " + n + "}}\n")
			b.WriteString("- {apiVersion: v1, kind: Pod, metadata: {name: web-" + n + ", namespace: prod}, spec: {nodeName: " + n + ", serviceAccountName: web}}\n")
		}
		if err := os.WriteFile(worldFile+".tmp", []byte(b.String()), 0o644); err != nil {
			t.Fatal(err)
		}
		if err := os.Rename(worldFile+".tmp", worldFile); err != nil {
			t.Fatal(err)
		}
	}
	write("node-a", "node-b")

	ts := startServer(t, dir, nil)
	if got := ts.srv.Nodes(); len(got) != 0 {
		t.Fatalf("nodes of an empty world: %v", got)
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	followErr := make(chan error, 1)
	go func() { followErr <- ts.srv.FollowWorld(ctx, []string{worldDir}, 50*time.Millisecond) }()
	defer func() {
		cancel()
		if err := <-followErr; err != nil {
			t.Errorf("FollowWorld: %v", err)
		}
	}()

	waitSockets := func(want ...string) {
		t.Helper()
		deadline := time.Now().Add(10 * time.Second)
		for {
			got, _ := filepath.Glob(filepath.Join(dir, "nodes", "*.sock"))
			var names []string
			for _, g := range got {
				names = append(names, strings.TrimSuffix(filepath.Base(g), ".sock"))
			}
			if strings.Join(names, ",") == strings.Join(want, ",") && strings.Join(ts.srv.Nodes(), ",") == strings.Join(want, ",") {
				return
			}
			if time.Now().After(deadline) {
				t.Fatalf("node sockets %v (server: %v), want %v", names, ts.srv.Nodes(), want)
			}
			time.Sleep(20 * time.Millisecond)
		}
	}
	waitSockets("node-a", "node-b")
	for _, p := range []string{caserver.NodeSocket(dir, "node-a"), caserver.AdminSocket(dir)} {
		st, err := os.Stat(p)
		if err != nil || st.Mode().Perm() != 0o600 || st.Mode()&os.ModeSocket == 0 {
			t.Errorf("%s: %v, %v; want a socket, mode 0600", p, st.Mode(), err)
		}
	}
	for _, d := range []string{dir, filepath.Join(dir, "nodes")} {
		if st, err := os.Stat(d); err != nil || st.Mode().Perm() != 0o700 {
			t.Errorf("%s: mode %v, %v; want 0700", d, st.Mode().Perm(), err)
		}
	}

	// A watch on node-b, to be cut when node-b leaves the world.
	bClient := newClient(t, dir, "node-b")
	bch, _ := watchBundles(t, bClient)
	nextBundle(t, bch, "node-b's bundle")

	write("node-a", "node-c")
	waitSockets("node-a", "node-c")
	// node-c's pod, new in the world, is authorized through node-c's new socket.
	cClient := newClient(t, dir, "node-c")
	certstest.IssueSVID(t, cClient, "node-c", td, certs.Workload{Namespace: "prod", Pod: "web-node-c", ServiceAccount: "web"})
	// node-b's socket is gone, with its connections.
	_, csr := certstest.NewCSR(t, td.ID().URL())
	if _, err := bClient.Sign(context.Background(), certs.SignRequest{Workload: certs.Workload{Namespace: "prod", Pod: "web-node-b", ServiceAccount: "web"}, CSR: csr}); err == nil || !strings.Contains(err.Error(), "Unavailable") {
		t.Errorf("sign through a removed node's socket: %v, want Unavailable", err)
	}

	// An invalid world is refused; the last good one stays in force.
	if err := os.WriteFile(worldFile, []byte("items: [this is not a world"), 0o644); err != nil {
		t.Fatal(err)
	}
	time.Sleep(300 * time.Millisecond) // several resyncs
	waitSockets("node-a", "node-c")

	// Invalid names get no socket; the valid ones are still applied.
	err := ts.srv.SetNodes([]string{"node-a", "../escape", "Upper", strings.Repeat("n", 120)})
	if err == nil || !strings.Contains(err.Error(), `"../escape"`) || !strings.Contains(err.Error(), "longer than") {
		t.Errorf("SetNodes with bad names: %v", err)
	}
	if got := ts.srv.Nodes(); strings.Join(got, ",") != "node-a" {
		t.Errorf("nodes %v, want node-a", got)
	}
	if _, err := os.Stat(filepath.Join(dir, "escape.sock")); !os.IsNotExist(err) {
		t.Errorf("escape.sock: %v", err)
	}
}

func TestNodesOf(t *testing.T) {
	w := testWorld()
	w.Pods = append(w.Pods, pod("prod", "x", "node-z", "web"), pod("prod", "pending", "", "web"))
	if got := strings.Join(caserver.NodesOf(w), ","); got != "node-a,node-b,node-z" {
		t.Errorf("NodesOf = %s", got)
	}
	if got := caserver.NodesOf(nil); len(got) != 0 {
		t.Errorf("NodesOf(nil) = %v", got)
	}
}
