package proxy

// The envoy.filters.listener.tls_inspector listener filter: it reads a
// connection's first bytes without consuming them and, when they are a
// TLS ClientHello, sets the connection's transport protocol to "tls" and
// its requested server name and application protocols (ALPN) for filter
// chain selection; otherwise the transport protocol stays "raw_buffer"
// (Envoy's default when no listener filter detected one). A client that
// sends nothing within the listener filters' timeout (Envoy's default
// listener_filters_timeout, 15 s) is disconnected, as Envoy does without
// continue_on_listener_filters_timeout.
//
// The ClientHello is parsed by crypto/tls itself: a server handshake on a
// connection that records what it reads and drops what it writes stops at
// GetConfigForClient. The recorded bytes are then replayed to the chosen
// filter chain (the real handshake, or the HTTP server).

import (
	"bytes"
	"crypto/tls"
	"errors"
	"net"
	"slices"
	"time"
)

const (
	listenerTLSInspector   = "envoy.filters.listener.tls_inspector"
	listenerFiltersTimeout = 15 * time.Second
	// tlsRecordHandshake is the first byte of a TLS record carrying a
	// handshake message (RFC 8446, 5.1).
	tlsRecordHandshake = 0x16
)

// helloInfo is what the listener filters learned about a connection.
type helloInfo struct {
	transport string   // "tls" or "raw_buffer"
	sni       string   // requested server name
	alpn      []string // the client's application protocols, in its order
}

var errHelloSeen = errors.New("client hello seen")

// inspectTLS detects a TLS ClientHello at the start of c. It returns the
// findings and a connection that replays the bytes read. An error means
// the connection ended or timed out before the inspector could decide.
func inspectTLS(c net.Conn, timeout time.Duration) (helloInfo, net.Conn, error) {
	h := helloInfo{transport: transportRawBytes}
	_ = c.SetReadDeadline(time.Now().Add(timeout))
	defer func() { _ = c.SetReadDeadline(time.Time{}) }()
	first := make([]byte, 1)
	if _, err := c.Read(first); err != nil {
		return h, nil, err
	}
	if first[0] != tlsRecordHandshake {
		// No TLS record starts otherwise: decided on the first byte.
		return h, &replayConn{Conn: c, prefix: first}, nil
	}
	rec := &recordingConn{Conn: c}
	rec.buf.Write(first)
	rec.prefix = first
	srv := tls.Server(rec, &tls.Config{GetConfigForClient: func(chi *tls.ClientHelloInfo) (*tls.Config, error) {
		h = helloInfo{transport: transportTLS, sni: chi.ServerName, alpn: slices.Clone(chi.SupportedProtos)}
		return nil, errHelloSeen
	}})
	err := srv.Handshake()
	replay := &replayConn{Conn: c, prefix: rec.buf.Bytes()}
	if h.transport == transportTLS {
		return h, replay, nil
	}
	if rec.readErr != nil {
		// The connection ended or timed out mid-ClientHello.
		return h, nil, rec.readErr
	}
	// Not a ClientHello crypto/tls can parse: not TLS, as for Envoy's
	// inspector.
	_ = err
	return h, replay, nil
}

// recordingConn feeds the inspector's handshake: reads come from prefix,
// then from the connection, and are recorded; writes (alerts) are dropped.
type recordingConn struct {
	net.Conn
	prefix  []byte
	buf     bytes.Buffer
	readErr error
}

func (r *recordingConn) Read(p []byte) (int, error) {
	if len(r.prefix) > 0 {
		n := copy(p, r.prefix)
		r.prefix = r.prefix[n:]
		return n, nil
	}
	n, err := r.Conn.Read(p)
	r.buf.Write(p[:n])
	if err != nil && r.readErr == nil {
		r.readErr = err
	}
	return n, err
}

func (r *recordingConn) Write(p []byte) (int, error) { return len(p), nil }

func (r *recordingConn) Close() error { return nil }

// replayConn returns prefix before reading from the connection.
type replayConn struct {
	net.Conn
	prefix []byte
}

func (r *replayConn) Read(p []byte) (int, error) {
	if len(r.prefix) > 0 {
		n := copy(p, r.prefix)
		r.prefix = r.prefix[n:]
		return n, nil
	}
	return r.Conn.Read(p)
}
