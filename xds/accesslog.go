package xds

// The receiving end of the listeners' gRPC access logs: each HTTP entry a
// proxy streams becomes an L7Event for the agent (meshctl observe), each
// TCP entry (tcp_proxy's tcp_grpc logger: one per connection, at its
// end) a ConnEvent.
//
// A proxy opens one StreamAccessLogs stream per access log configuration
// (here: per direction); only the stream's first message carries the
// identifier (node and log name). Entries are decoded the way upstream
// Envoy fills them, so that Envoy and nodemesh-proxy give the same events:
// the RBAC filter writes its verdict and the policy that matched into the
// dynamic metadata namespace envoy.filters.http.rbac
// (enforced_engine_result, enforced_effective_policy_id), and a denial's
// response_code_details reads rbac_access_denied_matched_policy[NAME]
// (NAME "none" when no policy matched). TCP entries carry the network
// RBAC's denial in connection_termination_details (the same
// rbac_access_denied_matched_policy[NAME]; Envoy's network RBAC writes no
// enforced metadata), a refused TLS handshake in
// downstream_transport_failure_reason, and a failed upstream connect in
// the response flags (UF).

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"net/netip"
	"strings"
	"sync/atomic"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	accesslogdatav3 "github.com/envoyproxy/go-control-plane/envoy/data/accesslog/v3"
	accesslogv3 "github.com/envoyproxy/go-control-plane/envoy/service/accesslog/v3"
	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// Access log names of the mTLS listeners' tcp_proxy (tcp_grpc) loggers;
// their entries' ConnEvents have the direction of the name. (The HTTP
// loggers' names are InboundAccessLogName and OutboundAccessLogName.)
const (
	InboundMTLSAccessLogName  = "nodemesh-inbound-mtls"
	OutboundMTLSAccessLogName = "nodemesh-outbound-mtls"
)

// Directions of an L7Event or ConnEvent, from the access log's name.
const (
	DirectionInbound  = "inbound"
	DirectionOutbound = "outbound"
)

// Verdicts of the RBAC filter in an L7Event; of the connection's
// admission (TLS handshake and network RBAC) in a ConnEvent.
const (
	VerdictAllowed = "allowed"
	VerdictDenied  = "denied"
)

// RBAC filter dynamic metadata, as upstream Envoy names it (the listeners
// set no rules_stat_prefix, which would prefix the keys).
const (
	rbacMetadataNamespace  = "envoy.filters.http.rbac"
	rbacEngineResultKey    = "enforced_engine_result"
	rbacEffectivePolicyKey = "enforced_effective_policy_id"
	rbacDeniedDetailPrefix = "rbac_access_denied_matched_policy["
)

// L7Event is one HTTP request a node's proxy handled, as its access log
// entry describes it.
type L7Event struct {
	Time      time.Time // when the request started
	Node      string    // the proxy's node ID
	Direction string    // DirectionInbound or DirectionOutbound; "" for another log's entries
	// Src is the client (the downstream peer), Dst the original
	// destination: for both directions, the flow as the client opened it.
	Src, Dst  netip.AddrPort
	Method    string // "" for a method Envoy's access log cannot name
	Path      string // :path as sent, query included
	Authority string
	Protocol  string // "HTTP/1.0", "HTTP/1.1", "HTTP/2", "HTTP/3"
	Status    int    // 0: no response was sent (the stream was reset)
	// Verdict is the RBAC filter's: VerdictAllowed or VerdictDenied, ""
	// when it did not run (e.g. the request was refused before it).
	Verdict string
	// Rule is the name of the RBAC policy that matched: the one that
	// allowed the request; "" when none matched (the generated policies
	// are ALLOW policies, so a denied request has none).
	Rule string
	// Details is Envoy's response_code_details, e.g. "via_upstream" or
	// "rbac_access_denied_matched_policy[none]".
	Details  string
	Duration time.Duration // until the last byte was sent; 0 if unknown
	// PeerID is the URI SAN of the client's certificate when the request
	// came over mTLS between node proxies (TLSVersion then set); "".
	PeerID, TLSVersion string
}

// Reasons of a ConnEvent that are not a downstream TLS handshake's (those
// are the proxy's handshake failure reasons, e.g. "svid-expired",
// "svid-unknown-ca", "handshake-timeout", as it puts them in
// downstream_transport_failure_reason).
const (
	ReasonRBACDenied            = "rbac-denied"             // the network RBAC refused the connection
	ReasonUpstreamConnectFailed = "upstream-connect-failed" // response flag UF
	ReasonNoCluster             = "no-cluster"              // response flag NC: the tcp_proxy's cluster does not exist
)

