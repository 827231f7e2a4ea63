package api

import (
	"bytes"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"reflect"
	"sort"
	"strings"

	"gopkg.in/yaml.v3"
)

// Kinds Nodemesh reads as policy, with the apiVersion each is served at.
const (
	KindNetworkPolicy                  = "NetworkPolicy"
	KindMeshNetworkPolicy              = "MeshNetworkPolicy"
	KindMeshClusterwideNetworkPolicy   = "MeshClusterwideNetworkPolicy"
	KindCiliumNetworkPolicy            = "CiliumNetworkPolicy"
	KindCiliumClusterwideNetworkPolicy = "CiliumClusterwideNetworkPolicy"

	GroupVersionNetworking = "networking.k8s.io/v1"
	GroupVersionNodemesh   = "nodemesh.io/v1"
	GroupVersionCilium     = "cilium.io/v2"
)

var policyKinds = map[string]string{
	KindNetworkPolicy:                  GroupVersionNetworking,
	KindMeshNetworkPolicy:              GroupVersionNodemesh,
	KindMeshClusterwideNetworkPolicy:   GroupVersionNodemesh,
	KindCiliumNetworkPolicy:            GroupVersionCilium,
	KindCiliumClusterwideNetworkPolicy: GroupVersionCilium,
}

// PolicyDocument is one decoded and validated policy object. Exactly one of
// NetworkPolicy and Mesh is set.
type PolicyDocument struct {
	Source        Source
	NetworkPolicy *NetworkPolicy
	Mesh          *MeshPolicy
}

// Kind is the document's kind as written.
func (p *PolicyDocument) Kind() string {
	if p.NetworkPolicy != nil {
		return p.NetworkPolicy.Kind
	}
	return p.Mesh.Kind
}

// Meta is the document's metadata.
func (p *PolicyDocument) Meta() *ObjectMeta {
	if p.NetworkPolicy != nil {
		return &p.NetworkPolicy.Metadata
	}
	return &p.Mesh.Metadata
}

// Clusterwide reports whether the policy is cluster-scoped.
func (p *PolicyDocument) Clusterwide() bool {
	k := p.Kind()
	return k == KindMeshClusterwideNetworkPolicy || k == KindCiliumClusterwideNetworkPolicy
}

// Ref names the policy as users see it: "Kind ns/name" or "Kind name".
func (p *PolicyDocument) Ref() string {
	m := p.Meta()
	if p.Clusterwide() {
		return p.Kind() + " " + m.Name
	}
	return p.Kind() + " " + m.Namespace + "/" + m.Name
}

// DocError is a problem in one document of a file.
type DocError struct {
	Source Source
	Field  *FieldError
}

func (e *DocError) Error() string {
	var b strings.Builder
	if e.Source.File != "" {
		b.WriteString(e.Source.File)
		b.WriteString(": ")
	}
	b.WriteString("document ")
	b.WriteString(itoa(e.Source.Doc))
	b.WriteString(": ")
	path := e.Field.Path
	if e.Source.Item >= 0 {
		path = joinPath("items["+itoa(e.Source.Item)+"]", path)
	}
	if path != "" {
		b.WriteString(path)
		b.WriteString(": ")
	}
	b.WriteString(e.Field.Msg)
	if e.Field.Line > 0 {
		fmt.Fprintf(&b, " (line %d)", e.Field.Line)
	}
	return b.String()
}

// rawDoc is one object of a YAML stream, List items already unfolded.
type rawDoc struct {
	src  Source
	node *yaml.Node
	apiV string
	kind string
}

