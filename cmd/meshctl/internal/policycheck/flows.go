package policycheck

import (
	"bufio"
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"strconv"
	"strings"

	"github.com/nodemesh/nodemesh/api"
	"github.com/nodemesh/nodemesh/l7policy"
	"github.com/nodemesh/nodemesh/policy"
)

// input is one flow to check and where it was given.
type input struct {
	flow policy.Flow
	line int // line of the --flows file; 0 for a flow given by flags
}

// flowSpec is a flow as the user wrote it, before validation.
type flowSpec struct {
	From, To string
	Port     string // a number or a port name; "" when missing
	Protocol string // "" means TCP
	HTTP     *l7policy.Request
}

// toFlow validates a spec. Errors name the field: as a JSON key, or with
// flags as the flag ("--port").
func (s *flowSpec) toFlow(flags bool) (policy.Flow, error) {
	name := func(f string) string {
		if flags {
			return "--" + f
		}
		return f
	}
	var missing []string
	for _, f := range []struct{ name, v string }{{"from", s.From}, {"to", s.To}, {"port", s.Port}} {
		if f.v == "" {
			missing = append(missing, name(f.name))
		}
	}
	if len(missing) > 0 {
		return policy.Flow{}, fmt.Errorf("missing %s: a flow needs %s, %s and %s", strings.Join(missing, ", "), name("from"), name("to"), name("port"))
	}
	proto, err := parseProto(s.Protocol)
	if err != nil {
		return policy.Flow{}, fmt.Errorf("%s: %w", name("protocol"), err)
	}
	f := policy.Flow{From: s.From, To: s.To, Proto: proto, HTTP: s.HTTP}
	if f.Port, f.PortName, err = parsePort(s.Port, proto); err != nil {
		return policy.Flow{}, fmt.Errorf("%s: %w", name("port"), err)
	}
	if s.HTTP != nil {
		if proto != policy.ProtoTCP {
			what := "http"
			if flags {
				what = "--method, --path, --host, --header"
			}
			return policy.Flow{}, fmt.Errorf("%s: an HTTP request needs protocol TCP, not %s", what, proto)
		}
		if s.HTTP.Method == "" {
			s.HTTP.Method = "GET"
		}
		if s.HTTP.Path == "" {
			s.HTTP.Path = "/"
		}
	}
	return f, nil
}

// parseProto parses the protocol of a flow: TCP by default; ANY is not the
// protocol of a connection.
func parseProto(s string) (policy.Proto, error) {
	if s == "" {
		return policy.ProtoTCP, nil
	}
	p, err := policy.ParseProto(s)
	if err != nil || p == policy.ProtoAny {
		return 0, fmt.Errorf("%q is not a protocol; want TCP, UDP or SCTP (or ICMP, ICMPv6)", s)
	}
	return p, nil
}

func isICMP(p policy.Proto) bool { return p == policy.ProtoICMP || p == policy.ProtoICMPv6 }

// parsePort parses a port number or a port name.
func parsePort(s string, proto policy.Proto) (port uint16, name string, err error) {
	if isDigits(s) {
		n, err := strconv.ParseUint(s, 10, 32)
		switch {
		case isICMP(proto) && (err != nil || n > 255):
			return 0, "", fmt.Errorf("%s is not an ICMP type (0-255)", s)
		case isICMP(proto):
			return uint16(n), "", nil
		case err != nil || n < 1 || n > 65535:
			return 0, "", fmt.Errorf("%s is not a valid port; want 1-65535 or a port name", s)
		}
		return uint16(n), "", nil
	}
	if isICMP(proto) {
		return 0, "", fmt.Errorf("%q: for %s the port is the ICMP type, a number from 0 to 255", s, proto)
	}
	if !isPortName(s) {
		return 0, "", fmt.Errorf("%q is neither a port number (1-65535) nor a port name (letters, digits and '-')", s)
	}
	return 0, s, nil
}

func isDigits(s string) bool {
	if s == "" {
		return false
	}
	for i := 0; i < len(s); i++ {
		if s[i] < '0' || s[i] > '9' {
			return false
		}
	}
	return true
}

// isPortName accepts what a container port name can be: letters, digits and
// dashes, with at least one letter.
func isPortName(s string) bool {
	letter := false
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch {
		case c >= 'a' && c <= 'z', c >= 'A' && c <= 'Z':
			letter = true
		case c >= '0' && c <= '9', c == '-':
		default:
			return false
		}
	}
	return letter && len(s) <= 63
}

// jsonFlow is one line of a --flows file.
type jsonFlow struct {
	From     string    `json:"from"`
	To       string    `json:"to"`
	Port     jsonPort  `json:"port"`
	Protocol string    `json:"protocol"`
	HTTP     *jsonHTTP `json:"http"`
}

type jsonHTTP struct {
	Method  string            `json:"method"`
	Path    string            `json:"path"`
	Host    string            `json:"host"`
	Headers map[string]string `json:"headers"`
}

const (
	flowFields = "from, to, port, protocol, http"
	httpFields = "method, path, host, headers"
)

// jsonPort is a port given as a number or a string.
type jsonPort struct{ s string }

func (p *jsonPort) UnmarshalJSON(b []byte) error {
	switch {
	case len(b) > 0 && b[0] == '"':
		var s string
		if err := json.Unmarshal(b, &s); err != nil {
			return fmt.Errorf("port: %v", err)
		}
		if s == "" {
			return errors.New("port: empty; want a port number or a port name")
		}
		p.s = s
	case isDigits(string(b)):
		p.s = string(b)
	default:
		return fmt.Errorf("port: %s is not a port; want a number (1-65535) or a port name", b)
	}
	return nil
}

