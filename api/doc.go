// Package api holds the documents users write — Kubernetes NetworkPolicy,
// Nodemesh MeshNetworkPolicy / MeshClusterwideNetworkPolicy and their
// cilium.io/v2 equivalents — and the world objects (Namespace, Pod, Node) they
// are evaluated against, together with a strict decoder for them.
//
// Contract: decoding never half-succeeds. DecodePolicies and LoadPolicies
// return either every document of their input, validated, or an error that
// names the file, the document number and the field path of every problem
// found (for example `a.yaml: document 2: spec.ingress[0].toPorts[0].ports[0].port:
// "99999" is not a valid port`). Policy documents are strict: an unknown field
// is an error. World documents are lenient: fields and kinds that play no part
// in policy are ignored, as `kubectl get -o yaml` prints many of them.
//
// The package is pure Go and imports no Kubernetes client: the policy model
// (api, identity, l7policy, policy) sits below everything else.
package api
