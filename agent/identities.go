package agent

// The API's view of the node's workload identities (mTLS): the SVIDs of
// a.idSource, the built-in CA manager's per-identity status, and which of
// the node's pods use each. idSource and idManager are set before Run and
// never changed, and Snapshot and Status are safe to call concurrently, so
// they are read without a.mu; a.mu is taken only to read a.local, and never
// while the source's or the manager's lock is held.

import (
	"context"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/rsa"
	"crypto/sha256"
	"crypto/x509"
	"encoding/hex"
	"encoding/pem"
	"errors"
	"fmt"
	"sort"
	"strings"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/nodemesh/nodemesh/certs"
	"github.com/nodemesh/nodemesh/identity"
	"github.com/nodemesh/nodemesh/xds"
)

// ErrMTLSDisabled is the answer of Identities and Certs on a node without
// mTLS.
var ErrMTLSDisabled = errors.New("mTLS is disabled on this node (--mtls-mode disabled): no workload identities")

// Identity source names.
const (
	SourceBuiltinCA = "built-in CA"
	SourceSPIRE     = "SPIRE"
)

func (a *Agent) identitySourceName() string {
	if a.idManager != nil {
		return SourceBuiltinCA
	}
	return SourceSPIRE
}

// Identities implements Server.
func (a *Agent) Identities(context.Context) (*IdentityList, error) {
	if a.idSource == nil {
		return nil, ErrMTLSDisabled
	}
	snap := a.idSource.Snapshot()
	var statuses []certs.IdentityStatus
	if a.idManager != nil {
		statuses = a.idManager.Status()
	}
	now := time.Now()
	out := &IdentityList{Node: a.cfg.NodeName, Source: a.identitySourceName(), Generation: snap.Generation,
		BundleVersion: snap.Bundle.Version(), Identities: []IdentityStatus{}, Bundle: []TrustDomainRoots{}}

	byID := map[string]*IdentityStatus{}
	get := func(id string) *IdentityStatus {
		st := byID[id]
		if st == nil {
			st = &IdentityStatus{SPIFFEID: id, Pods: []string{}}
			byID[id] = st
		}
		return st
	}
	tds := map[string]bool{}
	for _, v := range snap.SVIDs() {
		st := get(v.ID().String())
		tds[v.ID().TrustDomain().Name()] = true
		describeSVID(st, v, snap.Bundle)
	}
	for _, ms := range statuses {
		st := get(ms.ID.String())
		tds[ms.ID.TrustDomain().Name()] = true
		if !st.HasSVID && ms.SVID != nil {
			describeSVID(st, ms.SVID, snap.Bundle) // issued, not yet published
		}
		st.RenewAt, st.Failures, st.LastError = ms.NextRequest, ms.Failures, ms.LastError
	}
	if len(tds) == 0 {
		// Nothing issued or requested yet: the pods' identities are in
		// the bundle's trust domain, if it has just one.
		if b := snap.Bundle.TrustDomains(); len(b) == 1 {
			tds[b[0].Name()] = true
		}
	}
	for id, pods := range a.podsByIdentity(tds) {
		st := get(id)
		st.Pods = append(st.Pods, pods...)
	}

	for _, st := range byID {
		sort.Strings(st.Pods)
		if !st.RenewAt.IsZero() {
			st.RenewIn = st.RenewAt.Sub(now)
		}
		st.State = identityState(st, now, hasStatus(statuses, st.SPIFFEID))
		out.Identities = append(out.Identities, *st)
	}
	sort.Slice(out.Identities, func(i, j int) bool { return out.Identities[i].SPIFFEID < out.Identities[j].SPIFFEID })

	for _, td := range snap.Bundle.TrustDomains() {
		tr := TrustDomainRoots{TrustDomain: td.Name(), Roots: []BundleRoot{}}
		for _, r := range snap.Bundle.Roots(td) {
			tr.Roots = append(tr.Roots, BundleRoot{Subject: r.Subject.String(), Serial: r.SerialNumber.Text(16),
				NotBefore: r.NotBefore, NotAfter: r.NotAfter, SHA256: fingerprint(r)})
		}
		out.Bundle = append(out.Bundle, tr)
	}
	return out, nil
}

