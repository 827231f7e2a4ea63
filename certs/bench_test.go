package certs_test

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"fmt"
	"net/url"
	"syscall"
	"testing"
	"time"

	"github.com/nodemesh/nodemesh/api"
	"github.com/nodemesh/nodemesh/certs"
	"github.com/nodemesh/nodemesh/certs/certstest"
	"github.com/nodemesh/nodemesh/certs/worldauth"
)

func benchCA(b *testing.B, pods int) *certs.CA {
	w := &api.World{}
	for i := range pods {
		w.Pods = append(w.Pods, pod("prod", fmt.Sprintf("p%d", i), "node-a", fmt.Sprintf("sa%d", i)))
	}
	return certstest.NewCA(b, certs.CAConfig{}, worldauth.New(w))
}

func cpuTime() time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// BenchmarkSign is the CA's side of one SVID: CSR checks, authorization,
// signing.
func BenchmarkSign(b *testing.B) {
	ca := benchCA(b, 1)
	w := workload("prod", "p0", "sa0")
	_, csr := certstest.NewCSR(b, mustURL("spiffe://cluster.local/ns/prod/sa/sa0"))
	req := certs.SignRequest{Node: "node-a", Workload: w, CSR: csr}
	ctx := context.Background()
	b.ReportAllocs()
	for b.Loop() {
		if _, err := ca.Sign(ctx, req); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkCSRRoundTrip is one SVID end to end as the Manager gets it: key
// generation, CSR, Sign, and the checks on the answer.
func BenchmarkCSRRoundTrip(b *testing.B) {
	ca := benchCA(b, 1)
	w := workload("prod", "p0", "sa0")
	id := mustURL("spiffe://cluster.local/ns/prod/sa/sa0")
	ctx := context.Background()
	b.ReportAllocs()
	for b.Loop() {
		key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		if err != nil {
			b.Fatal(err)
		}
		der, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{URIs: []*url.URL{id}}, key)
		if err != nil {
			b.Fatal(err)
		}
		csr, err := x509.ParseCertificateRequest(der)
		if err != nil {
			b.Fatal(err)
		}
		chain, err := ca.Sign(ctx, certs.SignRequest{Node: "node-a", Workload: w, CSR: csr})
		if err != nil {
			b.Fatal(err)
		}
		if _, err := certs.NewSVID(chain, key); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkManager1000SVIDs: a node starting with 1,000 workloads of
// distinct service accounts, until its Manager publishes all 1,000 SVIDs.
// cpu-ms/op is the process's CPU time (all cores) per 1,000 SVIDs.
func BenchmarkManager1000SVIDs(b *testing.B) {
	const n = 1000
	ca := benchCA(b, n)
	var ws []certs.Workload
	for i := range n {
		ws = append(ws, workload("prod", fmt.Sprintf("p%d", i), fmt.Sprintf("sa%d", i)))
	}
	var cpu time.Duration
	for b.Loop() {
		m, err := certs.NewManager(certs.ManagerConfig{NodeName: "node-a"}, ca)
		if err != nil {
			b.Fatal(err)
		}
		ctx, cancel := context.WithCancel(context.Background())
		done := make(chan error, 1)
		start := cpuTime()
		go func() { done <- m.Run(ctx) }()
		m.SetWorkloads(ws)
		certstest.WaitForSnapshot(b, m, "1000 SVIDs", func(s *certs.Snapshot) bool { return s.Len() == n })
		cpu += cpuTime() - start
		cancel()
		<-done
	}
	b.ReportMetric(float64(cpu.Milliseconds())/float64(b.N), "cpu-ms/op")
}

func BenchmarkVerifySVID(b *testing.B) {
	ca := certstest.NewAuthority(b, "cluster.local")
	chain, _ := ca.Mint(b, webID)
	bundle := ca.Bundle()
	now := time.Now()
	b.ReportAllocs()
	for b.Loop() {
		if _, err := certs.VerifySVID(chain, bundle, now); err != nil {
			b.Fatal(err)
		}
	}
}
