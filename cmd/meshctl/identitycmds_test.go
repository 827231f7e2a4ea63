package main

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/x509"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/nodemesh/nodemesh/agent"
	"github.com/nodemesh/nodemesh/certs"
	"github.com/nodemesh/nodemesh/certs/certstest"
)

const (
	webID = "spiffe://cluster.local/ns/default/sa/web"
	dbID  = "spiffe://cluster.local/ns/default/sa/db"
)

// identityAgent answers Identities and Certs as an agent with mTLS would,
// from real SVIDs (with their keys, which must never come out); the other
// methods are not called.
type identityAgent struct {
	agent.Server
	auth  *certstest.Authority
	svids []*certs.SVID
	ids   *agent.IdentityList
}

func (a *identityAgent) Identities(context.Context) (*agent.IdentityList, error) { return a.ids, nil }

func (a *identityAgent) Certs(_ context.Context, req *agent.CertsRequest) (*agent.CertChains, error) {
	out := &agent.CertChains{Node: "node-1", Source: agent.SourceBuiltinCA}
	for _, v := range a.svids {
		if req.SPIFFEID != "" && req.SPIFFEID != v.ID().String() {
			continue
		}
		ch := agent.SVIDChain{SPIFFEID: v.ID().String()}
		for _, c := range v.Chain() {
			ch.Certificates = append(ch.Certificates, agent.DescribeCertificate(c, req.PEM))
		}
		root := agent.DescribeCertificate(a.auth.Root(), req.PEM)
		ch.Root = &root
		out.Chains = append(out.Chains, ch)
	}
	if len(out.Chains) == 0 {
		return nil, fmt.Errorf("no SVID for %s on node node-1", req.SPIFFEID)
	}
	return out, nil
}

