package policy

import "github.com/nodemesh/nodemesh/api"

// Checker answers whether flows are allowed: the reference Evaluator, the
// compiled Engine, and (in tests) the datapath.
type Checker interface {
	Check(Flow) (Result, error)
}

// NewChecker builds the checker `meshctl policy check` uses: the compiled
// engine, the same tables nodes enforce, or with reference the reference
// evaluator.
func NewChecker(w *api.World, docs []api.PolicyDocument, reference bool) (Checker, error) {
	policies := FromDocuments(docs)
	if reference {
		return NewEvaluator(NewWorld(w), policies), nil
	}
	return NewEngineFromWorld(w, policies)
}
