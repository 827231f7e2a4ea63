package certs

// The CA's state is its list of roots, ordered by activation time. The
// active root is the last one whose activation time has passed; later ones
// are pending (trusted already, not yet signing); earlier ones are retiring
// (trusted until their successor has been active for RootOverlap, then
// dropped). Transitions happen lazily, whenever Sign, Bundle, Roots or a
// WatchBundle loop looks at the clock, so no goroutine is needed.

import (
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"fmt"
	"log/slog"
	"math/big"
	"net/url"
	"os"
	"sync"
	"time"

	"github.com/spf13/pflag"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
)

// CAConfig configures the built-in CA.
type CAConfig struct {
	// TrustDomain is the SPIFFE trust domain the CA issues for. The
	// component embedding the CA binds it to its own --trust-domain flag,
	// shared with the Manager's.
	TrustDomain string
	// SVIDTTL is the lifetime of an X.509-SVID.
	SVIDTTL time.Duration
	// Backdate moves NotBefore into the past, for clocks behind the CA's.
	Backdate time.Duration
	// RootTTL is the lifetime of a root the CA generates.
	RootTTL time.Duration
	// RootOverlap is how long a replaced root stays trusted after its
	// successor becomes active. At least SVIDTTL: SVIDs the old root signed
	// just before must stay valid until they expire.
	RootOverlap time.Duration
	// RootCertFile and RootKeyFile, if set, hold the first root (PEM) in
	// place of a generated one, e.g. an operator's root.
	RootCertFile string
	RootKeyFile  string

	Clock  Clock        // SystemClock if nil
	Logger *slog.Logger // discards if nil
}

// Defaults fills unset fields.
func (c *CAConfig) Defaults() {
	if c.TrustDomain == "" {
		c.TrustDomain = "cluster.local"
	}
	if c.SVIDTTL == 0 {
		c.SVIDTTL = time.Hour
	}
	if c.Backdate == 0 {
		c.Backdate = 5 * time.Minute
	}
	if c.RootTTL == 0 {
		c.RootTTL = 365 * 24 * time.Hour
	}
	if c.RootOverlap == 0 {
		c.RootOverlap = c.SVIDTTL
	}
	if c.Clock == nil {
		c.Clock = SystemClock{}
	}
	if c.Logger == nil {
		c.Logger = slog.New(slog.DiscardHandler)
	}
}

// Validate reports every problem with the configuration.
func (c *CAConfig) Validate() error {
	var errs []error
	if _, err := spiffeid.TrustDomainFromString(c.TrustDomain); err != nil {
		errs = append(errs, fmt.Errorf("--trust-domain %q: %w", c.TrustDomain, err))
	}
	if c.SVIDTTL <= 0 {
		errs = append(errs, fmt.Errorf("--svid-ttl %s: must be positive", c.SVIDTTL))
	}
	if c.Backdate < 0 || c.Backdate >= c.SVIDTTL {
		errs = append(errs, fmt.Errorf("--svid-backdate %s: must be at least 0 and less than --svid-ttl %s", c.Backdate, c.SVIDTTL))
	}
	if c.RootTTL < 2*c.SVIDTTL {
		errs = append(errs, fmt.Errorf("--ca-root-ttl %s: must be at least twice --svid-ttl %s", c.RootTTL, c.SVIDTTL))
	}
	if c.RootOverlap < c.SVIDTTL {
		errs = append(errs, fmt.Errorf("--ca-root-overlap %s: must be at least --svid-ttl %s, or SVIDs of the old root are refused before they expire", c.RootOverlap, c.SVIDTTL))
	}
	if (c.RootCertFile == "") != (c.RootKeyFile == "") {
		errs = append(errs, errors.New("--ca-root-cert and --ca-root-key go together"))
	}
	return errors.Join(errs...)
}

