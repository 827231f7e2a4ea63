package proxy

import (
	"crypto/x509"
	"errors"
	"fmt"
	"net/url"
	"strings"
	"time"
)

// X509SVIDVerifier is the default SVIDVerifier: the leaf must follow the
// SPIFFE X509-SVID standard (exactly one URI SAN holding a SPIFFE ID, not
// a CA, digitalSignature and neither keyCertSign nor cRLSign key usage),
// its trust domain must have roots, the leaf must be within its validity
// period, and the chain must lead to one of those roots. The checks run
// in that order (certs.VerifySVID's), so a certificate with several
// defects is refused for the first.
type X509SVIDVerifier struct{}

// VerifySVID implements SVIDVerifier.
func (X509SVIDVerifier) VerifySVID(chain []*x509.Certificate, roots func(string) []*x509.Certificate, now time.Time) (string, error) {
	fail := func(reason string, format string, args ...any) (string, error) {
		return "", &SVIDError{Reason: reason, Err: fmt.Errorf(format, args...)}
	}
	if len(chain) == 0 || chain[0] == nil {
		return fail(ReasonMalformed, "no certificate")
	}
	leaf := chain[0]
	switch len(leaf.URIs) {
	case 0:
		return fail(ReasonNoSPIFFEID, "the leaf has no URI SAN")
	case 1:
	default:
		return fail(ReasonMultipleURISANs, "the leaf has %d URI SANs, an X509-SVID exactly one", len(leaf.URIs))
	}
	id := leaf.URIs[0]
	td, err := spiffeTrustDomain(id)
	if err != nil {
		return fail(ReasonNoSPIFFEID, "URI SAN %q: %v", id, err)
	}
	switch {
	case leaf.IsCA:
		return fail(ReasonLeafIsCA, "the leaf %s is a CA certificate", id)
	case leaf.KeyUsage&(x509.KeyUsageCertSign|x509.KeyUsageCRLSign) != 0:
		return fail(ReasonBadKeyUsage, "the leaf %s has keyCertSign or cRLSign key usage", id)
	case leaf.KeyUsage&x509.KeyUsageDigitalSignature == 0:
		return fail(ReasonBadKeyUsage, "the leaf %s lacks digitalSignature key usage", id)
	}
	trusted := roots(td)
	if len(trusted) == 0 {
		return fail(ReasonWrongTrustDomain, "no trusted roots for trust domain %q of %s", td, id)
	}
	if r, detail := validity(leaf, "the leaf "+id.String(), now); r != "" {
		return fail(r, "%s", detail)
	}
	pool, inter := x509.NewCertPool(), x509.NewCertPool()
	for _, c := range trusted {
		pool.AddCert(c)
	}
	for _, c := range chain[1:] {
		if c != nil {
			inter.AddCert(c)
		}
	}
	// SPIFFE leaves carry serverAuth and clientAuth or no extended key
	// usage; Envoy's SPIFFE validator does not check the purpose either.
	_, err = leaf.Verify(x509.VerifyOptions{Roots: pool, Intermediates: inter, CurrentTime: now, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageAny}})
	if err == nil {
		return id.String(), nil
	}
	var ua x509.UnknownAuthorityError
	var ci x509.CertificateInvalidError
	switch {
	case errors.As(err, &ua):
		return fail(ReasonUnknownCA, "%s does not chain to a root of %q: %v", id, td, err)
	case errors.As(err, &ci) && ci.Reason == x509.Expired && ci.Cert != nil:
		if r, detail := validity(ci.Cert, "CA certificate "+ci.Cert.Subject.String(), now); r != "" {
			return fail(r, "%s", detail)
		}
	}
	return fail(ReasonInvalidChain, "%s: %v", id, err)
}

func validity(c *x509.Certificate, what string, now time.Time) (string, string) {
	switch {
	case now.Before(c.NotBefore):
		return ReasonNotYetValid, fmt.Sprintf("%s is valid from %s", what, c.NotBefore.UTC().Format(time.RFC3339))
	case now.After(c.NotAfter):
		return ReasonExpired, fmt.Sprintf("%s expired at %s", what, c.NotAfter.UTC().Format(time.RFC3339))
	}
	return "", ""
}

// spiffeTrustDomain checks that u is a SPIFFE ID and returns its trust
// domain (the rules of the SPIFFE ID standard: scheme spiffe, a lower-case
// trust domain, no port, user info, query or fragment, a path of
// non-empty segments other than . and ..).
func spiffeTrustDomain(u *url.URL) (string, error) {
	if u.Scheme != "spiffe" {
		return "", errors.New("scheme is not spiffe")
	}
	if u.Opaque != "" || u.User != nil || u.RawQuery != "" || u.Fragment != "" || u.Port() != "" {
		return "", errors.New("a SPIFFE ID has no port, user info, query or fragment")
	}
	td := u.Host
	if td == "" {
		return "", errors.New("no trust domain")
	}
	for _, r := range td {
		if !(r >= 'a' && r <= 'z' || r >= '0' && r <= '9' || r == '.' || r == '-' || r == '_') {
			return "", fmt.Errorf("trust domain %q: only lower-case letters, digits, '.', '-' and '_'", td)
		}
	}
	if u.Path != "" {
		for _, seg := range strings.Split(strings.TrimPrefix(u.Path, "/"), "/") {
			if seg == "" || seg == "." || seg == ".." {
				return "", fmt.Errorf("path %q: empty, . or .. segment", u.Path)
			}
		}
	}
	return td, nil
}
