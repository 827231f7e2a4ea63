package spire_test

import (
	"context"
	"crypto"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"google.golang.org/grpc/codes"

	"github.com/nodemesh/nodemesh/certs"
	"github.com/nodemesh/nodemesh/certs/certstest"
	"github.com/nodemesh/nodemesh/certs/spire"
	"github.com/nodemesh/nodemesh/certs/spire/spiretest"
)

var (
	td    = spiffeid.RequireTrustDomainFromString("cluster.local")
	fedTD = spiffeid.RequireTrustDomainFromString("partner.test")
	webID = spiffeid.RequireFromString("spiffe://cluster.local/ns/prod/sa/web")
	dbID  = spiffeid.RequireFromString("spiffe://cluster.local/ns/prod/sa/db")
)

// start runs a Source against srv until the test ends.
func start(t *testing.T, srv *spiretest.Server) *spire.Source {
	t.Helper()
	src, err := spire.New(spire.Config{Addr: srv.Addr, RetryMax: 50 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- src.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Run: %v", err)
		}
	})
	return src
}

func get(t *testing.T, s *certs.Snapshot, id spiffeid.ID) *certs.SVID {
	t.Helper()
	v, ok := s.SVID(id)
	if !ok {
		t.Fatalf("no SVID for %s in %v", id, s.SVIDs())
	}
	return v
}

func TestSourceReceivesSVIDsAndBundles(t *testing.T) {
	ca := certstest.NewAuthority(t, "cluster.local")
	partner := certstest.NewAuthority(t, "partner.test")
	web, db := ca.MintSVID(t, webID.String()), ca.MintSVID(t, dbID.String())
	srv := spiretest.Start(t)
	srv.SetX509([]*certs.SVID{web, db}, ca.Bundle(partner))
	src := start(t, srv)

	s := certstest.WaitForSnapshot(t, src, "two SVIDs", func(s *certs.Snapshot) bool { return s.Len() == 2 })
	for _, want := range []*certs.SVID{web, db} {
		got := get(t, s, want.ID())
		if !got.Leaf().Equal(want.Leaf()) {
			t.Fatalf("%s: another certificate", want.ID())
		}
		if !got.PrivateKey().Public().(interface{ Equal(crypto.PublicKey) bool }).Equal(want.Leaf().PublicKey) {
			t.Fatalf("%s: key does not match", want.ID())
		}
	}
	if s.Bundle.Version() != 1 || len(s.Bundle.Roots(td)) != 1 || !s.Bundle.Roots(td)[0].Equal(ca.Cert) ||
		len(s.Bundle.Roots(fedTD)) != 1 || !s.Bundle.Roots(fedTD)[0].Equal(partner.Cert) {
		t.Fatalf("bundle version %d, trust domains %v", s.Bundle.Version(), s.Bundle.TrustDomains())
	}
}

// TestSourceFollowsRotation pushes an SVID renewal and a CA rotation
// (new root added, SVIDs reissued by it, old root dropped) through one
// open stream.
func TestSourceFollowsRotation(t *testing.T) {
	ca := certstest.NewAuthority(t, "cluster.local")
	web, db := ca.MintSVID(t, webID.String()), ca.MintSVID(t, dbID.String())
	srv := spiretest.Start(t)
	srv.SetX509([]*certs.SVID{web, db}, ca.Bundle())
	src := start(t, srv)
	s1 := certstest.WaitForSnapshot(t, src, "two SVIDs", func(s *certs.Snapshot) bool { return s.Len() == 2 })

	// Renewal of one SVID.
	web2 := ca.MintSVID(t, webID.String())
	srv.SetX509([]*certs.SVID{web2, db}, ca.Bundle())
	s2 := certstest.WaitForSnapshot(t, src, "renewed web", func(s *certs.Snapshot) bool {
		v, ok := s.SVID(webID)
		return ok && v.Leaf().Equal(web2.Leaf())
	})
	if get(t, s2, dbID) != get(t, s1, dbID) || s2.Bundle != s1.Bundle {
		t.Fatal("the unchanged SVID or bundle was replaced")
	}

	// CA rotation: both roots, then SVIDs of the new one, then the new root alone.
	next := certstest.NewAuthority(t, "cluster.local")
	srv.SetX509([]*certs.SVID{web2, db}, ca.Bundle(next))
	s3 := certstest.WaitForSnapshot(t, src, "bundle with both roots", func(s *certs.Snapshot) bool { return len(s.Bundle.Roots(td)) == 2 })
	if s3.Bundle.Version() != 2 || get(t, s3, webID) != get(t, s2, webID) {
		t.Fatalf("bundle version %d, want 2, SVIDs kept", s3.Bundle.Version())
	}
	web3, db3 := next.MintSVID(t, webID.String()), next.MintSVID(t, dbID.String())
	srv.SetX509([]*certs.SVID{web3, db3}, ca.Bundle(next))
	certstest.WaitForSnapshot(t, src, "SVIDs of the new root", func(s *certs.Snapshot) bool {
		v, ok := s.SVID(dbID)
		return ok && v.Leaf().Equal(db3.Leaf()) && get(t, s, webID).Leaf().Equal(web3.Leaf())
	})
	srv.SetX509([]*certs.SVID{web3, db3}, next.Bundle())
	s5 := certstest.WaitForSnapshot(t, src, "old root dropped", func(s *certs.Snapshot) bool { return len(s.Bundle.Roots(td)) == 1 })
	if !s5.Bundle.Roots(td)[0].Equal(next.Cert) || s5.Bundle.Version() != 3 || s5.Len() != 2 {
		t.Fatalf("final: version %d, %d SVIDs", s5.Bundle.Version(), s5.Len())
	}
	for _, v := range s5.SVIDs() {
		if _, err := certs.VerifySVID(v.Chain(), s5.Bundle, time.Now()); err != nil {
			t.Fatal(err)
		}
	}
	if srv.Calls() != 1 {
		t.Fatalf("%d streams; the rotation should have used the first", srv.Calls())
	}
}

