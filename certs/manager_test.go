package certs_test

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"io"
	"net"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/nodemesh/nodemesh/api"
	"github.com/nodemesh/nodemesh/certs"
	"github.com/nodemesh/nodemesh/certs/certstest"
	"github.com/nodemesh/nodemesh/certs/worldauth"
)

var dbID = spiffeid.RequireFromString("spiffe://cluster.local/ns/prod/sa/db")

func pod(ns, name, node, sa string) api.Pod {
	return api.Pod{Metadata: api.ObjectMeta{Namespace: ns, Name: name}, Spec: api.PodSpec{NodeName: node, ServiceAccountName: sa}}
}

func workload(ns, name, sa string) certs.Workload {
	return certs.Workload{Namespace: ns, Pod: name, ServiceAccount: sa}
}

// startManager runs a Manager of node-a until the test ends.
func startManager(t *testing.T, issuer certs.Issuer, clock certs.Clock, tweak ...func(*certs.ManagerConfig)) *certs.Manager {
	t.Helper()
	cfg := certs.ManagerConfig{NodeName: "node-a", TrustDomain: "cluster.local", Clock: clock}
	for _, f := range tweak {
		f(&cfg)
	}
	m, err := certs.NewManager(cfg, issuer)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- m.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Run: %v", err)
		}
	})
	return m
}

func waitFor(t *testing.T, src certs.Source, what string, cond func(*certs.Snapshot) bool) *certs.Snapshot {
	t.Helper()
	return certstest.WaitForSnapshot(t, src, what, cond)
}

func statusOf(t *testing.T, m *certs.Manager, id string) certs.IdentityStatus {
	t.Helper()
	for _, st := range m.Status() {
		if st.ID.String() == id {
			return st
		}
	}
	t.Fatalf("no status for %s in %+v", id, m.Status())
	return certs.IdentityStatus{}
}

func TestManagerIssuesAndRenewsAtHalfLife(t *testing.T) {
	clock := certstest.NewClock(t0)
	world := &api.World{Pods: []api.Pod{pod("prod", "web-1", "node-a", "web"), pod("prod", "web-2", "node-a", "web"), pod("prod", "db-1", "node-a", "db")}}
	ca := certstest.NewCA(t, certs.CAConfig{Clock: clock}, worldauth.New(world))
	m := startManager(t, ca, clock)
	if err := m.SetWorkloads([]certs.Workload{workload("prod", "web-1", "web"), workload("prod", "web-2", "web"), workload("prod", "db-1", "db")}); err != nil {
		t.Fatal(err)
	}
	first := waitFor(t, m, "web and db SVIDs", func(s *certs.Snapshot) bool { return s.Len() == 2 })
	for _, s := range first.SVIDs() {
		if _, err := certs.VerifySVID(s.Chain(), first.Bundle, clock.Now()); err != nil {
			t.Fatalf("%s: %v", s, err)
		}
		if !s.NotAfter().Equal(t0.Add(time.Hour)) {
			t.Fatalf("%s: want 1h", s)
		}
	}
	webSVID, _ := first.SVID(spiffeid.RequireFromString(webID))
	st := statusOf(t, m, webID)
	if len(st.Pods) != 2 || st.Pods[0].Pod != "web-1" || st.Pods[1].Pod != "web-2" || st.SVID != webSVID {
		t.Fatalf("status %+v", st)
	}
	if !st.NextRequest.Equal(t0.Add(30 * time.Minute)) {
		t.Fatalf("renewal at %s, want half-life %s", st.NextRequest, t0.Add(30*time.Minute))
	}

	// The loop waits for half-life and nothing earlier.
	clock.WaitForTimer(t, t0.Add(30*time.Minute))
	clock.Advance(30 * time.Minute)
	renewed := waitFor(t, m, "renewed SVIDs", func(s *certs.Snapshot) bool {
		for _, v := range s.SVIDs() {
			if v.Leaf().SerialNumber.Cmp(mustSVID(t, first, v.ID()).Leaf().SerialNumber) == 0 {
				return false
			}
		}
		return s.Len() == 2
	})
	for _, s := range renewed.SVIDs() {
		// Issued at 30m: NotBefore is the issuance time less the 5m backdate.
		if !s.Leaf().NotBefore.Equal(t0.Add(25*time.Minute)) || !s.NotAfter().Equal(t0.Add(90*time.Minute)) {
			t.Fatalf("renewed %s valid %s to %s; want from 25m to 90m", s, s.Leaf().NotBefore, s.NotAfter())
		}
	}
	if got := statusOf(t, m, dbID.String()).NextRequest; !got.Equal(t0.Add(60 * time.Minute)) {
		t.Fatalf("next renewal %s, want 60m", got)
	}
	if renewed.Generation <= first.Generation {
		t.Fatal("generation did not grow")
	}
}

