package api

import (
	"fmt"
	"net/netip"
	"regexp"
	"strconv"
	"strings"
)

// Entities a Mesh policy may name in fromEntities / toEntities.
const (
	EntityAll           = "all"
	EntityWorld         = "world"
	EntityWorldIPv4     = "world-ipv4"
	EntityWorldIPv6     = "world-ipv6"
	EntityCluster       = "cluster"
	EntityHost          = "host"
	EntityRemoteNode    = "remote-node"
	EntityKubeAPIServer = "kube-apiserver"
	EntityInit          = "init"
	EntityHealth        = "health"
	EntityUnmanaged     = "unmanaged"
	EntityIngress       = "ingress"
)

// Entities lists every entity name, for validation and help texts.
var Entities = []string{EntityAll, EntityWorld, EntityWorldIPv4, EntityWorldIPv6, EntityCluster,
	EntityHost, EntityRemoteNode, EntityKubeAPIServer, EntityInit, EntityHealth, EntityUnmanaged, EntityIngress}

// Protocols.
const (
	ProtoTCP  = "TCP"
	ProtoUDP  = "UDP"
	ProtoSCTP = "SCTP"
	ProtoICMP = "ICMP"
	ProtoAny  = "ANY"
)

type errs struct{ list []*FieldError }

func (e *errs) add(path, format string, args ...any) {
	e.list = append(e.list, &FieldError{Path: path, Msg: fmt.Sprintf(format, args...)})
}

func idx(path string, i int) string { return path + "[" + strconv.Itoa(i) + "]" }

func validateNetworkPolicy(np *NetworkPolicy) []*FieldError {
	e := &errs{}
	validateMeta(e, &np.Metadata, true)
	validateSelector(e, "spec.podSelector", &np.Spec.PodSelector, false)
	seen := map[string]bool{}
	for i, t := range np.Spec.PolicyTypes {
		p := idx("spec.policyTypes", i)
		if t != PolicyTypeIngress && t != PolicyTypeEgress {
			e.add(p, "%q is not a policy type; use Ingress or Egress", t)
		} else if seen[t] {
			e.add(p, "%q listed twice", t)
		}
		seen[t] = true
	}
	for i, r := range np.Spec.Ingress {
		p := idx("spec.ingress", i)
		validateNPPorts(e, p+".ports", r.Ports)
		validateNPPeers(e, p+".from", r.From)
	}
	for i, r := range np.Spec.Egress {
		p := idx("spec.egress", i)
		validateNPPorts(e, p+".ports", r.Ports)
		validateNPPeers(e, p+".to", r.To)
	}
	return e.list
}

func validateMeta(e *errs, m *ObjectMeta, namespaced bool) {
	if m.Name == "" {
		e.add("metadata.name", "required")
	} else if !isDNSSubdomain(m.Name) {
		e.add("metadata.name", "%q is not a valid name (lower-case letters, digits, '-' and '.', at most 253 characters)", m.Name)
	}
	if m.Namespace != "" && !isDNSLabel(m.Namespace) {
		e.add("metadata.namespace", "%q is not a valid namespace name", m.Namespace)
	}
	if !namespaced && m.Namespace != "" {
		e.add("metadata.namespace", "must not be set on a cluster-wide policy (it applies to every namespace)")
	}
	if namespaced && m.Namespace == "" {
		m.Namespace = "default" // as kubectl does without a namespace in context
	}
}