// BindFlags binds the configuration to command-line flags.
func (c *CAConfig) BindFlags(fs *pflag.FlagSet) {
	fs.DurationVar(&c.SVIDTTL, "svid-ttl", c.SVIDTTL, "lifetime of a workload's X.509-SVID")
	fs.DurationVar(&c.Backdate, "svid-backdate", c.Backdate, "start certificates' validity this long before they are issued, for node clocks behind the CA's")
	fs.DurationVar(&c.RootTTL, "ca-root-ttl", c.RootTTL, "lifetime of a root certificate the CA generates")
	fs.DurationVar(&c.RootOverlap, "ca-root-overlap", c.RootOverlap, "keep a replaced root trusted this long after its successor starts signing (at least --svid-ttl; default --svid-ttl)")
	fs.StringVar(&c.RootCertFile, "ca-root-cert", c.RootCertFile, "PEM file of the CA's root certificate (default: generate one)")
	fs.StringVar(&c.RootKeyFile, "ca-root-key", c.RootKeyFile, "PEM file of the CA's root key, readable by the CA only")
}

// CA is the built-in certificate authority of one trust domain. It signs
// CSRs for workloads an Authorizer allows, and its keys never leave it: no
// method returns them and nothing logs them.
type CA struct {
	cfg   CAConfig
	td    spiffeid.TrustDomain
	authz Authorizer
	clock Clock
	log   *slog.Logger

	mu      sync.Mutex
	roots   []*caRoot // by activation time
	bundle  *Bundle
	changed chan struct{} // closed and replaced when bundle changes
}

type caRoot struct {
	cert       *x509.Certificate
	key        crypto.Signer
	activateAt time.Time
}

// NewCA returns a CA with one root, generated or read from
// cfg.RootCertFile and cfg.RootKeyFile.
func NewCA(cfg CAConfig, authz Authorizer) (*CA, error) {
	cfg.Defaults()
	if err := cfg.Validate(); err != nil {
		return nil, fmt.Errorf("ca: %w", err)
	}
	if authz == nil {
		return nil, errors.New("ca: an authorizer is required")
	}
	td, _ := spiffeid.TrustDomainFromString(cfg.TrustDomain)
	ca := &CA{cfg: cfg, td: td, authz: authz, clock: cfg.Clock, log: cfg.Logger, changed: make(chan struct{})}
	now := ca.clock.Now()
	var r *caRoot
	var err error
	if cfg.RootCertFile != "" {
		r, err = loadRoot(td, cfg.RootCertFile, cfg.RootKeyFile)
	} else {
		r, err = ca.newRoot(now)
	}
	if err != nil {
		return nil, fmt.Errorf("ca %s: %w", td.Name(), err)
	}
	r.activateAt = now
	ca.roots = []*caRoot{r}
	ca.bundle = NewBundle(1, map[spiffeid.TrustDomain][]*x509.Certificate{td: {r.cert}})
	ca.log.Info("ca ready", "trust_domain", td.Name(), "root_serial", r.cert.SerialNumber.Text(16), "root_not_after", r.cert.NotAfter)
	return ca, nil
}

// TrustDomain returns the CA's trust domain.
func (ca *CA) TrustDomain() spiffeid.TrustDomain { return ca.td }

