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
// connections"), filter_chain_match on destination port, destination
// prefixes, transport_protocol raw_buffer, direct source and source
// prefixes and source ports (Envoy's order and most-specific rules,
// default chain);
// one network filter, envoy.filters.network.http_connection_manager, with
// rds (over ADS) or an inline route_config, http_filters
// envoy.filters.http.rbac (ALLOW/DENY; permissions any, and/or/not,
// header, url_path, destination_ip/port/port_range; principals any,
// and/or/not, direct_remote_ip, remote_ip, source_ip, header, url_path)
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
// HttpProtocolOptions explicit_http_config, use_downstream_protocol_config).
//
// Not yet: TLS transport sockets and SDS, delta xDS, EDS, retries,
// rewrites, other filters and cluster types, a bootstrap file (the static
// gRPC clusters come from Config.GRPCClusters instead).
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
// # Pipeline
//
// xdsclient.go (ADS stream, ACK/NACK, reconnect with backoff) → proxy.go
// (apply per type, keep last good, warming) → listener.go, hcm.go,
// rbac.go, route.go, cluster.go (compile protos into immutable values) →
// runtime.go (socket, accept, filter chain choice, upstream bind, one HTTP
// server per connection profile) → handler.go (per request: RBAC, route,
// forward, timeouts) → accesslog.go, grpclog.go (stdout line, gRPC access
// log stream) → admin.go (/config_dump, /ready, /stats).
//
// # Configuration changes
//
// A listener update that keeps its socket settings (transparent,
// freebind, socket options) is applied in place: sockets of the addresses
// it keeps stay open, new addresses are bound, dropped ones closed.
// Connections keep the connection-level settings they were accepted with
// (codec, idle timeout, header limits, original_src bind); everything else — filter chain
// choice, RBAC, routes, clusters, stream timeouts — is looked up again for
// every request, so a policy change applies to the next request of an
// existing keep-alive connection, while in-flight requests finish with
// the configuration they started with. A connection that no longer
// matches any chain is reset at its next request. When a listener is
// removed, changes address, or no longer uses a connection's profile,
// those connections drain: in-flight requests finish, idle keep-alive
// connections close (HTTP/2: GOAWAY), and --drain-timeout bounds the
// wait. Envoy drains the connections of changed filter chains instead
// of re-evaluating; re-evaluating applies revocations at once.
// A listener whose route configurations have not arrived warms: its
// previous version (or, if new, nothing) serves until they do.
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