// ConnEvent is one downstream connection a node's proxy handled on a
// tcp_proxy chain, as its TCP access log entry (sent when it closed)
// describes it.
type ConnEvent struct {
	Time      time.Time // when the connection was accepted
	Node      string    // the proxy's node ID
	Direction string    // DirectionInbound or DirectionOutbound; "" for another log's entries
	// Source is the client (the downstream peer), Destination the
	// original destination.
	Source, Destination netip.AddrPort
	// Upstream is the upstream host the proxy connected (or tried to
	// connect) to; zero when it did not get that far.
	Upstream netip.AddrPort
	// PeerID is the URI SAN of the client's certificate, LocalID the URI
	// SAN of the certificate the proxy presented; "" without TLS (or
	// when the handshake failed).
	PeerID, LocalID string
	TLSVersion      string // "TLSv1.2", "TLSv1.3"; "" without TLS
	// BytesReceived and BytesSent count the downstream connection's bytes
	// (from and to the client).
	BytesReceived, BytesSent uint64
	Duration                 time.Duration // the connection's lifetime; 0 if unknown
	// Verdict is VerdictDenied when the TLS handshake or the network RBAC
	// refused the connection, else VerdictAllowed (an upstream failure
	// is an allowed connection with a Reason).
	Verdict string
	// Reason says why the connection did not go through: the downstream
	// TLS handshake's failure reason, ReasonRBACDenied,
	// ReasonUpstreamConnectFailed, ReasonNoCluster, or another
	// connection_termination_details as is; "" when it went through.
	Reason string
	// Policy is the network RBAC policy named in a denial (a DENY
	// policy that matched); "" when none is (Envoy writes no policy for
	// allowed connections). The filter chain is not in Envoy's entry.
	Policy string
	// Details is Envoy's connection_termination_details, e.g.
	// "rbac_access_denied_matched_policy[none]".
	Details string
	// UpstreamFailure is Envoy's upstream_transport_failure_reason.
	UpstreamFailure string
}

// AccessLogServer is the agent's end of Envoy's access log service
// (envoy.service.accesslog.v3.AccessLogService): it turns the HTTP entries
// proxies stream into L7Events for the function set with OnL7Event, and
// the TCP entries into ConnEvents for the one set with OnConnEvent.
// Server registers one on its gRPC server (Server.OnL7Event,
// Server.OnConnEvent).
type AccessLogServer struct {
	accesslogv3.UnimplementedAccessLogServiceServer

	log        *slog.Logger
	fn         atomic.Pointer[func(L7Event)]
	connFn     atomic.Pointer[func(ConnEvent)]
	streams    prometheus.Gauge
	events     *prometheus.CounterVec
	connEvents *prometheus.CounterVec
}

// NewAccessLogServer returns a server that drops events until OnL7Event
// (OnConnEvent) sets a function. Metrics are registered on reg when it is not nil.
func NewAccessLogServer(log *slog.Logger, reg prometheus.Registerer) *AccessLogServer {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	a := &AccessLogServer{
		log: log,
		streams: prometheus.NewGauge(prometheus.GaugeOpts{Name: "nodemesh_xds_access_log_streams",
			Help: "Open access log streams of proxies."}),
		events: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "nodemesh_xds_l7_events_total",
			Help: "HTTP access log entries received from proxies, by direction and RBAC verdict."}, []string{"direction", "verdict"}),
		connEvents: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "nodemesh_xds_conn_events_total",
			Help: "TCP access log entries (connections) received from proxies, by direction and verdict."}, []string{"direction", "verdict"}),
	}
	if reg != nil {
		reg.MustRegister(a.streams, a.events, a.connEvents)
	}
	return a
}

// OnL7Event sets the function that receives every event; nil drops them.
// It is called on the stream's goroutine, one event at a time per proxy
// log stream, and should not block: a slow fn slows that proxy's access
// log (which drops entries when its buffer fills), never its requests.
func (a *AccessLogServer) OnL7Event(fn func(L7Event)) {
	if fn == nil {
		a.fn.Store(nil)
		return
	}
	a.fn.Store(&fn)
}

// OnConnEvent sets the function that receives every connection event;
// nil drops them. It is called as OnL7Event's function is.
func (a *AccessLogServer) OnConnEvent(fn func(ConnEvent)) {
	if fn == nil {
		a.connFn.Store(nil)
		return
	}
	a.connFn.Store(&fn)
}

// StreamAccessLogs receives one proxy's access log stream.
func (a *AccessLogServer) StreamAccessLogs(stream accesslogv3.AccessLogService_StreamAccessLogsServer) error {
	return a.serveStream(stream.Context(), stream)
}

