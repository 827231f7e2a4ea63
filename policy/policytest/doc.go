// Package policytest loads the data-driven policy scenarios under
// policy/testdata (the Kubernetes NetworkPolicy e2e scenarios and our own
// Cilium-semantics cases) so that every layer — the reference evaluator, the
// compiled tables, and later the BPF datapath on the virtual cluster — runs
// the same cases against the same expectations.
package policytest
