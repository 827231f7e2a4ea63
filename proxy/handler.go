package proxy

import (
	"context"
	"crypto/rand"
	"crypto/tls"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptrace"
	"net/http/httputil"
	"net/netip"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	hcm "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	"golang.org/x/net/http/httpguts"
)

// Per request, in this order (Envoy's HCM pipeline for the subset the
// proxy implements): filter chain of the connection under the active
// config → header size limit → RBAC filters in order → route → cluster →
// upstream address → forward, streaming both bodies, under the stream
// idle, request and route timeouts → access log line.

const rbacDeniedBody = "RBAC: access denied"

// Response flags, as Envoy's access log names them.
const (
	flagNoRoute         = "NR"
	flagNoCluster       = "NC"
	flagRBACDenied      = "RBAC"
	flagConnectFailure  = "UF"
	flagUpstreamReset   = "UC"
	flagUpstreamTimeout = "UT"
	flagStreamIdle      = "SI"
	flagRequestTimeout  = "RT"
	flagDownstreamReset = "DR"
)

// Causes of a request's cancellation.
var (
	errStreamIdle     = errors.New("stream idle timeout")
	errRequestTimeout = errors.New("request timeout")
	errRouteTimeout   = errors.New("upstream request timeout")
)

func (lr *listenerRuntime) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	p := lr.p
	ci := r.Context().Value(connKey{}).(*connInfo)
	lc := lr.cfg.Load()
	fc := ci.chain(lc)
	if fc == nil || fc.hcm == nil {
		// The connection matched a chain of an earlier config and no
		// chain of this one: fail closed, reset.
		p.metrics.noFilterChain.WithLabelValues(lr.name).Inc()
		panic(http.ErrAbortHandler)
	}
	h := fc.hcm
	if ci.tls != nil {
		// The proxy did the handshake; the request is an https one
		// (:scheme, x-forwarded-proto).
		r.TLS = &tls.ConnectionState{Version: ci.tls.version, HandshakeComplete: true, ServerName: ci.tls.serverName, PeerCertificates: ci.tls.peer}
	}
	// One allocation for the stream and its response writer.
	st := &stream{start: time.Now(), ci: ci, h: h, h2: r.ProtoMajor == 2}
	st.rwv = respWriter{ResponseWriter: w, st: st}
	rw := &st.rwv
	st.rw = rw
	defer st.finish(lr, r)

	if headerBytes(r) > h.maxHeaderBytes {
		st.localReply(http.StatusRequestHeaderFieldsTooLarge, "", "", detailHeadersTooLarge)
		return
	}
	// Envoy refuses upgrades the HCM does not list (upgrade_failed).
	if up := upgradeType(r); up != "" && !slices.Contains(h.upgrades, up) {
		st.localReply(http.StatusForbidden, "", "", detailUpgradeFailed)
		return
	}
	attrs := requestAttrs{remote: ci.remote, local: ci.origDst, tls: ci.tls}
	for _, f := range h.rbac {
		if !f.enabled {
			continue
		}
		ok, pol := f.evaluate(r, &attrs)
		st.policy = pol
		if len(h.grpcLogs) > 0 {
			// Only the gRPC access log entries carry the metadata.
			st.rbacMetadata(f, ok, pol)
		}
		if !ok {
			st.rbac = "denied"
			p.metrics.rbac.WithLabelValues(lr.name, "denied").Inc()
			if pol == "" {
				pol = "none"
			}
			st.localReply(http.StatusForbidden, rbacDeniedBody, flagRBACDenied, "rbac_access_denied_matched_policy["+pol+"]")
			return
		}
		st.rbac = "allowed"
	}
	if st.rbac == "allowed" {
		p.metrics.rbac.WithLabelValues(lr.name, "allowed").Inc()
	}
	rt := h.inline
	if rt == nil {
		rt = (*p.routes.Load())[h.rdsName]
	}
	var re *routeEntry
	if rt != nil {
		re = rt.match(r)
	}
	if re == nil {
		st.localReply(http.StatusNotFound, "", flagNoRoute, "route_not_found")
		return
	}
	if re.direct != nil {
		st.localReply(re.direct.status, re.direct.body, "", "direct_response")
		return
	}
	u := (*p.clusters.Load())[re.cluster]
	if u == nil {
		st.localReply(re.notFoundCode, "", flagNoCluster, "cluster_not_found")
		return
	}
	st.cluster = u.name
	dst, err := u.pick(r, ci)
	if err != nil {
		st.failure = err.Error()
		st.localReply(http.StatusServiceUnavailable, "no healthy upstream", flagConnectFailure, "no_healthy_upstream")
		return
	}
	st.upstream = dst
	ctx, cancel := context.WithCancelCause(r.Context())
	defer cancel(nil)
	st.cancel = func(cause error) {
		cancel(cause)
		// A forward blocked reading the downstream body would not see
		// the cancellation (the transport waits for its body reader):
		// make that read fail now.
		if !st.reqDone.Load() {
			_ = http.NewResponseController(w).SetReadDeadline(time.Now())
		}
	}
	idle := h.streamIdle
	if re.hasIdleOverride {
		idle = re.idleTimeout
	}
	st.startTimers(idle, h.requestTimeout, re.timeout)
	defer st.stopTimers()
	// The upstream connection's local address comes from the
	// transport's trace (activityTransport used to add it per round trip).
	st.trace.GotConn = st.gotConn
	out := r.WithContext(httptrace.WithClientTrace(context.WithValue(ctx, streamKey{}, st), &st.trace))
	if r.Body != nil && r.Body != http.NoBody {
		out.Body = &activityBody{ReadCloser: r.Body, st: st, downstream: true}
	} else {
		st.requestDone()
	}
	p.reverseProxy(u).ServeHTTP(rw, out)
}

