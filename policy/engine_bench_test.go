package policy_test

import (
	"fmt"
	"testing"

	"github.com/nodemesh/nodemesh/api"
	"github.com/nodemesh/nodemesh/policy"
	"github.com/nodemesh/nodemesh/policy/policytest"
)

func scaleEngine(b *testing.B) (*api.World, []*policy.Policy, *policy.Engine) {
	w, text := policytest.Scale(1000, 500, 1)
	docs, err := api.DecodePolicies("scale.yaml", text)
	if err != nil {
		b.Fatal(err)
	}
	pols := policy.FromDocuments(docs)
	e, err := policy.NewEngineFromWorld(w, pols)
	if err != nil {
		b.Fatal(err)
	}
	return w, pols, e
}

// BenchmarkEngineFullCompile compiles 500 policies against 1,000 pods from
// scratch: the cost a change would have without incremental compilation.
func BenchmarkEngineFullCompile(b *testing.B) {
	w, text := policytest.Scale(1000, 500, 1)
	docs, err := api.DecodePolicies("scale.yaml", text)
	if err != nil {
		b.Fatal(err)
	}
	pols := policy.FromDocuments(docs)
	var tables int
	for b.Loop() {
		e, err := policy.NewEngineFromWorld(w, pols)
		if err != nil {
			b.Fatal(err)
		}
		tables = e.Stats().TablesCompiled
	}
	b.ReportMetric(float64(tables), "tables/op")
}

// BenchmarkEngineChange measures one change followed by recompiling what it
// affects, on the same 1,000-pod / 500-policy cluster.
func BenchmarkEngineChange(b *testing.B) {
	cases := []struct {
		name   string
		change func(i int, w *api.World, pols []*policy.Policy, e *policy.Engine)
	}{
		{"pod-added-existing-identity", func(i int, w *api.World, _ []*policy.Policy, e *policy.Engine) {
			p := w.Pods[i%len(w.Pods)]
			p.Metadata.Name = fmt.Sprintf("extra-%d", i)
			p.Status.PodIP = fmt.Sprintf("10.200.%d.%d", (i/256)%256, i%256)
			if err := e.UpsertPod(&p); err != nil {
				b.Fatal(err)
			}
		}},
		{"pod-relabelled-new-identity", func(i int, w *api.World, _ []*policy.Policy, e *policy.Engine) {
			p := w.Pods[i%len(w.Pods)]
			p.Metadata.Labels = map[string]string{"app": p.Metadata.Labels["app"], "tier": "web", "canary": fmt.Sprint(i)}
			if err := e.UpsertPod(&p); err != nil {
				b.Fatal(err)
			}
		}},
		{"policy-updated", func(i int, _ *api.World, pols []*policy.Policy, e *policy.Engine) {
			e.UpsertPolicy(pols[i%len(pols)])
		}},
	}
	for _, c := range cases {
		b.Run(c.name, func(b *testing.B) {
			w, pols, e := scaleEngine(b)
			before := e.Stats().TablesCompiled
			classes := e.Stats().Classes
			i := 0
			for b.Loop() {
				c.change(i, w, pols, e)
				e.Flush()
				i++
			}
			b.ReportMetric(float64(e.Stats().TablesCompiled-before)/float64(i), "tables/op")
			b.ReportMetric(float64(classes), "tables-total")
		})
	}
}

// BenchmarkEngineCheck measures answering one flow from compiled tables.
func BenchmarkEngineCheck(b *testing.B) {
	w, _, e := scaleEngine(b)
	flows := policytest.ScaleFlows(w, 10000, 3)
	i := 0
	for b.Loop() {
		if _, err := e.Check(flows[i%len(flows)]); err != nil {
			b.Fatal(err)
		}
		i++
	}
}

// BenchmarkReferenceCheck is the reference evaluator on the same flows.
func BenchmarkReferenceCheck(b *testing.B) {
	w, pols, _ := scaleEngine(b)
	ev := policy.NewEvaluator(policy.NewWorld(w), pols)
	flows := policytest.ScaleFlows(w, 10000, 3)
	i := 0
	for b.Loop() {
		if _, err := ev.Check(flows[i%len(flows)]); err != nil {
			b.Fatal(err)
		}
		i++
	}
}
