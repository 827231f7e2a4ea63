package xds

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"sync"
	"time"

	accesslogv3 "github.com/envoyproxy/go-control-plane/envoy/service/accesslog/v3"
	discoverygrpc "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"github.com/envoyproxy/go-control-plane/pkg/cache/v3"
	"github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	serverv3 "github.com/envoyproxy/go-control-plane/pkg/server/v3"
	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/grpc"
	"google.golang.org/grpc/keepalive"
	"google.golang.org/protobuf/proto"
)

// Server serves each node's proxy its configuration over ADS (gRPC,
// state-of-the-world and delta) and tracks what each proxy acknowledged.
// On the same gRPC server it receives the proxies' HTTP access logs
// (AccessLogServer), delivered as L7Events to the function set with
// OnL7Event.
//
// Lock order: setMu, then mu. The snapshot cache is called with setMu held
// but never mu: its responses reach the callbacks, which take mu, on the
// stream goroutines.
type Server struct {
	log     *slog.Logger
	cache   cache.SnapshotCache
	metrics *metrics
	als     *AccessLogServer
	now     func() time.Time

	setMu sync.Mutex // serializes SetNode/RemoveNode so the cache sees versions in the order status does

	mu      sync.Mutex
	nodes   map[string]*nodeState
	streams map[streamKey]*streamState
}

// NewServer returns a server with no nodes. Metrics are registered on reg
// when it is not nil.
func NewServer(log *slog.Logger, reg prometheus.Registerer) *Server {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	s := &Server{
		log:     log,
		metrics: newMetrics(),
		als:     NewAccessLogServer(log, reg),
		now:     time.Now,
		nodes:   map[string]*nodeState{},
		streams: map[streamKey]*streamState{},
	}
	s.cache = cache.NewSnapshotCache(true, cache.IDHash{}, cacheLogger{log})
	if reg != nil {
		s.metrics.register(reg)
	}
	return s
}

// OnL7Event sets the function that receives the proxies' access log
// entries as events (nil drops them); see AccessLogServer.OnL7Event. It
// may be called before or after Serve.
func (s *Server) OnL7Event(fn func(L7Event)) { s.als.OnL7Event(fn) }

func (s *Server) OnConnEvent(fn func(ConnEvent)) { s.als.OnConnEvent(fn) }

// SetNode builds the configuration of node's proxy from in and serves it;
// it returns the version to wait for (WaitAcked). Setting the same contents
// again changes nothing.
func (s *Server) SetNode(node string, in Input) (string, error) {
	if node == "" {
		return "", errors.New("set node: empty node name")
	}
	res, err := Build(in)
	if err != nil {
		return "", fmt.Errorf("node %s: %w", node, err)
	}
	snap, err := res.Snapshot()
	if err != nil {
		return "", fmt.Errorf("node %s: %w", node, err)
	}
	s.setMu.Lock()
	defer s.setMu.Unlock()
	s.mu.Lock()
	ns := s.node(node)
	same := ns.cur != nil && ns.cur.Version == res.Version
	if !same {
		ns.setVersion(res, s.now())
		s.adoptApplied(node)
	}
	s.mu.Unlock()
	if same {
		return res.Version, nil
	}
	if err := s.cache.SetSnapshot(context.Background(), node, snap); err != nil {
		return "", fmt.Errorf("node %s: set snapshot %s: %w", node, res.Version, err)
	}
	s.log.Info("xds: new configuration", "node", node, "version", res.Version,
		"listeners", len(res.Listeners), "routes", len(res.Routes), "clusters", len(res.Clusters))
	return res.Version, nil
}

// RemoveNode stops serving node: its snapshot and status are dropped.
// Connected proxies keep what they have.
func (s *Server) RemoveNode(node string) {
	s.setMu.Lock()
	defer s.setMu.Unlock()
	s.cache.ClearSnapshot(node)
	s.mu.Lock()
	if ns, ok := s.nodes[node]; ok {
		ns.cur = nil
		ns.notify()
		if ns.streams == 0 {
			delete(s.nodes, node)
		}
	}
	s.mu.Unlock()
}

// Resources returns the configuration last set for node, nil if none.
func (s *Server) Resources(node string) *Resources {
	s.mu.Lock()
	defer s.mu.Unlock()
	if ns, ok := s.nodes[node]; ok {
		return ns.cur
	}
	return nil
}

