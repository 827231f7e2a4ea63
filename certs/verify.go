package certs

import (
	"crypto/x509"
	"errors"
	"fmt"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
)

// Reason classifies why a certificate chain is not a valid X.509-SVID. The
// values are stable: flow events, logs and metrics carry them.
type Reason string

// Reasons VerifySVID reports, and the one left to the caller's policy.
const (
	ReasonMalformed        Reason = "svid-malformed"          // no certificate
	ReasonNoSPIFFEID       Reason = "svid-no-spiffe-id"       // no URI SAN, or not a valid SPIFFE ID
	ReasonMultipleURISANs  Reason = "svid-multiple-uri-sans"  // more than one URI SAN
	ReasonLeafIsCA         Reason = "svid-leaf-is-ca"         // CA flag on the leaf
	ReasonBadKeyUsage      Reason = "svid-bad-key-usage"      // keyCertSign or cRLSign on the leaf, or no digitalSignature
	ReasonWrongTrustDomain Reason = "svid-wrong-trust-domain" // the bundle has no roots for the leaf's trust domain
	ReasonNotYetValid      Reason = "svid-not-yet-valid"      // a certificate of the chain starts later
	ReasonExpired          Reason = "svid-expired"            // a certificate of the chain has expired
	ReasonUnknownCA        Reason = "svid-unknown-ca"         // no path to a root of the leaf's trust domain (includes bad signatures and issuers that are no CA)
	ReasonInvalidChain     Reason = "svid-invalid-chain"      // a path exists but breaks other X.509 rules (path length, name constraints, unknown critical extension)
	// ReasonNotAllowed is for the caller: a valid SVID whose SPIFFE ID its
	// policy does not allow. VerifySVID never returns it.
	ReasonNotAllowed Reason = "svid-id-not-allowed"
)

// VerifyError is the error of VerifySVID.
type VerifyError struct {
	Reason Reason
	// ID is the leaf's SPIFFE ID, zero when it has none.
	ID     spiffeid.ID
	Detail string
	// Err is the underlying error of crypto/x509, if any.
	Err error
}

func (e *VerifyError) Error() string {
	s := string(e.Reason)
	if !e.ID.IsZero() {
		s += ": " + e.ID.String()
	}
	return s + ": " + e.Detail
}

func (e *VerifyError) Unwrap() error { return e.Err }

// ReasonOf returns the Reason of a *VerifyError in err's chain, or "".
func ReasonOf(err error) Reason {
	var ve *VerifyError
	if errors.As(err, &ve) {
		return ve.Reason
	}
	return ""
}

// VerifySVID checks that chain (leaf first, then intermediates) is a valid
// X.509-SVID at now under bundle, following the SPIFFE X509-SVID standard,
// and returns its SPIFFE ID. The leaf must name exactly one SPIFFE ID in a
// URI SAN, must not be a CA, must have digitalSignature and neither
// keyCertSign nor cRLSign, must be valid at now, and must chain to a root
// the bundle trusts for the ID's trust domain (roots of other trust domains
// do not count). Every failure is a *VerifyError with a Reason; the
// structural checks come first, so a certificate with several defects
// reports the first in the order of the Reason constants.
//
// Whether the ID is allowed to talk is the caller's decision
// (ReasonNotAllowed).
func VerifySVID(chain []*x509.Certificate, bundle *Bundle, now time.Time) (spiffeid.ID, error) {
	fail := func(r Reason, id spiffeid.ID, err error, format string, args ...any) (spiffeid.ID, error) {
		return spiffeid.ID{}, &VerifyError{Reason: r, ID: id, Detail: fmt.Sprintf(format, args...), Err: err}
	}
	if len(chain) == 0 || chain[0] == nil {
		return fail(ReasonMalformed, spiffeid.ID{}, nil, "no certificate")
	}
	leaf := chain[0]
	switch len(leaf.URIs) {
	case 0:
		return fail(ReasonNoSPIFFEID, spiffeid.ID{}, nil, "leaf has no URI SAN")
	case 1:
	default:
		return fail(ReasonMultipleURISANs, spiffeid.ID{}, nil, "leaf has %d URI SANs %v, an X.509-SVID has exactly one", len(leaf.URIs), leaf.URIs)
	}
	id, err := spiffeid.FromURI(leaf.URIs[0])
	if err != nil {
		return fail(ReasonNoSPIFFEID, spiffeid.ID{}, err, "leaf URI SAN %q is not a SPIFFE ID: %v", leaf.URIs[0], err)
	}
	if leaf.IsCA {
		return fail(ReasonLeafIsCA, id, nil, "leaf has the CA flag set")
	}
	switch {
	case leaf.KeyUsage&x509.KeyUsageCertSign != 0:
		return fail(ReasonBadKeyUsage, id, nil, "leaf has key usage keyCertSign")
	case leaf.KeyUsage&x509.KeyUsageCRLSign != 0:
		return fail(ReasonBadKeyUsage, id, nil, "leaf has key usage cRLSign")
	case leaf.KeyUsage&x509.KeyUsageDigitalSignature == 0:
		return fail(ReasonBadKeyUsage, id, nil, "leaf lacks key usage digitalSignature")
	}
	roots := bundle.pool(id.TrustDomain())
	if roots == nil {
		return fail(ReasonWrongTrustDomain, id, nil, "no trusted roots for trust domain %q (bundle has %v)", id.TrustDomain().Name(), bundle.TrustDomains())
	}
	if r, detail := checkValidity(leaf, "leaf", now); r != "" {
		return fail(r, id, nil, "%s", detail)
	}
	intermediates := x509.NewCertPool()
	for _, c := range chain[1:] {
		if c != nil {
			intermediates.AddCert(c)
		}
	}
	_, err = leaf.Verify(x509.VerifyOptions{
		Roots:         roots,
		Intermediates: intermediates,
		CurrentTime:   now,
		KeyUsages:     []x509.ExtKeyUsage{x509.ExtKeyUsageAny},
	})
	if err == nil {
		return id, nil
	}
	var unknown x509.UnknownAuthorityError
	var invalid x509.CertificateInvalidError
	switch {
	case errors.As(err, &unknown):
		return fail(ReasonUnknownCA, id, err, "not signed by a root trusted for %q: %v", id.TrustDomain().Name(), err)
	case errors.As(err, &invalid) && invalid.Reason == x509.Expired && invalid.Cert != nil:
		if r, detail := checkValidity(invalid.Cert, "CA certificate "+invalid.Cert.Subject.String(), now); r != "" {
			return fail(r, id, err, "%s", detail)
		}
	}
	return fail(ReasonInvalidChain, id, err, "%v", err)
}

func checkValidity(c *x509.Certificate, what string, now time.Time) (Reason, string) {
	switch {
	case now.Before(c.NotBefore):
		return ReasonNotYetValid, fmt.Sprintf("%s not valid before %s (now %s)", what, c.NotBefore.UTC().Format(time.RFC3339), now.UTC().Format(time.RFC3339))
	case now.After(c.NotAfter):
		return ReasonExpired, fmt.Sprintf("%s expired at %s (now %s)", what, c.NotAfter.UTC().Format(time.RFC3339), now.UTC().Format(time.RFC3339))
	}
	return "", ""
}
