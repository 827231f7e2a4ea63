package proxy

import (
	"encoding/json"
	"io"
	"net/http"
	"net/netip"
	"strings"
	"sync"
	"time"

	core "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	accesslogdata "github.com/envoyproxy/go-control-plane/envoy/data/accesslog/v3"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/structpb"
	"google.golang.org/protobuf/types/known/timestamppb"
	"google.golang.org/protobuf/types/known/wrapperspb"
)

// accessEntry is one access log line (JSON).
type accessEntry struct {
	Time          string  `json:"time"`
	Listener      string  `json:"listener"`
	Downstream    string  `json:"downstream_remote"`
	OrigDst       string  `json:"original_dst"`
	Method        string  `json:"method"`
	Path          string  `json:"path"`
	Protocol      string  `json:"protocol"`
	Status        int     `json:"status"` // 0: the stream was reset
	Details       string  `json:"response_code_details,omitempty"`
	RBAC          string  `json:"rbac"` // allowed, denied, none
	Policy        string  `json:"policy,omitempty"`
	Flags         string  `json:"response_flags,omitempty"`
	Cluster       string  `json:"cluster,omitempty"`
	Upstream      string  `json:"upstream,omitempty"`
	UpstreamLocal string  `json:"upstream_local,omitempty"`
	Failure       string  `json:"upstream_failure,omitempty"` // e.g. connect: connection refused
	PeerURISAN    string  `json:"downstream_peer_uri_san,omitempty"`
	TLSVersion    string  `json:"downstream_tls_version,omitempty"`
	BytesSent     int64   `json:"bytes_sent"`
	DurationMS    float64 `json:"duration_ms"`
}

// accessLogger writes whole lines, one Write per line: an accessEntry
// per request, a tcpAccessEntry per tcp_proxy connection.
type accessLogger struct {
	mu sync.Mutex
	w  io.Writer
}

func (l *accessLogger) write(e any) {
	b, err := json.Marshal(e)
	if err != nil {
		return
	}
	b = append(b, '\n')
	l.mu.Lock()
	defer l.mu.Unlock()
	_, _ = l.w.Write(b)
}

// log writes the request's entry to the HCM's access logs: the stdout
// line, and an HTTPAccessLogEntry for each gRPC access log (queued, never
// waited for).
func (st *stream) log(lr *listenerRuntime, r *http.Request, code int) {
	if !st.h.accessLog && len(st.h.grpcLogs) == 0 {
		return
	}
	dur := time.Since(st.start)
	var upLocal netip.AddrPort
	if a := st.upstreamLocal.Load(); a != nil {
		upLocal = *a
	}
	if st.h.accessLog {
		e := accessEntry{
			Time:       st.start.UTC().Format(time.RFC3339Nano),
			Listener:   lr.name,
			Downstream: st.ci.remote.String(),
			OrigDst:    st.ci.origDst.String(),
			Method:     r.Method,
			Path:       r.URL.RequestURI(),
			Protocol:   r.Proto,
			Status:     code,
			Details:    st.details,
			RBAC:       st.rbac,
			Policy:     st.policy,
			Flags:      st.flags,
			Cluster:    st.cluster,
			Failure:    st.failure,
			BytesSent:  st.rw.bytes,
			DurationMS: float64(dur.Microseconds()) / 1000,
		}
		if e.RBAC == "" {
			e.RBAC = "none"
		}
		if t := st.ci.tls; t != nil {
			e.PeerURISAN = strings.Join(t.peerURIs, ",")
			e.TLSVersion = tlsVersionName(t.version)
		}
		if st.upstream.IsValid() {
			e.Upstream = st.upstream.String()
		}
		if upLocal.IsValid() {
			e.UpstreamLocal = upLocal.String()
		}
		lr.p.access.write(&e)
	}
	if len(st.h.grpcLogs) > 0 {
		e := st.httpEntry(r, code, dur, upLocal)
		for _, g := range st.h.grpcLogs {
			g.logger.enqueue(e)
		}
	}
}