// serveStream ends the stream when ctx ends (the agent stops), although
// the proxy keeps it open for as long as it lives.
func (a *AccessLogServer) serveStream(ctx context.Context, stream accesslogv3.AccessLogService_StreamAccessLogsServer) error {
	a.streams.Inc()
	defer a.streams.Dec()
	errc := make(chan error, 1)
	go func() { errc <- a.receive(stream) }()
	select {
	case err := <-errc:
		if errors.Is(err, io.EOF) {
			return stream.SendAndClose(&accesslogv3.StreamAccessLogsResponse{})
		}
		return err
	case <-ctx.Done():
		return status.Error(codes.Unavailable, "access log server stopping")
	}
}

func (a *AccessLogServer) receive(stream accesslogv3.AccessLogService_StreamAccessLogsServer) error {
	var id *accesslogv3.StreamAccessLogsMessage_Identifier
	for {
		msg, err := stream.Recv()
		if err != nil {
			return err
		}
		if msg.GetIdentifier() != nil {
			id = msg.GetIdentifier()
			a.log.Debug("xds: access log stream", "node", id.GetNode().GetId(), "log", id.GetLogName())
		}
		if id == nil {
			return status.Error(codes.InvalidArgument, "access log stream: the first message has no identifier")
		}
		fn := a.fn.Load()
		for _, e := range msg.GetHttpLogs().GetLogEntry() {
			ev := DecodeL7Event(id.GetNode().GetId(), id.GetLogName(), e)
			a.events.WithLabelValues(ev.Direction, ev.Verdict).Inc()
			if fn != nil {
				(*fn)(ev)
			}
		}
		connFn := a.connFn.Load()
		for _, e := range msg.GetTcpLogs().GetLogEntry() {
			ev := DecodeConnEvent(id.GetNode().GetId(), id.GetLogName(), e)
			a.connEvents.WithLabelValues(ev.Direction, ev.Verdict).Inc()
			if connFn != nil {
				(*connFn)(ev)
			}
		}
	}
}

// alsHandler serves an AccessLogServer's streams until ctx ends (Serve's).
type alsHandler struct {
	accesslogv3.UnimplementedAccessLogServiceServer
	a   *AccessLogServer
	ctx context.Context
}

func (h alsHandler) StreamAccessLogs(stream accesslogv3.AccessLogService_StreamAccessLogsServer) error {
	ctx, cancel := context.WithCancel(stream.Context())
	defer cancel()
	stop := context.AfterFunc(h.ctx, cancel)
	defer stop()
	return h.a.serveStream(ctx, stream)
}

// DecodeL7Event turns an HTTP access log entry of the log logName of
// node's proxy into an event.
func DecodeL7Event(node, logName string, e *accesslogdatav3.HTTPAccessLogEntry) L7Event {
	c := e.GetCommonProperties()
	ev := L7Event{
		Node:      node,
		Src:       addrPort(c.GetDownstreamRemoteAddress()),
		Dst:       addrPort(c.GetDownstreamLocalAddress()),
		Path:      e.GetRequest().GetPath(),
		Authority: e.GetRequest().GetAuthority(),
		Status:    int(e.GetResponse().GetResponseCode().GetValue()),
		Details:   e.GetResponse().GetResponseCodeDetails(),
	}
	ev.Direction = logDirection(logName)
	ev.PeerID, _, ev.TLSVersion = tlsOf(c)
	if c.GetStartTime() != nil {
		ev.Time = c.GetStartTime().AsTime()
	}
	switch {
	case c.GetDuration() != nil:
		ev.Duration = c.GetDuration().AsDuration()
	case c.GetTimeToLastDownstreamTxByte() != nil:
		ev.Duration = c.GetTimeToLastDownstreamTxByte().AsDuration()
	}
	if m := e.GetRequest().GetRequestMethod(); m != corev3.RequestMethod_METHOD_UNSPECIFIED {
		ev.Method = m.String()
	}
	switch e.GetProtocolVersion() {
	case accesslogdatav3.HTTPAccessLogEntry_HTTP10:
		ev.Protocol = "HTTP/1.0"
	case accesslogdatav3.HTTPAccessLogEntry_HTTP11:
		ev.Protocol = "HTTP/1.1"
	case accesslogdatav3.HTTPAccessLogEntry_HTTP2:
		ev.Protocol = "HTTP/2"
	case accesslogdatav3.HTTPAccessLogEntry_HTTP3:
		ev.Protocol = "HTTP/3"
	}
	md := c.GetMetadata().GetFilterMetadata()[rbacMetadataNamespace].GetFields()
	switch md[rbacEngineResultKey].GetStringValue() {
	case VerdictAllowed:
		ev.Verdict = VerdictAllowed
	case VerdictDenied:
		ev.Verdict = VerdictDenied
	}
	ev.Rule = md[rbacEffectivePolicyKey].GetStringValue()
	// Envoy releases older than the enforced_* metadata name a denial
	// only in the details.
	if rest, ok := strings.CutPrefix(ev.Details, rbacDeniedDetailPrefix); ok && strings.HasSuffix(rest, "]") {
		ev.Verdict = VerdictDenied
		if p := strings.TrimSuffix(rest, "]"); ev.Rule == "" && p != "none" {
			ev.Rule = p
		}
	}
	return ev
}

