package policycheck

import (
	"bufio"
	"sort"
	"strconv"
	"strings"

	"github.com/nodemesh/nodemesh/l7policy"
	"github.com/nodemesh/nodemesh/policy"
)

// writeText explains one flow in plain words:
//
//	default/frontend -> default/backend TCP/80: ALLOWED
//	  egress  (default/frontend): allowed — no policy selects default/frontend for egress
//	  ingress (default/backend): allowed by CiliumNetworkPolicy default/p spec.ingress[0]
//	  L7: GET /userdata/7 allowed by rule GET /userdata/[0-9]+
func writeText(w *bufio.Writer, f *policy.Flow, r *policy.Result) {
	w.WriteString(r.From)
	w.WriteString(" -> ")
	w.WriteString(r.To)
	w.WriteByte(' ')
	w.WriteString(portString(f, r))
	w.WriteString(": ")
	w.WriteString(strings.ToUpper(string(r.Verdict)))
	w.WriteByte('\n')

	w.WriteString("  egress  (")
	w.WriteString(r.From)
	w.WriteString("): ")
	w.WriteString(explain(&r.Egress, "egress", r.From, r.To))
	w.WriteByte('\n')
	w.WriteString("  ingress (")
	w.WriteString(r.To)
	w.WriteString("): ")
	w.WriteString(explain(&r.Ingress, "ingress", r.To, r.From))
	w.WriteByte('\n')

	switch {
	case r.Egress.L7 != nil && r.Ingress.L7 != nil:
		writeL7(w, "L7 (egress)", r.Egress.L7, f.HTTP)
		writeL7(w, "L7 (ingress)", r.Ingress.L7, f.HTTP)
	case r.L7 != nil:
		writeL7(w, "L7", r.L7, f.HTTP)
	case f.HTTP != nil && r.Verdict == policy.Allowed:
		w.WriteString("  L7: ")
		w.WriteString(requestString(f.HTTP))
		w.WriteString(" allowed — no L7 rule applies to this connection, so every request on it is allowed\n")
	}
}

// portString is "TCP/80", "TCP/8080 (port http)" for a named port, or
// "ICMP type 8".
func portString(f *policy.Flow, r *policy.Result) string {
	p := strconv.Itoa(int(r.Port))
	if f.Proto == policy.ProtoICMP || f.Proto == policy.ProtoICMPv6 {
		return r.Protocol + " type " + p
	}
	s := r.Protocol + "/" + p
	if f.PortName != "" {
		s += " (port " + f.PortName + ")"
	}
	return s
}

// explain says in a sentence why one direction was decided as it was. local
// is the endpoint whose policy this is, remote the other side.
func explain(d *policy.DirectionResult, dir, local, remote string) string {
	var s string
	switch d.Reason {
	case policy.ReasonSelf:
		s = "allowed — a pod may always reach itself"
	case policy.ReasonOutside:
		what := "is outside the cluster"
		switch {
		case strings.HasPrefix(local, "node:"):
			what = "is a node, not a pod"
		case strings.HasPrefix(local, "kube-apiserver("):
			what = "is the API server, not a pod"
		}
		s = "allowed — " + local + " " + what + ", so no " + dir + " policy applies on this side"
	case policy.ReasonNoPolicy:
		s = "allowed — no policy selects " + local + " for " + dir
	case policy.ReasonNotIsolated:
		s = "allowed — the policies that select " + local + " for " + dir +
			" have default deny turned off (enableDefaultDeny), and no rule of theirs denies this flow"
		if len(d.Policies) > 0 {
			s += " (" + strings.Join(d.Policies, ", ") + ")"
		}
	case policy.ReasonAllowed:
		s = "allowed by " + rulesOrPolicies(d)
	case policy.ReasonLocalNode:
		s = "allowed — " + remote + " is the node " + local + " runs on, and a pod always accepts traffic from its own node"
	case policy.ReasonDenied:
		s = "denied by " + rulesOrPolicies(d) + " (a deny rule wins over every allow rule)"
	case policy.ReasonDefaultDeny:
		if len(d.Policies) == 0 {
			s = "denied — " + local + " is isolated for " + dir + " and no rule allows this flow"
		} else {
			verb, their := "selects", "its"
			if len(d.Policies) > 1 {
				verb, their = "select", "their"
			}
			s = "denied — " + strings.Join(d.Policies, ", ") + " " + verb + " " + local + " for " + dir +
				", so only what a rule allows gets through (default deny), and none of " + their + " rules allows this flow"
		}
	case policy.ReasonL7Denied:
		s = "denied — " + rulesOrPolicies(d) + " allows the connection, but only for HTTP requests that match an L7 rule, and this request matches none"
	default:
		s = string(d.Verdict) + " (" + d.Reason + ")"
		if len(d.Rules)+len(d.Policies) > 0 {
			s += " — " + rulesOrPolicies(d)
		}
	}
	if d.AuthRequired {
		s += "; mutual authentication of both peers is required"
	}
	return s
}

// rulesOrPolicies names the rules that decided, or the policies when no
// rule is named.
func rulesOrPolicies(d *policy.DirectionResult) string {
	if len(d.Rules) > 0 {
		return strings.Join(d.Rules, ", ")
	}
	if len(d.Policies) > 0 {
		return strings.Join(d.Policies, ", ")
	}
	return "a rule"
}

func writeL7(w *bufio.Writer, label string, l7 *policy.L7Result, req *l7policy.Request) {
	w.WriteString("  ")
	w.WriteString(label)
	w.WriteString(": ")
	rules := strings.Join(l7.Rules, ", ")
	switch {
	case req == nil:
		w.WriteString("only HTTP requests that match a rule are allowed; rules: ")
		w.WriteString(rules)
	case l7.Verdict == policy.Denied:
		w.WriteString(requestString(req))
		w.WriteString(" denied — no rule matches; rules: ")
		w.WriteString(rules)
	default:
		w.WriteString(requestString(req))
		w.WriteString(" allowed by rule ")
		w.WriteString(l7.Rule)
	}
	w.WriteByte('\n')
}

// requestString is "GET /userdata/7 host=a.b header[X-A]=1".
func requestString(req *l7policy.Request) string {
	s := req.Method + " " + req.Path
	if req.Host != "" {
		s += " host=" + req.Host
	}
	if len(req.Headers) > 0 {
		keys := make([]string, 0, len(req.Headers))
		for k := range req.Headers {
			keys = append(keys, k)
		}
		sort.Strings(keys)
		for _, k := range keys {
			s += " header[" + k + "]=" + req.Headers[k]
		}
	}
	return s
}