func hasStatus(statuses []certs.IdentityStatus, id string) bool {
	for _, s := range statuses {
		if s.ID.String() == id {
			return true
		}
	}
	return false
}

// describeSVID fills in the SVID's leaf and its issuing root.
func describeSVID(st *IdentityStatus, v *certs.SVID, bundle *certs.Bundle) {
	leaf := v.Leaf()
	st.HasSVID, st.Serial, st.NotBefore, st.NotAfter = true, v.Serial(), leaf.NotBefore, leaf.NotAfter
	chain := v.Chain()
	if root := issuingRoot(chain, v.ID().TrustDomain(), bundle); root != nil {
		st.Issuer, st.IssuerSerial = root.Subject.String(), root.SerialNumber.Text(16)
	} else {
		st.Issuer, st.IssuerSerial = chain[len(chain)-1].Issuer.String(), ""
	}
}

// issuingRoot returns the root of bundle, for td, that signed the top of
// chain; nil if none did.
func issuingRoot(chain []*x509.Certificate, td spiffeid.TrustDomain, bundle *certs.Bundle) *x509.Certificate {
	if len(chain) == 0 {
		return nil
	}
	top := chain[len(chain)-1]
	for _, r := range bundle.Roots(td) {
		if top.Equal(r) || top.CheckSignatureFrom(r) == nil {
			return r
		}
	}
	return nil
}

// identityState is the state of an identity at now; requested tells that
// the built-in CA's manager has an entry for it.
func identityState(st *IdentityStatus, now time.Time, requested bool) string {
	switch {
	case st.Failures > 0:
		return IdentityFailing
	case st.HasSVID && !now.Before(st.NotAfter):
		return IdentityExpired
	case st.HasSVID && st.IssuerSerial == "":
		return IdentityUntrusted
	case st.HasSVID:
		return IdentityValid
	case requested:
		return IdentityPending
	}
	return IdentityMissing
}

// podsByIdentity returns this node's pods ("namespace/name") by SPIFFE ID,
// for each of the trust domains tds; pods with mTLS disabled (their
// namespace's mode label) have none.
func (a *Agent) podsByIdentity(tds map[string]bool) map[string][]string {
	out := map[string][]string{}
	if len(tds) == 0 {
		return out
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	for _, le := range a.local {
		ep := le.ep
		if ep == nil || ep.ServiceAccount == "" || a.modeOf(ep) == xds.MTLSDisabled {
			continue // no identity: mTLS is off for the pod's namespace
		}
		for td := range tds {
			id := identity.SPIFFEID(td, ep.Namespace, ep.ServiceAccount)
			out[id] = append(out[id], ep.Namespace+"/"+ep.Name)
		}
	}
	return out
}

// Certs implements Server.
func (a *Agent) Certs(_ context.Context, req *CertsRequest) (*CertChains, error) {
	if a.idSource == nil {
		return nil, ErrMTLSDisabled
	}
	if req == nil {
		req = &CertsRequest{}
	}
	snap := a.idSource.Snapshot()
	out := &CertChains{Node: a.cfg.NodeName, Source: a.identitySourceName(), Chains: []SVIDChain{}}
	svids := snap.SVIDs()
	if req.SPIFFEID != "" {
		id, err := spiffeid.FromString(req.SPIFFEID)
		if err != nil {
			return nil, fmt.Errorf("SPIFFE ID %q: %w", req.SPIFFEID, err)
		}
		v, ok := snap.SVID(id)
		if !ok {
			var have []string
			for _, v := range svids {
				have = append(have, v.ID().String())
			}
			if len(have) == 0 {
				return nil, fmt.Errorf("no SVID for %s on node %s: the node holds none yet", id, a.cfg.NodeName)
			}
			return nil, fmt.Errorf("no SVID for %s on node %s (it holds %s)", id, a.cfg.NodeName, strings.Join(have, ", "))
		}
		svids = []*certs.SVID{v}
	}
	for _, v := range svids {
		c := SVIDChain{SPIFFEID: v.ID().String()}
		chain := v.Chain()
		for _, x := range chain {
			c.Certificates = append(c.Certificates, DescribeCertificate(x, req.PEM))
		}
		if r := issuingRoot(chain, v.ID().TrustDomain(), snap.Bundle); r != nil {
			ri := DescribeCertificate(r, req.PEM)
			c.Root = &ri
		}
		out.Chains = append(out.Chains, c)
	}
	return out, nil
}

// DescribeCertificate decodes c; with withPEM it adds c's PEM (the
// certificate only: there is no key in an x509.Certificate).
func DescribeCertificate(c *x509.Certificate, withPEM bool) CertificateInfo {
	ci := CertificateInfo{
		Subject:            c.Subject.String(),
		Issuer:             c.Issuer.String(),
		Serial:             c.SerialNumber.Text(16),
		NotBefore:          c.NotBefore,
		NotAfter:           c.NotAfter,
		DNSSANs:            c.DNSNames,
		KeyUsage:           keyUsages(c.KeyUsage),
		IsCA:               c.IsCA,
		SignatureAlgorithm: c.SignatureAlgorithm.String(),
		PublicKeyAlgorithm: publicKeyAlgorithm(c),
		SHA256:             fingerprint(c),
	}
	for _, u := range c.URIs {
		ci.URISANs = append(ci.URISANs, u.String())
	}
	for _, e := range c.ExtKeyUsage {
		ci.ExtKeyUsage = append(ci.ExtKeyUsage, extKeyUsageName(e))
	}
	for _, oid := range c.UnknownExtKeyUsage {
		ci.ExtKeyUsage = append(ci.ExtKeyUsage, oid.String())
	}
	if withPEM {
		ci.PEM = string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: c.Raw}))
	}
	return ci
}

