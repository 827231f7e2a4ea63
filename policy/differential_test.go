package policy_test

import (
	"fmt"
	"reflect"
	"testing"

	"github.com/nodemesh/nodemesh/api"
	"github.com/nodemesh/nodemesh/identity"
	"github.com/nodemesh/nodemesh/policy"
	"github.com/nodemesh/nodemesh/policy/policytest"
)

// TestDifferential checks the compiled tables against the reference
// evaluator on random worlds, policies and flows: every field of every
// Result must agree.
func TestDifferential(t *testing.T) {
	worlds, flowsPer := 300, 400
	if testing.Short() {
		worlds, flowsPer = 40, 200
	}
	checked, denied, l7 := 0, 0, 0
	for seed := range uint64(worlds) {
		g := policytest.NewRandom(seed)
		w := g.World(8 + g.R.IntN(20))
		text := g.Policies(w, 1+g.R.IntN(12))
		docs, err := api.DecodePolicies(fmt.Sprintf("seed-%d.yaml", seed), text)
		if err != nil {
			t.Fatalf("seed %d: generated policies do not decode: %v\n%s", seed, err, text)
		}
		pols := policy.FromDocuments(docs)
		ref := policy.NewEvaluator(policy.NewWorld(w), pols)
		eng, err := policy.NewEngineFromWorld(w, pols)
		if err != nil {
			t.Fatal(err)
		}
		for range flowsPer {
			f := g.Flow(w)
			want, err1 := ref.Check(f)
			got, err2 := eng.Check(f)
			if (err1 == nil) != (err2 == nil) {
				t.Fatalf("seed %d flow %+v: reference error %v, compiled error %v", seed, f, err1, err2)
			}
			checked++
			if want.Verdict == policy.Denied {
				denied++
			}
			if want.L7 != nil {
				l7++
			}
			if !reflect.DeepEqual(want, got) {
				tbl, _, _ := eng.Table(want.To)
				t.Fatalf("seed %d: flow %s -> %s %s/%d http=%v\nreference: %+v\ncompiled:  %+v\npolicies:\n%s\ndestination table:\n%v", seed, f.From, f.To, f.Proto, f.Port, f.HTTP, want, got, text, tbl)
			}
		}
	}
	t.Logf("differential: %d flows over %d random worlds checked, 0 mismatches (%d denied, %d with L7 rules)", checked, worlds, denied, l7)
}

// TestIncrementalEngine applies random changes to one engine and, after
// each, compares it with a reference evaluator built from scratch.
func TestIncrementalEngine(t *testing.T) {
	runs, steps := 30, 60
	if testing.Short() {
		runs, steps = 8, 30
	}
	checked := 0
	for seed := range uint64(runs) {
		g := policytest.NewRandom(1000 + seed)
		w := g.World(20)
		text := g.Policies(w, 15)
		docs, err := api.DecodePolicies("p.yaml", text)
		if err != nil {
			t.Fatal(err)
		}
		all := policy.FromDocuments(docs)
		eng := policy.NewEngine(identity.NewMemoryAllocator())
		cur := &api.World{Nodes: w.Nodes, APIServerIPs: w.APIServerIPs, Namespaces: append([]api.Namespace(nil), w.Namespaces...)}
		for _, n := range w.Nodes {
			eng.UpsertNode(&n)
		}
		eng.SetAPIServerIPs(w.APIServerIPs)
		for i := range cur.Namespaces {
			if err := eng.UpsertNamespace(&cur.Namespaces[i]); err != nil {
				t.Fatal(err)
			}
		}
		active := map[string]*policy.Policy{}
		for step := range steps {
			var what string
			switch op := g.R.IntN(6); {
			case op == 0 || len(cur.Pods) == 0: // add a pod
				p := w.Pods[g.R.IntN(len(w.Pods))]
				p.Metadata.Name = fmt.Sprintf("s%d", step)
				p.Status.PodIP = fmt.Sprintf("10.0.%d.%d", 1+step%2, 100+step)
				cur.Pods = append(cur.Pods, p)
				what = "add pod " + p.Metadata.Name
				if err := eng.UpsertPod(&cur.Pods[len(cur.Pods)-1]); err != nil {
					t.Fatal(err)
				}
			case op == 1: // delete a pod
				i := g.R.IntN(len(cur.Pods))
				p := cur.Pods[i]
				cur.Pods = append(cur.Pods[:i], cur.Pods[i+1:]...)
				what = "delete pod " + p.Metadata.Name
				if err := eng.DeletePod(p.Metadata.Namespace + "/" + p.Metadata.Name); err != nil {
					t.Fatal(err)
				}
			case op == 2: // relabel a pod
				i := g.R.IntN(len(cur.Pods))
				cur.Pods[i].Metadata.Labels = map[string]string{"app": []string{"web", "db", "api"}[g.R.IntN(3)], "tier": "front"}
				what = "relabel pod"
				if err := eng.UpsertPod(&cur.Pods[i]); err != nil {
					t.Fatal(err)
				}
			case op == 3: // relabel a namespace
				i := g.R.IntN(len(cur.Namespaces))
				cur.Namespaces[i].Metadata.Labels = map[string]string{"env": []string{"prod", "dev"}[g.R.IntN(2)]}
				what = "relabel namespace " + cur.Namespaces[i].Metadata.Name
				if err := eng.UpsertNamespace(&cur.Namespaces[i]); err != nil {
					t.Fatal(err)
				}
			case op == 4: // add or replace a policy
				p := all[g.R.IntN(len(all))]
				active[p.Ref] = p
				what = "upsert " + p.Ref
				eng.UpsertPolicy(p)
			default: // delete a policy
				for ref := range active {
					delete(active, ref)
					eng.DeletePolicy(ref)
					what = "delete " + ref
					break
				}
			}
			var pols []*policy.Policy
			for _, p := range all {
				if active[p.Ref] == p {
					pols = append(pols, p)
				}
			}
			ref := policy.NewEvaluator(policy.NewWorld(cur), pols)
			if len(cur.Pods) == 0 {
				continue
			}
			for range 40 {
				f := g.Flow(cur)
				want, err1 := ref.Check(f)
				got, err2 := eng.Check(f)
				if (err1 == nil) != (err2 == nil) {
					t.Fatalf("seed %d step %d (%s): errors differ: %v / %v", seed, step, what, err1, err2)
				}
				checked++
				if !reflect.DeepEqual(want, got) {
					t.Fatalf("seed %d step %d (after %s): flow %s -> %s %s/%d\nreference: %+v\nincremental: %+v", seed, step, what, f.From, f.To, f.Proto, f.Port, want, got)
				}
			}
		}
	}
	t.Logf("incremental engine: %d flows checked after random changes, 0 mismatches", checked)
}