type streamKey struct{}

// stream is one request's state: timers, what the access log reports.
type stream struct {
	start  time.Time
	rw     *respWriter
	rwv    respWriter // what rw points to
	ci     *connInfo
	h      *hcmConfig
	h2     bool   // the downstream speaks HTTP/2
	rbac   string // "", allowed, denied
	policy string
	// rbacMD is the RBAC filters' dynamic metadata (namespace
	// envoy.filters.http.rbac), for the gRPC access log.
	rbacMD   map[string]string
	cluster  string
	upstream netip.AddrPort
	// upstreamLocal is the upstream connection's local address (set from
	// the transport's trace, which may run on another goroutine).
	upstreamLocal atomic.Pointer[netip.AddrPort]
	flags         string
	details       string // Envoy's response_code_details
	failure       string // why the upstream connection failed
	reqBodyBytes  atomic.Int64

	cancel       context.CancelCauseFunc
	idle         time.Duration
	lastActivity atomic.Int64
	idleT        *time.Timer
	reqT         *time.Timer
	routeT       atomic.Pointer[time.Timer]
	routeTimeout time.Duration
	reqDone      atomic.Bool
	trace        httptrace.ClientTrace
}

func (st *stream) gotConn(ci httptrace.GotConnInfo) {
	a := unmap(ci.Conn.LocalAddr())
	st.upstreamLocal.Store(&a)
}

func (st *stream) startTimers(idle, request, route time.Duration) {
	st.idle, st.routeTimeout = idle, route
	st.touch()
	if idle > 0 {
		st.idleT = time.AfterFunc(idle, st.idleCheck)
	}
	if request > 0 {
		st.reqT = time.AfterFunc(request, func() { st.cancel(errRequestTimeout) })
	}
}

func (st *stream) touch() { st.lastActivity.Store(time.Now().UnixNano()) }

// idleCheck fires after idle without a reset; activity only records a
// time, and the timer re-arms itself for the rest.
func (st *stream) idleCheck() {
	since := time.Duration(time.Now().UnixNano() - st.lastActivity.Load())
	if since >= st.idle {
		st.cancel(errStreamIdle)
		return
	}
	st.idleT.Reset(st.idle - since)
}

