package policy_test

import (
	"strings"
	"testing"

	"github.com/nodemesh/nodemesh/api"
	"github.com/nodemesh/nodemesh/policy"
	"github.com/nodemesh/nodemesh/policy/policytest"
)

// checkers are the implementations every scenario runs against.
var checkers = map[string]func(*api.World, []api.PolicyDocument) policy.Checker{
	"reference": func(w *api.World, docs []api.PolicyDocument) policy.Checker {
		return policy.NewEvaluator(policy.NewWorld(w), policy.FromDocuments(docs))
	},
	"compiled": func(w *api.World, docs []api.PolicyDocument) policy.Checker {
		e, err := policy.NewEngineFromWorld(w, policy.FromDocuments(docs))
		if err != nil {
			panic(err)
		}
		return e
	},
}

// TestNetpolScenarios runs the Kubernetes NetworkPolicy e2e scenarios
// (testdata/netpol) through every checker and compares reachability matrices.
func TestNetpolScenarios(t *testing.T) {
	runScenarios(t, "testdata/netpol")
}

func TestCiliumScenarios(t *testing.T) { runScenarios(t, "testdata/cilium") }

func runScenarios(t *testing.T, dir string) {
	scenarios, err := policytest.Load(dir)
	if err != nil {
		t.Fatal(err)
	}
	cells, flows := 0, 0
	for _, s := range scenarios {
		for name, mk := range checkers {
			t.Run(s.Name+"/"+name, func(t *testing.T) {
				w := s.BuildWorld()
				docs, err := s.PolicyDocs()
				if err != nil {
					t.Fatalf("policies: %v", err)
				}
				c := mk(w, docs)
				pods := policytest.Pods(w)
				for _, mc := range s.Matrix {
					want, err := mc.Expected(pods)
					if err != nil {
						t.Fatal(err)
					}
					proto, err := policy.ParseProto(mc.Protocol)
					if err != nil {
						t.Fatal(err)
					}
					got, err := policytest.ObservedMatrix(c, pods, proto, mc.Port)
					if err != nil {
						t.Fatal(err)
					}
					cells += len(pods) * len(pods)
					if d := want.Diff(got); len(d) > 0 {
						t.Errorf("%s/%d: %d cells differ:\n%s\nwant:\n%s\ngot:\n%s", mc.Protocol, mc.Port, len(d), strings.Join(d, "\n"), want, got)
					}
				}
				for i, fc := range s.Flows {
					f, err := fc.Flow()
					if err != nil {
						t.Fatal(err)
					}
					want, err := fc.Expected()
					if err != nil {
						t.Fatal(err)
					}
					r, err := c.Check(f)
					if err != nil {
						t.Fatalf("flow %d: %v", i, err)
					}
					flows++
					if r.Verdict != want {
						t.Errorf("flow %d %s -> %s %s/%s: want %s, got %s (egress %s %v, ingress %s %v)", i, fc.From, fc.To, fc.Protocol, fc.Port, want, r.Verdict, r.Egress.Reason, r.Egress.Rules, r.Ingress.Reason, r.Ingress.Rules)
					}
					if fc.EgressReason != "" && r.Egress.Reason != fc.EgressReason {
						t.Errorf("flow %d: egress reason %s, want %s", i, r.Egress.Reason, fc.EgressReason)
					}
					if fc.IngressReason != "" && r.Ingress.Reason != fc.IngressReason {
						t.Errorf("flow %d: ingress reason %s, want %s", i, r.Ingress.Reason, fc.IngressReason)
					}
				}
				for i, ic := range s.Invalid {
					_, err := api.DecodePolicies("invalid.yaml", []byte(ic.Policy))
					if err == nil {
						t.Errorf("invalid %d: accepted, want errors %q", i, ic.Errors)
						continue
					}
					for _, want := range ic.Errors {
						if !strings.Contains(err.Error(), want) {
							t.Errorf("invalid %d: error %q does not contain %q", i, err, want)
						}
					}
				}
			})
		}
	}
	t.Logf("%d scenarios: %d matrix cells and %d flows checked per checker", len(scenarios), cells/len(checkers), flows/len(checkers))
}
