package certs_test

import (
	"bytes"
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/asn1"
	"encoding/base64"
	"encoding/pem"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/nodemesh/nodemesh/api"
	"github.com/nodemesh/nodemesh/certs"
	"github.com/nodemesh/nodemesh/certs/certstest"
	"github.com/nodemesh/nodemesh/certs/worldauth"
)

var (
	td  = spiffeid.RequireTrustDomainFromString("cluster.local")
	web = certs.Workload{Namespace: "prod", Pod: "web-1", ServiceAccount: "web"}
	// t0 is a whole second: certificates carry times in seconds.
	t0 = time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)
)

func newCA(t *testing.T, clock certs.Clock, tweak ...func(*certs.CAConfig)) *certs.CA {
	t.Helper()
	cfg := certs.CAConfig{TrustDomain: "cluster.local", Clock: clock}
	for _, f := range tweak {
		f(&cfg)
	}
	return certstest.NewCA(t, cfg, nil)
}

// TestSignIssuesX509SVID checks every property the X509-SVID standard and
// issue 5 ask of a leaf and of the root.
func TestSignIssuesX509SVID(t *testing.T) {
	ca := newCA(t, certstest.NewClock(t0))
	svid := certstest.IssueSVID(t, ca, "node-a", td, web)
	leaf := svid.Leaf()

	if got := fmt.Sprint(leaf.URIs); got != "["+webID+"]" {
		t.Errorf("URI SANs %s, want exactly [%s]", got, webID)
	}
	if len(leaf.DNSNames)+len(leaf.IPAddresses)+len(leaf.EmailAddresses) > 0 {
		t.Errorf("other SANs: %v %v %v", leaf.DNSNames, leaf.IPAddresses, leaf.EmailAddresses)
	}
	if leaf.IsCA || !leaf.BasicConstraintsValid {
		t.Errorf("basicConstraints: present %v, CA %v; want present, CA false", leaf.BasicConstraintsValid, leaf.IsCA)
	}
	if leaf.KeyUsage != x509.KeyUsageDigitalSignature {
		t.Errorf("key usage %b, want digitalSignature only", leaf.KeyUsage)
	}
	for _, oid := range []asn1.ObjectIdentifier{{2, 5, 29, 19}, {2, 5, 29, 15}} { // basicConstraints, keyUsage
		if !criticalExt(leaf, oid) {
			t.Errorf("extension %s not present and critical", oid)
		}
	}
	if fmt.Sprint(leaf.ExtKeyUsage) != fmt.Sprint([]x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth}) {
		t.Errorf("extended key usage %v, want serverAuth and clientAuth", leaf.ExtKeyUsage)
	}
	if want := t0.Add(-5 * time.Minute); !leaf.NotBefore.Equal(want) {
		t.Errorf("NotBefore %s, want %s (backdated 5m)", leaf.NotBefore, want)
	}
	if want := t0.Add(time.Hour); !leaf.NotAfter.Equal(want) {
		t.Errorf("NotAfter %s, want %s (1h)", leaf.NotAfter, want)
	}
	if leaf.SignatureAlgorithm != x509.ECDSAWithSHA256 {
		t.Errorf("signature algorithm %s", leaf.SignatureAlgorithm)
	}
	if n := len(svid.Chain()); n != 1 {
		t.Errorf("chain of %d certificates, want the leaf only", n)
	}
	if id, err := certs.VerifySVID(svid.Chain(), ca.Bundle(), t0); err != nil || id.String() != webID {
		t.Errorf("VerifySVID: %s, %v", id, err)
	}

	// Serials: random, positive, at most 128 bits.
	seen := map[string]bool{}
	long := false
	for range 64 {
		s := certstest.IssueSVID(t, ca, "node-a", td, web).Leaf().SerialNumber
		if s.Sign() <= 0 || s.BitLen() > 128 || seen[s.String()] {
			t.Fatalf("serial %s: not positive, longer than 128 bits, or repeated", s)
		}
		seen[s.String()] = true
		long = long || s.BitLen() > 100
	}
	if !long {
		t.Error("no serial of more than 100 bits in 64: not 128 random bits")
	}

	roots := ca.Roots()
	if len(roots) != 1 || roots[0].State != certs.RootActive {
		t.Fatalf("roots %+v", roots)
	}
	root := roots[0].Cert
	pub, ok := root.PublicKey.(*ecdsa.PublicKey)
	if !ok || pub.Curve != elliptic.P256() {
		t.Errorf("root key %T, want ECDSA P-256", root.PublicKey)
	}
	if !root.IsCA || root.MaxPathLen != 0 || !root.MaxPathLenZero || root.KeyUsage != x509.KeyUsageCertSign|x509.KeyUsageCRLSign {
		t.Errorf("root: CA %v, path length %d (zero %v), key usage %b", root.IsCA, root.MaxPathLen, root.MaxPathLenZero, root.KeyUsage)
	}
	if fmt.Sprint(root.URIs) != "[spiffe://cluster.local]" {
		t.Errorf("root URI SANs %v", root.URIs)
	}
	if !bytes.Equal(leaf.AuthorityKeyId, root.SubjectKeyId) || len(root.SubjectKeyId) == 0 {
		t.Error("leaf's authority key ID is not the root's subject key ID")
	}
}

