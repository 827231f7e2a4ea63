package policytest

import (
	"bytes"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"

	"gopkg.in/yaml.v3"

	"github.com/nodemesh/nodemesh/api"
	"github.com/nodemesh/nodemesh/l7policy"
	"github.com/nodemesh/nodemesh/policy"
)

// Scenario is one test case: a world (patched), policies and expectations.
type Scenario struct {
	File        string        `yaml:"-"`
	Name        string        `yaml:"name"`
	Upstream    string        `yaml:"upstream"`
	Source      string        `yaml:"source"`
	Description string        `yaml:"description"`
	World       string        `yaml:"world"` // file next to the scenario; default world.yaml
	WorldPatch  *WorldPatch   `yaml:"worldPatch"`
	Policies    string        `yaml:"policies"`
	Matrix      []MatrixCase  `yaml:"matrix"`
	Flows       []FlowCase    `yaml:"flows"`
	Invalid     []InvalidCase `yaml:"invalid"`
	base        *api.World
}

// WorldPatch replaces labels of namespaces and pods.
type WorldPatch struct {
	Namespaces map[string]LabelPatch `yaml:"namespaces"`
	Pods       map[string]LabelPatch `yaml:"pods"`
}

// LabelPatch is the new label set of an object.
type LabelPatch struct {
	Labels map[string]string `yaml:"labels"`
}

// MatrixCase is an expected reachability matrix for one protocol and port.
type MatrixCase struct {
	Protocol string       `yaml:"protocol"`
	Port     uint16       `yaml:"port"`
	Default  string       `yaml:"default"`
	Expect   []ExpectLine `yaml:"expect"`
}

// ExpectLine sets the cells from → to ("ns/pod", either part may be "*").
type ExpectLine struct {
	From    string `yaml:"from"`
	To      string `yaml:"to"`
	Verdict string `yaml:"verdict"`
}

// FlowCase is one flow with its expected verdict.
type FlowCase struct {
	From     string            `yaml:"from"`
	To       string            `yaml:"to"`
	Port     string            `yaml:"port"`
	Protocol string            `yaml:"protocol"`
	HTTP     *l7policy.Request `yaml:"http"`
	Verdict  string            `yaml:"verdict"`
	// Optional finer expectations.
	EgressReason  string `yaml:"egressReason"`
	IngressReason string `yaml:"ingressReason"`
	Why           string `yaml:"why"`
}

// InvalidCase is a policy text that must be refused with an error
// containing every string in Errors.
type InvalidCase struct {
	Policy string   `yaml:"policy"`
	Errors []string `yaml:"errors"`
}

// Load reads every scenario file (all .yaml files but world files) of dir.
func Load(dir string) ([]*Scenario, error) {
	files, err := filepath.Glob(filepath.Join(dir, "*.yaml"))
	if err != nil {
		return nil, err
	}
	sort.Strings(files)
	worlds := map[string]*api.World{}
	var out []*Scenario
	for _, f := range files {
		if strings.HasPrefix(filepath.Base(f), "world") {
			continue
		}
		data, err := os.ReadFile(f)
		if err != nil {
			return nil, err
		}
		s := &Scenario{File: f}
		dec := yaml.NewDecoder(bytes.NewReader(data))
		dec.KnownFields(true)
		if err := dec.Decode(s); err != nil {
			return nil, fmt.Errorf("%s: %w", f, err)
		}
		if s.World == "" {
			s.World = "world.yaml"
		}
		wf := filepath.Join(dir, s.World)
		if worlds[wf] == nil {
			w, err := api.LoadWorld(wf)
			if err != nil {
				return nil, err
			}
			worlds[wf] = w
		}
		s.base = worlds[wf]
		out = append(out, s)
	}
	if len(out) == 0 {
		return nil, fmt.Errorf("%s: no scenarios", dir)
	}
	return out, nil
}

