package proxy

import (
	udpa "github.com/cncf/xds/go/udpa/annotations"
	admin "github.com/envoyproxy/go-control-plane/envoy/admin/v3"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"
	"google.golang.org/protobuf/types/known/anypb"
)

// redactedValue replaces sensitive strings and bytes, as Envoy's
// MessageUtil::redact does for /config_dump.
const redactedValue = "[redacted]"

// redacted returns a copy of m with every field annotated
// (udpa.annotations.sensitive) replaced: a sensitive string or bytes field
// becomes "[redacted]", and every string and bytes field inside a
// sensitive message too (a private key's DataSource becomes
// {inline_bytes: "[redacted]"}). Typed configs (Any) are redacted inside.
// The proxy applies it to everything /config_dump shows, refused updates
// included.
func redacted(m proto.Message) proto.Message {
	c := proto.Clone(m)
	redactMessage(c.ProtoReflect(), false)
	return c
}

// redactFailure redacts the refused configuration of a failure state.
func redactFailure(f *admin.UpdateFailureState) *admin.UpdateFailureState {
	if f == nil || f.FailedConfiguration == nil {
		return f
	}
	return redacted(f).(*admin.UpdateFailureState)
}

func redactMessage(m protoreflect.Message, sensitive bool) {
	if m.Descriptor().FullName() == "google.protobuf.Any" {
		redactAny(m, sensitive)
		return
	}
	m.Range(func(fd protoreflect.FieldDescriptor, v protoreflect.Value) bool {
		s := sensitive || isSensitive(fd)
		switch {
		case fd.IsList():
			l := v.List()
			for i := 0; i < l.Len(); i++ {
				if fd.Message() != nil {
					redactMessage(l.Get(i).Message(), s)
				} else if s {
					if rv, ok := redactScalar(fd); ok {
						l.Set(i, rv)
					}
				}
			}
		case fd.IsMap():
			mv := v.Map()
			vd := fd.MapValue()
			mv.Range(func(k protoreflect.MapKey, e protoreflect.Value) bool {
				if vd.Message() != nil {
					redactMessage(e.Message(), s)
				} else if s {
					if rv, ok := redactScalar(vd); ok {
						mv.Set(k, rv)
					}
				}
				return true
			})
		case fd.Message() != nil:
			redactMessage(v.Message(), s)
		case s:
			if rv, ok := redactScalar(fd); ok {
				m.Set(fd, rv)
			}
		}
		return true
	})
}

func redactScalar(fd protoreflect.FieldDescriptor) (protoreflect.Value, bool) {
	switch fd.Kind() {
	case protoreflect.StringKind:
		return protoreflect.ValueOfString(redactedValue), true
	case protoreflect.BytesKind:
		return protoreflect.ValueOfBytes([]byte(redactedValue)), true
	}
	return protoreflect.Value{}, false
}

// redactAny redacts the message an Any holds (when its type is known to
// this binary; a message of an unknown type cannot be printed either).
func redactAny(m protoreflect.Message, sensitive bool) {
	a, ok := m.Interface().(*anypb.Any)
	if !ok {
		return
	}
	inner, err := a.UnmarshalNew()
	if err != nil {
		return
	}
	redactMessage(inner.ProtoReflect(), sensitive)
	b, err := proto.MarshalOptions{Deterministic: true}.Marshal(inner)
	if err != nil {
		return
	}
	a.Value = b
}

func isSensitive(fd protoreflect.FieldDescriptor) bool {
	opts := fd.Options()
	if opts == nil {
		return false
	}
	s, _ := proto.GetExtension(opts, udpa.E_Sensitive).(bool)
	return s
}
