package proxytest

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"math/big"
	"net/url"
	"testing"
	"time"
)

// CA is an in-memory certificate authority of one trust domain for tests:
// an ECDSA P-256 root that issues X509-SVID-shaped leaves.
type CA struct {
	TrustDomain string
	Cert        *x509.Certificate
	CertPEM     []byte // the root, the trust bundle
	key         *ecdsa.PrivateKey
}

// SVID is an issued leaf and its key.
type SVID struct {
	ID      string // the URI SAN it was issued for
	Cert    *x509.Certificate
	CertPEM []byte // the leaf (the root signs it directly)
	KeyPEM  []byte // PKCS#8
	TLS     tls.Certificate
}

// SPIFFEID is spiffe://<td>/ns/<ns>/sa/<sa>.
func SPIFFEID(td, ns, sa string) string { return "spiffe://" + td + "/ns/" + ns + "/sa/" + sa }

// NewCA makes a root for trustDomain, valid from an hour ago for a day.
func NewCA(t testing.TB, trustDomain string) *CA {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	now := time.Now()
	tmpl := &x509.Certificate{
		SerialNumber:          serial(t),
		Subject:               pkix.Name{Organization: []string{"nodemesh test CA"}, CommonName: trustDomain},
		NotBefore:             now.Add(-time.Hour),
		NotAfter:              now.Add(24 * time.Hour),
		IsCA:                  true,
		BasicConstraintsValid: true,
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign,
		URIs:                  []*url.URL{{Scheme: "spiffe", Host: trustDomain}},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	return &CA{TrustDomain: trustDomain, Cert: cert, key: key, CertPEM: pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})}
}

// Issue signs an X509-SVID for the SPIFFE ID id: exactly one URI SAN, not
// a CA, digitalSignature (critical) key usage, serverAuth and clientAuth
// extended key usage, valid from a minute ago for an hour. Tweaks break
// it as a test needs (Expired, NotYetValid, ExtraURI, CALeaf, ...).
func (ca *CA) Issue(t testing.TB, id string, tweaks ...func(*x509.Certificate)) *SVID {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	u, err := url.Parse(id)
	if err != nil {
		t.Fatal(err)
	}
	now := time.Now()
	tmpl := &x509.Certificate{
		SerialNumber:          serial(t),
		Subject:               pkix.Name{Organization: []string{"SPIFFE"}},
		NotBefore:             now.Add(-time.Minute),
		NotAfter:              now.Add(time.Hour),
		BasicConstraintsValid: true,
		KeyUsage:              x509.KeyUsageDigitalSignature,
		ExtKeyUsage:           []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth},
		URIs:                  []*url.URL{u},
	}
	for _, tw := range tweaks {
		tw(tmpl)
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.Cert, &key.PublicKey, ca.key)
	if err != nil {
		t.Fatal(err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	pk, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	s := &SVID{ID: id, Cert: cert,
		CertPEM: pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}),
		KeyPEM:  pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: pk})}
	if s.TLS, err = tls.X509KeyPair(s.CertPEM, s.KeyPEM); err != nil {
		t.Fatal(err)
	}
	return s
}

// SVID issues the SVID of a service account of the CA's trust domain.
func (ca *CA) SVID(t testing.TB, ns, sa string, tweaks ...func(*x509.Certificate)) *SVID {
	t.Helper()
	return ca.Issue(t, SPIFFEID(ca.TrustDomain, ns, sa), tweaks...)
}

// Expired makes a leaf that expired a minute ago.
func Expired(c *x509.Certificate) {
	c.NotBefore, c.NotAfter = time.Now().Add(-2*time.Hour), time.Now().Add(-time.Minute)
}

// NotYetValid makes a leaf valid from an hour on.
func NotYetValid(c *x509.Certificate) {
	c.NotBefore, c.NotAfter = time.Now().Add(time.Hour), time.Now().Add(2*time.Hour)
}

// CALeaf makes the leaf a CA (what an X509-SVID must not be).
func CALeaf(c *x509.Certificate) {
	c.IsCA = true
	c.KeyUsage |= x509.KeyUsageCertSign
}

// ExtraURI adds a second URI SAN.
func ExtraURI(uri string) func(*x509.Certificate) {
	return func(c *x509.Certificate) {
		u, err := url.Parse(uri)
		if err != nil {
			panic(err)
		}
		c.URIs = append(c.URIs, u)
	}
}

// Lifetime sets the validity to [now-1m, now+d).
func Lifetime(d time.Duration) func(*x509.Certificate) {
	return func(c *x509.Certificate) { c.NotBefore, c.NotAfter = time.Now().Add(-time.Minute), time.Now().Add(d) }
}

func serial(t testing.TB) *big.Int {
	n, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 127))
	if err != nil {
		t.Fatal(err)
	}
	return n
}
