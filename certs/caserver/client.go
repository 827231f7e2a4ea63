package caserver

import (
	"context"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"google.golang.org/grpc"
	"google.golang.org/grpc/backoff"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	"github.com/nodemesh/nodemesh/certs"
)

// Client is a node agent's client of the CA server, on the node's socket.
// It implements certs.Issuer, so a certs.Manager can use a CA in another
// process. It is safe for concurrent use.
type Client struct {
	path               string
	log                *slog.Logger
	retryMin, retryMax time.Duration
	conn               *grpc.ClientConn
	err                error // from grpc.NewClient, returned by every call
}

var _ certs.Issuer = (*Client)(nil)

// Option configures a Client.
type Option func(*Client)

// WithLogger makes the client log its reconnections to l.
func WithLogger(l *slog.Logger) Option { return func(c *Client) { c.log = l } }

// WithBackoff sets the delays between reconnection attempts: min first,
// doubling up to max (defaults 1s and 30s, as the Manager's retries).
func WithBackoff(min, max time.Duration) Option {
	return func(c *Client) { c.retryMin, c.retryMax = min, max }
}

// NewClient returns a client of the CA server socket at socketPath (the
// node's, <dir>/nodes/<node>.sock). It connects lazily: the CA need not be
// up yet, and a restarted CA is reconnected to.
func NewClient(socketPath string, opts ...Option) *Client {
	c := &Client{path: socketPath, retryMin: time.Second, retryMax: 30 * time.Second}
	for _, o := range opts {
		o(c)
	}
	if c.log == nil {
		c.log = slog.New(slog.DiscardHandler)
	}
	if c.retryMin <= 0 {
		c.retryMin = time.Second
	}
	if c.retryMax < c.retryMin {
		c.retryMax = c.retryMin
	}
	c.conn, c.err = dial(socketPath, c.retryMin, c.retryMax)
	if c.err != nil {
		c.err = fmt.Errorf("ca %s: %w", socketPath, c.err)
	}
	return c
}

func dial(path string, retryMin, retryMax time.Duration) (*grpc.ClientConn, error) {
	return grpc.NewClient("passthrough:///nodemesh-ca",
		grpc.WithContextDialer(func(ctx context.Context, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, "unix", path)
		}),
		grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithDefaultCallOptions(grpc.ForceCodec(jsonCodec{})),
		grpc.WithConnectParams(grpc.ConnectParams{
			Backoff:           backoff.Config{BaseDelay: retryMin, Multiplier: 2, Jitter: 0.2, MaxDelay: retryMax},
			MinConnectTimeout: 5 * time.Second,
		}))
}

// Close closes the connection.
func (c *Client) Close() error {
	if c.conn == nil {
		return nil
	}
	return c.conn.Close()
}

// Sign asks the CA to sign req.CSR for req.Workload. The CA takes the node
// from the socket; req.Node only travels along for its logs. A refusal
// keeps the CA's text and its kind: errors.As finds a *certs.DeniedError
// (with the CA's DenyReason) for a denial, errors.Is finds
// certs.ErrInvalidCSR for a bad CSR. Other errors (CA unreachable, timeout)
// are gRPC statuses; the Manager retries them all.
func (c *Client) Sign(ctx context.Context, req certs.SignRequest) ([]*x509.Certificate, error) {
	if c.err != nil {
		return nil, c.err
	}
	if req.CSR == nil {
		return nil, fmt.Errorf("%w: none", certs.ErrInvalidCSR)
	}
	in := &SignRequest{Node: req.Node, Namespace: req.Workload.Namespace, Pod: req.Workload.Pod, ServiceAccount: req.Workload.ServiceAccount, CSR: req.CSR.Raw}
	out := &SignResponse{}
	var trailer metadata.MD
	if err := c.conn.Invoke(ctx, "/"+CAServiceName+"/Sign", in, out, grpc.Trailer(&trailer)); err != nil {
		return nil, remoteError(c.path, err, trailer)
	}
	if len(out.Chain) == 0 {
		return nil, fmt.Errorf("ca %s: empty chain", c.path)
	}
	chain := make([]*x509.Certificate, len(out.Chain))
	for i, der := range out.Chain {
		cert, err := x509.ParseCertificate(der)
		if err != nil {
			return nil, fmt.Errorf("ca %s: certificate %d of the chain: %w", c.path, i, err)
		}
		chain[i] = cert
	}
	return chain, nil
}

// SignError is a Sign refused by the CA (or failed on the way). Its text is
// the CA's; it unwraps to a *certs.DeniedError or certs.ErrInvalidCSR when
// the CA said so, and GRPCStatus gives the status.
type SignError struct {
	Socket string
	Status *status.Status
	cause  error
}

func (e *SignError) Error() string {
	return fmt.Sprintf("ca %s: %s: %s", e.Socket, e.Status.Code(), e.Status.Message())
}

// Unwrap returns the *certs.DeniedError or certs.ErrInvalidCSR the CA
// reported, if any.
func (e *SignError) Unwrap() error { return e.cause }

