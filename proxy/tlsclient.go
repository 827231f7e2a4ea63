package proxy

// Upstream TLS: a cluster's UpstreamTlsContext. The client configuration
// is built from the current secrets and rebuilt when one of them changes
// (a generation); the cluster keys its connection pools by generation as
// well as by upstream bind, so after a rotation new requests go over
// connections that present the new certificate and are verified under
// the new bundle, while requests in flight finish on the old ones (whose
// idle connections are closed).
//
// Resumption: a session cache per generation, keyed by the upstream's
// address and SNI (Envoy keeps max_session_keys, 1 by default, per
// context; a key per destination lets ORIGINAL_DST clusters resume with
// each destination node). A resumed handshake verifies the server's
// certificate of the session again.

import (
	"container/list"
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"net"
	"sync"
	"sync/atomic"
	"time"
)

// upstreamTLS is a cluster's TLS context bound to the proxy's secrets.
type upstreamTLS struct {
	p       *Proxy
	ctx     *tlsContext
	cluster string

	mu  sync.Mutex
	cur atomic.Pointer[clientTLS]
}

// clientTLS is one generation of a cluster's client configuration.
type clientTLS struct {
	gen      uint64
	certSeq  uint64
	valSeq   uint64
	cfg      *tls.Config
	sessions *sessionCache
}

// current returns the generation for the current secrets, building it if
// they changed.
func (t *upstreamTLS) current() (*clientTLS, error) {
	secrets := *t.p.secrets.Load()
	var certSeq uint64
	var cert *tls.Certificate
	if t.ctx.certSecret != "" {
		s := secrets[t.ctx.certSecret]
		if s == nil || s.cert == nil {
			return nil, fmt.Errorf("certificate secret %q has not arrived", t.ctx.certSecret)
		}
		certSeq, cert = s.seq, s.cert
	}
	vs := secrets[t.ctx.valSecret]
	if vs == nil || vs.kind != kindValidation {
		return nil, fmt.Errorf("validation context secret %q has not arrived", t.ctx.valSecret)
	}
	if c := t.cur.Load(); c != nil && c.certSeq == certSeq && c.valSeq == vs.seq {
		return c, nil
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	if c := t.cur.Load(); c != nil && c.certSeq == certSeq && c.valSeq == vs.seq {
		return c, nil
	}
	v, err := t.ctx.validatorFor(secrets, t.p.svid)
	if err != nil {
		return nil, err
	}
	cfg := &tls.Config{
		MinVersion:       t.ctx.minVersion,
		MaxVersion:       t.ctx.maxVersion,
		CurvePreferences: envoyCurves,
		CipherSuites:     envoyCipherSuites,
		NextProtos:       t.ctx.alpn,
		ServerName:       t.ctx.sni,
		// The chain is verified by VerifyConnection: SVID rules, the
		// bundle, the SAN matchers (no hostname check: SPIFFE IDs).
		InsecureSkipVerify: true, //nolint:gosec // verified in VerifyConnection
		VerifyConnection: func(cs tls.ConnectionState) error {
			_, err := v.verify(cs.PeerCertificates, time.Now())
			return err
		},
	}
	if cert != nil {
		cfg.Certificates = []tls.Certificate{*cert}
	}
	c := &clientTLS{gen: t.p.tlsGen.Add(1), certSeq: certSeq, valSeq: vs.seq, cfg: cfg, sessions: newSessionCache(sessionCacheSize)}
	t.cur.Store(c)
	return c, nil
}

// handshake runs the client side over an established connection to
// addr, within ctx, and counts it. Without alpn_protocols the client
// offers the protocol the pool speaks (Envoy's ALPN fallback: "h2" or
// "http/1.1"; tcp_proxy offers none, as Envoy's).
func (c *clientTLS) handshake(ctx context.Context, t *upstreamTLS, raw net.Conn, addr, fallbackALPN string) (*tls.Conn, error) {
	cfg := c.cfg.Clone()
	if len(cfg.NextProtos) == 0 && fallbackALPN != "" {
		cfg.NextProtos = []string{fallbackALPN}
	}
	ks := &keyedSessions{c: c.sessions, key: addr + "|" + cfg.ServerName}
	cfg.ClientSessionCache = ks
	tc := tls.Client(raw, cfg)
	err := tc.HandshakeContext(ctx)
	if err == nil {
		// TLS 1.3 tickets arrive after the handshake (Put): they
		// record this server's leaf expiry (on a resumption, the
		// original handshake's leaf).
		ks.peer = tc.ConnectionState().PeerCertificates
	}
	stats := t.p.metrics.ssl.MustCurryWith(map[string]string{"scope": "cluster", "name": t.cluster})
	if err != nil {
		stat, reason := classifyHandshakeError(err)
		stats.WithLabelValues(statConnectionError).Inc()
		if stat != "" {
			stats.WithLabelValues(stat).Inc()
		}
		t.p.metrics.sslReasons.WithLabelValues("cluster", t.cluster, reason).Inc()
		t.p.log.Warn("upstream TLS handshake failed", "cluster", t.cluster, "upstream", addr, "reason", reason, "err", err)
		return nil, &handshakeError{reason: reason, err: err}
	}
	stats.WithLabelValues(statHandshake).Inc()
	if tc.ConnectionState().DidResume {
		stats.WithLabelValues(statSessionReused).Inc()
	}
	return tc, nil
}

const sessionCacheSize = 1024

// sessionCache is an LRU of client sessions; safe for concurrent use.
type sessionCache struct {
	mu    sync.Mutex
	max   int
	m     map[string]*list.Element
	order *list.List // front: most recent
}

type sessionEntry struct {
	key string
	cs  *tls.ClientSessionState
}

func newSessionCache(max int) *sessionCache {
	return &sessionCache{max: max, m: map[string]*list.Element{}, order: list.New()}
}

func (s *sessionCache) get(key string) (*tls.ClientSessionState, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	e, ok := s.m[key]
	if !ok {
		return nil, false
	}
	s.order.MoveToFront(e)
	return e.Value.(*sessionEntry).cs, true
}

func (s *sessionCache) put(key string, cs *tls.ClientSessionState) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if e, ok := s.m[key]; ok {
		if cs == nil {
			s.order.Remove(e)
			delete(s.m, key)
			return
		}
		e.Value.(*sessionEntry).cs = cs
		s.order.MoveToFront(e)
		return
	}
	if cs == nil {
		return
	}
	s.m[key] = s.order.PushFront(&sessionEntry{key: key, cs: cs})
	if s.order.Len() > s.max {
		old := s.order.Back()
		s.order.Remove(old)
		delete(s.m, old.Value.(*sessionEntry).key)
	}
}

