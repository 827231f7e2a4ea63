// Package certstest helps test code that handles X.509-SVIDs: a fake clock,
// an Authority that mints certificates valid or deliberately broken (the CA
// of package certs never would), and shortcuts to a real certs.CA.
package certstest

import (
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"math/big"
	"net/url"
	"sort"
	"sync"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/nodemesh/nodemesh/certs"
)

// Clock is a certs.Clock whose time moves only when told to.
type Clock struct {
	mu      sync.Mutex
	now     time.Time
	waiters []waiter
	added   chan struct{} // closed and replaced when a timer is added
}

type waiter struct {
	at time.Time
	ch chan time.Time
}

// NewClock returns a clock standing at t.
func NewClock(t time.Time) *Clock { return &Clock{now: t} }

// Now returns the clock's time.
func (c *Clock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

// After fires once the clock has been moved d ahead; at once if d <= 0.
func (c *Clock) After(d time.Duration) <-chan time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	ch := make(chan time.Time, 1)
	if d <= 0 {
		ch <- c.now
		return ch
	}
	c.waiters = append(c.waiters, waiter{at: c.now.Add(d), ch: ch})
	if c.added != nil {
		close(c.added)
		c.added = nil
	}
	return ch
}

// WaitForTimer waits until someone waits for the clock to reach at: the
// way to know that a loop has settled before moving the clock. It fails t
// after a minute.
func (c *Clock) WaitForTimer(t testing.TB, at time.Time) {
	t.Helper()
	deadline := time.After(time.Minute)
	for {
		c.mu.Lock()
		for _, w := range c.waiters {
			if w.at.Equal(at) {
				c.mu.Unlock()
				return
			}
		}
		if c.added == nil {
			c.added = make(chan struct{})
		}
		added := c.added
		c.mu.Unlock()
		select {
		case <-added:
		case <-deadline:
			t.Fatalf("nobody waits for the clock to reach %s (now %s)", at, c.Now())
		}
	}
}

// Advance moves the clock d ahead and fires the timers that are due.
func (c *Clock) Advance(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.now = c.now.Add(d)
	sort.Slice(c.waiters, func(i, j int) bool { return c.waiters[i].at.Before(c.waiters[j].at) })
	kept := c.waiters[:0]
	for _, w := range c.waiters {
		if w.at.After(c.now) {
			kept = append(kept, w)
			continue
		}
		w.ch <- c.now
	}
	c.waiters = kept
}

// Waiters returns the number of timers not yet fired.
func (c *Clock) Waiters() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return len(c.waiters)
}

// AllowAll is a certs.Authorizer that allows every request.
type AllowAll struct{}

// Authorize returns nil.
func (AllowAll) Authorize(context.Context, certs.SignRequest) error { return nil }

// NewCA returns a certs.CA of cfg (defaults filled in); authz nil allows
// everything.
func NewCA(t testing.TB, cfg certs.CAConfig, authz certs.Authorizer) *certs.CA {
	t.Helper()
	if authz == nil {
		authz = AllowAll{}
	}
	ca, err := certs.NewCA(cfg, authz)
	if err != nil {
		t.Fatal(err)
	}
	return ca
}

// IssueSVID has issuer sign a fresh key for w on behalf of node, as a
// Manager would.
func IssueSVID(t testing.TB, issuer certs.Issuer, node string, td spiffeid.TrustDomain, w certs.Workload) *certs.SVID {
	t.Helper()
	id, err := certs.WorkloadID(td, w)
	if err != nil {
		t.Fatal(err)
	}
	key, csr := NewCSR(t, id.URL())
	chain, err := issuer.Sign(context.Background(), certs.SignRequest{Node: node, Workload: w, CSR: csr})
	if err != nil {
		t.Fatal(err)
	}
	svid, err := certs.NewSVID(chain, key)
	if err != nil {
		t.Fatal(err)
	}
	return svid
}

