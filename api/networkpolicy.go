package api

// NetworkPolicy is a Kubernetes networking.k8s.io/v1 NetworkPolicy.
type NetworkPolicy struct {
	TypeMeta `json:",inline"`
	Metadata ObjectMeta        `json:"metadata"`
	Spec     NetworkPolicySpec `json:"spec"`
	Status   any               `json:"status"`
}

// NetworkPolicySpec is the spec of a NetworkPolicy.
type NetworkPolicySpec struct {
	PodSelector LabelSelector              `json:"podSelector"`
	Ingress     []NetworkPolicyIngressRule `json:"ingress"`
	Egress      []NetworkPolicyEgressRule  `json:"egress"`
	PolicyTypes []string                   `json:"policyTypes"`
}

// NetworkPolicyIngressRule allows traffic from any of From on any of Ports.
type NetworkPolicyIngressRule struct {
	Ports []NetworkPolicyPort `json:"ports"`
	From  []NetworkPolicyPeer `json:"from"`
}

// NetworkPolicyEgressRule allows traffic to any of To on any of Ports.
type NetworkPolicyEgressRule struct {
	Ports []NetworkPolicyPort `json:"ports"`
	To    []NetworkPolicyPeer `json:"to"`
}

// NetworkPolicyPort is a protocol and a port, a port range or a named port.
type NetworkPolicyPort struct {
	Protocol *string      `json:"protocol"`
	Port     *IntOrString `json:"port"`
	EndPort  *int32       `json:"endPort"`
}

// NetworkPolicyPeer is a set of pods (podSelector and/or namespaceSelector,
// both meaning AND) or an IP block.
type NetworkPolicyPeer struct {
	PodSelector       *LabelSelector `json:"podSelector"`
	NamespaceSelector *LabelSelector `json:"namespaceSelector"`
	IPBlock           *IPBlock       `json:"ipBlock"`
}

// IPBlock is a CIDR with exceptions.
type IPBlock struct {
	CIDR   string   `json:"cidr"`
	Except []string `json:"except"`
}

// Policy types of a NetworkPolicy.
const (
	PolicyTypeIngress = "Ingress"
	PolicyTypeEgress  = "Egress"
)
