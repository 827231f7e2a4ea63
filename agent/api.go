package agent

// The agent's local API: gRPC on a unix socket. Messages are JSON (a codec
// forced on both ends) rather than protobuf, so the API needs no code
// generator; the service descriptor below is written by hand.

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
)

// ServiceName is the gRPC service of the agent API.
const ServiceName = "nodemesh.agent.v1.Agent"

// StatusRequest asks for the agent's health.
type StatusRequest struct{}

// Status is the agent's health and what it enforces.
type Status struct {
	Node       string     `json:"node"`
	Version    string     `json:"version"`
	Healthy    bool       `json:"healthy"`
	Mode       string     `json:"mode"`
	Source     string     `json:"source"`
	Generation int        `json:"generation"`
	LastLoad   time.Time  `json:"lastLoad"`
	LastError  string     `json:"lastError,omitempty"`
	Policies   int        `json:"policies"`
	Endpoints  int        `json:"endpoints"`
	Identities int        `json:"identities"`
	Maps       []MapUsage `json:"maps"`
	Counters   []Counter  `json:"counters"`
	// ProxyConfig is the xDS version of the node proxy's configuration;
	// ProxyAcked whether the proxy acknowledged it, over ProxyStreams.
	ProxyConfig  string `json:"proxyConfig"`
	ProxyAcked   bool   `json:"proxyAcked"`
	ProxyStreams int    `json:"proxyStreams"`
	// ProxyPorts are the proxy listeners redirect entries are programmed
	// with: zero while the proxy has not ACKed the configuration in force
	// (L7-covered connections drop, proxy-unavailable).
	ProxyInboundPort  uint16 `json:"proxyInboundPort"`
	ProxyOutboundPort uint16 `json:"proxyOutboundPort"`
	// MTLS is the node's side of mTLS between node proxies.
	MTLS MTLSStatus `json:"mtls"`
	// Reconcile is how long the last change took from source to datapath.
	Reconcile time.Duration `json:"reconcileNanos"`
	Problems  []string      `json:"problems,omitempty"`
}

// MTLSStatus is the node's mTLS state.
type MTLSStatus struct {
	Mode        string `json:"mode"` // the mesh-wide mode (--mtls-mode)
	TrustDomain string `json:"trustDomain,omitempty"`
	Source      string `json:"source,omitempty"` // where SVIDs come from; "" when disabled
	// Namespaces are the namespaces whose label overrides Mode.
	Namespaces map[string]string `json:"namespaces,omitempty"`
	SVIDs      int               `json:"svids"` // SVIDs the proxy is served
	// InboundPort and OutboundPort are the listeners mTLS flows are
	// steered to: zero while the proxy has not ACKed (they drop).
	InboundPort  uint16 `json:"inboundPort"`
	OutboundPort uint16 `json:"outboundPort"`
}

// EndpointsRequest asks for the local endpoints.
type EndpointsRequest struct{}

// EndpointStatus is one local endpoint and its enforcement state.
type EndpointStatus struct {
	ID              uint32            `json:"id"`
	Namespace       string            `json:"namespace"`
	Name            string            `json:"name"`
	IP              string            `json:"ip"`
	Identity        uint32            `json:"identity"`
	Labels          []string          `json:"labels"`
	Interface       string            `json:"interface"`
	State           string            `json:"state"` // ready, waiting-for-interface, error
	IngressEnforced bool              `json:"ingressEnforced"`
	EgressEnforced  bool              `json:"egressEnforced"`
	IngressPolicies []string          `json:"ingressPolicies"`
	EgressPolicies  []string          `json:"egressPolicies"`
	PolicyEntries   int               `json:"policyEntries"`
	Extra           map[string]string `json:"extra,omitempty"`
}

// EndpointList is the answer to EndpointsRequest.
type EndpointList struct {
	Node      string           `json:"node"`
	Endpoints []EndpointStatus `json:"endpoints"`
}

// ObserveRequest selects flow events: the last Last recorded ones (all
// with Last < 0), then, with Follow, new ones as they happen.
type ObserveRequest struct {
	Last    int    `json:"last"`
	Follow  bool   `json:"follow"`
	Verdict string `json:"verdict,omitempty"`
	FromPod string `json:"fromPod,omitempty"` // namespace/pod
	ToPod   string `json:"toPod,omitempty"`
	Port    int    `json:"port,omitempty"`
	L7      bool   `json:"l7,omitempty"`   // only the proxy's HTTP request events
	MTLS    bool   `json:"mtls,omitempty"` // only the proxy's mTLS connection events
}

