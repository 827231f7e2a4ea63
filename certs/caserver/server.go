package caserver

import (
	"context"
	"crypto/sha256"
	"crypto/x509"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"regexp"
	"sort"
	"strings"
	"sync"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	"github.com/nodemesh/nodemesh/api"
	"github.com/nodemesh/nodemesh/certs"
	"github.com/nodemesh/nodemesh/certs/worldauth"
)

// DefaultDir is the default socket directory of the CA.
const DefaultDir = "/run/nodemesh/ca"

// NodeSocket returns the path of node's socket under dir:
// <dir>/nodes/<node>.sock.
func NodeSocket(dir, node string) string { return filepath.Join(dir, "nodes", node+".sock") }

// AdminSocket returns the path of the admin socket under dir:
// <dir>/admin.sock.
func AdminSocket(dir string) string { return filepath.Join(dir, "admin.sock") }

// Config configures a Server.
type Config struct {
	// Dir holds the sockets (default DefaultDir). It and its nodes
	// subdirectory are made mode 0700.
	Dir string
	// CA signs; its keys stay in this process.
	CA *certs.CA
	// Authorizer, if set, is the CA's authorizer: SetWorld updates it
	// together with the node sockets.
	Authorizer *worldauth.Authorizer
	Clock      certs.Clock  // SystemClock if nil; RotateRoot counts from its Now
	Log        *slog.Logger // discards if nil
}

// Server serves a CA on one unix socket per node and an admin socket. The
// node a request comes from is the socket it arrived on.
type Server struct {
	cfg    Config
	log    *slog.Logger
	admin  *grpc.Server
	adminL net.Listener

	mu     sync.Mutex
	nodes  map[string]*grpc.Server
	closed bool
}

// New prepares the socket directory, removes the node sockets a previous
// run left there, and listens on the admin socket. Run serves it; SetNodes
// or SetWorld opens the node sockets.
func New(cfg Config) (*Server, error) {
	if cfg.Dir == "" {
		cfg.Dir = DefaultDir
	}
	if cfg.CA == nil {
		return nil, errors.New("ca server: a CA is required")
	}
	if cfg.Clock == nil {
		cfg.Clock = certs.SystemClock{}
	}
	if cfg.Log == nil {
		cfg.Log = slog.New(slog.DiscardHandler)
	}
	nodesDir := filepath.Join(cfg.Dir, "nodes")
	for _, d := range []string{cfg.Dir, nodesDir} {
		if err := os.MkdirAll(d, 0o700); err != nil {
			return nil, fmt.Errorf("ca server: %w", err)
		}
		if err := os.Chmod(d, 0o700); err != nil {
			return nil, fmt.Errorf("ca server: %w", err)
		}
	}
	stale, _ := filepath.Glob(filepath.Join(nodesDir, "*.sock"))
	for _, p := range stale {
		_ = os.Remove(p)
	}
	l, err := listen(AdminSocket(cfg.Dir))
	if err != nil {
		return nil, fmt.Errorf("ca server: admin socket: %w", err)
	}
	s := &Server{cfg: cfg, log: cfg.Log, adminL: l, nodes: map[string]*grpc.Server{}}
	s.admin = grpc.NewServer(grpc.ForceServerCodec(jsonCodec{}))
	s.admin.RegisterService(&adminServiceDesc, &adminHandler{s: s})
	return s, nil
}

// listen makes a unix socket at path, mode 0600, replacing a stale one.
// The directory is 0700, so nobody else reaches the socket before chmod.
func listen(path string) (net.Listener, error) {
	_ = os.Remove(path)
	l, err := net.Listen("unix", path)
	if err != nil {
		return nil, err
	}
	if err := os.Chmod(path, 0o600); err != nil {
		l.Close()
		return nil, err
	}
	return l, nil
}

// Run serves the admin socket, and the node sockets opened meanwhile,
// until ctx ends; then it closes every socket and returns nil.
func (s *Server) Run(ctx context.Context) error {
	errc := make(chan error, 1)
	go func() { errc <- s.admin.Serve(s.adminL) }()
	s.log.Info("ca server listening", "dir", s.cfg.Dir, "admin_socket", AdminSocket(s.cfg.Dir))
	select {
	case <-ctx.Done():
		s.Close()
		<-errc
		return nil
	case err := <-errc:
		s.Close()
		if err != nil && !errors.Is(err, grpc.ErrServerStopped) {
			return fmt.Errorf("ca server: admin socket: %w", err)
		}
		return nil
	}
}

// Close stops serving and removes every socket. Calls after the first do
// nothing.
func (s *Server) Close() {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return
	}
	s.closed = true
	nodes := s.nodes
	s.nodes = nil
	s.mu.Unlock()
	for n, gs := range nodes {
		gs.Stop()
		_ = os.Remove(NodeSocket(s.cfg.Dir, n))
	}
	s.admin.Stop()
	_ = os.Remove(AdminSocket(s.cfg.Dir))
}