// Sign issues an X.509-SVID for req.Workload's SPIFFE ID to the key of
// req.CSR, if the CSR asks for exactly that ID and the Authorizer allows
// req.Node to have it. It returns the chain (the leaf: roots are in the
// bundle). Errors wrap ErrInvalidCSR or the Authorizer's *DeniedError.
func (ca *CA) Sign(ctx context.Context, req SignRequest) ([]*x509.Certificate, error) {
	id, err := WorkloadID(ca.td, req.Workload)
	if err != nil {
		return nil, fmt.Errorf("sign for %s requested by node %q: %w", req.Workload, req.Node, err)
	}
	wrap := func(err error) error {
		return fmt.Errorf("sign %s for %s requested by node %q: %w", id, req.Workload, req.Node, err)
	}
	if err := checkCSR(req.CSR, id); err != nil {
		ca.log.Warn("csr refused", "id", id.String(), "pod", req.Workload.String(), "node", req.Node, "err", err)
		return nil, wrap(err)
	}
	if err := ca.authz.Authorize(ctx, req); err != nil {
		ca.log.Warn("svid request denied", "id", id.String(), "pod", req.Workload.String(), "node", req.Node, "err", err)
		return nil, wrap(err)
	}
	now := ca.clock.Now()
	ca.mu.Lock()
	ca.advanceLocked(now)
	root := ca.activeLocked(now)
	ca.mu.Unlock()

	serial, err := randomSerial()
	if err != nil {
		return nil, wrap(err)
	}
	notAfter := now.Add(ca.cfg.SVIDTTL)
	if notAfter.After(root.cert.NotAfter) {
		notAfter = root.cert.NotAfter // never outlive the root; rotate it first
	}
	tmpl := &x509.Certificate{
		SerialNumber:          serial,
		NotBefore:             now.Add(-ca.cfg.Backdate),
		NotAfter:              notAfter,
		KeyUsage:              x509.KeyUsageDigitalSignature,
		ExtKeyUsage:           []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth},
		BasicConstraintsValid: true,
		IsCA:                  false,
		URIs:                  []*url.URL{id.URL()},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, root.cert, req.CSR.PublicKey, root.key)
	if err != nil {
		return nil, wrap(err)
	}
	leaf, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, wrap(err)
	}
	ca.log.Debug("svid issued", "id", id.String(), "pod", req.Workload.String(), "node", req.Node,
		"serial", leaf.SerialNumber.Text(16), "not_after", leaf.NotAfter, "root_serial", root.cert.SerialNumber.Text(16))
	return []*x509.Certificate{leaf}, nil
}

// Bundle returns the current trust bundle: every root not yet dropped.
func (ca *CA) Bundle() *Bundle {
	ca.mu.Lock()
	defer ca.mu.Unlock()
	ca.advanceLocked(ca.clock.Now())
	return ca.bundle
}

// WatchBundle calls fn with the current bundle and with every new version
// until ctx ends. It also wakes up when a replaced root is due to be
// dropped, so watchers learn of the drop without another call.
func (ca *CA) WatchBundle(ctx context.Context, fn func(*Bundle)) error {
	var last uint64
	for {
		ca.mu.Lock()
		now := ca.clock.Now()
		ca.advanceLocked(now)
		b, changed := ca.bundle, ca.changed
		next, ok := ca.nextDropLocked()
		ca.mu.Unlock()
		if b.Version() != last {
			fn(b)
			last = b.Version()
		}
		var timer <-chan time.Time
		if ok {
			// Now again: fn may have taken a while.
			timer = ca.clock.After(next.Sub(ca.clock.Now()))
		}
		select {
		case <-ctx.Done():
			return nil
		case <-changed:
		case <-timer:
		}
	}
}

// RootState is where a root is in its rotation.
type RootState string

// Root states.
const (
	RootPending  RootState = "pending"  // trusted, signs from ActivateAt
	RootActive   RootState = "active"   // signs new SVIDs
	RootRetiring RootState = "retiring" // trusted until DropAt, signs nothing
)

// RootInfo describes one of the CA's roots.
type RootInfo struct {
	Cert       *x509.Certificate
	State      RootState
	ActivateAt time.Time
	// DropAt is when the root leaves the bundle; zero while it has no
	// successor.
	DropAt time.Time
}

