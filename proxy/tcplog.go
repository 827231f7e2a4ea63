package proxy

// tcp_proxy access logs: when a connection of a chain whose tcp_proxy has
// access_log ends — proxied, refused by the network RBAC, without
// upstream, or refused by the downstream TLS handshake (Envoy creates the
// chain's filters at accept, so its tcp_proxy logs these too) — each of
// its loggers gets one entry: a JSON line for the stdout logger, Envoy's
// TCPAccessLogEntry for the tcp_grpc loggers.

import (
	"net/netip"
	"strings"
	"time"

	accesslogdata "github.com/envoyproxy/go-control-plane/envoy/data/accesslog/v3"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/timestamppb"
)

// tcpLogRecord is what the proxy learned of a connection for its entry.
type tcpLogRecord struct {
	cluster                 string         // the upstream cluster, "" when there is none
	upstream, upstreamLocal netip.AddrPort // the upstream host (also when the connect failed), the local address of the upstream connection
	received, sent          int64          // downstream bytes received and sent
	flag                    string         // Envoy's response flag: flagConnectFailure, flagNoCluster
	upstreamFailure         string         // upstream_transport_failure_reason
	downstreamFailure       string         // the downstream TLS handshake's failure reason (certs/Reason* strings)
	termination             string         // connection_termination_details (network RBAC denial)
}

// tcpAccessEntry is the stdout logger's line for a connection.
type tcpAccessEntry struct {
	Time              string  `json:"time"`
	Listener          string  `json:"listener"`
	Chain             string  `json:"filter_chain,omitempty"`
	Downstream        string  `json:"downstream_remote"`
	OrigDst           string  `json:"original_dst"`
	Flags             string  `json:"response_flags,omitempty"`
	Termination       string  `json:"connection_termination_details,omitempty"`
	DownstreamFailure string  `json:"downstream_transport_failure_reason,omitempty"`
	Cluster           string  `json:"cluster,omitempty"`
	Upstream          string  `json:"upstream,omitempty"`
	UpstreamLocal     string  `json:"upstream_local,omitempty"`
	Failure           string  `json:"upstream_failure,omitempty"`
	PeerURISAN        string  `json:"downstream_peer_uri_san,omitempty"`
	TLSVersion        string  `json:"downstream_tls_version,omitempty"`
	BytesReceived     int64   `json:"bytes_received"`
	BytesSent         int64   `json:"bytes_sent"`
	DurationMS        float64 `json:"duration_ms"`
}

// logTCP gives the entry of a connection of fc that ended to the chain's
// tcp_proxy access logs (none: nothing). gRPC loggers queue it without
// waiting.
func (lr *listenerRuntime) logTCP(fc *filterChain, ci *connInfo, rec *tcpLogRecord) {
	tp := fc.tcp
	if tp == nil || !tp.logs() {
		return
	}
	dur := time.Since(ci.start)
	if tp.accessLog {
		e := tcpAccessEntry{
			Time:              ci.start.UTC().Format(time.RFC3339Nano),
			Listener:          lr.name,
			Chain:             fc.name,
			Downstream:        ci.remote.String(),
			OrigDst:           ci.origDst.String(),
			Flags:             rec.flag,
			Termination:       rec.termination,
			DownstreamFailure: rec.downstreamFailure,
			Cluster:           rec.cluster,
			Failure:           rec.upstreamFailure,
			BytesReceived:     rec.received,
			BytesSent:         rec.sent,
			DurationMS:        float64(dur.Microseconds()) / 1000,
		}
		if rec.upstream.IsValid() {
			e.Upstream = rec.upstream.String()
		}
		if rec.upstreamLocal.IsValid() {
			e.UpstreamLocal = rec.upstreamLocal.String()
		}
		if t := ci.tls; t != nil {
			e.PeerURISAN = strings.Join(t.peerURIs, ",")
			e.TLSVersion = tlsVersionName(t.version)
		}
		lr.p.access.write(&e)
	}
	if len(tp.grpcLogs) > 0 {
		e := tcpEntry(ci, rec, dur)
		for _, g := range tp.grpcLogs {
			g.logger.enqueue(e)
		}
	}
}

// tcpEntry fills a TCPAccessLogEntry as Envoy's tcp_grpc logger does for
// the fields the proxy knows. Several loggers share it: it is not
// modified after.
func tcpEntry(ci *connInfo, rec *tcpLogRecord, dur time.Duration) *accesslogdata.TCPAccessLogEntry {
	c := &accesslogdata.AccessLogCommon{
		DownstreamRemoteAddress:          coreAddress(ci.remote),
		DownstreamDirectRemoteAddress:    coreAddress(ci.remote),
		DownstreamLocalAddress:           coreAddress(ci.origDst),
		StartTime:                        timestamppb.New(ci.start),
		Duration:                         durationpb.New(dur),
		UpstreamRemoteAddress:            coreAddress(rec.upstream),
		UpstreamLocalAddress:             coreAddress(rec.upstreamLocal),
		UpstreamCluster:                  rec.cluster,
		ResponseFlags:                    responseFlags(rec.flag),
		UpstreamTransportFailureReason:   rec.upstreamFailure,
		ConnectionTerminationDetails:     rec.termination,
		DownstreamTransportFailureReason: rec.downstreamFailure,
		AccessLogType:                    accesslogdata.AccessLogType_TcpConnectionEnd,
	}
	if ci.tls != nil {
		c.TlsProperties = ci.tls.logProps
	}
	return &accesslogdata.TCPAccessLogEntry{
		CommonProperties: c,
		ConnectionProperties: &accesslogdata.ConnectionProperties{
			ReceivedBytes: uint64(rec.received),
			SentBytes:     uint64(rec.sent),
		},
	}
}
