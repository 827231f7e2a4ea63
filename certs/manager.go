package certs

// The Manager keeps one entry per SPIFFE ID of the node's workloads. Run is
// a loop: take the entries that are due (new, at their renewal time, or
// retrying), issue them with Concurrency workers, publish, then wait on the
// clock for the next due time, a SetWorkloads, or a bundle change. Only the
// loop's workers talk to the Issuer; m.mu guards the entries and is never
// held across a Sign. Lock order: m.mu, then the Feed's.

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"net/url"
	"sort"
	"sync"
	"time"

	"github.com/spf13/pflag"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
)

// ManagerConfig configures a node's Manager.
type ManagerConfig struct {
	// NodeName is the node the Manager requests SVIDs for.
	NodeName string
	// TrustDomain is the SPIFFE trust domain; the embedding component
	// binds it to its own --trust-domain flag.
	TrustDomain string
	// RenewFraction of an SVID's remaining lifetime at issuance passes
	// before it is renewed: 0.5 renews at half-life.
	RenewFraction float64
	// Concurrency bounds the Sign calls in flight.
	Concurrency int
	// RetryMin and RetryMax bound the exponential backoff after a failed
	// request.
	RetryMin, RetryMax time.Duration
	// SignTimeout bounds one Sign call.
	SignTimeout time.Duration

	Clock  Clock        // SystemClock if nil
	Logger *slog.Logger // discards if nil
}

// Defaults fills unset fields.
func (c *ManagerConfig) Defaults() {
	if c.TrustDomain == "" {
		c.TrustDomain = "cluster.local"
	}
	if c.RenewFraction == 0 {
		c.RenewFraction = 0.5
	}
	if c.Concurrency == 0 {
		c.Concurrency = 4
	}
	if c.RetryMin == 0 {
		c.RetryMin = time.Second
	}
	if c.RetryMax == 0 {
		c.RetryMax = 30 * time.Second
	}
	if c.SignTimeout == 0 {
		c.SignTimeout = 10 * time.Second
	}
	if c.Clock == nil {
		c.Clock = SystemClock{}
	}
	if c.Logger == nil {
		c.Logger = slog.New(slog.DiscardHandler)
	}
}

// Validate reports every problem with the configuration.
func (c *ManagerConfig) Validate() error {
	var errs []error
	if c.NodeName == "" {
		errs = append(errs, errors.New("node name is required: a node requests SVIDs for its own workloads only"))
	}
	if _, err := spiffeid.TrustDomainFromString(c.TrustDomain); err != nil {
		errs = append(errs, fmt.Errorf("--trust-domain %q: %w", c.TrustDomain, err))
	}
	if c.RenewFraction <= 0 || c.RenewFraction >= 1 {
		errs = append(errs, fmt.Errorf("--svid-renew-fraction %g: must be between 0 and 1", c.RenewFraction))
	}
	if c.Concurrency < 1 {
		errs = append(errs, fmt.Errorf("--svid-sign-concurrency %d: must be at least 1", c.Concurrency))
	}
	if c.RetryMin <= 0 || c.RetryMax < c.RetryMin {
		errs = append(errs, fmt.Errorf("--svid-retry-min %s, --svid-retry-max %s: want 0 < min <= max", c.RetryMin, c.RetryMax))
	}
	if c.SignTimeout <= 0 {
		errs = append(errs, fmt.Errorf("--svid-sign-timeout %s: must be positive", c.SignTimeout))
	}
	return errors.Join(errs...)
}

// BindFlags binds the configuration to command-line flags.
func (c *ManagerConfig) BindFlags(fs *pflag.FlagSet) {
	fs.Float64Var(&c.RenewFraction, "svid-renew-fraction", c.RenewFraction, "renew an SVID when this fraction of its lifetime has passed")
	fs.IntVar(&c.Concurrency, "svid-sign-concurrency", c.Concurrency, "SVID requests to the CA in flight at most")
	fs.DurationVar(&c.RetryMin, "svid-retry-min", c.RetryMin, "first retry delay after a failed SVID request (doubles up to --svid-retry-max)")
	fs.DurationVar(&c.RetryMax, "svid-retry-max", c.RetryMax, "longest retry delay after failed SVID requests")
	fs.DurationVar(&c.SignTimeout, "svid-sign-timeout", c.SignTimeout, "give up on one SVID request after this long")
}

