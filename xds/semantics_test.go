package xds_test

import (
	"fmt"
	"net/netip"
	"testing"

	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"

	"github.com/nodemesh/nodemesh/api"
	"github.com/nodemesh/nodemesh/l7policy"
	"github.com/nodemesh/nodemesh/policy"
	"github.com/nodemesh/nodemesh/policy/policytest"
	"github.com/nodemesh/nodemesh/xds"
	"github.com/nodemesh/nodemesh/xds/xdstest"
)

// semanticRequests cover the random policies' HTTP rules (policytest's
// vocabulary) from both sides of each regex, header and query string.
var semanticRequests = []l7policy.Request{
	{Method: "GET", Path: "/userdata/42"},
	{Method: "GET", Path: "/userdata/42?x=1"},
	{Method: "GET", Path: "/userdata/42#top"},
	{Method: "GET", Path: "/userdata/42abc"},
	{Method: "GET", Path: "/userdata/abc"},
	{Method: "GET", Path: "/x/userdata/1"},
	{Method: "POST", Path: "/userdata/1"},
	{Method: "GETX", Path: "/userdata/1"},
	{Method: "GET", Path: "/public/x"},
	{Method: "DELETE", Path: "/public/"},
	{Method: "GET", Path: "/publicx"},
	{Method: "HEAD", Path: "/"},
	{Method: "HEAD", Path: "/?q"},
	{Method: "GET", Path: "/", Headers: map[string]string{"X-Token": "s3cret"}},
	{Method: "PUT", Path: "/", Headers: map[string]string{"x-token": "s3cret"}},
	{Method: "PUT", Path: "/", Headers: map[string]string{"X-Token": "s3cret2"}},
	{Method: "PUT", Path: "/a"},
}

