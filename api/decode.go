package api

// The decoder walks a yaml.v3 node tree into Go structs by their json tags,
// collecting every problem with its field path instead of stopping at the
// first, and refusing unknown fields when strict. encoding/json cannot do
// this: its errors carry neither the path of an unknown field nor an index.

import (
	"fmt"
	"reflect"
	"sort"
	"strconv"
	"strings"
	"sync"

	"gopkg.in/yaml.v3"
)

// FieldError is a problem with one field of a document.
type FieldError struct {
	Path string // e.g. spec.ingress[0].toPorts[0].ports[0].port
	Msg  string
	Line int
}

func (e *FieldError) Error() string {
	if e.Path == "" {
		return e.Msg
	}
	return e.Path + ": " + e.Msg
}

type decoder struct {
	strict bool
	errs   []*FieldError
}

func (d *decoder) fail(n *yaml.Node, path, format string, args ...any) {
	line := 0
	if n != nil {
		line = n.Line
	}
	d.errs = append(d.errs, &FieldError{Path: path, Msg: fmt.Sprintf(format, args...), Line: line})
}

// scalarDecoder is implemented by types that decode themselves from a scalar.
type scalarDecoder interface {
	decodeScalar(n *yaml.Node) error
}

var (
	anyType           = reflect.TypeOf((*any)(nil)).Elem()
	scalarDecoderType = reflect.TypeOf((*scalarDecoder)(nil)).Elem()
)

func resolve(n *yaml.Node) *yaml.Node {
	for n != nil && n.Kind == yaml.AliasNode {
		n = n.Alias
	}
	if n != nil && n.Kind == yaml.DocumentNode && len(n.Content) == 1 {
		return resolve(n.Content[0])
	}
	return n
}

func isNull(n *yaml.Node) bool {
	return n == nil || (n.Kind == yaml.ScalarNode && n.Tag == "!!null")
}

func kindName(n *yaml.Node) string {
	switch n.Kind {
	case yaml.MappingNode:
		return "a mapping"
	case yaml.SequenceNode:
		return "a list"
	case yaml.ScalarNode:
		switch n.Tag {
		case "!!int":
			return "the number " + n.Value
		case "!!float":
			return "the number " + n.Value
		case "!!bool":
			return "the boolean " + n.Value
		case "!!str":
			return strconv.Quote(n.Value)
		}
		return n.Value
	}
	return "an unexpected node"
}

func joinPath(path, field string) string {
	if path == "" {
		return field
	}
	return path + "." + field
}

// decode fills v (addressable) from n.
func (d *decoder) decode(n *yaml.Node, v reflect.Value, path string) {
	n = resolve(n)
	if isNull(n) {
		return // leave the zero value, as Kubernetes does for null
	}
	if v.Type() == anyType {
		v.Set(reflect.ValueOf(true)) // the value is not kept: validation only asks whether it was set
		return
	}
	if v.CanAddr() && v.Addr().Type().Implements(scalarDecoderType) {
		if n.Kind != yaml.ScalarNode {
			d.fail(n, path, "must be a single value, got %s", kindName(n))
			return
		}
		if err := v.Addr().Interface().(scalarDecoder).decodeScalar(n); err != nil {
			d.fail(n, path, "%v", err)
		}
		return
	}
	switch v.Kind() {
	case reflect.Pointer:
		if v.IsNil() {
			v.Set(reflect.New(v.Type().Elem()))
		}
		d.decode(n, v.Elem(), path)
	case reflect.Struct:
		d.decodeStruct(n, v, path)
	case reflect.Map:
		d.decodeMap(n, v, path)
	case reflect.Slice:
		d.decodeSlice(n, v, path)
	case reflect.String:
		if n.Kind != yaml.ScalarNode {
			d.fail(n, path, "must be a string, got %s", kindName(n))
			return
		}
		if n.Tag != "!!str" {
			d.fail(n, path, "must be a string, got %s; quote it: %q", kindName(n), n.Value)
			return
		}
		v.SetString(n.Value)
	case reflect.Bool:
		if n.Kind != yaml.ScalarNode || n.Tag != "!!bool" {
			d.fail(n, path, "must be true or false, got %s", kindName(n))
			return
		}
		v.SetBool(n.Value == "true" || n.Value == "True" || n.Value == "TRUE")
	case reflect.Int, reflect.Int8, reflect.Int16, reflect.Int32, reflect.Int64:
		i, ok := d.integer(n, path)
		if !ok {
			return
		}
		if v.OverflowInt(i) {
			d.fail(n, path, "%d is out of range", i)
			return
		}
		v.SetInt(i)
	default:
		d.fail(n, path, "cannot decode into %s", v.Type())
	}
}