// Manager holds the SVIDs of one node's workloads: it generates each key on
// the node, has the Issuer sign a CSR for it, renews it at RenewFraction of
// its lifetime, follows the trust bundle and publishes Snapshots. It is a
// Source.
type Manager struct {
	cfg    ManagerConfig
	td     spiffeid.TrustDomain
	issuer Issuer
	clock  Clock
	log    *slog.Logger
	kick   chan struct{}
	feed   Feed

	mu      sync.Mutex
	entries map[spiffeid.ID]*entry
	bundle  *Bundle
}

type entry struct {
	id       spiffeid.ID
	pods     []Workload // sorted by name
	svid     *SVID
	issuedAt time.Time
	dueAt    time.Time // next request: renewal or retry; zero = now
	failures int
	lastErr  error
	busy     bool
}

// NewManager returns a Manager that requests SVIDs from issuer.
func NewManager(cfg ManagerConfig, issuer Issuer) (*Manager, error) {
	cfg.Defaults()
	if err := cfg.Validate(); err != nil {
		return nil, fmt.Errorf("svid manager: %w", err)
	}
	if issuer == nil {
		return nil, errors.New("svid manager: an issuer is required")
	}
	td, _ := spiffeid.TrustDomainFromString(cfg.TrustDomain)
	return &Manager{
		cfg: cfg, td: td, issuer: issuer, clock: cfg.Clock, log: cfg.Logger,
		kick:    make(chan struct{}, 1),
		entries: map[spiffeid.ID]*entry{},
	}, nil
}

// SetWorkloads sets the node's workloads: SVIDs are requested for new
// SPIFFE IDs and dropped for IDs no workload has any more. Pods sharing a
// service account share one SVID. Workloads whose ID cannot be formed are
// reported and skipped. A change of the workloads also retries failed
// requests at once, since the CA's view may have changed with it.
func (m *Manager) SetWorkloads(ws []Workload) error {
	byID := map[spiffeid.ID][]Workload{}
	var errs []error
	for _, w := range ws {
		id, err := WorkloadID(m.td, w)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		byID[id] = append(byID[id], w)
	}
	m.mu.Lock()
	removed := false
	for id := range m.entries {
		if _, ok := byID[id]; !ok {
			delete(m.entries, id)
			removed = true
		}
	}
	for id, pods := range byID {
		sort.Slice(pods, func(i, j int) bool { return pods[i].Pod < pods[j].Pod })
		e, ok := m.entries[id]
		if !ok {
			e = &entry{id: id}
			m.entries[id] = e
		}
		e.pods = pods
		if e.failures > 0 {
			e.dueAt = time.Time{}
		}
	}
	if removed {
		m.publishLocked()
	}
	m.mu.Unlock()
	m.poke()
	return errors.Join(errs...)
}

// Snapshot returns the current SVIDs and bundle.
func (m *Manager) Snapshot() *Snapshot { return m.feed.Snapshot() }

// Watch calls fn with the current snapshot, once the Manager has a bundle,
// and with every newer one until ctx ends (see Feed.Watch).
func (m *Manager) Watch(ctx context.Context, fn func(*Snapshot)) error {
	return m.feed.Watch(ctx, fn)
}

// IdentityStatus describes one SPIFFE ID the Manager holds or requests.
type IdentityStatus struct {
	ID   spiffeid.ID
	Pods []Workload
	// SVID is nil until one is issued, and after it expired unrenewed.
	SVID *SVID
	// NextRequest is when the Manager renews or retries next.
	NextRequest time.Time
	Failures    int
	LastError   string
}