// maxLine is the longest line a --flows file may have.
const maxLine = 1 << 20

// lineError is a problem with one line of a --flows file.
type lineError struct {
	line int
	err  error
}

// readFlows reads a JSON Lines file of flows. It returns every valid flow,
// and a problem per bad line.
func readFlows(r io.Reader) ([]input, []lineError) {
	var out []input
	var errs []lineError
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 0, 64<<10), maxLine)
	line := 0
	for sc.Scan() {
		line++
		b := sc.Bytes()
		if line == 1 {
			b = bytes.TrimPrefix(b, []byte("\ufeff"))
		}
		b = bytes.TrimSpace(b)
		if len(b) == 0 {
			continue
		}
		f, err := decodeFlow(b)
		if err != nil {
			errs = append(errs, lineError{line, err})
			continue
		}
		out = append(out, input{flow: f, line: line})
	}
	if err := sc.Err(); err != nil {
		if errors.Is(err, bufio.ErrTooLong) {
			err = fmt.Errorf("line longer than %d bytes", maxLine)
		}
		errs = append(errs, lineError{line + 1, err})
	}
	return out, errs
}

// decodeFlow decodes and validates one JSON flow.
func decodeFlow(b []byte) (policy.Flow, error) {
	if b[0] != '{' {
		return policy.Flow{}, errors.New("not a JSON object; each line must be one flow like {\"from\":\"ns/a\",\"to\":\"ns/b\",\"port\":80}")
	}
	var jf jsonFlow
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&jf); err != nil {
		return policy.Flow{}, jsonError(err, b)
	}
	if rest := bytes.TrimSpace(b[dec.InputOffset():]); len(rest) > 0 {
		return policy.Flow{}, fmt.Errorf("unexpected %q after the flow object (column %d); write one flow per line", truncate(string(rest), 20), int(dec.InputOffset())+1)
	}
	spec := flowSpec{From: jf.From, To: jf.To, Port: jf.Port.s, Protocol: jf.Protocol}
	if jf.HTTP != nil {
		spec.HTTP = &l7policy.Request{Method: jf.HTTP.Method, Path: jf.HTTP.Path, Host: jf.HTTP.Host, Headers: jf.HTTP.Headers}
	}
	return spec.toFlow(false)
}

// jsonError rewrites an encoding/json error in the words of this file format.
func jsonError(err error, line []byte) error {
	var syn *json.SyntaxError
	var typ *json.UnmarshalTypeError
	switch {
	case errors.As(err, &syn):
		return fmt.Errorf("not valid JSON: %v (column %d)", syn, syn.Offset)
	case errors.Is(err, io.ErrUnexpectedEOF), errors.Is(err, io.EOF):
		return errors.New("not valid JSON: the line ends inside the flow object")
	case errors.As(err, &typ):
		if typ.Field == "" {
			return fmt.Errorf("must be a JSON object, got %s", article(typ.Value))
		}
		return fmt.Errorf("%s: must be %s, got %s", typ.Field, jsonKind(typ.Type.Kind().String()), article(typ.Value))
	}
	msg := err.Error()
	if field, ok := strings.CutPrefix(msg, "json: unknown field "); ok {
		// encoding/json does not say at which level; find out.
		var top map[string]json.RawMessage
		if json.Unmarshal(line, &top) == nil {
			if name, _ := strconv.Unquote(field); name != "" {
				if _, atTop := top[name]; !atTop {
					return fmt.Errorf("http: unknown field %s%s (http has %s)", field, api.Suggest(name, strings.Split(httpFields, ", ")), httpFields)
				}
				return fmt.Errorf("unknown field %s%s (a flow has %s)", field, api.Suggest(name, strings.Split(flowFields, ", ")), flowFields)
			}
		}
		return fmt.Errorf("unknown field %s (a flow has %s)", field, flowFields)
	}
	return errors.New(strings.TrimPrefix(msg, "json: "))
}

func jsonKind(goKind string) string {
	switch goKind {
	case "string":
		return "a string"
	case "map", "struct", "ptr":
		return "an object"
	case "slice", "array":
		return "a list"
	}
	return "a " + goKind
}

func article(jsonValue string) string {
	switch jsonValue {
	case "object", "array":
		return "an " + jsonValue
	case "null", "true", "false":
		return jsonValue
	}
	return "a " + jsonValue
}

func truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return s[:n] + "…"
}

// flagFlow builds the flow given by flags.
func (o *Options) flagFlow() (input, []error) {
	spec := flowSpec{From: o.From, To: o.To, Port: o.Port, Protocol: o.Protocol}
	var errs []error
	if o.Method != "" || o.Path != "" || o.Host != "" || len(o.Headers) > 0 {
		spec.HTTP = &l7policy.Request{Method: o.Method, Path: o.Path, Host: o.Host}
		for _, h := range o.Headers {
			k, v, ok := strings.Cut(h, "=")
			k = strings.TrimSpace(k)
			if !ok || k == "" {
				errs = append(errs, fmt.Errorf("--header %q: want NAME=VALUE", h))
				continue
			}
			if spec.HTTP.Headers == nil {
				spec.HTTP.Headers = map[string]string{}
			}
			spec.HTTP.Headers[k] = v
		}
	}
	f, err := spec.toFlow(true)
	if err != nil {
		errs = append(errs, err)
	}
	return input{flow: f}, errs
}