// requestDone: the downstream request is complete; the route timeout
// (until the upstream response is complete) starts.
func (st *stream) requestDone() {
	if st.reqDone.Swap(true) {
		return
	}
	if st.reqT != nil {
		st.reqT.Stop()
	}
	if st.routeTimeout > 0 && st.cancel != nil {
		st.routeT.Store(time.AfterFunc(st.routeTimeout, func() { st.cancel(errRouteTimeout) }))
	}
}

func (st *stream) stopTimers() {
	for _, t := range []*time.Timer{st.idleT, st.reqT, st.routeT.Load()} {
		if t != nil {
			t.Stop()
		}
	}
}

// serverHeader applies server_header_transformation to a response.
func (st *stream) serverHeader(h http.Header) {
	switch st.h.serverHeader {
	case hcm.HttpConnectionManager_OVERWRITE:
		h.Set("Server", st.h.serverName)
	case hcm.HttpConnectionManager_APPEND_IF_ABSENT:
		if h.Get("Server") == "" {
			h.Set("Server", st.h.serverName)
		}
	}
}

// localReply answers from the proxy itself, keeping the connection;
// details is Envoy's response_code_details for the cause.
func (st *stream) localReply(code int, body, flag, details string) {
	if flag != "" {
		st.flags = flag
	}
	st.details = details
	hd := st.rw.Header()
	if body != "" {
		hd.Set("Content-Type", "text/plain")
	}
	hd.Set("Content-Length", strconv.Itoa(len(body)))
	st.rw.WriteHeader(code)
	_, _ = io.WriteString(st.rw, body)
}

// Envoy's response_code_details of local replies the proxy makes for the
// same causes (Envoy's codec names the header limit per protocol).
const (
	detailHeadersTooLarge = "request_headers_too_large"
	detailUpgradeFailed   = "upgrade_failed"
)

// rbacMetadata records an RBAC filter's result as Envoy's filter does in
// its dynamic metadata: the engine result and, when a policy matched, its
// name, under keys prefixed with the filter's rules_stat_prefix (a later
// filter overwrites an earlier one's keys, as metadata merges).
func (st *stream) rbacMetadata(f *rbacFilter, allowed bool, policy string) {
	if st.rbacMD == nil {
		st.rbacMD = map[string]string{}
	}
	result := "denied"
	if allowed {
		result = "allowed"
	}
	st.rbacMD[f.statPrefix+"enforced_engine_result"] = result
	if policy != "" {
		st.rbacMD[f.statPrefix+"enforced_effective_policy_id"] = policy
	}
}

func (st *stream) finish(lr *listenerRuntime, r *http.Request) {
	code := st.rw.status
	if rec := recover(); rec != nil {
		if st.flags == "" {
			st.flags = flagDownstreamReset
		}
		lr.p.metrics.requests.WithLabelValues(lr.name, "reset").Inc()
		st.log(lr, r, 0)
		panic(rec)
	}
	if code == 0 {
		code = http.StatusOK
	}
	lr.p.metrics.requests.WithLabelValues(lr.name, strconv.Itoa(code)).Inc()
	st.log(lr, r, code)
}

// upgradeType is the lower-case protocol an HTTP/1.1 request asks to
// upgrade to, "" if none.
func upgradeType(r *http.Request) string {
	if r.ProtoMajor != 1 || !httpguts.HeaderValuesContainsToken(r.Header["Connection"], "upgrade") {
		return ""
	}
	return strings.ToLower(r.Header.Get("Upgrade"))
}

// headerBytes approximates Envoy's header map size: names and values,
// pseudo-headers included.
func headerBytes(r *http.Request) int {
	n := len(":method") + len(r.Method) + len(":path") + len(r.RequestURI) + len(":authority") + len(r.Host)
	for k, vs := range r.Header {
		for _, v := range vs {
			n += len(k) + len(v)
		}
	}
	return n
}

// respWriter records the status and bytes and counts writes as stream
// activity.
type respWriter struct {
	http.ResponseWriter
	st     *stream
	status int
	bytes  int64
}

func (w *respWriter) WriteHeader(code int) {
	if w.status == 0 && (code >= 200 || code == http.StatusSwitchingProtocols) {
		w.status = code
		if w.st != nil {
			w.st.serverHeader(w.Header())
		}
	}
	w.ResponseWriter.WriteHeader(code)
}