func (d *decoder) integer(n *yaml.Node, path string) (int64, bool) {
	if n.Kind != yaml.ScalarNode || n.Tag != "!!int" {
		d.fail(n, path, "must be a whole number, got %s", kindName(n))
		return 0, false
	}
	i, err := strconv.ParseInt(strings.ReplaceAll(n.Value, "_", ""), 0, 64)
	if err != nil {
		d.fail(n, path, "%q is not a whole number", n.Value)
		return 0, false
	}
	return i, true
}

func (d *decoder) decodeSlice(n *yaml.Node, v reflect.Value, path string) {
	if n.Kind != yaml.SequenceNode {
		if n.Kind == yaml.MappingNode && len(n.Content) > 0 {
			first := n.Content[0].Value
			d.fail(n, path, "must be a list, but is a mapping: write %q on its own line, then \"- %s: ...\" (a dash before %s) to make it a list of one item", lastField(path)+":", first, first)
			return
		}
		d.fail(n, path, "must be a list, got %s", kindName(n))
		return
	}
	s := reflect.MakeSlice(v.Type(), len(n.Content), len(n.Content))
	for i, item := range n.Content {
		d.decode(item, s.Index(i), fmt.Sprintf("%s[%d]", path, i))
	}
	v.Set(s)
}

func lastField(path string) string {
	if i := strings.LastIndexByte(path, '.'); i >= 0 {
		path = path[i+1:]
	}
	if i := strings.IndexByte(path, '['); i >= 0 {
		path = path[:i]
	}
	return path
}

func (d *decoder) decodeMap(n *yaml.Node, v reflect.Value, path string) {
	if n.Kind != yaml.MappingNode {
		d.fail(n, path, "must be a mapping of keys to values, got %s", kindName(n))
		return
	}
	if v.Type().Key().Kind() != reflect.String {
		d.fail(n, path, "cannot decode into %s", v.Type())
		return
	}
	m := reflect.MakeMapWithSize(v.Type(), len(n.Content)/2)
	seen := map[string]int{}
	for i := 0; i+1 < len(n.Content); i += 2 {
		k, val := resolve(n.Content[i]), n.Content[i+1]
		if k.Kind != yaml.ScalarNode {
			d.fail(k, path, "keys must be strings")
			continue
		}
		if line, dup := seen[k.Value]; dup {
			d.fail(k, joinPath(path, k.Value), "defined twice (first at line %d)", line)
			continue
		}
		seen[k.Value] = k.Line
		elem := reflect.New(v.Type().Elem()).Elem()
		d.decode(val, elem, joinPath(path, k.Value))
		m.SetMapIndex(reflect.ValueOf(k.Value).Convert(v.Type().Key()), elem)
	}
	v.Set(m)
}

type fieldInfo struct {
	index []int
	name  string
}

var fieldCache sync.Map // reflect.Type -> map[string]fieldInfo

func structFields(t reflect.Type) map[string]fieldInfo {
	if f, ok := fieldCache.Load(t); ok {
		return f.(map[string]fieldInfo)
	}
	out := map[string]fieldInfo{}
	var walk func(t reflect.Type, prefix []int)
	walk = func(t reflect.Type, prefix []int) {
		for i := 0; i < t.NumField(); i++ {
			f := t.Field(i)
			tag := f.Tag.Get("json")
			name, opts, _ := strings.Cut(tag, ",")
			idx := append(append([]int{}, prefix...), i)
			if f.Anonymous && name == "" && (opts == "inline" || tag == "") && f.Type.Kind() == reflect.Struct {
				walk(f.Type, idx)
				continue
			}
			if name == "-" || !f.IsExported() {
				continue
			}
			if name == "" {
				name = f.Name
			}
			out[name] = fieldInfo{index: idx, name: name}
		}
	}
	walk(t, nil)
	fieldCache.Store(t, out)
	return out
}