// NodesOf returns the nodes of w, sorted: those it lists, and those its
// pods are scheduled on.
func NodesOf(w *api.World) []string {
	if w == nil {
		return nil
	}
	set := map[string]bool{}
	for i := range w.Nodes {
		set[w.Nodes[i].Metadata.Name] = true
	}
	for i := range w.Pods {
		set[w.Pods[i].Spec.NodeName] = true
	}
	delete(set, "")
	out := make([]string, 0, len(set))
	for n := range set {
		out = append(out, n)
	}
	sort.Strings(out)
	return out
}

// SetWorld makes the Authorizer (if configured) decide from w, and gives
// every node of w (NodesOf) a socket.
func (s *Server) SetWorld(w *api.World) error {
	if s.cfg.Authorizer != nil {
		s.cfg.Authorizer.SetWorld(w)
	}
	return s.SetNodes(NodesOf(w))
}

// nodeName is a DNS-1123 subdomain, as Kubernetes node names are; it also
// keeps names from leaving the nodes directory.
var nodeName = regexp.MustCompile(`^[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?$`)

// maxSocketPath is what fits in sockaddr_un's sun_path, with its NUL.
const maxSocketPath = 107

// SetNodes makes the node sockets those of nodes: it opens the missing
// ones and closes, with their connections, those of nodes no longer
// listed. A name that is not a valid node name, or whose socket path would
// be too long, is reported and skipped; the others are applied.
func (s *Server) SetNodes(nodes []string) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return errors.New("ca server: closed")
	}
	want := map[string]bool{}
	var errs []error
	for _, n := range nodes {
		switch p := NodeSocket(s.cfg.Dir, n); {
		case !nodeName.MatchString(n) || strings.Contains(n, ".."):
			errs = append(errs, fmt.Errorf("node %q: not a valid node name, no socket", n))
		case len(p) > maxSocketPath:
			errs = append(errs, fmt.Errorf("node %q: socket path %s is longer than %d bytes, no socket", n, p, maxSocketPath))
		default:
			want[n] = true
		}
	}
	for n, gs := range s.nodes {
		if !want[n] {
			gs.Stop()
			_ = os.Remove(NodeSocket(s.cfg.Dir, n))
			delete(s.nodes, n)
			s.log.Info("node socket removed", "node", n)
		}
	}
	for n := range want {
		if s.nodes[n] != nil {
			continue
		}
		p := NodeSocket(s.cfg.Dir, n)
		l, err := listen(p)
		if err != nil {
			errs = append(errs, fmt.Errorf("node %s: %w", n, err))
			continue
		}
		gs := grpc.NewServer(grpc.ForceServerCodec(jsonCodec{}))
		gs.RegisterService(&caServiceDesc, &nodeHandler{s: s, node: n})
		go func() { _ = gs.Serve(l) }()
		s.nodes[n] = gs
		s.log.Info("node socket added", "node", n, "socket", p)
	}
	err := errors.Join(errs...)
	if err != nil {
		s.log.Warn("some nodes have no socket", "err", err)
	}
	return err
}

// Nodes returns the nodes that have a socket, sorted.
func (s *Server) Nodes() []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := make([]string, 0, len(s.nodes))
	for n := range s.nodes {
		out = append(out, n)
	}
	sort.Strings(out)
	return out
}

// nodeHandler serves one node's socket: node is the transport's
// authentication of the requester.
type nodeHandler struct {
	s    *Server
	node string
}

func (h *nodeHandler) Sign(ctx context.Context, req *SignRequest) (*SignResponse, error) {
	log := h.s.log.With("node", h.node, "pod", req.Namespace+"/"+req.Pod, "service_account", req.ServiceAccount)
	if req.Node != "" && req.Node != h.node {
		log.Warn("request claims another node; the socket's node counts", "claimed_node", req.Node)
	}
	w := certs.Workload{Namespace: req.Namespace, Pod: req.Pod, ServiceAccount: req.ServiceAccount}
	if _, err := certs.WorkloadID(h.s.cfg.CA.TrustDomain(), w); err != nil || req.Pod == "" {
		if err == nil {
			err = fmt.Errorf("workload %s: pod name is required", w)
		}
		log.Warn("svid refused", "kind", "invalid-request", "err", err)
		_ = grpc.SetTrailer(ctx, metadata.Pairs(trailerErrorKind, "invalid-request"))
		return nil, status.Error(codes.InvalidArgument, err.Error())
	}
	csr, err := x509.ParseCertificateRequest(req.CSR)
	if err != nil {
		err = fmt.Errorf("sign for %s requested by node %q: %w: %v", w, h.node, certs.ErrInvalidCSR, err)
		log.Warn("svid refused", "kind", "invalid-csr", "err", err)
		return nil, signError(ctx, err)
	}
	chain, err := h.s.cfg.CA.Sign(ctx, certs.SignRequest{Node: h.node, Workload: w, CSR: csr})
	if err != nil {
		var d *certs.DeniedError
		switch {
		case errors.As(err, &d):
			log.Warn("svid refused", "kind", "denied", "reason", string(d.Reason), "err", err)
		case errors.Is(err, certs.ErrInvalidCSR):
			log.Warn("svid refused", "kind", "invalid-csr", "err", err)
		default:
			log.Warn("svid refused", "err", err)
		}
		return nil, signError(ctx, err)
	}
	resp := &SignResponse{Chain: make([][]byte, len(chain))}
	for i, c := range chain {
		resp.Chain[i] = c.Raw
	}
	leaf := chain[0]
	id := ""
	if len(leaf.URIs) == 1 {
		id = leaf.URIs[0].String()
	}
	log.Info("svid issued", "id", id, "serial", leaf.SerialNumber.Text(16), "not_after", leaf.NotAfter)
	return resp, nil
}