// Serve serves ADS and the access log service on the unix socket path
// until ctx ends. A stale socket at path is replaced; any other file there
// is an error.
func (s *Server) Serve(ctx context.Context, path string) error {
	if fi, err := os.Lstat(path); err == nil {
		if fi.Mode().Type() != fs.ModeSocket {
			return fmt.Errorf("xds socket %s: exists and is not a socket", path)
		}
		if err := os.Remove(path); err != nil {
			return fmt.Errorf("xds socket %s: %w", path, err)
		}
	}
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return fmt.Errorf("xds socket %s: %w", path, err)
	}
	lis, err := net.Listen("unix", path)
	if err != nil {
		return fmt.Errorf("xds socket %s: %w", path, err)
	}
	defer os.Remove(path)
	// The proxy may run as another user of the node; the directory
	// decides who reaches the socket.
	if err := os.Chmod(path, 0o666); err != nil {
		lis.Close()
		return fmt.Errorf("xds socket %s: %w", path, err)
	}
	return s.serve(ctx, lis)
}

func (s *Server) serve(ctx context.Context, lis net.Listener) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	gs := grpc.NewServer(
		grpc.MaxConcurrentStreams(1000),
		grpc.KeepaliveParams(keepalive.ServerParameters{Time: 30 * time.Second, Timeout: 5 * time.Second}),
		grpc.KeepaliveEnforcementPolicy(keepalive.EnforcementPolicy{MinTime: 15 * time.Second, PermitWithoutStream: true}),
	)
	discoverygrpc.RegisterAggregatedDiscoveryServiceServer(gs, serverv3.NewServer(ctx, parkingCache{s}, (*callbacks)(s)))
	// Access log streams last as long as the proxy: they end with ctx too.
	accesslogv3.RegisterAccessLogServiceServer(gs, alsHandler{a: s.als, ctx: ctx})
	s.log.Info("xds: serving ADS and access logs", "address", lis.Addr().String())
	errc := make(chan error, 1)
	go func() { errc <- gs.Serve(lis) }()
	select {
	case err := <-errc:
		return fmt.Errorf("xds: serve %s: %w", lis.Addr(), err)
	case <-ctx.Done():
	}
	// Streams end with ctx (the xDS server watches it); give them a moment.
	done := make(chan struct{})
	go func() { gs.GracefulStop(); close(done) }()
	select {
	case <-done:
	case <-time.After(5 * time.Second):
		gs.Stop()
		<-done
	}
	return nil
}

// parkingCache keeps go-control-plane's snapshot cache from answering a
// state-of-the-world NACK with the rejected version again: the cache
// compares the request's version_info (after a NACK, the last version the
// proxy accepted) with the snapshot's and would resend at once, which the
// proxy would reject again, forever (go-control-plane issues 46, 962). A
// NACK of the snapshot's current version of a type waits for the next
// snapshot instead. Delta streams need nothing: the delta server records
// what it sent as the proxy's state, NACKed or not.
type parkingCache struct{ s *Server }

func (c parkingCache) CreateWatch(req *cache.Request, sub cache.Subscription, value chan cache.Response) (func(), error) {
	if req.GetErrorDetail() != nil {
		// The callbacks recorded the NACK before the server asks for a watch.
		node, typ := req.GetNode().GetId(), req.GetTypeUrl()
		c.s.mu.Lock()
		var rejected, current string
		if ns, ok := c.s.nodes[node]; ok && ns.types[typ] != nil {
			ts := ns.types[typ]
			current = ts.Version
			if ts.NACK != nil {
				rejected = ts.NACK.Version
			}
		}
		c.s.mu.Unlock()
		if rejected != "" && rejected == current {
			req = proto.Clone(req).(*cache.Request)
			req.VersionInfo = current
		}
	}
	return c.s.cache.CreateWatch(req, sub, value)
}

func (c parkingCache) CreateDeltaWatch(req *cache.DeltaRequest, sub cache.Subscription, value chan cache.DeltaResponse) (func(), error) {
	return c.s.cache.CreateDeltaWatch(req, sub, value)
}

func (c parkingCache) Fetch(ctx context.Context, req *cache.Request) (cache.Response, error) {
	return c.s.cache.Fetch(ctx, req)
}

// The resource types a proxy requests by wildcard: it always receives and
// acknowledges them, empty or not. Routes and secrets it requests by the
// names the listeners and clusters use.
func wildcardType(t resource.Type) bool {
	return t == resource.ListenerType || t == resource.ClusterType
}

// cacheLogger sends go-control-plane's cache logs to slog; its Info lines
// are per-watch chatter, so they go to Debug.
type cacheLogger struct{ l *slog.Logger }

func (c cacheLogger) Debugf(format string, args ...any) { c.l.Debug(fmt.Sprintf(format, args...)) }
func (c cacheLogger) Infof(format string, args ...any)  { c.l.Debug(fmt.Sprintf(format, args...)) }
func (c cacheLogger) Warnf(format string, args ...any)  { c.l.Warn(fmt.Sprintf(format, args...)) }
func (c cacheLogger) Errorf(format string, args ...any) { c.l.Error(fmt.Sprintf(format, args...)) }
