package proxy

// TLS transport sockets, compiled: envoy.transport_sockets.tls with a
// DownstreamTlsContext (listener filter chains) or an UpstreamTlsContext
// (clusters), whose certificate and validation context come over SDS
// (secret.go). A compiled context names its secrets; the handshakes look
// them up (tlsserver.go, tlsclient.go), so a secret update applies to the
// next handshake without touching listeners or clusters.

import (
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	core "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	tlsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/tls/v3"
	"google.golang.org/protobuf/proto"
)

const (
	transportSocketTLS = "envoy.transport_sockets.tls"
	certValidatorSPIFE = "envoy.tls.cert_validator.spiffe"
	transportTLS       = "tls"
)

// Envoy's defaults (ServerContextConfigImpl, ClientContextConfigImpl):
// servers speak TLS 1.2 to 1.3, clients only 1.2 unless told otherwise;
// curves X25519 then P-256; for TLS 1.2 the ECDHE AEAD suites. TLS 1.3
// suites are not configurable (neither in BoringSSL nor in Go).
var (
	envoyCurves       = []tls.CurveID{tls.X25519, tls.CurveP256}
	envoyCipherSuites = []uint16{
		tls.TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256, tls.TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256,
		tls.TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256, tls.TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256,
		tls.TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384, tls.TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384,
	}
)

// tlsContext is a compiled Downstream- or UpstreamTlsContext. It is
// immutable but for memo, the validator last merged from the validation
// secret (combined_validation_context).
type tlsContext struct {
	server     bool
	certSecret string // tls_certificate_sds_secret_configs[0].name; "" only for a client without a certificate
	valSecret  string // the validation context's SDS name; "" without validation (servers only)
	// defaultVal is combined_validation_context.default_validation_context:
	// the secret is merged into it (protobuf MergeFrom, as Envoy does).
	defaultVal        *tlsv3.CertificateValidationContext
	requireClientCert bool
	minVersion        uint16
	maxVersion        uint16
	alpn              []string
	sni               string // UpstreamTlsContext.sni

	memo atomic.Pointer[validatorMemo]
}

type validatorMemo struct {
	seq uint64 // of the validation secret
	v   *validator
	err error
}

// refs lists the secrets the context needs, by name and kind.
func (tc *tlsContext) refs() map[string]secretKind {
	m := map[string]secretKind{}
	if tc.certSecret != "" {
		m[tc.certSecret] = kindCertificate
	}
	if tc.valSecret != "" {
		m[tc.valSecret] = kindValidation
	}
	return m
}

func compileDownstreamTLS(path string, ts *core.TransportSocket) (*tlsContext, error) {
	var d tlsv3.DownstreamTlsContext
	if err := unpackTransportSocket(path, ts, &d); err != nil {
		return nil, err
	}
	path += ".typed_config"
	if err := onlyFields(path, &d, "common_tls_context", "require_client_certificate"); err != nil {
		return nil, err
	}
	tc := &tlsContext{server: true, requireClientCert: d.GetRequireClientCertificate().GetValue()}
	if err := compileCommonTLS(path+".common_tls_context", d.GetCommonTlsContext(), tc, tls.VersionTLS12, tls.VersionTLS13); err != nil {
		return nil, err
	}
	if tc.certSecret == "" {
		// Envoy: "No TLS certificates found for server context".
		return nil, fmt.Errorf("%s.common_tls_context.tls_certificate_sds_secret_configs: a server needs a certificate", path)
	}
	if tc.requireClientCert && tc.valSecret == "" {
		return nil, fmt.Errorf("%s.require_client_certificate: needs a validation context (nodemesh-proxy never accepts a peer certificate without verifying it)", path)
	}
	return tc, nil
}

