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
	// Reconcile is how long the last change took from source to datapath.
	Reconcile time.Duration `json:"reconcileNanos"`
	Problems  []string      `json:"problems,omitempty"`
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
	L7      bool   `json:"l7,omitempty"` // only the proxy's HTTP request events
}

// Matches reports whether an event passes the request's filters.
func (r *ObserveRequest) Matches(e *FlowEvent) bool {
	pod := func(p Peer) string { return p.Namespace + "/" + p.Pod }
	return (r.Verdict == "" || r.Verdict == e.Verdict) &&
		(r.FromPod == "" || r.FromPod == pod(e.Src)) &&
		(r.ToPod == "" || r.ToPod == pod(e.Dst)) &&
		(r.Port == 0 || r.Port == int(e.DstPort)) &&
		(!r.L7 || e.L7 != nil)
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

// Server is what the API serves; *Agent implements it.
type Server interface {
	Status(context.Context) (*Status, error)
	Endpoints(context.Context) (*EndpointList, error)
	EnvoyConfig(context.Context, *EnvoyConfigRequest) (*EnvoyConfig, error)
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