func fingerprint(c *x509.Certificate) string {
	sum := sha256.Sum256(c.Raw)
	h := strings.ToUpper(hex.EncodeToString(sum[:]))
	var b strings.Builder
	for i := 0; i < len(h); i += 2 {
		if i > 0 {
			b.WriteByte(':')
		}
		b.WriteString(h[i : i+2])
	}
	return b.String()
}

func publicKeyAlgorithm(c *x509.Certificate) string {
	switch k := c.PublicKey.(type) {
	case *ecdsa.PublicKey:
		return "ECDSA " + k.Curve.Params().Name
	case *rsa.PublicKey:
		return fmt.Sprintf("RSA %d", k.N.BitLen())
	case ed25519.PublicKey:
		return "Ed25519"
	}
	return c.PublicKeyAlgorithm.String()
}

var keyUsageNames = []struct {
	ku   x509.KeyUsage
	name string
}{
	{x509.KeyUsageDigitalSignature, "digitalSignature"},
	{x509.KeyUsageContentCommitment, "contentCommitment"},
	{x509.KeyUsageKeyEncipherment, "keyEncipherment"},
	{x509.KeyUsageDataEncipherment, "dataEncipherment"},
	{x509.KeyUsageKeyAgreement, "keyAgreement"},
	{x509.KeyUsageCertSign, "keyCertSign"},
	{x509.KeyUsageCRLSign, "cRLSign"},
	{x509.KeyUsageEncipherOnly, "encipherOnly"},
	{x509.KeyUsageDecipherOnly, "decipherOnly"},
}

func keyUsages(ku x509.KeyUsage) []string {
	var out []string
	for _, k := range keyUsageNames {
		if ku&k.ku != 0 {
			out = append(out, k.name)
		}
	}
	return out
}

var extKeyUsageNames = map[x509.ExtKeyUsage]string{
	x509.ExtKeyUsageAny:             "any",
	x509.ExtKeyUsageServerAuth:      "serverAuth",
	x509.ExtKeyUsageClientAuth:      "clientAuth",
	x509.ExtKeyUsageCodeSigning:     "codeSigning",
	x509.ExtKeyUsageEmailProtection: "emailProtection",
	x509.ExtKeyUsageTimeStamping:    "timeStamping",
	x509.ExtKeyUsageOCSPSigning:     "OCSPSigning",
}

func extKeyUsageName(e x509.ExtKeyUsage) string {
	if n, ok := extKeyUsageNames[e]; ok {
		return n
	}
	return fmt.Sprintf("extKeyUsage(%d)", int(e))
}
