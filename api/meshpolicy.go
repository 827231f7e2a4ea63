package api

// MeshPolicy is a nodemesh.io/v1 MeshNetworkPolicy or
// MeshClusterwideNetworkPolicy, or the cilium.io/v2 CiliumNetworkPolicy /
// CiliumClusterwideNetworkPolicy it is schema-compatible with. A document
// carries one rule in Spec, a list in Specs, or both.
type MeshPolicy struct {
	TypeMeta `json:",inline"`
	Metadata ObjectMeta `json:"metadata"`
	Spec     *Rule      `json:"spec"`
	Specs    []Rule     `json:"specs"`
	Status   any        `json:"status"`
}

// Rule selects endpoints and says what they may send and receive.
type Rule struct {
	EndpointSelector  *LabelSelector     `json:"endpointSelector"`
	NodeSelector      *LabelSelector     `json:"nodeSelector"`
	Ingress           []IngressRule      `json:"ingress"`
	IngressDeny       []IngressRule      `json:"ingressDeny"`
	Egress            []EgressRule       `json:"egress"`
	EgressDeny        []EgressRule       `json:"egressDeny"`
	EnableDefaultDeny *DefaultDenyConfig `json:"enableDefaultDeny"`
	Labels            []RuleLabel        `json:"labels"`
	Description       string             `json:"description"`
	Log               any                `json:"log"`
}

// DefaultDenyConfig turns off the default-deny that selecting an endpoint in
// a direction otherwise implies (nil means true).
type DefaultDenyConfig struct {
	Ingress *bool `json:"ingress"`
	Egress  *bool `json:"egress"`
}

// RuleLabel is a label attached to a rule for bookkeeping.
type RuleLabel struct {
	Key    string `json:"key"`
	Value  string `json:"value"`
	Source string `json:"source"`
}

// IngressRule is an ingress or ingressDeny rule. Peers are the union of its
// from* fields; with none of them and ports given, every peer is meant.
type IngressRule struct {
	FromEndpoints  []LabelSelector `json:"fromEndpoints"`
	FromCIDR       []string        `json:"fromCIDR"`
	FromCIDRSet    []CIDRRule      `json:"fromCIDRSet"`
	FromEntities   []string        `json:"fromEntities"`
	ToPorts        []PortRule      `json:"toPorts"`
	ICMPs          []ICMPRule      `json:"icmps"`
	Authentication *Authentication `json:"authentication"`

	// Accepted by the schema but not enforced by Nodemesh: validation
	// refuses a policy that sets them rather than enforce it partially.
	FromRequires []LabelSelector `json:"fromRequires"`
	FromGroups   any             `json:"fromGroups"`
	FromNodes    []LabelSelector `json:"fromNodes"`
}

// EgressRule is an egress or egressDeny rule.
type EgressRule struct {
	ToEndpoints    []LabelSelector `json:"toEndpoints"`
	ToCIDR         []string        `json:"toCIDR"`
	ToCIDRSet      []CIDRRule      `json:"toCIDRSet"`
	ToEntities     []string        `json:"toEntities"`
	ToPorts        []PortRule      `json:"toPorts"`
	ICMPs          []ICMPRule      `json:"icmps"`
	Authentication *Authentication `json:"authentication"`

	ToRequires []LabelSelector `json:"toRequires"`
	ToServices any             `json:"toServices"`
	ToFQDNs    any             `json:"toFQDNs"`
	ToGroups   any             `json:"toGroups"`
	ToNodes    []LabelSelector `json:"toNodes"`
}

// CIDRRule is a CIDR with exceptions.
type CIDRRule struct {
	CIDR              string   `json:"cidr"`
	Except            []string `json:"except"`
	CIDRGroupRef      string   `json:"cidrGroupRef"`
	CIDRGroupSelector any      `json:"cidrGroupSelector"`
}

// PortRule lists ports and, optionally, the L7 rules that apply on them.
type PortRule struct {
	Ports []PortProtocol `json:"ports"`
	Rules *L7Rules       `json:"rules"`

	TerminatingTLS any      `json:"terminatingTLS"`
	OriginatingTLS any      `json:"originatingTLS"`
	ServerNames    []string `json:"serverNames"`
	Listener       any      `json:"listener"`
}

// PortProtocol is a port (number or name; "0" or empty means every port), an
// optional end of range, and a protocol (TCP, UDP, SCTP or ANY, the default).
type PortProtocol struct {
	Port     PortString `json:"port"`
	EndPort  int32      `json:"endPort"`
	Protocol string     `json:"protocol"`
}

// L7Rules are the application-protocol rules of a port rule.
type L7Rules struct {
	HTTP []HTTPRule `json:"http"`

	Kafka   any    `json:"kafka"`
	DNS     any    `json:"dns"`
	L7Proto string `json:"l7proto"`
	L7      any    `json:"l7"`
}

// HTTPRule allows requests that match every field it sets. Method, Path and
// Host are regular expressions that must match the whole value. Headers are
// "Name" (present) or "Name: value" (equal).
type HTTPRule struct {
	Method        string        `json:"method"`
	Path          string        `json:"path"`
	Host          string        `json:"host"`
	Headers       []string      `json:"headers"`
	HeaderMatches []HeaderMatch `json:"headerMatches"`
}

// HeaderMatch requires header Name to equal Value.
type HeaderMatch struct {
	Name     string `json:"name"`
	Value    string `json:"value"`
	Mismatch string `json:"mismatch"`
	Secret   any    `json:"secret"`
}

// ICMPRule lists ICMP types.
type ICMPRule struct {
	Fields []ICMPField `json:"fields"`
}

// ICMPField is an ICMP type for a family (IPv4, the default, or IPv6).
type ICMPField struct {
	Family string      `json:"family"`
	Type   IntOrString `json:"type"`
}

// Authentication asks for mutual authentication of the peers of a rule.
type Authentication struct {
	Mode string `json:"mode"`
}

// Authentication modes.
const (
	AuthDisabled = "disabled"
	AuthRequired = "required"
)
