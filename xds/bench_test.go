package xds_test

import (
	"testing"

	"github.com/nodemesh/nodemesh/api"
	"github.com/nodemesh/nodemesh/policy"
	"github.com/nodemesh/nodemesh/policy/policytest"
	"github.com/nodemesh/nodemesh/xds"
)

// BenchmarkBuild measures one node's Build on a cluster-sized world
// (policytest.Scale: 4 nodes, one policy in ten with an HTTP rule).
func BenchmarkBuild(b *testing.B) {
	for _, size := range []struct {
		name           string
		pods, policies int
	}{{"2k-pods-200-policies", 2000, 200}, {"10k-pods-1k-policies", 10000, 1000}} {
		b.Run(size.name, func(b *testing.B) {
			w, text := policytest.Scale(size.pods, size.policies, 1)
			docs, err := api.DecodePolicies("scale.yaml", text)
			if err != nil {
				b.Fatal(err)
			}
			e, err := policy.NewEngineFromWorld(w, policy.FromDocuments(docs))
			if err != nil {
				b.Fatal(err)
			}
			in := xds.InputFromEngine(e, "node-1", xds.Config{})
			var r *xds.Resources
			for b.Loop() {
				if r, err = xds.Build(in); err != nil {
					b.Fatal(err)
				}
			}
			chains := 0
			for _, l := range r.Listeners {
				chains += len(l.GetFilterChains())
			}
			b.ReportMetric(float64(chains), "chains")
			b.ReportMetric(float64(len(in.Endpoints)), "endpoints")
		})
	}
}