func validateNPPorts(e *errs, path string, ports []NetworkPolicyPort) {
	for i, pt := range ports {
		p := idx(path, i)
		if pt.Protocol != nil {
			switch *pt.Protocol {
			case ProtoTCP, ProtoUDP, ProtoSCTP:
			default:
				e.add(p+".protocol", "%q is not supported; use TCP, UDP or SCTP%s", *pt.Protocol, caseHint(*pt.Protocol, ProtoTCP, ProtoUDP, ProtoSCTP))
			}
		}
		if pt.Port == nil {
			if pt.EndPort != nil {
				e.add(p+".endPort", "may only be set together with a numeric port")
			}
			continue
		}
		if pt.Port.IsString {
			if err := checkPortName(pt.Port.StrVal); err != nil {
				e.add(p+".port", "%v", err)
			}
			if pt.EndPort != nil {
				e.add(p+".endPort", "may not be used with a named port")
			}
			continue
		}
		if pt.Port.IntVal < 1 || pt.Port.IntVal > 65535 {
			e.add(p+".port", "%q is not a valid port (1-65535)", strconv.Itoa(int(pt.Port.IntVal)))
		}
		if pt.EndPort != nil && (*pt.EndPort < pt.Port.IntVal || *pt.EndPort > 65535) {
			e.add(p+".endPort", "%d must be at least port (%d) and at most 65535", *pt.EndPort, pt.Port.IntVal)
		}
	}
}

func validateNPPeers(e *errs, path string, peers []NetworkPolicyPeer) {
	for i, peer := range peers {
		p := idx(path, i)
		switch {
		case peer.IPBlock != nil && (peer.PodSelector != nil || peer.NamespaceSelector != nil):
			e.add(p, "ipBlock may not be combined with podSelector or namespaceSelector in one peer; make them two peers")
		case peer.IPBlock == nil && peer.PodSelector == nil && peer.NamespaceSelector == nil:
			e.add(p, "must set podSelector, namespaceSelector or ipBlock")
		}
		if peer.PodSelector != nil {
			validateSelector(e, p+".podSelector", peer.PodSelector, false)
		}
		if peer.NamespaceSelector != nil {
			validateSelector(e, p+".namespaceSelector", peer.NamespaceSelector, false)
		}
		if peer.IPBlock != nil {
			validateCIDR(e, p+".ipBlock", peer.IPBlock.CIDR, peer.IPBlock.Except, "cidr")
		}
	}
}

func validateCIDR(e *errs, path, cidr string, except []string, field string) {
	if cidr == "" {
		e.add(path+"."+field, "required")
		return
	}
	pfx, err := ParseCIDR(cidr)
	if err != nil {
		e.add(path+"."+field, "%v", err)
		return
	}
	for i, x := range except {
		p := idx(path+".except", i)
		xp, err := ParseCIDR(x)
		if err != nil {
			e.add(p, "%v", err)
			continue
		}
		if xp.Addr().Is4() != pfx.Addr().Is4() || xp.Bits() < pfx.Bits() || !pfx.Contains(xp.Addr()) {
			e.add(p, "%s is not inside %s", x, cidr)
		}
	}
}

// ParseCIDR parses a prefix such as 10.0.0.0/8; a bare address means a
// single host. Host bits must be zero, as the Kubernetes API requires.
func ParseCIDR(s string) (netip.Prefix, error) {
	if !strings.Contains(s, "/") {
		a, err := netip.ParseAddr(s)
		if err != nil {
			return netip.Prefix{}, fmt.Errorf("%q is not a valid CIDR (want e.g. 10.0.0.0/8)", s)
		}
		return netip.PrefixFrom(a.Unmap(), a.Unmap().BitLen()), nil
	}
	p, err := netip.ParsePrefix(s)
	if err != nil {
		return netip.Prefix{}, fmt.Errorf("%q is not a valid CIDR (want e.g. 10.0.0.0/8)", s)
	}
	if p.Masked() != p {
		return netip.Prefix{}, fmt.Errorf("%q has host bits set; did you mean %s?", s, p.Masked())
	}
	return p, nil
}

var labelSources = map[string]bool{"k8s": true, "any": true, "reserved": true, "unspec": true, "container": true}

// SplitLabelKey splits a selector key of the Cilium form "source:key" (the
// source is optional; "k8s:app" and "app" both select pod label app).
func SplitLabelKey(k string) (source, key string) {
	if i := strings.IndexByte(k, ':'); i > 0 && labelSources[k[:i]] {
		return k[:i], k[i+1:]
	}
	return "", k
}

