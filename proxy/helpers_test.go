package proxy

import (
	"net/netip"

	core "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	"google.golang.org/protobuf/types/known/wrapperspb"
)

func cidrs(ss ...string) []*core.CidrRange {
	var out []*core.CidrRange
	for _, s := range ss {
		p := netip.MustParsePrefix(s)
		out = append(out, &core.CidrRange{AddressPrefix: p.Addr().String(), PrefixLen: wrapperspb.UInt32(uint32(p.Bits()))})
	}
	return out
}
