package xds

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/base64"
	"encoding/hex"
	"encoding/pem"
	"math/big"
	"strings"
	"testing"
	"time"

	adminv3 "github.com/envoyproxy/go-control-plane/envoy/admin/v3"
	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	tlsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/tls/v3"
	"github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"
)

// keyMaterial is a real key and certificate, and every form the key could
// leak in: PEM text, its base64 body, the DER, and the private scalar.
type keyMaterial struct {
	keyPEM, certPEM []byte
	leaks           []string
}

func newKeyMaterial(t *testing.T) keyMaterial {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(42), Subject: pkix.Name{CommonName: "dump test"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour)}
	certDER, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, key.Public(), key)
	if err != nil {
		t.Fatal(err)
	}
	keyDER, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	km := keyMaterial{
		keyPEM:  pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: keyDER}),
		certPEM: pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: certDER}),
	}
	d := key.D.FillBytes(make([]byte, 32))
	b64 := base64.StdEncoding.EncodeToString(keyDER)
	// b64[48:88] is inside the private scalar (bytes 35 to 67 of the DER;
	// its tail is the public key, which the certificate shows too).
	km.leaks = []string{"PRIVATE KEY", b64[:40], b64[48:88], base64.StdEncoding.EncodeToString(km.keyPEM)[:40],
		base64.StdEncoding.EncodeToString(d)[:20], hex.EncodeToString(d)[:20], string(keyDER[:20]), "hunter2",
		base64.StdEncoding.EncodeToString([]byte("hunter2")), base64.StdEncoding.EncodeToString([]byte("ticket-key-material-48-bytes-long-xxxxxxxxxxxxxx"))}
	return km
}

func (km keyMaterial) checkNoLeak(t *testing.T, what string, out []byte) {
	t.Helper()
	for _, l := range km.leaks {
		if bytes.Contains(out, []byte(l)) {
			t.Errorf("%s shows key material %q:\n%s", what, l, out)
		}
	}
}

func inline(b []byte) *corev3.DataSource {
	return &corev3.DataSource{Specifier: &corev3.DataSource_InlineBytes{InlineBytes: b}}
}

// secretResources returns a node's resources with an SVID secret (a real
// key), a password-protected one, and a cluster whose TLS context carries
// a key inline rather than by SDS.
func secretResources(t *testing.T, km keyMaterial) *Resources {
	t.Helper()
	r, err := Build(Input{})
	if err != nil {
		t.Fatal(err)
	}
	r.Secrets = []*tlsv3.Secret{
		{Name: "spiffe://cluster.local/ns/default/sa/web", Type: &tlsv3.Secret_TlsCertificate{TlsCertificate: &tlsv3.TlsCertificate{
			CertificateChain: inline(km.certPEM), PrivateKey: inline(km.keyPEM)}}},
		{Name: "with-password", Type: &tlsv3.Secret_TlsCertificate{TlsCertificate: &tlsv3.TlsCertificate{
			CertificateChain: inline(km.certPEM),
			PrivateKey:       &corev3.DataSource{Specifier: &corev3.DataSource_InlineString{InlineString: string(km.keyPEM)}},
			Password:         &corev3.DataSource{Specifier: &corev3.DataSource_InlineString{InlineString: "hunter2"}}}}},
		{Name: TrustBundleSecretName, Type: &tlsv3.Secret_ValidationContext{ValidationContext: &tlsv3.CertificateValidationContext{
			TrustedCa: inline(km.certPEM)}}},
	}
	r.Clusters = append(r.Clusters, &clusterv3.Cluster{Name: "inline-tls", TransportSocket: tlsTransportSocket(&tlsv3.UpstreamTlsContext{
		CommonTlsContext: &tlsv3.CommonTlsContext{TlsCertificates: []*tlsv3.TlsCertificate{{
			CertificateChain: inline(km.certPEM), PrivateKey: inline(km.keyPEM)}}}})})
	if err := r.finish(); err != nil {
		t.Fatal(err)
	}
	return r
}