// Matches reports whether an event passes the request's filters.
func (r *ObserveRequest) Matches(e *FlowEvent) bool {
	pod := func(p Peer) string { return p.Namespace + "/" + p.Pod }
	return (r.Verdict == "" || r.Verdict == e.Verdict) &&
		(r.FromPod == "" || r.FromPod == pod(e.Src)) &&
		(r.ToPod == "" || r.ToPod == pod(e.Dst)) &&
		(r.Port == 0 || r.Port == int(e.DstPort)) &&
		(!r.L7 || e.L7 != nil) && (!r.MTLS || e.MTLS != nil)
}

// EnvoyConfigRequest asks for the xDS resources served to the node proxy:
// Type is "", listeners, clusters, routes or secrets.
type EnvoyConfigRequest struct {
	Type string `json:"type"`
}

// EnvoyConfig is Envoy's admin config_dump of those resources.
type EnvoyConfig struct {
	ConfigDump json.RawMessage `json:"configDump"`
}

// IdentitiesRequest asks for the node's workload identities (mTLS).
type IdentitiesRequest struct{}

// IdentityList is the answer to IdentitiesRequest: the SVIDs the node's
// proxy presents and the trust bundle it verifies peers with.
type IdentityList struct {
	Node string `json:"node"`
	// Source is where the SVIDs come from: "built-in CA" or "SPIRE".
	Source string `json:"source"`
	// Generation is the identity source's snapshot generation.
	Generation uint64 `json:"generation"`
	// Identities are sorted by SPIFFE ID.
	Identities []IdentityStatus `json:"identities"`
	// BundleVersion and Bundle are the trust bundle: the roots trusted
	// per trust domain, sorted by trust domain.
	BundleVersion uint64             `json:"bundleVersion"`
	Bundle        []TrustDomainRoots `json:"bundle"`
}

// Identity states.
const (
	IdentityValid     = "valid"     // an SVID in its validity period, issued by a root of the bundle
	IdentityPending   = "pending"   // not issued yet
	IdentityFailing   = "failing"   // the last request failed (an SVID may still be held)
	IdentityExpired   = "expired"   // the SVID expired unrenewed
	IdentityUntrusted = "untrusted" // the SVID's root is not in the bundle
	IdentityMissing   = "missing"   // a local pod's identity the source has no SVID and no request for
)

// IdentityStatus is one SPIFFE ID of the node's workloads and its SVID.
type IdentityStatus struct {
	SPIFFEID string `json:"spiffeID"`
	// Pods are this node's pods ("namespace/name") with this identity.
	Pods  []string `json:"pods"`
	State string   `json:"state"` // one of the Identity* states
	// The SVID's leaf, if one is held: serial in hex, validity.
	HasSVID   bool      `json:"hasSVID"`
	Serial    string    `json:"serial,omitempty"`
	NotBefore time.Time `json:"notBefore"`
	NotAfter  time.Time `json:"notAfter"`
	// RenewAt is when the built-in CA's manager renews (or retries) next;
	// zero when unknown (SPIRE renews on its own schedule). RenewIn is
	// RenewAt less the time of the answer.
	RenewAt time.Time     `json:"renewAt"`
	RenewIn time.Duration `json:"renewInNanos"`
	// Issuer is the subject of the bundle's root that issued the chain,
	// IssuerSerial its serial (hex); without a trusted root, the chain's
	// top issuer name and no serial.
	Issuer       string `json:"issuer,omitempty"`
	IssuerSerial string `json:"issuerSerial,omitempty"`
	// Failures are the failed requests since the last success, LastError
	// the last one's error (built-in CA only).
	Failures  int    `json:"failures"`
	LastError string `json:"lastError,omitempty"`
}

// TrustDomainRoots are the roots the bundle trusts for one trust domain.
type TrustDomainRoots struct {
	TrustDomain string       `json:"trustDomain"`
	Roots       []BundleRoot `json:"roots"`
}

// BundleRoot is one trusted root certificate.
type BundleRoot struct {
	Subject   string    `json:"subject"`
	Serial    string    `json:"serial"` // hex
	NotBefore time.Time `json:"notBefore"`
	NotAfter  time.Time `json:"notAfter"`
	// SHA256 is the certificate's fingerprint, colon-separated hex.
	SHA256 string `json:"sha256"`
}

// CertsRequest asks for the certificate chains of the node's SVIDs: only
// SPIFFEID's when it is set, with the certificates' PEM when PEM is true.
// Private keys are never sent.
type CertsRequest struct {
	SPIFFEID string `json:"spiffeID,omitempty"`
	PEM      bool   `json:"pem,omitempty"`
}

// CertChains is the answer to CertsRequest.
type CertChains struct {
	Node   string `json:"node"`
	Source string `json:"source"`
	// Chains are sorted by SPIFFE ID.
	Chains []SVIDChain `json:"chains"`
}