// Status describes every identity, sorted by SPIFFE ID.
func (m *Manager) Status() []IdentityStatus {
	m.mu.Lock()
	defer m.mu.Unlock()
	out := make([]IdentityStatus, 0, len(m.entries))
	for _, e := range m.entries {
		st := IdentityStatus{ID: e.id, Pods: append([]Workload(nil), e.pods...), SVID: e.svid, NextRequest: e.dueAt, Failures: e.failures}
		if e.lastErr != nil {
			st.LastError = e.lastErr.Error()
		}
		out = append(out, st)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].ID.String() < out[j].ID.String() })
	return out
}

// Run keeps the SVIDs current until ctx ends, then returns nil; or returns
// the error that ended the Issuer's bundle watch.
func (m *Manager) Run(ctx context.Context) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	watchErr := make(chan error, 1)
	go func() { watchErr <- m.issuer.WatchBundle(ctx, m.setBundle) }()
	for {
		now := m.clock.Now()
		jobs, wake, ok := m.collect(now)
		if len(jobs) > 0 {
			m.issueAll(ctx, jobs)
			continue
		}
		var timer <-chan time.Time
		if ok {
			timer = m.clock.After(wake.Sub(m.clock.Now()))
		}
		select {
		case <-ctx.Done():
			<-watchErr
			return nil
		case err := <-watchErr:
			if ctx.Err() != nil {
				return nil
			}
			if err == nil {
				err = errors.New("bundle watch ended")
			}
			return fmt.Errorf("svid manager: %w", err)
		case <-m.kick:
		case <-timer:
		}
	}
}

func (m *Manager) poke() {
	select {
	case m.kick <- struct{}{}:
	default:
	}
}

type job struct {
	e        *entry
	id       spiffeid.ID
	workload Workload
}

// collect drops expired SVIDs and returns the entries due at now, marked
// busy; or, if none is, when the next one will be.
func (m *Manager) collect(now time.Time) (jobs []job, wake time.Time, ok bool) {
	m.mu.Lock()
	defer m.mu.Unlock()
	expired := false
	for _, e := range m.entries {
		if e.svid != nil && !now.Before(e.svid.NotAfter()) {
			m.log.Error("svid expired before it could be renewed", "svid", e.svid, "failures", e.failures, "err", e.lastErr)
			e.svid = nil
			expired = true
		}
		if e.busy || len(e.pods) == 0 {
			continue
		}
		if !now.Before(e.dueAt) {
			e.busy = true
			// Another pod of the identity may succeed where one failed
			// (moved, or just deleted).
			jobs = append(jobs, job{e: e, id: e.id, workload: e.pods[e.failures%len(e.pods)]})
			continue
		}
		for _, t := range []time.Time{e.dueAt, e.expiry()} {
			if !t.IsZero() && (!ok || t.Before(wake)) {
				wake, ok = t, true
			}
		}
	}
	if expired {
		m.publishLocked()
	}
	return jobs, wake, ok
}

func (e *entry) expiry() time.Time {
	if e.svid == nil {
		return time.Time{}
	}
	return e.svid.NotAfter()
}

type result struct {
	job
	svid *SVID
	err  error
}

// publishEvery bounds how many issued SVIDs wait for a publish during a
// burst (a node starting with many workloads): publishing copies the whole
// set, so once per SVID would be quadratic.
const publishEvery = 32

func (m *Manager) issueAll(ctx context.Context, jobs []job) {
	results := make(chan result)
	sem := make(chan struct{}, m.cfg.Concurrency)
	go func() {
		for _, j := range jobs {
			sem <- struct{}{}
			go func() {
				defer func() { <-sem }()
				svid, err := m.issue(ctx, j)
				results <- result{job: j, svid: svid, err: err}
			}()
		}
	}()
	unpublished := 0
	for range jobs {
		r := <-results
		m.mu.Lock()
		if m.apply(r) {
			unpublished++
		}
		if unpublished >= publishEvery {
			m.publishLocked()
			unpublished = 0
		}
		m.mu.Unlock()
	}
	if unpublished > 0 {
		m.mu.Lock()
		m.publishLocked()
		m.mu.Unlock()
	}
}