// splitDocuments parses a YAML (or JSON) stream into its objects.
func splitDocuments(file string, data []byte) ([]rawDoc, []error) {
	var docs []rawDoc
	var errs []error
	dec := yaml.NewDecoder(bytes.NewReader(data))
	for i := 1; ; i++ {
		var n yaml.Node
		err := dec.Decode(&n)
		if errors.Is(err, io.EOF) {
			break
		}
		src := Source{File: file, Doc: i, Item: -1}
		if err != nil {
			msg := strings.TrimPrefix(err.Error(), "yaml: ")
			errs = append(errs, &DocError{Source: src, Field: &FieldError{Msg: "not valid YAML: " + msg + yamlHint(msg)}})
			break // the parser cannot resynchronise after an error
		}
		root := resolve(&n)
		if isNull(root) {
			continue
		}
		src.Line = root.Line
		if root.Kind != yaml.MappingNode {
			errs = append(errs, &DocError{Source: src, Field: &FieldError{Msg: "must be an object with apiVersion and kind, got " + kindName(root), Line: root.Line}})
			continue
		}
		apiV, kind := scalarField(root, "apiVersion"), scalarField(root, "kind")
		if strings.HasSuffix(kind, "List") && fieldNode(root, "items") != nil {
			items := resolve(fieldNode(root, "items"))
			if items.Kind != yaml.SequenceNode {
				errs = append(errs, &DocError{Source: src, Field: &FieldError{Path: "items", Msg: "must be a list, got " + kindName(items), Line: items.Line}})
				continue
			}
			for j, it := range items.Content {
				it = resolve(it)
				isrc := src
				isrc.Item, isrc.Line = j, it.Line
				if it.Kind != yaml.MappingNode {
					errs = append(errs, &DocError{Source: isrc, Field: &FieldError{Msg: "must be an object, got " + kindName(it), Line: it.Line}})
					continue
				}
				docs = append(docs, rawDoc{src: isrc, node: it, apiV: scalarField(it, "apiVersion"), kind: scalarField(it, "kind")})
			}
			continue
		}
		docs = append(docs, rawDoc{src: src, node: root, apiV: apiV, kind: kind})
	}
	return docs, errs
}

func yamlHint(msg string) string {
	if strings.Contains(msg, "already defined") {
		return " — if the YAML lost its indentation (keys that belong under metadata or spec written at the left margin), indent it again"
	}
	if strings.Contains(msg, "found character that cannot start any token") {
		return " — YAML does not allow tabs for indentation; use spaces"
	}
	return ""
}

func fieldNode(m *yaml.Node, name string) *yaml.Node {
	for i := 0; i+1 < len(m.Content); i += 2 {
		if m.Content[i].Value == name {
			return m.Content[i+1]
		}
	}
	return nil
}

func scalarField(m *yaml.Node, name string) string {
	n := resolve(fieldNode(m, name))
	if n == nil || n.Kind != yaml.ScalarNode {
		return ""
	}
	return n.Value
}

// DecodePolicies decodes and validates every policy document of one file's
// contents. Any document of another kind is an error.
func DecodePolicies(file string, data []byte) ([]PolicyDocument, error) {
	raws, errs := splitDocuments(file, data)
	var out []PolicyDocument
	for _, r := range raws {
		doc, derrs := decodePolicy(r)
		for _, fe := range derrs {
			errs = append(errs, &DocError{Source: r.src, Field: fe})
		}
		if len(derrs) == 0 {
			out = append(out, doc)
		}
	}
	if len(errs) > 0 {
		return nil, errors.Join(errs...)
	}
	return out, nil
}