func compileUpstreamTLS(path string, ts *core.TransportSocket) (*tlsContext, error) {
	var u tlsv3.UpstreamTlsContext
	if err := unpackTransportSocket(path, ts, &u); err != nil {
		return nil, err
	}
	path += ".typed_config"
	if err := onlyFields(path, &u, "common_tls_context", "sni"); err != nil {
		return nil, err
	}
	tc := &tlsContext{sni: u.GetSni()}
	if err := compileCommonTLS(path+".common_tls_context", u.GetCommonTlsContext(), tc, tls.VersionTLS12, tls.VersionTLS12); err != nil {
		return nil, err
	}
	if tc.valSecret == "" {
		return nil, fmt.Errorf("%s.common_tls_context: a validation context is required (nodemesh-proxy never connects to a server it has not verified)", path)
	}
	return tc, nil
}

func unpackTransportSocket(path string, ts *core.TransportSocket, dst proto.Message) error {
	if err := onlyFields(path, ts, "name", "typed_config"); err != nil {
		return err
	}
	if ts.GetTypedConfig() == nil {
		return fmt.Errorf("%s.typed_config: is required (%s)", path, typeURLOf(dst))
	}
	if ts.GetTypedConfig().GetTypeUrl() != typeURLOf(dst) {
		return fmt.Errorf("%s: transport socket %q (%s) is not supported by nodemesh-proxy (%s with %s)", path, ts.GetName(),
			ts.GetTypedConfig().GetTypeUrl(), transportSocketTLS, typeURLOf(dst))
	}
	return unpackAny(path+".typed_config", ts.GetTypedConfig(), dst)
}

func compileCommonTLS(path string, c *tlsv3.CommonTlsContext, tc *tlsContext, defMin, defMax uint16) error {
	if c == nil {
		return fmt.Errorf("%s: is required", path)
	}
	if err := onlyFields(path, c, "tls_params", "tls_certificate_sds_secret_configs", "validation_context_sds_secret_config",
		"combined_validation_context", "alpn_protocols"); err != nil {
		return err
	}
	tc.minVersion, tc.maxVersion = defMin, defMax
	if p := c.GetTlsParams(); p != nil {
		pp := path + ".tls_params"
		if err := onlyFields(pp, p, "tls_minimum_protocol_version", "tls_maximum_protocol_version"); err != nil {
			return err
		}
		var err error
		if tc.minVersion, err = tlsVersion(pp+".tls_minimum_protocol_version", p.GetTlsMinimumProtocolVersion(), defMin); err != nil {
			return err
		}
		if tc.maxVersion, err = tlsVersion(pp+".tls_maximum_protocol_version", p.GetTlsMaximumProtocolVersion(), defMax); err != nil {
			return err
		}
		if tc.minVersion > tc.maxVersion {
			return fmt.Errorf("%s: minimum version %s above maximum %s", pp, p.GetTlsMinimumProtocolVersion(), p.GetTlsMaximumProtocolVersion())
		}
	}
	switch certs := c.GetTlsCertificateSdsSecretConfigs(); len(certs) {
	case 0:
	case 1:
		name, err := compileSDSRef(path+".tls_certificate_sds_secret_configs[0]", certs[0])
		if err != nil {
			return err
		}
		tc.certSecret = name
	default:
		return fmt.Errorf("%s.tls_certificate_sds_secret_configs: %d certificates; nodemesh-proxy supports one", path, len(certs))
	}
	switch v := c.GetValidationContextType().(type) {
	case *tlsv3.CommonTlsContext_ValidationContextSdsSecretConfig:
		name, err := compileSDSRef(path+".validation_context_sds_secret_config", v.ValidationContextSdsSecretConfig)
		if err != nil {
			return err
		}
		tc.valSecret = name
	case *tlsv3.CommonTlsContext_CombinedValidationContext:
		cp := path + ".combined_validation_context"
		if err := onlyFields(cp, v.CombinedValidationContext, "default_validation_context", "validation_context_sds_secret_config"); err != nil {
			return err
		}
		name, err := compileSDSRef(cp+".validation_context_sds_secret_config", v.CombinedValidationContext.GetValidationContextSdsSecretConfig())
		if err != nil {
			return err
		}
		tc.valSecret = name
		d := v.CombinedValidationContext.GetDefaultValidationContext()
		if d == nil {
			d = &tlsv3.CertificateValidationContext{}
		}
		// The default may be partial (the secret completes it): check
		// what it sets now, completeness when the secret comes.
		if _, err := compileValidation(cp+".default_validation_context", d, nil, true); err != nil {
			return err
		}
		tc.defaultVal = d
	case nil:
	}
	if tc.certSecret != "" && tc.certSecret == tc.valSecret {
		return fmt.Errorf("%s: secret %q is used both as tls_certificate and as validation_context", path, tc.certSecret)
	}
	for i, a := range c.GetAlpnProtocols() {
		if a == "" || len(a) > 255 {
			return fmt.Errorf("%s.alpn_protocols[%d]: must be 1 to 255 bytes", path, i)
		}
	}
	tc.alpn = slices.Clone(c.GetAlpnProtocols())
	return nil
}

