package proxy

import "github.com/prometheus/client_golang/prometheus"

// metrics are the proxy's Prometheus series, on its own registry (served
// by the admin endpoint's /stats).
type metrics struct {
	reg                *prometheus.Registry
	requests           *prometheus.CounterVec
	rbac               *prometheus.CounterVec
	connectFailures    *prometheus.CounterVec
	downstreamCx       *prometheus.CounterVec
	downstreamCxActive *prometheus.GaugeVec
	noFilterChain      *prometheus.CounterVec
	xdsUpdates         *prometheus.CounterVec
	xdsConnected       prometheus.Gauge
	configVersion      *prometheus.GaugeVec
	accessLogEntries   *prometheus.CounterVec
	accessLogUp        *prometheus.GaugeVec
	// TLS: Envoy's ssl.* statistics per listener and cluster, the
	// reasons of refused handshakes, the tls_inspector's findings.
	ssl                    *prometheus.CounterVec
	sslReasons             *prometheus.CounterVec
	tlsInspector           *prometheus.CounterVec
	listenerFilterTimeouts *prometheus.CounterVec
	// L4 chains: Envoy's <stat_prefix>.rbac.* and tcp.<stat_prefix>.*.
	netRBAC  *prometheus.CounterVec
	tcpProxy *prometheus.CounterVec
}

func newMetrics() *metrics {
	m := &metrics{
		reg: prometheus.NewRegistry(),
		requests: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "nodemesh_proxy_http_requests_total",
			Help: "HTTP requests by listener and response status (\"reset\" when the stream was reset)."}, []string{"listener", "status"}),
		rbac: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "nodemesh_proxy_rbac_requests_total",
			Help: "Requests the RBAC filters allowed or denied, by listener."}, []string{"listener", "verdict"}),
		connectFailures: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "nodemesh_proxy_upstream_connect_failures_total",
			Help: "Failed upstream connection attempts, by cluster."}, []string{"cluster"}),
		downstreamCx: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "nodemesh_proxy_downstream_connections_total",
			Help: "Accepted downstream connections, by listener."}, []string{"listener"}),
		downstreamCxActive: prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: "nodemesh_proxy_downstream_connections_active",
			Help: "Open downstream connections (HTTP and tcp_proxy), by listener."}, []string{"listener"}),
		noFilterChain: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "nodemesh_proxy_no_filter_chain_total",
			Help: "Connections (or requests after a config change) that matched no filter chain and were reset, by listener."}, []string{"listener"}),
		xdsUpdates: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "nodemesh_proxy_xds_updates_total",
			Help: "xDS responses acknowledged (ack) or rejected (nack), by resource type."}, []string{"type", "result"}),
		xdsConnected: prometheus.NewGauge(prometheus.GaugeOpts{Name: "nodemesh_proxy_xds_connected",
			Help: "1 while the ADS stream to the control plane is up."}),
		configVersion: prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: "nodemesh_proxy_config_version_info",
			Help: "The version_info last accepted, by resource type (value 1)."}, []string{"type", "version"}),
		accessLogEntries: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "nodemesh_proxy_grpc_access_log_entries_total",
			Help: "gRPC access log entries sent (written) or dropped because the queue was full or the logger stopped, by cluster and log name."},
			[]string{"cluster", "log_name", "result"}),
		accessLogUp: prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: "nodemesh_proxy_grpc_access_log_stream_up",
			Help: "1 while a gRPC access log's stream to its service is up, by cluster and log name."}, []string{"cluster", "log_name"}),
	}
	m.ssl = prometheus.NewCounterVec(prometheus.CounterOpts{Name: "nodemesh_proxy_ssl_total",
		Help: "TLS handshakes by scope (listener or cluster), its name and Envoy's ssl.* statistic: handshake, session_reused, " +
			"connection_error, fail_verify_error, fail_verify_san, fail_verify_no_cert, no_certificate."}, []string{"scope", "name", "stat"})
	m.sslReasons = prometheus.NewCounterVec(prometheus.CounterOpts{Name: "nodemesh_proxy_ssl_fail_verify_reasons_total",
		Help: "Failed TLS handshakes by scope, name and reason (svid-expired, svid-wrong-trust-domain, san-mismatch, ...)."}, []string{"scope", "name", "reason"})
	m.tlsInspector = prometheus.NewCounterVec(prometheus.CounterOpts{Name: "nodemesh_proxy_tls_inspector_total",
		Help: "Connections the tls_inspector listener filter saw, by listener: tls_found, tls_not_found."}, []string{"listener", "stat"})
	m.listenerFilterTimeouts = prometheus.NewCounterVec(prometheus.CounterOpts{Name: "nodemesh_proxy_downstream_pre_cx_timeout_total",
		Help: "Connections closed because the listener filters timed out waiting for data, by listener."}, []string{"listener"})
	m.netRBAC = prometheus.NewCounterVec(prometheus.CounterOpts{Name: "nodemesh_proxy_network_rbac_total",
		Help: "Connections the network RBAC filters allowed or denied (Envoy's <stat_prefix>.rbac.allowed/denied), by listener and stat_prefix."},
		[]string{"listener", "stat_prefix", "stat"})
	m.tcpProxy = prometheus.NewCounterVec(prometheus.CounterOpts{Name: "nodemesh_proxy_tcp_total",
		Help: "tcp_proxy statistics (Envoy's tcp.<stat_prefix>.*: downstream_cx_total, downstream_cx_no_route, idle_timeout, " +
			"downstream_cx_rx_bytes_total, downstream_cx_tx_bytes_total), by listener and stat_prefix."},
		[]string{"listener", "stat_prefix", "stat"})
	m.reg.MustRegister(m.netRBAC, m.tcpProxy)
	m.reg.MustRegister(m.requests, m.rbac, m.connectFailures, m.downstreamCx, m.downstreamCxActive, m.noFilterChain,
		m.xdsUpdates, m.xdsConnected, m.configVersion, m.accessLogEntries, m.accessLogUp,
		m.ssl, m.sslReasons, m.tlsInspector, m.listenerFilterTimeouts)
	return m
}