// NewCSR returns a P-256 key and a CSR of it for uris; tweak, if given,
// changes the request before it is signed.
func NewCSR(t testing.TB, uri *url.URL, tweak ...func(*x509.CertificateRequest)) (crypto.Signer, *x509.CertificateRequest) {
	t.Helper()
	key := newKey(t)
	tmpl := &x509.CertificateRequest{URIs: []*url.URL{uri}}
	for _, f := range tweak {
		f(tmpl)
	}
	der, err := x509.CreateCertificateRequest(rand.Reader, tmpl, key)
	if err != nil {
		t.Fatal(err)
	}
	csr, err := x509.ParseCertificateRequest(der)
	if err != nil {
		t.Fatal(err)
	}
	return key, csr
}

// Tweak changes a certificate template before an Authority signs it.
type Tweak func(*x509.Certificate)

// ValidBetween sets the validity period.
func ValidBetween(notBefore, notAfter time.Time) Tweak {
	return func(c *x509.Certificate) { c.NotBefore, c.NotAfter = notBefore, notAfter }
}

// Expired makes a certificate that expired an hour ago.
func Expired() Tweak {
	now := time.Now()
	return ValidBetween(now.Add(-2*time.Hour), now.Add(-time.Hour))
}

// NotYetValid makes a certificate valid from an hour from now.
func NotYetValid() Tweak {
	now := time.Now()
	return ValidBetween(now.Add(time.Hour), now.Add(2*time.Hour))
}

// URIs replaces the URI SANs; none leaves the certificate without any.
func URIs(uris ...string) Tweak {
	return func(c *x509.Certificate) {
		c.URIs = nil
		for _, s := range uris {
			u, err := url.Parse(s)
			if err != nil {
				panic(err)
			}
			c.URIs = append(c.URIs, u)
		}
	}
}

// CAFlag sets the CA flag of basicConstraints, leaving key usage alone.
func CAFlag() Tweak {
	return func(c *x509.Certificate) { c.BasicConstraintsValid, c.IsCA = true, true }
}

// KeyUsage replaces the key usage.
func KeyUsage(ku x509.KeyUsage) Tweak {
	return func(c *x509.Certificate) { c.KeyUsage = ku }
}

// Authority is a test CA that signs whatever it is asked to: leaves and
// intermediates of its trust domain, valid or broken.
type Authority struct {
	TrustDomain spiffeid.TrustDomain
	Cert        *x509.Certificate
	Key         crypto.Signer
	// parents are the intermediates between Cert and the root, then the
	// root; empty for a root.
	parents []*x509.Certificate
}

// NewAuthority returns a self-signed root for trust domain td; tweaks change
// the root (Expired() makes an expired root).
func NewAuthority(t testing.TB, td string, tweaks ...Tweak) *Authority {
	t.Helper()
	trust, err := spiffeid.TrustDomainFromString(td)
	if err != nil {
		t.Fatal(err)
	}
	key := newKey(t)
	tmpl := caTemplate(t, trust, "test root "+td)
	for _, f := range tweaks {
		f(tmpl)
	}
	return &Authority{TrustDomain: trust, Cert: sign(t, tmpl, tmpl, key.Public(), key), Key: key}
}

// NewIntermediate returns an intermediate CA a signs; its leaves' chains
// include it.
func (a *Authority) NewIntermediate(t testing.TB, tweaks ...Tweak) *Authority {
	t.Helper()
	key := newKey(t)
	tmpl := caTemplate(t, a.TrustDomain, "test intermediate "+a.TrustDomain.Name())
	for _, f := range tweaks {
		f(tmpl)
	}
	return &Authority{
		TrustDomain: a.TrustDomain,
		Cert:        sign(t, tmpl, a.Cert, key.Public(), a.Key),
		Key:         key,
		parents:     append([]*x509.Certificate{a.Cert}, a.parents...),
	}
}

// Root returns the root certificate above a.
func (a *Authority) Root() *x509.Certificate {
	if len(a.parents) == 0 {
		return a.Cert
	}
	return a.parents[len(a.parents)-1]
}