func (w *respWriter) Write(b []byte) (int, error) {
	if w.status == 0 {
		w.WriteHeader(http.StatusOK)
	}
	n, err := w.ResponseWriter.Write(b)
	w.bytes += int64(n)
	if w.st != nil {
		w.st.touch()
	}
	return n, err
}

func (w *respWriter) Flush() { _ = http.NewResponseController(w.ResponseWriter).Flush() }

func (w *respWriter) Unwrap() http.ResponseWriter { return w.ResponseWriter }

// activityBody counts reads as stream activity; the end of the downstream
// body completes the request.
type activityBody struct {
	io.ReadCloser
	st         *stream
	downstream bool
}

func (b *activityBody) Read(p []byte) (int, error) {
	n, err := b.ReadCloser.Read(p)
	b.st.touch()
	if b.downstream {
		b.st.reqBodyBytes.Add(int64(n))
	}
	if err == io.EOF && b.downstream {
		b.st.requestDone()
	}
	return n, err
}

// reverseProxy returns the cluster's forwarder, built on first use.
func (p *Proxy) reverseProxy(u *upstreamCluster) *httputil.ReverseProxy {
	u.proxyOnce.Do(func() {
		u.proxy = &httputil.ReverseProxy{
			Rewrite:   rewrite,
			Transport: &activityTransport{u: u},
			// The default (0) flushes at once what streams (no Content-Length,
			// text/event-stream, gRPC) and sends a sized answer whole: -1
			// flushed the headers apart, one more write per response.
			FlushInterval: 0,
			ErrorHandler:  func(w http.ResponseWriter, r *http.Request, err error) { p.upstreamError(u, w, r, err) },
			ErrorLog:      p.discardLog,
			BufferPool:    copyBuffers,
		}
	})
	return u.proxy
}

func rewrite(pr *httputil.ProxyRequest) {
	st := pr.In.Context().Value(streamKey{}).(*stream)
	pr.Out.URL.Scheme = "http"
	pr.Out.URL.Host = st.upstream.String()
	pr.Out.Host = pr.In.Host
	// ReverseProxy drops X-Forwarded-* in Rewrite mode; Envoy passes them
	// on and appends to X-Forwarded-For only with use_remote_address.
	for _, k := range []string{"X-Forwarded-For", "X-Forwarded-Host", "X-Forwarded-Proto"} {
		if v, ok := pr.In.Header[k]; ok {
			pr.Out.Header[k] = v
		}
	}
	scheme := "http"
	if st.ci.tls != nil {
		scheme = "https"
	}
	if st.h.useRemoteAddress {
		ip := st.ci.remote.Addr().String()
		if prior := pr.Out.Header.Get("X-Forwarded-For"); prior != "" {
			ip = prior + ", " + ip
		}
		pr.Out.Header.Set("X-Forwarded-For", ip)
		// No trusted hops: the peer's x-forwarded-proto is not trusted.
		pr.Out.Header.Set("X-Forwarded-Proto", scheme)
	}
	if pr.Out.Header.Get("X-Forwarded-Proto") == "" {
		pr.Out.Header.Set("X-Forwarded-Proto", scheme)
	}
	// forward_client_cert_details defaults to SANITIZE: Envoy never
	// passes a client's x-forwarded-client-cert on.
	pr.Out.Header.Del("X-Forwarded-Client-Cert")
	if st.h.generateRequestID && pr.Out.Header.Get("X-Request-Id") == "" {
		pr.Out.Header.Set("X-Request-Id", newRequestID())
	}
}

// activityTransport counts upstream body reads as stream activity.
type activityTransport struct{ u *upstreamCluster }

