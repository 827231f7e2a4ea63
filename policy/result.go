package policy

import (
	"fmt"
	"sort"

	"github.com/nodemesh/nodemesh/l7policy"
)

// Verdict is the answer for a flow or one direction of it.
type Verdict string

// Verdicts.
const (
	Allowed Verdict = "allowed"
	Denied  Verdict = "denied"
)

// Reasons a direction was decided as it was.
const (
	ReasonSelf        = "self"            // a pod reaching itself
	ReasonOutside     = "outside-cluster" // this side is not a pod: no policy applies
	ReasonNoPolicy    = "no-policy"       // no policy selects the endpoint in this direction
	ReasonNotIsolated = "not-isolated"    // selected only by rules without default deny
	ReasonAllowed     = "allowed-by-rule"
	ReasonLocalNode   = "local-node" // ingress from the endpoint's own node
	ReasonDenied      = "denied-by-rule"
	ReasonDefaultDeny = "default-deny"
	ReasonL7Denied    = "l7-denied"
)

// Flow is a connection to check: from a source to a destination port.
type Flow struct {
	From, To string // "namespace/pod", "node:NAME" or an IP address
	Proto    Proto
	Port     uint16
	PortName string            // a named port of the destination, instead of Port
	HTTP     *l7policy.Request // optional: an HTTP request on the connection
}

// L7Result says which HTTP rules apply to a connection and, for a request,
// whether they allow it.
type L7Result struct {
	Rules   []string `json:"rules"`
	Verdict Verdict  `json:"verdict,omitempty"`
	Rule    string   `json:"rule,omitempty"`
}

// DirectionResult is the verdict of the source's egress or the
// destination's ingress policy.
type DirectionResult struct {
	Verdict      Verdict   `json:"verdict"`
	Reason       string    `json:"reason"`
	Policies     []string  `json:"policies"`
	Rules        []string  `json:"rules,omitempty"`
	AuthRequired bool      `json:"authRequired,omitempty"`
	L7           *L7Result `json:"l7,omitempty"`
}

// Result is the verdict on a flow and why.
type Result struct {
	Verdict  Verdict         `json:"verdict"`
	From     string          `json:"from"`
	To       string          `json:"to"`
	Protocol string          `json:"protocol"`
	Port     uint16          `json:"port"`
	Egress   DirectionResult `json:"egress"`
	Ingress  DirectionResult `json:"ingress"`
	L7       *L7Result       `json:"l7,omitempty"`
}

// decision is what the evaluator or a table found for one direction before
// it becomes a DirectionResult.
type decision struct {
	reason   string
	policies []string // policy refs
	rules    []string // rule origins
	auth     bool
	l7       *l7policy.RuleSet // nil: no L7 restriction
}

func (d decision) result(req *l7policy.Request) DirectionResult {
	r := DirectionResult{Reason: d.reason, Policies: sortedUnique(d.policies), Rules: sortedUnique(d.rules), AuthRequired: d.auth}
	switch d.reason {
	case ReasonDenied, ReasonDefaultDeny:
		r.Verdict = Denied
	default:
		r.Verdict = Allowed
	}
	if r.Verdict == Allowed && d.l7 != nil {
		r.L7 = &L7Result{}
		for _, h := range d.l7.Rules() {
			r.L7.Rules = append(r.L7.Rules, h.String())
		}
		if req != nil {
			if rule, ok := d.l7.Match(*req); ok {
				r.L7.Verdict, r.L7.Rule = Allowed, rule.String()
			} else {
				r.L7.Verdict, r.Verdict, r.Reason = Denied, Denied, ReasonL7Denied
			}
		}
	}
	return r
}

func sortedUnique(in []string) []string {
	out := []string{}
	seen := map[string]bool{}
	for _, s := range in {
		if !seen[s] {
			seen[s] = true
			out = append(out, s)
		}
	}
	sort.Strings(out)
	return out
}

// combine builds the flow's Result from its two directions.
func combine(src, dst Peer, f Flow, port uint16, eg, in DirectionResult) Result {
	r := Result{From: src.String(), To: dst.String(), Protocol: f.Proto.String(), Port: port, Egress: eg, Ingress: in, Verdict: Allowed}
	if eg.Verdict == Denied || in.Verdict == Denied {
		r.Verdict = Denied
	}
	// The flow-level L7 summary: the direction that decided, or the
	// restrictions that apply.
	for _, d := range []DirectionResult{eg, in} {
		if d.L7 == nil {
			continue
		}
		if r.L7 == nil || d.L7.Verdict == Denied {
			c := *d.L7
			r.L7 = &c
		}
	}
	return r
}

// resolvePort turns a flow's port or port name into a number.
func resolvePort(f Flow, dst Peer) (uint16, error) {
	if f.PortName == "" {
		return f.Port, nil
	}
	if dst.Endpoint == nil {
		return 0, fmt.Errorf("port %q: a named port needs a pod as destination", f.PortName)
	}
	nps := dst.Endpoint.lookupNamedPort(f.PortName, f.Proto)
	if len(nps) == 0 {
		return 0, fmt.Errorf("port %q: pod %s declares no %s port of that name", f.PortName, dst.Endpoint.Key(), f.Proto)
	}
	return nps[0].Port, nil
}