func criticalExt(c *x509.Certificate, oid asn1.ObjectIdentifier) bool {
	for _, e := range c.Extensions {
		if e.Id.Equal(oid) {
			return e.Critical
		}
	}
	return false
}

func csrWith(t *testing.T, key crypto.Signer, tmpl *x509.CertificateRequest) *x509.CertificateRequest {
	t.Helper()
	der, err := x509.CreateCertificateRequest(rand.Reader, tmpl, key)
	if err != nil {
		t.Fatal(err)
	}
	csr, err := x509.ParseCertificateRequest(der)
	if err != nil {
		t.Fatal(err)
	}
	return csr
}

func mustURL(s string) *url.URL {
	u, err := url.Parse(s)
	if err != nil {
		panic(err)
	}
	return u
}

// TestSignRefusesBadCSRs: a CSR may ask for the workload's SPIFFE ID and
// nothing else, with a key the proxies can use.
func TestSignRefusesBadCSRs(t *testing.T) {
	ca := newCA(t, certstest.NewClock(t0))
	id := mustURL(webID)
	p384, _ := ecdsa.GenerateKey(elliptic.P384(), rand.Reader)
	rsa1024, _ := rsa.GenerateKey(rand.Reader, 1024)
	bcCA, _ := asn1.Marshal(struct{ IsCA bool }{true})
	tests := []struct {
		name     string
		workload certs.Workload
		csr      func() *x509.CertificateRequest
		wantErr  string
		invalid  bool // wraps ErrInvalidCSR
	}{
		{name: "no CSR", csr: func() *x509.CertificateRequest { return nil }, wantErr: "invalid CSR: none", invalid: true},
		{name: "bad signature", csr: func() *x509.CertificateRequest {
			_, c := certstest.NewCSR(t, id)
			c.Signature[len(c.Signature)/2] ^= 0xff
			return c
		}, wantErr: "invalid CSR: signature", invalid: true},
		{name: "another service account's ID", csr: func() *x509.CertificateRequest {
			_, c := certstest.NewCSR(t, mustURL("spiffe://cluster.local/ns/prod/sa/admin"))
			return c
		}, wantErr: "want exactly [" + webID + "]", invalid: true},
		{name: "another trust domain", csr: func() *x509.CertificateRequest {
			_, c := certstest.NewCSR(t, mustURL("spiffe://other.test/ns/prod/sa/web"))
			return c
		}, wantErr: "want exactly", invalid: true},
		{name: "two URIs", csr: func() *x509.CertificateRequest {
			_, c := certstest.NewCSR(t, id, func(r *x509.CertificateRequest) {
				r.URIs = append(r.URIs, mustURL("spiffe://cluster.local/ns/prod/sa/admin"))
			})
			return c
		}, wantErr: "want exactly", invalid: true},
		{name: "no URI", csr: func() *x509.CertificateRequest {
			_, c := certstest.NewCSR(t, id, func(r *x509.CertificateRequest) { r.URIs = nil })
			return c
		}, wantErr: "requests URI SANs []", invalid: true},
		{name: "a DNS name too", csr: func() *x509.CertificateRequest {
			_, c := certstest.NewCSR(t, id, func(r *x509.CertificateRequest) { r.DNSNames = []string{"web.prod.svc"} })
			return c
		}, wantErr: "names besides the SPIFFE ID", invalid: true},
		{name: "an IP address too", csr: func() *x509.CertificateRequest {
			_, c := certstest.NewCSR(t, id, func(r *x509.CertificateRequest) { r.IPAddresses = []net.IP{net.IPv4(10, 0, 0, 1)} })
			return c
		}, wantErr: "names besides the SPIFFE ID", invalid: true},
		{name: "an email address too", csr: func() *x509.CertificateRequest {
			_, c := certstest.NewCSR(t, id, func(r *x509.CertificateRequest) { r.EmailAddresses = []string{"a@b.c"} })
			return c
		}, wantErr: "names besides the SPIFFE ID", invalid: true},
		{name: "asks to be a CA", csr: func() *x509.CertificateRequest {
			_, c := certstest.NewCSR(t, id, func(r *x509.CertificateRequest) {
				r.ExtraExtensions = []pkix.Extension{{Id: asn1.ObjectIdentifier{2, 5, 29, 19}, Critical: true, Value: bcCA}}
			})
			return c
		}, wantErr: "requests extension 2.5.29.19", invalid: true},
		{name: "P-384 key", csr: func() *x509.CertificateRequest {
			return csrWith(t, p384, &x509.CertificateRequest{URIs: []*url.URL{id}})
		}, wantErr: "P-384, want P-256", invalid: true},
		{name: "1024-bit RSA key", csr: func() *x509.CertificateRequest {
			return csrWith(t, rsa1024, &x509.CertificateRequest{URIs: []*url.URL{id}})
		}, wantErr: "1024-bit RSA key", invalid: true},
		{name: "workload without service account", workload: certs.Workload{Namespace: "prod", Pod: "web-1"}, csr: func() *x509.CertificateRequest {
			_, c := certstest.NewCSR(t, id)
			return c
		}, wantErr: "namespace and service account are required"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			w := tt.workload
			if w == (certs.Workload{}) {
				w = web
			}
			chain, err := ca.Sign(context.Background(), certs.SignRequest{Node: "node-a", Workload: w, CSR: tt.csr()})
			if err == nil {
				t.Fatalf("signed %v", chain[0].URIs)
			}
			if !strings.Contains(err.Error(), tt.wantErr) {
				t.Fatalf("error %q, want %q in it", err, tt.wantErr)
			}
			if errors.Is(err, certs.ErrInvalidCSR) != tt.invalid {
				t.Fatalf("errors.Is(ErrInvalidCSR) = %v, want %v", !tt.invalid, tt.invalid)
			}
		})
	}
}

