// Package xds is the agent's xDS control plane: it turns the redirect
// entries of the compiled policy tables of a node's pods into Envoy
// configuration for the node's proxy, serves it over ADS, and receives the
// proxy's access logs.
//
// # Contract
//
// For a connection the datapath sends to the proxy — one whose table
// lookups (policy.DirTable.Decide) found only redirect entries — the proxy
// allows exactly the requests policy allows: those matching an HTTP rule of
// a redirect entry of one of the remote address's keys, in the direction
// the listener serves; every other request gets Envoy's 403 "RBAC: access
// denied". TestRBACSemantics holds the generated RBAC equal to
// policy.Evaluator on random worlds, through an emulation of Envoy's filter
// chain selection and RBAC evaluation (package xdstest).
//
// Upstream connections come from the client's address: the listeners'
// original_src filter binds them to the downstream peer's IP, because the
// destination's datapath identifies the client by its source address
// (xdstest.UpstreamOf emulates it; TestRBACSemantics checks it on every
// redirected flow). Every request is logged to the agent's access log
// service (http_grpc, log name per direction, over the bootstrap's
// static AccessLogClusterName), which AccessLogServer turns into
// L7Events: client, original destination, direction, method, path,
// authority, status, the RBAC verdict and the policy that allowed it.
// TestL7Transparent runs a node so in a network namespace: Build's
// configuration served by Server to nodemesh-proxy, TPROXY standing in
// for the datapath's steering, real requests in both directions.
//
// The configuration uses only upstream Envoy extensions
// (http_connection_manager, the rbac and router HTTP filters, the
// original_src listener filter, the http_grpc access logger, ORIGINAL_DST
// clusters); every resource passes go-control-plane's validation, nested
// typed configs included (Validate), and every snapshot is Consistent().
// Build is deterministic: the same Input gives byte-identical resources,
// and versions are hashes of the contents.
//
// # Files
//
//	config.go      Config (ports, connect timeout), the upstream marks
//	input.go       Input: a node's endpoints, tables and ipcache
//	segments.go    a table's redirect entries → port segments and rule-set groups
//	peers.go       table keys → the address sets that resolve to them
//	rbac.go        HTTP rules and address sets → RBAC permissions and principals
//	build.go       Build: listeners, routes, clusters; Resources → snapshot
//	mtls.go        mTLS builders: SDS secrets, inbound mTLS/plaintext chains, outbound mTLS cluster, tls_inspector
//	validate.go    Validate: ValidateAll, into Any fields too
//	server.go      Server: SetNode, Serve (ADS and access logs over a unix socket), OnL7Event
//	status.go      ACK/NACK tracking from the server callbacks, Status, WaitAcked
//	accesslog.go   AccessLogServer: the proxies' HTTP access log entries → L7Event
//	configdump.go  ConfigDump in Envoy's admin config_dump format
//	bootstrap.go   Bootstrap for an Envoy that takes ADS from the agent and logs to it
//
// # mTLS between node proxies (not wired in yet)
//
// mtls.go builds, as pure functions, the resources of the design in
// docs/ARCHITECTURE.md; Build does not call them yet. SecretsFrom turns a
// certs.Snapshot into SDS secrets: a tls_certificate per SVID named by its
// SPIFFE ID (SVIDSecretName), and TrustBundleSecretName
// ("nodemesh-trust-bundle"), a validation context with the SPIFFE
// validator and every trust domain's roots (absent without a bundle, so
// users warm instead of accepting unverifiable peers). The destination
// proxy gets TLSInspectorFilter and, per local pod and port (InboundChain),
// InboundMTLSFilterChain — matched on the pod's addresses, the port,
// transport_protocol "tls" and ALPN MTLSALPN ("nodemesh-mtls"); TLS 1.3,
// the pod's SVID, client certificate required, URI SAN prefix
// spiffe://<td>/ against the bundle; then the caller's HCM, or network
// RBAC on exact peer SPIFFE IDs (when AllowedPeers is not nil) and
// tcp_proxy to InboundClusterName — named "inbound-mtls|ns/pod|port", and
// in permissive mode InboundPlaintextFilterChain ("inbound-plaintext|...",
// raw_buffer, no identity check). The source proxy gets
// OutboundMTLSCluster per local workload ("nodemesh-outbound-mtls|<SPIFFE
// ID>"): the outbound ORIGINAL_DST cluster with an UpstreamTlsContext of
// the same shape. Tests hold every message valid (Validate) and accepted
// by nodemesh-proxy over ADS, with a real handshake on the inbound chain.
//
// # Ordering with the datapath
//
// The datapath must steer a flow to a listener only after the proxy has
// ACKed the configuration that serves it: SetNode returns a version, and
// WaitAcked returns once the proxy ACKed it, or the proxy's NACK as a
// *NACKError. When redirects go away, the datapath should stop steering
// before the listeners are removed. Upstream connections of the proxy
// carry MarkProxyIngress or MarkProxyEgress (SO_MARK) so that the
// datapath does not steer them again; their source address is the
// client's, so the packets back to it must be delivered to the proxy's
// socket on the node rather than routed to the client.
//
// # Observing requests
//
// Server.OnL7Event sets the function that receives an L7Event per request
// any connected proxy (Envoy or nodemesh-proxy) handled; it is called on
// the proxy's log stream and should not block. Proxies buffer entries
// (about a second) and drop them rather than slow requests when the agent
// is away or slow.
package xds