// TestRBACSemantics checks that the generated RBAC enforces exactly the
// reference evaluator's L7 verdicts: on random worlds and policies, every
// flow whose compiled verdict sends a direction through the proxy is run
// through that node's listener as Envoy would (filter chain selection, RBAC
// evaluation) for every request, and compared with policy.Evaluator.Check.
// A connection to a pod and port no peer has a redirect entry for must find
// no chain, or one that refuses every request.
func TestRBACSemantics(t *testing.T) {
	worlds, flowsPer := 200, 300
	if testing.Short() {
		worlds, flowsPer = 40, 200
	}
	checked, allowed, redirected, unredirected := 0, 0, 0, 0
	for seed := range uint64(worlds) {
		g := policytest.NewRandom(seed)
		w := g.World(8 + g.R.IntN(20))
		text := g.Policies(w, 1+g.R.IntN(12))
		docs, err := api.DecodePolicies(fmt.Sprintf("seed-%d.yaml", seed), text)
		if err != nil {
			t.Fatalf("seed %d: %v", seed, err)
		}
		pols := policy.FromDocuments(docs)
		world := policy.NewWorld(w)
		ref := policy.NewEvaluator(world, pols)
		eng, err := policy.NewEngineFromWorld(w, pols)
		if err != nil {
			t.Fatal(err)
		}
		nodes := map[string]*xds.Resources{}
		resources := func(node string) *xds.Resources {
			if r, ok := nodes[node]; ok {
				return r
			}
			r, err := xds.Build(xds.InputFromEngine(eng, node, xds.Config{}))
			if err != nil {
				t.Fatalf("seed %d node %s: %v", seed, node, err)
			}
			checkResources(t, r)
			nodes[node] = r
			return r
		}
		for range flowsPer {
			f := g.Flow(w)
			if f.Proto != policy.ProtoTCP {
				continue
			}
			f.HTTP = nil
			got, err := eng.Check(f)
			if err != nil {
				continue // e.g. an unknown named port
			}
			src, err1 := world.ResolvePeer(f.From)
			dst, err2 := world.ResolvePeer(f.To)
			if err1 != nil || err2 != nil || !src.Addr.IsValid() || !dst.Addr.IsValid() {
				t.Fatalf("seed %d: flow %+v: %v %v", seed, f, err1, err2)
			}
			c := xdstest.Conn{Src: addrPort(src, 40000), Dst: addrPort(dst, got.Port)}
			for _, d := range []struct {
				name     string
				res      policy.DirectionResult
				local    policy.Peer
				listener string
			}{
				{"egress", got.Egress, src, xds.OutboundListenerName},
				{"ingress", got.Ingress, dst, xds.InboundListenerName},
			} {
				if d.local.Endpoint == nil {
					continue
				}
				l := listener(resources(d.local.Endpoint.Node), d.listener)
				if d.res.L7 == nil {
					if !hasRedirect(t, eng, d.local.Endpoint.Key(), d.name, got.Port) {
						unredirected++
						// Only a pod's portless chain (its port ranges)
						// may take it, and must refuse every request.
						if fc := findChain(t, l, c); fc != nil {
							for _, req := range semanticRequests {
								if ok, p, _ := xdstest.Authorize(fc, c, xdstest.Request{Method: req.Method, Path: req.Path, Headers: req.Headers}); ok {
									t.Fatalf("seed %d: %s of %s -> %s:%d has no redirect entry, yet chain %s allows %v (policy %s)", seed, d.name, f.From, f.To, got.Port, fc.GetName(), req, p)
								}
							}
						}
					}
					continue
				}
				redirected++
				// The destination's datapath sees the client's address.
				if up, err := xdstest.UpstreamOf(l, clusterByName(resources(d.local.Endpoint.Node), sides[d.listener].cluster), c); err != nil || up.Src != c.Src.Addr() {
					t.Fatalf("seed %d: %s of %s -> %s:%d: upstream %+v, %v; want from %v", seed, d.name, f.From, f.To, got.Port, up, err, c.Src.Addr())
				}
				fc := findChain(t, l, c)
				if fc == nil {
					t.Fatalf("seed %d: %s of %s -> %s:%d is redirected but no chain of %s serves it\ntable:\n%v", seed, d.name, f.From, f.To, got.Port, d.listener, table(eng, d.local.Endpoint.Key()))
				}
				for _, req := range semanticRequests {
					f.HTTP = &req
					want, err := ref.Check(f)
					if err != nil {
						t.Fatal(err)
					}
					wd := want.Egress
					if d.name == "ingress" {
						wd = want.Ingress
					}
					if wd.L7 == nil {
						t.Fatalf("seed %d: %s of %s -> %s:%d: compiled verdict redirects, reference has no L7 rules", seed, d.name, f.From, f.To, got.Port)
					}
					ok, policyName, err := xdstest.Authorize(fc, c, xdstest.Request{Method: req.Method, Path: req.Path, Host: req.Host, Headers: req.Headers})
					if err != nil {
						t.Fatal(err)
					}
					if ok != (wd.L7.Verdict == policy.Allowed) {
						t.Fatalf("seed %d: %s of %s -> %s:%d %s %s %v: proxy allows=%v (policy %q), reference %s (rules %v)\npolicies:\n%s\ntable:\n%v",
							seed, d.name, f.From, f.To, got.Port, req.Method, req.Path, req.Headers, ok, policyName, wd.L7.Verdict, wd.L7.Rules, text, table(eng, d.local.Endpoint.Key()))
					}
					checked++
					if ok {
						allowed++
					}
				}
				f.HTTP = nil
			}
		}
	}
	if redirected < 100 || allowed == 0 || allowed == checked {
		t.Fatalf("too few interesting cases: %d redirected directions, %d of %d requests allowed", redirected, allowed, checked)
	}
	t.Logf("RBAC semantics: %d requests on %d redirected directions over %d random worlds, 0 mismatches (%d allowed); %d unredirected directions found no chain or one refusing every request",
		checked, redirected, worlds, allowed, unredirected)
}

func findChain(t *testing.T, l *listenerv3.Listener, c xdstest.Conn) *listenerv3.FilterChain {
	t.Helper()
	if l == nil {
		return nil
	}
	fc, err := xdstest.FindFilterChain(l, c)
	if err != nil {
		t.Fatal(err)
	}
	return fc
}

// hasRedirect reports whether any entry of the pod's table redirects TCP
// port in the direction, for any peer.
func hasRedirect(t *testing.T, e *policy.Engine, pod, dir string, port uint16) bool {
	tbl, _, ok := e.Table(pod)
	if !ok {
		t.Fatalf("no table for %s", pod)
	}
	dt := &tbl.Ingress
	if dir == "egress" {
		dt = &tbl.Egress
	}
	for _, en := range dt.Entries() {
		if en.Action == policy.ActionRedirect && en.Proto == policy.ProtoTCP && en.Lo <= port && port <= en.Hi {
			return true
		}
	}
	return false
}

func table(e *policy.Engine, pod string) string {
	tbl, _, _ := e.Table(pod)
	return tbl.String()
}

func addrPort(p policy.Peer, port uint16) netip.AddrPort { return netip.AddrPortFrom(p.Addr, port) }