// TestSignAsksTheAuthorizer: a node gets the SVID of a workload only if the
// authorizer says the workload runs there, and the error names why not.
func TestSignAsksTheAuthorizer(t *testing.T) {
	w := &api.World{Pods: []api.Pod{{
		Metadata: api.ObjectMeta{Namespace: "prod", Name: "web-1"},
		Spec:     api.PodSpec{NodeName: "node-a", ServiceAccountName: "web"},
	}}}
	ca := certstest.NewCA(t, certs.CAConfig{Clock: certstest.NewClock(t0)}, worldauth.New(w))
	_, csr := certstest.NewCSR(t, mustURL(webID))
	if _, err := ca.Sign(context.Background(), certs.SignRequest{Node: "node-a", Workload: web, CSR: csr}); err != nil {
		t.Fatalf("the pod's own node was refused: %v", err)
	}
	_, err := ca.Sign(context.Background(), certs.SignRequest{Node: "node-b", Workload: web, CSR: csr})
	var denied *certs.DeniedError
	if !errors.As(err, &denied) || denied.Reason != certs.DenyPodOnOtherNode {
		t.Fatalf("node-b asking for node-a's pod: %v", err)
	}
	want := `sign ` + webID + ` for prod/web-1 requested by node "node-b": denied: pod-on-other-node: pod prod/web-1 runs on node node-a, not on node node-b`
	if err.Error() != want {
		t.Fatalf("error\n got %s\nwant %s", err, want)
	}
}

