package xds

import (
	"errors"
	"fmt"
	"path/filepath"
	"time"

	bootstrapv3 "github.com/envoyproxy/go-control-plane/envoy/config/bootstrap/v3"
	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	endpointv3 "github.com/envoyproxy/go-control-plane/envoy/config/endpoint/v3"
	upstreamhttpv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/upstreams/http/v3"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/types/known/anypb"
	"google.golang.org/protobuf/types/known/durationpb"
)

// Static clusters of the bootstrap, both on the agent's unix socket: one
// gRPC server there serves ADS and the access log service.
const (
	// XDSClusterName is the bootstrap's static cluster of the agent's xDS
	// server.
	XDSClusterName = "nodemesh-xds"
	// AccessLogClusterName is the bootstrap's static cluster of the agent's
	// access log service (AccessLogServer), which the listeners' http_grpc
	// access logs name. Envoy requires a gRPC service's cluster to be
	// static, so an Envoy bootstrapped without it refuses the listeners.
	AccessLogClusterName = "nodemesh-als"
)

// Bootstrap returns an Envoy bootstrap (JSON, which Envoy reads as YAML
// too) for the proxy of node: node.id is the node name, and listeners,
// clusters and the routes they name come over one state-of-the-world ADS
// stream from the agent's unix socket at socketPath; access log entries go
// to the same socket (AccessLogClusterName). Envoy needs CAP_NET_ADMIN for
// the transparent listeners, the original source address and the upstream
// mark.
func Bootstrap(node, socketPath string) ([]byte, error) {
	var errs []error
	if node == "" {
		errs = append(errs, errors.New("empty node name"))
	}
	if !filepath.IsAbs(socketPath) {
		errs = append(errs, fmt.Errorf("xds socket %q: want an absolute path", socketPath))
	}
	if err := errors.Join(errs...); err != nil {
		return nil, fmt.Errorf("bootstrap: %w", err)
	}
	b := &bootstrapv3.Bootstrap{
		Node: &corev3.Node{Id: node, Cluster: "nodemesh"},
		DynamicResources: &bootstrapv3.Bootstrap_DynamicResources{
			AdsConfig: &corev3.ApiConfigSource{
				ApiType:             corev3.ApiConfigSource_GRPC,
				TransportApiVersion: corev3.ApiVersion_V3,
				GrpcServices: []*corev3.GrpcService{{TargetSpecifier: &corev3.GrpcService_EnvoyGrpc_{
					EnvoyGrpc: &corev3.GrpcService_EnvoyGrpc{ClusterName: XDSClusterName},
				}}},
				SetNodeOnFirstMessageOnly: true,
			},
			LdsConfig: adsConfigSource(),
			CdsConfig: adsConfigSource(),
		},
		StaticResources: &bootstrapv3.Bootstrap_StaticResources{Clusters: []*clusterv3.Cluster{
			grpcCluster(XDSClusterName, socketPath),
			grpcCluster(AccessLogClusterName, socketPath),
		}},
	}
	if err := Validate(b); err != nil {
		return nil, fmt.Errorf("bootstrap: generated bootstrap is invalid: %w", err)
	}
	return protojson.MarshalOptions{Multiline: true, Indent: "  "}.Marshal(b)
}

// grpcCluster reaches the agent over its unix socket with HTTP/2 (gRPC).
func grpcCluster(name, socketPath string) *clusterv3.Cluster {
	return &clusterv3.Cluster{
		Name:                 name,
		ClusterDiscoveryType: &clusterv3.Cluster_Type{Type: clusterv3.Cluster_STATIC},
		ConnectTimeout:       durationpb.New(time.Second),
		LoadAssignment: &endpointv3.ClusterLoadAssignment{
			ClusterName: name,
			Endpoints: []*endpointv3.LocalityLbEndpoints{{LbEndpoints: []*endpointv3.LbEndpoint{{
				HostIdentifier: &endpointv3.LbEndpoint_Endpoint{Endpoint: &endpointv3.Endpoint{
					Address: &corev3.Address{Address: &corev3.Address_Pipe{Pipe: &corev3.Pipe{Path: socketPath}}},
				}},
			}}}},
		},
		TypedExtensionProtocolOptions: map[string]*anypb.Any{
			"envoy.extensions.upstreams.http.v3.HttpProtocolOptions": typed(&upstreamhttpv3.HttpProtocolOptions{
				UpstreamProtocolOptions: &upstreamhttpv3.HttpProtocolOptions_ExplicitHttpConfig_{
					ExplicitHttpConfig: &upstreamhttpv3.HttpProtocolOptions_ExplicitHttpConfig{
						ProtocolConfig: &upstreamhttpv3.HttpProtocolOptions_ExplicitHttpConfig_Http2ProtocolOptions{
							Http2ProtocolOptions: &corev3.Http2ProtocolOptions{},
						},
					},
				},
			}),
		},
	}
}
