// Package identity maps a workload's labels to a numeric security identity,
// as Cilium does, and to a SPIFFE ID.
//
// Workloads with the same security-relevant labels (pod labels, namespace
// name and labels, service account) share one numeric identity, so policy is
// written and enforced in terms of identities rather than addresses. Numbers
// 1–255 are reserved for entities such as the host and the world; identities
// of workloads are allocated from 256 up by an Allocator. The in-memory
// allocator here serves standalone mode and tests; the Kubernetes-backed one
// (package k8s) implements the same interface.
//
// The package is pure Go: no BPF, no Kubernetes client.
package identity