// TestCARootRotation follows a root through a rotation: trusted before it
// signs, signing from its activation, the old root trusted for the overlap
// and then dropped, and watchers told at each bundle change without anyone
// calling the CA.
func TestCARootRotation(t *testing.T) {
	clock := certstest.NewClock(t0)
	ca := newCA(t, clock)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	bundles := make(chan *certs.Bundle, 10)
	go ca.WatchBundle(ctx, func(b *certs.Bundle) { bundles <- b })
	next := func() *certs.Bundle {
		t.Helper()
		select {
		case b := <-bundles:
			return b
		case <-time.After(10 * time.Second):
			t.Fatal("no bundle update")
			return nil
		}
	}
	b1 := next()
	root1 := ca.Roots()[0].Cert
	if b1.Version() != 1 || len(b1.Roots(td)) != 1 {
		t.Fatalf("first bundle: version %d, %d roots", b1.Version(), len(b1.Roots(td)))
	}

	info, err := ca.AddRoot(t0.Add(10 * time.Minute))
	if err != nil {
		t.Fatal(err)
	}
	root2 := info.Cert
	b2 := next()
	if b2.Version() != 2 || len(b2.Roots(td)) != 2 {
		t.Fatalf("after AddRoot: version %d, %d roots; want both roots", b2.Version(), len(b2.Roots(td)))
	}
	if st := states(ca.Roots()); st != "active pending" {
		t.Fatalf("states %s", st)
	}
	old := certstest.IssueSVID(t, ca, "node-a", td, web)
	if !signedBy(old, root1) {
		t.Fatal("the pending root signed before its activation")
	}

	clock.Advance(10 * time.Minute)
	renewed := certstest.IssueSVID(t, ca, "node-a", td, web)
	if !signedBy(renewed, root2) {
		t.Fatal("the new root does not sign after its activation")
	}
	roots := ca.Roots()
	if st := states(roots); st != "retiring active" || !roots[0].DropAt.Equal(t0.Add(70*time.Minute)) {
		t.Fatalf("states %s, old root dropped at %s", st, roots[0].DropAt)
	}
	// SVIDs of the old root stay valid until they expire.
	if _, err := certs.VerifySVID(old.Chain(), ca.Bundle(), t0.Add(59*time.Minute)); err != nil {
		t.Fatalf("old root's SVID refused during the overlap: %v", err)
	}

	clock.Advance(60 * time.Minute)
	b3 := next()
	if b3.Version() != 3 || len(b3.Roots(td)) != 1 || !b3.Roots(td)[0].Equal(root2) {
		t.Fatalf("after the overlap: version %d, %d roots; want the new root alone", b3.Version(), len(b3.Roots(td)))
	}
	if _, err := certs.VerifySVID(renewed.Chain(), b3, clock.Now()); err != nil {
		t.Fatalf("new root's SVID: %v", err)
	}
	if st := states(ca.Roots()); st != "active" {
		t.Fatalf("states %s", st)
	}
	if _, err := ca.AddRoot(t0); err != nil {
		t.Fatalf("AddRoot in the past means now: %v", err)
	}
	if _, err := ca.AddRoot(clock.Now().Add(-time.Hour)); err != nil {
		t.Fatal(err)
	}
	if _, err := ca.AddRoot(clock.Now().Add(time.Hour)); err != nil {
		t.Fatal(err)
	}
	if _, err := ca.AddRoot(clock.Now().Add(time.Minute)); err == nil || !strings.Contains(err.Error(), "is before that of root") {
		t.Fatalf("activation before the latest root's: %v", err)
	}
}

