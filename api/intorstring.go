package api

import (
	"strconv"
)

// IntOrString is a value that YAML may give as a number or a string, as the
// port of a Kubernetes NetworkPolicy (80 or "http").
type IntOrString struct {
	IsString bool
	IntVal   int32
	StrVal   string
}

// FromInt returns an IntOrString holding a number.
func FromInt(v int) IntOrString { return IntOrString{IntVal: int32(v)} }

// FromString returns an IntOrString holding a string.
func FromString(s string) IntOrString { return IntOrString{IsString: true, StrVal: s} }

func (v IntOrString) String() string {
	if v.IsString {
		return v.StrVal
	}
	return strconv.Itoa(int(v.IntVal))
}

// PortString is a port given as a string in the Cilium schema ("80", "http").
// A bare YAML number is accepted too, since users write `port: 80` far more
// often than `port: "80"`.
type PortString string

func itoa(i int) string { return strconv.Itoa(i) }

// MarshalJSON writes the number or the string.
func (v IntOrString) MarshalJSON() ([]byte, error) {
	if v.IsString {
		return []byte(strconv.Quote(v.StrVal)), nil
	}
	return []byte(strconv.Itoa(int(v.IntVal))), nil
}