func decodePolicy(r rawDoc) (PolicyDocument, []*FieldError) {
	doc := PolicyDocument{Source: r.src}
	if r.kind == "" {
		return doc, []*FieldError{{Path: "kind", Msg: "missing: every document needs apiVersion and kind", Line: r.src.Line}}
	}
	want, ok := policyKinds[r.kind]
	if !ok {
		return doc, []*FieldError{{Path: "kind", Msg: fmt.Sprintf("%q (apiVersion %q) is not a policy kind Nodemesh reads; it reads %s", r.kind, r.apiV, policyKindList()), Line: r.src.Line}}
	}
	if r.apiV != want {
		return doc, []*FieldError{{Path: "apiVersion", Msg: fmt.Sprintf("%q does not serve %s; use apiVersion: %s", r.apiV, r.kind, want), Line: r.src.Line}}
	}
	d := &decoder{strict: true}
	var verrs []*FieldError
	if r.kind == KindNetworkPolicy {
		np := &NetworkPolicy{}
		d.decode(r.node, reflect.ValueOf(np).Elem(), "")
		if len(d.errs) == 0 {
			verrs = validateNetworkPolicy(np)
		}
		doc.NetworkPolicy = np
	} else {
		mp := &MeshPolicy{}
		d.decode(r.node, reflect.ValueOf(mp).Elem(), "")
		if len(d.errs) == 0 {
			verrs = validateMeshPolicy(mp)
		}
		doc.Mesh = mp
	}
	for _, fe := range verrs {
		if fe.Line == 0 {
			if n := nodeAt(r.node, fe.Path); n != nil {
				fe.Line = n.Line
			}
		}
	}
	return doc, append(d.errs, verrs...)
}

func policyKindList() string {
	var ks []string
	for k, v := range policyKinds {
		ks = append(ks, v+" "+k)
	}
	sort.Strings(ks)
	return strings.Join(ks, ", ")
}

// LoadPolicies reads policy documents from files and directories (every
// .yaml, .yml and .json file below a directory, in lexical order; "-" is
// standard input). It returns all documents or, if any file has a problem,
// nothing and every problem found. The same policy defined twice is an error.
func LoadPolicies(paths ...string) ([]PolicyDocument, error) {
	var out []PolicyDocument
	errs := forEachFile(paths, func(f string, data []byte) error {
		docs, err := DecodePolicies(f, data)
		out = append(out, docs...)
		return err
	})
	errs = append(errs, checkDuplicates(out)...)
	if len(errs) > 0 {
		return nil, errors.Join(errs...)
	}
	return out, nil
}

// forEachFile reads every file the paths name and hands it to f, collecting
// every error.
func forEachFile(paths []string, f func(file string, data []byte) error) []error {
	var errs []error
	for _, p := range paths {
		files, err := expandPath(p)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		for _, file := range files {
			data, err := readInput(file)
			if err == nil {
				err = f(file, data)
			}
			if err != nil {
				errs = append(errs, err)
			}
		}
	}
	return errs
}

func checkDuplicates(docs []PolicyDocument) []error {
	var errs []error
	seen := map[string]Source{}
	for _, d := range docs {
		key := d.Ref()
		if first, dup := seen[key]; dup {
			errs = append(errs, &DocError{Source: d.Source, Field: &FieldError{Path: "metadata.name", Msg: fmt.Sprintf("%s is defined twice; the first is %s", key, first)}})
			continue
		}
		seen[key] = d.Source
	}
	return errs
}

func readInput(f string) ([]byte, error) {
	if f == "-" {
		return io.ReadAll(os.Stdin)
	}
	data, err := os.ReadFile(f)
	if err != nil {
		return nil, fmt.Errorf("read %w", err)
	}
	return data, nil
}

// Files lists the YAML and JSON files that paths name, as LoadPolicies and
// LoadWorld read them.
func Files(paths ...string) ([]string, error) {
	var out []string
	for _, p := range paths {
		fs, err := expandPath(p)
		if err != nil {
			return nil, err
		}
		out = append(out, fs...)
	}
	return out, nil
}

// ContentSum hashes the names and contents of the files paths name (as
// Files lists them), so that a follower of the inputs rereads them only
// when something changed. An unreadable path or file changes the sum too.
func ContentSum(paths ...string) [32]byte {
	h := sha256.New()
	for _, p := range paths {
		files, err := expandPath(p)
		if err != nil {
			fmt.Fprint(h, err) // an unreadable path; an empty directory lists nothing
		}
		for _, f := range files {
			data, err := os.ReadFile(f)
			if err != nil {
				fmt.Fprint(h, err)
			}
			fmt.Fprintf(h, "%s\x00%d\x00", f, len(data))
			h.Write(data)
		}
	}
	var sum [32]byte
	copy(sum[:], h.Sum(nil))
	return sum
}