func states(rs []certs.RootInfo) string {
	var s []string
	for _, r := range rs {
		s = append(s, string(r.State))
	}
	return strings.Join(s, " ")
}

func signedBy(s *certs.SVID, root *x509.Certificate) bool {
	return s.Leaf().CheckSignatureFrom(root) == nil
}

func writeRoot(t *testing.T, dir string, a *certstest.Authority, key crypto.Signer) (certFile, keyFile string) {
	t.Helper()
	certFile, keyFile = filepath.Join(dir, "root.crt"), filepath.Join(dir, "root.key")
	der, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(certFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: a.Cert.Raw}), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(keyFile, pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der}), 0o600); err != nil {
		t.Fatal(err)
	}
	return certFile, keyFile
}

func TestCALoadsRoot(t *testing.T) {
	op := certstest.NewAuthority(t, "cluster.local")
	stranger := certstest.NewAuthority(t, "cluster.local")
	otherTD := certstest.NewAuthority(t, "other.test")
	leaf, leafKey := op.Mint(t, webID)
	tests := []struct {
		name    string
		files   func(dir string) (string, string)
		wantErr string
	}{
		{name: "operator root", files: func(dir string) (string, string) { return writeRoot(t, dir, op, op.Key) }},
		{name: "key of another root", files: func(dir string) (string, string) { return writeRoot(t, dir, op, stranger.Key) }, wantErr: "does not match certificate"},
		{name: "not a CA", files: func(dir string) (string, string) {
			return writeRoot(t, dir, &certstest.Authority{Cert: leaf[0]}, leafKey)
		}, wantErr: "not a CA certificate"},
		{name: "another trust domain", files: func(dir string) (string, string) { return writeRoot(t, dir, otherTD, otherTD.Key) }, wantErr: "is not trust domain spiffe://cluster.local"},
		{name: "no such file", files: func(dir string) (string, string) { return filepath.Join(dir, "x.crt"), filepath.Join(dir, "x.key") }, wantErr: "no such file"},
		{name: "garbage key", files: func(dir string) (string, string) {
			c, k := writeRoot(t, dir, op, op.Key)
			os.WriteFile(k, []byte("-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n"), 0o600)
			return c, k
		}, wantErr: "cannot parse"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c, k := tt.files(t.TempDir())
			ca, err := certs.NewCA(certs.CAConfig{RootCertFile: c, RootKeyFile: k, Clock: certstest.NewClock(time.Now())}, certstest.AllowAll{})
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("error %v, want %q", err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			s := certstest.IssueSVID(t, ca, "node-a", td, web)
			if !signedBy(s, op.Cert) || !ca.Bundle().Roots(td)[0].Equal(op.Cert) {
				t.Fatal("the loaded root neither signs nor is in the bundle")
			}
		})
	}
}

func TestCAConfigValidate(t *testing.T) {
	tests := []struct {
		name    string
		tweak   func(*certs.CAConfig)
		wantErr string
	}{
		{name: "defaults", tweak: func(*certs.CAConfig) {}},
		{name: "bad trust domain", tweak: func(c *certs.CAConfig) { c.TrustDomain = "Cluster Local" }, wantErr: "--trust-domain"},
		{name: "negative ttl", tweak: func(c *certs.CAConfig) { c.SVIDTTL = -time.Hour }, wantErr: "--svid-ttl"},
		{name: "backdate beyond ttl", tweak: func(c *certs.CAConfig) { c.Backdate = 2 * time.Hour }, wantErr: "--svid-backdate"},
		{name: "overlap shorter than an SVID's life", tweak: func(c *certs.CAConfig) { c.RootOverlap = 30 * time.Minute }, wantErr: "--ca-root-overlap"},
		{name: "short root", tweak: func(c *certs.CAConfig) { c.RootTTL = time.Hour }, wantErr: "--ca-root-ttl"},
		{name: "cert without key", tweak: func(c *certs.CAConfig) { c.RootCertFile = "x" }, wantErr: "go together"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var c certs.CAConfig
			c.Defaults()
			tt.tweak(&c)
			err := c.Validate()
			if (err != nil) != (tt.wantErr != "") || (err != nil && !strings.Contains(err.Error(), tt.wantErr)) {
				t.Fatalf("Validate: %v, want %q", err, tt.wantErr)
			}
		})
	}
}