// logDirection is the direction of a log's entries, from its name.
func logDirection(logName string) string {
	switch logName {
	case InboundAccessLogName, InboundMTLSAccessLogName:
		return DirectionInbound
	case OutboundAccessLogName, OutboundMTLSAccessLogName:
		return DirectionOutbound
	}
	return ""
}

// DecodeConnEvent turns a TCP access log entry of the log logName of
// node's proxy into an event.
func DecodeConnEvent(node, logName string, e *accesslogdatav3.TCPAccessLogEntry) ConnEvent {
	c := e.GetCommonProperties()
	ev := ConnEvent{
		Node:            node,
		Direction:       logDirection(logName),
		Source:          addrPort(c.GetDownstreamRemoteAddress()),
		Destination:     addrPort(c.GetDownstreamLocalAddress()),
		Upstream:        addrPort(c.GetUpstreamRemoteAddress()),
		BytesReceived:   e.GetConnectionProperties().GetReceivedBytes(),
		BytesSent:       e.GetConnectionProperties().GetSentBytes(),
		Verdict:         VerdictAllowed,
		Details:         c.GetConnectionTerminationDetails(),
		UpstreamFailure: c.GetUpstreamTransportFailureReason(),
	}
	if c.GetStartTime() != nil {
		ev.Time = c.GetStartTime().AsTime()
	}
	switch {
	case c.GetDuration() != nil:
		ev.Duration = c.GetDuration().AsDuration()
	case c.GetTimeToLastDownstreamTxByte() != nil:
		ev.Duration = c.GetTimeToLastDownstreamTxByte().AsDuration()
	}
	ev.PeerID, ev.LocalID, ev.TLSVersion = tlsOf(c)
	flags := c.GetResponseFlags()
	switch {
	case c.GetDownstreamTransportFailureReason() != "":
		ev.Verdict, ev.Reason = VerdictDenied, c.GetDownstreamTransportFailureReason()
	case strings.HasPrefix(ev.Details, rbacDeniedDetailPrefix) && strings.HasSuffix(ev.Details, "]"):
		ev.Verdict, ev.Reason = VerdictDenied, ReasonRBACDenied
		if p := strings.TrimSuffix(strings.TrimPrefix(ev.Details, rbacDeniedDetailPrefix), "]"); p != "none" {
			ev.Policy = p
		}
	case ev.Details != "":
		ev.Reason = ev.Details
	case flags.GetUpstreamConnectionFailure():
		ev.Reason = ReasonUpstreamConnectFailed
	case flags.GetNoClusterFound():
		ev.Reason = ReasonNoCluster
	}
	return ev
}

// uriSAN is the first URI SAN of a certificate's properties.
func uriSAN(p *accesslogdatav3.TLSProperties_CertificateProperties) string {
	for _, s := range p.GetSubjectAltName() {
		if u := s.GetUri(); u != "" {
			return u
		}
	}
	return ""
}

// addrPort is the IP socket address a, zero for anything else.
func addrPort(a *corev3.Address) netip.AddrPort {
	sa := a.GetSocketAddress()
	ip, err := netip.ParseAddr(sa.GetAddress())
	if err != nil {
		return netip.AddrPort{}
	}
	return netip.AddrPortFrom(ip.Unmap(), uint16(sa.GetPortValue()))
}

// tlsOf reads the TLS properties of an entry: the peer's and the proxy's
// URI SANs and the version; all "" without TLS.
func tlsOf(c *accesslogdatav3.AccessLogCommon) (peer, local, version string) {
	tp := c.GetTlsProperties()
	if tp == nil {
		return "", "", ""
	}
	switch tp.GetTlsVersion() {
	case accesslogdatav3.TLSProperties_TLSv1:
		version = "TLSv1"
	case accesslogdatav3.TLSProperties_TLSv1_1:
		version = "TLSv1.1"
	case accesslogdatav3.TLSProperties_TLSv1_2:
		version = "TLSv1.2"
	case accesslogdatav3.TLSProperties_TLSv1_3:
		version = "TLSv1.3"
	}
	return uriSAN(tp.GetPeerCertificateProperties()), uriSAN(tp.GetLocalCertificateProperties()), version
}