func tlsVersion(path string, v tlsv3.TlsParameters_TlsProtocol, def uint16) (uint16, error) {
	switch v {
	case tlsv3.TlsParameters_TLS_AUTO:
		return def, nil
	case tlsv3.TlsParameters_TLSv1_2:
		return tls.VersionTLS12, nil
	case tlsv3.TlsParameters_TLSv1_3:
		return tls.VersionTLS13, nil
	}
	return 0, fmt.Errorf("%s: %s is not supported by nodemesh-proxy (TLSv1_2, TLSv1_3)", path, v)
}

// compileSDSRef accepts a secret fetched over this ADS stream (there are
// no static secrets: the proxy has no bootstrap).
func compileSDSRef(path string, s *tlsv3.SdsSecretConfig) (string, error) {
	if s == nil {
		return "", fmt.Errorf("%s: is required", path)
	}
	if err := onlyFields(path, s, "name", "sds_config"); err != nil {
		return "", err
	}
	if s.GetName() == "" {
		return "", fmt.Errorf("%s.name: is required", path)
	}
	if s.SdsConfig == nil {
		return "", fmt.Errorf("%s.sds_config: is required (static secrets are not supported: nodemesh-proxy has no bootstrap)", path)
	}
	if err := checkADSSource(path+".sds_config", s.GetSdsConfig()); err != nil {
		return "", err
	}
	return s.GetName(), nil
}

// validatorFor returns the validator of the context under the current
// secrets: the validation secret's own, or, for a combined validation
// context, the merge of the default and the secret (compiled once per
// secret version). nil, nil: the context validates nothing.
func (tc *tlsContext) validatorFor(secrets map[string]*secret, svid SVIDVerifier) (*validator, error) {
	if tc.valSecret == "" {
		return nil, nil
	}
	s := secrets[tc.valSecret]
	if s == nil || s.kind != kindValidation {
		return nil, fmt.Errorf("validation context secret %q has not arrived", tc.valSecret)
	}
	if tc.defaultVal == nil {
		if s.val == nil {
			// Incomplete on its own (accepted for a combined context).
			return nil, fmt.Errorf("validation context secret %q: %w", tc.valSecret, s.valErr)
		}
		return s.val, nil
	}
	if m := tc.memo.Load(); m != nil && m.seq == s.seq {
		return m.v, m.err
	}
	v, err := mergeValidation(tc.defaultVal, s.raw.GetValidationContext(), svid)
	tc.memo.Store(&validatorMemo{seq: s.seq, v: v, err: err})
	return v, err
}

func mergeValidation(def, dynamic *tlsv3.CertificateValidationContext, svid SVIDVerifier) (*validator, error) {
	merged := proto.Clone(def).(*tlsv3.CertificateValidationContext)
	proto.Merge(merged, dynamic)
	return compileValidation("combined validation context", merged, svid, false)
}

