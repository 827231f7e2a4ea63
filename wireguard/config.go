package wireguard

import (
	"errors"
	"fmt"
	"log/slog"
	"time"

	"github.com/spf13/pflag"
)

// Modes of Config.Mode.
const (
	// ModeAuto uses the kernel module when the kernel can create a link of
	// type wireguard, and the embedded userspace device otherwise.
	ModeAuto = "auto"
	// ModeKernel requires the kernel module.
	ModeKernel = "kernel"
	// ModeUserspace runs the embedded device (golang.zx2c4.com/wireguard)
	// in this process, on a TUN device.
	ModeUserspace = "userspace"
)

// Defaults of Config.
const (
	DefaultInterface  = "nm_wg0"
	DefaultListenPort = 51871
	DefaultMTU        = 1420
	// DefaultPersistentKeepalive: see Config.PersistentKeepalive.
	DefaultPersistentKeepalive = 25 * time.Second
	// DefaultRouteTable holds the routes to the peers' AllowedIPs through
	// the device, and nothing else: Nodemesh owns the table.
	DefaultRouteTable = 2005
	// DefaultRulePriority is the priority of the rule that looks the table
	// up: after redirect's rule (90, local delivery to the node proxy),
	// before the main table (32766), so a peer's route wins over a
	// plaintext route the main table may hold for the same prefix.
	DefaultRulePriority = 91
	// DefaultFirewallMark marks the device's own UDP packets; the rule
	// skips packets carrying it, so encrypted packets never route back
	// into the tunnel even when a peer's AllowedIPs cover its endpoint.
	// The bit is outside the datapath's marks (0x0f00 and 0xffff0000).
	DefaultFirewallMark = 0x1000
)

// Config configures a node's WireGuard device.
type Config struct {
	// Interface is the name of the WireGuard link.
	Interface string
	// ListenPort is the UDP port the device receives on.
	ListenPort int
	// KeyFile holds the node's private key (base64, as `wg genkey`
	// writes it); it is created at first start.
	KeyFile string
	// Mode is ModeAuto, ModeKernel or ModeUserspace.
	Mode string
	// MTU of the link: the underlay's MTU minus 80 bytes of WireGuard
	// overhead over IPv6 (60 over IPv4).
	MTU int
	// PersistentKeepalive is the interval of keepalives to each peer; a
	// negative value turns them off. Setting it on a new peer sends a keepalive at once,
	// so the handshake with a node happens when it is learned (or its
	// key changes, or this node restarts), not when the first packet
	// waits for it; it also keeps NAT and conntrack state on the path
	// alive. Two nodes that learn each other within a round trip greet
	// each other at the same time; the crossed handshakes fail and
	// WireGuard retries after 5 s, once.
	PersistentKeepalive time.Duration
	// RouteTable, RulePriority and FirewallMark: see DefaultRouteTable,
	// DefaultRulePriority and DefaultFirewallMark.
	RouteTable   int
	RulePriority int
	FirewallMark int

	Logger *slog.Logger // discards if nil
}

// Defaults fills unset fields.
func (c *Config) Defaults() {
	if c.Interface == "" {
		c.Interface = DefaultInterface
	}
	if c.ListenPort == 0 {
		c.ListenPort = DefaultListenPort
	}
	if c.Mode == "" {
		c.Mode = ModeAuto
	}
	if c.MTU == 0 {
		c.MTU = DefaultMTU
	}
	if c.PersistentKeepalive == 0 {
		c.PersistentKeepalive = DefaultPersistentKeepalive
	}
	if c.RouteTable == 0 {
		c.RouteTable = DefaultRouteTable
	}
	if c.RulePriority == 0 {
		c.RulePriority = DefaultRulePriority
	}
	if c.FirewallMark == 0 {
		c.FirewallMark = DefaultFirewallMark
	}
	if c.Logger == nil {
		c.Logger = slog.New(slog.DiscardHandler)
	}
}

// Validate reports every problem with the configuration.
func (c *Config) Validate() error {
	var errs []error
	// IFNAMSIZ is 16 with the terminating NUL.
	if c.Interface == "" || len(c.Interface) > 15 {
		errs = append(errs, fmt.Errorf("--wireguard-interface %q: want 1 to 15 characters", c.Interface))
	}
	if c.ListenPort < 1 || c.ListenPort > 65535 {
		errs = append(errs, fmt.Errorf("--wireguard-listen-port %d: want 1 to 65535", c.ListenPort))
	}
	if c.KeyFile == "" {
		errs = append(errs, errors.New("--wireguard-key-file is required: the node's private key is kept there (e.g. /var/lib/nodemesh/wireguard.key)"))
	}
	switch c.Mode {
	case ModeAuto, ModeKernel, ModeUserspace:
	default:
		errs = append(errs, fmt.Errorf("--wireguard-mode %q: want auto, kernel or userspace", c.Mode))
	}
	if c.MTU < 1280 || c.MTU > 65535 {
		errs = append(errs, fmt.Errorf("--wireguard-mtu %d: want 1280 (the IPv6 minimum) to 65535", c.MTU))
	}
	if c.PersistentKeepalive > 65535*time.Second {
		errs = append(errs, fmt.Errorf("--wireguard-persistent-keepalive %s: want at most 65535s (negative: off)", c.PersistentKeepalive))
	}
	if c.RouteTable <= 0 || c.RouteTable == 253 || c.RouteTable == 254 || c.RouteTable == 255 {
		errs = append(errs, fmt.Errorf("route table %d: want a table of its own, not default, main or local", c.RouteTable))
	}
	if c.RulePriority <= 0 || c.RulePriority >= 32766 {
		errs = append(errs, fmt.Errorf("rule priority %d: want 1 to 32765, before the main table", c.RulePriority))
	}
	if c.FirewallMark <= 0 {
		errs = append(errs, fmt.Errorf("firewall mark 0x%x: want a non-zero mark", c.FirewallMark))
	}
	return errors.Join(errs...)
}

// BindFlags binds the configuration to command-line flags.
func (c *Config) BindFlags(fs *pflag.FlagSet) {
	fs.StringVar(&c.Interface, "wireguard-interface", c.Interface, "name of the node's WireGuard link")
	fs.IntVar(&c.ListenPort, "wireguard-listen-port", c.ListenPort, "UDP port the WireGuard device listens on (open it between nodes)")
	fs.StringVar(&c.KeyFile, "wireguard-key-file", c.KeyFile, "the node's WireGuard private key, created (0600) at first start")
	fs.StringVar(&c.Mode, "wireguard-mode", c.Mode, "auto (kernel module if present, else userspace), kernel or userspace (embedded wireguard-go on a TUN device)")
	fs.DurationVar(&c.PersistentKeepalive, "wireguard-persistent-keepalive", c.PersistentKeepalive, "keepalive interval to each peer; a new peer is greeted at once, so handshakes happen before traffic (negative: off)")
	fs.IntVar(&c.MTU, "wireguard-mtu", c.MTU, "MTU of the WireGuard link: the underlay's MTU minus 80")
}
