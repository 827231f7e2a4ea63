package xds

import (
	"fmt"
	"net/netip"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/nodemesh/nodemesh/certs"

	"github.com/nodemesh/nodemesh/policy"
)

// Input is everything Build needs to generate one node's proxy
// configuration.
type Input struct {
	Config Config
	// Endpoints are the node's local pods with their compiled tables.
	Endpoints []Endpoint
	// IPCache maps addresses to identities and policy prefixes as this node
	// sees them (policy.Engine.IPCache for the node): the same entries the
	// datapath resolves remote addresses with.
	IPCache []policy.IPCacheEntry
	// MTLS is what mTLS between node proxies needs; nil: off on this node.
	MTLS *MTLSInput
}

// MTLSInput is the node's side of mTLS between node proxies.
type MTLSInput struct {
	// Identities are the SVIDs of the node's workloads and the trust
	// bundle. An endpoint's mTLS chains and cluster exist only while its
	// SVID is here (Ready), so that a listener never waits for a secret.
	Identities *certs.Snapshot
	// Peers are the mesh pods on other nodes whose proxies speak mTLS
	// (mode not disabled), by address: the destination proxy accepts a
	// peer certificate only with the SPIFFE ID of the pod at the
	// connection's source address.
	Peers map[netip.Addr]spiffeid.ID
}

// Ready reports whether ep can take part in mTLS: its mode is not
// disabled and its SVID and the trust bundle are in the identities.
func (m *MTLSInput) Ready(ep Endpoint) bool {
	if m == nil || m.Identities == nil || ep.Mode == MTLSDisabled || ep.Mode == "" || ep.ID.IsZero() {
		return false
	}
	if _, ok := m.Identities.SVID(ep.ID); !ok {
		return false
	}
	return TrustBundleSecret(m.Identities.Bundle) != nil
}

// Endpoint is a local pod and its compiled policy.
type Endpoint struct {
	Key   string // "namespace/name", for names and logs
	Addrs []netip.Addr
	Table *policy.Table
	// ID is the pod's SPIFFE ID and Mode its mTLS mode (MTLS only).
	ID   spiffeid.ID
	Mode MTLSMode
}

// MTLSMode is a pod's mTLS mode between node proxies.
type MTLSMode string

// The modes. Connections between mesh pods on different nodes:
// disabled — plaintext, the node proxies are not involved; permissive —
// the pod's node proxy originates mTLS to peers that accept it and
// accepts both mTLS and plaintext clients; strict — as permissive, but
// plaintext clients that are mesh pods on other nodes are refused.
const (
	MTLSDisabled   MTLSMode = "disabled"
	MTLSPermissive MTLSMode = "permissive"
	MTLSStrict     MTLSMode = "strict"
)

// ParseMTLSMode parses a mode name.
func ParseMTLSMode(s string) (MTLSMode, error) {
	switch m := MTLSMode(s); m {
	case MTLSDisabled, MTLSPermissive, MTLSStrict:
		return m, nil
	}
	return "", fmt.Errorf("mTLS mode %q: want disabled, permissive or strict", s)
}

// InputFromEngine collects the Input of node from a policy engine: the
// node's pods with their tables and the node's ipcache.
func InputFromEngine(e *policy.Engine, node string, cfg Config) Input {
	in := Input{Config: cfg, IPCache: e.IPCache(node)}
	for _, ep := range e.Endpoints() {
		if ep.Node != node {
			continue
		}
		t, _, ok := e.Table(ep.Key())
		if !ok {
			continue
		}
		in.Endpoints = append(in.Endpoints, Endpoint{Key: ep.Key(), Addrs: ep.Addrs, Table: t})
	}
	return in
}
