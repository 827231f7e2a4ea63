package xds

import (
	"fmt"

	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"
	"google.golang.org/protobuf/types/known/anypb"
)

// Validate checks m with its protoc-gen-validate rules (ValidateAll) and
// does the same for every message packed in an Any inside it, which
// ValidateAll does not look into: typed_config of filters, extension
// protocol options. An Any whose type is unknown is an error, so every
// type URL names a message go-control-plane (and so Envoy) has.
func Validate(m proto.Message) error {
	return (&validator{seen: map[*anypb.Any]bool{}}).validate(m)
}

// validator validates an Any shared by several parents (Build shares the
// connection managers of identical chains) once.
type validator struct {
	seen map[*anypb.Any]bool
}

func (v *validator) validate(m proto.Message) error {
	if x, ok := m.(interface{ ValidateAll() error }); ok {
		if err := x.ValidateAll(); err != nil {
			return err
		}
	}
	return v.anys(m.ProtoReflect())
}

func (v *validator) anys(m protoreflect.Message) error {
	if a, ok := m.Interface().(*anypb.Any); ok {
		if v.seen[a] {
			return nil
		}
		inner, err := a.UnmarshalNew()
		if err != nil {
			return fmt.Errorf("%s: %w", a.GetTypeUrl(), err)
		}
		if err := v.validate(inner); err != nil {
			return fmt.Errorf("%s: %w", a.GetTypeUrl(), err)
		}
		v.seen[a] = true
		return nil
	}
	var err error
	m.Range(func(fd protoreflect.FieldDescriptor, val protoreflect.Value) bool {
		switch {
		case fd.IsMap():
			if fd.MapValue().Message() != nil {
				val.Map().Range(func(_ protoreflect.MapKey, mv protoreflect.Value) bool {
					err = v.anys(mv.Message())
					return err == nil
				})
			}
		case fd.IsList():
			if fd.Message() != nil {
				for i := 0; i < val.List().Len() && err == nil; i++ {
					err = v.anys(val.List().Get(i).Message())
				}
			}
		case fd.Message() != nil:
			err = v.anys(val.Message())
		}
		if err != nil {
			err = fmt.Errorf("%s: %w", fd.Name(), err)
		}
		return err == nil
	})
	return err
}