// TestKeysStayPrivate: no CA method hands out a key, the CA's logs never
// carry its key, and printing or logging an SVID never shows the SVID's.
func TestKeysStayPrivate(t *testing.T) {
	signer := reflect.TypeOf((*crypto.Signer)(nil)).Elem()
	caType := reflect.TypeOf(&certs.CA{})
	for i := range caType.NumMethod() {
		m := caType.Method(i)
		for j := range m.Type.NumOut() {
			out := m.Type.Out(j)
			if out.Implements(signer) || (out.Kind() == reflect.Interface && signer.Implements(out) && out.NumMethod() > 0) {
				t.Errorf("CA.%s returns %s, which can be a key", m.Name, out)
			}
			if out.Kind() == reflect.Struct {
				for k := range out.NumField() {
					if f := out.Field(k); f.Type.Implements(signer) || f.Type == reflect.TypeOf((*crypto.PrivateKey)(nil)).Elem() {
						t.Errorf("CA.%s returns %s with key field %s", m.Name, out, f.Name)
					}
				}
			}
		}
	}

	op := certstest.NewAuthority(t, "cluster.local")
	c, k := writeRoot(t, t.TempDir(), op, op.Key)
	var logs bytes.Buffer
	log := slog.New(slog.NewJSONHandler(&logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
	ca, err := certs.NewCA(certs.CAConfig{RootCertFile: c, RootKeyFile: k, Logger: log}, worldauth.New(&api.World{Pods: []api.Pod{{
		Metadata: api.ObjectMeta{Namespace: "prod", Name: "web-1"},
		Spec:     api.PodSpec{NodeName: "node-a", ServiceAccountName: "web"},
	}}}))
	if err != nil {
		t.Fatal(err)
	}
	svid := certstest.IssueSVID(t, ca, "node-a", td, web)
	_, csr := certstest.NewCSR(t, mustURL(webID))
	ca.Sign(context.Background(), certs.SignRequest{Node: "node-b", Workload: web, CSR: csr})
	ca.Sign(context.Background(), certs.SignRequest{Node: "node-a", Workload: web, CSR: nil})
	ca.AddRoot(time.Now())
	_ = ca.Roots()
	if !strings.Contains(logs.String(), "svid issued") || !strings.Contains(logs.String(), "denied") {
		t.Fatalf("the CA logged neither issuance nor denial: %s", logs.String())
	}
	assertNoKey(t, "CA logs", logs.String(), op.Key)

	var out bytes.Buffer
	fmt.Fprintf(&out, "%v %+v %#v %s %+v %v ", svid, svid, svid, svid, *svid, []any{*svid})
	slog.New(slog.NewJSONHandler(&out, nil)).Info("x", "svid", svid)
	slog.New(slog.NewTextHandler(&out, nil)).Info("x", "svid", svid)
	if !strings.Contains(out.String(), webID) {
		t.Fatalf("printed SVID does not name its ID: %s", out.String())
	}
	assertNoKey(t, "printed SVID", out.String(), svid.PrivateKey())
}

func assertNoKey(t *testing.T, what, s string, key crypto.Signer) {
	t.Helper()
	der, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	d := key.(*ecdsa.PrivateKey).D
	for _, needle := range []string{
		base64.StdEncoding.EncodeToString(der)[40:80], // a stretch of the PEM body
		d.String(), d.Text(16), fmt.Sprintf("%x", d.Bytes()),
	} {
		if strings.Contains(s, needle) {
			t.Fatalf("%s contain the private key (%.16s...)", what, needle)
		}
	}
}