// SVIDChain is an SVID's certificate chain as the proxy presents it, leaf
// first, and the bundle's root that issued it (nil if none does).
type SVIDChain struct {
	SPIFFEID     string            `json:"spiffeID"`
	Certificates []CertificateInfo `json:"certificates"`
	Root         *CertificateInfo  `json:"root,omitempty"`
}

// CertificateInfo is a decoded X.509 certificate.
type CertificateInfo struct {
	Subject            string    `json:"subject"`
	Issuer             string    `json:"issuer"`
	Serial             string    `json:"serial"` // hex
	NotBefore          time.Time `json:"notBefore"`
	NotAfter           time.Time `json:"notAfter"`
	URISANs            []string  `json:"uriSANs,omitempty"`
	DNSSANs            []string  `json:"dnsSANs,omitempty"`
	KeyUsage           []string  `json:"keyUsage,omitempty"`
	ExtKeyUsage        []string  `json:"extKeyUsage,omitempty"`
	IsCA               bool      `json:"isCA"`
	SignatureAlgorithm string    `json:"signatureAlgorithm"`
	PublicKeyAlgorithm string    `json:"publicKeyAlgorithm"` // with the curve or size: "ECDSA P-256", "RSA 2048"
	SHA256             string    `json:"sha256"`             // fingerprint, colon-separated hex
	PEM                string    `json:"pem,omitempty"`      // the certificate only, on request
}

// Server is what the API serves; *Agent implements it.
type Server interface {
	Status(context.Context) (*Status, error)
	Endpoints(context.Context) (*EndpointList, error)
	EnvoyConfig(context.Context, *EnvoyConfigRequest) (*EnvoyConfig, error)
	Identities(context.Context) (*IdentityList, error)
	Certs(context.Context, *CertsRequest) (*CertChains, error)
	Encryption(context.Context) (*EncryptionStatus, error)
	RotateEncryptionKey(context.Context) (*RotateKeyResult, error)
	Observe(ctx context.Context, req *ObserveRequest, send func(*FlowEvent) error) error
}

type jsonCodec struct{}

func (jsonCodec) Marshal(v any) ([]byte, error)      { return json.Marshal(v) }
func (jsonCodec) Unmarshal(data []byte, v any) error { return json.Unmarshal(data, v) }
func (jsonCodec) Name() string                       { return "json" }

var serviceDesc = grpc.ServiceDesc{
	ServiceName: ServiceName,
	HandlerType: (*Server)(nil),
	Methods: []grpc.MethodDesc{
		{MethodName: "Status", Handler: func(srv any, ctx context.Context, dec func(any) error, _ grpc.UnaryServerInterceptor) (any, error) {
			if err := dec(&StatusRequest{}); err != nil {
				return nil, err
			}
			return srv.(Server).Status(ctx)
		}},
		{MethodName: "Endpoints", Handler: func(srv any, ctx context.Context, dec func(any) error, _ grpc.UnaryServerInterceptor) (any, error) {
			if err := dec(&EndpointsRequest{}); err != nil {
				return nil, err
			}
			return srv.(Server).Endpoints(ctx)
		}},
		{MethodName: "EnvoyConfig", Handler: func(srv any, ctx context.Context, dec func(any) error, _ grpc.UnaryServerInterceptor) (any, error) {
			req := &EnvoyConfigRequest{}
			if err := dec(req); err != nil {
				return nil, err
			}
			return srv.(Server).EnvoyConfig(ctx, req)
		}},
		{MethodName: "Encryption", Handler: func(srv any, ctx context.Context, dec func(any) error, _ grpc.UnaryServerInterceptor) (any, error) {
			if err := dec(&EncryptionStatusRequest{}); err != nil {
				return nil, err
			}
			return srv.(Server).Encryption(ctx)
		}},
		{MethodName: "RotateEncryptionKey", Handler: func(srv any, ctx context.Context, dec func(any) error, _ grpc.UnaryServerInterceptor) (any, error) {
			if err := dec(&RotateKeyRequest{}); err != nil {
				return nil, err
			}
			return srv.(Server).RotateEncryptionKey(ctx)
		}},
		{MethodName: "Identities", Handler: func(srv any, ctx context.Context, dec func(any) error, _ grpc.UnaryServerInterceptor) (any, error) {
			if err := dec(&IdentitiesRequest{}); err != nil {
				return nil, err
			}
			return srv.(Server).Identities(ctx)
		}},
		{MethodName: "Certs", Handler: func(srv any, ctx context.Context, dec func(any) error, _ grpc.UnaryServerInterceptor) (any, error) {
			req := &CertsRequest{}
			if err := dec(req); err != nil {
				return nil, err
			}
			return srv.(Server).Certs(ctx, req)
		}},
	},
	Streams: []grpc.StreamDesc{{
		StreamName:    "Observe",
		ServerStreams: true,
		Handler: func(srv any, stream grpc.ServerStream) error {
			req := &ObserveRequest{}
			if err := stream.RecvMsg(req); err != nil {
				return err
			}
			return srv.(Server).Observe(stream.Context(), req, func(e *FlowEvent) error { return stream.SendMsg(e) })
		},
	}},
}

