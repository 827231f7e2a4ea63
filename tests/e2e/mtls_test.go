package e2e_test

import (
	"bytes"
	"context"
	"crypto"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/nodemesh/nodemesh/agent"
	"github.com/nodemesh/nodemesh/certs/certstest"
	"github.com/nodemesh/nodemesh/tests/e2e"
	"github.com/nodemesh/nodemesh/tests/podtool"
	"github.com/nodemesh/nodemesh/tests/vcluster"
)

// mtlsPolicies: the seed scenario with its L7 rule on the backend's port
// 80 (e2e.SeedL7Ingress), plus plain TCP on 81 from the frontend and from
// the legacy namespace (whose pods do not take part in mTLS).
const mtlsPolicies = e2e.SeedL7Ingress + "---\n" + backendTCP81

const backendTCP81 = `apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: backend-tcp-81, namespace: default}
spec:
  endpointSelector: {matchLabels: {app: backend}}
  ingress:
  - fromEndpoints: [{matchLabels: {app: frontend}}]
    toPorts: [{ports: [{port: "81", protocol: TCP}]}]
  - fromEndpoints: [{matchLabels: {k8s:io.kubernetes.pod.namespace: legacy}}]
    toPorts: [{ports: [{port: "81", protocol: TCP}]}]
`

// mtlsCluster starts frontend and other on node-1, backend on node-2 (each
// with its own service account), a client in namespace legacy (mTLS
// disabled by its label) on node-1, the built-in CA, agents in mode, and a
// proxy per node.
func mtlsCluster(t testing.TB, mode string, caArgs ...string) *e2e.Harness {
	t.Helper()
	vcluster.RequireCluster(t)
	if _, err := exec.LookPath("tcpdump"); err != nil {
		t.Fatal("tcpdump is missing: run make deps (scripts/deps.sh installs it)")
	}
	opts := e2e.Options{
		Cluster: vcluster.Config{NamespaceLabels: map[string]map[string]string{"legacy": {"mtls.nodemesh.io/mode": "disabled"}}},
		Pods: []vcluster.PodConfig{
			{Name: "frontend", Node: "node-1", Labels: map[string]string{"app": "frontend"}, ServiceAccount: "frontend"},
			{Name: "other", Node: "node-1", Labels: map[string]string{"app": "other"}, ServiceAccount: "other"},
			{Name: "backend", Node: "node-2", Labels: map[string]string{"app": "backend"}, ServiceAccount: "backend"},
			{Namespace: "legacy", Name: "legacy-client", Node: "node-1", Labels: map[string]string{"app": "legacy"}},
		},
		Serve:  []string{"--http", "80,8080", "--tcp", "81"},
		MTLS:   mode,
		CAArgs: caArgs,
	}
	h := startCluster(t, opts)
	for _, n := range []string{"node-1", "node-2"} {
		p, err := h.StartProxy(context.Background(), n)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() {
			if t.Failed() {
				t.Logf("proxy of %s:\n%s", n, p.Stderr())
			}
		})
	}
	if _, err := h.SetPolicies(context.Background(), mtlsPolicies); err != nil {
		t.Fatal(err)
	}
	return h
}

// startCluster starts a virtual cluster with opts (progress on stderr with
// -v), closes it when the test ends, and, if the test failed, logs what
// the agents (and the CA) say.
func startCluster(t testing.TB, opts e2e.Options) *e2e.Harness {
	t.Helper()
	if testing.Verbose() {
		opts.Log = os.Stderr
	}
	h, err := e2e.Start(context.Background(), opts)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { h.Close() })
	t.Cleanup(func() {
		if t.Failed() {
			dumpNodes(t, h)
			if ca := h.CAStderr(); ca != "" {
				t.Logf("nodemesh-ca:\n%s", ca)
			}
			for _, n := range []string{"node-1", "node-2"} {
				t.Logf("agent of %s:\n%s", n, h.AgentStderr(n))
			}
		}
	})
	return h
}

