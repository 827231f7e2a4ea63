package proxy

// Downstream TLS: the handshake of a connection whose filter chain has a
// DownstreamTlsContext. Per handshake the certificate and the validation
// context are read from the current secrets (GetCertificate,
// VerifyConnection), so a rotation applies to the next handshake.
//
// Client certificates: with a validation context the server asks for one;
// it must be presented when require_client_certificate is set, or (Envoy's
// verify modes) with the SPIFFE validator or SAN matchers; a presented
// one is always verified (SVIDVerifier, then the URI SAN matchers).
//
// Resumption: stateless tickets, as Envoy without session_ticket_keys.
// Each filter chain's tickets are sealed with keys derived from a random
// secret of the process and the chain's identity (listener, chain,
// certificate secret), so a session resumes only into the chain that
// issued it (Envoy hashes the same into its session ID context), and
// across listener updates that keep that identity. A resumed handshake
// verifies the client certificate of the session again, under the
// current validation context.

import (
	"crypto/hmac"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"net"
	"os"
	"slices"
	"strings"
	"time"

	accesslogdata "github.com/envoyproxy/go-control-plane/envoy/data/accesslog/v3"
	"google.golang.org/protobuf/types/known/wrapperspb"
)

// downstreamTLS is a filter chain's TLS context bound to the proxy (its
// secrets, statistics and ticket keys).
type downstreamTLS struct {
	p        *Proxy
	ctx      *tlsContext
	listener string
	outer    *tls.Config
	// byALPN holds one configuration per protocol the server may select
	// ("" when none), all with the chain's ticket keys.
	byALPN map[string]*tls.Config
}

func (p *Proxy) newDownstreamTLS(listenerName, chainName string, tc *tlsContext) *downstreamTLS {
	d := &downstreamTLS{p: p, ctx: tc, listener: listenerName, byALPN: map[string]*tls.Config{}}
	mac := hmac.New(sha256.New, p.ticketSecret[:])
	fmt.Fprintf(mac, "%q %q %q", listenerName, chainName, tc.certSecret)
	var key [32]byte
	mac.Sum(key[:0])
	base := &tls.Config{
		MinVersion:       tc.minVersion,
		MaxVersion:       tc.maxVersion,
		CurvePreferences: envoyCurves,
		CipherSuites:     envoyCipherSuites,
		GetCertificate:   d.certificate,
		VerifyConnection: d.verifyConnection,
	}
	if tc.valSecret != "" {
		// Asked for; whether it must be there is decided per handshake
		// (the validation secret may change the verify mode).
		base.ClientAuth = tls.RequestClientCert
	}
	for _, proto := range append(slices.Clone(tc.alpn), "") {
		c := base.Clone()
		if proto != "" {
			c.NextProtos = []string{proto}
		}
		c.SetSessionTicketKeys([][32]byte{key})
		// A ticket whose client certificate expires soon is ignored: the
		// client then presents its current one (resumable).
		c.WrapSession = func(cs tls.ConnectionState, st *tls.SessionState) ([]byte, error) {
			withPeerExpiry(st, cs.PeerCertificates)
			return c.EncryptTicket(cs, st)
		}
		c.UnwrapSession = func(identity []byte, cs tls.ConnectionState) (*tls.SessionState, error) {
			st, err := c.DecryptTicket(identity, cs)
			if err != nil || st == nil || !resumable(st, time.Now()) {
				return nil, nil
			}
			return st, nil
		}
		d.byALPN[proto] = c
	}
	d.outer = &tls.Config{GetConfigForClient: d.configFor}
	return d
}

// configFor selects the application protocol as Envoy does (the first of
// the server's alpn_protocols the client offers; none in common: no ALPN,
// the handshake goes on).
func (d *downstreamTLS) configFor(hello *tls.ClientHelloInfo) (*tls.Config, error) {
	for _, s := range d.ctx.alpn {
		if slices.Contains(hello.SupportedProtos, s) {
			return d.byALPN[s], nil
		}
	}
	return d.byALPN[""], nil
}

func (d *downstreamTLS) certificate(*tls.ClientHelloInfo) (*tls.Certificate, error) {
	s := (*d.p.secrets.Load())[d.ctx.certSecret]
	if s == nil || s.cert == nil {
		return nil, &verifyError{reason: reasonNoSecret, err: fmt.Errorf("certificate secret %q has not arrived", d.ctx.certSecret)}
	}
	return s.cert, nil
}

func (d *downstreamTLS) verifyConnection(cs tls.ConnectionState) error {
	_, err := d.verifyPeer(cs.PeerCertificates)
	return err
}

// verifyPeer checks a client's chain under the current validation
// context; it returns the SPIFFE ID ("" when the chain need not be there
// and is not).
func (d *downstreamTLS) verifyPeer(chain []*x509.Certificate) (string, error) {
	if d.ctx.valSecret == "" {
		return "", nil
	}
	v, err := d.ctx.validatorFor(*d.p.secrets.Load(), d.p.svid)
	if err != nil {
		return "", &verifyError{stat: statFailVerifyError, reason: reasonNoSecret, err: err}
	}
	if len(chain) == 0 && !d.ctx.requireClientCert && !v.requireCert {
		return "", nil
	}
	return v.verify(chain, time.Now())
}

