package certs

import (
	"bytes"
	"crypto/x509"
	"encoding/pem"
	"sort"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
)

// Bundle is a versioned set of trusted root certificates per trust domain.
// A root vouches only for SPIFFE IDs of its own trust domain. A Bundle is
// immutable; a change (a CA rotation adding or dropping a root) makes a new
// one with a higher Version. A nil *Bundle trusts nothing.
type Bundle struct {
	version uint64
	roots   map[spiffeid.TrustDomain][]*x509.Certificate
	pools   map[spiffeid.TrustDomain]*x509.CertPool
}

// NewBundle returns a bundle of the given roots. Trust domains without roots
// are left out.
func NewBundle(version uint64, roots map[spiffeid.TrustDomain][]*x509.Certificate) *Bundle {
	b := &Bundle{
		version: version,
		roots:   make(map[spiffeid.TrustDomain][]*x509.Certificate, len(roots)),
		pools:   make(map[spiffeid.TrustDomain]*x509.CertPool, len(roots)),
	}
	for td, rs := range roots {
		if len(rs) == 0 {
			continue
		}
		b.roots[td] = append([]*x509.Certificate(nil), rs...)
		pool := x509.NewCertPool()
		for _, r := range rs {
			pool.AddCert(r)
		}
		b.pools[td] = pool
	}
	return b
}

// Version increases with every change of the roots of the bundle's source.
func (b *Bundle) Version() uint64 {
	if b == nil {
		return 0
	}
	return b.version
}

// TrustDomains returns the trust domains the bundle has roots for, sorted.
func (b *Bundle) TrustDomains() []spiffeid.TrustDomain {
	if b == nil {
		return nil
	}
	tds := make([]spiffeid.TrustDomain, 0, len(b.roots))
	for td := range b.roots {
		tds = append(tds, td)
	}
	sort.Slice(tds, func(i, j int) bool { return tds[i].Name() < tds[j].Name() })
	return tds
}

// Roots returns the roots trusted for td.
func (b *Bundle) Roots(td spiffeid.TrustDomain) []*x509.Certificate {
	if b == nil {
		return nil
	}
	return append([]*x509.Certificate(nil), b.roots[td]...)
}

// PEM returns the roots trusted for td as PEM: the trusted_ca of an SDS
// validation context, or a trust_bundle of Envoy's SPIFFE validator.
func (b *Bundle) PEM(td spiffeid.TrustDomain) []byte {
	if b == nil {
		return nil
	}
	var out bytes.Buffer
	for _, r := range b.roots[td] {
		_ = pem.Encode(&out, &pem.Block{Type: "CERTIFICATE", Bytes: r.Raw})
	}
	return out.Bytes()
}

// SameRoots reports whether b and o trust the same roots for the same trust
// domains, whatever their versions.
func (b *Bundle) SameRoots(o *Bundle) bool {
	if len(b.TrustDomains()) != len(o.TrustDomains()) {
		return false
	}
	for _, td := range b.TrustDomains() {
		x, y := b.roots[td], o.Roots(td)
		if len(x) != len(y) {
			return false
		}
		seen := make(map[string]bool, len(x))
		for _, c := range x {
			seen[string(c.Raw)] = true
		}
		for _, c := range y {
			if !seen[string(c.Raw)] {
				return false
			}
		}
	}
	return true
}

func (b *Bundle) pool(td spiffeid.TrustDomain) *x509.CertPool {
	if b == nil {
		return nil
	}
	return b.pools[td]
}
