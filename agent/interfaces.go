package agent

import (
	"context"
	"net/netip"

	"github.com/nodemesh/nodemesh/api"
	"github.com/nodemesh/nodemesh/bpf"
	"github.com/nodemesh/nodemesh/identity"
	"github.com/nodemesh/nodemesh/policy"
)

// Datapath is what the agent needs of a node's enforcement: package bpf
// implements it for real (see NewBPFDatapath); tests use a fake, so the
// control plane is testable without privileges.
type Datapath interface {
	Attach(ifname string) error
	Detach(ifname string) error
	// SetEndpoint writes a local pod's entry; flags carry its mTLS mode.
	SetEndpoint(addr netip.Addr, endpointID, ifindex uint32, id identity.NumericIdentity, flags bpf.EndpointFlags) error
	DeleteEndpoint(addr netip.Addr) error
	// SetPolicy installs an endpoint's table; its redirect entries send
	// connections to the proxy listeners of proxy, or drop them (fail
	// closed) where a port is zero.
	SetPolicy(endpointID uint32, t *policy.Table, proxy bpf.ProxyPorts) error
	// SetMTLSPorts names the proxy listeners mTLS flows are steered to;
	// zero drops them (proxy-unavailable).
	SetMTLSPorts(inbound, outbound uint16) error
	// SetupRedirect prepares the node for steering connections to the
	// proxy (package redirect, and the hairpin program).
	SetupRedirect() error
	DeletePolicy(endpointID uint32) error
	SyncIPCache(entries []policy.IPCacheEntry) error
	ReadEvents(ctx context.Context, fn func(FlowEvent)) error
	Counters() ([]Counter, error)
	MapUsage() ([]MapUsage, error)
	// Endpoints returns the endpoint entries currently in the datapath
	// (address → endpoint ID), so a restarted agent keeps their IDs.
	Endpoints() (map[netip.Addr]uint32, error)
}

// Source delivers the cluster state. Standalone mode reads a directory
// (StandaloneSource); Kubernetes mode (package k8s) watches the API server.
type Source interface {
	// Run calls update with every new snapshot until ctx ends.
	Run(ctx context.Context, update func(Snapshot)) error
}

// Snapshot is the whole cluster state as a source last read it.
type Snapshot struct {
	World    *api.World
	Policies []api.PolicyDocument
	// Err is set when the source's latest input was invalid; World and
	// Policies are then the last good state (nil if there was none).
	Err error
	// Generation counts the reads that produced a new state.
	Generation int
}

// Links finds the host-side interface of a local pod and reports
// interfaces as they appear.
type Links interface {
	// InterfaceFor returns the name and index of the interface that routes
	// to addr (the pod's host-side veth).
	InterfaceFor(addr netip.Addr) (name string, index int, err error)
	// Watch calls fn with the name of every interface matching the agent's
	// attach pattern, now and whenever one appears, until ctx ends.
	Watch(ctx context.Context, fn func(name string)) error
}