func validateSelector(e *errs, path string, s *LabelSelector, sourcesAllowed bool) {
	checkKey := func(p, k string) {
		src, key := SplitLabelKey(k)
		if src != "" && !sourcesAllowed {
			e.add(p, "label key %q has a source prefix, which only Mesh/Cilium policies use", k)
			return
		}
		if err := checkLabelKey(key); err != nil {
			e.add(p, "%v", err)
		}
	}
	for k, v := range s.MatchLabels {
		checkKey(path+".matchLabels."+k, k)
		if err := checkLabelValue(v); err != nil {
			e.add(path+".matchLabels."+k, "%v", err)
		}
	}
	for i, r := range s.MatchExpressions {
		p := idx(path+".matchExpressions", i)
		if r.Key == "" {
			e.add(p+".key", "required")
		} else {
			checkKey(p+".key", r.Key)
		}
		switch r.Operator {
		case OpIn, OpNotIn:
			if len(r.Values) == 0 {
				e.add(p+".values", "must not be empty for operator %s", r.Operator)
			}
		case OpExists, OpDoesNotExist:
			if len(r.Values) > 0 {
				e.add(p+".values", "must be empty for operator %s", r.Operator)
			}
		case "":
			e.add(p+".operator", "required: In, NotIn, Exists or DoesNotExist")
		default:
			e.add(p+".operator", "%q is not an operator; use In, NotIn, Exists or DoesNotExist%s", r.Operator, caseHint(r.Operator, OpIn, OpNotIn, OpExists, OpDoesNotExist))
		}
		for j, v := range r.Values {
			if err := checkLabelValue(v); err != nil {
				e.add(idx(p+".values", j), "%v", err)
			}
		}
	}
}

func caseHint(got string, valid ...string) string {
	for _, v := range valid {
		if strings.EqualFold(got, v) && got != v {
			return fmt.Sprintf(" (did you mean %q?)", v)
		}
	}
	return ""
}

var (
	labelNameRe  = regexp.MustCompile(`^[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?$`)
	dnsLabelRe   = regexp.MustCompile(`^[a-z0-9]([-a-z0-9]*[a-z0-9])?$`)
	dnsSubRe     = regexp.MustCompile(`^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$`)
	portNameRe   = regexp.MustCompile(`^[a-z0-9]([a-z0-9-]*[a-z0-9])?$`)
	hasLetterRe  = regexp.MustCompile(`[a-z]`)
	headerNameRe = regexp.MustCompile("^[!#$%&'*+\\-.^_`|~0-9A-Za-z]+$")
)

func isDNSLabel(s string) bool     { return len(s) <= 63 && dnsLabelRe.MatchString(s) }
func isDNSSubdomain(s string) bool { return len(s) <= 253 && dnsSubRe.MatchString(s) }

func checkLabelKey(k string) error {
	prefix, name, hasPrefix := strings.Cut(k, "/")
	if !hasPrefix {
		name, prefix = prefix, ""
	}
	if hasPrefix && (prefix == "" || !isDNSSubdomain(prefix)) {
		return fmt.Errorf("label key %q: prefix %q is not a DNS subdomain", k, prefix)
	}
	if len(name) == 0 || len(name) > 63 || !labelNameRe.MatchString(name) {
		return fmt.Errorf("label key %q is not valid (at most 63 letters, digits, '-', '_' or '.', starting and ending with a letter or digit, optionally after a DNS prefix and '/')", k)
	}
	return nil
}

func checkLabelValue(v string) error {
	if v == "" {
		return nil
	}
	if len(v) > 63 || !labelNameRe.MatchString(v) {
		return fmt.Errorf("label value %q is not valid (at most 63 letters, digits, '-', '_' or '.', starting and ending with a letter or digit)", v)
	}
	return nil
}

func checkPortName(n string) error {
	if len(n) > 15 || !portNameRe.MatchString(n) || !hasLetterRe.MatchString(n) || strings.Contains(n, "--") {
		return fmt.Errorf("%q is not a valid port (a number 1-65535 or a port name: at most 15 lower-case letters, digits and '-', with at least one letter)", n)
	}
	return nil
}

