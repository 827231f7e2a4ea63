package policycheck

import (
	"bufio"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"sort"
	"strconv"
	"strings"

	"github.com/nodemesh/nodemesh/api"
	"github.com/nodemesh/nodemesh/policy"
)

// Options are the flags of `meshctl policy check`.
type Options struct {
	World     []string
	Policies  []string
	Reference bool

	// A single flow.
	From, To, Port, Protocol string
	Method, Path, Host       string
	Headers                  []string // K=V

	Flows  string // JSON Lines file, "-" for stdin
	Matrix bool

	Output     string // text, json, jsonl
	FailOnDeny bool

	// Whether --port and --protocol were given (they have defaults).
	PortSet, ProtocolSet bool

	matrixProto policy.Proto // parsed by validate
	matrixPort  uint16
}

type mode int

const (
	modeFlow mode = iota
	modeFlows
	modeMatrix
)

// Output formats.
const (
	outText  = "text"
	outJSON  = "json"
	outJSONL = "jsonl"
)

// maxErrors bounds the flow problems listed; the rest are counted.
const maxErrors = 50

// validate checks the flag combination and says what to do.
func (o *Options) validate() (mode, error) {
	var errs []error
	add := func(format string, args ...any) { errs = append(errs, fmt.Errorf(format, args...)) }
	if len(o.World) == 0 {
		add("missing --world FILE: the namespaces, pods and nodes to check against")
	}
	if len(o.Policies) == 0 {
		add("missing --policy PATH: a policy file or directory")
	}
	switch o.Output {
	case outText, outJSON, outJSONL:
	default:
		add("-o %q: want text, json or jsonl", o.Output)
	}
	single := o.From != "" || o.To != ""
	http := o.Method != "" || o.Path != "" || o.Host != "" || len(o.Headers) > 0
	var m mode
	var modes []string
	if single {
		modes = append(modes, "--from/--to")
		m = modeFlow
	}
	if o.Flows != "" {
		modes = append(modes, "--flows")
		m = modeFlows
	}
	if o.Matrix {
		modes = append(modes, "--matrix")
		m = modeMatrix
	}
	switch {
	case len(modes) == 0 && (o.PortSet || http):
		add("missing --from and --to: a single flow needs --from, --to and --port (or give --flows FILE or --matrix)")
	case len(modes) == 0:
		add("nothing to check: give a flow (--from, --to, --port), --flows FILE or --matrix")
	case len(modes) > 1:
		add("%s cannot be combined: give one flow (--from, --to, --port), --flows FILE or --matrix", strings.Join(modes, " and "))
	case m == modeFlows:
		if o.PortSet || o.ProtocolSet {
			add("--port and --protocol are for a single flow or --matrix; with --flows each line gives its own port and protocol")
		}
		if http {
			add("--method, --path, --host and --header are for a single flow; with --flows give \"http\" on each line")
		}
	case m == modeMatrix:
		if http {
			add("--method, --path, --host and --header are for a single flow, not --matrix")
		}
		if err := o.matrixFlags(); err != nil {
			errs = append(errs, err)
		}
	}
	stdin := 0
	for _, p := range append(append(append([]string{}, o.World...), o.Policies...), o.Flows) {
		if p == "-" {
			stdin++
		}
	}
	if stdin > 1 {
		add("only one of --world, --policy and --flows can read standard input (-)")
	}
	return m, errors.Join(errs...)
}