// handshake runs the server side of a connection's TLS handshake, bounded
// by timeout (0: none), and counts it.
func (d *downstreamTLS) handshake(c net.Conn, timeout time.Duration) (*tls.Conn, error) {
	tc := tls.Server(c, d.outer)
	if timeout > 0 {
		_ = c.SetDeadline(time.Now().Add(timeout))
	}
	err := tc.Handshake()
	_ = c.SetDeadline(time.Time{})
	stats := d.p.metrics.ssl.MustCurryWith(map[string]string{"scope": "listener", "name": d.listener})
	if err != nil {
		stat, reason := classifyHandshakeError(err)
		stats.WithLabelValues(statConnectionError).Inc()
		if stat != "" {
			stats.WithLabelValues(stat).Inc()
		}
		d.p.metrics.sslReasons.WithLabelValues("listener", d.listener, reason).Inc()
		return nil, &handshakeError{reason: reason, err: err}
	}
	cs := tc.ConnectionState()
	stats.WithLabelValues(statHandshake).Inc()
	if cs.DidResume {
		stats.WithLabelValues(statSessionReused).Inc()
	}
	if len(cs.PeerCertificates) == 0 {
		stats.WithLabelValues(statNoCertificate).Inc()
	}
	return tc, nil
}

// handshakeError is a failed handshake and its reason.
type handshakeError struct {
	reason string
	err    error
}

func (e *handshakeError) Error() string { return "TLS handshake: " + e.err.Error() }

func (e *handshakeError) Unwrap() error { return e.err }

// classifyHandshakeError names the Envoy statistic (besides
// connection_error) and the reason of a failed handshake.
func classifyHandshakeError(err error) (stat, reason string) {
	var ve *verifyError
	var ae tls.AlertError
	var rh tls.RecordHeaderError
	switch {
	case errors.As(err, &ve):
		return ve.stat, ve.reason
	case errors.Is(err, os.ErrDeadlineExceeded):
		return "", reasonTimeout
	case errors.As(err, &rh):
		return "", reasonNotTLS
	case errors.As(err, &ae) || strings.Contains(err.Error(), "remote error"):
		return "", reasonPeerRefused
	case strings.Contains(err.Error(), "protocol version"):
		return "", reasonVersion
	}
	return "", reasonHandshakeErr
}

// tlsInfo is what a TLS connection's requests know of it: the peer's
// identity for RBAC (authenticated), and the access log's TLS properties.
type tlsInfo struct {
	ctx        *tlsContext // the chain's context the handshake ran under
	peer       []*x509.Certificate
	peerURIs   []string
	peerDNS    []string
	peerSubj   string
	spiffeID   string
	version    uint16
	logProps   *accesslogdata.TLSProperties // shared by the entries of the connection's requests: read-only
	serverName string
}

func newTLSInfo(cs tls.ConnectionState, ctx *tlsContext, local *tls.Certificate) *tlsInfo {
	ti := &tlsInfo{ctx: ctx, peer: cs.PeerCertificates, version: cs.Version, serverName: cs.ServerName}
	props := &accesslogdata.TLSProperties{
		TlsVersion:     tlsVersionProto(cs.Version),
		TlsCipherSuite: wrapperspb.UInt32(uint32(cs.CipherSuite)),
		TlsSniHostname: cs.ServerName,
	}
	if local != nil && local.Leaf != nil {
		lp := &accesslogdata.TLSProperties_CertificateProperties{Subject: local.Leaf.Subject.String()}
		for _, u := range local.Leaf.URIs {
			lp.SubjectAltName = append(lp.SubjectAltName, &accesslogdata.TLSProperties_CertificateProperties_SubjectAltName{
				San: &accesslogdata.TLSProperties_CertificateProperties_SubjectAltName_Uri{Uri: u.String()}})
		}
		props.LocalCertificateProperties = lp
	}
	if len(cs.PeerCertificates) > 0 {
		leaf := cs.PeerCertificates[0]
		for _, u := range leaf.URIs {
			ti.peerURIs = append(ti.peerURIs, u.String())
		}
		ti.peerDNS = leaf.DNSNames
		ti.peerSubj = leaf.Subject.String()
		if len(ti.peerURIs) == 1 {
			ti.spiffeID = ti.peerURIs[0]
		}
		pp := &accesslogdata.TLSProperties_CertificateProperties{Subject: ti.peerSubj}
		for _, u := range ti.peerURIs {
			pp.SubjectAltName = append(pp.SubjectAltName, &accesslogdata.TLSProperties_CertificateProperties_SubjectAltName{
				San: &accesslogdata.TLSProperties_CertificateProperties_SubjectAltName_Uri{Uri: u}})
		}
		props.PeerCertificateProperties = pp
	}
	ti.logProps = props
	return ti
}

func tlsVersionProto(v uint16) accesslogdata.TLSProperties_TLSVersion {
	switch v {
	case tls.VersionTLS10:
		return accesslogdata.TLSProperties_TLSv1
	case tls.VersionTLS11:
		return accesslogdata.TLSProperties_TLSv1_1
	case tls.VersionTLS12:
		return accesslogdata.TLSProperties_TLSv1_2
	case tls.VersionTLS13:
		return accesslogdata.TLSProperties_TLSv1_3
	}
	return accesslogdata.TLSProperties_VERSION_UNSPECIFIED
}

// tlsVersionName is Envoy's %DOWNSTREAM_TLS_VERSION%.
func tlsVersionName(v uint16) string {
	switch v {
	case tls.VersionTLS12:
		return "TLSv1.2"
	case tls.VersionTLS13:
		return "TLSv1.3"
	}
	return tls.VersionName(v)
}