func validateMeshPolicy(mp *MeshPolicy) []*FieldError {
	e := &errs{}
	clusterwide := mp.Kind == KindMeshClusterwideNetworkPolicy || mp.Kind == KindCiliumClusterwideNetworkPolicy
	validateMeta(e, &mp.Metadata, !clusterwide)
	if mp.Spec == nil && len(mp.Specs) == 0 {
		e.add("spec", "required: a policy needs spec (one rule) or specs (a list of rules)")
	}
	if mp.Spec != nil {
		validateRule(e, "spec", mp.Spec)
	}
	for i := range mp.Specs {
		validateRule(e, idx("specs", i), &mp.Specs[i])
	}
	return e.list
}

func validateRule(e *errs, path string, r *Rule) {
	switch {
	case r.NodeSelector != nil:
		e.add(path+".nodeSelector", "host policies (nodeSelector) are not supported by Nodemesh yet; select pods with endpointSelector")
	case r.EndpointSelector == nil:
		e.add(path+".endpointSelector", "required: say which pods the rule applies to (endpointSelector: {} selects every pod in the policy's namespace)")
	default:
		validateSelector(e, path+".endpointSelector", r.EndpointSelector, true)
	}
	if len(r.Ingress)+len(r.IngressDeny)+len(r.Egress)+len(r.EgressDeny) == 0 && r.EnableDefaultDeny == nil {
		e.add(path, "has no ingress, ingressDeny, egress or egressDeny rules, so it would do nothing")
	}
	for i := range r.Ingress {
		validateIngress(e, idx(path+".ingress", i), &r.Ingress[i], false)
	}
	for i := range r.IngressDeny {
		validateIngress(e, idx(path+".ingressDeny", i), &r.IngressDeny[i], true)
	}
	for i := range r.Egress {
		validateEgress(e, idx(path+".egress", i), &r.Egress[i], false)
	}
	for i := range r.EgressDeny {
		validateEgress(e, idx(path+".egressDeny", i), &r.EgressDeny[i], true)
	}
}

func unsupported(e *errs, path string, set bool, what string) {
	if set {
		e.add(path, "%s is not supported by Nodemesh yet; the policy is refused rather than enforced partially", what)
	}
}

func validateIngress(e *errs, path string, r *IngressRule, deny bool) {
	unsupported(e, path+".fromRequires", len(r.FromRequires) > 0, "fromRequires")
	unsupported(e, path+".fromGroups", r.FromGroups != nil, "fromGroups")
	unsupported(e, path+".fromNodes", len(r.FromNodes) > 0, "fromNodes")
	validatePeers(e, path, "from", r.FromEndpoints, r.FromCIDR, r.FromCIDRSet, r.FromEntities)
	validateEmptyDeny(e, path, deny, len(r.FromEndpoints)+len(r.FromCIDR)+len(r.FromCIDRSet)+len(r.FromEntities)+len(r.ToPorts)+len(r.ICMPs))
	validatePortsAndICMP(e, path, r.ToPorts, r.ICMPs, deny)
	validateAuth(e, path, r.Authentication, deny)
}

func validateEgress(e *errs, path string, r *EgressRule, deny bool) {
	unsupported(e, path+".toRequires", len(r.ToRequires) > 0, "toRequires")
	unsupported(e, path+".toServices", r.ToServices != nil, "toServices")
	unsupported(e, path+".toFQDNs", r.ToFQDNs != nil, "toFQDNs (DNS-based policy)")
	unsupported(e, path+".toGroups", r.ToGroups != nil, "toGroups")
	unsupported(e, path+".toNodes", len(r.ToNodes) > 0, "toNodes")
	validatePeers(e, path, "to", r.ToEndpoints, r.ToCIDR, r.ToCIDRSet, r.ToEntities)
	validateEmptyDeny(e, path, deny, len(r.ToEndpoints)+len(r.ToCIDR)+len(r.ToCIDRSet)+len(r.ToEntities)+len(r.ToPorts)+len(r.ICMPs))
	validatePortsAndICMP(e, path, r.ToPorts, r.ICMPs, deny)
	validateAuth(e, path, r.Authentication, deny)
}