// Run checks what o asks for and writes the results to stdout. denied
// reports whether any flow (or matrix cell) was denied. On error nothing has
// been written and the error lists every problem, one per line.
func Run(o *Options, stdin io.Reader, stdout io.Writer) (denied bool, err error) {
	m, err := o.validate()
	if err != nil {
		return false, err
	}

	// Load everything, and report every problem at once.
	var errs []error
	w, err := api.LoadWorld(o.World...)
	if err != nil {
		errs = append(errs, err)
	}
	docs, err := api.LoadPolicies(o.Policies...)
	if err != nil {
		errs = append(errs, err)
	}
	var inputs []input
	var lineErrs []lineError // problems in the --flows file, by line
	flowsName := o.Flows
	switch m {
	case modeFlow:
		in, ferrs := o.flagFlow()
		inputs = []input{in}
		errs = append(errs, ferrs...)
	case modeFlows:
		var r io.Reader = stdin
		if o.Flows == "-" {
			flowsName = "<stdin>"
		} else {
			f, err := os.Open(o.Flows)
			if err != nil {
				var pe *fs.PathError
				if errors.As(err, &pe) {
					err = fmt.Errorf("read %s: %w", o.Flows, pe.Err)
				}
				errs = append(errs, err)
				break
			}
			defer f.Close()
			r = f
		}
		inputs, lineErrs = readFlows(r)
	}
	if len(errs) > 0 {
		return false, errors.Join(append(errs, formatLineErrors(flowsName, lineErrs)...)...)
	}

	checker, err := policy.NewChecker(w, docs, o.Reference)
	if err != nil {
		return false, err
	}

	bw := bufio.NewWriterSize(stdout, 256<<10)
	if m == modeMatrix {
		denied, err = runMatrix(o, w, checker, bw)
	} else {
		denied, err = checkFlows(o, m, w, checker, inputs, lineErrs, flowsName, bw)
	}
	if err != nil {
		return false, err
	}
	return denied, bw.Flush()
}

// checkFlows checks every flow, then writes the results.
// lineErrs are the problems found reading the flows: the flows that could be
// read are still checked, so that every problem is reported at once.
func checkFlows(o *Options, m mode, w *api.World, c policy.Checker, inputs []input, lineErrs []lineError, flowsName string, bw *bufio.Writer) (bool, error) {
	results := make([]policy.Result, len(inputs))
	var world *policy.World // built only to explain an error
	denied := false
	for i := range inputs {
		r, err := c.Check(inputs[i].flow)
		if err != nil {
			if world == nil {
				world = policy.NewWorld(w)
			}
			err = flowError(world, &inputs[i].flow, err, m == modeFlow)
			if m == modeFlow {
				return false, err
			}
			lineErrs = append(lineErrs, lineError{inputs[i].line, err})
			continue
		}
		denied = denied || r.Verdict != policy.Allowed
		results[i] = r
	}
	if len(lineErrs) > 0 {
		return false, errors.Join(formatLineErrors(flowsName, lineErrs)...)
	}

	switch o.Output {
	case outText:
		for i := range results {
			if i > 0 {
				bw.WriteByte('\n')
			}
			writeText(bw, &inputs[i].flow, &results[i])
		}
	case outJSONL:
		enc := json.NewEncoder(bw)
		enc.SetEscapeHTML(false)
		for i := range results {
			if err := enc.Encode(&results[i]); err != nil {
				return false, err
			}
		}
	case outJSON:
		if m == modeFlow {
			if err := writeIndented(bw, &results[0], ""); err != nil {
				return false, err
			}
			bw.WriteByte('\n')
			break
		}
		bw.WriteString("[")
		for i := range results {
			if i > 0 {
				bw.WriteByte(',')
			}
			bw.WriteString("\n  ")
			if err := writeIndented(bw, &results[i], "  "); err != nil {
				return false, err
			}
		}
		if len(results) > 0 {
			bw.WriteByte('\n')
		}
		bw.WriteString("]\n")
	}
	return denied, nil
}

func writeIndented(w io.Writer, v any, prefix string) error {
	b, err := json.MarshalIndent(v, prefix, "  ")
	if err != nil {
		return err
	}
	_, err = w.Write(b)
	return err
}

// flowError says which part of a flow the checker could not resolve.
func flowError(w *policy.World, f *policy.Flow, err error, flags bool) error {
	name := func(s string) string {
		if flags {
			return "--" + s
		}
		return s
	}
	if _, perr := w.ResolvePeer(f.From); perr != nil {
		return fmt.Errorf("%s: %w", name("from"), perr)
	}
	if _, perr := w.ResolvePeer(f.To); perr != nil {
		return fmt.Errorf("%s: %w", name("to"), perr)
	}
	if msg := err.Error(); flags && strings.HasPrefix(msg, "port ") {
		// The checker's message is `port "NAME": ...`.
		return errors.New("--" + msg)
	}
	return err
}

// formatLineErrors sorts problems by line and names the file and line of
// each; past maxErrors it only counts them.
func formatLineErrors(file string, errs []lineError) []error {
	sort.SliceStable(errs, func(i, j int) bool { return errs[i].line < errs[j].line })
	var out []error
	for i, e := range errs {
		if i == maxErrors {
			out = append(out, fmt.Errorf("%s: %d more problems not shown", file, len(errs)-maxErrors))
			break
		}
		out = append(out, fmt.Errorf("%s: line %d: %w", file, e.line, e.err))
	}
	return out
}