func TestConfigDumpRedactsKeys(t *testing.T) {
	const node = "node-1"
	km := newKeyMaterial(t)
	s := NewServer(nil, nil)
	r := secretResources(t, km)
	now := time.Now()
	s.mu.Lock()
	ns := s.node(node)
	ns.setVersion(r, now)
	// The proxy rejected the secrets and the clusters: their dump carries
	// the failed configuration too.
	for _, typ := range []resource.Type{resource.SecretType, resource.ClusterType} {
		ns.typeStatus(typ).NACK = &NACKError{Node: node, TypeURL: typ, Version: r.TypeVersion(typ), Message: "rejected", Time: now}
	}
	s.mu.Unlock()

	for _, typ := range []string{"", "all", "secrets", "secret", resource.SecretType, "clusters", "listeners", "routes"} {
		b, err := s.ConfigDump(node, typ)
		if err != nil {
			t.Fatalf("dump %q: %v", typ, err)
		}
		km.checkNoLeak(t, "dump "+typ, b)
		if typ != "listeners" && typ != "routes" && !bytes.Contains(b, []byte(Redacted)) {
			t.Errorf("dump %q: nothing redacted:\n%s", typ, b)
		}
		d := &adminv3.ConfigDump{}
		if err := protojson.Unmarshal(b, d); err != nil {
			t.Fatalf("dump %q is not a ConfigDump: %v", typ, err)
		}
		for _, c := range d.GetConfigs() {
			switch c.GetTypeUrl() {
			case "type.googleapis.com/envoy.admin.v3.SecretsConfigDump":
				checkSecretsDump(t, typ, c, km)
			case "type.googleapis.com/envoy.admin.v3.ClustersConfigDump":
				checkClustersDump(t, typ, c, km)
			}
		}
	}

	// What the proxy is served keeps its keys.
	if got := r.Secrets[0].GetTlsCertificate().GetPrivateKey().GetInlineBytes(); !bytes.Equal(got, km.keyPEM) {
		t.Error("the dump changed the served secret")
	}
	if got := s.Resources(node).Clusters[len(r.Clusters)-1]; !bytes.Contains(mustMarshal(t, got), km.keyPEM) {
		t.Error("the dump changed the served cluster")
	}
}