// keyedSessions is a connection's view of its generation's cache, under
// its own key (crypto/tls would key by SNI alone).
type keyedSessions struct {
	c    *sessionCache
	key  string
	peer []*x509.Certificate // the server's chain, once the handshake is done
}

// Get returns the cached session unless its server's certificate expires
// within resumeMargin (see resumable).
func (k *keyedSessions) Get(string) (*tls.ClientSessionState, bool) {
	cs, ok := k.c.get(k.key)
	if !ok {
		return nil, false
	}
	if _, st, err := cs.ResumptionState(); err != nil || st == nil || !resumable(st, time.Now()) {
		k.c.put(k.key, nil)
		return nil, false
	}
	return cs, true
}

// Put stores cs with the server's leaf expiry recorded in it (resumable).
func (k *keyedSessions) Put(_ string, cs *tls.ClientSessionState) {
	if cs != nil {
		ticket, st, err := cs.ResumptionState()
		if err != nil || st == nil {
			return
		}
		withPeerExpiry(st, k.peer)
		if cs, err = tls.NewResumptionState(ticket, st); err != nil {
			return
		}
	}
	k.c.put(k.key, cs)
}

// errNoTLS marks a request refused because its cluster's secrets are
// missing (the cluster cannot be active then, unless a secret was
// refused after it activated).
var errNoTLS = errors.New("upstream TLS not ready")
