package proxy

import (
	"crypto/x509"
	"errors"
	"time"
)

// SVIDVerifier decides whether a peer's certificate chain is a valid
// X.509-SVID: chain[0] is the leaf, the rest the intermediates the peer
// sent. roots returns the root certificates trusted for a trust domain,
// none when the trust domain is not trusted. It returns the leaf's SPIFFE
// ID, or an error carrying one of the Reason* strings (see SVIDReason).
// The default is X509SVIDVerifier; Config.SVIDVerifier replaces it.
// The reasons and the order of the checks are those of package certs'
// VerifySVID, so an adapter (roots → certs.NewBundle) can stand in.
type SVIDVerifier interface {
	VerifySVID(chain []*x509.Certificate, roots func(trustDomain string) []*x509.Certificate, now time.Time) (spiffeID string, err error)
}

// Reasons a certificate is refused, as SVIDError.Reason: the stable
// strings of certs.VerifySVID. They appear in the logs and in
// nodemesh_proxy_ssl_fail_verify_reasons_total.
const (
	ReasonMalformed        = "svid-malformed"          // no certificate
	ReasonNoSPIFFEID       = "svid-no-spiffe-id"       // no URI SAN, or not a valid SPIFFE ID
	ReasonMultipleURISANs  = "svid-multiple-uri-sans"  // more than one URI SAN
	ReasonLeafIsCA         = "svid-leaf-is-ca"         // CA flag on the leaf
	ReasonBadKeyUsage      = "svid-bad-key-usage"      // keyCertSign or cRLSign on the leaf, or no digitalSignature
	ReasonWrongTrustDomain = "svid-wrong-trust-domain" // no roots for the SPIFFE ID's trust domain
	ReasonNotYetValid      = "svid-not-yet-valid"      // a certificate of the chain starts later
	ReasonExpired          = "svid-expired"            // a certificate of the chain has expired
	ReasonUnknownCA        = "svid-unknown-ca"         // no path to a root of the leaf's trust domain
	ReasonInvalidChain     = "svid-invalid-chain"      // a path breaks other X.509 rules
	// ReasonNotAllowed: a valid SVID whose SPIFFE ID the validation
	// context's match_typed_subject_alt_names do not allow (Envoy's
	// fail_verify_san). The proxy's own; a verifier never returns it.
	ReasonNotAllowed = "svid-id-not-allowed"
)

// SVIDError is a refused certificate and why.
type SVIDError struct {
	Reason string // one of the Reason* constants
	Err    error
}

func (e *SVIDError) Error() string { return e.Reason + ": " + e.Err.Error() }

func (e *SVIDError) Unwrap() error { return e.Err }

// SVIDReason is the reason of a refusal: SVIDError.Reason when err carries
// one, else ReasonInvalidChain.
func SVIDReason(err error) string {
	var se *SVIDError
	if errors.As(err, &se) && se.Reason != "" {
		return se.Reason
	}
	return ReasonInvalidChain
}
