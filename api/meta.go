package api

// TypeMeta is the apiVersion and kind every document carries.
type TypeMeta struct {
	APIVersion string `json:"apiVersion"`
	Kind       string `json:"kind"`
}

// ObjectMeta is the part of Kubernetes object metadata that policy uses.
// The remaining standard metadata fields are accepted so that objects exported
// with `kubectl get -o yaml` decode strictly, but play no part in policy.
type ObjectMeta struct {
	Name        string            `json:"name"`
	Namespace   string            `json:"namespace"`
	Labels      map[string]string `json:"labels"`
	Annotations map[string]string `json:"annotations"`

	GenerateName               string   `json:"generateName"`
	UID                        string   `json:"uid"`
	ResourceVersion            string   `json:"resourceVersion"`
	Generation                 int64    `json:"generation"`
	SelfLink                   string   `json:"selfLink"`
	Finalizers                 []string `json:"finalizers"`
	CreationTimestamp          any      `json:"creationTimestamp"`
	DeletionTimestamp          any      `json:"deletionTimestamp"`
	DeletionGracePeriodSeconds any      `json:"deletionGracePeriodSeconds"`
	OwnerReferences            any      `json:"ownerReferences"`
	ManagedFields              any      `json:"managedFields"`
}

// LabelSelector selects objects by labels, as metav1.LabelSelector does: every
// matchLabels pair and every expression must hold. An empty selector selects
// everything.
type LabelSelector struct {
	MatchLabels      map[string]string          `json:"matchLabels"`
	MatchExpressions []LabelSelectorRequirement `json:"matchExpressions"`
}

// LabelSelectorRequirement is one matchExpressions entry.
type LabelSelectorRequirement struct {
	Key      string   `json:"key"`
	Operator string   `json:"operator"`
	Values   []string `json:"values"`
}

// Label selector operators.
const (
	OpIn           = "In"
	OpNotIn        = "NotIn"
	OpExists       = "Exists"
	OpDoesNotExist = "DoesNotExist"
)

// Source says where a document came from, for error messages and for the
// "why" of a policy verdict.
type Source struct {
	File string // the file name as given, or a label such as "<stdin>"
	Doc  int    // 1-based document number within the file
	Item int    // 0-based index within a v1 List, or -1
	Line int    // line of the document's (or item's) first key
}

func (s Source) String() string {
	if s.File == "" {
		return ""
	}
	return s.File + ": " + s.docString()
}

func (s Source) docString() string {
	d := "document " + itoa(s.Doc)
	if s.Item >= 0 {
		d += " items[" + itoa(s.Item) + "]"
	}
	return d
}
