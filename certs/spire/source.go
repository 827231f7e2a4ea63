// Package spire is the identity source for clusters where SPIRE issues the
// workloads' X.509-SVIDs: it reads them, with their trust bundles, from the
// SPIFFE Workload API socket of the node's SPIRE agent and offers them as
// the built-in CA's Manager does (certs.Source). How SPIRE must be set up
// for the node agent to receive its node's workloads' SVIDs is in the doc
// of package certs and in docs/spire.md.
package spire

import (
	"bytes"
	"context"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"github.com/spf13/pflag"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/workloadapi"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/nodemesh/nodemesh/certs"
)

// Config configures a Source.
type Config struct {
	// Addr is the Workload API endpoint: unix:///path or tcp://ip:port.
	Addr string
	// RetryMax caps the delay between attempts to reach the Workload
	// API; the first retry comes after 100ms at most.
	RetryMax time.Duration

	Clock  certs.Clock  // SystemClock if nil; checks SVIDs' validity
	Logger *slog.Logger // discards if nil
}

// DefaultAddr is where SPIRE's Kubernetes deployments put the agent's socket.
const DefaultAddr = "unix:///run/spire/sockets/agent.sock"

// Defaults fills unset fields.
func (c *Config) Defaults() {
	if c.Addr == "" {
		c.Addr = DefaultAddr
	}
	if c.RetryMax == 0 {
		c.RetryMax = 5 * time.Second
	}
	if c.Clock == nil {
		c.Clock = certs.SystemClock{}
	}
	if c.Logger == nil {
		c.Logger = slog.New(slog.DiscardHandler)
	}
}

// Validate reports every problem with the configuration.
func (c *Config) Validate() error {
	var errs []error
	if err := workloadapi.ValidateAddress(c.Addr); err != nil {
		errs = append(errs, fmt.Errorf("--spire-socket %q: %w", c.Addr, err))
	}
	if c.RetryMax <= 0 {
		errs = append(errs, fmt.Errorf("--spire-retry-max %s: must be positive", c.RetryMax))
	}
	return errors.Join(errs...)
}

// BindFlags binds the configuration to command-line flags.
func (c *Config) BindFlags(fs *pflag.FlagSet) {
	fs.StringVar(&c.Addr, "spire-socket", c.Addr, "SPIFFE Workload API endpoint of the node's SPIRE agent (unix:///path or tcp://ip:port)")
	fs.DurationVar(&c.RetryMax, "spire-retry-max", c.RetryMax, "longest delay between attempts to reach the Workload API")
}

// Source holds the X.509-SVIDs and bundles the Workload API gives this
// process, one SVID per SPIFFE ID (the first one the API lists, as the
// Workload API standard makes the first the default). It implements
// certs.Source; Run keeps it current.
type Source struct {
	cfg  Config
	log  *slog.Logger
	feed certs.Feed

	mu     sync.Mutex
	svids  map[spiffeid.ID]*certs.SVID
	bundle *certs.Bundle
}

var _ certs.Source = (*Source)(nil)

// New returns a Source of cfg (defaults filled in). It does not connect;
// Run does.
func New(cfg Config) (*Source, error) {
	cfg.Defaults()
	if err := cfg.Validate(); err != nil {
		return nil, fmt.Errorf("spire source: %w", err)
	}
	return &Source{cfg: cfg, log: cfg.Logger, svids: map[spiffeid.ID]*certs.SVID{}}, nil
}

// Snapshot returns the current SVIDs and bundle.
func (s *Source) Snapshot() *certs.Snapshot { return s.feed.Snapshot() }

// Watch calls fn with the current snapshot, once the Workload API has sent
// a bundle, and with every newer one until ctx ends.
func (s *Source) Watch(ctx context.Context, fn func(*certs.Snapshot)) error {
	return s.feed.Watch(ctx, fn)
}

// Run watches the Workload API's X.509 contexts until ctx ends, then
// returns nil. It reconnects by itself (the SPIRE agent may start later or
// restart). It returns early only if the API refuses the request as
// invalid.
func (s *Source) Run(ctx context.Context) error {
	client, err := workloadapi.New(ctx,
		workloadapi.WithAddr(s.cfg.Addr),
		workloadapi.WithBackoffStrategy(backoffStrategy{max: s.cfg.RetryMax}),
		workloadapi.WithLogger(logAdapter{s.log}),
	)
	if err != nil {
		return fmt.Errorf("spire workload api %s: %w", s.cfg.Addr, err)
	}
	defer client.Close()
	err = client.WatchX509Context(ctx, watcher{s})
	if ctx.Err() != nil {
		return nil
	}
	return fmt.Errorf("spire workload api %s: %w", s.cfg.Addr, err)
}

