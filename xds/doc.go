// Package xds will be the agent's xDS control plane (go-control-plane): it
// turns the redirect entries of the compiled policy tables into Envoy
// listeners, RBAC filters and clusters for the node proxy, and serves SPIFFE
// certificates over SDS.
//
// Status: not yet implemented (issue 4).
package xds
