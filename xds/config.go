package xds

import (
	"errors"
	"fmt"
	"time"

	"github.com/spf13/pflag"
)

// Marks the proxy sets (SO_MARK) on the upstream connections it opens after
// enforcing L7 policy, so that the datapath recognises them and does not
// steer them to the proxy again. The values are Cilium's magic proxy marks;
// only the bits of MarkMask carry meaning, leaving the rest of the mark to
// other users of the node.
const (
	// MarkProxyIngress marks the inbound listener's upstream connections
	// (to a local pod): the destination's ingress L7 policy has been
	// enforced.
	MarkProxyIngress uint32 = 0x0a00
	// MarkProxyEgress marks the outbound listener's upstream connections
	// (from a local pod): the source's egress L7 policy has been enforced;
	// the destination's ingress policy still applies.
	MarkProxyEgress uint32 = 0x0b00
	// MarkMask selects the bits of the mark the proxy marks use.
	MarkMask uint32 = 0x0f00
)

// Default proxy ports, as Istio numbers its transparent listeners.
const (
	DefaultInboundPort  = 15006
	DefaultOutboundPort = 15001
	// The listeners of mTLS between node proxies for connections without
	// L7 rules (those with L7 rules use the two above): 15008 terminates
	// mTLS from mesh pods on other nodes, 15002 originates it.
	DefaultMTLSInboundPort  = 15008
	DefaultMTLSOutboundPort = 15002
)

// Config is what the generated Envoy configuration needs to know about the
// node's proxy. The zero value means the defaults.
type Config struct {
	// InboundPort is the port of the transparent listener for connections to
	// local pods (ingress L7 policy).
	InboundPort uint16
	// OutboundPort is the port of the transparent listener for connections
	// from local pods (egress L7 policy).
	OutboundPort uint16
	// MTLSInboundPort and MTLSOutboundPort are the ports of the mTLS
	// listeners (docs/ARCHITECTURE.md, "mTLS between node proxies").
	MTLSInboundPort  uint16
	MTLSOutboundPort uint16
	// ConnectTimeout bounds the proxy's connection to the original
	// destination.
	ConnectTimeout time.Duration
}

// Defaults fills unset fields.
func (c *Config) Defaults() {
	if c.InboundPort == 0 {
		c.InboundPort = DefaultInboundPort
	}
	if c.OutboundPort == 0 {
		c.OutboundPort = DefaultOutboundPort
	}
	if c.MTLSInboundPort == 0 {
		c.MTLSInboundPort = DefaultMTLSInboundPort
	}
	if c.MTLSOutboundPort == 0 {
		c.MTLSOutboundPort = DefaultMTLSOutboundPort
	}
	if c.ConnectTimeout == 0 {
		c.ConnectTimeout = 5 * time.Second
	}
}

// Validate reports every problem with the configuration (after Defaults).
func (c *Config) Validate() error {
	var errs []error
	ports := []struct {
		flag string
		port uint16
	}{{"--proxy-inbound-port", c.InboundPort}, {"--proxy-outbound-port", c.OutboundPort},
		{"--proxy-mtls-inbound-port", c.MTLSInboundPort}, {"--proxy-mtls-outbound-port", c.MTLSOutboundPort}}
	for i, a := range ports {
		for _, b := range ports[i+1:] {
			if a.port == b.port {
				errs = append(errs, fmt.Errorf("%s and %s are both %d: the listeners need a port each", a.flag, b.flag, a.port))
			}
		}
	}
	if c.ConnectTimeout < time.Millisecond {
		errs = append(errs, fmt.Errorf("--proxy-connect-timeout %v: must be at least 1ms", c.ConnectTimeout))
	}
	return errors.Join(errs...)
}

// BindFlags binds the configuration to command-line flags.
func (c *Config) BindFlags(fs *pflag.FlagSet) {
	fs.Uint16Var(&c.InboundPort, "proxy-inbound-port", c.InboundPort, "port of the proxy's transparent listener for connections to local pods (ingress L7 policy)")
	fs.Uint16Var(&c.OutboundPort, "proxy-outbound-port", c.OutboundPort, "port of the proxy's transparent listener for connections from local pods (egress L7 policy)")
	fs.Uint16Var(&c.MTLSInboundPort, "proxy-mtls-inbound-port", c.MTLSInboundPort, "port of the proxy's transparent listener terminating mTLS from mesh pods on other nodes, for connections without L7 rules (default 15008)")
	fs.Uint16Var(&c.MTLSOutboundPort, "proxy-mtls-outbound-port", c.MTLSOutboundPort, "port of the proxy's transparent listener originating mTLS to mesh pods on other nodes, for connections without L7 rules (default 15002)")
	fs.DurationVar(&c.ConnectTimeout, "proxy-connect-timeout", c.ConnectTimeout, "timeout of the proxy's connection to the original destination")
}
