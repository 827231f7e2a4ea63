package caserver

// The wire protocol: gRPC with JSON messages (a codec forced on both ends,
// as the agent's API does), so no code generator is needed; the service
// descriptors below are written by hand. []byte fields travel as base64.

import (
	"context"
	"encoding/json"
	"time"

	"google.golang.org/grpc"
)

// Service names.
const (
	// CAServiceName is served on each node's socket.
	CAServiceName = "nodemesh.ca.v1.CA"
	// AdminServiceName is served on the admin socket only.
	AdminServiceName = "nodemesh.ca.v1.Admin"
)

// Trailer metadata keys that carry the kind of a Sign error, so the client
// can rebuild it (errors.As to *certs.DeniedError, errors.Is
// certs.ErrInvalidCSR); the status message keeps the CA's full text.
const (
	trailerErrorKind  = "nodemesh-error-kind"      // denied, invalid-csr, invalid-request
	trailerDenyReason = "nodemesh-deny-reason"     // a certs.DenyReason
	trailerDenyDetail = "nodemesh-deny-detail-bin" // the DeniedError's detail (binary header: any bytes)
)

// SignRequest asks for the SVID of a workload. The requesting node is the
// socket the request arrives on: Node is what the client believes it is,
// logged by the server when it differs, and otherwise ignored.
type SignRequest struct {
	Node           string `json:"node,omitempty"`
	Namespace      string `json:"namespace"`
	Pod            string `json:"pod"`
	ServiceAccount string `json:"serviceAccount"`
	// CSR is the DER of an x509 certificate request.
	CSR []byte `json:"csr"`
}

// SignResponse is the SVID's certificate chain, leaf first, as DER.
type SignResponse struct {
	Chain [][]byte `json:"chain"`
}

// BundleRequest opens a WatchBundle stream.
type BundleRequest struct{}

// BundleMessage is one version of the CA's trust bundle.
type BundleMessage struct {
	Version      uint64             `json:"version"`
	TrustDomains []TrustDomainRoots `json:"trustDomains"`
}

// TrustDomainRoots are the root certificates (DER) trusted for a trust
// domain.
type TrustDomainRoots struct {
	TrustDomain string   `json:"trustDomain"`
	Roots       [][]byte `json:"roots"`
}

// RootsRequest asks the admin service for the CA's roots.
type RootsRequest struct{}

// RootsResponse describes the CA's roots, oldest first.
type RootsResponse struct {
	TrustDomain   string       `json:"trustDomain"`
	BundleVersion uint64       `json:"bundleVersion"`
	Roots         []RootStatus `json:"roots"`
}

// RootStatus describes one root of the CA (certs.RootInfo).
type RootStatus struct {
	Serial     string    `json:"serial"` // hexadecimal
	Subject    string    `json:"subject"`
	SHA256     string    `json:"sha256"` // of the DER, hexadecimal
	State      string    `json:"state"`  // pending, active, retiring
	NotBefore  time.Time `json:"notBefore"`
	NotAfter   time.Time `json:"notAfter"`
	ActivateAt time.Time `json:"activateAt"`
	// DropAt is when the root leaves the bundle; absent while it has no
	// successor.
	DropAt *time.Time `json:"dropAt,omitempty"`
}

// RotateRequest starts a CA rotation: a new root, trusted at once, that
// signs from ActivateAfter on.
type RotateRequest struct {
	ActivateAfter time.Duration `json:"activateAfterNanos"`
}

// RotateResponse is the new root and then all roots.
type RotateResponse struct {
	Added RootStatus    `json:"added"`
	Roots RootsResponse `json:"roots"`
}

type jsonCodec struct{}

func (jsonCodec) Marshal(v any) ([]byte, error)      { return json.Marshal(v) }
func (jsonCodec) Unmarshal(data []byte, v any) error { return json.Unmarshal(data, v) }
func (jsonCodec) Name() string                       { return "json" }

// caService is what a node socket serves, for one node.
type caService interface {
	Sign(context.Context, *SignRequest) (*SignResponse, error)
	WatchBundle(ctx context.Context, send func(*BundleMessage) error) error
}

// adminService is what the admin socket serves.
type adminService interface {
	Roots(context.Context) (*RootsResponse, error)
	RotateRoot(context.Context, *RotateRequest) (*RotateResponse, error)
}

var caServiceDesc = grpc.ServiceDesc{
	ServiceName: CAServiceName,
	HandlerType: (*caService)(nil),
	Methods: []grpc.MethodDesc{
		{MethodName: "Sign", Handler: func(srv any, ctx context.Context, dec func(any) error, _ grpc.UnaryServerInterceptor) (any, error) {
			req := &SignRequest{}
			if err := dec(req); err != nil {
				return nil, err
			}
			return srv.(caService).Sign(ctx, req)
		}},
	},
	Streams: []grpc.StreamDesc{{
		StreamName:    "WatchBundle",
		ServerStreams: true,
		Handler: func(srv any, stream grpc.ServerStream) error {
			if err := stream.RecvMsg(&BundleRequest{}); err != nil {
				return err
			}
			return srv.(caService).WatchBundle(stream.Context(), func(m *BundleMessage) error { return stream.SendMsg(m) })
		},
	}},
}

var adminServiceDesc = grpc.ServiceDesc{
	ServiceName: AdminServiceName,
	HandlerType: (*adminService)(nil),
	Methods: []grpc.MethodDesc{
		{MethodName: "Roots", Handler: func(srv any, ctx context.Context, dec func(any) error, _ grpc.UnaryServerInterceptor) (any, error) {
			if err := dec(&RootsRequest{}); err != nil {
				return nil, err
			}
			return srv.(adminService).Roots(ctx)
		}},
		{MethodName: "RotateRoot", Handler: func(srv any, ctx context.Context, dec func(any) error, _ grpc.UnaryServerInterceptor) (any, error) {
			req := &RotateRequest{}
			if err := dec(req); err != nil {
				return nil, err
			}
			return srv.(adminService).RotateRoot(ctx, req)
		}},
	},
}