// matrixJSON is the JSON form of a reachability matrix.
type matrixJSON struct {
	Pods     []string `json:"pods"`
	Protocol string   `json:"protocol"`
	Port     uint16   `json:"port"`
	Allowed  [][]bool `json:"allowed"`
}

// matrixFlags parses --port (default 80) and --protocol for --matrix.
func (o *Options) matrixFlags() error {
	proto, err := parseProto(o.Protocol)
	if err != nil {
		return fmt.Errorf("--protocol: %w", err)
	}
	o.matrixProto, o.matrixPort = proto, 80
	if o.PortSet {
		p, name, err := parsePort(o.Port, proto)
		if err != nil {
			return fmt.Errorf("--port: %w", err)
		}
		if name != "" {
			return fmt.Errorf("--port %q: --matrix needs a port number; a port name can mean a different port on each pod", name)
		}
		o.matrixPort = p
	}
	return nil
}

// runMatrix checks every ordered pair of pods on --port/--protocol.
func runMatrix(o *Options, w *api.World, c policy.Checker, bw *bufio.Writer) (bool, error) {
	proto, port := o.matrixProto, o.matrixPort
	pods := matrixPods(w)
	allowed := make([][]bool, len(pods))
	n := 0
	for i, from := range pods {
		allowed[i] = make([]bool, len(pods))
		for j, to := range pods {
			r, err := c.Check(policy.Flow{From: from, To: to, Proto: proto, Port: port})
			if err != nil {
				return false, fmt.Errorf("%s -> %s: %w", from, to, err)
			}
			if r.Verdict == policy.Allowed {
				allowed[i][j] = true
				n++
			}
		}
	}
	denied := n < len(pods)*len(pods)
	switch o.Output {
	case outText:
		mx := policy.NewMatrix(pods, policy.Denied)
		for i, from := range pods {
			for j, to := range pods {
				if allowed[i][j] {
					mx.Set(from, to, policy.Allowed)
				}
			}
		}
		fmt.Fprintf(bw, "%s/%d\n", proto, port)
		bw.WriteString(mx.String())
		fmt.Fprintf(bw, "%d of %d pairs allowed\n", n, len(pods)*len(pods))
	case outJSON:
		writeMatrixJSON(bw, pods, proto, port, allowed)
	case outJSONL:
		v := matrixJSON{Pods: pods, Protocol: proto.String(), Port: port, Allowed: allowed}
		if err := json.NewEncoder(bw).Encode(v); err != nil {
			return false, err
		}
	}
	return denied, nil
}

// writeMatrixJSON writes the matrix as indented JSON with a row of the
// matrix per line (json.MarshalIndent would put every cell on its own).
func writeMatrixJSON(bw *bufio.Writer, pods []string, proto policy.Proto, port uint16, allowed [][]bool) {
	bw.WriteString("{\n  \"pods\": [")
	for i, p := range pods {
		if i > 0 {
			bw.WriteByte(',')
		}
		bw.WriteString("\n    ")
		b, _ := json.Marshal(p)
		bw.Write(b)
	}
	if len(pods) > 0 {
		bw.WriteString("\n  ")
	}
	fmt.Fprintf(bw, "],\n  \"protocol\": %q,\n  \"port\": %d,\n  \"allowed\": [", proto.String(), port)
	for i, row := range allowed {
		if i > 0 {
			bw.WriteByte(',')
		}
		bw.WriteString("\n    [")
		for j, v := range row {
			if j > 0 {
				bw.WriteString(", ")
			}
			bw.WriteString(strconv.FormatBool(v))
		}
		bw.WriteByte(']')
	}
	if len(allowed) > 0 {
		bw.WriteString("\n  ")
	}
	bw.WriteString("]\n}\n")
}

// matrixPods lists the world's pods that are endpoints (host-network pods
// are their node), as "namespace/pod", sorted.
func matrixPods(w *api.World) []string {
	pods := []string{}
	for i := range w.Pods {
		p := &w.Pods[i]
		if !p.Spec.HostNetwork {
			pods = append(pods, p.Metadata.Namespace+"/"+p.Metadata.Name)
		}
	}
	sort.Strings(pods)
	return pods
}
