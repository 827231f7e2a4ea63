// Package policy turns policy documents into what nodes enforce, and answers
// whether a flow is allowed and why.
//
// The path a policy takes through the package, in the order of its files:
//
//	rule.go      api documents (NetworkPolicy, Mesh/Cilium policies) → Policy:
//	             one normalized form for every kind of document
//	selector.go  label selectors over identity labels (entities and
//	             namespaces are selectors too)
//	world.go     pods, namespaces and nodes → endpoints with identities; an
//	             address resolves to an identity relative to a node
//	evaluate.go  the reference evaluator: straight from world and policies,
//	             simple enough to be obviously right
//	table.go     the compiled form: per endpoint and direction, a table
//	             keyed by (peer, protocol, port range) → allow | deny |
//	             redirect to the L7 rule set; BPF maps and xDS come from it
//	compile.go   policies × endpoints → tables
//	engine.go    incremental compilation: a pod or policy change recomputes
//	             only the tables it affects
//
// Both the evaluator and the compiled tables produce a Result; a
// differential test holds them equal on random worlds, policies and flows.
// The package is pure Go: it imports no BPF, xDS or Kubernetes client code.
package policy