func validateEmptyDeny(e *errs, path string, deny bool, n int) {
	if deny && n == 0 {
		e.add(path, "an empty deny rule denies nothing; to deny every peer write fromEntities/toEntities: [all]")
	}
}

func validateAuth(e *errs, path string, a *Authentication, deny bool) {
	if a == nil {
		return
	}
	if deny {
		e.add(path+".authentication", "not allowed on a deny rule")
		return
	}
	switch a.Mode {
	case AuthDisabled, AuthRequired:
	default:
		e.add(path+".authentication.mode", "%q is not a mode; use required or disabled", a.Mode)
	}
}

func validatePeers(e *errs, path, dir string, eps []LabelSelector, cidrs []string, sets []CIDRRule, entities []string) {
	for i := range eps {
		validateSelector(e, idx(path+"."+dir+"Endpoints", i), &eps[i], true)
	}
	for i, c := range cidrs {
		if _, err := ParseCIDR(c); err != nil {
			e.add(idx(path+"."+dir+"CIDR", i), "%v", err)
		}
	}
	for i, s := range sets {
		p := idx(path+"."+dir+"CIDRSet", i)
		unsupported(e, p+".cidrGroupRef", s.CIDRGroupRef != "", "cidrGroupRef")
		unsupported(e, p+".cidrGroupSelector", s.CIDRGroupSelector != nil, "cidrGroupSelector")
		if s.CIDRGroupRef == "" && s.CIDRGroupSelector == nil {
			validateCIDR(e, p, s.CIDR, s.Except, "cidr")
		}
	}
	for i, en := range entities {
		if !isEntity(en) {
			e.add(idx(path+"."+dir+"Entities", i), "%q is not an entity; use one of %s", en, strings.Join(Entities, ", "))
		}
	}
}

func isEntity(s string) bool {
	for _, en := range Entities {
		if s == en {
			return true
		}
	}
	return false
}

func validatePortsAndICMP(e *errs, path string, prs []PortRule, icmps []ICMPRule, deny bool) {
	if len(prs) > 0 && len(icmps) > 0 {
		e.add(path, "toPorts and icmps may not be set in the same rule; write two rules")
	}
	for i := range prs {
		validatePortRule(e, idx(path+".toPorts", i), &prs[i], deny)
	}
	for i, ic := range icmps {
		for j, f := range ic.Fields {
			p := idx(idx(path+".icmps", i)+".fields", j)
			if f.Family != "" && f.Family != "IPv4" && f.Family != "IPv6" {
				e.add(p+".family", "%q is not a family; use IPv4 or IPv6", f.Family)
			}
			if _, err := ICMPType(f.Family, f.Type); err != nil {
				e.add(p+".type", "%v", err)
			}
		}
	}
}

var icmpNames = map[string]map[string]int{
	"IPv4": {"EchoReply": 0, "DestinationUnreachable": 3, "Redirect": 5, "EchoRequest": 8, "RouterAdvertisement": 9, "RouterSelection": 10, "TimeExceeded": 11, "ParameterProblem": 12, "Timestamp": 13, "TimestampReply": 14},
	"IPv6": {"DestinationUnreachable": 1, "PacketTooBig": 2, "TimeExceeded": 3, "ParameterProblem": 4, "EchoRequest": 128, "EchoReply": 129, "RouterSolicitation": 133, "RouterAdvertisement": 134, "NeighborSolicitation": 135, "NeighborAdvertisement": 136},
}

