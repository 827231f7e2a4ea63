package certs_test

import (
	"crypto/x509"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/nodemesh/nodemesh/certs"
	"github.com/nodemesh/nodemesh/certs/certstest"
)

const webID = "spiffe://cluster.local/ns/prod/sa/web"

// TestVerifySVID has a case for every class of bad certificate, each with
// exactly one defect, and checks the reason VerifySVID gives.
func TestVerifySVID(t *testing.T) {
	ca := certstest.NewAuthority(t, "cluster.local")
	other := certstest.NewAuthority(t, "other.test")
	stranger := certstest.NewAuthority(t, "cluster.local") // same trust domain, never trusted
	expiredRoot := certstest.NewAuthority(t, "cluster.local", certstest.Expired())
	inter := ca.NewIntermediate(t)
	leafOnly := certstest.NewAuthority(t, "cluster.local", func(c *x509.Certificate) { c.MaxPathLen, c.MaxPathLenZero = 0, true })
	now := time.Now()

	type built struct {
		chain  []*x509.Certificate
		bundle *certs.Bundle
	}
	// by mints a leaf for id with a, trusted under bundle.
	by := func(a *certstest.Authority, bundle *certs.Bundle, id string, tw ...certstest.Tweak) func() built {
		return func() built { c, _ := a.Mint(t, id, tw...); return built{c, bundle} }
	}
	tests := []struct {
		name   string
		build  func() built
		want   certs.Reason // "" = valid
		detail string       // substring of the error
	}{
		{name: "valid", build: by(ca, ca.Bundle(), webID)},
		{name: "valid through an intermediate", build: by(inter, ca.Bundle(), webID)},
		{name: "valid with other trust domains in the bundle", build: by(ca, ca.Bundle(other), webID)},
		{name: "expired", build: by(ca, ca.Bundle(), webID, certstest.Expired()), want: certs.ReasonExpired, detail: "leaf expired at"},
		{name: "not yet valid", build: by(ca, ca.Bundle(), webID, certstest.NotYetValid()), want: certs.ReasonNotYetValid, detail: "leaf not valid before"},
		{name: "wrong trust domain", build: by(ca, ca.Bundle(), "spiffe://other.test/ns/prod/sa/web"), want: certs.ReasonWrongTrustDomain, detail: `trust domain "other.test"`},
		{name: "unknown CA", build: by(stranger, ca.Bundle(), webID), want: certs.ReasonUnknownCA},
		{name: "signed by a root of another trust domain", build: by(other, ca.Bundle(other), webID), want: certs.ReasonUnknownCA, detail: `trusted for "cluster.local"`},
		{name: "more than one URI SAN", build: by(ca, ca.Bundle(), webID, certstest.URIs(webID, "spiffe://cluster.local/ns/prod/sa/admin")), want: certs.ReasonMultipleURISANs, detail: "2 URI SANs"},
		{name: "no URI SAN", build: by(ca, ca.Bundle(), webID, certstest.URIs()), want: certs.ReasonNoSPIFFEID, detail: "no URI SAN"},
		{name: "URI SAN not a SPIFFE ID", build: by(ca, ca.Bundle(), "https://cluster.local/web"), want: certs.ReasonNoSPIFFEID, detail: "not a SPIFFE ID"},
		{name: "CA flag on the leaf", build: by(ca, ca.Bundle(), webID, certstest.CAFlag()), want: certs.ReasonLeafIsCA},
		{name: "keyCertSign on the leaf", build: by(ca, ca.Bundle(), webID, certstest.KeyUsage(x509.KeyUsageDigitalSignature|x509.KeyUsageCertSign)), want: certs.ReasonBadKeyUsage, detail: "keyCertSign"},
		{name: "cRLSign on the leaf", build: by(ca, ca.Bundle(), webID, certstest.KeyUsage(x509.KeyUsageDigitalSignature|x509.KeyUsageCRLSign)), want: certs.ReasonBadKeyUsage, detail: "cRLSign"},
		{name: "no digitalSignature", build: by(ca, ca.Bundle(), webID, certstest.KeyUsage(x509.KeyUsageKeyEncipherment)), want: certs.ReasonBadKeyUsage, detail: "lacks key usage digitalSignature"},
		{name: "no certificate", build: func() built { return built{nil, ca.Bundle()} }, want: certs.ReasonMalformed},
		{name: "nil bundle", build: by(ca, nil, webID), want: certs.ReasonWrongTrustDomain},
		{name: "expired intermediate", build: by(ca.NewIntermediate(t, certstest.Expired()), ca.Bundle(), webID), want: certs.ReasonExpired, detail: "CA certificate"},
		{name: "expired root", build: by(expiredRoot, expiredRoot.Bundle(), webID), want: certs.ReasonExpired, detail: "CA certificate"},
		{name: "intermediate without the CA flag", build: by(ca.NewIntermediate(t, func(c *x509.Certificate) { c.IsCA = false }), ca.Bundle(), webID), want: certs.ReasonUnknownCA, detail: "cannot sign"},
		{name: "intermediate under a root that allows none", build: by(leafOnly.NewIntermediate(t), leafOnly.Bundle(), webID), want: certs.ReasonInvalidChain, detail: "intermediates"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			b := tt.build()
			id, err := certs.VerifySVID(b.chain, b.bundle, now)
			if tt.want == "" {
				if err != nil {
					t.Fatalf("refused a valid SVID: %v", err)
				}
				if id.String() != webID {
					t.Fatalf("id %s, want %s", id, webID)
				}
				return
			}
			if err == nil {
				t.Fatalf("accepted; want %s", tt.want)
			}
			var ve *certs.VerifyError
			if !errors.As(err, &ve) || ve.Reason != tt.want || certs.ReasonOf(err) != tt.want {
				t.Fatalf("error %v; want reason %s", err, tt.want)
			}
			if !strings.HasPrefix(err.Error(), string(tt.want)+": ") || !strings.Contains(err.Error(), tt.detail) {
				t.Fatalf("error %q: want prefix %q and %q in it", err, tt.want, tt.detail)
			}
			if !id.IsZero() {
				t.Fatalf("returned ID %s with an error", id)
			}
		})
	}
}

// TestReasonStrings pins the reasons: flow events, logs and dashboards
// match on them, so changing one is a breaking change.
func TestReasonStrings(t *testing.T) {
	want := map[certs.Reason]string{
		certs.ReasonMalformed:        "svid-malformed",
		certs.ReasonNoSPIFFEID:       "svid-no-spiffe-id",
		certs.ReasonMultipleURISANs:  "svid-multiple-uri-sans",
		certs.ReasonLeafIsCA:         "svid-leaf-is-ca",
		certs.ReasonBadKeyUsage:      "svid-bad-key-usage",
		certs.ReasonWrongTrustDomain: "svid-wrong-trust-domain",
		certs.ReasonNotYetValid:      "svid-not-yet-valid",
		certs.ReasonExpired:          "svid-expired",
		certs.ReasonUnknownCA:        "svid-unknown-ca",
		certs.ReasonInvalidChain:     "svid-invalid-chain",
		certs.ReasonNotAllowed:       "svid-id-not-allowed",
	}
	for r, s := range want {
		if string(r) != s {
			t.Errorf("reason %q changed, was %q", r, s)
		}
	}
	if certs.ReasonOf(errors.New("x")) != "" || certs.ReasonOf(nil) != "" {
		t.Error("ReasonOf of a plain error is not empty")
	}
}
