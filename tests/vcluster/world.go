package vcluster

import (
	"bytes"
	"cmp"
	"maps"
	"slices"

	"gopkg.in/yaml.v3"
)

// The objects of WorldYAML, shaped as `kubectl get -o yaml` prints them
// (trimmed to what api.LoadWorld reads, plus phase and hostIP).
type (
	kList struct {
		APIVersion string `yaml:"apiVersion"`
		Kind       string `yaml:"kind"`
		Items      []any  `yaml:"items"`
	}
	kMeta struct {
		Name      string            `yaml:"name"`
		Namespace string            `yaml:"namespace,omitempty"`
		Labels    map[string]string `yaml:"labels,omitempty"`
	}
	kNamespace struct {
		APIVersion string `yaml:"apiVersion"`
		Kind       string `yaml:"kind"`
		Metadata   kMeta  `yaml:"metadata"`
	}
	kNode struct {
		APIVersion string `yaml:"apiVersion"`
		Kind       string `yaml:"kind"`
		Metadata   kMeta  `yaml:"metadata"`
		Spec       struct {
			PodCIDR  string   `yaml:"podCIDR"`
			PodCIDRs []string `yaml:"podCIDRs"`
		} `yaml:"spec"`
		Status struct {
			Addresses []kAddr `yaml:"addresses"`
		} `yaml:"status"`
	}
	kAddr struct {
		Type    string `yaml:"type"`
		Address string `yaml:"address"`
	}
	kPod struct {
		APIVersion string `yaml:"apiVersion"`
		Kind       string `yaml:"kind"`
		Metadata   kMeta  `yaml:"metadata"`
		Spec       struct {
			NodeName           string       `yaml:"nodeName"`
			ServiceAccountName string       `yaml:"serviceAccountName,omitempty"`
			Containers         []kContainer `yaml:"containers"`
		} `yaml:"spec"`
		Status struct {
			Phase  string   `yaml:"phase"`
			HostIP string   `yaml:"hostIP"`
			PodIP  string   `yaml:"podIP"`
			PodIPs []kPodIP `yaml:"podIPs"`
		} `yaml:"status"`
	}
	kContainer struct {
		Name  string  `yaml:"name"`
		Ports []kPort `yaml:"ports,omitempty"`
	}
	kPort struct {
		Name          string `yaml:"name,omitempty"`
		ContainerPort int    `yaml:"containerPort"`
		Protocol      string `yaml:"protocol"`
	}
	kPodIP struct {
		IP string `yaml:"ip"`
	}
)

// SetNamespaceLabels replaces the labels of namespace ns in WorldYAML (as
// kubectl label would; the agents see it once the world is written).
func (c *Cluster) SetNamespaceLabels(ns string, labels map[string]string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.nsLabels == nil {
		c.nsLabels = map[string]map[string]string{}
	}
	c.nsLabels[ns] = maps.Clone(labels)
}

// WorldYAML is the cluster as a Kubernetes v1 List of Namespaces, Nodes and
// Pods: what api.LoadWorld and `meshctl policy check --world` read.
func (c *Cluster) WorldYAML() []byte {
	pods := c.Pods()
	nsLabels := map[string]map[string]string{}
	c.mu.Lock()
	for ns, l := range c.nsLabels {
		nsLabels[ns] = l
	}
	c.mu.Unlock()
	for _, p := range pods {
		if _, ok := nsLabels[p.Namespace]; !ok {
			nsLabels[p.Namespace] = nil
		}
	}
	list := kList{APIVersion: "v1", Kind: "List"}
	for _, ns := range slices.Sorted(maps.Keys(nsLabels)) {
		labels := maps.Clone(nsLabels[ns])
		if labels == nil {
			labels = map[string]string{}
		}
		labels["kubernetes.io/metadata.name"] = ns
		list.Items = append(list.Items, kNamespace{APIVersion: "v1", Kind: "Namespace", Metadata: kMeta{Name: ns, Labels: labels}})
	}
	for _, n := range c.nodes {
		k := kNode{APIVersion: "v1", Kind: "Node", Metadata: kMeta{Name: n.Name, Labels: map[string]string{"kubernetes.io/hostname": n.Name}}}
		k.Spec.PodCIDR = n.PodCIDR.String()
		k.Spec.PodCIDRs = []string{n.PodCIDR.String()}
		k.Status.Addresses = []kAddr{{Type: "InternalIP", Address: n.IP.String()}, {Type: "Hostname", Address: n.Name}}
		list.Items = append(list.Items, k)
	}
	for _, p := range pods {
		k := kPod{APIVersion: "v1", Kind: "Pod", Metadata: kMeta{Name: p.Name, Namespace: p.Namespace, Labels: p.Labels}}
		k.Spec.NodeName = p.Node
		k.Spec.ServiceAccountName = p.ServiceAccount
		ctr := kContainer{Name: "main"}
		for _, port := range p.Ports {
			ctr.Ports = append(ctr.Ports, kPort{Name: port.Name, ContainerPort: int(port.Port), Protocol: cmp.Or(port.Protocol, "TCP")})
		}
		k.Spec.Containers = []kContainer{ctr}
		k.Status.Phase = "Running"
		if n := c.Node(p.Node); n != nil {
			k.Status.HostIP = n.IP.String()
		}
		k.Status.PodIP = p.IP.String()
		k.Status.PodIPs = []kPodIP{{IP: p.IP.String()}}
		list.Items = append(list.Items, k)
	}
	var b bytes.Buffer
	enc := yaml.NewEncoder(&b)
	enc.SetIndent(2) // as kubectl prints
	if err := enc.Encode(list); err != nil {
		panic("vcluster: marshal world: " + err.Error()) // only plain structs: cannot happen
	}
	enc.Close()
	return b.Bytes()
}
