package certs_test

import (
	"context"
	"crypto/x509"
	"net"
	"testing"
	"time"

	"github.com/nodemesh/nodemesh/certs"
	"github.com/nodemesh/nodemesh/certs/certstest"
)

// FuzzSign feeds the CA arbitrary CSRs: it must never panic, and whatever it
// signs must be an X.509-SVID of exactly the requested workload's ID.
func FuzzSign(f *testing.F) {
	id := mustURL(webID)
	for _, tweak := range []func(*x509.CertificateRequest){
		func(*x509.CertificateRequest) {},
		func(r *x509.CertificateRequest) { r.DNSNames = []string{"web"} },
		func(r *x509.CertificateRequest) { r.IPAddresses = []net.IP{net.IPv6loopback} },
		func(r *x509.CertificateRequest) {
			r.URIs = append(r.URIs, mustURL("spiffe://cluster.local/ns/prod/sa/admin"))
		},
	} {
		_, csr := certstest.NewCSR(f, id, tweak)
		f.Add(csr.Raw)
	}
	clock := certstest.NewClock(t0)
	ca := certstest.NewCA(f, certs.CAConfig{Clock: clock}, nil)
	f.Fuzz(func(t *testing.T, der []byte) {
		csr, err := x509.ParseCertificateRequest(der)
		if err != nil {
			return
		}
		chain, err := ca.Sign(context.Background(), certs.SignRequest{Node: "node-a", Workload: web, CSR: csr})
		if err != nil {
			return
		}
		got, err := certs.VerifySVID(chain, ca.Bundle(), clock.Now().Add(time.Minute))
		if err != nil || got.String() != webID || len(chain[0].DNSNames)+len(chain[0].IPAddresses)+len(chain[0].EmailAddresses) > 0 {
			t.Fatalf("signed a CSR into %v (%v), SANs %v %v %v", got, err, chain[0].DNSNames, chain[0].IPAddresses, chain[0].EmailAddresses)
		}
	})
}
