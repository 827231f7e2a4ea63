// Package proxy is nodemesh-proxy, the node's L7 proxy when Envoy is not
// used (embedded default, tests). It knows only Envoy's xDS API
// (go-control-plane's protos) and gives the subset of it that Nodemesh's
// control plane generates Envoy's semantics; it never imports the policy
// model or the xDS server, so what it accepts is what Envoy would receive.
//
// # Contract
//
// Everything the proxy does not implement is refused, never ignored: each
// message it translates is checked field by field (fields.go), and a
// resource setting an unsupported field, filter, matcher or type is
// NACKed with an error_detail naming the resource and field path, e.g.
//
//	listener "in".filter_chains[0].filters[0].typed_config.http_filters[0]:
//	http filter "envoy.filters.http.lua" is not supported by nodemesh-proxy
//
// As in Envoy, listeners, clusters and route configurations are accepted
// or refused one by one: a refused one keeps its last good version (shown
// with error_state in /config_dump), the others of the same response
// apply, and the response is NACKed with the last accepted version_info.
//
// Supported: listeners on TCP IP:ports (address and additional_addresses;
// 0.0.0.0 is IPv4-only and :: IPv6-only unless ipv4_compat; transparent →
// IP_TRANSPARENT, which needs CAP_NET_ADMIN or CAP_NET_RAW; freebind; int
// socket options before bind; the original_dst listener filter; the
// original_src listener filter with mark, not bind_port: see "Upstream
// connections"; the tls_inspector listener filter without options),
// filter_chain_match on destination port, destination prefixes,
// transport_protocol raw_buffer or tls, application_protocols, direct
// source and source prefixes and source ports (Envoy's order and
// most-specific rules, default chain); a filter chain's transport_socket
// envoy.transport_sockets.tls with a DownstreamTlsContext (see "TLS");
// as network filters an optional envoy.filters.network.rbac then the
// terminal envoy.filters.network.http_connection_manager or
// envoy.filters.network.tcp_proxy (see "L4 chains"); the HCM with
// rds (over ADS) or an inline route_config, http_filters
// envoy.filters.http.rbac (ALLOW/DENY; permissions any, and/or/not,
// header, url_path, destination_ip/port/port_range; principals any,
// and/or/not, direct_remote_ip, remote_ip, source_ip, header, url_path,
// authenticated with or without principal_name)
// then envoy.filters.http.router, codec AUTO/HTTP1/HTTP2 (h2c with prior
// knowledge), stream_idle_timeout, request_timeout,
// request_headers_timeout, common_http_protocol_options.idle_timeout,
// max_request_headers_kb, use_remote_address, generate_request_id,
// server_name and server_header_transformation, upgrade_configs (e.g.
// websocket; other upgrades get 403 as in Envoy), path handling left
// unchanged (normalize_path and merge_slashes false), the
// envoy.access_loggers.stdout logger without log_format (one JSON line
// per request) and the envoy.access_loggers.http_grpc logger (log_name,
// envoy_grpc cluster_name of a static gRPC cluster, transport V3,
// buffer_flush_interval, buffer_size_bytes: see "Access logs"); routes by
// domain (exact, suffix and prefix wildcards, "*") and
// prefix/path/safe_regex/path_separated_prefix plus header matches, to a
// cluster (timeout, idle_timeout) or a direct response;
// clusters ORIGINAL_DST (CLUSTER_PROVIDED; original_dst_lb_config
// use_http_header, http_header_name, upstream_port_override) and STATIC
// (ROUND_ROBIN), connect_timeout, upstream_bind_config socket options
// such as SO_MARK, keep-alive pools per cluster speaking HTTP/1.1, h2c or
// the downstream's protocol (envoy.extensions.upstreams.http.v3.
// HttpProtocolOptions explicit_http_config, use_downstream_protocol_config),
// a cluster's transport_socket envoy.transport_sockets.tls with an
// UpstreamTlsContext; SDS secrets over ADS (see "TLS").
//
// Not yet: delta xDS, EDS, retries, rewrites, other filters and cluster
// types, server_names matching, TLS parameters
// beyond protocol versions, static or file-based secrets, a bootstrap
// file (the static gRPC clusters come from Config.GRPCClusters instead).
//
// # TLS
//
// Secrets (secret.go) arrive over the ADS stream as
// envoy.extensions.transport_sockets.tls.v3.Secret: tls_certificate
// (certificate_chain and private_key, inline_bytes or inline_string) or
// validation_context (trusted_ca inline, match_typed_subject_alt_names
// with URI matchers, custom_validator_config envoy.tls.cert_validator.spiffe
// with trust_domains[] {name, trust_bundle inline}). Listeners and
// clusters name them with sds_config {ads: {}}; the proxy subscribes to
// exactly the names its listeners and clusters (active and warming) use.
// A listener or cluster whose secrets have not arrived warms (the
// previous version serves; a new one does not accept, a new cluster is
// not routed to): nothing serves without its certificate or accepts a
// peer it cannot verify. A secret update applies to the next handshake;
// established connections keep going (see tlsclient.go for pools).
// A secret its users cannot use (another kind, a validation context
// that is incomplete or does not merge into a combined context's default)
// is NACKed, as Envoy's SDS validation does.
//
// Contexts (tls.go): DownstreamTlsContext {require_client_certificate,
// common_tls_context}, UpstreamTlsContext {sni, common_tls_context},
// CommonTlsContext {tls_params with tls_minimum/maximum_protocol_version
// (TLSv1_2, TLSv1_3; Envoy's defaults: servers 1.2-1.3, clients 1.2),
// one tls_certificate_sds_secret_configs, validation_context_sds_secret_config
// or combined_validation_context (default_validation_context merged with
// the secret, protobuf MergeFrom as Envoy), alpn_protocols}. Curves and
// TLS 1.2 suites are Envoy's defaults. The server selects ALPN as
// BoringSSL does (its first protocol the client offers; none in common:
// no ALPN); a client without alpn_protocols offers its pool's protocol.
//
// Verification: the chain and the X509-SVID rules through an
// SVIDVerifier (interfaces.go; default X509SVIDVerifier: one URI SAN
// holding a SPIFFE ID, leaf not a CA, digitalSignature and no
// keyCertSign/cRLSign, validity, chain to the trust domain's roots —
// trusted_ca for every trust domain, or the SPIFFE validator's bundle of
// the ID's trust domain), then the URI SAN matchers (any matching).
// Unlike Envoy, the SVID rules apply with trusted_ca too and a second URI
// SAN is refused, and a validation context without trusted_ca nor the
// SPIFFE validator is NACKed (Envoy would match SANs on an unverified
// chain). A client certificate is required with require_client_certificate,
// the SPIFFE validator or SAN matchers (Envoy's verify modes); a presented
// one is always verified. Refusals are logged with their reason and
// counted: nodemesh_proxy_ssl_total{scope,name,stat} with Envoy's ssl.*
// names (handshake, session_reused, connection_error, fail_verify_error,
// fail_verify_san, fail_verify_no_cert, no_certificate) and
// nodemesh_proxy_ssl_fail_verify_reasons_total{scope,name,reason} with
// the Reason* strings (those of certs.VerifySVID).
//
// Identity: the RBAC principal authenticated matches a TLS connection's
// peer as Envoy does (principal_name against the URI SANs, then the DNS
// SANs, then the subject); the http_grpc entry carries tls_properties
// (tls_version, cipher suite, SNI, the local and peer certificates' URI
// SANs and subjects), the stdout line downstream_peer_uri_san and
// downstream_tls_version; x-forwarded-client-cert is removed (Envoy's
// default SANITIZE) and x-forwarded-proto says https on TLS connections.
//
// Resumption: servers issue tickets sealed with per-chain keys, so a
// session resumes only into the filter chain that made it; clients keep
// a session per upstream address and SNI, per generation of their
// secrets. A resumed handshake verifies the peer certificate of the
// session again under the current validation context.
//
// /config_dump shows secrets as Envoy's SecretsConfigDump (active, and
// warming with their name only) and redacts every sensitive field
// (udpa.annotations.sensitive: private keys) everywhere, refused updates
// included, as "[redacted]" (redact.go). No error or log line carries
// key material.
//
// # Upstream connections
//
// A cluster pools its upstream connections per upstream bind. A
// connection accepted on a listener with the original_src filter binds
// its upstream connections to the client's IP with port 0
// (IP_BIND_ADDRESS_NO_PORT: the kernel picks the port at connect, so only
// the 4-tuple need be unique), with IP_TRANSPARENT or IPV6_TRANSPARENT so
// that the address need not be local (CAP_NET_ADMIN), and SO_MARK = the
// filter's mark when not 0; this overrides the cluster's source_address.
// As Envoy keys its pools by these socket options, connections of
// different client addresses never share an upstream connection, while
// those of one client do. The cluster's upstream_bind_config socket
// options are applied after the filter's, the order Envoy applies a
// connection's and its cluster's options in: when both set SO_MARK, the
// cluster's wins. The packets coming back to the client's address must
// be delivered to the proxy's socket by the node (the datapath), not
// routed to the client. A pool unused for longer than the cluster's idle
// timeout is dropped.
//
// # L4 chains
//
// A chain whose filters are [envoy.filters.network.rbac (optional),
// envoy.filters.network.tcp_proxy] proxies bytes (tcpproxy.go); the
// network RBAC may also precede the HCM: [envoy.filters.network.rbac,
// envoy.filters.network.http_connection_manager] (see "Network RBAC").
//
// tcp_proxy (envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy):
// stat_prefix (required), cluster (one cluster; weighted_clusters is
// refused), idle_timeout (Envoy's default 1h; 0 disables it: no bytes
// either way for that long closes both sides), max_connect_attempts only
// 1, access_log with the envoy.access_loggers.tcp_grpc logger (see
// "Access logs") and the envoy.access_loggers.stdout logger without
// log_format (one JSON line per connection); other loggers (http_grpc
// included), access_log filters and access_log_options are refused, as
// is every other field (hash_policy, tunneling_config, on_demand,
// metadata_match, the per-direction idle timeouts,
// max_downstream_connection_duration, ...). The upstream connection is made by the cluster's dialer,
// the one its HTTP pools use: the ORIGINAL_DST address (the
// connection's original destination; use_http_header has no header to
// read and falls back to it) or STATIC endpoints round robin,
// connect_timeout, the original_src bind and mark, upstream_bind_config
// socket options, and the UpstreamTlsContext (without alpn_protocols no
// ALPN is offered, as Envoy's tcp_proxy). No cluster, or a failed
// connect: the downstream connection is closed. Bytes are copied both
// ways; an end of stream on one side closes the other side's write
// direction (TLS close_notify, then the TCP FIN), so half-closed
// connections keep flowing the other way; an error on either side closes
// both. Statistics: nodemesh_proxy_tcp_total{listener,stat_prefix,stat}
// with Envoy's downstream_cx_total, downstream_cx_no_route, idle_timeout,
// downstream_cx_rx_bytes_total, downstream_cx_tx_bytes_total; connect
// failures count in nodemesh_proxy_upstream_connect_failures_total.
// Connections keep the chain they were accepted with while an update
// keeps that chain unchanged (proto-equal); when an update removes or
// changes it (a new RBAC policy, say), or the listener drains, they are
// closed after Config.DrainTimeout, as Envoy drains the connections of
// removed filter chains.
//
// Network RBAC (envoy.extensions.filters.network.rbac.v3.RBAC):
// stat_prefix (required), rules (ALLOW/DENY, as the HTTP filter's,
// compiled by the same code) limited to what a connection has:
// permissions any, and/or/not, destination_ip, destination_port,
// destination_port_range; principals any, and/or/not, direct_remote_ip,
// remote_ip, source_ip, authenticated with or without principal_name.
// header and url_path, which need a request, are refused, and so are
// shadow_rules, matcher, delay_deny and enforcement_type CONTINUOUS
// (ONE_TIME_ON_FIRST_BYTE, the default, is accepted). Rules unset allow
// every connection. The connection is checked once, after the TLS
// handshake (the peer's identity is known) and before tcp_proxy connects
// upstream — stricter than Envoy, which connects upstream at accept and
// checks at the first byte: a denied connection never reaches the
// upstream, even with a server-first protocol. Before the HCM, it is
// checked once before any request is read (Envoy: at the first byte,
// before the codec sees it), and a denied connection is closed without
// an HTTP response. A denied connection is closed, logged at debug with
// the peer and rbac_access_denied_matched_policy[NAME or none] (on a
// tcp_proxy chain also its access log entry's
// connection_termination_details, as Envoy), and counted with the
// allowed ones in nodemesh_proxy_network_rbac_total{listener,stat_prefix,
// stat} (Envoy's <stat_prefix>.rbac.allowed and .denied). A keep-alive
// HTTP connection that a configuration change moves to another chain is
// checked by that chain's network RBAC again at its next request, and
// reset if denied (Envoy drains the connections of changed chains; see
// "Configuration changes").
//
// # Access logs
//
// The http_grpc logger fills Envoy's HTTPAccessLogEntry as Envoy does for
// the fields the proxy knows: downstream remote (the client) and local
// (the original destination) addresses, upstream remote and local
// addresses and cluster, start time and duration, method, scheme,
// authority, :path, headers' size, protocol, status and
// response_code_details (via_upstream; rbac_access_denied_matched_policy[
// NAME or none]; route_not_found, ...), response flags, and the RBAC
// filters' dynamic metadata under envoy.filters.http.rbac
// (enforced_engine_result allowed or denied, enforced_effective_policy_id
// when a policy matched, prefixed by rules_stat_prefix). Loggers with the
// same configuration share one stream (grpclog.go): requests queue their
// entry without waiting, at most Config.AccessLogQueue per logger; what
// does not fit while the service is slow or away is dropped and counted
// (nodemesh_proxy_grpc_access_log_entries_total{result="dropped"}); the
// stream reconnects with the xDS backoff. A logger naming a cluster that
// is not a static gRPC cluster is NACKed, as Envoy refuses it.
//
// tcp_proxy's tcp_grpc logger (same common_config fields and stream
// handling as http_grpc; a tcp_grpc and an http_grpc logger never share
// a stream, as in Envoy) sends one TCPAccessLogEntry per downstream
// connection of its chain when the connection ends (tcplog.go):
// downstream remote and local (original destination) addresses, start
// time and duration, upstream cluster, upstream remote address (the host
// chosen, also when the connect failed) and local address,
// connection_properties received_bytes and sent_bytes (the downstream
// connection's), tls_properties as for HTTP entries, response flags UF
// (upstream connect failure, with upstream_transport_failure_reason the
// dial error) or NC (no cluster), connection_termination_details when
// the network RBAC denied, and access_log_type TcpConnectionEnd. As
// Envoy creates a chain's filters at accept, a connection whose
// downstream TLS handshake failed on a chain whose tcp_proxy has
// access_log is logged too, with downstream_transport_failure_reason the
// handshake's reason (the Reason* strings: svid-expired, svid-unknown-ca,
// svid-malformed when no client certificate was presented, ...; or
// handshake-timeout, not-tls, ...). Unlike Envoy's, those entries and
// those of denied connections have no upstream addresses: the proxy
// connects upstream only after the handshake and the RBAC.
//
// # Pipeline
//
// xdsclient.go (ADS stream, ACK/NACK, reconnect with backoff) → proxy.go,
// secret.go (apply per type, keep last good, warming) → listener.go,
// hcm.go, rbac.go, route.go, cluster.go, tls.go, tcpproxy.go (compile
// protos into immutable values) → runtime.go (socket, accept, listener
// filters: inspector.go; filter chain choice; TLS handshake: tlsserver.go;
// upstream bind; one HTTP server per connection profile, or tcpproxy.go
// for L4 chains) → handler.go (per
// request: RBAC, route, forward, timeouts; upstream TLS: tlsclient.go) →
// accesslog.go, tcplog.go, grpclog.go (stdout lines, gRPC access log
// streams) →
// admin.go, redact.go (/config_dump, /ready, /stats). interfaces.go and
// svid.go: the SVIDVerifier extension point and its default.
//
// # Configuration changes
//
// A listener update that keeps its socket settings (transparent,
// freebind, socket options) is applied in place: sockets of the addresses
// it keeps stay open, new addresses are bound, dropped ones closed.
// Connections keep the connection-level settings they were accepted with
// (codec, idle timeout, header limits, original_src bind, TLS session);
// everything else — filter chain choice, RBAC, routes, clusters, stream
// timeouts — is looked up again for every request, so a policy change
// applies to the next request of an existing keep-alive connection, while
// in-flight requests finish with the configuration they started with. A
// connection that no longer matches any chain is reset at its next
// request; so is a TLS connection whose new chain presents another
// certificate or does not accept its client certificate, and a plaintext
// one whose new chain wants TLS (or the reverse). When a listener is
// removed, changes address, or no longer uses a connection's profile,
// those connections drain: in-flight requests finish, idle keep-alive
// connections close (HTTP/2: GOAWAY), and --drain-timeout bounds the
// wait. Envoy drains the connections of changed filter chains instead
// of re-evaluating; re-evaluating applies revocations at once.
// A listener whose route configurations or secrets have not arrived
// warms: its previous version (or, if new, nothing) serves until they do.
// Unlike Envoy, there is no initial_fetch_timeout: it warms until they
// come (Envoy would activate it after 15 s and fail its handshakes).
//
// Fail closed: a connection no filter chain matches is reset and counted
// (nodemesh_proxy_no_filter_chain_total). An ORIGINAL_DST request whose
// destination is a non-transparent listener's own address is refused with
// 503 rather than looped back into the proxy.
//
// Lock order: Proxy.mu, then listenerRuntime.mu. Requests take no lock
// on their path but a cluster's pool lock when a new upstream bind
// appears: they read atomic pointers to immutable compiled
// configuration, and access log queues without waiting.
package proxy