// Roots describes the CA's roots, oldest first.
func (ca *CA) Roots() []RootInfo {
	ca.mu.Lock()
	defer ca.mu.Unlock()
	now := ca.clock.Now()
	ca.advanceLocked(now)
	active := ca.activeLocked(now)
	out := make([]RootInfo, len(ca.roots))
	seenActive := false
	for i, r := range ca.roots {
		info := RootInfo{Cert: r.cert, ActivateAt: r.activateAt}
		switch {
		case r == active:
			info.State, seenActive = RootActive, true
		case seenActive:
			info.State = RootPending
		default:
			info.State = RootRetiring
		}
		if i+1 < len(ca.roots) {
			info.DropAt = ca.roots[i+1].activateAt.Add(ca.cfg.RootOverlap)
		}
		out[i] = info
	}
	return out
}

// AddRoot starts a CA rotation: it generates a new root, trusted at once
// (the bundle gains it, so every node learns it before any SVID it signed
// appears), that signs new SVIDs from activateAt on. The root it replaces
// stays trusted until activateAt + RootOverlap, then leaves the bundle.
// Give the bundle time to reach every node before activateAt.
func (ca *CA) AddRoot(activateAt time.Time) (RootInfo, error) {
	now := ca.clock.Now()
	r, err := ca.newRoot(now)
	if err != nil {
		return RootInfo{}, fmt.Errorf("add root: %w", err)
	}
	if activateAt.Before(now) {
		activateAt = now
	}
	r.activateAt = activateAt
	ca.mu.Lock()
	ca.advanceLocked(now)
	if last := ca.roots[len(ca.roots)-1]; activateAt.Before(last.activateAt) {
		ca.mu.Unlock()
		return RootInfo{}, fmt.Errorf("add root: activation %s is before that of root %s (%s)", activateAt, last.cert.SerialNumber.Text(16), last.activateAt)
	}
	ca.roots = append(ca.roots, r)
	ca.publishLocked()
	ca.mu.Unlock()
	ca.log.Info("ca root added", "trust_domain", ca.td.Name(), "root_serial", r.cert.SerialNumber.Text(16), "activate_at", activateAt)
	return RootInfo{Cert: r.cert, State: RootPending, ActivateAt: activateAt}, nil
}

func (ca *CA) activeLocked(now time.Time) *caRoot {
	active := ca.roots[0]
	for _, r := range ca.roots[1:] {
		if r.activateAt.After(now) {
			break
		}
		active = r
	}
	return active
}

// advanceLocked drops the roots whose successor has been active for the
// overlap period.
func (ca *CA) advanceLocked(now time.Time) {
	dropped := false
	for len(ca.roots) > 1 && !now.Before(ca.roots[1].activateAt.Add(ca.cfg.RootOverlap)) {
		ca.log.Info("ca root dropped", "trust_domain", ca.td.Name(), "root_serial", ca.roots[0].cert.SerialNumber.Text(16))
		ca.roots = ca.roots[1:]
		dropped = true
	}
	if dropped {
		ca.publishLocked()
	}
}

func (ca *CA) nextDropLocked() (time.Time, bool) {
	if len(ca.roots) < 2 {
		return time.Time{}, false
	}
	return ca.roots[1].activateAt.Add(ca.cfg.RootOverlap), true
}

func (ca *CA) publishLocked() {
	certs := make([]*x509.Certificate, len(ca.roots))
	for i, r := range ca.roots {
		certs[i] = r.cert
	}
	ca.bundle = NewBundle(ca.bundle.Version()+1, map[spiffeid.TrustDomain][]*x509.Certificate{ca.td: certs})
	close(ca.changed)
	ca.changed = make(chan struct{})
}

