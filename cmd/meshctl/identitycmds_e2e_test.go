package main

// End to end: a running agent (fake datapath) whose built-in CA manager
// issues its pods' SVIDs, asked by meshctl. Uses agent.SetIdentities, the
// agent's mTLS setup.

import (
	"bytes"
	"context"
	"io"
	"log/slog"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/nodemesh/nodemesh/agent"
	"github.com/nodemesh/nodemesh/agent/agenttest"
	"github.com/nodemesh/nodemesh/certs"
	"github.com/nodemesh/nodemesh/certs/certstest"
)

const e2eWorld = `apiVersion: v1
kind: List
items:
- {apiVersion: v1, kind: Namespace, metadata: {name: default}}
- {apiVersion: v1, kind: Node, metadata: {name: node-1}, status: {addresses: [{type: InternalIP, address: 192.168.10.1}]}}
- {apiVersion: v1, kind: Node, metadata: {name: node-2}, status: {addresses: [{type: InternalIP, address: 192.168.10.2}]}}
- {apiVersion: v1, kind: Pod, metadata: {name: web-1, namespace: default, labels: {app: web}}, spec: {nodeName: node-1, serviceAccountName: web}, status: {podIP: 10.0.1.10}}
- {apiVersion: v1, kind: Pod, metadata: {name: web-2, namespace: default, labels: {app: web}}, spec: {nodeName: node-1, serviceAccountName: web}, status: {podIP: 10.0.1.11}}
- {apiVersion: v1, kind: Pod, metadata: {name: db, namespace: default, labels: {app: db}}, spec: {nodeName: node-2, serviceAccountName: db}, status: {podIP: 10.0.2.10}}
`

func TestIdentityCommandsRunningAgent(t *testing.T) {
	dir := t.TempDir()
	worldFile, polDir := filepath.Join(dir, "world.yaml"), filepath.Join(dir, "policies")
	if err := os.WriteFile(worldFile, []byte(e2eWorld), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Mkdir(polDir, 0o755); err != nil {
		t.Fatal(err)
	}
	dp, links := agenttest.NewDatapath(), agenttest.NewLinks()
	links.Add(netip.MustParseAddr("10.0.1.10"), "veth-web1")
	links.Add(netip.MustParseAddr("10.0.1.11"), "veth-web2")
	cfg := agent.Config{NodeName: "node-1", WorldPaths: []string{worldFile}, PolicyPaths: []string{polDir},
		APISocket: filepath.Join(dir, "agent.sock"), XDSSocket: filepath.Join(dir, "xds.sock")}
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	src := &agent.StandaloneSource{WorldPaths: cfg.WorldPaths, PolicyPaths: cfg.PolicyPaths, Resync: time.Second, Log: log}
	a, err := agent.New(cfg, "test", src, dp, links, log)
	if err != nil {
		t.Fatal(err)
	}
	m, err := certs.NewManager(certs.ManagerConfig{NodeName: "node-1"}, certstest.NewCA(t, certs.CAConfig{}, nil))
	if err != nil {
		t.Fatal(err)
	}
	a.SetIdentities(m, m)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- a.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Error(err)
		}
	})

	// Until the web SVID is issued and the proxy configuration holds it.
	var snap *certs.Snapshot
	deadline := time.Now().Add(20 * time.Second)
	for {
		snap = m.Snapshot()
		var out, errb bytes.Buffer
		if snap.Len() == 1 && run([]string{"envoy", "config", "--socket", cfg.APISocket, "--type", "secrets"}, nil, &out, &errb) == 0 &&
			strings.Contains(out.String(), webID) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("no web SVID served: snapshot %d SVIDs; %s%s", snap.Len(), out.String(), errb.String())
		}
		time.Sleep(50 * time.Millisecond)
	}
	web := snap.SVIDs()[0]
	svids := []*certs.SVID{web}

	for _, tt := range []struct {
		name string
		args []string
		want []string
	}{
		{"identities", []string{"identities", "--socket", cfg.APISocket}, []string{webID, "default/web-1,default/web-2", web.Serial(), "valid", "identities from the built-in CA"}},
		{"identities json", []string{"identities", "--socket", cfg.APISocket, "-o", "json"}, []string{`"serial": "` + web.Serial() + `"`}},
		{"certs", []string{"certs", "--socket", cfg.APISocket, webID, "--pem"}, []string{"[0] leaf (SVID)", "root (trust bundle)", "-----BEGIN CERTIFICATE-----"}},
		{"envoy config secrets", []string{"envoy", "config", "--socket", cfg.APISocket, "--type", "secrets"}, []string{webID, "[redacted]", "nodemesh-trust-bundle"}},
		{"envoy config secrets yaml", []string{"envoy", "config", "--socket", cfg.APISocket, "--type", "secrets", "-o", "yaml"}, []string{webID, "[redacted]"}},
		{"envoy config", []string{"envoy", "config", "--socket", cfg.APISocket}, []string{"SecretsConfigDump", "[redacted]"}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			var out, errb bytes.Buffer
			if code := run(tt.args, nil, &out, &errb); code != 0 {
				t.Fatalf("exit %d: %s", code, errb.String())
			}
			all := out.String() + errb.String()
			for _, w := range tt.want {
				if !strings.Contains(all, w) {
					t.Errorf("output lacks %q:\n%s", w, all)
				}
			}
			checkNoKeys(t, all, svids)
		})
	}
}