// httpEntry fills an HTTPAccessLogEntry as Envoy's http_grpc logger does
// for the fields the proxy knows: addresses, timing, request and response
// properties, response flags and the RBAC filters' dynamic metadata.
// Several loggers share it: it is not modified after.
func (st *stream) httpEntry(r *http.Request, code int, dur time.Duration, upLocal netip.AddrPort) *accesslogdata.HTTPAccessLogEntry {
	c := &accesslogdata.AccessLogCommon{
		DownstreamRemoteAddress:        coreAddress(st.ci.remote),
		DownstreamDirectRemoteAddress:  coreAddress(st.ci.remote),
		DownstreamLocalAddress:         coreAddress(st.ci.origDst),
		StartTime:                      timestamppb.New(st.start),
		Duration:                       durationpb.New(dur),
		TimeToLastDownstreamTxByte:     durationpb.New(dur),
		UpstreamCluster:                st.cluster,
		UpstreamTransportFailureReason: st.failure,
		ResponseFlags:                  responseFlags(st.flags),
		AccessLogType:                  accesslogdata.AccessLogType_DownstreamEnd,
	}
	if st.upstream.IsValid() {
		c.UpstreamRemoteAddress = coreAddress(st.upstream)
		c.UpstreamRequestAttemptCount = 1
	}
	if upLocal.IsValid() {
		c.UpstreamLocalAddress = coreAddress(upLocal)
	}
	if st.ci.tls != nil {
		c.TlsProperties = st.ci.tls.logProps
	}
	if len(st.rbacMD) > 0 {
		fields := make(map[string]*structpb.Value, len(st.rbacMD))
		for k, v := range st.rbacMD {
			fields[k] = structpb.NewStringValue(v)
		}
		c.Metadata = &core.Metadata{FilterMetadata: map[string]*structpb.Struct{filterRBAC: {Fields: fields}}}
	}
	e := &accesslogdata.HTTPAccessLogEntry{
		CommonProperties: c,
		Request: &accesslogdata.HTTPRequestProperties{
			RequestMethod:       core.RequestMethod(core.RequestMethod_value[r.Method]),
			Scheme:              scheme(r),
			Authority:           r.Host,
			Path:                r.RequestURI,
			UserAgent:           r.Header.Get("User-Agent"),
			Referer:             r.Header.Get("Referer"),
			ForwardedFor:        r.Header.Get("X-Forwarded-For"),
			RequestId:           r.Header.Get("X-Request-Id"),
			RequestHeadersBytes: uint64(headerBytes(r)),
			RequestBodyBytes:    uint64(st.reqBodyBytes.Load()),
		},
		Response: &accesslogdata.HTTPResponseProperties{
			ResponseCodeDetails: st.details,
			ResponseBodyBytes:   uint64(st.rw.bytes),
		},
	}
	switch {
	case r.ProtoMajor == 2:
		e.ProtocolVersion = accesslogdata.HTTPAccessLogEntry_HTTP2
	case r.ProtoMajor == 1 && r.ProtoMinor == 0:
		e.ProtocolVersion = accesslogdata.HTTPAccessLogEntry_HTTP10
	case r.ProtoMajor == 1:
		e.ProtocolVersion = accesslogdata.HTTPAccessLogEntry_HTTP11
	}
	if code != 0 {
		e.Response.ResponseCode = wrapperspb.UInt32(uint32(code))
	}
	if e.Request.Path == "" {
		e.Request.Path = r.URL.RequestURI()
	}
	return e
}

func scheme(r *http.Request) string {
	if r.TLS != nil {
		return "https"
	}
	return "http"
}

func coreAddress(ap netip.AddrPort) *core.Address {
	if !ap.IsValid() {
		return nil
	}
	return &core.Address{Address: &core.Address_SocketAddress{SocketAddress: &core.SocketAddress{
		Address: ap.Addr().String(), PortSpecifier: &core.SocketAddress_PortValue{PortValue: uint32(ap.Port())}}}}
}

// responseFlags maps the proxy's flag (Envoy's short name) to the access
// log's; RBAC denials have none there (response_code_details and the
// metadata tell them).
func responseFlags(flag string) *accesslogdata.ResponseFlags {
	f := &accesslogdata.ResponseFlags{}
	switch flag {
	case flagNoRoute:
		f.NoRouteFound = true
	case flagNoCluster:
		f.NoClusterFound = true
	case flagConnectFailure:
		f.UpstreamConnectionFailure = true
	case flagUpstreamReset:
		f.UpstreamConnectionTermination = true
	case flagUpstreamTimeout:
		f.UpstreamRequestTimeout = true
	case flagStreamIdle:
		f.StreamIdleTimeout = true
	case flagDownstreamReset:
		f.DownstreamConnectionTermination = true
	default:
		return nil
	}
	return f
}