// newRoot generates a root on ECDSA P-256 (see the package doc for why).
// It may sign only leaves (path length 0) and names its trust domain in a
// URI SAN, as the X509-SVID standard allows for signing certificates.
func (ca *CA) newRoot(now time.Time) (*caRoot, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, err
	}
	serial, err := randomSerial()
	if err != nil {
		return nil, err
	}
	tmpl := &x509.Certificate{
		SerialNumber: serial,
		Subject: pkix.Name{
			Organization: []string{"nodemesh"},
			// The serial keeps the names of successive roots apart, for
			// verifiers that look issuers up by name.
			CommonName: fmt.Sprintf("nodemesh root CA %s %.8s", ca.td.Name(), serial.Text(16)),
		},
		NotBefore:             now.Add(-ca.cfg.Backdate),
		NotAfter:              now.Add(ca.cfg.RootTTL),
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign,
		BasicConstraintsValid: true,
		IsCA:                  true,
		MaxPathLenZero:        true,
		URIs:                  []*url.URL{ca.td.ID().URL()},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, key.Public(), key)
	if err != nil {
		return nil, err
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, err
	}
	return &caRoot{cert: cert, key: key}, nil
}

func loadRoot(td spiffeid.TrustDomain, certFile, keyFile string) (*caRoot, error) {
	certPEM, err := os.ReadFile(certFile)
	if err != nil {
		return nil, fmt.Errorf("root certificate: %w", err)
	}
	block, _ := pem.Decode(certPEM)
	if block == nil || block.Type != "CERTIFICATE" {
		return nil, fmt.Errorf("root certificate %s: no PEM CERTIFICATE block", certFile)
	}
	cert, err := x509.ParseCertificate(block.Bytes)
	if err != nil {
		return nil, fmt.Errorf("root certificate %s: %w", certFile, err)
	}
	if !cert.IsCA || cert.KeyUsage&x509.KeyUsageCertSign == 0 {
		return nil, fmt.Errorf("root certificate %s: not a CA certificate with keyCertSign", certFile)
	}
	for _, u := range cert.URIs {
		if u.String() != td.IDString() {
			return nil, fmt.Errorf("root certificate %s: URI SAN %s is not trust domain %s", certFile, u, td.IDString())
		}
	}
	keyPEM, err := os.ReadFile(keyFile)
	if err != nil {
		return nil, fmt.Errorf("root key: %w", err)
	}
	// Only the block's type is ever reported, never its bytes.
	kb, _ := pem.Decode(keyPEM)
	if kb == nil {
		return nil, fmt.Errorf("root key %s: no PEM block", keyFile)
	}
	var key any
	switch kb.Type {
	case "PRIVATE KEY":
		key, err = x509.ParsePKCS8PrivateKey(kb.Bytes)
	case "EC PRIVATE KEY":
		key, err = x509.ParseECPrivateKey(kb.Bytes)
	case "RSA PRIVATE KEY":
		key, err = x509.ParsePKCS1PrivateKey(kb.Bytes)
	default:
		return nil, fmt.Errorf("root key %s: PEM block %q, want PRIVATE KEY", keyFile, kb.Type)
	}
	if err != nil {
		return nil, fmt.Errorf("root key %s: cannot parse", keyFile)
	}
	signer, ok := key.(crypto.Signer)
	if !ok {
		return nil, fmt.Errorf("root key %s: %T cannot sign", keyFile, key)
	}
	switch signer.(type) {
	case *ecdsa.PrivateKey, *rsa.PrivateKey:
	default:
		return nil, fmt.Errorf("root key %s: %T, want ECDSA or RSA", keyFile, signer)
	}
	pub, ok := signer.Public().(interface{ Equal(crypto.PublicKey) bool })
	if !ok || !pub.Equal(cert.PublicKey) {
		return nil, fmt.Errorf("root key %s does not match certificate %s", keyFile, certFile)
	}
	return &caRoot{cert: cert, key: signer}, nil
}

var serialLimit = new(big.Int).Lsh(big.NewInt(1), 128)

// randomSerial returns a random positive serial of at most 128 bits.
func randomSerial() (*big.Int, error) {
	for {
		n, err := rand.Int(rand.Reader, serialLimit)
		if err != nil {
			return nil, fmt.Errorf("serial: %w", err)
		}
		if n.Sign() > 0 {
			return n, nil
		}
	}
}