// ICMPType resolves an ICMP type given as a number or a name for a family.
func ICMPType(family string, t IntOrString) (int, error) {
	if family == "" {
		family = "IPv4"
	}
	if !t.IsString {
		if t.IntVal < 0 || t.IntVal > 255 {
			return 0, fmt.Errorf("%d is not an ICMP type (0-255)", t.IntVal)
		}
		return int(t.IntVal), nil
	}
	if v, ok := icmpNames[family][t.StrVal]; ok {
		return v, nil
	}
	if n, err := strconv.Atoi(t.StrVal); err == nil && n >= 0 && n <= 255 {
		return n, nil
	}
	return 0, fmt.Errorf("%q is not a known %s ICMP type", t.StrVal, family)
}

func validatePortRule(e *errs, path string, pr *PortRule, deny bool) {
	unsupported(e, path+".terminatingTLS", pr.TerminatingTLS != nil, "terminatingTLS")
	unsupported(e, path+".originatingTLS", pr.OriginatingTLS != nil, "originatingTLS")
	unsupported(e, path+".serverNames", len(pr.ServerNames) > 0, "serverNames")
	unsupported(e, path+".listener", pr.Listener != nil, "listener")
	hasHTTP := pr.Rules != nil && len(pr.Rules.HTTP) > 0
	if len(pr.Ports) == 0 {
		e.add(path+".ports", "required: list the ports the rule applies to (port: \"0\" means every port)")
	}
	for i, pp := range pr.Ports {
		p := idx(path+".ports", i)
		switch pp.Protocol {
		case "", ProtoAny, ProtoTCP:
		case ProtoUDP, ProtoSCTP:
			if hasHTTP {
				e.add(p+".protocol", "%s cannot carry HTTP rules; use TCP", pp.Protocol)
			}
		default:
			e.add(p+".protocol", "%q is not supported; use TCP, UDP, SCTP or ANY%s", pp.Protocol, caseHint(pp.Protocol, ProtoTCP, ProtoUDP, ProtoSCTP, ProtoAny))
		}
		port := string(pp.Port)
		n, err := strconv.Atoi(port)
		switch {
		case port == "":
			n = 0
		case err == nil:
			if n < 0 || n > 65535 {
				e.add(p+".port", "%q is not a valid port", port)
			}
		default:
			if err := checkPortName(port); err != nil {
				e.add(p+".port", "%v", err)
			} else if pp.EndPort != 0 {
				e.add(p+".endPort", "may not be used with a named port")
			}
			continue
		}
		if pp.EndPort != 0 && (n == 0 || pp.EndPort < int32(n) || pp.EndPort > 65535) {
			e.add(p+".endPort", "%d must be at least port (%s) and at most 65535, with a non-zero port", pp.EndPort, port)
		}
	}
	if pr.Rules == nil {
		return
	}
	if deny && (len(pr.Rules.HTTP) > 0 || pr.Rules.Kafka != nil || pr.Rules.DNS != nil || pr.Rules.L7 != nil) {
		e.add(path+".rules", "deny rules cannot carry L7 rules; deny the port, or allow only the requests you want")
		return
	}
	unsupported(e, path+".rules.kafka", pr.Rules.Kafka != nil, "Kafka rules")
	unsupported(e, path+".rules.dns", pr.Rules.DNS != nil, "DNS rules")
	unsupported(e, path+".rules.l7proto", pr.Rules.L7Proto != "", "l7proto")
	unsupported(e, path+".rules.l7", pr.Rules.L7 != nil, "generic l7 rules")
	for i, h := range pr.Rules.HTTP {
		p := idx(path+".rules.http", i)
		for field, re := range map[string]string{"method": h.Method, "path": h.Path, "host": h.Host} {
			if _, err := regexp.Compile("^(?:" + re + ")$"); err != nil {
				e.add(p+"."+field, "%q is not a valid regular expression: %v", re, err)
			}
		}
		for j, hd := range h.Headers {
			name, _, _ := strings.Cut(hd, ":")
			if !headerNameRe.MatchString(strings.TrimSpace(name)) {
				e.add(idx(p+".headers", j), "%q is not a header: write \"Name\" or \"Name: value\"", hd)
			}
		}
		for j, hm := range h.HeaderMatches {
			hp := idx(p+".headerMatches", j)
			if !headerNameRe.MatchString(hm.Name) {
				e.add(hp+".name", "%q is not a header name", hm.Name)
			}
			unsupported(e, hp+".mismatch", hm.Mismatch != "", "mismatch actions")
			unsupported(e, hp+".secret", hm.Secret != nil, "header values from secrets")
		}
	}
}