func mustSVID(t *testing.T, s *certs.Snapshot, id spiffeid.ID) *certs.SVID {
	t.Helper()
	v, ok := s.SVID(id)
	if !ok {
		t.Fatalf("no SVID for %s", id)
	}
	return v
}

func TestManagerRenewFraction(t *testing.T) {
	clock := certstest.NewClock(t0)
	m := startManager(t, newCA(t, clock), clock, func(c *certs.ManagerConfig) { c.RenewFraction = 0.8 })
	m.SetWorkloads([]certs.Workload{web})
	waitFor(t, m, "web SVID", func(s *certs.Snapshot) bool { return s.Len() == 1 })
	if got := statusOf(t, m, webID).NextRequest; !got.Equal(t0.Add(48 * time.Minute)) {
		t.Fatalf("renewal at %s, want 48m", got)
	}
}

func TestManagerWorkloadsComeAndGo(t *testing.T) {
	clock := certstest.NewClock(t0)
	m := startManager(t, newCA(t, clock), clock)
	err := m.SetWorkloads([]certs.Workload{workload("prod", "web-1", "web"), workload("prod", "web-2", "web"), workload("prod", "bad", "")})
	if err == nil || !strings.Contains(err.Error(), "prod/bad") {
		t.Fatalf("a workload without service account: %v", err)
	}
	s1 := waitFor(t, m, "web SVID", func(s *certs.Snapshot) bool { return s.Len() == 1 })
	v1 := mustSVID(t, s1, spiffeid.RequireFromString(webID))

	m.SetWorkloads([]certs.Workload{workload("prod", "web-2", "web"), workload("prod", "db-1", "db")})
	s2 := waitFor(t, m, "db SVID", func(s *certs.Snapshot) bool { return s.Len() == 2 })
	if mustSVID(t, s2, spiffeid.RequireFromString(webID)) != v1 {
		t.Fatal("web's SVID was reissued though a pod of web remained")
	}
	m.SetWorkloads([]certs.Workload{workload("prod", "db-1", "db")})
	s3 := waitFor(t, m, "web gone", func(s *certs.Snapshot) bool { return s.Len() == 1 })
	if _, ok := s3.SVID(dbID); !ok {
		t.Fatal("db's SVID went away with web's")
	}
}

func TestManagerRetriesUntilAuthorized(t *testing.T) {
	clock := certstest.NewClock(t0)
	authz := worldauth.New(&api.World{Pods: []api.Pod{pod("prod", "web-1", "node-b", "web")}})
	ca := certstest.NewCA(t, certs.CAConfig{Clock: clock}, authz)
	m := startManager(t, ca, clock)
	m.SetWorkloads([]certs.Workload{web})

	clock.WaitForTimer(t, t0.Add(time.Second))
	st := statusOf(t, m, webID)
	if st.SVID != nil || st.Failures != 1 || !strings.Contains(st.LastError, "pod-on-other-node") || !st.NextRequest.Equal(t0.Add(time.Second)) {
		t.Fatalf("after a denial: %+v", st)
	}
	clock.Advance(time.Second)
	clock.WaitForTimer(t, t0.Add(3*time.Second)) // backoff doubled
	if st := statusOf(t, m, webID); st.Failures != 2 {
		t.Fatalf("after the retry: %+v", st)
	}

	// The pod moves here; the agent passes its new world on, which retries.
	authz.SetWorld(&api.World{Pods: []api.Pod{pod("prod", "web-1", "node-a", "web")}})
	m.SetWorkloads([]certs.Workload{web})
	waitFor(t, m, "web SVID", func(s *certs.Snapshot) bool { return s.Len() == 1 })
	if st := statusOf(t, m, webID); st.Failures != 0 || st.LastError != "" {
		t.Fatalf("after success: %+v", st)
	}
}