// validator is a compiled CertificateValidationContext: the trust
// anchors (trusted_ca, or per trust domain with the SPIFFE validator),
// the URI SAN matchers and whether a peer must present a certificate.
type validator struct {
	spiffe   bool
	anyRoots []*x509.Certificate            // trusted_ca: the roots of every trust domain
	domains  map[string][]*x509.Certificate // SPIFFE validator: roots per trust domain
	sans     []*stringMatcher               // match_typed_subject_alt_names (URI)
	// requireCert is Envoy's verify mode: the SPIFFE validator and SAN
	// matchers make a peer certificate mandatory (SSL_VERIFY_FAIL_IF_NO_PEER_CERT).
	requireCert bool
	svid        SVIDVerifier
	memo        verifyMemo
}

func compileValidation(path string, cvc *tlsv3.CertificateValidationContext, svid SVIDVerifier, partial bool) (*validator, error) {
	if err := onlyFields(path, cvc, "trusted_ca", "match_typed_subject_alt_names", "custom_validator_config"); err != nil {
		return nil, err
	}
	v := &validator{svid: svid}
	if cvc.TrustedCa != nil {
		certs, err := compileCertsSource(path+".trusted_ca", cvc.GetTrustedCa())
		if err != nil {
			return nil, err
		}
		v.anyRoots = certs
	}
	if cv := cvc.GetCustomValidatorConfig(); cv != nil {
		cp := path + ".custom_validator_config"
		if err := onlyFields(cp, cv, "name", "typed_config"); err != nil {
			return nil, err
		}
		var sc tlsv3.SPIFFECertValidatorConfig
		if cv.GetTypedConfig().GetTypeUrl() != typeURLOf(&sc) {
			return nil, fmt.Errorf("%s: certificate validator %q is not supported by nodemesh-proxy (%s)", cp, cv.GetName(), certValidatorSPIFE)
		}
		if err := unpackAny(cp+".typed_config", cv.GetTypedConfig(), &sc); err != nil {
			return nil, err
		}
		sp := cp + ".typed_config"
		if err := onlyFields(sp, &sc, "trust_domains"); err != nil {
			return nil, err
		}
		v.spiffe = true
		v.domains = map[string][]*x509.Certificate{}
		for i, d := range sc.GetTrustDomains() {
			dp := join(sp, at("trust_domains", i))
			if err := onlyFields(dp, d, "name", "trust_bundle"); err != nil {
				return nil, err
			}
			if d.GetName() == "" {
				return nil, fmt.Errorf("%s.name: is required", dp)
			}
			if _, dup := v.domains[d.GetName()]; dup {
				// Envoy: "Multiple trust bundles are given for one trust domain".
				return nil, fmt.Errorf("%s.name: trust domain %q is listed twice", dp, d.GetName())
			}
			certs, err := compileCertsSource(dp+".trust_bundle", d.GetTrustBundle())
			if err != nil {
				return nil, err
			}
			v.domains[d.GetName()] = certs
		}
		if !partial && len(v.domains) == 0 {
			return nil, fmt.Errorf("%s.trust_domains: must not be empty", sp)
		}
	}
	for i, m := range cvc.GetMatchTypedSubjectAltNames() {
		mp := join(path, at("match_typed_subject_alt_names", i))
		if err := onlyFields(mp, m, "san_type", "matcher"); err != nil {
			return nil, err
		}
		if m.GetSanType() != tlsv3.SubjectAltNameMatcher_URI {
			return nil, fmt.Errorf("%s.san_type: %s is not supported by nodemesh-proxy (URI: SPIFFE IDs)", mp, m.GetSanType())
		}
		sm, err := compileStringMatcher(mp+".matcher", m.GetMatcher())
		if err != nil {
			return nil, err
		}
		v.sans = append(v.sans, sm)
	}
	if !partial && v.anyRoots == nil && !v.spiffe {
		// Envoy would then check SAN matchers alone, on an unverified
		// chain: refuse rather than trust a self-signed certificate.
		return nil, fmt.Errorf("%s: trusted_ca or the %s validator is required (nodemesh-proxy never accepts a certificate it has not verified)", path, certValidatorSPIFE)
	}
	v.requireCert = v.spiffe || len(v.sans) > 0
	return v, nil
}