// signError turns a Sign error into a gRPC status whose message is the
// CA's text, with its kind in trailers for the client.
func signError(ctx context.Context, err error) error {
	var d *certs.DeniedError
	switch {
	case errors.As(err, &d):
		_ = grpc.SetTrailer(ctx, metadata.Pairs(trailerErrorKind, "denied", trailerDenyReason, string(d.Reason), trailerDenyDetail, d.Detail))
		return status.Error(codes.PermissionDenied, err.Error())
	case errors.Is(err, certs.ErrInvalidCSR):
		_ = grpc.SetTrailer(ctx, metadata.Pairs(trailerErrorKind, "invalid-csr"))
		return status.Error(codes.InvalidArgument, err.Error())
	case errors.Is(err, context.Canceled), errors.Is(err, context.DeadlineExceeded):
		return status.FromContextError(err).Err()
	}
	return status.Error(codes.Internal, err.Error())
}

func (h *nodeHandler) WatchBundle(ctx context.Context, send func(*BundleMessage) error) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var sendErr error
	h.s.log.Debug("bundle watch opened", "node", h.node)
	_ = h.s.cfg.CA.WatchBundle(ctx, func(b *certs.Bundle) {
		if sendErr != nil {
			return
		}
		if sendErr = send(bundleMessage(b)); sendErr != nil {
			cancel()
		}
	})
	h.s.log.Debug("bundle watch closed", "node", h.node)
	return sendErr
}

func bundleMessage(b *certs.Bundle) *BundleMessage {
	m := &BundleMessage{Version: b.Version()}
	for _, td := range b.TrustDomains() {
		r := TrustDomainRoots{TrustDomain: td.Name()}
		for _, c := range b.Roots(td) {
			r.Roots = append(r.Roots, c.Raw)
		}
		m.TrustDomains = append(m.TrustDomains, r)
	}
	return m
}

type adminHandler struct{ s *Server }

func (h *adminHandler) Roots(context.Context) (*RootsResponse, error) {
	return h.s.roots(), nil
}

func (s *Server) roots() *RootsResponse {
	ca := s.cfg.CA
	out := &RootsResponse{TrustDomain: ca.TrustDomain().Name(), BundleVersion: ca.Bundle().Version()}
	for _, r := range ca.Roots() {
		out.Roots = append(out.Roots, rootStatus(r))
	}
	return out
}

func rootStatus(r certs.RootInfo) RootStatus {
	sum := sha256.Sum256(r.Cert.Raw)
	st := RootStatus{
		Serial:     r.Cert.SerialNumber.Text(16),
		Subject:    r.Cert.Subject.String(),
		SHA256:     hex.EncodeToString(sum[:]),
		State:      string(r.State),
		NotBefore:  r.Cert.NotBefore,
		NotAfter:   r.Cert.NotAfter,
		ActivateAt: r.ActivateAt,
	}
	if !r.DropAt.IsZero() {
		t := r.DropAt
		st.DropAt = &t
	}
	return st
}

func (h *adminHandler) RotateRoot(_ context.Context, req *RotateRequest) (*RotateResponse, error) {
	if req.ActivateAfter < 0 {
		return nil, status.Errorf(codes.InvalidArgument, "activation delay %s: must not be negative", req.ActivateAfter)
	}
	at := h.s.cfg.Clock.Now().Add(req.ActivateAfter)
	info, err := h.s.cfg.CA.AddRoot(at)
	if err != nil {
		h.s.log.Warn("root rotation refused", "err", err)
		return nil, status.Error(codes.FailedPrecondition, err.Error())
	}
	h.s.log.Info("root rotation started", "root_serial", info.Cert.SerialNumber.Text(16), "activate_at", info.ActivateAt.Format(time.RFC3339))
	return &RotateResponse{Added: rootStatus(info), Roots: *h.s.roots()}, nil
}