// expandPath lists the YAML/JSON files a path names.
func expandPath(p string) ([]string, error) {
	if p == "-" {
		return []string{p}, nil
	}
	st, err := os.Stat(p)
	if err != nil {
		return nil, fmt.Errorf("read %s: %w", p, errors.Unwrap(err))
	}
	if !st.IsDir() {
		return []string{p}, nil
	}
	var files []string
	err = filepath.WalkDir(p, func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if d.IsDir() {
			if path != p && strings.HasPrefix(d.Name(), ".") {
				return filepath.SkipDir
			}
			return nil
		}
		switch strings.ToLower(filepath.Ext(path)) {
		case ".yaml", ".yml", ".json":
			files = append(files, path)
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("read directory %s: %w", p, err)
	}
	if len(files) == 0 {
		return nil, fmt.Errorf("%s: no .yaml, .yml or .json files in this directory", p)
	}
	sort.Strings(files)
	return files, nil
}

// DecodeWorld decodes Namespace, Pod and Node objects (and the endpoints of
// the default/kubernetes service, for the kube-apiserver entity) from one
// file's contents into w. Other kinds and unknown fields are ignored.
func DecodeWorld(file string, data []byte, w *World) error {
	raws, errs := splitDocuments(file, data)
	for _, r := range raws {
		var ferrs []*FieldError
		d := &decoder{strict: false}
		switch r.kind {
		case "Namespace":
			var ns Namespace
			d.decode(r.node, reflect.ValueOf(&ns).Elem(), "")
			if ns.Metadata.Name == "" {
				ferrs = append(ferrs, &FieldError{Path: "metadata.name", Msg: "required", Line: r.src.Line})
			}
			w.Namespaces = append(w.Namespaces, ns)
		case "Pod":
			var p Pod
			d.decode(r.node, reflect.ValueOf(&p).Elem(), "")
			ferrs = validatePod(&p)
			w.Pods = append(w.Pods, p)
		case "Node":
			var n Node
			d.decode(r.node, reflect.ValueOf(&n).Elem(), "")
			ferrs = validateNode(&n)
			w.Nodes = append(w.Nodes, n)
		case "Endpoints":
			var ep endpoints
			d.decode(r.node, reflect.ValueOf(&ep).Elem(), "")
			if ep.Metadata.Name == "kubernetes" && (ep.Metadata.Namespace == "default" || ep.Metadata.Namespace == "") {
				for _, s := range ep.Subsets {
					for _, a := range s.Addresses {
						w.APIServerIPs = append(w.APIServerIPs, a.IP)
					}
				}
			}
		}
		for _, fe := range append(d.errs, ferrs...) {
			errs = append(errs, &DocError{Source: r.src, Field: fe})
		}
	}
	return errors.Join(errs...)
}

type endpoints struct {
	Metadata ObjectMeta `json:"metadata"`
	Subsets  []struct {
		Addresses []struct {
			IP string `json:"ip"`
		} `json:"addresses"`
	} `json:"subsets"`
}

// LoadWorld reads world files (see DecodeWorld) and checks the result as a
// whole: unique pod names and addresses, namespaces given for every pod.
func LoadWorld(paths ...string) (*World, error) {
	w := &World{}
	errs := forEachFile(paths, func(f string, data []byte) error { return DecodeWorld(f, data, w) })
	if len(errs) == 0 {
		if err := w.Check(); err != nil {
			errs = append(errs, err)
		}
	}
	if len(errs) > 0 {
		return nil, errors.Join(errs...)
	}
	return w, nil
}
