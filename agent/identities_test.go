package agent_test

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/sha256"
	"crypto/x509"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"net/netip"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/nodemesh/nodemesh/agent"
	"github.com/nodemesh/nodemesh/agent/agenttest"
	"github.com/nodemesh/nodemesh/api"
	"github.com/nodemesh/nodemesh/certs"
	"github.com/nodemesh/nodemesh/certs/certstest"
)

const (
	defaultSA = "spiffe://cluster.local/ns/default/sa/default"
	brokenSA  = "spiffe://cluster.local/ns/default/sa/broken"
	dbSA      = "spiffe://cluster.local/ns/default/sa/db"
)

// refusingIssuer is the CA, refusing the broken service account.
type refusingIssuer struct{ *certs.CA }

func (r refusingIssuer) Sign(ctx context.Context, req certs.SignRequest) ([]*x509.Certificate, error) {
	if req.Workload.ServiceAccount == "broken" {
		return nil, errors.New("boom: the CA refused")
	}
	return r.CA.Sign(ctx, req)
}

// startManager runs a built-in CA and node-1's Manager until the test ends.
func startManager(t *testing.T, ws ...certs.Workload) (*certs.CA, *certs.Manager) {
	t.Helper()
	ca := certstest.NewCA(t, certs.CAConfig{}, nil)
	m, err := certs.NewManager(certs.ManagerConfig{NodeName: "node-1", RetryMin: 50 * time.Millisecond, RetryMax: time.Second}, refusingIssuer{ca})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- m.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("manager: %v", err)
		}
	})
	if err := m.SetWorkloads(ws); err != nil {
		t.Fatal(err)
	}
	return ca, m
}

