package proxy

import (
	"fmt"
	"slices"
	"strings"

	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"
	"google.golang.org/protobuf/types/known/anypb"
)

// onlyFields fails when m sets a field outside allowed. It is how the proxy
// refuses configuration it does not implement instead of ignoring it: every
// message it translates is checked here first, so a field added by the
// control plane (or a newer Envoy API) is a NACK naming that field.
func onlyFields(path string, m proto.Message, allowed ...string) error {
	r := m.ProtoReflect()
	var bad []string
	r.Range(func(fd protoreflect.FieldDescriptor, _ protoreflect.Value) bool {
		if !slices.Contains(allowed, string(fd.Name())) {
			bad = append(bad, string(fd.Name()))
		}
		return true
	})
	if len(r.GetUnknown()) > 0 {
		bad = append(bad, "(fields unknown to this proxy's Envoy API version)")
	}
	if len(bad) == 0 {
		return nil
	}
	slices.Sort(bad)
	what := "field"
	if len(bad) > 1 {
		what = "fields"
	}
	return fmt.Errorf("%s: %s %s not supported by nodemesh-proxy", path, what, strings.Join(bad, ", "))
}

// unpackAny unmarshals a typed_config into dst after checking its type URL.
func unpackAny(path string, a *anypb.Any, dst proto.Message) error {
	if a == nil {
		return fmt.Errorf("%s: typed_config is required", path)
	}
	want := typeURLOf(dst)
	if a.GetTypeUrl() != want {
		return fmt.Errorf("%s: typed_config type %q is not supported (want %q)", path, a.GetTypeUrl(), want)
	}
	if err := proto.Unmarshal(a.GetValue(), dst); err != nil {
		return fmt.Errorf("%s: decode %s: %w", path, want, err)
	}
	return nil
}

// typeURLOf is the type URL an Any holding m carries.
func typeURLOf(m proto.Message) string {
	return "type.googleapis.com/" + string(m.ProtoReflect().Descriptor().FullName())
}

// at builds field paths for error messages: at("filter_chains", 2) is
// "filter_chains[2]".
func at(field string, i int) string { return fmt.Sprintf("%s[%d]", field, i) }

func join(parts ...string) string {
	return strings.Join(slices.DeleteFunc(parts, func(s string) bool { return s == "" }), ".")
}
