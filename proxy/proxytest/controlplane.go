package proxytest

import (
	"context"
	"net"
	"path/filepath"
	"sync"
	"testing"
	"time"

	discovery "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"github.com/envoyproxy/go-control-plane/pkg/cache/types"
	cache "github.com/envoyproxy/go-control-plane/pkg/cache/v3"
	"github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	server "github.com/envoyproxy/go-control-plane/pkg/server/v3"
	"google.golang.org/grpc"
	"google.golang.org/protobuf/proto"
)

// ControlPlane is an ADS server on a unix socket.
type ControlPlane struct {
	Cache  cache.SnapshotCache
	Socket string // path of the unix socket

	t      testing.TB
	mu     sync.Mutex
	reqs   []*discovery.DiscoveryRequest
	notify chan struct{}
	srv    *grpc.Server
	cancel context.CancelFunc
}

// Start serves ADS on dir/xds.sock until the test ends (or Stop).
func Start(t testing.TB, dir string) *ControlPlane {
	t.Helper()
	cp := &ControlPlane{
		Cache:  cache.NewSnapshotCache(true, cache.IDHash{}, nil),
		Socket: filepath.Join(dir, "xds.sock"),
		t:      t,
		notify: make(chan struct{}),
	}
	cp.serve()
	t.Cleanup(cp.Stop)
	return cp
}

// Address is the proxy's --xds-address for this server.
func (cp *ControlPlane) Address() string { return "unix://" + cp.Socket }

func (cp *ControlPlane) serve() {
	ctx, cancel := context.WithCancel(context.Background())
	cb := server.CallbackFuncs{
		StreamRequestFunc: func(_ int64, req *discovery.DiscoveryRequest) error {
			cp.mu.Lock()
			cp.reqs = append(cp.reqs, proto.Clone(req).(*discovery.DiscoveryRequest))
			close(cp.notify)
			cp.notify = make(chan struct{})
			cp.mu.Unlock()
			return nil
		},
	}
	srv := grpc.NewServer()
	discovery.RegisterAggregatedDiscoveryServiceServer(srv, server.NewServer(ctx, cp.Cache, cb))
	ln, err := net.Listen("unix", cp.Socket)
	if err != nil {
		cancel()
		cp.t.Fatalf("control plane: listen on %s: %v", cp.Socket, err)
	}
	go func() { _ = srv.Serve(ln) }()
	cp.mu.Lock()
	cp.srv, cp.cancel = srv, cancel
	cp.mu.Unlock()
}

// Stop takes the server away, as when the agent exits.
func (cp *ControlPlane) Stop() {
	cp.mu.Lock()
	srv, cancel := cp.srv, cp.cancel
	cp.srv, cp.cancel = nil, nil
	cp.mu.Unlock()
	if srv != nil {
		srv.Stop()
		cancel()
	}
}

// Restart serves again on the same socket with the same cache.
func (cp *ControlPlane) Restart() { cp.serve() }

// Set installs a consistent snapshot for node.
func (cp *ControlPlane) Set(node, version string, res map[resource.Type][]types.Resource) {
	cp.t.Helper()
	snap, err := cache.NewSnapshot(version, res)
	if err != nil {
		cp.t.Fatalf("snapshot %s: %v", version, err)
	}
	if err := snap.Consistent(); err != nil {
		cp.t.Fatalf("snapshot %s is not consistent: %v", version, err)
	}
	if err := cp.Cache.SetSnapshot(context.Background(), node, snap); err != nil {
		cp.t.Fatalf("set snapshot %s: %v", version, err)
	}
}

// Requests returns the DiscoveryRequests received so far.
func (cp *ControlPlane) Requests() []*discovery.DiscoveryRequest {
	cp.mu.Lock()
	defer cp.mu.Unlock()
	return append([]*discovery.DiscoveryRequest(nil), cp.reqs...)
}

// WaitRequest waits until a request satisfies match and returns it.
func (cp *ControlPlane) WaitRequest(timeout time.Duration, match func(*discovery.DiscoveryRequest) bool) *discovery.DiscoveryRequest {
	cp.t.Helper()
	deadline := time.After(timeout)
	seen := 0
	for {
		cp.mu.Lock()
		reqs, ch := cp.reqs[seen:], cp.notify
		seen = len(cp.reqs)
		cp.mu.Unlock()
		for _, r := range reqs {
			if match(r) {
				return r
			}
		}
		select {
		case <-ch:
		case <-deadline:
			cp.t.Fatalf("control plane: no matching DiscoveryRequest within %s", timeout)
			return nil
		}
	}
}

// IsACK matches the ACK of version for typeURL.
func IsACK(typeURL, version string) func(*discovery.DiscoveryRequest) bool {
	return func(r *discovery.DiscoveryRequest) bool {
		return r.GetTypeUrl() == typeURL && r.GetVersionInfo() == version && r.GetResponseNonce() != "" && r.GetErrorDetail() == nil
	}
}

// IsNACK matches a NACK for typeURL.
func IsNACK(typeURL string) func(*discovery.DiscoveryRequest) bool {
	return func(r *discovery.DiscoveryRequest) bool {
		return r.GetTypeUrl() == typeURL && r.GetErrorDetail() != nil
	}
}
