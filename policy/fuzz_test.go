package policy_test

import (
	"os"
	"path/filepath"
	"reflect"
	"testing"

	"github.com/nodemesh/nodemesh/api"
	"github.com/nodemesh/nodemesh/policy"
	"github.com/nodemesh/nodemesh/policy/policytest"
)

// FuzzCompile decodes arbitrary policy text and, when it is valid, checks
// that the compiled engine and the reference evaluator agree on it.
func FuzzCompile(f *testing.F) {
	files, _ := filepath.Glob("testdata/cilium/*.yaml")
	for _, file := range files {
		if data, err := os.ReadFile(file); err == nil {
			f.Add(data)
		}
	}
	g := policytest.NewRandom(7)
	w := g.World(12)
	for range 8 {
		f.Add(g.Policies(w, 3))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		docs, err := api.DecodePolicies("fuzz.yaml", data)
		if err != nil {
			return
		}
		pols := policy.FromDocuments(docs)
		ref := policy.NewEvaluator(policy.NewWorld(w), pols)
		eng, err := policy.NewEngineFromWorld(w, pols)
		if err != nil {
			t.Fatal(err)
		}
		fg := policytest.NewRandom(uint64(len(data)))
		for range 50 {
			fl := fg.Flow(w)
			want, _ := ref.Check(fl)
			got, _ := eng.Check(fl)
			if !reflect.DeepEqual(want, got) {
				t.Fatalf("flow %+v:\nreference %+v\ncompiled  %+v", fl, want, got)
			}
		}
	})
}