// echo81 sends a TCP echo from a pod to the backend's port 81.
func echo81(t *testing.T, h *e2e.Harness, ns, from string) podtool.ConnectResult {
	t.Helper()
	res, err := h.Probe(context.Background(), h.C.Pod(ns, from), "tcp", fmt.Sprintf("%s:81", h.C.Pod("default", "backend").IP), time.Second)
	if err != nil {
		t.Fatal(err)
	}
	return res
}

// capture runs f while capturing the underlay and returns the capture.
func capture(t *testing.T, h *e2e.Harness, f func()) []byte {
	t.Helper()
	c, err := h.CaptureUnderlay(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	f()
	b, err := c.Stop()
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("capture: %d bytes; tcpdump: %s", len(b), c.Log())
	return b
}

// TestMTLSPermissive: with mTLS permissive, the seed scenario's outcomes
// between nodes are unchanged (the L7 rule still sees the frontend, by its
// address and now by its SPIFFE ID), while the underlay carries no request
// line in plaintext — only TLS offering ALPN nodemesh-mtls; a client whose
// namespace disables mTLS still reaches the backend in plaintext
// (permissive); and with the frontend's namespace switched to disabled, the
// same requests do cross the underlay in plaintext (the capture would see
// them).
func TestMTLSPermissive(t *testing.T) {
	h := mtlsCluster(t, "permissive")
	good := e2e.L7Request{From: "frontend", To: "backend", Method: "GET", Path: "/userdata/42", Port: 80, Want: 200}
	// SVIDs are issued after the agents start: until the frontend's is
	// served, its requests go in plaintext (permissive); wait for mTLS.
	waitMTLS(t, h, 20*time.Second)

	pcap := capture(t, h, func() {
		for _, r := range e2e.SeedL7Requests("backend") {
			expectL7(t, h, r, 5*time.Second)
		}
		if res := echo81(t, h, "default", "frontend"); !res.OK {
			t.Errorf("frontend -> backend:81 over mTLS: %+v", res)
		}
	})
	if bytes.Contains(pcap, []byte("GET /userdata")) || bytes.Contains(pcap, []byte("POST /userdata")) {
		t.Error("the underlay carried an HTTP request line in plaintext between mTLS peers")
	}
	if n := bytes.Count(pcap, []byte("nodemesh-mtls")); n < 3 {
		t.Errorf("the underlay shows %d TLS ClientHellos offering nodemesh-mtls, want one per connection (at least 3)", n)
	}
	if res := echo81(t, h, "legacy", "legacy-client"); !res.OK {
		t.Errorf("permissive: plaintext client legacy/legacy-client -> backend:81: %+v, want the echo", res)
	}

	// Control: the capture does see plaintext when mTLS is off.
	h.C.SetNamespaceLabels("default", map[string]string{"mtls.nodemesh.io/mode": "disabled"})
	if err := h.WriteWorld(); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(10 * time.Second)
	for {
		pcap = capture(t, h, func() { expectL7(t, h, good, 5*time.Second) })
		if bytes.Contains(pcap, []byte("GET /userdata/42")) || time.Now().After(deadline) {
			break
		}
	}
	if !bytes.Contains(pcap, []byte("GET /userdata/42")) {
		t.Error("mTLS disabled for default: the capture never showed the request line (the capture method would not see plaintext)")
	}
}

// TestMTLSStrict: in strict mode mesh pods still talk (over mTLS), while a
// plaintext client on another node — a pod whose namespace disables mTLS —
// is refused by the backend's proxy, with the reason in the flow events.
func TestMTLSStrict(t *testing.T) {
	h := mtlsCluster(t, "strict")
	waitMTLS(t, h, 20*time.Second)
	for _, r := range e2e.SeedL7Requests("backend") {
		expectL7(t, h, r, 5*time.Second)
	}
	if res := echo81(t, h, "default", "frontend"); !res.OK {
		t.Errorf("strict: frontend -> backend:81: %+v", res)
	}
	if res := echo81(t, h, "legacy", "legacy-client"); res.OK {
		t.Errorf("strict: plaintext client legacy/legacy-client -> backend:81 got the echo: %+v", res)
	} else {
		t.Logf("strict: legacy/legacy-client -> backend:81: %s (%s)", res.Reason, res.Error)
	}
	expectMTLSEvent(t, h, "node-2", h.C.Pod("legacy", "legacy-client").IP.String(), "mtls-plaintext-refused")

	// The L7 rule as an egress rule of the frontend: its node proxy
	// enforces it and then originates mTLS to the backend's (which, strict,
	// would refuse plaintext), with nothing readable on the underlay.
	if _, err := h.SetPolicies(context.Background(), e2e.SeedL7Egress+"---\n"+backendTCP81); err != nil {
		t.Fatal(err)
	}
	pcap := capture(t, h, func() {
		for _, r := range e2e.SeedL7Requests("backend") {
			expectL7(t, h, r, 10*time.Second)
		}
	})
	if bytes.Contains(pcap, []byte("/userdata")) {
		t.Error("egress L7 rule: the underlay carried the request in plaintext")
	}
}

// waitMTLS waits until the frontend's requests to the backend cross the
// underlay as mTLS.
func waitMTLS(t *testing.T, h *e2e.Harness, wait time.Duration) {
	t.Helper()
	good := e2e.L7Request{From: "frontend", To: "backend", Method: "GET", Path: "/userdata/42", Port: 80, Want: 200}
	deadline := time.Now().Add(wait)
	for {
		var ok bool
		var pcap []byte
		pcap = capture(t, h, func() {
			o, err := h.CheckL7(context.Background(), good)
			ok = err == nil && o.OK
		})
		if ok && bytes.Contains(pcap, []byte("nodemesh-mtls")) {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("no mTLS between frontend and backend after %v (last request ok=%v; last capture %d bytes, plaintext request line in it: %v)",
				wait, ok, len(pcap), bytes.Contains(pcap, []byte("GET /userdata")))
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// TestMTLSBadCertificates: a client on another node that presents a bad
// certificate to the backend's node proxy is refused, each for its own
// reason, which the backend's node reports as a flow event (meshctl
// observe --mtls) and logs. The CA's root is the test's, so that it can mint
// certificates the CA never would; the client is in namespace legacy
// (mTLS disabled), so its own node does not steer it through its proxy and
// its TLS reaches the backend's proxy as sent.
func TestMTLSBadCertificates(t *testing.T) {
	root := certstest.NewAuthority(t, "cluster.local")
	dir := t.TempDir()
	writePEM(t, filepath.Join(dir, "root.pem"), "CERTIFICATE", root.Cert.Raw)
	key, err := x509.MarshalPKCS8PrivateKey(root.Key)
	if err != nil {
		t.Fatal(err)
	}
	writePEM(t, filepath.Join(dir, "root-key.pem"), "PRIVATE KEY", key)
	h := mtlsCluster(t, "permissive", "--ca-root-cert", filepath.Join(dir, "root.pem"), "--ca-root-key", filepath.Join(dir, "root-key.pem"))
	waitMTLS(t, h, 20*time.Second)

	const frontend = "spiffe://cluster.local/ns/default/sa/frontend"
	stranger := certstest.NewAuthority(t, "cluster.local")
	cases := []struct {
		name, reason string
		chain        []*x509.Certificate
		key          crypto.Signer
	}{}
	add := func(name, reason string, a *certstest.Authority, id string, tweaks ...certstest.Tweak) {
		chain, key := a.Mint(t, id, tweaks...)
		cases = append(cases, struct {
			name, reason string
			chain        []*x509.Certificate
			key          crypto.Signer
		}{name, reason, chain, key})
	}
	add("expired", "svid-expired", root, frontend, certstest.Expired())
	add("not yet valid", "svid-not-yet-valid", root, frontend, certstest.NotYetValid())
	add("wrong trust domain", "svid-wrong-trust-domain", root, "spiffe://other.example/ns/default/sa/frontend")
	add("unknown CA", "svid-unknown-ca", stranger, frontend)
	add("two URI SANs", "svid-multiple-uri-sans", root, frontend, certstest.URIs(frontend, "spiffe://cluster.local/ns/default/sa/other"))
	add("CA flag on the leaf", "svid-leaf-is-ca", root, frontend, certstest.CAFlag())
	// Valid, but the frontend's identity presented from legacy-client's
	// address: the policy admits that address only as legacy-client.
	add("SPIFFE ID not allowed", "mtls-peer-not-allowed", root, frontend)

	client := h.C.Pod("legacy", "legacy-client")
	backend := fmt.Sprintf("%s:81", h.C.Pod("default", "backend").IP)
	for i, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			certFile, keyFile := filepath.Join(h.Dir, fmt.Sprintf("bad-%d.pem", i)), filepath.Join(h.Dir, fmt.Sprintf("bad-%d-key.pem", i))
			var chain []byte
			for _, crt := range c.chain {
				chain = append(chain, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: crt.Raw})...)
			}
			if err := os.WriteFile(certFile, chain, 0o600); err != nil {
				t.Fatal(err)
			}
			k, err := x509.MarshalPKCS8PrivateKey(c.key)
			if err != nil {
				t.Fatal(err)
			}
			writePEM(t, keyFile, "PRIVATE KEY", k)
			out, _ := client.Exec(context.Background(), h.Podtool, "tls", "--to", backend, "--cert", certFile, "--key", keyFile)
			var res podtool.TLSResult
			if err := json.Unmarshal(bytes.TrimSpace(out), &res); err != nil {
				t.Fatalf("podtool tls: %v: %s", err, out)
			}
			if res.OK {
				t.Fatalf("the backend's proxy accepted the %s certificate: %+v", c.name, res)
			}
			t.Logf("client: refused at %s: %s", res.Stage, res.Error)
			expectMTLSEvent(t, h, "node-2", client.IP.String(), c.reason)
			if out := h.AgentStderr("node-2"); !strings.Contains(out, "reason="+c.reason) {
				t.Errorf("node-2's agent did not log the refusal with reason=%s:\n%s", c.reason, out)
			}
		})
	}
}