// Bundle returns a bundle (version 1) that trusts a's root for a's trust
// domain, and each other's root for the other's.
func (a *Authority) Bundle(others ...*Authority) *certs.Bundle {
	roots := map[spiffeid.TrustDomain][]*x509.Certificate{}
	for _, x := range append([]*Authority{a}, others...) {
		roots[x.TrustDomain] = append(roots[x.TrustDomain], x.Root())
	}
	return certs.NewBundle(1, roots)
}

// Mint returns a leaf for the SPIFFE ID id (a URI SAN; tweak URIs to change
// that) and its key, as a chain with a's intermediates. Untweaked, the leaf
// is a valid X.509-SVID for an hour.
func (a *Authority) Mint(t testing.TB, id string, tweaks ...Tweak) ([]*x509.Certificate, crypto.Signer) {
	t.Helper()
	key := newKey(t)
	now := time.Now()
	tmpl := &x509.Certificate{
		SerialNumber:          serial(t),
		NotBefore:             now.Add(-time.Minute),
		NotAfter:              now.Add(time.Hour),
		KeyUsage:              x509.KeyUsageDigitalSignature,
		ExtKeyUsage:           []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth},
		BasicConstraintsValid: true,
	}
	URIs(id)(tmpl)
	for _, f := range tweaks {
		f(tmpl)
	}
	leaf := sign(t, tmpl, a.Cert, key.Public(), a.Key)
	chain := []*x509.Certificate{leaf}
	if len(a.parents) > 0 { // a is an intermediate: send it, not the root
		chain = append(chain, a.Cert)
		chain = append(chain, a.parents[:len(a.parents)-1]...)
	}
	return chain, key
}

// MintSVID mints a leaf as Mint does and returns it as an SVID.
func (a *Authority) MintSVID(t testing.TB, id string, tweaks ...Tweak) *certs.SVID {
	t.Helper()
	chain, key := a.Mint(t, id, tweaks...)
	s, err := certs.NewSVID(chain, key)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func caTemplate(t testing.TB, td spiffeid.TrustDomain, name string) *x509.Certificate {
	now := time.Now()
	return &x509.Certificate{
		SerialNumber:          serial(t),
		Subject:               pkix.Name{CommonName: name},
		NotBefore:             now.Add(-time.Hour),
		NotAfter:              now.Add(24 * time.Hour),
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign,
		BasicConstraintsValid: true,
		IsCA:                  true,
		URIs:                  []*url.URL{td.ID().URL()},
	}
}

func sign(t testing.TB, tmpl, parent *x509.Certificate, pub crypto.PublicKey, key crypto.Signer) *x509.Certificate {
	t.Helper()
	der, err := x509.CreateCertificate(rand.Reader, tmpl, parent, pub, key)
	if err != nil {
		t.Fatal(err)
	}
	c, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func newKey(t testing.TB) *ecdsa.PrivateKey {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	return key
}

func serial(t testing.TB) *big.Int {
	t.Helper()
	n, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 127))
	if err != nil {
		t.Fatal(err)
	}
	return n.Add(n, big.NewInt(1))
}

// WaitForSnapshot returns the first snapshot of src, from now on, that
// satisfies cond; it fails t after 30 seconds.
func WaitForSnapshot(t testing.TB, src certs.Source, what string, cond func(*certs.Snapshot) bool) *certs.Snapshot {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	found := make(chan *certs.Snapshot, 1)
	var once sync.Once
	go src.Watch(ctx, func(s *certs.Snapshot) {
		if cond(s) {
			once.Do(func() { found <- s })
		}
	})
	select {
	case s := <-found:
		return s
	case <-ctx.Done():
		last := src.Snapshot()
		t.Fatalf("timed out waiting for %s; last snapshot: generation %d, bundle version %d, SVIDs %v", what, last.Generation, last.Bundle.Version(), last.SVIDs())
		return nil
	}
}