// startIdentityAgent serves an identityAgent with a web SVID issued by an
// intermediate CA and a db identity whose requests fail.
func startIdentityAgent(t *testing.T) (string, *identityAgent) {
	t.Helper()
	root := certstest.NewAuthority(t, "cluster.local")
	inter := root.NewIntermediate(t)
	web := inter.MintSVID(t, webID)
	now := time.Now()
	a := &identityAgent{auth: inter, svids: []*certs.SVID{web}, ids: &agent.IdentityList{
		Node: "node-1", Source: agent.SourceBuiltinCA, Generation: 4, BundleVersion: 1,
		Identities: []agent.IdentityStatus{
			{SPIFFEID: dbID, Pods: []string{"default/db-0"}, State: agent.IdentityFailing, RenewAt: now.Add(2 * time.Second), RenewIn: 2 * time.Second,
				Failures: 3, LastError: "boom: the CA refused"},
			{SPIFFEID: webID, Pods: []string{"default/web-1", "default/web-2"}, State: agent.IdentityValid, HasSVID: true,
				Serial: web.Serial(), NotBefore: web.Leaf().NotBefore, NotAfter: web.NotAfter(),
				RenewAt: now.Add(29*time.Minute + 30*time.Second), RenewIn: 29*time.Minute + 30*time.Second,
				Issuer: root.Cert.Subject.String(), IssuerSerial: root.Cert.SerialNumber.Text(16)},
		},
		Bundle: []agent.TrustDomainRoots{{TrustDomain: "cluster.local", Roots: []agent.BundleRoot{{
			Subject: root.Cert.Subject.String(), Serial: root.Cert.SerialNumber.Text(16), NotBefore: root.Cert.NotBefore, NotAfter: root.Cert.NotAfter}}}},
	}}
	sock := filepath.Join(t.TempDir(), "agent.sock")
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	go agent.Serve(ctx, sock, a)
	deadline := time.Now().Add(5 * time.Second)
	for {
		if c, err := agent.Dial(sock); err == nil {
			if _, err := c.Identities(ctx); err == nil {
				c.Close()
				return sock, a
			}
			c.Close()
		}
		if time.Now().After(deadline) {
			t.Fatal("identity agent did not come up")
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// checkNoKeys fails t if out shows any of the SVIDs' private keys.
func checkNoKeys(t *testing.T, out string, svids []*certs.SVID) {
	t.Helper()
	if strings.Contains(out, "PRIVATE KEY") {
		t.Errorf("output shows a private key:\n%s", out)
	}
	for _, v := range svids {
		der, err := x509.MarshalPKCS8PrivateKey(v.PrivateKey())
		if err != nil {
			t.Fatal(err)
		}
		// The private scalar, raw and inside the PKCS#8 DER (bytes 35 to
		// 67 of a P-256 key; its tail is the public key, which
		// certificates show too).
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
		if strings.Contains(out, b64[48:88]) || strings.Contains(out, base64.StdEncoding.EncodeToString(d)[:24]) || strings.Contains(out, hex.EncodeToString(d)[:24]) {
			t.Errorf("output shows %s's private key", v.ID())
		}
	}
}

func TestIdentityCommands(t *testing.T) {
	sock, a := startIdentityAgent(t)
	disabled := startFakeAgent(t) // an agent without mTLS
	web := a.svids[0]
	inter := a.auth
	tests := []struct {
		name     string
		args     []string
		wantCode int
		want     []string
		unwanted []string
	}{
		{"identities", []string{"identities", "--socket", sock}, 0, []string{
			"Node node-1: identities from the built-in CA (generation 4)",
			"SPIFFE ID", "PODS", "SERIAL", "EXPIRES", "RENEWS IN", "STATUS",
			webID, "default/web-1,default/web-2", web.Serial(), web.NotAfter().UTC().Format(time.RFC3339), "(in 59m)", "29m", "valid",
			dbID, "default/db-0", "failing (3)",
			"Problem: " + dbID + ": 3 failed request(s), the last: boom: the CA refused",
			"Trust bundle (version 1):", "cluster.local", inter.Root().Subject.String(), inter.Root().SerialNumber.Text(16), "(in 23h",
		}, nil},
		{"identities json", []string{"identities", "--socket", sock, "-o", "json"}, 0, []string{`"spiffeID": "` + webID + `"`, `"serial": "` + web.Serial() + `"`, `"lastError": "boom: the CA refused"`}, nil},
		{"identities bad output", []string{"identities", "--socket", sock, "-o", "yaml"}, 2, []string{`--output "yaml"`}, nil},
		{"identities takes no arguments", []string{"identities", "--socket", sock, webID}, 2, []string{"unknown command"}, nil},
		{"identities without mTLS", []string{"identities", "--socket", disabled}, 2, []string{"ask the agent: mTLS is disabled on this node (--mtls-mode disabled): no workload identities"}, []string{"rpc error"}},
		{"identities no agent", []string{"identities", "--socket", filepath.Join(t.TempDir(), "none.sock")}, 2, []string{"is the agent running on this node?"}, nil},
		{"certs", []string{"certs", "--socket", sock}, 0, []string{
			webID + " (node node-1, built-in CA)", "[0] leaf (SVID)", "[1] intermediate CA", "root (trust bundle)",
			"Subject:", "Issuer:", field("Serial", web.Serial()), field("Not after", web.NotAfter().UTC().Format(time.RFC3339)),
			field("URI SANs", webID), field("Key usage", "digitalSignature"), field("Ext key usage", "serverAuth, clientAuth"), field("CA", "false"), field("CA", "true"),
			field("Signature", "ECDSA-SHA256"), field("Public key", "ECDSA P-256"), field("SHA-256", agent.DescribeCertificate(web.Leaf(), false).SHA256),
		}, []string{"BEGIN CERTIFICATE"}},
		{"certs of one identity with PEM", []string{"certs", "--socket", sock, webID, "--pem"}, 0, []string{"-----BEGIN CERTIFICATE-----", "-----END CERTIFICATE-----"}, nil},
		{"certs json", []string{"certs", "--socket", sock, "-o", "json", "--pem"}, 0, []string{`"uriSANs": [`, `"isCA": true`, `"pem": "-----BEGIN CERTIFICATE-----`}, nil},
		{"certs of an unknown identity", []string{"certs", "--socket", sock, dbID}, 2, []string{"ask the agent: no SVID for " + dbID}, nil},
		{"certs of a non-SPIFFE ID", []string{"certs", "--socket", sock, "default/web"}, 2, []string{`"default/web" is not a SPIFFE ID`}, nil},
		{"certs of two identities", []string{"certs", "--socket", sock, webID, dbID}, 2, []string{"at most one SPIFFE ID"}, nil},
		{"certs bad flag", []string{"certs", "--socket", sock, "--key"}, 2, []string{"unknown flag: --key", "meshctl certs --help"}, nil},
		{"certs without mTLS", []string{"certs", "--socket", disabled}, 2, []string{"mTLS is disabled on this node"}, nil},
		{"identities help", []string{"identities", "--help"}, 0, []string{"Examples:", "meshctl identities --node node-1", "--socket", "--node", "-o, --output"}, nil},
		{"certs help", []string{"certs", "--help"}, 0, []string{"Examples:", "certs [SPIFFE-ID]", "--pem", "openssl", "never"}, nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var out, errb bytes.Buffer
			code := run(tt.args, nil, &out, &errb)
			if code != tt.wantCode {
				t.Fatalf("exit %d, want %d; stderr: %s", code, tt.wantCode, errb.String())
			}
			if code != 0 && out.Len() != 0 {
				t.Errorf("bad usage printed on stdout: %s", out.String())
			}
			all := out.String() + errb.String()
			for _, w := range tt.want {
				if !strings.Contains(all, w) {
					t.Errorf("output lacks %q:\n%s", w, all)
				}
			}
			for _, u := range tt.unwanted {
				if strings.Contains(all, u) {
					t.Errorf("output has %q:\n%s", u, all)
				}
			}
			checkNoKeys(t, all, a.svids)
		})
	}
}

func TestIdentityCommandsJSONRoundTrip(t *testing.T) {
	sock, a := startIdentityAgent(t)
	var out, errb bytes.Buffer
	if code := run([]string{"identities", "--socket", sock, "-o", "json"}, nil, &out, &errb); code != 0 {
		t.Fatalf("exit %d: %s", code, errb.String())
	}
	var got agent.IdentityList
	if err := json.Unmarshal(out.Bytes(), &got); err != nil {
		t.Fatal(err)
	}
	if len(got.Identities) != 2 || got.Identities[1].Serial != a.ids.Identities[1].Serial || !got.Identities[1].NotAfter.Equal(a.ids.Identities[1].NotAfter) ||
		got.Identities[0].RenewIn != 2*time.Second {
		t.Errorf("round trip: %+v", got)
	}
	out.Reset()
	if code := run([]string{"certs", "--socket", sock, "-o", "json", "--pem"}, nil, &out, &errb); code != 0 {
		t.Fatalf("exit %d: %s", code, errb.String())
	}
	var cc agent.CertChains
	if err := json.Unmarshal(out.Bytes(), &cc); err != nil {
		t.Fatal(err)
	}
	if len(cc.Chains) != 1 || len(cc.Chains[0].Certificates) != 2 || cc.Chains[0].Root == nil || cc.Chains[0].Root.PEM == "" {
		t.Errorf("certs round trip: %+v", cc)
	}
}

// field is a line of printCert.
func field(k, v string) string { return fmt.Sprintf("    %-15s %s", k+":", v) }

func TestApprox(t *testing.T) {
	for d, want := range map[time.Duration]string{
		30 * time.Second:                "30s",
		59*time.Minute + 59*time.Second: "59m",
		2 * time.Hour:                   "2h",
		5*time.Hour + 3*time.Minute:     "5h3m",
		364*24*time.Hour + 23*time.Hour: "364d",
	} {
		if got := approx(d); got != want {
			t.Errorf("approx(%s) = %s, want %s", d, got, want)
		}
	}
	if got := relative(-3 * time.Minute); got != "expired 3m ago" {
		t.Errorf("relative(-3m) = %s", got)
	}
}