// expectMTLSEvent waits for node's mTLS connection event from src with
// reason.
func expectMTLSEvent(t *testing.T, h *e2e.Harness, node, src, reason string) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	var seen []string
	for time.Now().Before(deadline) {
		c, err := agent.Dial(h.Socket(node))
		if err != nil {
			t.Fatal(err)
		}
		seen = nil
		found := false
		err = c.Observe(context.Background(), &agent.ObserveRequest{Last: 200, MTLS: true}, func(e *agent.FlowEvent) error {
			if e.Src.IP == src {
				seen = append(seen, e.Verdict+" "+e.Reason)
				found = found || (e.Reason == reason && e.Verdict == "dropped")
			}
			return nil
		})
		c.Close()
		if err != nil {
			t.Fatal(err)
		}
		if found {
			return
		}
		time.Sleep(200 * time.Millisecond)
	}
	t.Errorf("%s: no dropped mTLS event from %s with reason %s; its mTLS events: %q", node, src, reason, seen)
}

func writePEM(t *testing.T, path, typ string, der []byte) {
	t.Helper()
	if err := os.WriteFile(path, pem.EncodeToMemory(&pem.Block{Type: typ, Bytes: der}), 0o600); err != nil {
		t.Fatal(err)
	}
}

// TestMTLSRotationUnderLoad: while load runs between the frontend and the
// backend on the other node — a new mTLS connection per request on TCP 81
// (each one a handshake with the certificates of the moment) and HTTP
// keep-alive requests through the L7 rule on 80 — the workload SVIDs renew
// every few seconds (20s lifetime) and the CA rotates its root (both roots
// trusted at once, then the new one signs, then the old one leaves the
// bundle after the overlap): no request fails, and all of it happened (new
// serials; the new root active).
func TestMTLSRotationUnderLoad(t *testing.T) {
	h := mtlsCluster(t, "permissive", "--svid-ttl", "20s", "--svid-backdate", "2s")
	waitMTLS(t, h, 20*time.Second)
	meshctl, err := e2e.MeshctlBinary()
	if err != nil {
		t.Fatal(err)
	}
	serials := func(node string) string {
		out, err := exec.Command(meshctl, "identities", "-o", "json", "--socket", h.Socket(node)).Output()
		if err != nil {
			t.Fatalf("meshctl identities on %s: %v", node, err)
		}
		var l agent.IdentityList
		if err := json.Unmarshal(out, &l); err != nil {
			t.Fatal(err)
		}
		var s []string
		for _, id := range l.Identities {
			s = append(s, id.SPIFFEID+"="+id.Serial)
		}
		return strings.Join(s, " ")
	}
	before := serials("node-1") + " " + serials("node-2")

	frontend, backend := h.C.Pod("default", "frontend"), h.C.Pod("default", "backend")
	const load = 35 * time.Second
	type result struct {
		name string
		res  podtool.RRResult
		err  error
	}
	results := make(chan result, 2)
	run := func(name string, args ...string) {
		out, err := frontend.Exec(context.Background(), append([]string{h.Podtool}, args...)...)
		var r podtool.RRResult
		if jerr := json.Unmarshal(bytes.TrimSpace(out), &r); jerr != nil {
			err = fmt.Errorf("%v %v: %s", err, jerr, out)
		}
		results <- result{name, r, err}
	}
	go run("crr 81", "crr", "--to", fmt.Sprintf("%s:81", backend.IP), "--duration", load.String(), "--conns", "2")
	go run("hrr 80", "hrr", "--to", fmt.Sprintf("%s:80", backend.IP), "--path", "/userdata/7", "--duration", load.String(), "--conns", "2")

	time.Sleep(5 * time.Second)
	out, err := exec.Command(meshctl, "ca", "rotate", "--ca-socket-dir", h.CADir(), "--activate-after", "3s").CombinedOutput()
	if err != nil {
		t.Fatalf("meshctl ca rotate: %v: %s", err, out)
	}
	t.Logf("meshctl ca rotate:\n%s", out)
	added := regexp.MustCompile(`Added root ([0-9a-f]+)`).FindStringSubmatch(string(out))
	if added == nil || !strings.Contains(string(out), "2 root(s)") {
		t.Fatalf("meshctl ca rotate did not report the new root alongside the old one:\n%s", out)
	}
	for range 2 {
		r := <-results
		t.Logf("%s during rotation: %d requests, %d failed, %.0f/s, p99 %d µs", r.name, r.res.Requests, r.res.Errors, r.res.RPS, r.res.P99us)
		if r.err != nil || r.res.Errors != 0 || r.res.Requests == 0 {
			t.Errorf("%s: %d requests, %d failed (%v %s)", r.name, r.res.Requests, r.res.Errors, r.err, r.res.Error)
		}
	}
	after := serials("node-1") + " " + serials("node-2")
	t.Logf("SVIDs before: %s\nSVIDs after: %s", before, after)
	for _, s := range strings.Fields(before) {
		if strings.Contains(after, s) {
			t.Errorf("SVID %s was not renewed during the run", s)
		}
	}
	out, err = exec.Command(meshctl, "ca", "status", "--ca-socket-dir", h.CADir()).CombinedOutput()
	if err != nil {
		t.Fatalf("meshctl ca status: %v: %s", err, out)
	}
	t.Logf("meshctl ca status:\n%s", out)
	if !regexp.MustCompile(added[1] + `\s+ACTIVE`).Match(out) {
		t.Errorf("after the rotation the new root %s should be the active one:\n%s", added[1], out)
	}
}
