// Package proxytest helps test the node proxy against a real xDS server:
// a go-control-plane ADS server with a snapshot cache on a unix socket
// that records every DiscoveryRequest (to see ACKs and NACKs), an access
// log service that records every entry (and can stall or go away, as an
// agent may), builders for the Envoy resources the Nodemesh control
// plane generates, with tweak options (tls.go: SDS secrets, TLS contexts,
// the tls_inspector, RBAC on the peer's SPIFFE ID), and an in-memory CA
// issuing X509-SVID-shaped certificates, and broken ones (ca.go).
//
// It imports only go-control-plane, never package proxy or Nodemesh's
// policy model, so it speaks to the proxy exactly as any xDS server would.
package proxytest