// BuildWorld returns the scenario's world: the base world with the patch.
func (s *Scenario) BuildWorld() *api.World {
	w := *s.base
	w.Namespaces = append([]api.Namespace(nil), s.base.Namespaces...)
	w.Pods = append([]api.Pod(nil), s.base.Pods...)
	if s.WorldPatch == nil {
		return &w
	}
	for i := range w.Namespaces {
		if p, ok := s.WorldPatch.Namespaces[w.Namespaces[i].Metadata.Name]; ok {
			w.Namespaces[i].Metadata.Labels = p.Labels
		}
	}
	for i := range w.Pods {
		m := w.Pods[i].Metadata
		if p, ok := s.WorldPatch.Pods[m.Namespace+"/"+m.Name]; ok {
			w.Pods[i].Metadata.Labels = p.Labels
		}
	}
	return &w
}

// PolicyDocs decodes the scenario's policies.
func (s *Scenario) PolicyDocs() ([]api.PolicyDocument, error) {
	if strings.TrimSpace(s.Policies) == "" {
		return nil, nil
	}
	return api.DecodePolicies(s.Name+".policies", []byte(s.Policies))
}

// Pods lists the world's pods as "ns/pod", sorted.
func Pods(w *api.World) []string {
	var out []string
	for _, p := range w.Pods {
		out = append(out, p.Metadata.Namespace+"/"+p.Metadata.Name)
	}
	sort.Strings(out)
	return out
}

func globMatch(pattern, pod string) bool {
	pns, pname, _ := strings.Cut(pattern, "/")
	ns, name, _ := strings.Cut(pod, "/")
	return (pns == "*" || pns == ns) && (pname == "*" || pname == name)
}

// Expected builds the expected matrix over pods. A pod reaching itself is
// always allowed.
func (m MatrixCase) Expected(pods []string) (*policy.Matrix, error) {
	def, err := verdict(m.Default)
	if err != nil {
		return nil, err
	}
	mx := policy.NewMatrix(pods, def)
	for _, l := range m.Expect {
		v, err := verdict(l.Verdict)
		if err != nil {
			return nil, err
		}
		for _, a := range pods {
			for _, b := range pods {
				if globMatch(l.From, a) && globMatch(l.To, b) {
					mx.Set(a, b, v)
				}
			}
		}
	}
	for _, p := range pods {
		mx.Set(p, p, policy.Allowed)
	}
	return mx, nil
}

func verdict(s string) (policy.Verdict, error) {
	switch s {
	case "allowed":
		return policy.Allowed, nil
	case "denied":
		return policy.Denied, nil
	}
	return "", fmt.Errorf("verdict %q: want allowed or denied", s)
}

// Verdict parses a FlowCase verdict.
func (f FlowCase) Expected() (policy.Verdict, error) { return verdict(f.Verdict) }

// Flow converts a FlowCase to a policy.Flow.
func (f FlowCase) Flow() (policy.Flow, error) {
	proto := policy.ProtoTCP
	if f.Protocol != "" {
		var err error
		if proto, err = policy.ParseProto(f.Protocol); err != nil {
			return policy.Flow{}, err
		}
	}
	fl := policy.Flow{From: f.From, To: f.To, Proto: proto, HTTP: f.HTTP}
	var n int
	if _, err := fmt.Sscanf(f.Port, "%d", &n); err == nil {
		fl.Port = uint16(n)
	} else {
		fl.PortName = f.Port
	}
	return fl, nil
}

// ObservedMatrix asks c about every pair of pods.
func ObservedMatrix(c policy.Checker, pods []string, proto policy.Proto, port uint16) (*policy.Matrix, error) {
	m := policy.NewMatrix(pods, policy.Denied)
	for _, a := range pods {
		for _, b := range pods {
			r, err := c.Check(policy.Flow{From: a, To: b, Proto: proto, Port: port})
			if err != nil {
				return nil, err
			}
			m.Set(a, b, r.Verdict)
		}
	}
	return m, nil
}