// compileCertsSource reads PEM certificates from an inline data source.
func compileCertsSource(path string, ds *core.DataSource) ([]*x509.Certificate, error) {
	data, err := compileDataSource(path, ds)
	if err != nil {
		return nil, err
	}
	var certs []*x509.Certificate
	for rest := data; ; {
		var b *pem.Block
		b, rest = pem.Decode(rest)
		if b == nil {
			break
		}
		if b.Type != "CERTIFICATE" {
			return nil, fmt.Errorf("%s: PEM block %q is not supported (certificates only)", path, b.Type)
		}
		c, err := x509.ParseCertificate(b.Bytes)
		if err != nil {
			return nil, fmt.Errorf("%s: certificate %d: %w", path, len(certs), err)
		}
		certs = append(certs, c)
	}
	if len(certs) == 0 {
		return nil, fmt.Errorf("%s: no PEM certificate", path)
	}
	return certs, nil
}

// compileDataSource accepts inline data: the proxy reads no files or
// environment variables of its own.
func compileDataSource(path string, ds *core.DataSource) ([]byte, error) {
	if ds == nil {
		return nil, fmt.Errorf("%s: is required", path)
	}
	if err := onlyFields(path, ds, "inline_bytes", "inline_string"); err != nil {
		return nil, fmt.Errorf("%w (inline_bytes or inline_string)", err)
	}
	if b := ds.GetInlineBytes(); b != nil {
		return b, nil
	}
	if s := ds.GetInlineString(); s != "" {
		return []byte(s), nil
	}
	return nil, fmt.Errorf("%s: inline_bytes or inline_string is required", path)
}

// Envoy's names of the TLS statistics the proxy keeps
// (listener.<name>.ssl.* and cluster.<name>.ssl.*).
const (
	statHandshake        = "handshake"
	statSessionReused    = "session_reused"
	statConnectionError  = "connection_error"
	statFailVerifyError  = "fail_verify_error"
	statFailVerifySAN    = "fail_verify_san"
	statFailVerifyNoCert = "fail_verify_no_cert"
	statNoCertificate    = "no_certificate" // a successful handshake without a client certificate
)

// Reasons of failed handshakes that are not about the peer's SVID (those
// are the Reason* constants).
const (
	reasonNoSecret     = "secret-not-ready"  // a secret the context needs is missing
	reasonHandshakeErr = "handshake-error"   // anything else (protocol, versions, alerts)
	reasonPeerRefused  = "refused-by-peer"   // the peer sent an alert about our certificate
	reasonTimeout      = "handshake-timeout" // deadline
	reasonNotTLS       = "not-tls"           // the peer does not speak TLS
	reasonVersion      = "protocol-version"  // no common TLS version
)

// resumeMargin: a session whose peer certificate expires within it is not
// resumed. Resumption skips the certificate exchange, so the peer's leaf is
// the one of the original handshake, however long ago; crypto/tls refuses
// to resume once it has expired, but checks before the handshake and the
// proxy's verification runs after it, so a session resumed on the edge of
// the expiry failed verification (svid-expired) — once every few thousand
// connections while SVIDs rotate. A full handshake instead presents the
// peer's current certificate.
const resumeMargin = 5 * time.Second

// peerExpiry is the Extra entry of a session (SessionState.Extra) that
// records when the peer's leaf certificate expires: crypto/tls keeps the
// peer's certificates in the session but does not expose them.
const peerExpiryTag = "nodemesh-peer-not-after:"

// withPeerExpiry appends the expiry of the leaf of peer to st.
func withPeerExpiry(st *tls.SessionState, peer []*x509.Certificate) {
	if len(peer) > 0 {
		st.Extra = append(st.Extra, []byte(peerExpiryTag+peer[0].NotAfter.UTC().Format(time.RFC3339Nano)))
	}
}

