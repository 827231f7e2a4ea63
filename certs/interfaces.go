package certs

import (
	"context"
	"crypto/x509"
	"time"
)

// Authorizer decides whether a node may obtain a workload's identity. It
// returns nil to allow, or an error saying why not (a *DeniedError when the
// request is refused, anything else when the decision could not be made).
// Standalone mode decides from the world files (package certs/worldauth);
// Kubernetes mode will ask the API server (issue 7).
type Authorizer interface {
	Authorize(ctx context.Context, req SignRequest) error
}

// Issuer is what a Manager needs of the CA. *CA implements it in process; a
// client of a remote CA can implement it later, which is why the Manager
// sends CSRs and never keys.
type Issuer interface {
	// Sign returns the certificate chain (leaf first) for req's CSR.
	Sign(ctx context.Context, req SignRequest) ([]*x509.Certificate, error)
	// WatchBundle calls fn with the current trust bundle and then with
	// every new version, until ctx ends.
	WatchBundle(ctx context.Context, fn func(*Bundle)) error
}

// Source is an identity source the agent serves SDS from: the built-in CA's
// per-node Manager, or SPIRE's Workload API (package certs/spire). Both also
// have a Run(ctx) error method that keeps them current.
type Source interface {
	// Snapshot returns the current SVIDs and trust bundle.
	Snapshot() *Snapshot
	// Watch calls fn with the current snapshot, once the source has a
	// trust bundle, and then with every newer one, until ctx ends.
	Watch(ctx context.Context, fn func(*Snapshot)) error
}

// Clock is the time source of the CA and the Manager, so that tests move
// time instead of sleeping (certstest.Clock).
type Clock interface {
	Now() time.Time
	// After sends the time on the returned channel once d has passed; at
	// once if d <= 0.
	After(d time.Duration) <-chan time.Time
}

// SystemClock is the real clock.
type SystemClock struct{}

// Now returns time.Now().
func (SystemClock) Now() time.Time { return time.Now() }

// After returns time.After(d).
func (SystemClock) After(d time.Duration) <-chan time.Time { return time.After(d) }