// TestManagerFollowsCARotation runs a CA rotation under a Manager: no
// snapshot ever holds an SVID its own bundle does not trust.
func TestManagerFollowsCARotation(t *testing.T) {
	clock := certstest.NewClock(t0)
	ca := newCA(t, clock)
	root1 := ca.Roots()[0].Cert
	m := startManager(t, ca, clock)
	var bad atomic.Value
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go m.Watch(ctx, func(s *certs.Snapshot) {
		for _, v := range s.SVIDs() {
			if _, err := certs.VerifySVID(v.Chain(), s.Bundle, clock.Now()); err != nil {
				bad.Store(err)
			}
		}
	})
	m.SetWorkloads([]certs.Workload{web})
	waitFor(t, m, "web SVID", func(s *certs.Snapshot) bool { return s.Len() == 1 })
	clock.WaitForTimer(t, t0.Add(30*time.Minute))

	info, err := ca.AddRoot(t0.Add(10 * time.Minute))
	if err != nil {
		t.Fatal(err)
	}
	root2 := info.Cert
	s := waitFor(t, m, "bundle with both roots", func(s *certs.Snapshot) bool { return len(s.Bundle.Roots(td)) == 2 })
	if !signedBy(mustSVID(t, s, spiffeid.RequireFromString(webID)), root1) {
		t.Fatal("SVID reissued by the pending root")
	}
	clock.Advance(10 * time.Minute) // the new root signs from now on
	clock.WaitForTimer(t, t0.Add(70*time.Minute))
	clock.Advance(20 * time.Minute) // half-life: renewal
	s = waitFor(t, m, "SVID of the new root", func(s *certs.Snapshot) bool {
		v, ok := s.SVID(spiffeid.RequireFromString(webID))
		return ok && signedBy(v, root2)
	})
	clock.WaitForTimer(t, t0.Add(60*time.Minute))
	clock.Advance(40 * time.Minute) // the overlap is over
	s = waitFor(t, m, "bundle without the old root", func(s *certs.Snapshot) bool { return len(s.Bundle.Roots(td)) == 1 })
	if !s.Bundle.Roots(td)[0].Equal(root2) || s.Len() != 1 {
		t.Fatalf("final snapshot: roots %v, %d SVIDs", s.Bundle.Roots(td), s.Len())
	}
	if err, _ := bad.Load().(error); err != nil {
		t.Fatalf("a snapshot held an SVID its bundle does not trust: %v", err)
	}
}

// switchIssuer stands for a CA that restarts with a new root.
type switchIssuer struct {
	mu      sync.Mutex
	ca      *certs.CA
	changed chan struct{}
}

func (s *switchIssuer) current() (*certs.CA, chan struct{}) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.ca, s.changed
}

func (s *switchIssuer) set(ca *certs.CA) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.ca = ca
	close(s.changed)
	s.changed = make(chan struct{})
}

func (s *switchIssuer) Sign(ctx context.Context, req certs.SignRequest) ([]*x509.Certificate, error) {
	ca, _ := s.current()
	return ca.Sign(ctx, req)
}

func (s *switchIssuer) WatchBundle(ctx context.Context, fn func(*certs.Bundle)) error {
	for ctx.Err() == nil {
		ca, changed := s.current()
		sub, cancel := context.WithCancel(ctx)
		go func() {
			select {
			case <-changed:
			case <-sub.Done():
			}
			cancel()
		}()
		ca.WatchBundle(sub, fn)
		cancel()
	}
	return nil
}

func TestManagerReissuesWhenRootDisappears(t *testing.T) {
	clock := certstest.NewClock(t0)
	issuer := &switchIssuer{ca: newCA(t, clock), changed: make(chan struct{})}
	m := startManager(t, issuer, clock)
	m.SetWorkloads([]certs.Workload{web})
	waitFor(t, m, "web SVID", func(s *certs.Snapshot) bool { return s.Len() == 1 })

	ca2 := newCA(t, clock)
	issuer.set(ca2)
	// No clock movement: the untrusted SVID is replaced at once.
	s := waitFor(t, m, "SVID of the new CA", func(s *certs.Snapshot) bool {
		v, ok := s.SVID(spiffeid.RequireFromString(webID))
		return ok && signedBy(v, ca2.Roots()[0].Cert) && len(s.Bundle.Roots(td)) == 1 && s.Bundle.Roots(td)[0].Equal(ca2.Roots()[0].Cert)
	})
	if _, err := certs.VerifySVID(mustSVID(t, s, spiffeid.RequireFromString(webID)).Chain(), s.Bundle, clock.Now()); err != nil {
		t.Fatal(err)
	}
}

// failingIssuer signs once, then fails.
type failingIssuer struct {
	*certs.CA
	signed atomic.Bool
}

func (f *failingIssuer) Sign(ctx context.Context, req certs.SignRequest) ([]*x509.Certificate, error) {
	if f.signed.Swap(true) {
		return nil, errors.New("ca unreachable")
	}
	return f.CA.Sign(ctx, req)
}

func TestManagerDropsExpiredSVID(t *testing.T) {
	clock := certstest.NewClock(t0)
	m := startManager(t, &failingIssuer{CA: newCA(t, clock)}, clock)
	m.SetWorkloads([]certs.Workload{web})
	waitFor(t, m, "web SVID", func(s *certs.Snapshot) bool { return s.Len() == 1 })
	clock.WaitForTimer(t, t0.Add(30*time.Minute))
	clock.Advance(30 * time.Minute)
	clock.WaitForTimer(t, t0.Add(30*time.Minute+time.Second)) // renewal failed, retrying
	if s := m.Snapshot(); s.Len() != 1 {
		t.Fatal("SVID dropped while still valid")
	}
	clock.Advance(30 * time.Minute)
	waitFor(t, m, "expired SVID gone", func(s *certs.Snapshot) bool { return s.Len() == 0 })
	if st := statusOf(t, m, webID); st.SVID != nil || !strings.Contains(st.LastError, "ca unreachable") {
		t.Fatalf("status %+v", st)
	}
}