// serveAPI serves a on a socket and returns a client of it.
func serveAPI(t *testing.T, a *agent.Agent) *agent.Client {
	t.Helper()
	sock := filepath.Join(t.TempDir(), "a.sock")
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	go agent.Serve(ctx, sock, a)
	deadline := time.Now().Add(5 * time.Second)
	for {
		c, err := agent.Dial(sock)
		if err == nil {
			if _, err = c.Status(ctx); err == nil {
				t.Cleanup(func() { c.Close() })
				return c
			}
			c.Close()
		}
		if time.Now().After(deadline) {
			t.Fatal(err)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// noKeys fails t if any form of the SVIDs' private keys is in out.
func noKeys(t *testing.T, what string, out []byte, svids ...*certs.SVID) {
	t.Helper()
	if bytes.Contains(out, []byte("PRIVATE KEY")) {
		t.Errorf("%s shows a private key:\n%s", what, out)
	}
	for _, v := range svids {
		der, err := x509.MarshalPKCS8PrivateKey(v.PrivateKey())
		if err != nil {
			t.Fatal(err)
		}
		// The private scalar, raw and inside the PKCS#8 DER (bytes 35 to
		// 67 of a P-256 key; its tail is the public key, which the
		// certificate shows too).
		d := v.PrivateKey().(*ecdsa.PrivateKey).D.FillBytes(make([]byte, 32))
		b64 := base64.StdEncoding.EncodeToString(der)
		// JSON shows an SDS data source's inline_bytes, the key's PEM, in
		// base64.
		keyPEM, err := v.KeyPEM()
		if err != nil {
			t.Fatal(err)
		}
		pemB64 := base64.StdEncoding.EncodeToString(keyPEM)
		if strings.Contains(string(out), pemB64[:36]) || strings.Contains(string(out), pemB64[60:100]) {
			t.Errorf("shows %s's private key PEM in base64", v.ID())
		}
		for _, leak := range []string{b64[48:88], base64.StdEncoding.EncodeToString(d)[:24], hex.EncodeToString(d)[:24]} {
			if bytes.Contains(out, []byte(leak)) {
				t.Errorf("%s shows %s's private key", what, v.ID())
			}
		}
	}
}

func jsonOf(t *testing.T, v any) []byte {
	t.Helper()
	b, err := json.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func findIdentity(t *testing.T, l *agent.IdentityList, id string) agent.IdentityStatus {
	t.Helper()
	for _, st := range l.Identities {
		if st.SPIFFEID == id {
			return st
		}
	}
	t.Fatalf("no identity %s in %+v", id, l.Identities)
	return agent.IdentityStatus{}
}

func TestIdentitiesDisabled(t *testing.T) {
	a := newAgent(t, agenttest.NewDatapath(), agenttest.NewLinks())
	a.Apply(snapshot(t, 1))
	if _, err := a.Identities(context.Background()); !errors.Is(err, agent.ErrMTLSDisabled) {
		t.Errorf("Identities: %v", err)
	}
	if _, err := a.Certs(context.Background(), &agent.CertsRequest{}); !errors.Is(err, agent.ErrMTLSDisabled) {
		t.Errorf("Certs: %v", err)
	}
	c := serveAPI(t, a)
	for name, call := range map[string]func() error{
		"Identities": func() error { _, err := c.Identities(context.Background()); return err },
		"Certs":      func() error { _, err := c.Certs(context.Background(), nil); return err },
	} {
		if err := call(); err == nil || !strings.Contains(err.Error(), "mTLS is disabled on this node (--mtls-mode disabled): no workload identities") {
			t.Errorf("%s over the API: %v", name, err)
		}
	}
}

func TestIdentitiesBuiltinCA(t *testing.T) {
	ca, m := startManager(t,
		certs.Workload{Namespace: "default", Pod: "frontend", ServiceAccount: "default"},
		certs.Workload{Namespace: "default", Pod: "other", ServiceAccount: "default"},
		certs.Workload{Namespace: "default", Pod: "ghost", ServiceAccount: "broken"})
	snap := certstest.WaitForSnapshot(t, m, "the default SVID", func(s *certs.Snapshot) bool { return s.Len() == 1 })
	waitFor(t, "a failed request for the broken identity", func() bool {
		for _, st := range m.Status() {
			if st.ID.String() == brokenSA && st.Failures > 0 {
				return true
			}
		}
		return false
	})
	svid, ok := snap.SVID(spiffeid.RequireFromString(defaultSA))
	if !ok {
		t.Fatal("no default SVID")
	}
	td := spiffeid.RequireTrustDomainFromString("cluster.local")
	root := ca.Bundle().Roots(td)[0]

	dp, links := agenttest.NewDatapath(), agenttest.NewLinks()
	links.Add(netip.MustParseAddr("10.0.1.10"), "veth-fe")
	a := newAgent(t, dp, links)
	// The pods first: programming them would tell the manager the node's
	// workloads, replacing the test's (the ghost pod is nowhere).
	a.Apply(snapshot(t, 1))
	a.SetIdentitiesForTest(m, m)
	c := serveAPI(t, a)
	ctx := context.Background()

	ids, err := c.Identities(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if ids.Node != "node-1" || ids.Source != "built-in CA" || ids.Generation == 0 || ids.BundleVersion == 0 || len(ids.Identities) != 2 {
		t.Fatalf("identities %+v", ids)
	}
	def := findIdentity(t, ids, defaultSA)
	if fmt.Sprint(def.Pods) != "[default/frontend default/other]" || def.State != agent.IdentityValid || !def.HasSVID ||
		def.Serial != svid.Serial() || !def.NotAfter.Equal(svid.NotAfter()) || !def.NotBefore.Equal(svid.Leaf().NotBefore) ||
		def.Issuer != root.Subject.String() || def.IssuerSerial != root.SerialNumber.Text(16) || def.Failures != 0 || def.LastError != "" {
		t.Errorf("default identity %+v", def)
	}
	// Renewal at half-life of the hour the CA issues for.
	if def.RenewIn < 20*time.Minute || def.RenewIn > 31*time.Minute || def.RenewAt.IsZero() {
		t.Errorf("default identity renews in %s (at %s), want about 30m", def.RenewIn, def.RenewAt)
	}
	broken := findIdentity(t, ids, brokenSA)
	if broken.State != agent.IdentityFailing || broken.HasSVID || broken.Failures < 1 || !strings.Contains(broken.LastError, "boom: the CA refused") ||
		len(broken.Pods) != 0 || broken.Serial != "" {
		t.Errorf("broken identity %+v", broken)
	}
	if len(ids.Bundle) != 1 || ids.Bundle[0].TrustDomain != "cluster.local" || len(ids.Bundle[0].Roots) != 1 {
		t.Fatalf("bundle %+v", ids.Bundle)
	}
	if r := ids.Bundle[0].Roots[0]; r.Subject != root.Subject.String() || r.Serial != root.SerialNumber.Text(16) || !r.NotAfter.Equal(root.NotAfter) ||
		r.SHA256 != fingerprintOf(root) {
		t.Errorf("bundle root %+v", r)
	}
	noKeys(t, "Identities", jsonOf(t, ids), svid)

	// Certs: every chain, decoded, without PEM unless asked.
	chains, err := c.Certs(ctx, &agent.CertsRequest{})
	if err != nil {
		t.Fatal(err)
	}
	if chains.Source != "built-in CA" || len(chains.Chains) != 1 || chains.Chains[0].SPIFFEID != defaultSA || len(chains.Chains[0].Certificates) != len(svid.Chain()) {
		t.Fatalf("certs %+v", chains)
	}
	leaf := chains.Chains[0].Certificates[0]
	if fmt.Sprint(leaf.URISANs) != "["+defaultSA+"]" || leaf.IsCA || leaf.Serial != svid.Serial() || !leaf.NotAfter.Equal(svid.NotAfter()) ||
		fmt.Sprint(leaf.KeyUsage) != "[digitalSignature]" || fmt.Sprint(leaf.ExtKeyUsage) != "[serverAuth clientAuth]" ||
		leaf.PublicKeyAlgorithm != "ECDSA P-256" || leaf.SignatureAlgorithm == "" || leaf.SHA256 != fingerprintOf(svid.Leaf()) ||
		leaf.Issuer != svid.Leaf().Issuer.String() || leaf.PEM != "" {
		t.Errorf("leaf %+v", leaf)
	}
	if r := chains.Chains[0].Root; r == nil || !r.IsCA || r.Serial != root.SerialNumber.Text(16) || fmt.Sprint(r.KeyUsage) != "[keyCertSign cRLSign]" {
		t.Errorf("root %+v", r)
	}
	noKeys(t, "Certs", jsonOf(t, chains), svid)

	withPEM, err := c.Certs(ctx, &agent.CertsRequest{SPIFFEID: defaultSA, PEM: true})
	if err != nil {
		t.Fatal(err)
	}
	if len(withPEM.Chains) != 1 || withPEM.Chains[0].Root == nil || withPEM.Chains[0].Root.PEM == "" {
		t.Fatalf("certs with PEM %+v", withPEM)
	}
	blk, rest := pem.Decode([]byte(withPEM.Chains[0].Certificates[0].PEM))
	if blk == nil || blk.Type != "CERTIFICATE" || !bytes.Equal(blk.Bytes, svid.Leaf().Raw) || len(bytes.TrimSpace(rest)) != 0 {
		t.Errorf("leaf PEM %q", withPEM.Chains[0].Certificates[0].PEM)
	}
	noKeys(t, "Certs with PEM", jsonOf(t, withPEM), svid)

	for _, tt := range []struct{ id, want string }{
		{brokenSA, "no SVID for " + brokenSA + " on node node-1 (it holds " + defaultSA + ")"},
		{"https://example.com", `SPIFFE ID "https://example.com"`},
	} {
		if _, err := c.Certs(ctx, &agent.CertsRequest{SPIFFEID: tt.id}); err == nil || !strings.Contains(err.Error(), tt.want) {
			t.Errorf("Certs(%s): %v, want %q", tt.id, err, tt.want)
		}
	}
}

func fingerprintOf(c *x509.Certificate) string {
	sum := sha256.Sum256(c.Raw)
	var parts []string
	for _, b := range sum {
		parts = append(parts, fmt.Sprintf("%02X", b))
	}
	return strings.Join(parts, ":")
}

// fixedSource is an identity source of one snapshot, as SPIRE's would be.
type fixedSource struct{ snap *certs.Snapshot }

func (f fixedSource) Snapshot() *certs.Snapshot { return f.snap }

func (f fixedSource) Watch(ctx context.Context, fn func(*certs.Snapshot)) error {
	fn(f.snap)
	<-ctx.Done()
	return nil
}

const worldWithDB = world + `- {apiVersion: v1, kind: Pod, metadata: {name: db, namespace: default, labels: {app: db}}, spec: {nodeName: node-1, serviceAccountName: db}, status: {podIP: 10.0.1.12}}
- {apiVersion: v1, kind: Pod, metadata: {name: cache, namespace: default, labels: {app: cache}}, spec: {nodeName: node-1, serviceAccountName: cache}, status: {podIP: 10.0.1.13}}
- {apiVersion: v1, kind: Namespace, metadata: {name: legacy, labels: {mtls.nodemesh.io/mode: disabled}}}
- {apiVersion: v1, kind: Pod, metadata: {name: old, namespace: legacy, labels: {app: old}}, spec: {nodeName: node-1, serviceAccountName: old}, status: {podIP: 10.0.1.14}}
`

func TestIdentitiesSPIRE(t *testing.T) {
	auth := certstest.NewAuthority(t, "cluster.local")
	rogue := certstest.NewAuthority(t, "cluster.local")
	valid := auth.MintSVID(t, defaultSA)
	expired := auth.MintSVID(t, dbSA, certstest.Expired())
	untrusted := rogue.MintSVID(t, "spiffe://cluster.local/ns/default/sa/cache")
	snap := certs.NewSnapshot(7, auth.Bundle(), valid, expired, untrusted)

	var w api.World
	if err := api.DecodeWorld("world.yaml", []byte(worldWithDB), &w); err != nil {
		t.Fatal(err)
	}
	a := newAgent(t, agenttest.NewDatapath(), agenttest.NewLinks())
	a.SetIdentitiesForTest(fixedSource{snap}, nil)
	a.Apply(agent.Snapshot{World: &w, Generation: 1})

	ids, err := a.Identities(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if ids.Source != "SPIRE" || ids.Generation != 7 || len(ids.Identities) != 3 {
		t.Fatalf("identities %+v", ids)
	}
	want := map[string]string{defaultSA: agent.IdentityValid, dbSA: agent.IdentityExpired, "spiffe://cluster.local/ns/default/sa/cache": agent.IdentityUntrusted}
	for id, state := range want {
		st := findIdentity(t, ids, id)
		if st.State != state || !st.RenewAt.IsZero() || st.RenewIn != 0 || len(st.Pods) == 0 {
			t.Errorf("%s: %+v, want state %s, no renewal time, pods", id, st, state)
		}
	}
	if st := findIdentity(t, ids, "spiffe://cluster.local/ns/default/sa/cache"); st.IssuerSerial != "" || st.Issuer != rogue.Cert.Subject.String() {
		t.Errorf("untrusted identity's issuer: %+v", st)
	}
	noKeys(t, "Identities", jsonOf(t, ids), valid, expired, untrusted)

	// A pod whose identity the source has no SVID for.
	snap2 := certs.NewSnapshot(8, auth.Bundle(), valid)
	a2 := newAgent(t, agenttest.NewDatapath(), agenttest.NewLinks())
	a2.SetIdentitiesForTest(fixedSource{snap2}, nil)
	a2.Apply(agent.Snapshot{World: &w, Generation: 1})
	ids, err = a2.Identities(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if st := findIdentity(t, ids, dbSA); st.State != agent.IdentityMissing || fmt.Sprint(st.Pods) != "[default/db]" || st.HasSVID {
		t.Errorf("db identity without an SVID: %+v", st)
	}
	// The legacy namespace has mTLS disabled: its pod has no identity.
	if len(ids.Identities) != 3 {
		t.Errorf("identities %+v; want default, db and cache (legacy/old has mTLS disabled)", ids.Identities)
	}
	chains, err := a2.Certs(context.Background(), &agent.CertsRequest{PEM: true})
	if err != nil || len(chains.Chains) != 1 {
		t.Fatalf("certs %+v, %v", chains, err)
	}
	noKeys(t, "Certs", jsonOf(t, chains), valid)
}