func (d *decoder) decodeStruct(n *yaml.Node, v reflect.Value, path string) {
	if n.Kind != yaml.MappingNode {
		d.fail(n, path, "must be a mapping of fields, got %s", kindName(n))
		return
	}
	fields := structFields(v.Type())
	seen := map[string]int{}
	for i := 0; i+1 < len(n.Content); i += 2 {
		k, val := resolve(n.Content[i]), n.Content[i+1]
		if k.Kind != yaml.ScalarNode {
			d.fail(k, path, "field names must be strings")
			continue
		}
		fp := joinPath(path, k.Value)
		if line, dup := seen[k.Value]; dup {
			d.fail(k, fp, "defined twice (first at line %d)", line)
			continue
		}
		seen[k.Value] = k.Line
		f, ok := fields[k.Value]
		if !ok {
			if d.strict {
				hint := suggest(k.Value, fields)
				if path == "" && hint == "" {
					hint = " (the top-level fields are apiVersion, kind, metadata and spec; if the YAML lost its indentation, indent it again)"
				}
				d.fail(k, fp, "unknown field%s", hint)
			}
			continue
		}
		d.decode(val, v.FieldByIndex(f.index), fp)
	}
}

// suggest names the known field closest to an unknown one.
func suggest(name string, fields map[string]fieldInfo) string {
	names := make([]string, 0, len(fields))
	for f := range fields {
		names = append(names, f)
	}
	return Suggest(name, names)
}

// Suggest returns ` (did you mean "x"?)` for the candidate closest to name
// (case-insensitive edit distance at most 2, or a prefix of it), or "".
func Suggest(name string, candidates []string) string {
	sorted := append([]string(nil), candidates...)
	sort.Strings(sorted)
	lower := strings.ToLower(name)
	best, bestDist := "", 3
	for _, c := range sorted {
		lc := strings.ToLower(c)
		if lc == lower || (len(lower) >= 3 && (strings.HasPrefix(lc, lower) || strings.HasPrefix(lower, lc))) {
			best, bestDist = c, 0
			break
		}
		if d := editDistance(lower, lc); d < bestDist {
			best, bestDist = c, d
		}
	}
	if best == "" {
		return ""
	}
	return fmt.Sprintf(" (did you mean %q?)", best)
}

func editDistance(a, b string) int {
	prev := make([]int, len(b)+1)
	cur := make([]int, len(b)+1)
	for j := range prev {
		prev[j] = j
	}
	for i := 1; i <= len(a); i++ {
		cur[0] = i
		for j := 1; j <= len(b); j++ {
			cost := 1
			if a[i-1] == b[j-1] {
				cost = 0
			}
			cur[j] = min(prev[j]+1, cur[j-1]+1, prev[j-1]+cost)
		}
		prev, cur = cur, prev
	}
	return prev[len(b)]
}

func (v *IntOrString) decodeScalar(n *yaml.Node) error {
	switch n.Tag {
	case "!!int":
		i, err := strconv.ParseInt(n.Value, 0, 32)
		if err != nil {
			return fmt.Errorf("%q is not a valid port", n.Value)
		}
		*v = IntOrString{IntVal: int32(i)}
	case "!!str":
		*v = IntOrString{IsString: true, StrVal: n.Value}
	default:
		return fmt.Errorf("must be a number or a string, got %s", kindName(n))
	}
	return nil
}

func (p *PortString) decodeScalar(n *yaml.Node) error {
	switch n.Tag {
	case "!!int", "!!str":
		*p = PortString(n.Value)
		return nil
	}
	return fmt.Errorf("must be a port number or name, got %s", kindName(n))
}

// nodeAt finds the node a field path names, for the line of an error found
// after decoding. Map keys may themselves contain dots (label keys), so at
// each mapping the longest key that prefixes the rest of the path wins.
func nodeAt(n *yaml.Node, path string) *yaml.Node {
	for {
		n = resolve(n)
		path = strings.TrimPrefix(path, ".")
		if path == "" || n == nil {
			return n
		}
		if path[0] == '[' {
			end := strings.IndexByte(path, ']')
			i, err := strconv.Atoi(path[1:max(end, 1)])
			if end < 0 || err != nil || n.Kind != yaml.SequenceNode || i >= len(n.Content) {
				return n
			}
			n, path = n.Content[i], path[end+1:]
			continue
		}
		if n.Kind != yaml.MappingNode {
			return n
		}
		best := -1
		for i := 0; i+1 < len(n.Content); i += 2 {
			k := n.Content[i].Value
			if (path == k || strings.HasPrefix(path, k+".") || strings.HasPrefix(path, k+"[")) && (best < 0 || len(k) > len(n.Content[best].Value)) {
				best = i
			}
		}
		if best < 0 {
			return n
		}
		n, path = n.Content[best+1], path[len(n.Content[best].Value):]
	}
}
