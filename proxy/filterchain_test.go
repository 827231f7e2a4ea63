package proxy

import (
	"net/netip"
	"testing"

	listener "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	"google.golang.org/protobuf/types/known/wrapperspb"
)

func TestSelectChain(t *testing.T) {
	chain := func(name string, m *listener.FilterChainMatch) func(*listener.Listener) {
		return func(l *listener.Listener) {
			l.FilterChains = append(l.FilterChains, &listener.FilterChain{Name: name, Filters: l.FilterChains[0].Filters, FilterChainMatch: m})
		}
	}
	dropFirst := func(l *listener.Listener) { l.FilterChains = l.FilterChains[1:] }
	for _, tc := range []struct {
		name   string
		chains []func(*listener.Listener)
		dst    string
		src    string
		want   string // "" = no chain
	}{
		{
			name: "exact destination port beats any port",
			chains: []func(*listener.Listener){
				chain("any", nil), chain("p80", &listener.FilterChainMatch{DestinationPort: wrapperspb.UInt32(80)}),
			},
			dst: "10.0.0.1:80", want: "p80",
		},
		{
			name: "any port when no exact one",
			chains: []func(*listener.Listener){
				chain("any", nil), chain("p80", &listener.FilterChainMatch{DestinationPort: wrapperspb.UInt32(80)}),
			},
			dst: "10.0.0.1:81", want: "any",
		},
		{
			name: "longest destination prefix",
			chains: []func(*listener.Listener){
				chain("wide", &listener.FilterChainMatch{PrefixRanges: cidrs("10.0.0.0/8")}),
				chain("narrow", &listener.FilterChainMatch{PrefixRanges: cidrs("10.1.0.0/16")}),
				chain("any", nil),
			},
			dst: "10.1.2.3:80", want: "narrow",
		},
		{
			name: "an explicit /0 beats no prefix",
			chains: []func(*listener.Listener){
				chain("zero", &listener.FilterChainMatch{PrefixRanges: cidrs("0.0.0.0/0")}), chain("any", nil),
			},
			dst: "192.0.2.1:80", want: "zero",
		},
		{
			// Envoy does not fall back to a less specific destination
			// when a later criterion (source) fails.
			name: "no fallback to a less specific destination",
			chains: []func(*listener.Listener){
				chain("narrow-src", &listener.FilterChainMatch{PrefixRanges: cidrs("10.1.0.0/16"), SourcePrefixRanges: cidrs("192.168.0.0/16")}),
				chain("wide", &listener.FilterChainMatch{PrefixRanges: cidrs("10.0.0.0/8")}),
			},
			dst: "10.1.2.3:80", src: "172.16.0.1:999", want: "",
		},
		{
			name: "source prefix and port",
			chains: []func(*listener.Listener){
				chain("src", &listener.FilterChainMatch{SourcePrefixRanges: cidrs("172.16.0.0/12")}),
				chain("src-port", &listener.FilterChainMatch{SourcePrefixRanges: cidrs("172.16.0.0/12"), SourcePorts: []uint32{999}}),
			},
			dst: "10.1.2.3:80", src: "172.16.0.1:999", want: "src-port",
		},
		{
			name: "nothing matches",
			chains: []func(*listener.Listener){
				chain("p80", &listener.FilterChainMatch{DestinationPort: wrapperspb.UInt32(80)}),
			},
			dst: "10.0.0.1:443", want: "",
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			lc, err := compileListener(testListener(append(tc.chains, dropFirst)...))
			if err != nil {
				t.Fatal(err)
			}
			src := tc.src
			if src == "" {
				src = "192.0.2.9:5555"
			}
			fc := lc.selectChain(netip.MustParseAddrPort(tc.dst), netip.MustParseAddrPort(src), nil)
			got := ""
			if fc != nil {
				got = fc.name
			}
			if got != tc.want {
				t.Fatalf("chain = %q, want %q", got, tc.want)
			}
		})
	}
}