// issue makes a key on this node and has the Issuer sign a CSR for it; the
// key itself goes nowhere.
func (m *Manager) issue(ctx context.Context, j job) (*SVID, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, err
	}
	der, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{URIs: []*url.URL{j.id.URL()}}, key)
	if err != nil {
		return nil, err
	}
	csr, err := x509.ParseCertificateRequest(der)
	if err != nil {
		return nil, err
	}
	ctx, cancel := context.WithTimeout(ctx, m.cfg.SignTimeout)
	defer cancel()
	chain, err := m.issuer.Sign(ctx, SignRequest{Node: m.cfg.NodeName, Workload: j.workload, CSR: csr})
	if err != nil {
		return nil, err
	}
	svid, err := NewSVID(chain, key)
	if err != nil {
		return nil, fmt.Errorf("issuer's answer: %w", err)
	}
	if svid.ID() != j.id {
		return nil, fmt.Errorf("issuer's answer: certificate for %s, requested %s", svid.ID(), j.id)
	}
	return svid, nil
}

// apply records a result; it reports whether the published state changed.
func (m *Manager) apply(r result) bool {
	e := r.e
	if m.entries[r.id] != e {
		return false // the workloads went away meanwhile
	}
	e.busy = false
	now := m.clock.Now()
	if r.err != nil {
		e.failures++
		e.lastErr = r.err
		e.dueAt = now.Add(m.backoff(e.failures))
		if !errors.Is(r.err, context.Canceled) {
			m.log.Warn("svid request failed", "id", r.id.String(), "pod", r.workload.String(), "failures", e.failures, "retry_at", e.dueAt, "err", r.err)
		}
		return false
	}
	e.svid, e.issuedAt, e.failures, e.lastErr = r.svid, now, 0, nil
	e.dueAt = now.Add(time.Duration(m.cfg.RenewFraction * float64(r.svid.NotAfter().Sub(now))))
	if m.bundle != nil && untrusted(r.svid, m.bundle) {
		// Signed by a root this bundle lacks: either the bundle lags the
		// CA (a retry will find it updated), or the CA's root changed
		// while this request was in flight (a retry gets the new root).
		e.dueAt = now.Add(m.cfg.RetryMin)
	}
	m.log.Debug("svid issued", "svid", r.svid, "pod", r.workload.String(), "renew_at", e.dueAt)
	return true
}

func (m *Manager) backoff(failures int) time.Duration {
	d := m.cfg.RetryMin
	for i := 1; i < failures && d < m.cfg.RetryMax; i++ {
		d *= 2
	}
	return min(d, m.cfg.RetryMax)
}

// setBundle takes a new trust bundle. SVIDs it no longer trusts (their root
// was dropped, or the CA restarted with a new root) are renewed at once;
// during a normal rotation the overlap keeps them trusted and they renew on
// schedule.
func (m *Manager) setBundle(b *Bundle) {
	m.mu.Lock()
	now := m.clock.Now()
	m.bundle = b
	renew := 0
	for _, e := range m.entries {
		if e.svid != nil && !e.busy && untrusted(e.svid, b) {
			e.dueAt = now
			renew++
		}
	}
	m.publishLocked()
	m.mu.Unlock()
	m.log.Info("trust bundle updated", "version", b.Version(), "trust_domains", len(b.TrustDomains()), "svids_to_renew", renew)
	m.poke()
}

// untrusted reports whether no root b has for s's trust domain issued the
// top of s's chain. It compares names and key IDs, no signatures: it only
// has to notice a root that left the bundle, and runs for every SVID on
// every bundle change.
func untrusted(s *SVID, b *Bundle) bool {
	if b == nil {
		return true
	}
	top := s.chain[len(s.chain)-1]
	for _, r := range b.roots[s.id.TrustDomain()] {
		if top.Equal(r) || (bytes.Equal(top.RawIssuer, r.RawSubject) && bytes.Equal(top.AuthorityKeyId, r.SubjectKeyId)) {
			return false
		}
	}
	return true
}

func (m *Manager) publishLocked() {
	svids := make([]*SVID, 0, len(m.entries))
	for _, e := range m.entries {
		if e.svid != nil {
			svids = append(svids, e.svid)
		}
	}
	m.feed.Publish(m.bundle, svids)
}
