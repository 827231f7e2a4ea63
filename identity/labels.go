package identity

import (
	"sort"
	"strings"
)

// Label sources.
const (
	SourceK8s      = "k8s"
	SourceReserved = "reserved"
	SourceAny      = "any"
)

// Label keys Nodemesh derives for every pod, named as Cilium names them so
// that CiliumNetworkPolicy selectors written for Cilium select the same pods.
const (
	LabelNamespace         = "io.kubernetes.pod.namespace"
	LabelNamespaceLabels   = "io.cilium.k8s.namespace.labels."
	LabelServiceAccount    = "io.cilium.k8s.policy.serviceaccount"
	LabelCluster           = "io.cilium.k8s.policy.cluster"
	LabelNamespaceMetaName = "kubernetes.io/metadata.name"
	DefaultCluster         = "default"
)

// Label is one label of an identity.
type Label struct {
	Source string
	Key    string
	Value  string
}

func (l Label) String() string {
	s := l.Source + ":" + l.Key
	if l.Value != "" {
		s += "=" + l.Value
	}
	return s
}

// Labels is a set of labels sorted by source and key; it is the identity's
// key in an allocator.
type Labels []Label

// NewLabels sorts labels into a Labels set.
func NewLabels(ls ...Label) Labels {
	out := append(Labels(nil), ls...)
	sort.Slice(out, func(i, j int) bool {
		if out[i].Source != out[j].Source {
			return out[i].Source < out[j].Source
		}
		return out[i].Key < out[j].Key
	})
	return out
}

// String is the canonical form, e.g. "k8s:app=web,k8s:io.kubernetes.pod.namespace=prod".
func (ls Labels) String() string {
	parts := make([]string, len(ls))
	for i, l := range ls {
		parts[i] = l.String()
	}
	return strings.Join(parts, ",")
}

// Get returns the value of key; source "" or "any" matches any source.
func (ls Labels) Get(source, key string) (string, bool) {
	for _, l := range ls {
		if l.Key == key && (source == "" || source == SourceAny || source == l.Source) {
			return l.Value, true
		}
	}
	return "", false
}

// excludedPodLabels change with every rollout and never carry meaning for
// policy; keeping them would give each ReplicaSet its own identity.
var excludedPodLabels = map[string]bool{
	"pod-template-hash":        true,
	"controller-revision-hash": true,
	"pod-template-generation":  true,
}

// ForPod returns the identity labels of a pod: its labels (less those that
// change on every rollout), its namespace, the namespace's labels, its
// service account and cluster.
func ForPod(podLabels map[string]string, namespace string, nsLabels map[string]string, serviceAccount string) Labels {
	ls := make([]Label, 0, len(podLabels)+len(nsLabels)+4)
	for k, v := range podLabels {
		if !excludedPodLabels[k] {
			ls = append(ls, Label{SourceK8s, k, v})
		}
	}
	ls = append(ls,
		Label{SourceK8s, LabelNamespace, namespace},
		Label{SourceK8s, LabelServiceAccount, serviceAccount},
		Label{SourceK8s, LabelCluster, DefaultCluster},
	)
	hasMetaName := false
	for k, v := range nsLabels {
		ls = append(ls, Label{SourceK8s, LabelNamespaceLabels + k, v})
		hasMetaName = hasMetaName || k == LabelNamespaceMetaName
	}
	if !hasMetaName { // the API server sets it on every namespace
		ls = append(ls, Label{SourceK8s, LabelNamespaceLabels + LabelNamespaceMetaName, namespace})
	}
	return NewLabels(ls...)
}

// IsPod reports whether the labels are a pod's (not a reserved entity's).
func (ls Labels) IsPod() bool {
	_, ok := ls.Get(SourceK8s, LabelNamespace)
	return ok
}