// TestSourceWithoutEntries: SPIRE refuses the stream with PermissionDenied
// when no registration entry matches the agent; the source then holds no
// SVIDs, keeps the bundle, and recovers when entries come back.
func TestSourceWithoutEntries(t *testing.T) {
	ca := certstest.NewAuthority(t, "cluster.local")
	web := ca.MintSVID(t, webID.String())
	srv := spiretest.Start(t)
	srv.SetX509([]*certs.SVID{web}, ca.Bundle())
	src := start(t, srv)
	certstest.WaitForSnapshot(t, src, "web", func(s *certs.Snapshot) bool { return s.Len() == 1 })

	srv.SetError(codes.PermissionDenied, "no identity issued")
	s := certstest.WaitForSnapshot(t, src, "no SVIDs", func(s *certs.Snapshot) bool { return s.Len() == 0 })
	if len(s.Bundle.Roots(td)) != 1 {
		t.Fatal("bundle lost")
	}
	srv.SetX509([]*certs.SVID{web}, ca.Bundle())
	certstest.WaitForSnapshot(t, src, "web again", func(s *certs.Snapshot) bool { return s.Len() == 1 })
}

// TestSourceSkipsInvalidSVIDs: an SVID its peers would refuse is not
// served; the valid ones are.
func TestSourceSkipsInvalidSVIDs(t *testing.T) {
	ca := certstest.NewAuthority(t, "cluster.local")
	stranger := certstest.NewAuthority(t, "cluster.local")
	expired := ca.MintSVID(t, webID.String(), certstest.Expired())
	unknown := stranger.MintSVID(t, "spiffe://cluster.local/ns/prod/sa/other")
	db := ca.MintSVID(t, dbID.String())
	srv := spiretest.Start(t)
	srv.SetX509([]*certs.SVID{expired, unknown, db}, ca.Bundle())
	src := start(t, srv)
	s := certstest.WaitForSnapshot(t, src, "the valid SVID", func(s *certs.Snapshot) bool { return s.Len() > 0 })
	if s.Len() != 1 || get(t, s, dbID) == nil {
		t.Fatalf("served %v", s.SVIDs())
	}
}

// TestSourceKeepsFirstOfOneID: of two SVIDs for one SPIFFE ID, the first
// (the Workload API's default) is served.
func TestSourceKeepsFirstOfOneID(t *testing.T) {
	ca := certstest.NewAuthority(t, "cluster.local")
	a, b := ca.MintSVID(t, webID.String()), ca.MintSVID(t, webID.String())
	srv := spiretest.Start(t)
	srv.SetX509([]*certs.SVID{a, b}, ca.Bundle())
	src := start(t, srv)
	s := certstest.WaitForSnapshot(t, src, "web", func(s *certs.Snapshot) bool { return s.Len() == 1 })
	if !get(t, s, webID).Leaf().Equal(a.Leaf()) {
		t.Fatal("not the first SVID")
	}
}

// TestSourceWaitsForTheAgent: the node agent may start before SPIRE's, and
// SPIRE's may restart; the source retries until the socket answers.
func TestSourceWaitsForTheAgent(t *testing.T) {
	sock := filepath.Join(t.TempDir(), "agent.sock")
	src := start(t, &spiretest.Server{Addr: "unix://" + sock}) // nothing listens yet
	ca := certstest.NewAuthority(t, "cluster.local")
	srv := spiretest.StartAt(t, sock)
	srv.SetX509([]*certs.SVID{ca.MintSVID(t, webID.String())}, ca.Bundle())
	certstest.WaitForSnapshot(t, src, "web", func(s *certs.Snapshot) bool { return s.Len() == 1 })

	srv.Stop()
	restarted := spiretest.StartAt(t, sock)
	db := ca.MintSVID(t, dbID.String())
	restarted.SetX509([]*certs.SVID{db}, ca.Bundle())
	certstest.WaitForSnapshot(t, src, "db from the restarted agent", func(s *certs.Snapshot) bool {
		v, ok := s.SVID(dbID)
		return ok && v.Leaf().Equal(db.Leaf()) && s.Len() == 1
	})
}

func TestConfigValidate(t *testing.T) {
	for _, tt := range []struct{ addr, wantErr string }{
		{addr: "unix:///run/spire/sockets/agent.sock"},
		{addr: "tcp://127.0.0.1:8081"},
		{addr: "/run/spire/sockets/agent.sock", wantErr: "--spire-socket"},
		{addr: "tcp://localhost:8081", wantErr: "--spire-socket"},
	} {
		c := spire.Config{Addr: tt.addr}
		c.Defaults()
		err := c.Validate()
		if (err != nil) != (tt.wantErr != "") || (err != nil && !strings.Contains(err.Error(), tt.wantErr)) {
			t.Errorf("%s: %v, want %q", tt.addr, err, tt.wantErr)
		}
	}
}