// GRPCStatus returns the call's status.
func (e *SignError) GRPCStatus() *status.Status { return e.Status }

func remoteError(path string, err error, trailer metadata.MD) error {
	st, ok := status.FromError(err)
	if !ok {
		return fmt.Errorf("ca %s: %w", path, err)
	}
	e := &SignError{Socket: path, Status: st}
	first := func(k string) string {
		if v := trailer.Get(k); len(v) > 0 {
			return v[0]
		}
		return ""
	}
	switch first(trailerErrorKind) {
	case "denied":
		e.cause = &certs.DeniedError{Reason: certs.DenyReason(first(trailerDenyReason)), Detail: first(trailerDenyDetail)}
	case "invalid-csr":
		e.cause = certs.ErrInvalidCSR
	}
	return e
}

// WatchBundle calls fn with the CA's trust bundle and with every new one
// until ctx ends, then returns nil. When the stream breaks (the CA
// restarted, or is not up yet) it reconnects with backoff; a bundle is
// passed on only when its roots differ from the last one's. Versions are
// the client's own, growing with each bundle it passes on, since a
// restarted CA counts from 1 again.
func (c *Client) WatchBundle(ctx context.Context, fn func(*certs.Bundle)) error {
	var last *certs.Bundle
	delay := c.retryMin
	for {
		got := false
		err := c.watchOnce(ctx, func(m *BundleMessage) error {
			roots, err := bundleRoots(m)
			if err != nil {
				return err
			}
			got = true
			if b := certs.NewBundle(last.Version()+1, roots); last == nil || !last.SameRoots(b) {
				fn(b)
				last = b
			}
			return nil
		})
		if ctx.Err() != nil {
			return nil
		}
		if got {
			delay = c.retryMin
		}
		c.log.Warn("ca bundle watch interrupted; reconnecting", "socket", c.path, "retry_in", delay, "err", err)
		select {
		case <-ctx.Done():
			return nil
		case <-time.After(delay):
		}
		delay = min(2*delay, c.retryMax)
	}
}

func (c *Client) watchOnce(ctx context.Context, fn func(*BundleMessage) error) error {
	if c.err != nil {
		return c.err
	}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	stream, err := c.conn.NewStream(ctx, &caServiceDesc.Streams[0], "/"+CAServiceName+"/WatchBundle")
	if err != nil {
		return err
	}
	if err := stream.SendMsg(&BundleRequest{}); err != nil {
		return err
	}
	if err := stream.CloseSend(); err != nil {
		return err
	}
	for {
		m := &BundleMessage{}
		if err := stream.RecvMsg(m); err != nil {
			if errors.Is(err, io.EOF) {
				return errors.New("the CA ended the stream")
			}
			return err
		}
		if err := fn(m); err != nil {
			return err
		}
	}
}

func bundleRoots(m *BundleMessage) (map[spiffeid.TrustDomain][]*x509.Certificate, error) {
	roots := map[spiffeid.TrustDomain][]*x509.Certificate{}
	for _, r := range m.TrustDomains {
		td, err := spiffeid.TrustDomainFromString(r.TrustDomain)
		if err != nil {
			return nil, fmt.Errorf("bundle version %d: trust domain %q: %w", m.Version, r.TrustDomain, err)
		}
		for i, der := range r.Roots {
			cert, err := x509.ParseCertificate(der)
			if err != nil {
				return nil, fmt.Errorf("bundle version %d: root %d of %s: %w", m.Version, i, td.Name(), err)
			}
			roots[td] = append(roots[td], cert)
		}
	}
	return roots, nil
}

// AdminClient talks to the CA server's admin socket (meshctl ca).
type AdminClient struct {
	conn *grpc.ClientConn
}

// DialAdmin connects to the admin socket at path (<dir>/admin.sock).
func DialAdmin(path string) (*AdminClient, error) {
	if _, err := os.Stat(path); err != nil {
		return nil, fmt.Errorf("ca admin socket %s: %w (is nodemesh-ca running?)", path, errors.Unwrap(err))
	}
	conn, err := dial(path, time.Second, 5*time.Second)
	if err != nil {
		return nil, fmt.Errorf("ca admin socket %s: %w", path, err)
	}
	return &AdminClient{conn: conn}, nil
}

// Close closes the connection.
func (a *AdminClient) Close() error { return a.conn.Close() }

// Roots describes the CA's roots.
func (a *AdminClient) Roots(ctx context.Context) (*RootsResponse, error) {
	out := &RootsResponse{}
	return out, a.conn.Invoke(ctx, "/"+AdminServiceName+"/Roots", &RootsRequest{}, out)
}

// RotateRoot adds a root that is trusted at once and signs from
// activateAfter on.
func (a *AdminClient) RotateRoot(ctx context.Context, activateAfter time.Duration) (*RotateResponse, error) {
	out := &RotateResponse{}
	return out, a.conn.Invoke(ctx, "/"+AdminServiceName+"/RotateRoot", &RotateRequest{ActivateAfter: activateAfter}, out)
}
