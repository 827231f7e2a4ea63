// Package spiretest is a SPIFFE Workload API server for tests, written on
// go-spiffe's workload proto and served on a unix socket: it serves the
// X.509 SVIDs and bundles a test sets, pushes every change to open
// streams (a rotation), and can fail streams as the SPIRE agent does.
package spiretest

import (
	"crypto/x509"
	"net"
	"path/filepath"
	"sync"
	"testing"

	"github.com/spiffe/go-spiffe/v2/proto/spiffe/workload"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	"github.com/nodemesh/nodemesh/certs"
)

// Server is a fake Workload API. Its zero value is not usable; use Start.
type Server struct {
	workload.UnimplementedSpiffeWorkloadAPIServer
	// Addr is the server's endpoint for workloadapi.WithAddr.
	Addr string

	mu      sync.Mutex
	svids   *workload.X509SVIDResponse
	bundles *workload.X509BundlesResponse
	err     error
	changed chan struct{} // closed and replaced on every Set
	calls   int
	grpc    *grpc.Server
}

// Start serves a Workload API on a unix socket in a temporary directory
// until the test ends. Streams wait until the first Set.
func Start(t testing.TB) *Server {
	t.Helper()
	return StartAt(t, filepath.Join(t.TempDir(), "agent.sock"))
}

// StartAt serves on the unix socket sock: a client may be waiting for it,
// as the node agent waits for a SPIRE agent that starts later or restarts.
func StartAt(t testing.TB, sock string) *Server {
	t.Helper()
	ln, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	s := &Server{Addr: "unix://" + sock, changed: make(chan struct{}), grpc: grpc.NewServer()}
	workload.RegisterSpiffeWorkloadAPIServer(s.grpc, s)
	go s.grpc.Serve(ln)
	t.Cleanup(s.Stop)
	return s
}

// Stop closes the socket and every stream, as a SPIRE agent that exits.
func (s *Server) Stop() { s.grpc.Stop() }

// SetX509 serves svids, each with the roots bundle has for its trust
// domain, and bundle's other trust domains as federated bundles, to new
// streams and to open ones.
func (s *Server) SetX509(svids []*certs.SVID, bundle *certs.Bundle) {
	resp := &workload.X509SVIDResponse{FederatedBundles: map[string][]byte{}}
	own := map[spiffeid.TrustDomain]bool{}
	for _, v := range svids {
		der, err := x509.MarshalPKCS8PrivateKey(v.PrivateKey())
		if err != nil {
			panic(err)
		}
		resp.Svids = append(resp.Svids, &workload.X509SVID{
			SpiffeId:    v.ID().String(),
			X509Svid:    concat(v.Chain()),
			X509SvidKey: der,
			Bundle:      concat(bundle.Roots(v.ID().TrustDomain())),
		})
		own[v.ID().TrustDomain()] = true
	}
	all := &workload.X509BundlesResponse{Bundles: map[string][]byte{}}
	for _, td := range bundle.TrustDomains() {
		all.Bundles[td.IDString()] = concat(bundle.Roots(td))
		if !own[td] {
			resp.FederatedBundles[td.IDString()] = concat(bundle.Roots(td))
		}
	}
	s.set(resp, all, nil)
}

// SetError ends open X.509 streams, and every new one, with code: as the
// SPIRE agent ends them with PermissionDenied when no registration entry
// matches the caller. The next SetX509 serves again.
func (s *Server) SetError(code codes.Code, msg string) {
	s.set(nil, nil, status.Error(code, msg))
}

// Calls returns how many X.509 streams were opened.
func (s *Server) Calls() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.calls
}

func (s *Server) set(svids *workload.X509SVIDResponse, bundles *workload.X509BundlesResponse, err error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.svids, s.bundles, s.err = svids, bundles, err
	close(s.changed)
	s.changed = make(chan struct{})
}

// FetchX509SVID streams the current X.509 SVIDs and every change.
func (s *Server) FetchX509SVID(_ *workload.X509SVIDRequest, stream workload.SpiffeWorkloadAPI_FetchX509SVIDServer) error {
	return s.serve(stream, func() error {
		s.mu.Lock()
		resp := s.svids
		s.mu.Unlock()
		if resp == nil {
			return nil
		}
		return stream.Send(resp)
	})
}

// FetchX509Bundles streams the current X.509 bundles and every change.
func (s *Server) FetchX509Bundles(_ *workload.X509BundlesRequest, stream workload.SpiffeWorkloadAPI_FetchX509BundlesServer) error {
	return s.serve(stream, func() error {
		s.mu.Lock()
		resp := s.bundles
		s.mu.Unlock()
		if resp == nil {
			return nil
		}
		return stream.Send(resp)
	})
}

// serve sends the current state with send, then again on every change,
// until the client leaves or the server is set to fail.
func (s *Server) serve(stream grpc.ServerStream, send func() error) error {
	// The Workload API refuses requests without this header, which keeps
	// browsers and other confused deputies out.
	md, _ := metadata.FromIncomingContext(stream.Context())
	if v := md.Get("workload.spiffe.io"); len(v) != 1 || v[0] != "true" {
		return status.Error(codes.InvalidArgument, "security header missing from request")
	}
	s.mu.Lock()
	s.calls++
	s.mu.Unlock()
	for {
		s.mu.Lock()
		err, changed := s.err, s.changed
		s.mu.Unlock()
		if err != nil {
			return err
		}
		if err := send(); err != nil {
			return err
		}
		select {
		case <-stream.Context().Done():
			return nil
		case <-changed:
		}
	}
}

func concat(cs []*x509.Certificate) []byte {
	var out []byte
	for _, c := range cs {
		out = append(out, c.Raw...)
	}
	return out
}
