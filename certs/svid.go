package certs

import (
	"bytes"
	"crypto"
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"log/slog"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
)

// SVID is an X.509-SVID and its private key. It is immutable: a renewal
// makes a new *SVID, so comparing pointers tells whether an SVID changed.
// Printing or logging it never shows the key.
type SVID struct {
	id    spiffeid.ID
	chain []*x509.Certificate
	key   crypto.Signer
}

// NewSVID checks that chain's leaf names exactly one SPIFFE ID and that key
// is the leaf's key. It does not check the chain against a bundle; use
// VerifySVID for that.
func NewSVID(chain []*x509.Certificate, key crypto.Signer) (*SVID, error) {
	if len(chain) == 0 {
		return nil, errors.New("svid: empty certificate chain")
	}
	leaf := chain[0]
	if len(leaf.URIs) != 1 {
		return nil, fmt.Errorf("svid: leaf has %d URI SANs, want exactly one", len(leaf.URIs))
	}
	id, err := spiffeid.FromURI(leaf.URIs[0])
	if err != nil {
		return nil, fmt.Errorf("svid: leaf URI SAN %q: %w", leaf.URIs[0], err)
	}
	if key == nil {
		return nil, fmt.Errorf("svid %s: no private key", id)
	}
	pub, ok := key.Public().(interface{ Equal(crypto.PublicKey) bool })
	if !ok || !pub.Equal(leaf.PublicKey) {
		return nil, fmt.Errorf("svid %s: private key does not match the leaf certificate", id)
	}
	return &SVID{id: id, chain: append([]*x509.Certificate(nil), chain...), key: key}, nil
}

// ID returns the SPIFFE ID.
func (s *SVID) ID() spiffeid.ID { return s.id }

// Leaf returns the SVID's own certificate.
func (s *SVID) Leaf() *x509.Certificate { return s.chain[0] }

// Chain returns the leaf followed by any intermediates (never the root).
func (s *SVID) Chain() []*x509.Certificate { return append([]*x509.Certificate(nil), s.chain...) }

// Serial returns the leaf's serial number in hex.
func (s *SVID) Serial() string { return s.chain[0].SerialNumber.Text(16) }

// NotAfter returns the end of the leaf's validity.
func (s *SVID) NotAfter() time.Time { return s.chain[0].NotAfter }

// PrivateKey returns the SVID's key, for the TLS stack that presents it.
func (s *SVID) PrivateKey() crypto.Signer { return s.key }

// ChainPEM returns the chain as PEM, leaf first: an SDS tls_certificate's
// certificate_chain.
func (s *SVID) ChainPEM() []byte {
	var b bytes.Buffer
	for _, c := range s.chain {
		_ = pem.Encode(&b, &pem.Block{Type: "CERTIFICATE", Bytes: c.Raw})
	}
	return b.Bytes()
}

// KeyPEM returns the key as PKCS#8 PEM: an SDS tls_certificate's
// private_key. Only the proxy that presents the SVID may receive it.
func (s *SVID) KeyPEM() ([]byte, error) {
	der, err := x509.MarshalPKCS8PrivateKey(s.key)
	if err != nil {
		return nil, fmt.Errorf("svid %s: marshal key: %w", s.id, err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der}), nil
}

// TLSCertificate returns the SVID for crypto/tls.
func (s *SVID) TLSCertificate() tls.Certificate {
	c := tls.Certificate{PrivateKey: s.key, Leaf: s.chain[0]}
	for _, x := range s.chain {
		c.Certificate = append(c.Certificate, x.Raw)
	}
	return c
}

// String names the SVID without its key. String, GoString and Format have
// value receivers so that even a copied SVID prints without its key (fmt
// prints a nil *SVID as <nil>).
func (s SVID) String() string {
	if len(s.chain) == 0 {
		return "<empty svid>"
	}
	return fmt.Sprintf("%s (serial %s, not after %s)", s.id, s.Serial(), s.NotAfter().UTC().Format(time.RFC3339))
}

// GoString keeps %#v from printing the key.
func (s SVID) GoString() string { return "certs.SVID{" + s.String() + "}" }

// Format keeps every fmt verb, %+v included, from printing the key.
func (s SVID) Format(f fmt.State, _ rune) { _, _ = f.Write([]byte(s.String())) }

// LogValue logs the SVID's ID, serial and expiry, never its key.
func (s *SVID) LogValue() slog.Value {
	if s == nil {
		return slog.StringValue("<nil svid>")
	}
	return slog.GroupValue(
		slog.String("id", s.id.String()),
		slog.String("serial", s.Serial()),
		slog.Time("not_after", s.NotAfter()),
	)
}