// Serve serves s on a unix socket at path until ctx ends. The socket is
// made accessible to root only.
func Serve(ctx context.Context, path string, s Server) error {
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return fmt.Errorf("api socket dir: %w", err)
	}
	_ = os.Remove(path) // a stale socket of a previous run
	l, err := net.Listen("unix", path)
	if err != nil {
		return fmt.Errorf("listen %s: %w", path, err)
	}
	if err := os.Chmod(path, 0o600); err != nil {
		l.Close()
		return fmt.Errorf("api socket: %w", err)
	}
	gs := grpc.NewServer(grpc.ForceServerCodec(jsonCodec{}))
	gs.RegisterService(&serviceDesc, s)
	go func() {
		<-ctx.Done()
		gs.Stop()
	}()
	if err := gs.Serve(l); err != nil && !errors.Is(err, grpc.ErrServerStopped) {
		return fmt.Errorf("api: %w", err)
	}
	return nil
}

// Client talks to an agent's API.
type Client struct {
	conn *grpc.ClientConn
}

// Dial connects to the agent API socket at path.
func Dial(path string) (*Client, error) {
	if _, err := os.Stat(path); err != nil {
		return nil, fmt.Errorf("agent API socket %s: %w (is the agent running on this node?)", path, errors.Unwrap(err))
	}
	conn, err := grpc.NewClient("unix://"+path, grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithDefaultCallOptions(grpc.ForceCodec(jsonCodec{})))
	if err != nil {
		return nil, fmt.Errorf("agent API %s: %w", path, err)
	}
	return &Client{conn: conn}, nil
}

// Close closes the connection.
func (c *Client) Close() error { return c.conn.Close() }

// Status calls the Status method.
func (c *Client) Status(ctx context.Context) (*Status, error) {
	out := &Status{}
	return out, c.conn.Invoke(ctx, "/"+ServiceName+"/Status", &StatusRequest{}, out)
}

// Endpoints calls the Endpoints method.
func (c *Client) Endpoints(ctx context.Context) (*EndpointList, error) {
	out := &EndpointList{}
	return out, c.conn.Invoke(ctx, "/"+ServiceName+"/Endpoints", &EndpointsRequest{}, out)
}

// EnvoyConfig calls the EnvoyConfig method.
func (c *Client) EnvoyConfig(ctx context.Context, typ string) (*EnvoyConfig, error) {
	out := &EnvoyConfig{}
	return out, c.conn.Invoke(ctx, "/"+ServiceName+"/EnvoyConfig", &EnvoyConfigRequest{Type: typ}, out)
}

// Identities calls the Identities method.
func (c *Client) Identities(ctx context.Context) (*IdentityList, error) {
	out := &IdentityList{}
	return out, c.conn.Invoke(ctx, "/"+ServiceName+"/Identities", &IdentitiesRequest{}, out)
}

// Encryption calls the Encryption method.
func (c *Client) Encryption(ctx context.Context) (*EncryptionStatus, error) {
	out := &EncryptionStatus{}
	return out, c.conn.Invoke(ctx, "/"+ServiceName+"/Encryption", &EncryptionStatusRequest{}, out)
}

// RotateEncryptionKey calls the RotateEncryptionKey method.
func (c *Client) RotateEncryptionKey(ctx context.Context) (*RotateKeyResult, error) {
	out := &RotateKeyResult{}
	return out, c.conn.Invoke(ctx, "/"+ServiceName+"/RotateEncryptionKey", &RotateKeyRequest{}, out)
}

// Certs calls the Certs method.
func (c *Client) Certs(ctx context.Context, req *CertsRequest) (*CertChains, error) {
	if req == nil {
		req = &CertsRequest{}
	}
	out := &CertChains{}
	return out, c.conn.Invoke(ctx, "/"+ServiceName+"/Certs", req, out)
}

// Observe streams flow events to fn until the stream ends (without
// Follow, after the recorded events) or ctx ends.
func (c *Client) Observe(ctx context.Context, req *ObserveRequest, fn func(*FlowEvent) error) error {
	stream, err := c.conn.NewStream(ctx, &serviceDesc.Streams[0], "/"+ServiceName+"/Observe")
	if err != nil {
		return err
	}
	if err := stream.SendMsg(req); err != nil {
		return err
	}
	if err := stream.CloseSend(); err != nil {
		return err
	}
	for {
		e := &FlowEvent{}
		if err := stream.RecvMsg(e); err != nil {
			if errors.Is(err, io.EOF) {
				return nil
			}
			return err
		}
		if err := fn(e); err != nil {
			return err
		}
	}
}