func validatePod(p *Pod) []*FieldError {
	e := &errs{}
	if p.Metadata.Name == "" {
		e.add("metadata.name", "required")
	}
	if p.Metadata.Namespace == "" {
		p.Metadata.Namespace = "default"
	}
	if p.Status.PodIP != "" {
		if _, err := netip.ParseAddr(p.Status.PodIP); err != nil {
			e.add("status.podIP", "%q is not an IP address", p.Status.PodIP)
		}
	}
	for i, ip := range p.Status.PodIPs {
		if _, err := netip.ParseAddr(ip.IP); err != nil {
			e.add(idx("status.podIPs", i)+".ip", "%q is not an IP address", ip.IP)
		}
	}
	for ci, c := range append(append([]Container{}, p.Spec.Containers...), p.Spec.InitContainers...) {
		for pi, cp := range c.Ports {
			path := idx(idx("spec.containers", ci)+".ports", pi)
			if cp.ContainerPort < 1 || cp.ContainerPort > 65535 {
				e.add(path+".containerPort", "%d is not a valid port", cp.ContainerPort)
			}
			switch cp.Protocol {
			case "", ProtoTCP, ProtoUDP, ProtoSCTP:
			default:
				e.add(path+".protocol", "%q is not TCP, UDP or SCTP", cp.Protocol)
			}
		}
	}
	return e.list
}

func validateNode(n *Node) []*FieldError {
	e := &errs{}
	if n.Metadata.Name == "" {
		e.add("metadata.name", "required")
	}
	for i, a := range n.Status.Addresses {
		if a.Type == "Hostname" {
			continue
		}
		if _, err := netip.ParseAddr(a.Address); err != nil {
			e.add(idx("status.addresses", i)+".address", "%q is not an IP address", a.Address)
		}
	}
	return e.list
}

// Check validates the world as a whole: pod names and addresses are unique.
func (w *World) Check() error {
	var list []string
	names := map[string]bool{}
	ips := map[netip.Addr]string{}
	for _, p := range w.Pods {
		key := p.Metadata.Namespace + "/" + p.Metadata.Name
		if names[key] {
			list = append(list, fmt.Sprintf("pod %s is listed twice", key))
		}
		names[key] = true
		if p.Spec.HostNetwork {
			continue
		}
		for _, a := range p.Addresses() {
			if other, dup := ips[a]; dup {
				list = append(list, fmt.Sprintf("pods %s and %s both have address %s", other, key, a))
			}
			ips[a] = key
		}
	}
	if len(list) > 0 {
		return fmt.Errorf("world: %s", strings.Join(list, "; "))
	}
	return nil
}

// Addresses returns the pod's IP addresses (status.podIPs, or podIP).
func (p *Pod) Addresses() []netip.Addr {
	var out []netip.Addr
	seen := map[netip.Addr]bool{}
	add := func(s string) {
		if a, err := netip.ParseAddr(s); err == nil && !seen[a.Unmap()] {
			seen[a.Unmap()] = true
			out = append(out, a.Unmap())
		}
	}
	add(p.Status.PodIP)
	for _, ip := range p.Status.PodIPs {
		add(ip.IP)
	}
	return out
}

// ServiceAccountName returns the pod's service account ("default" if unset).
func (p *Pod) ServiceAccountName() string {
	switch {
	case p.Spec.ServiceAccountName != "":
		return p.Spec.ServiceAccountName
	case p.Spec.ServiceAccount != "":
		return p.Spec.ServiceAccount
	}
	return "default"
}