// resumable reports whether a session may be resumed at now: its peer's
// leaf (as withPeerExpiry recorded it) is valid beyond resumeMargin. A
// session without the record is resumable only when it had no peer
// certificate recorded at all (none was presented).
func resumable(st *tls.SessionState, now time.Time) bool {
	for _, e := range st.Extra {
		if v, ok := strings.CutPrefix(string(e), peerExpiryTag); ok {
			t, err := time.Parse(time.RFC3339Nano, v)
			return err == nil && now.Add(resumeMargin).Before(t)
		}
	}
	return true
}

// verifyError is a refused peer certificate: the Envoy stat it counts as
// and the reason.
type verifyError struct {
	stat, reason string
	err          error
}

func (e *verifyError) Error() string { return e.err.Error() }

func (e *verifyError) Unwrap() error { return e.err }

// verify checks a peer's chain: the SVID rules and trust anchors (through
// the SVIDVerifier), then the URI SAN matchers (any matcher matching any
// URI SAN of the leaf). It returns the peer's SPIFFE ID.
func (v *validator) verify(chain []*x509.Certificate, now time.Time) (string, error) {
	if len(chain) == 0 {
		return "", &verifyError{stat: statFailVerifyNoCert, reason: ReasonMalformed, err: errors.New("the peer presented no certificate")}
	}
	key := chainKey(chain)
	if id, ok := v.memo.get(key, now); ok {
		return id, nil
	}
	id, err := v.svid.VerifySVID(chain, v.roots, now)
	if err != nil {
		return "", &verifyError{stat: statFailVerifyError, reason: SVIDReason(err), err: err}
	}
	if len(v.sans) > 0 && !v.matchSAN(chain[0]) {
		return "", &verifyError{stat: statFailVerifySAN, reason: ReasonNotAllowed,
			err: fmt.Errorf("%s matches none of match_typed_subject_alt_names", id)}
	}
	v.memo.put(key, id, chain, now)
	return id, nil
}

func (v *validator) roots(td string) []*x509.Certificate {
	if v.spiffe {
		return v.domains[td]
	}
	return v.anyRoots
}

func (v *validator) matchSAN(leaf *x509.Certificate) bool {
	for _, u := range leaf.URIs {
		s := u.String()
		for _, m := range v.sans {
			if m.match(s) {
				return true
			}
		}
	}
	return false
}

// verifyMemo remembers chains verified recently, so that resumed
// handshakes and reused client certificates do not pay for signature
// checks again. An entry holds while every certificate sent is valid,
// and at most memoTTL (a root may expire or be replaced; a new
// validation secret makes a new validator anyway).
type verifyMemo struct {
	mu sync.Mutex
	m  map[[32]byte]memoEntry
}

type memoEntry struct {
	id         string
	from, till time.Time
}

const (
	memoTTL  = time.Minute
	memoSize = 4096
)

func chainKey(chain []*x509.Certificate) [32]byte {
	h := sha256.New()
	for _, c := range chain {
		h.Write(c.Raw)
	}
	var k [32]byte
	h.Sum(k[:0])
	return k
}

func (m *verifyMemo) get(k [32]byte, now time.Time) (string, bool) {
	m.mu.Lock()
	defer m.mu.Unlock()
	e, ok := m.m[k]
	if !ok || now.Before(e.from) || !now.Before(e.till) {
		return "", false
	}
	return e.id, true
}

func (m *verifyMemo) put(k [32]byte, id string, chain []*x509.Certificate, now time.Time) {
	e := memoEntry{id: id, from: chain[0].NotBefore, till: now.Add(memoTTL)}
	for _, c := range chain {
		if c.NotBefore.After(e.from) {
			e.from = c.NotBefore
		}
		if c.NotAfter.Before(e.till) {
			e.till = c.NotAfter
		}
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.m == nil || len(m.m) >= memoSize {
		m.m = make(map[[32]byte]memoEntry, 64)
	}
	m.m[k] = e
}