func TestManagerConfigValidate(t *testing.T) {
	tests := []struct {
		name    string
		tweak   func(*certs.ManagerConfig)
		wantErr string
	}{
		{name: "valid", tweak: func(*certs.ManagerConfig) {}},
		{name: "no node", tweak: func(c *certs.ManagerConfig) { c.NodeName = "" }, wantErr: "node name is required"},
		{name: "fraction 1", tweak: func(c *certs.ManagerConfig) { c.RenewFraction = 1 }, wantErr: "--svid-renew-fraction"},
		{name: "no concurrency", tweak: func(c *certs.ManagerConfig) { c.Concurrency = -1 }, wantErr: "--svid-sign-concurrency"},
		{name: "retry max below min", tweak: func(c *certs.ManagerConfig) { c.RetryMax = time.Millisecond }, wantErr: "--svid-retry-max"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := certs.ManagerConfig{NodeName: "node-a"}
			c.Defaults()
			tt.tweak(&c)
			err := c.Validate()
			if (err != nil) != (tt.wantErr != "") || (err != nil && !strings.Contains(err.Error(), tt.wantErr)) {
				t.Fatalf("Validate: %v, want %q", err, tt.wantErr)
			}
		})
	}
}

// TestSVIDsWorkForMutualTLS: the Manager's SVIDs authenticate both ends of
// a TLS 1.3 connection verified with VerifySVID, as the proxies will use
// them; a client whose SVID comes from another CA is refused as
// svid-unknown-ca.
func TestSVIDsWorkForMutualTLS(t *testing.T) {
	clock := certs.SystemClock{}
	m := startManager(t, newCA(t, clock), clock)
	m.SetWorkloads([]certs.Workload{web, workload("prod", "db-1", "db")})
	snap := waitFor(t, m, "two SVIDs", func(s *certs.Snapshot) bool { return s.Len() == 2 })
	webSVID, dbSVID := mustSVID(t, snap, spiffeid.RequireFromString(webID)), mustSVID(t, snap, dbID)

	config := func(s *certs.SVID, peer *spiffeid.ID) *tls.Config {
		return &tls.Config{
			MinVersion:         tls.VersionTLS13,
			Certificates:       []tls.Certificate{s.TLSCertificate()},
			ClientAuth:         tls.RequireAnyClientCert,
			InsecureSkipVerify: true, // VerifyPeerCertificate does the SPIFFE verification
			VerifyPeerCertificate: func(raw [][]byte, _ [][]*x509.Certificate) error {
				var chain []*x509.Certificate
				for _, r := range raw {
					c, err := x509.ParseCertificate(r)
					if err != nil {
						return err
					}
					chain = append(chain, c)
				}
				id, err := certs.VerifySVID(chain, snap.Bundle, time.Now())
				*peer = id
				return err
			},
		}
	}
	// Over loopback TCP: the kernel's buffers let both ends write at once,
	// as a refused client does while the server sends its alert.
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	handshake := func(client *certs.SVID) (serverSaw, clientSaw spiffeid.ID, serverErr error) {
		errc := make(chan error, 1)
		go func() {
			conn, err := ln.Accept()
			if err != nil {
				errc <- err
				return
			}
			defer conn.Close()
			conn.SetDeadline(time.Now().Add(10 * time.Second))
			srv := tls.Server(conn, config(dbSVID, &serverSaw))
			err = srv.Handshake()
			if err == nil {
				_, err = io.ReadAll(srv)
			}
			errc <- err
		}()
		conn, err := net.Dial("tcp", ln.Addr().String())
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Close()
		conn.SetDeadline(time.Now().Add(10 * time.Second))
		cl := tls.Client(conn, config(client, &clientSaw))
		if err := cl.Handshake(); err == nil {
			cl.Write([]byte("hello"))
			cl.Close()
		}
		return serverSaw, clientSaw, <-errc
	}
	serverSaw, clientSaw, err := handshake(webSVID)
	if err != nil {
		t.Fatalf("handshake: %v", err)
	}
	if serverSaw.String() != webID || clientSaw != dbID {
		t.Fatalf("server saw %s, client saw %s", serverSaw, clientSaw)
	}
	stranger := certstest.NewAuthority(t, "cluster.local").MintSVID(t, webID)
	if _, _, err := handshake(stranger); certs.ReasonOf(err) != certs.ReasonUnknownCA {
		t.Fatalf("client with another CA's SVID: %v", err)
	}
}
