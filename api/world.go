package api

// Namespace is a Kubernetes Namespace as far as policy cares: its labels.
type Namespace struct {
	TypeMeta `json:",inline"`
	Metadata ObjectMeta `json:"metadata"`
}

// Pod is a Kubernetes Pod as far as policy cares.
type Pod struct {
	TypeMeta `json:",inline"`
	Metadata ObjectMeta `json:"metadata"`
	Spec     PodSpec    `json:"spec"`
	Status   PodStatus  `json:"status"`
}

// PodSpec is the part of a pod spec policy uses.
type PodSpec struct {
	NodeName           string      `json:"nodeName"`
	ServiceAccountName string      `json:"serviceAccountName"`
	ServiceAccount     string      `json:"serviceAccount"`
	HostNetwork        bool        `json:"hostNetwork"`
	Containers         []Container `json:"containers"`
	InitContainers     []Container `json:"initContainers"`
}

// Container is the part of a container policy uses: its named ports.
type Container struct {
	Name  string          `json:"name"`
	Ports []ContainerPort `json:"ports"`
}

// ContainerPort is a port a container declares.
type ContainerPort struct {
	Name          string `json:"name"`
	ContainerPort int32  `json:"containerPort"`
	Protocol      string `json:"protocol"`
}

// PodStatus holds the pod's addresses.
type PodStatus struct {
	PodIP  string  `json:"podIP"`
	PodIPs []PodIP `json:"podIPs"`
	HostIP string  `json:"hostIP"`
	Phase  string  `json:"phase"`
}

// PodIP is one of a pod's addresses.
type PodIP struct {
	IP string `json:"ip"`
}

// Node is a Kubernetes Node: its addresses and pod CIDRs.
type Node struct {
	TypeMeta `json:",inline"`
	Metadata ObjectMeta `json:"metadata"`
	Spec     NodeSpec   `json:"spec"`
	Status   NodeStatus `json:"status"`
}

// NodeSpec holds the node's pod CIDRs.
type NodeSpec struct {
	PodCIDR  string   `json:"podCIDR"`
	PodCIDRs []string `json:"podCIDRs"`
}

// NodeStatus holds the node's addresses.
type NodeStatus struct {
	Addresses []NodeAddress `json:"addresses"`
}

// NodeAddress is one address of a node.
type NodeAddress struct {
	Type    string `json:"type"`
	Address string `json:"address"`
}

// World is the cluster state policies are evaluated against.
type World struct {
	Namespaces []Namespace
	Pods       []Pod
	Nodes      []Node
	// APIServerIPs are the kube-apiserver's addresses (from the endpoints of
	// the default/kubernetes service, when the world file has them).
	APIServerIPs []string
}
