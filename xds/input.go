package xds

import (
	"net/netip"

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
}

// Endpoint is a local pod and its compiled policy.
type Endpoint struct {
	Key   string // "namespace/name", for names and logs
	Addrs []netip.Addr
	Table *policy.Table
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
