// Package agent is the per-node Nodemesh agent: it reads the cluster state
// and policies from a Source, compiles them with policy.Engine, and programs
// the node's Datapath (the eBPF maps and programs of package bpf), in an
// order that never lets through traffic that should be denied:
//
//  1. the engine recompiles the tables a change affects;
//  2. each changed table of a local endpoint is swapped into the datapath
//     whole (bpf replaces an endpoint's inner policy map atomically);
//  3. only then is the ipcache changed, so an address never maps to an
//     identity whose entries are not in place yet;
//  4. a new pod's endpoint entry is written last. Until then its veth —
//     which the agent attaches to as soon as it appears — drops its traffic.
//
// Enforcement does not depend on the agent process: programs, links and maps
// are pinned, so a stopped or crashed agent leaves the last state enforced,
// and a restarted agent adopts it and swaps in identical tables.
//
// The agent serves a local API (gRPC on a unix socket, JSON-encoded, see
// api.go) for `meshctl status`, `meshctl endpoints` and `meshctl observe`,
// and Prometheus metrics.
package agent