func (t *activityTransport) RoundTrip(r *http.Request) (*http.Response, error) {
	st := r.Context().Value(streamKey{}).(*stream)
	tr, err := t.u.transportFor(st.h2, st.ci.bind)
	if err != nil {
		return nil, &connectError{fmt.Errorf("%w: %v", errNoTLS, err)}
	}
	resp, err := tr.RoundTrip(r)
	if err == nil {
		st.touch()
		st.details = "via_upstream"
		// A 101's body is the upgraded connection (an io.ReadWriteCloser
		// ReverseProxy splices): leave it as it is.
		// The splice is not watched for activity, so the stream
		// timers stop (it ends when either side closes).
		if resp.StatusCode != http.StatusSwitchingProtocols {
			resp.Body = &activityBody{ReadCloser: resp.Body, st: st}
		} else {
			st.stopTimers()
		}
	}
	return resp, err
}

// upstreamError answers a failed forward as Envoy does: 408 for stream and
// request timeouts, 504 for the route timeout, 503 for connect failures
// and resets; after the response started, the stream is reset.
func (p *Proxy) upstreamError(u *upstreamCluster, w http.ResponseWriter, r *http.Request, err error) {
	st := r.Context().Value(streamKey{}).(*stream)
	cause := context.Cause(r.Context())
	var ce *connectError
	if errors.As(err, &ce) {
		p.metrics.connectFailures.WithLabelValues(u.name).Inc()
		st.failure = ce.Error()
		var he *handshakeError
		if errors.As(err, &he) {
			// Envoy's upstream_transport_failure_reason for TLS.
			st.failure = "TLS_error: " + he.Error()
		}
	}
	if st.rw.status != 0 {
		panic(http.ErrAbortHandler)
	}
	switch {
	case errors.Is(cause, errStreamIdle), errors.Is(cause, errRequestTimeout):
		// The request body may be incomplete: close after the reply
		// instead of waiting for the rest (net/http would drain it).
		if !st.reqDone.Load() {
			st.rw.Header().Set("Connection", "close")
		}
		if errors.Is(cause, errRequestTimeout) {
			st.localReply(http.StatusRequestTimeout, "request timeout", flagRequestTimeout, "request_overall_timeout")
			return
		}
		st.localReply(http.StatusRequestTimeout, "stream timeout", flagStreamIdle, "stream_idle_timeout")
	case errors.Is(cause, errRouteTimeout):
		st.localReply(http.StatusGatewayTimeout, "upstream request timeout", flagUpstreamTimeout, "response_timeout")
	case ce != nil:
		st.localReply(http.StatusServiceUnavailable, "upstream connect error or disconnect/reset before headers. reset reason: connection failure", flagConnectFailure,
			"upstream_reset_before_response_started{connection_failure}")
	case r.Context().Err() != nil && cause == r.Context().Err():
		// The client went away.
		st.flags = flagDownstreamReset
		panic(http.ErrAbortHandler)
	default:
		st.localReply(http.StatusServiceUnavailable, "upstream connect error or disconnect/reset before headers. reset reason: connection termination", flagUpstreamReset,
			"upstream_reset_before_response_started{connection_termination}")
	}
}

// newRequestID is a random (version 4) UUID, as Envoy's x-request-id.
func newRequestID() string {
	var b [16]byte
	_, _ = rand.Read(b[:])
	b[6] = b[6]&0x0f | 0x40
	b[8] = b[8]&0x3f | 0x80
	var out [36]byte
	hex.Encode(out[0:8], b[0:4])
	out[8] = '-'
	hex.Encode(out[9:13], b[4:6])
	out[13] = '-'
	hex.Encode(out[14:18], b[6:8])
	out[18] = '-'
	hex.Encode(out[19:23], b[8:10])
	out[23] = '-'
	hex.Encode(out[24:36], b[10:16])
	return string(out[:])
}

// copyBuffers lends ReverseProxy its copy buffers (32 KiB, its default
// size) instead of allocating one per request.
var copyBuffers httputil.BufferPool = &bufferPool{}

type bufferPool struct{ p sync.Pool }

func (b *bufferPool) Get() []byte {
	if v, ok := b.p.Get().(*[]byte); ok {
		return *v
	}
	return make([]byte, 32*1024)
}

func (b *bufferPool) Put(buf []byte) {
	if cap(buf) != 32*1024 {
		return
	}
	buf = buf[:cap(buf)]
	b.p.Put(&buf)
}