// watcher keeps the Workload API's callbacks off Source's method set.
type watcher struct{ s *Source }

func (w watcher) OnX509ContextUpdate(xc *workloadapi.X509Context) { w.s.update(xc) }

func (w watcher) OnX509ContextWatchError(err error) { w.s.watchError(err) }

func (s *Source) update(xc *workloadapi.X509Context) {
	now := s.cfg.Clock.Now()
	roots := map[spiffeid.TrustDomain][]*x509.Certificate{}
	for _, b := range xc.Bundles.Bundles() {
		roots[b.TrustDomain()] = b.X509Authorities()
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	bundle := s.bundle
	if next := certs.NewBundle(bundle.Version()+1, roots); bundle == nil || !bundle.SameRoots(next) {
		bundle = next
	}
	svids := make(map[spiffeid.ID]*certs.SVID, len(xc.SVIDs))
	for _, x := range xc.SVIDs {
		if _, dup := svids[x.ID]; dup {
			s.log.Debug("spire: second SVID for one SPIFFE ID ignored", "id", x.ID.String(), "hint", x.Hint)
			continue
		}
		if prev, ok := s.svids[x.ID]; ok && len(x.Certificates) > 0 && bytes.Equal(prev.Leaf().Raw, x.Certificates[0].Raw) {
			svids[x.ID] = prev // unchanged: keep the pointer, watchers compare them
			continue
		}
		svid, err := certs.NewSVID(x.Certificates, x.PrivateKey)
		if err == nil {
			_, err = certs.VerifySVID(svid.Chain(), bundle, now)
		}
		if err != nil {
			// Serving it would only get it refused by every peer.
			s.log.Warn("spire: SVID ignored", "id", x.ID.String(), "reason", string(certs.ReasonOf(err)), "err", err)
			continue
		}
		svids[x.ID] = svid
	}
	if bundle == s.bundle && sameSVIDs(svids, s.svids) {
		return
	}
	s.svids, s.bundle = svids, bundle
	s.publishLocked()
	s.log.Info("spire: x509 context updated", "svids", len(svids), "bundle_version", bundle.Version())
}

// watchError handles a failed Workload API stream. SPIRE ends the stream
// with PermissionDenied when no registration entry (any more) gives this
// process an identity: then it holds no SVIDs, and keeps the bundle.
func (s *Source) watchError(err error) {
	if status.Code(err) != codes.PermissionDenied {
		s.log.Warn("spire: workload api", "addr", s.cfg.Addr, "err", err)
		return
	}
	s.log.Info("spire: no identity issued to this agent; check the registration entries", "addr", s.cfg.Addr)
	s.mu.Lock()
	defer s.mu.Unlock()
	if len(s.svids) > 0 {
		s.svids = map[spiffeid.ID]*certs.SVID{}
		s.publishLocked()
	}
}

func (s *Source) publishLocked() {
	list := make([]*certs.SVID, 0, len(s.svids))
	for _, v := range s.svids {
		list = append(list, v)
	}
	s.feed.Publish(s.bundle, list)
}

func sameSVIDs(a, b map[spiffeid.ID]*certs.SVID) bool {
	if len(a) != len(b) {
		return false
	}
	for id, v := range a {
		if b[id] != v {
			return false
		}
	}
	return true
}

// backoffStrategy retries after 100ms, doubling up to max: go-spiffe's
// default waits up to 30s, too long for a pod waiting for its identity.
type backoffStrategy struct{ max time.Duration }

func (b backoffStrategy) NewBackoff() workloadapi.Backoff { return &backoff{max: b.max} }

type backoff struct{ next, max time.Duration }

func (b *backoff) Next() time.Duration {
	if b.next == 0 {
		b.next = min(100*time.Millisecond, b.max)
	}
	d := b.next
	b.next = min(2*b.next, b.max)
	return d
}

func (b *backoff) Reset() { b.next = 0 }

// logAdapter passes go-spiffe's log lines to slog. Its errors are about
// retried streams, which watchError reports with their meaning, so they
// are warnings here.
type logAdapter struct{ l *slog.Logger }

func (a logAdapter) Debugf(format string, args ...any) {
	a.l.Debug("spire: " + fmt.Sprintf(format, args...))
}
func (a logAdapter) Infof(format string, args ...any) {
	a.l.Info("spire: " + fmt.Sprintf(format, args...))
}
func (a logAdapter) Warnf(format string, args ...any) {
	a.l.Warn("spire: " + fmt.Sprintf(format, args...))
}
func (a logAdapter) Errorf(format string, args ...any) {
	a.l.Warn("spire: " + fmt.Sprintf(format, args...))
}