func mustMarshal(t *testing.T, m proto.Message) []byte {
	t.Helper()
	b, err := proto.Marshal(m)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func checkSecretsDump(t *testing.T, typ string, c interface {
	UnmarshalTo(proto.Message) error
}, km keyMaterial) {
	t.Helper()
	sd := &adminv3.SecretsConfigDump{}
	if err := c.UnmarshalTo(sd); err != nil {
		t.Fatal(err)
	}
	if len(sd.GetDynamicActiveSecrets()) != 3 {
		t.Fatalf("dump %q: %d secrets, want 3", typ, len(sd.GetDynamicActiveSecrets()))
	}
	for _, ds := range sd.GetDynamicActiveSecrets() {
		if ds.GetClientStatus() != adminv3.ClientResourceStatus_NACKED || ds.GetErrorState().GetFailedConfiguration() == nil {
			t.Errorf("dump %q: secret %s: want NACKED with the failed configuration: %v", typ, ds.GetName(), ds)
		}
		for what, a := range map[string]interface {
			UnmarshalTo(proto.Message) error
		}{"active": ds.GetSecret(), "failed_configuration": ds.GetErrorState().GetFailedConfiguration()} {
			sec := &tlsv3.Secret{}
			if err := a.UnmarshalTo(sec); err != nil {
				t.Fatal(err)
			}
			switch sec.GetName() {
			case TrustBundleSecretName:
				if !bytes.Equal(sec.GetValidationContext().GetTrustedCa().GetInlineBytes(), km.certPEM) {
					t.Errorf("dump %q %s: the trust bundle lost its certificate: %v", typ, what, sec)
				}
			default:
				tc := sec.GetTlsCertificate()
				if !bytes.Equal(tc.GetCertificateChain().GetInlineBytes(), km.certPEM) {
					t.Errorf("dump %q %s %s: certificate chain not shown: %v", typ, what, sec.GetName(), tc)
				}
				if tc.GetPrivateKey().GetInlineString() != "[redacted]" {
					t.Errorf("dump %q %s %s: private_key %v, want inline_string [redacted]", typ, what, sec.GetName(), tc.GetPrivateKey())
				}
				if sec.GetName() == "with-password" && tc.GetPassword().GetInlineString() != "[redacted]" {
					t.Errorf("dump %q %s: password %v", typ, what, tc.GetPassword())
				}
			}
		}
	}
}

func checkClustersDump(t *testing.T, typ string, c interface {
	UnmarshalTo(proto.Message) error
}, km keyMaterial) {
	t.Helper()
	cd := &adminv3.ClustersConfigDump{}
	if err := c.UnmarshalTo(cd); err != nil {
		t.Fatal(err)
	}
	found := false
	for _, dc := range cd.GetDynamicActiveClusters() {
		for what, a := range map[string]interface {
			UnmarshalTo(proto.Message) error
		}{"active": dc.GetCluster(), "failed_configuration": dc.GetErrorState().GetFailedConfiguration()} {
			cl := &clusterv3.Cluster{}
			if err := a.UnmarshalTo(cl); err != nil {
				t.Fatalf("dump %q %s: %v", typ, what, err)
			}
			if cl.GetName() != "inline-tls" {
				continue
			}
			found = true
			ctx := &tlsv3.UpstreamTlsContext{}
			if err := cl.GetTransportSocket().GetTypedConfig().UnmarshalTo(ctx); err != nil {
				t.Fatal(err)
			}
			tc := ctx.GetCommonTlsContext().GetTlsCertificates()[0]
			if !bytes.Equal(tc.GetCertificateChain().GetInlineBytes(), km.certPEM) || tc.GetPrivateKey().GetInlineString() != "[redacted]" {
				t.Errorf("dump %q %s: inline TLS certificate %v: want the chain and a redacted key", typ, what, tc)
			}
		}
	}
	if !found {
		t.Errorf("dump %q: no inline-tls cluster", typ)
	}
}

func TestRedact(t *testing.T) {
	km := newKeyMaterial(t)
	ticket := []byte("ticket-key-material-48-bytes-long-xxxxxxxxxxxxxx")
	tests := []struct {
		name  string
		in    *tlsv3.Secret
		check func(*tlsv3.Secret) bool
	}{
		{"key file names are kept", &tlsv3.Secret{Type: &tlsv3.Secret_TlsCertificate{TlsCertificate: &tlsv3.TlsCertificate{
			PrivateKey: &corev3.DataSource{Specifier: &corev3.DataSource_Filename{Filename: "/etc/key.pem"}}}}},
			func(s *tlsv3.Secret) bool {
				return s.GetTlsCertificate().GetPrivateKey().GetFilename() == "/etc/key.pem"
			}},
		{"pkcs12", &tlsv3.Secret{Type: &tlsv3.Secret_TlsCertificate{TlsCertificate: &tlsv3.TlsCertificate{Pkcs12: inline(km.keyPEM)}}},
			func(s *tlsv3.Secret) bool { return s.GetTlsCertificate().GetPkcs12().GetInlineString() == Redacted }},
		{"session ticket keys", &tlsv3.Secret{Type: &tlsv3.Secret_SessionTicketKeys{SessionTicketKeys: &tlsv3.TlsSessionTicketKeys{Keys: []*corev3.DataSource{inline(ticket)}}}},
			func(s *tlsv3.Secret) bool { return s.GetSessionTicketKeys().GetKeys()[0].GetInlineString() == Redacted }},
		{"generic secret", &tlsv3.Secret{Type: &tlsv3.Secret_GenericSecret{GenericSecret: &tlsv3.GenericSecret{
			Secret: inline([]byte("hunter2")), Secrets: map[string]*corev3.DataSource{"k": inline(km.keyPEM)}}}},
			func(s *tlsv3.Secret) bool {
				g := s.GetGenericSecret()
				return g.GetSecret().GetInlineString() == Redacted && g.GetSecrets()["k"].GetInlineString() == Redacted
			}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			before := proto.Clone(tt.in)
			got := Redact(tt.in).(*tlsv3.Secret)
			if !tt.check(got) {
				t.Errorf("redacted: %v", got)
			}
			b, err := protojson.Marshal(got)
			if err != nil {
				t.Fatal(err)
			}
			km.checkNoLeak(t, tt.name, b)
			if strings.Contains(string(b), string(ticket)) {
				t.Errorf("ticket key shown: %s", b)
			}
			if !proto.Equal(before, tt.in) {
				t.Error("Redact changed its argument")
			}
		})
	}
	if Redact(nil) != nil {
		t.Error("Redact(nil)")
	}
}
